//! On several nodes: a request about a stream (a sale, a hold or order of it, a terminal, a
//! store) is served by the node holding that stream, so clients need no stickiness. This
//! middleware finds that node and hands the request over (`AppInner::route`); a waiting-room
//! poll is answered from the view the sale's holder publishes, without asking it. A request
//! handed over from another node is served here, or answered `NOT_HERE` untouched.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::Deserialize;

use super::wire::{parse_hold_id, parse_order_id};
use crate::cluster::{Forwarded, ForwardedAnswer, ForwardedRequest, NOT_HERE, Placement};
use crate::error::ApiError;
use crate::state::{AppState, Routed};
use crate::streams::{store_stream, terminal_stream};
use crate::terminals::is_valid_store_name;
use holdfast_core::is_valid_sale_id;

pub async fn route(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.cluster.is_none() {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    // `edge` has read the body whole already: this only takes it out.
    let body = whole(body).await;
    let Some(stream) = stream_of(&parts, &body) else {
        return next.run(Request::from_parts(parts, Body::from(body))).await;
    };
    if parts.extensions.get::<Forwarded>().is_some() {
        return match state.place(&stream, false).await {
            Ok(Placement::Here | Placement::Nowhere) => {
                next.run(Request::from_parts(parts, Body::from(body))).await
            }
            _ => not_here(),
        };
    }
    if answered_from_view(&state, &parts) {
        return next.run(Request::from_parts(parts, Body::from(body))).await;
    }
    let forwarded = forwarded_request(&parts, &body);
    match state.route(&stream, &forwarded).await {
        Ok(Routed::Here | Routed::Nowhere) => {
            next.run(Request::from_parts(parts, Body::from(body))).await
        }
        Ok(Routed::There(answer)) => into_response(answer),
        Err(error) => ApiError::from(error).into_response(),
    }
}

/// The stream a request is about, from its path (or, for creating a sale or registering a
/// terminal, from its body's id). `None` for calls about no stream (tokens, health, metrics).
fn stream_of(parts: &Parts, body: &Bytes) -> Option<String> {
    let mut segments = parts.uri.path().trim_start_matches('/').split('/');
    // Only a well-formed id names a stream: anything else is the handler's to refuse, and
    // never reaches the database.
    let id = |id: &str| is_valid_sale_id(id).then(|| id.to_owned());
    match (segments.next()?, segments.next(), segments.next()) {
        ("v1", Some("sales"), Some(sale)) => id(sale),
        ("v1", Some("sales"), None) if parts.method == Method::POST => id(&body_id(body, "id")?),
        ("v1", Some("holds"), Some(hold)) => id(parse_hold_id(hold).ok()?.0),
        ("v1", Some("orders"), Some(order)) => id(parse_order_id(order).ok()?.0),
        ("v1", Some("terminals"), Some(terminal)) => id(terminal).map(|t| terminal_stream(&t)),
        ("v1", Some("terminals"), None) if parts.method == Method::POST => {
            id(&body_id(body, "terminal_id")?).map(|t| terminal_stream(&t))
        }
        ("v1", Some("stores"), Some(store)) => {
            let store = percent_decoded(store)?;
            is_valid_store_name(&store).then(|| store_stream(&store))
        }
        ("pay", Some(terminal), Some(_)) => id(terminal).map(|t| terminal_stream(&t)),
        ("internal", Some("v1"), Some("sales")) => id(segments.next()?),
        _ => None,
    }
}

/// A path segment as the router's extractors see it (store names may hold spaces and more).
fn percent_decoded(segment: &str) -> Option<String> {
    let decoded = percent_encoding::percent_decode_str(segment).decode_utf8();
    decoded.ok().map(|d| d.into_owned())
}

/// One string field of a JSON body, if the body is JSON and has it.
fn body_id(body: &[u8], field: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Fields {
        id: Option<String>,
        terminal_id: Option<String>,
    }
    let fields: Fields = serde_json::from_slice(body).ok()?;
    match field {
        "id" => fields.id,
        _ => fields.terminal_id,
    }
}

/// A waiting-room poll is answered here from the published view when that view already knows
/// the ticket's place in line (it may be a moment older than the holder's own).
fn answered_from_view(state: &AppState, parts: &Parts) -> bool {
    let mut segments = parts.uri.path().trim_start_matches('/').split('/');
    let (Some("v1"), Some("sales"), Some(sale), Some("queue"), Some(ticket), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return false;
    };
    if parts.method != Method::GET {
        return false;
    }
    let (Some(view), Some(place)) = (
        state.sale_view(sale),
        state.tokens.verify_ticket(ticket, state.clock.now()),
    ) else {
        return false;
    };
    place.n < view.queue.entries
}

/// A body already in memory, as bytes.
async fn whole(body: Body) -> Bytes {
    body.collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}

/// Headers that belong to one connection, not to the request or answer carried on it.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
            | "date"
            | "proxy-authorization"
            | "proxy-connection"
    )
}

/// The headers that travel on with a request or an answer.
fn end_to_end(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .filter(|(name, _)| !hop_by_hop(name))
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect()
}

fn forwarded_request(parts: &Parts, body: &Bytes) -> ForwardedRequest {
    ForwardedRequest {
        method: parts.method.to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        headers: end_to_end(&parts.headers),
        body: body.to_vec(),
    }
}

/// Turns a forwarded request back into one this node's router can serve, marked `Forwarded`.
pub fn into_request(forwarded: ForwardedRequest) -> Option<Request> {
    let mut request = Request::builder()
        .method(Method::from_bytes(forwarded.method.as_bytes()).ok()?)
        .uri(forwarded.uri)
        .extension(Forwarded)
        .body(Body::from(forwarded.body))
        .ok()?;
    for (name, value) in forwarded.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(&value).ok()?;
        request.headers_mut().append(name, value);
    }
    Some(request)
}

/// Turns this node's answer to a forwarded request into what travels back.
pub async fn into_answer(response: Response) -> ForwardedAnswer {
    let (parts, body) = response.into_parts();
    let body = whole(body).await;
    ForwardedAnswer {
        status: parts.status.as_u16(),
        headers: end_to_end(&parts.headers),
        body: body.to_vec(),
    }
}

fn into_response(answer: ForwardedAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, Body::from(answer.body)).into_response();
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    for (name, value) in answer.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            headers.append(name, value);
        }
    }
    response
}

/// The answer to a handed-over request for a stream this node does not serve: nothing was
/// done, and the sender may look the holder up again.
fn not_here() -> Response {
    let mut response = ApiError::from(crate::ledger_error::LedgerError::Moved).into_response();
    response
        .headers_mut()
        .insert(NOT_HERE, HeaderValue::from_static("1"));
    response
}
