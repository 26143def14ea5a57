//! How times, ids and refusals are written, for people and on the wire.

use chrono::{DateTime, SecondsFormat, Utc};
use holdfast_core::{HoldId, OrderId, Rejection, Timestamp};

/// A time as RFC 3339 in UTC, to the millisecond.
pub fn format_time(at: Timestamp) -> String {
    DateTime::<Utc>::from_timestamp_millis(at.0)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// An HTTP `Date` header value (RFC 9110 IMF-fixdate).
pub fn http_date(at: Timestamp) -> Option<String> {
    DateTime::<Utc>::from_timestamp_millis(at.0)
        .map(|t| t.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
}

pub fn hold_id(sale_id: &str, hold: HoldId) -> String {
    format!("{sale_id}.h{}", hold.0)
}

pub fn order_id(sale_id: &str, order: OrderId) -> String {
    format!("{sale_id}.o{}", order.0)
}

/// A refusal as a person reads it. Times on the wire are RFC 3339; so are times in messages.
pub fn rejection_message(rejection: &Rejection) -> String {
    match rejection {
        Rejection::NotOpenYet { opens_at } => format!(
            "the sale has not opened yet; it opens at {}",
            format_time(*opens_at)
        ),
        other => other.to_string(),
    }
}
