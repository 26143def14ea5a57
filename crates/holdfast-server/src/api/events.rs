//! `GET /v1/events`: the event feed (`feed.rs`) as server-sent events, for the operator. Each
//! event is one `sample`, its id the sample's time in ms; a client that reconnects with
//! `Last-Event-ID` gets every sample kept since, a new one the last ten minutes first.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures_util::Stream;

use super::credentials::Operator;
use super::routes::Routes;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

pub fn routes() -> Routes {
    Routes::default().add("/v1/events", &[Method::GET], get(events))
}

/// The live feed: one `sample` event a second (server-sent events); `Last-Event-ID` resumes.
#[utoipa::path(get, path = "/v1/events", tag = "operator", security(("operator" = [])),
    params(("Last-Event-ID" = Option<u64>, Header, description = "the id of the last event received")),
    responses((status = 200, description = "a stream of `sample` events", content_type = "text/event-stream", body = String), (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn events(
    State(state): State<AppState>,
    _: Operator,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let after = last_event_id(&headers)?;
    let newest = state.feed.subscribe();
    let pending: VecDeque<_> = state.feed.after(after).into();
    let stream = futures_util::stream::unfold(
        (state, newest, after, pending),
        |(state, mut newest, mut sent, mut pending)| async move {
            loop {
                if let Some((id, sample)) = pending.pop_front() {
                    sent = Some(id);
                    let event = sample_event(id, &sample);
                    return Some((Ok(event), (state, newest, sent, pending)));
                }
                let ended = newest.changed().await.is_err() || newest.borrow_and_update().1;
                if ended {
                    return None;
                }
                pending = state.feed.after(sent).into();
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn sample_event(id: u64, sample: &Arc<str>) -> Event {
    Event::default()
        .event("sample")
        .id(id.to_string())
        .data(&**sample)
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_last_event_id",
                "Last-Event-ID must be the id of an event this feed sent (a number)",
            )
        })
}
