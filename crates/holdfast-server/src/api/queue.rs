//! The waiting room over HTTP: join, poll, and the published lottery draw.
//!
//! A poll is answered from the sale's published view and the signed ticket alone: no actor
//! round trip and no state per waiting shopper, so polls stay cheap at very high rates.

use axum::Json;
use axum::extract::State;
use axum::http::Method;
use axum::http::StatusCode;
use axum::routing::{get, post};
use holdfast_core::{Command, Reply, SaleSpec, Standing, Timestamp, seed_commitment};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::credentials::Customer;
use super::extract::ApiPath;
use super::overload::WriteSlot;
use super::routes::Routes;
use super::sales::find_sale;
use super::wire::{format_time, parse_channel};
use crate::actor::SaleView;
use crate::auth::Place;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// How long a ticket stays valid after the sale opens.
const TICKET_LIFE_MILLIS: u64 = 30 * 24 * 3_600_000;
/// Polling hints: never sooner than this, never later.
const POLL_AFTER_S_MIN: u64 = 1;
const POLL_AFTER_S_MAX: u64 = 30;

pub fn routes() -> Routes {
    Routes::default()
        .add("/v1/sales/{id}/queue", &[Method::POST], post(join))
        .add("/v1/sales/{id}/queue/{ticket}", &[Method::GET], get(poll))
        .add("/v1/sales/{id}/draw", &[Method::GET], get(published_draw))
}

/// The body is optional: an empty one joins on the default channel (web).
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct JoinRequest {
    pub channel: Option<String>,
}

/// Where a ticket's holder stands in the waiting room.
#[derive(Serialize, ToSchema)]
pub(super) struct QueueAnswer {
    ticket: String,
    /// The shopper's entry in the published draw (`GET /v1/sales/{id}/draw`).
    #[serde(skip_serializing_if = "Option::is_none")]
    entry_id: Option<String>,
    state: &'static str,
    position: Option<u32>,
    eta_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pass: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pass_expires_at: Option<String>,
    /// People ahead still in play (admitted with a pass not yet used, or waiting).
    ahead: Option<u32>,
    /// Units that could still go to someone: available plus held (holds may lapse).
    units_left: u32,
    /// `likely`: fewer people ahead than units available; `possible`: fewer than units left
    /// if holds lapse; `unlikely`: more; `none`: nothing is left for anyone.
    chance: &'static str,
    /// When to ask again; `null` once there is nothing more to wait for (sold out, closed,
    /// a pass that ran out).
    poll_after_s: Option<u64>,
    /// The operator has paused admissions (or the sale): places are kept, nobody new is let
    /// in, and `eta_s` is unknown until it resumes.
    paused: bool,
}

fn ticket_expiry(spec: &SaleSpec) -> Timestamp {
    spec.opens_at.plus_millis(TICKET_LIFE_MILLIS)
}

/// Where the ticket's holder stands, as the shopper sees it.
fn answer(
    state: &AppState,
    view: &SaleView,
    place: &Place,
    ticket: String,
    now: Timestamp,
) -> QueueAnswer {
    let spec = &view.spec;
    let queue = &view.queue;
    let units_left = view.available + view.held;
    let rate = u64::from(spec.admission_per_s);
    let mut answer = QueueAnswer {
        ticket,
        entry_id: (!place.entry_id.is_empty()).then(|| place.entry_id.clone()),
        state: "waiting",
        position: None,
        eta_s: None,
        pass: None,
        pass_expires_at: None,
        ahead: None,
        units_left,
        chance: "unlikely",
        poll_after_s: Some(POLL_AFTER_S_MIN),
        paused: view.paused.sale || view.paused.waiting_room,
    };
    let until_open_s = u64::try_from((spec.opens_at.0 - now.0).max(0)).unwrap_or(0) / 1000;
    if units_left == 0 && view.allotted == 0 {
        answer.state = "sold_out";
        answer.chance = "none";
        answer.poll_after_s = None;
        return answer;
    }
    if view.status(now) == holdfast_core::SaleStatus::Closed {
        answer.state = "closed";
        answer.chance = "none";
        answer.poll_after_s = None;
        return answer;
    }
    match queue.standing(place.n) {
        Standing::AwaitingDraw => {
            answer.state = "not_open";
            answer.eta_s = Some(until_open_s);
            answer.chance = "possible";
        }
        Standing::Waiting { position } => {
            let not_yet_admitted = u64::from(position - queue.admitted_through);
            let ahead = position - queue.admitted_through - 1 + queue.outstanding;
            answer.position = Some(position);
            answer.ahead = Some(ahead);
            answer.eta_s = (!answer.paused).then(|| until_open_s + not_yet_admitted.div_ceil(rate));
            answer.chance = if ahead < view.available {
                "likely"
            } else if ahead < units_left {
                "possible"
            } else {
                "unlikely"
            };
            if now < spec.opens_at {
                answer.state = "not_open";
            }
        }
        Standing::Admitted {
            position,
            pass_expires_at,
        } => {
            let pass = Place {
                n: position,
                entry_id: String::new(),
                ..place.clone()
            };
            answer.state = "admitted";
            answer.position = Some(position);
            answer.ahead = Some(0);
            answer.eta_s = Some(0);
            answer.chance = if view.available > 0 {
                "likely"
            } else {
                "possible"
            };
            answer.pass = Some(state.tokens.issue_pass(&pass, pass_expires_at));
            answer.pass_expires_at = Some(format_time(pass_expires_at));
        }
        Standing::PassSpent { position } => {
            answer.state = "expired";
            answer.position = Some(position);
            answer.poll_after_s = None;
            return answer;
        }
    }
    answer.poll_after_s =
        Some((answer.eta_s.unwrap_or(0) / 2).clamp(POLL_AFTER_S_MIN, POLL_AFTER_S_MAX));
    answer
}

