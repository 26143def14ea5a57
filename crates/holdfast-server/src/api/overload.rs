//! Load shedding. Writes (everything that goes through a sale's actor and the log) are admitted
//! up to a bound on requests in flight; beyond it a request is answered `429 overloaded` with
//! `Retry-After` at once, instead of queueing until it times out. This is tower's
//! `ConcurrencyLimit` + `LoadShed` pairing, applied to writes only: reads (queue polls, sale
//! counters, health) are answered from published views in microseconds and must keep being
//! answered when writes are saturated, so they are never shed.
//!
//! A slot is taken by [`WriteSlot`], an extractor that handlers list *after* their caller's
//! credentials and that runs after the body has been read whole (`api::edge`): a stranger
//! without credentials, or with a body that trickles in, never holds capacity meant for buyers.
//!
//! How long a shed caller is asked to wait (`Retry-After`) follows the pressure: one second
//! while shedding is rare; while many are turned away, longer in proportion
//! ([`next_retry_after`]), and spread over a range, so the crowd comes back a little at a time
//! instead of all at once every second — at ten times capacity, callers all told "one second"
//! came back as a storm of requests to be refused again, which cost a fifth of the purchases
//! (`holdfast bench --scenario ledger --seconds 15 --connections 2560`).
//!
//! There is deliberately no timeout on writes: a write handed to a sale's actor completes and
//! becomes durable whatever the client does, so abandoning it half-way would only turn a clear
//! answer into an unknown one. Bounded queues (this limit, and each actor's queue) keep waits
//! short instead.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use holdfast_core::Timestamp;
use tokio::sync::OwnedSemaphorePermit;

use crate::error::ApiError;
use crate::state::AppState;

/// Shed requests, as a share of those admitted, that the server aims for while overloaded:
/// above it, shed callers are asked to stay away longer.
const SHED_SHARE_TARGET: f64 = 0.02;

/// The longest wait a shed caller is asked for.
pub const RETRY_AFTER_MAX_S: u64 = 30;

/// The wait to ask of shed callers in the next second, from the one asked now and the last
/// second's writes shed and admitted. The callers turned away keep coming back once per wait,
/// so the share shed scales with the crowd over the wait: the wait is scaled to bring that
/// share to the target. It at most doubles in a second, so one burst (everyone arriving at the
/// opening) does not send a crowd away for half a minute, and comes down by halves at most, so
/// a quiet second just after the crowd was sent away does not call it all back at once.
pub fn next_retry_after(current_s: u64, shed: u64, admitted: u64) -> u64 {
    let current = current_s.max(1);
    let share = shed as f64 / admitted.max(1) as f64;
    let wanted = (current as f64 * share / SHED_SHARE_TARGET).ceil() as u64;
    wanted
        .min(current * 2)
        .max(current / 2)
        .clamp(1, RETRY_AFTER_MAX_S)
}

/// The `n`th wait handed out in a second: spread over the upper half of `retry_after_s`, so
/// those shed together do not all come back together.
fn spread(retry_after_s: u64, n: u64) -> u64 {
    let low = retry_after_s.div_ceil(2);
    low + n % (retry_after_s - low + 1)
}

/// Writes admitted and shed, second by second, and the wait shed callers are asked for.
#[derive(Default)]
pub struct Pressure {
    second: AtomicI64,
    admitted: AtomicU64,
    shed: AtomicU64,
    retry_after_s: AtomicU64,
}

