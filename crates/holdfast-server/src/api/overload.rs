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
//! There is deliberately no timeout on writes: a write handed to a sale's actor completes and
//! becomes durable whatever the client does, so abandoning it half-way would only turn a clear
//! answer into an unknown one. Bounded queues (this limit, and each actor's queue) keep waits
//! short instead.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use tokio::sync::OwnedSemaphorePermit;

use crate::error::ApiError;
use crate::state::AppState;

/// One of the server's `writes_in_flight_max` slots, held until the handler returns.
pub struct WriteSlot {
    _permit: OwnedSemaphorePermit,
}

impl WriteSlot {
    pub fn take(state: &AppState) -> Result<WriteSlot, ApiError> {
        match state.write_permits.clone().try_acquire_owned() {
            Ok(permit) => Ok(WriteSlot { _permit: permit }),
            Err(_) => {
                metrics::counter!("holdfast_requests_shed_total").increment(1);
                Err(ApiError::overloaded(1))
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
