//! What an operator asks for when creating a sale, validated once at construction.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::time::{DAY_MAX, DAY_MIN, Day, Timestamp};

/// Bounds on operator input, so arithmetic on quantities can never overflow.
pub const STOCK_MAX: u32 = 100_000_000;
pub const PER_CUSTOMER_LIMIT_MAX: u32 = 1_000_000;
pub const HOLD_TTL_MILLIS_MAX: u64 = 24 * 3_600_000;
pub const HOLD_TTL_MILLIS_DEFAULT: u64 = 10 * 60_000;
pub const ADMISSION_PER_S_MAX: u32 = 100_000;
pub const ADMISSION_PER_S_DEFAULT: u32 = 200;
pub const PASS_TTL_MILLIS_DEFAULT: u64 = 2 * 60_000;
pub const PASS_TTL_MILLIS_RANGE: std::ops::RangeInclusive<u64> = 10_000..=3_600_000;

/// The channels a sale is offered on. Each may be given a reserved share of the stock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Web,
    App,
    Phone,
    Store,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Web, Channel::App, Channel::Phone, Channel::Store];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Channel::Web => "web",
            Channel::App => "app",
            Channel::Phone => "phone",
            Channel::Store => "store",
        }
    }

    pub fn parse(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// How shoppers are admitted. Only `None` is served by the ledger alone; the waiting room
/// (fifo, lottery) sits in front of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueMode {
    None,
    Fifo,
    Lottery,
}

/// Fulfilment capacity: at most `capacity_per_day` orders leave the warehouse each day,
/// starting on `first_day`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryPlan {
    pub capacity_per_day: u32,
    pub first_day: Day,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleSpec {
    pub id: String,
    pub sku: String,
    pub name: String,
    /// Price in minor units of the currency.
    pub price: u64,
    pub stock: u32,
    pub per_customer_limit: u32,
    pub opens_at: Timestamp,
    pub closes_at: Option<Timestamp>,
    pub hold_ttl_millis: u64,
    pub queue: QueueMode,
    pub rehearsal: bool,
    /// Units reserved for each channel, indexed by `Channel::index`; the rest is common.
    pub channel_shares: [u32; 4],
    pub price_ceiling: Option<u64>,
    pub delivery: Option<DeliveryPlan>,
    /// Waiting room: how many positions are admitted per second at most.
    pub admission_per_s: u32,
    /// Waiting room: how long an admission pass stays good.
    pub pass_ttl_millis: u64,
    /// Lottery only: the seed the draw is made from, committed to by hash at creation.
    pub lottery_seed: Option<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpecError {
    #[error("sale id must be 1-64 characters of letters, digits, '-' or '_'")]
    InvalidId,
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error(
        "{0} must be 1-{SALE_TEXT_CHARS_MAX} characters, not blank, without control characters"
    )]
    Text(&'static str),
    #[error("price {price} exceeds the price ceiling {ceiling}")]
    PriceAboveCeiling { price: u64, ceiling: u64 },
    #[error(
        "price must be a whole amount from 0, and price times per_customer_limit must fit in an amount"
    )]
    PriceOutOfRange,
    #[error("price_ceiling must be a whole amount from 0")]
    PriceCeilingOutOfRange,
    #[error("opens_at and closes_at must fall between 1970-01-01 and 9999-12-31")]
    TimeOutOfRange,
    #[error("stock must be between 0 and {STOCK_MAX}")]
    StockOutOfRange,
    #[error("per_customer_limit must be between 1 and {PER_CUSTOMER_LIMIT_MAX}")]
    LimitOutOfRange,
    #[error("closes_at must be after opens_at")]
    ClosesBeforeOpening,
    #[error("hold_ttl_s must be between 1 second and 24 hours")]
    HoldTtlOutOfRange,
    #[error("channel shares add up to {shares}, more than the stock of {stock}")]
    SharesExceedStock { shares: u64, stock: u32 },
    #[error("each channel share must be a whole number of units from 0 to {STOCK_MAX}")]
    ShareOutOfRange,
    #[error("delivery.capacity_per_day must be between 1 and {STOCK_MAX}")]
    DeliveryCapacityOutOfRange,
    #[error("delivery.first_day must be a date (YYYY-MM-DD) between 1970-01-01 and 9999-12-31")]
    DeliveryDayOutOfRange,
    #[error("admission_per_s must be between 1 and {ADMISSION_PER_S_MAX}")]
    AdmissionRateOutOfRange,
    #[error("pass_ttl_s must be between 10 seconds and 1 hour")]
    PassTtlOutOfRange,
    #[error("a lottery needs a seed, and only a lottery has one")]
    LotterySeed,
}

impl SpecError {
    pub fn code(&self) -> &'static str {
        match self {
            SpecError::InvalidId => "invalid_sale_id",
            SpecError::Empty(_) | SpecError::Text(_) => "invalid_sale",
            SpecError::PriceAboveCeiling { .. } => "price_above_ceiling",
            SpecError::PriceOutOfRange => "invalid_price",
            SpecError::PriceCeilingOutOfRange => "invalid_price_ceiling",
            SpecError::TimeOutOfRange => "invalid_time",
            SpecError::StockOutOfRange => "invalid_stock",
            SpecError::LimitOutOfRange => "invalid_limit",
            SpecError::ClosesBeforeOpening => "invalid_window",
            SpecError::HoldTtlOutOfRange => "invalid_hold_ttl",
            SpecError::SharesExceedStock { .. } | SpecError::ShareOutOfRange => {
                "invalid_channel_shares"
            }
            SpecError::DeliveryCapacityOutOfRange | SpecError::DeliveryDayOutOfRange => {
                "invalid_delivery"
            }
            SpecError::AdmissionRateOutOfRange => "invalid_admission_rate",
            SpecError::PassTtlOutOfRange => "invalid_pass_ttl",
            SpecError::LotterySeed => "invalid_lottery",
        }
    }
}

