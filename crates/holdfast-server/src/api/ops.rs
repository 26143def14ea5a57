use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
}

/// Whether this node is up, and what it serves: the sales it runs, and on several nodes its
/// name, the streams it holds, the sale views it follows and the requests it handed over.
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let mut health = json!({"status": "ok", "sales": state.ledger.sale_count()});
    if let Some(cluster) = &state.cluster {
        health["node"] = json!(cluster.node);
        health["streams_held"] = json!(cluster.held_streams().len());
        health["views_followed"] = json!(cluster.views_followed());
        health["requests_handed_over"] = json!(cluster.forwarder.handed_over());
    }
    axum::Json(health)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::render(&state).await,
    )
}
