use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::time::Timestamp;

/// Why the core refused a command. Refusals change nothing in the ledger. They travel between
/// nodes (a till's allotment asked of a sale served elsewhere), hence serde.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum Rejection {
    #[error("the sale has not opened yet; it opens at {} ms after 1970-01-01 UTC", opens_at.0)]
    NotOpenYet { opens_at: Timestamp },
    #[error("the sale is closed")]
    Closed,
    #[error("sold out: {available} unit(s) left for this channel")]
    SoldOut { available: u32 },
    #[error("limit of {limit} per person reached: {used} already held or bought by this person")]
    LimitExceeded { limit: u32, used: u32 },
    #[error("quantity must be between 1 and {max}")]
    InvalidQuantity { max: u32 },
    #[error("no such hold for this customer")]
    HoldNotFound,
    #[error("the hold expired before it was confirmed; its units went back on sale")]
    HoldExpired,
    #[error("the hold was released")]
    HoldReleased,
    #[error("the hold is already confirmed as an order and cannot be released")]
    HoldConfirmed,
    #[error("the {channel} share was already released to the common pool")]
    ShareAlreadyReleased { channel: Cow<'static, str> },
    #[error("holder has only {allotted} unit(s) allotted")]
    AllotmentExceeded { allotted: u32 },
    #[error("this sale has a waiting room: join the queue and hold with the admission pass")]
    PassRequired,
    #[error("the admission pass cannot be used: {reason}")]
    PassInvalid { reason: Cow<'static, str> },
    #[error("this sale has no waiting room; hold directly")]
    NoQueue,
    #[error("the waiting room is full")]
    QueueFull,
    #[error("no delivery day can be promised: the fulfilment calendar is full")]
    NoDeliveryDay,
    #[error("the sale is paused by its operator: nothing new can be held until it resumes")]
    Paused,
    #[error("sold at {charged} a unit; the sale's price is {price}")]
    PriceMismatch { charged: u64, price: u64 },
}

impl Rejection {
    /// The stable machine-readable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::NotOpenYet { .. } | Rejection::Closed => "not_open",
            Rejection::SoldOut { .. } => "sold_out",
            Rejection::LimitExceeded { .. } => "limit_exceeded",
            Rejection::InvalidQuantity { .. } => "invalid_quantity",
            Rejection::HoldNotFound => "hold_not_found",
            Rejection::HoldExpired => "hold_expired",
            Rejection::HoldReleased => "hold_released",
            Rejection::HoldConfirmed => "hold_confirmed",
            Rejection::ShareAlreadyReleased { .. } => "share_already_released",
            Rejection::AllotmentExceeded { .. } => "allotment_exceeded",
            Rejection::PassRequired => "pass_required",
            Rejection::PassInvalid { .. } => "pass_invalid",
            Rejection::NoQueue => "no_queue",
            Rejection::QueueFull => "queue_full",
            Rejection::NoDeliveryDay => "no_delivery_day",
            Rejection::PriceMismatch { .. } => "price_mismatch",
            Rejection::Paused => "sale_paused",
        }
    }
}
