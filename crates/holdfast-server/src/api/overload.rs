//! Load shedding. Writes (everything that goes through a sale's actor and the log) are admitted
//! up to a bound on requests in flight; beyond it a request is answered `429 overloaded` with
//! `Retry-After` at once, before any work is spent on it, instead of queueing until it times
//! out. This is tower's `ConcurrencyLimit` + `LoadShed` pairing, applied to writes only: reads
//! (queue polls, sale counters, health) are answered from published views in microseconds and
//! must keep being answered when writes are saturated, so they are never shed.
//!
//! There is deliberately no timeout on writes: a write handed to a sale's actor completes and
//! becomes durable whatever the client does, so abandoning it half-way would only turn a clear
//! answer into an unknown one. Bounded queues (this limit, and each actor's queue) keep waits
//! short instead.

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::error::ApiError;

pub async fn shed_writes(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    match state.write_permits.clone().try_acquire_owned() {
        Ok(permit) => {
            let response = next.run(request).await;
            drop(permit);
            response
        }
        Err(_) => {
            metrics::counter!("holdfast_requests_shed_total").increment(1);
            ApiError::overloaded(1).into_response()
        }
    }
}
