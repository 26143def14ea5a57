//! What every request passes through, in one middleware (each layer costs a boxed future per
//! request): its answer is stamped with the server's own time, and its body is read whole,
//! within a deadline and a size bound, before routing hands it to a handler. A body that trickles in (a byte a second) is cut off with `408` and
//! never reaches a handler, so it never holds a write slot or a sale's attention; a body too
//! large is refused with `413` in our error format, from its `Content-Length` when it says so,
//! before a byte of it is read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use crate::error::ApiError;
use crate::state::AppState;

/// The slowest rate a body may arrive at beyond the base deadline: a till's full sync batch
/// over a poor mobile line still makes it, a trickle does not.
const BODY_BYTES_PER_S_MIN: u64 = 16 * 1024;

/// The largest body `path` takes: a till's sync carries many journal entries, every other
/// call a small JSON document.
fn body_bytes_max(state: &AppState, path: &str) -> usize {
    let is_sync = path.starts_with("/v1/terminals/") && path.ends_with("/sync");
    // A sale call from another node carries a sync's worth of entries for one sale.
    if is_sync || path.starts_with("/internal/") {
        crate::terminals::SYNC_BODY_BYTES_MAX
    } else {
        state.limits.body_bytes_max
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is larger than this endpoint accepts",
    )
}

fn too_slow() -> Response {
    let mut response = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "the request body did not arrive in time; send it again",
    )
    .into_response();
    // The rest of a body that was cut off is still on the wire: the connection cannot be reused.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

pub async fn edge(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // One line per request at debug level; nothing is even copied unless it is wanted.
    let started = Instant::now();
    let method = request.method().clone();
    // The route's template, never the path itself: ids are unbounded, label values must not be.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let logged = tracing::enabled!(tracing::Level::DEBUG).then(|| request.uri().path().to_owned());
    let mut response = match read_whole_body(&state, request).await {
        Ok(request) => next.run(request).await,
        Err(refused) => refused,
    };
    let elapsed = started.elapsed();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    crate::telemetry::record_request(route, &method, response.status().as_u16(), elapsed);
    if response.status() == StatusCode::TOO_MANY_REQUESTS {
        state.requests_shed.fetch_add(1, Ordering::Relaxed);
    }
    state.latencies.record(elapsed);
    // Tills sign their requests with the server's time, learned from this header, so a shop
    // whose clock is wrong still gets in.
    response
        .headers_mut()
        .insert(header::DATE, HTTP_DATE.at(state.clock.now()));
    if let Some(path) = logged {
        let status = response.status().as_u16();
        let micros = elapsed.as_micros();
        tracing::debug!(%method, %path, status, micros, "request");
    }
    response
}

/// The request with its body read, or the answer that refuses it.
async fn read_whole_body(state: &AppState, request: Request) -> Result<Request, Response> {
    let bytes_max = body_bytes_max(state, request.uri().path());
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > bytes_max as u64) {
        return Err(too_large().into_response());
    }
    let expected = declared.unwrap_or(bytes_max as u64);
    let deadline = state.limits.body_read_timeout
        + Duration::from_millis(expected.saturating_mul(1000) / BODY_BYTES_PER_S_MIN);
    let (parts, body) = request.into_parts();
    let limited = http_body_util::Limited::new(body, bytes_max);
    let reading = BodiesBeingRead::start(&state.bodies_in_progress);
    let read = tokio::time::timeout(deadline, limited.collect()).await;
    drop(reading);
    let bytes = match read {
        Err(_) => {
            metrics::counter!("holdfast_bodies_timed_out_total").increment(1);
            return Err(too_slow());
        }
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(too_large().into_response());
        }
        Ok(Err(_)) => {
            let error = ApiError::bad_request("invalid_body", "the request body could not be read");
            return Err(error.into_response());
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// The `Date` header value, formatted once a second rather than once an answer (keyed by the
/// second, so servers with clocks of their own, as in tests, can share it).
static HTTP_DATE: HttpDate = HttpDate {
    cached: std::sync::Mutex::new(None),
};

struct HttpDate {
    cached: std::sync::Mutex<Option<(i64, HeaderValue)>>,
}

impl HttpDate {
    fn at(&self, now: holdfast_core::Timestamp) -> HeaderValue {
        let second = now.0.div_euclid(1000);
        let mut cached = self.cached.lock().expect("date cache");
        if let Some((at, value)) = &*cached
            && *at == second
        {
            return value.clone();
        }
        let text = super::wire::http_date(now).unwrap_or_default();
        let value = HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""));
        *cached = Some((second, value.clone()));
        value
    }
}

/// Counts bodies being read (`holdfast_request_bodies_in_progress`): a crowd of slow bodies
/// (an attack, or a bad network) shows there.
struct BodiesBeingRead<'a>(&'a AtomicU64);

impl BodiesBeingRead<'_> {
    fn start(count: &AtomicU64) -> BodiesBeingRead<'_> {
        count.fetch_add(1, Ordering::Relaxed);
        BodiesBeingRead(count)
    }
}

impl Drop for BodiesBeingRead<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