/// Characters at most in a new sale's `sku` or `name`.
pub const SALE_TEXT_CHARS_MAX: usize = 200;

/// Whether `text` can stand as a name people read (a sku, a product's or a store's name): not
/// blank, at most `chars_max` characters, and no control characters, which would corrupt the
/// receipts, logs, exports and screens it is printed on.
pub fn is_display_text(text: &str, chars_max: usize) -> bool {
    !text.trim().is_empty()
        && text.chars().count() <= chars_max
        && !text.chars().any(char::is_control)
}

pub fn is_valid_sale_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl SaleSpec {
    /// A sale with no waiting room, no channel shares, no delivery plan and the default hold
    /// time; change what differs. Not validated.
    pub fn plain(
        id: &str,
        price: u64,
        stock: u32,
        per_customer_limit: u32,
        opens_at: Timestamp,
    ) -> SaleSpec {
        SaleSpec {
            id: id.to_owned(),
            sku: id.to_uppercase(),
            name: id.to_owned(),
            price,
            stock,
            per_customer_limit,
            opens_at,
            closes_at: None,
            hold_ttl_millis: HOLD_TTL_MILLIS_DEFAULT,
            queue: QueueMode::None,
            rehearsal: false,
            channel_shares: [0; 4],
            price_ceiling: None,
            delivery: None,
            admission_per_s: ADMISSION_PER_S_DEFAULT,
            pass_ttl_millis: PASS_TTL_MILLIS_DEFAULT,
            lottery_seed: None,
        }
    }

    /// Checks a sale about to be created: every rule of [`SaleSpec::validate`], and names
    /// people can read. (Sales already in a log are read back with `validate` alone, so one
    /// created before a naming rule tightened still opens.)
    pub fn validate_new(&self) -> Result<(), SpecError> {
        for (field, text) in [("sku", &self.sku), ("name", &self.name)] {
            if !is_display_text(text, SALE_TEXT_CHARS_MAX) {
                return Err(SpecError::Text(field));
            }
        }
        self.validate()
    }

    /// Checks every rule a sale must satisfy before it may exist.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !is_valid_sale_id(&self.id) {
            return Err(SpecError::InvalidId);
        }
        if self.sku.trim().is_empty() {
            return Err(SpecError::Empty("sku"));
        }
        if self.name.trim().is_empty() {
            return Err(SpecError::Empty("name"));
        }
        if let Some(ceiling) = self.price_ceiling
            && self.price > ceiling
        {
            return Err(SpecError::PriceAboveCeiling {
                price: self.price,
                ceiling,
            });
        }
        if self
            .price
            .checked_mul(u64::from(self.per_customer_limit))
            .is_none()
        {
            return Err(SpecError::PriceOutOfRange);
        }
        if self.stock > STOCK_MAX {
            return Err(SpecError::StockOutOfRange);
        }
        if !(1..=PER_CUSTOMER_LIMIT_MAX).contains(&self.per_customer_limit) {
            return Err(SpecError::LimitOutOfRange);
        }
        let in_calendar = |t: Timestamp| (DAY_MIN..=DAY_MAX).contains(&t.day());
        if !in_calendar(self.opens_at) || !self.closes_at.is_none_or(in_calendar) {
            return Err(SpecError::TimeOutOfRange);
        }
        if let Some(closes_at) = self.closes_at
            && closes_at <= self.opens_at
        {
            return Err(SpecError::ClosesBeforeOpening);
        }
        if !(1_000..=HOLD_TTL_MILLIS_MAX).contains(&self.hold_ttl_millis) {
            return Err(SpecError::HoldTtlOutOfRange);
        }
        let shares: u64 = self.channel_shares.iter().map(|&s| u64::from(s)).sum();
        if shares > u64::from(self.stock) {
            return Err(SpecError::SharesExceedStock {
                shares,
                stock: self.stock,
            });
        }
        if self.channel_shares.iter().any(|&s| s > STOCK_MAX) {
            return Err(SpecError::ShareOutOfRange);
        }
        if let Some(plan) = self.delivery {
            if !(1..=STOCK_MAX).contains(&plan.capacity_per_day) {
                return Err(SpecError::DeliveryCapacityOutOfRange);
            }
            if !(DAY_MIN..=DAY_MAX).contains(&plan.first_day) {
                return Err(SpecError::DeliveryDayOutOfRange);
            }
        }
        if !(1..=ADMISSION_PER_S_MAX).contains(&self.admission_per_s) {
            return Err(SpecError::AdmissionRateOutOfRange);
        }
        if !PASS_TTL_MILLIS_RANGE.contains(&self.pass_ttl_millis) {
            return Err(SpecError::PassTtlOutOfRange);
        }
        if (self.queue == QueueMode::Lottery) != self.lottery_seed.is_some() {
            return Err(SpecError::LotterySeed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_no_one_can_read_is_refused_for_a_new_sale_but_an_old_one_still_opens() {
        let mut spec = SaleSpec::plain("masks", 39_900, 10, 1, Timestamp(0));
        spec.name = "masks\u{1b}[2J".to_owned();
        assert_eq!(spec.validate_new(), Err(SpecError::Text("name")));
        assert_eq!(spec.validate(), Ok(()), "a sale already in a log opens");
        spec.name = "마".repeat(SALE_TEXT_CHARS_MAX);
        assert_eq!(spec.validate_new(), Ok(()));
    }
}
