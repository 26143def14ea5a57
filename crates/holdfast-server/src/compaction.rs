//! Keeps the log's keyed values from growing without bound. Every answer stored under an
//! idempotency key is appended to the log and read back at start-up; after a day it is no
//! longer replayed, and a settled payment's records are no longer needed. Each turn the log's
//! writer is asked to compact its oldest values in small steps, taken between commits, with
//! the fate of each value decided here, where its meaning is known.

use std::sync::Arc;
use std::time::Duration;

use holdfast_store::{Fate, FateOf, StoreError};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::settlement::Settlements;
use crate::streams::Streams;

/// Stored rows one step looks at: a step holds up the log's commits for about as long as one
/// commit of this many rows takes.
const ROWS_PER_STEP: usize = 64;

/// Steps one turn may take, so catching up after a busy day is spread over several turns.
const STEPS_PER_TURN_MAX: usize = 256;

/// Runs until `stop` turns true, a turn every `every`.
pub async fn run(
    streams: Streams,
    settlements: Arc<Settlements>,
    clock: Arc<dyn Clock>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if let Err(error) = turn(&streams, &settlements, clock.as_ref()).await {
            tracing::warn!(%error, "the log's values could not be compacted");
        }
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Steps until nothing more is ready to go, or the turn's bound.
async fn turn(
    streams: &Streams,
    settlements: &Arc<Settlements>,
    clock: &dyn Clock,
) -> Result<(), StoreError> {
    for _ in 0..STEPS_PER_TURN_MAX {
        let step = streams
            .compact_values(ROWS_PER_STEP, fates(streams, settlements, clock))
            .await?;
        if !step.more {
            break;
        }
    }
    Ok(())
}

/// What becomes of each value, as of now. On several nodes a settlement's record is kept: the
/// node holding its stream may be another, and only it knows whether it is settled.
fn fates(streams: &Streams, settlements: &Arc<Settlements>, clock: &dyn Clock) -> FateOf {
    let now = clock.now();
    let settlements = (!streams.is_shared()).then(|| settlements.clone());
    Box::new(move |key, value| {
        crate::idempotency::fate_of(key, value, now)
            .or_else(|| settlements.as_ref()?.fate_of(key))
            .unwrap_or(Fate::Keep)
    })
}
