//! The HTTP API (shared/API.md). One router per area, merged here.

mod extract;
mod intake;
mod ops;
pub(crate) mod overload;
mod pay;
mod queue;
mod sales;
mod shopper;
mod terminals;
pub mod wire;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::AppState;
use crate::error::ApiError;

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(sales::router())
        .merge(shopper::router())
        .merge(ops::router())
        .merge(queue::router())
        .merge(terminals::router())
        .merge(pay::router())
        .fallback(|| async { ApiError::not_found("not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        // `intake` has read every body whole within its bound already.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            intake::read_whole_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            stamp_date,
        ))
        .with_state(state)
}

/// Every answer carries the server's own time: tills sign their requests with it, so a shop
/// whose clock is wrong still gets in.
async fn stamp_date(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    if let Some(value) =
        wire::http_date(state.clock.now()).and_then(|d| HeaderValue::from_str(&d).ok())
    {
        response.headers_mut().insert(header::DATE, value);
    }
    response
}
