//! The HTTP API (shared/API.md). One router per area, merged here.

mod credentials;
mod dashboard;
mod edge;
mod events;
mod extract;
pub(crate) mod internal;
mod openapi;
mod ops;
pub(crate) mod overload;
mod pay;
mod queue;
mod route;
mod routes;
mod sales;
mod shopper;
mod terminals;
pub mod wire;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;

use crate::error::ApiError;
use crate::state::AppState;

/// Every route the API serves.
fn routes() -> routes::Routes {
    routes::Routes::default()
        .merge(sales::routes())
        .merge(shopper::routes())
        .merge(ops::routes())
        .merge(events::routes())
        .merge(dashboard::routes())
        .merge(queue::routes())
        .merge(terminals::routes())
        .merge(pay::routes())
        .merge(internal::routes())
        .merge(openapi::routes())
}

/// A route: its method and path template.
pub type Served = (String, String);

/// The (method, path template) pairs the router serves, and the ones only nodes call (which
/// the OpenAPI document leaves out): for checking the document against the router.
pub fn served_routes() -> (Vec<Served>, Vec<Served>) {
    let pairs = |list: &[(axum::http::Method, &str)]| {
        list.iter()
            .map(|(method, path)| (method.to_string(), (*path).to_owned()))
            .collect()
    };
    let internal = internal::routes();
    (pairs(routes().served()), pairs(internal.served()))
}

pub fn router(state: AppState) -> Router {
    let mut router = routes()
        .into_router()
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