/// Takes a place in the waiting room (or finds the one this person has): a ticket to poll.
#[utoipa::path(post, path = "/v1/sales/{id}/queue", tag = "shopper", security(("customer" = [])),
    params(("id" = String, Path)), request_body(content = Option<JoinRequest>),
    responses((status = 200, description = "the place", body = QueueAnswer),
        (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn join(
    State(state): State<AppState>,
    Customer(shopper): Customer,
    _slot: WriteSlot,
    ApiPath(sale_id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Json<QueueAnswer>, ApiError> {
    // The body is optional: an empty one joins on the default channel.
    if !body.is_empty() {
        let request: JoinRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?;
        parse_channel(request.channel.as_deref())?;
    }
    let sale = find_sale(&state, &sale_id)?;
    let customer_id = shopper.customer_id().to_owned();
    let executed = sale.execute(Command::Join { shopper }, None).await?;
    let Reply::Joined { entry, id } = executed.outcome? else {
        unreachable!("a join answers with an entry")
    };
    let view = sale.view();
    let place = Place {
        customer_id,
        sale_id,
        n: entry,
        entry_id: id.to_hex(),
    };
    let ticket = state.tokens.issue_ticket(&place, ticket_expiry(&view.spec));
    Ok(Json(answer(
        &state,
        &view,
        &place,
        ticket,
        state.clock.now(),
    )))
}

/// Where the ticket's holder stands now, with a pass once admitted.
#[utoipa::path(get, path = "/v1/sales/{id}/queue/{ticket}", tag = "shopper",
    security(("customer" = [])), params(("id" = String, Path), ("ticket" = String, Path)),
    responses((status = 200, description = "the standing", body = QueueAnswer),
        (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn poll(
    State(state): State<AppState>,
    Customer(shopper): Customer,
    ApiPath((sale_id, ticket)): ApiPath<(String, String)>,
) -> Result<Json<QueueAnswer>, ApiError> {
    let now = state.clock.now();
    let place = state
        .tokens
        .verify_ticket(&ticket, now)
        .filter(|p| p.sale_id == sale_id && p.customer_id == shopper.customer_id())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "ticket_invalid",
                "this ticket is not valid for you and this sale",
            )
        })?;
    // Here, or as the sale's holder last published it (see `api::route`).
    let view = state.sale_view(&sale_id).ok_or_else(|| {
        ApiError::not_found("sale_not_found", format!("no sale with id '{sale_id}'"))
    })?;
    Ok(Json(answer(&state, &view, &place, ticket, now)))
}

/// The lottery, published so anyone can check it.
#[derive(Serialize, ToSchema)]
pub(super) struct PublishedDraw {
    sale_id: String,
    /// SHA-256 of the seed, published when the sale was created.
    seed_commitment: String,
    /// Revealed once drawn.
    seed: Option<String>,
    drawn: bool,
    /// The entrants' pseudonymous ids, in join order.
    entrants: Vec<String>,
    /// Each entrant's position, in the same order.
    positions: Vec<u32>,
}

/// The lottery, published so anyone can check it: the seed's commitment (from creation), the
/// seed (once drawn), the entrants' pseudonymous ids in join order, and each one's position.
#[utoipa::path(get, path = "/v1/sales/{id}/draw", tag = "public", params(("id" = String, Path)),
    responses((status = 200, description = "the draw", body = PublishedDraw),
        (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn published_draw(
    State(state): State<AppState>,
    ApiPath(sale_id): ApiPath<String>,
) -> Result<Json<PublishedDraw>, ApiError> {
    let sale = find_sale(&state, &sale_id)?;
    let spec = sale.view().spec.clone();
    let Some(seed) = spec.lottery_seed else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_lottery",
            "this sale has no lottery",
        ));
    };
    let (entrants, ranks, drawn) = sale
        .read(|s| {
            let queue = s.queue();
            let drawn = queue.drawn().unwrap_or(0) as usize;
            let ids: Vec<String> = queue.entries()[..drawn]
                .iter()
                .map(|e| e.to_hex())
                .collect();
            (ids, queue.ranks(), queue.drawn())
        })
        .await?;
    let positions: Vec<u32> = ranks.iter().map(|r| r + 1).collect();
    Ok(Json(PublishedDraw {
        sale_id,
        seed_commitment: seed_commitment(&seed),
        seed: drawn.map(|_| hex::encode(seed)),
        drawn: drawn.is_some(),
        entrants,
        positions,
    }))
}