impl Pressure {
    fn admitted(&self, now: Timestamp) {
        self.roll(now);
        self.admitted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a shed request and answers the wait to ask of it.
    fn shed(&self, now: Timestamp) -> u64 {
        self.roll(now);
        let n = self.shed.fetch_add(1, Ordering::Relaxed);
        spread(self.retry_after_s.load(Ordering::Relaxed).max(1), n)
    }

    /// At the first write of a new second, works out the wait from the second before.
    fn roll(&self, now: Timestamp) {
        let second = now.0.div_euclid(1000);
        let seen = self.second.load(Ordering::Relaxed);
        if second == seen
            || self
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let admitted = self.admitted.swap(0, Ordering::Relaxed);
        let shed = self.shed.swap(0, Ordering::Relaxed);
        // After a gap, the second before this one had no writes at all.
        let (shed, admitted) = if second == seen + 1 {
            (shed, admitted)
        } else {
            (0, 0)
        };
        let current = self.retry_after_s.load(Ordering::Relaxed);
        let next = next_retry_after(current, shed, admitted);
        self.retry_after_s.store(next, Ordering::Relaxed);
        metrics::gauge!("holdfast_shed_retry_after_seconds").set(next as f64);
    }
}

/// One of the server's `writes_in_flight_max` slots, held until the handler returns.
pub struct WriteSlot {
    _permit: OwnedSemaphorePermit,
}

impl WriteSlot {
    pub fn take(state: &AppState) -> Result<WriteSlot, ApiError> {
        let now = state.clock.now();
        match state.write_permits.clone().try_acquire_owned() {
            Ok(permit) => {
                state.pressure.admitted(now);
                Ok(WriteSlot { _permit: permit })
            }
            Err(_) => {
                metrics::counter!("holdfast_requests_shed_total").increment(1);
                Err(ApiError::overloaded(state.pressure.shed(now)))
            }
        }
    }
}

impl FromRequestParts<AppState> for WriteSlot {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        WriteSlot::take(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_follows_the_share_shed_and_comes_down_by_halves() {
        // Rare shedding: a second.
        assert_eq!(next_retry_after(1, 10, 10_000), 1);
        // A tenth shed with everyone told one second: five times the target. The wait doubles
        // a second at a time as long as the crowd keeps the share above the target.
        assert_eq!(next_retry_after(1, 2_500, 25_000), 2);
        assert_eq!(next_retry_after(2, 1_250, 25_000), 4);
        assert_eq!(next_retry_after(4, 625, 25_000), 5);
        // At five seconds the share sits at the target: it stays.
        assert_eq!(next_retry_after(5, 500, 25_000), 5);
        // Everyone at once, at the opening: doubled, not sent away for half a minute.
        assert_eq!(next_retry_after(1, 2_000, 2_000), 2);
        // The crowd gone: down by halves, not at once.
        let waits: Vec<u64> =
            std::iter::successors(Some(16), |&w| Some(next_retry_after(w, 0, 100)))
                .take(6)
                .collect();
        assert_eq!(waits, [16, 8, 4, 2, 1, 1]);
        // Never beyond the bound, whatever the crowd.
        assert_eq!(next_retry_after(30, 1_000_000, 1), RETRY_AFTER_MAX_S);
        // Nothing admitted at all (every slot held): still a bounded wait.
        assert!((1..=RETRY_AFTER_MAX_S).contains(&next_retry_after(1, 50, 0)));
    }

    #[test]
    fn waits_handed_out_together_are_spread_over_the_upper_half() {
        let waits: Vec<u64> = (0..6).map(|n| spread(6, n)).collect();
        assert_eq!(waits, [3, 4, 5, 6, 3, 4]);
        assert!((0..100).all(|n| spread(1, n) == 1));
    }

    #[test]
    fn a_second_of_heavy_shedding_lengthens_the_next_seconds_wait() {
        let pressure = Pressure::default();
        let at = |second: i64| Timestamp(second * 1000 + 500);
        for _ in 0..100 {
            pressure.admitted(at(10));
        }
        assert_eq!(pressure.shed(at(10)), 1, "nothing measured yet");
        for _ in 0..19 {
            pressure.shed(at(10));
        }
        // 20 shed for 100 admitted: ten times the target; the wait doubles.
        let next: Vec<u64> = (0..10).map(|_| pressure.shed(at(11))).collect();
        assert_eq!(next, [1, 2, 1, 2, 1, 2, 1, 2, 1, 2]);
        // A gap of quiet seconds counts as quiet, and the wait halves.
        assert_eq!(pressure.shed(at(20)), 1);
    }
}
