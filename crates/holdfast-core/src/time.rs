//! Time as the core sees it: plain numbers stamped by the caller. The core never reads a clock.

use serde::{Deserialize, Serialize};

const MILLIS_PER_DAY: i64 = 86_400_000;

/// Milliseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn plus_millis(self, millis: u64) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(i64::try_from(millis).unwrap_or(i64::MAX)),
        )
    }

    /// The calendar day (UTC) this instant falls on.
    pub fn day(self) -> Day {
        Day(self.0.div_euclid(MILLIS_PER_DAY))
    }
}

/// The first and last calendar days the core deals in: 1970-01-01 and 9999-12-31. Every day
/// between them can be written as `YYYY-MM-DD`, and none is near an integer's end.
pub const DAY_MIN: Day = Day(0);
pub const DAY_MAX: Day = Day(2_932_896);

/// A calendar day (UTC), counted in days since 1970-01-01.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Day(pub i64);

impl Day {
    pub fn next(self) -> Day {
        Day(self.0 + 1)
    }
}
