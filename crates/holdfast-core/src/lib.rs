//! Holdfast's functional core: the sale state machine.
//!
//! No I/O, no clock, no async runtime. Callers pass `now` in and persist the events that come
//! out; replaying those events rebuilds the same state.

mod chunks;
mod delivery;
mod person;
mod queue;
mod rejection;
mod sale;
mod spec;
pub mod terminal;
mod time;

pub use chunks::Chunks;
pub use person::{
    IdentityError, IdentityKey, PHONE_DIGITS_RANGE, Shopper, normalise_address, normalise_phone,
};
pub use queue::{
    ENTRIES_MAX, EntryId, Queue, QueueView, Standing, draw, key_digest, seed_commitment,
};
pub use rejection::Rejection;
pub use sale::{
    Command, Event, Handled, Hold, HoldCounters, HoldEnd, HoldId, HolderId, Order, OrderId,
    Pausable, Paused, Reply, Sale, SaleSnapshot, SaleStatus,
};
pub use spec::{
    ADMISSION_PER_S_DEFAULT, ADMISSION_PER_S_MAX, Channel, DeliveryPlan, HOLD_TTL_MILLIS_DEFAULT,
    HOLD_TTL_MILLIS_MAX, PASS_TTL_MILLIS_DEFAULT, PASS_TTL_MILLIS_RANGE, PER_CUSTOMER_LIMIT_MAX,
    QueueMode, SALE_TEXT_CHARS_MAX, STOCK_MAX, SaleSpec, SpecError, is_display_text,
    is_valid_sale_id,
};
pub use time::{DAY_MAX, DAY_MIN, Day, Timestamp};
