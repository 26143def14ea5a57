//! The HTTP API (shared/API.md). One router per area, merged here.

mod credentials;
mod dashboard;
mod edge;
mod events;
mod extract;
pub(crate) mod internal;
mod ops;
pub(crate) mod overload;
mod pay;
mod queue;
mod route;
mod sales;
mod shopper;
mod terminals;
pub mod wire;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;

use crate::error::ApiError;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .merge(sales::router())
        .merge(shopper::router())
        .merge(ops::router())
        .merge(events::router())
        .merge(dashboard::router())
        .merge(queue::router())
        .merge(terminals::router())
        .merge(pay::router())
        .merge(internal::router())
        .fallback(|| async { ApiError::not_found("not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        // `edge` has read every body whole within its bound already.
        .layer(DefaultBodyLimit::disable());
    if state.cluster.is_some() {
        // Only several nodes need it; alone, a request costs no layer more.
        router = router.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            route::route,
        ));
    }
    router
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            edge::edge,
        ))
        .with_state(state)
}
