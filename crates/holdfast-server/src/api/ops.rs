use super::routes::Routes;
use axum::extract::State;
use axum::http::{Method, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

pub fn routes() -> Routes {
    Routes::default()
        .add("/health", &[Method::GET], get(health))
        .add("/metrics", &[Method::GET], get(metrics))
}

/// Whether this node is up, and what it serves.
#[derive(Serialize, ToSchema)]
pub(super) struct Health {
    status: &'static str,
    /// Sales this node runs.
    sales: usize,
    /// On several nodes: this node's name, the streams it holds, the sale views it follows
    /// and the requests it handed over.
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    streams_held: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    views_followed: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requests_handed_over: Option<u64>,
}

/// Liveness, and what this node serves.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "up", body = Health)))]
pub(super) async fn health(State(state): State<AppState>) -> axum::Json<Health> {
    let cluster = state.cluster.as_ref();
    axum::Json(Health {
        status: "ok",
        sales: state.ledger.sale_count(),
        node: cluster.map(|c| c.node.clone()),
        streams_held: cluster.map(|c| c.held_streams().len()),
        views_followed: cluster.map(|c| c.views_followed()),
        requests_handed_over: cluster.map(|c| c.forwarder.handed_over()),
    })
}

/// The Prometheus exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::render(&state).await,
    )
}
