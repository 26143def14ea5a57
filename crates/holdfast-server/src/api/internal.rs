//! What nodes ask of each other: batches of handed-over requests, and the calls a terminal's
//! node makes on a sale served elsewhere. Only reachable with a batch signed by a node.

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Router, extract::Request};
use http_body_util::{BodyExt, Limited};
use tower::ServiceExt;

use super::extract::ApiPath;
use super::routes::Routes;
use crate::cluster::{Forwarded, ForwardedAnswer, ForwardedRequest, SIGNATURE_HEADER};
use crate::error::ApiError;
use crate::state::AppState;
use crate::terminals::{SaleCall, serve_sale_call};

/// The largest batch a node takes: many requests, some of them tills' syncs.
const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Node to node only, and so not in the OpenAPI document.
pub const SALE_CALL: &str = "/internal/v1/sales/{id}/call";

pub fn routes() -> Routes {
    Routes::default().add(SALE_CALL, &[Method::POST], post(sale_call))
}

/// Runs a batch of requests another node handed over, concurrently, through `router` (so they
/// meet the same checks as any request), and answers them in order.
pub async fn serve_batch(router: Router, state: AppState, request: Request) -> Response {
    let Some(cluster) = state.cluster.clone() else {
        return ApiError::not_found("not_found", "no such endpoint").into_response();
    };
    let (parts, body) = request.into_parts();
    let Ok(body) = Limited::new(body, BATCH_BYTES_MAX).collect().await else {
        return refused("the batch could not be read");
    };
    let body = body.to_bytes();
    if !signed(&parts.headers, &body, |header, body| {
        cluster.forwarder.verify(header, body)
    }) {
        return refused("the batch is not signed by a node of this cluster");
    }
    let Ok(requests) = postcard::from_bytes::<Vec<ForwardedRequest>>(&body) else {
        return refused("the batch cannot be decoded");
    };
    let mut running = tokio::task::JoinSet::new();
    for (index, forwarded) in requests.into_iter().enumerate() {
        let router = router.clone();
        running.spawn(async move { (index, run(router, forwarded).await) });
    }
    let mut answers: Vec<Option<ForwardedAnswer>> = vec![None; running.len()];
    while let Some(done) = running.join_next().await {
        if let Ok((index, answer)) = done {
            answers[index] = Some(answer);
        }
    }
    let answers: Vec<ForwardedAnswer> = answers
        .into_iter()
        .map(|answer| answer.unwrap_or_else(failed))
        .collect();
    let encoded = postcard::to_stdvec(&answers).expect("answers serialise");
    (StatusCode::OK, Body::from(encoded)).into_response()
}

fn signed(headers: &HeaderMap, body: &Bytes, verify: impl Fn(&str, &[u8]) -> bool) -> bool {
    headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|header| verify(header, body))
}

fn refused(why: &str) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", why).into_response()
}

async fn run(router: Router, forwarded: ForwardedRequest) -> ForwardedAnswer {
    let Some(request) = super::route::into_request(forwarded) else {
        let error = ApiError::bad_request("invalid_request", "a handed-over request is malformed");
        return super::route::into_answer(error.into_response()).await;
    };
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    super::route::into_answer(response).await
}

/// A request whose task failed (a bug, never input): the sender's client may retry.
fn failed() -> ForwardedAnswer {
    ForwardedAnswer {
        status: StatusCode::SERVICE_UNAVAILABLE.as_u16(),
        headers: Vec::new(),
        body: Vec::new(),
    }
}

/// A terminal's call on a sale served here, from the node serving the terminal.
async fn sale_call(
    State(state): State<AppState>,
    forwarded: Option<Extension<Forwarded>>,
    ApiPath(sale_id): ApiPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if forwarded.is_none() {
        return Err(ApiError::not_found("not_found", "no such endpoint"));
    }
    let call: SaleCall = postcard::from_bytes(&body)
        .map_err(|_| ApiError::bad_request("invalid_body", "a sale call cannot be decoded"))?;
    let answer = serve_sale_call(&state.ledger, &sale_id, call).await?;
    let encoded = postcard::to_stdvec(&answer).expect("answers serialise");
    Ok((StatusCode::OK, Body::from(encoded)).into_response())
}
