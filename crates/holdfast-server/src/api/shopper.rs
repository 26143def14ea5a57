//! Shopper calls: hold, confirm (pay), release, and read holds and orders.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use holdfast_core::{
    Channel, Command, HoldEnd, HoldId, PER_CUSTOMER_LIMIT_MAX, Rejection, Reply, Shopper,
};
use holdfast_store::Batch;
use serde::Serialize;
use utoipa::ToSchema;

use super::credentials::{Caller, Customer};
use super::extract::{ApiJson, ApiPath};
use super::overload::WriteSlot;
use super::routes::Routes;
use super::sales::{find_sale, locate_sale};
use super::wire::{
    ConfirmPayment, ConfirmRequest, HoldBody, HoldRequest, OrderBody, PurchaseRequest, format_day,
    format_time, in_range, parse_channel, parse_hold_id, parse_order_id, render_confirm,
    render_hold, render_purchase,
};
use crate::actor::{AnswerWhen, Idempotent, Outcome, Render, Renderer, SaleHandle, SaleView};
use crate::error::{ApiError, ErrorBody};
use crate::idempotency::{Begin, InFlightGuard, Owner, StoredAnswer, fingerprint, validate_key};
use crate::ledger_error::LedgerError;
use crate::payments::{AuthorizeRequest, CURRENCY, PaymentError};
use crate::state::AppState;

const CARD_TOKEN_LEN_MAX: usize = 256;

pub fn routes() -> Routes {
    Routes::default()
        .add("/v1/sales/{id}/holds", &[Method::POST], post(place_hold))
        .add(
            "/v1/holds/{hold_id}",
            &[Method::GET, Method::DELETE],
            get(get_hold).delete(release_hold),
        )
        .add(
            "/v1/holds/{hold_id}/confirm",
            &[Method::POST],
            post(confirm_hold),
        )
        .add("/v1/sales/{id}/purchases", &[Method::POST], post(purchase))
        .add("/v1/orders/{order_id}", &[Method::GET], get(get_order))
}

/// Where an idempotent request starts: either the stored first answer, or a run (with the
/// in-flight guard when the request carries a key).
enum Start {
    Replay(StoredAnswer),
    Run(Option<InFlightGuard>),
}

/// The request's `Idempotency-Key`, if it has one.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    raw.to_str()
        .map_err(|_| {
            ApiError::bad_request("invalid_idempotency_key", "Idempotency-Key must be ASCII")
        })
        .and_then(validate_key)
        .map(Some)
}

fn start(
    state: &AppState,
    shopper: &Shopper,
    key: Option<&str>,
    fingerprint: &str,
) -> Result<Start, ApiError> {
    let Some(key) = key else {
        return Ok(Start::Run(None));
    };
    let owner = Owner::Customer(shopper.customer_id().to_owned());
    match state
        .idempotency
        .begin(owner, key, fingerprint, state.clock.now())?
    {
        Begin::Replay(answer) => Ok(Start::Replay(answer)),
        Begin::Fresh(guard) => Ok(Start::Run(Some(guard))),
    }
}

/// Executes `command`; with a guard, the rendered answer is stored durably with its events.
async fn execute(
    sale: &SaleHandle,
    command: Command,
    guard: Option<InFlightGuard>,
    fingerprint: String,
    render: Render,
) -> Result<(StoredAnswer, Outcome), ApiError> {
    let request = Executing {
        guard,
        fingerprint,
        render,
        answer_when: AnswerWhen::Durable,
    };
    execute_answered(sale, command, request).await
}

/// How a command is run for a request: under its idempotency key (if it has one), with the
/// answer it gets, answered when.
struct Executing {
    guard: Option<InFlightGuard>,
    fingerprint: String,
    render: Render,
    answer_when: AnswerWhen,
}

async fn execute_answered(
    sale: &SaleHandle,
    command: Command,
    request: Executing,
) -> Result<(StoredAnswer, Outcome), ApiError> {
    let Executing {
        guard,
        fingerprint,
        render,
        answer_when,
    } = request;
    let Some(guard) = guard else {
        let executed = sale.execute_answered(command, None, answer_when).await?;
        let answer = render.answer(&sale.view().spec, &executed.outcome);
        return Ok((answer, executed.outcome));
    };
    let idempotent = Idempotent {
        key: guard.key().to_owned(),
        fingerprint: fingerprint.clone(),
        render,
    };
    let executed = sale
        .execute_answered(command, Some(idempotent), answer_when)
        .await?;
    let answer = executed
        .answer
        .expect("an idempotent command returns its stored answer");
    guard.finish(fingerprint, answer.clone());
    Ok((answer, executed.outcome))
}

/// Holds units for the shopper until the hold expires.
#[utoipa::path(post, path = "/v1/sales/{id}/holds", tag = "shopper", security(("customer" = [])),
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header, description = "the same key again replays the first answer")),
    request_body = HoldRequest,
    responses((status = 201, description = "held", body = HoldBody),
        (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn place_hold(
    State(state): State<AppState>,
    Customer(shopper): Customer,
    _slot: WriteSlot,
    ApiPath(sale_id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<HoldRequest>,
) -> Result<Response, ApiError> {
    let wanted = Wanted::checked(body.quantity, body.channel.as_deref(), body.pass.as_deref())?;
    let sale = locate_sale(&state, &sale_id).await?;
    let fingerprint = fingerprint(&format!("hold {sale_id}"), &body);
    let guard = match start(&state, &shopper, idempotency_key(&headers)?, &fingerprint)? {
        Start::Replay(answer) => return Ok(answer.into_response()),
        Start::Run(guard) => guard,
    };
    let durable = AnswerWhen::Durable;
    let answer = hold(&state, &sale, shopper, wanted, guard, fingerprint, durable).await?;
    Ok(answer.into_response())
}

/// Holds and pays in one request. With an `Idempotency-Key`, the hold is kept under a key of
/// its own made from it, so a retry after a failure between the two steps pays for the same
/// hold rather than placing another (which a per-person limit would refuse); the order's answer
/// is kept under the key itself. A declined card gives the hold back at once, and the decline
/// is the answer a retry under the same key gets.
#[utoipa::path(post, path = "/v1/sales/{id}/purchases", tag = "shopper", security(("customer" = [])),
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header, description = "the same key again replays the first answer")),
    request_body = PurchaseRequest,
    responses((status = 201, description = "bought: the order", body = OrderBody),
        (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn purchase(
    State(state): State<AppState>,
    Customer(shopper): Customer,
    _slot: WriteSlot,
    ApiPath(sale_id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PurchaseRequest>,
) -> Result<Response, ApiError> {
    let wanted = Wanted::checked(body.quantity, body.channel.as_deref(), body.pass.as_deref())?;
    let card = card_token(&body.payment)?;
    let sale = locate_sale(&state, &sale_id).await?;
    let key = idempotency_key(&headers)?;
    let fingerprint = fingerprint(&format!("purchase {sale_id}"), &body);
    let guard = match start(&state, &shopper, key, &fingerprint)? {
        Start::Replay(answer) => return Ok(answer.into_response()),
        Start::Run(guard) => guard,
    };
    // A client's key is visible ASCII, so one with a space in it is never a client's own.
    let hold_key = key.map(|key| format!("{key} hold"));
    let hold_fingerprint = fingerprint.clone();
    let quantity = wanted.quantity;
    let (held, placed_here) = match start(&state, &shopper, hold_key.as_deref(), &hold_fingerprint)?
    {
        Start::Replay(answer) => (answer, false),
        Start::Run(hold_guard) => {
            // Answered as soon as it is decided (a refusal once durable): the card is authorised
            // while the hold is being written, and whatever this request answers next waits for a
            // later write of the sale's, durable after the hold's.
            let shopper = shopper.clone();
            let decided = AnswerWhen::Decided;
            let held = hold(
                &state,
                &sale,
                shopper,
                wanted,
                hold_guard,
                hold_fingerprint,
                decided,
            );
            (held.await?, true)
        }
    };
    let Some(hold_id) = held_hold_id(&held) else {
        return Ok(held.into_response()); // the refusal; a retry gets it again from the hold's key
    };
    let (_, hold) = parse_hold_id(&hold_id)?;
    let payment = Payment {
        raw_id: &hold_id,
        customer_id: shopper.customer_id().to_owned(),
        card,
        fingerprint,
        declined_releases_hold: true,
        active_quantity: placed_here.then_some(quantity),
    };
    let paid = pay(&state, &sale, hold, payment, guard, render_purchase).await;
    if paid.is_err() && placed_here {
        // No write of this request's came after the hold's: make sure the hold is durable before
        // answering, so the retry the error asks for finds it.
        let _ = sale.durable().await;
    }
    Ok(paid?.0.into_response())
}

/// The hold a hold's answer placed, if it placed one.
fn held_hold_id(answer: &StoredAnswer) -> Option<String> {
    if answer.status != 201 {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Held {
        hold_id: String,
    }
    let held: Held = serde_json::from_slice(&answer.body).ok()?;
    Some(held.hold_id)
}

/// What a hold asks for, checked.
struct Wanted<'a> {
    quantity: u32,
    channel: Channel,
    pass: Option<&'a str>,
}

impl<'a> Wanted<'a> {
    fn checked(
        quantity: i64,
        channel: Option<&str>,
        pass: Option<&'a str>,
    ) -> Result<Wanted<'a>, ApiError> {
        let limit = i64::from(PER_CUSTOMER_LIMIT_MAX);
        Ok(Wanted {
            quantity: in_range("invalid_quantity", "quantity", quantity, 1, limit)? as u32,
            channel: parse_channel(channel)?,
            pass,
        })
    }
}

/// Places a hold (or answers the refusal the published view already makes certain).
async fn hold(
    state: &AppState,
    sale: &SaleHandle,
    shopper: Shopper,
    wanted: Wanted<'_>,
    guard: Option<InFlightGuard>,
    fingerprint: String,
    answer_when: AnswerWhen,
) -> Result<StoredAnswer, ApiError> {
    let view = sale.view();
    if let Some(refusal) = view.counters().hold_refusal(state.clock.now()) {
        return refuse_from_view(state, &view, refusal, guard, fingerprint).await;
    }
    let pass = match wanted.pass {
        None => None,
        Some(token) => Some(pass_position(state, token, &view.spec.id, &shopper)?),
    };
    let command = Command::PlaceHold {
        shopper,
        quantity: wanted.quantity,
        channel: wanted.channel,
        pass,
    };
    let request = Executing {
        guard,
        fingerprint,
        render: Render::Outcome(render_hold),
        answer_when,
    };
    let (answer, _) = execute_answered(sale, command, request).await?;
    Ok(answer)
}

/// Answers a hold whose refusal the sale's published counters already make certain (closed,
/// not open yet, paused, sold out with nothing held), without a trip through the sale's actor:
/// during a sell-out these are nearly every request. With an idempotency key the refusal is
/// still stored durably first, in a batch of its own on the sale's stream, so a retry gets the
/// same answer.
async fn refuse_from_view(
    state: &AppState,
    view: &SaleView,
    refusal: Rejection,
    guard: Option<InFlightGuard>,
    fingerprint: String,
) -> Result<StoredAnswer, ApiError> {
    state.refused_from_view.count(&refusal);
    let mut answer = render_hold(&view.spec, &Err(refusal));
    let Some(guard) = guard else {
        return Ok(answer);
    };
    answer.stored_at = state.clock.now();
    let batch = Batch {
        values: vec![(guard.key().to_owned(), answer.encode(&fingerprint))],
        ..Batch::default()
    };
    state
        .ledger
        .streams()
        .writer(&view.spec.id)?
        .append(batch)
        .await
        .map_err(LedgerError::from)?;
    guard.finish(fingerprint, answer.clone());
    Ok(answer)
}

/// The admitted position a pass stands for, if it is genuine, unexpired, for this sale and
/// issued to this shopper. Whether it is still unused is the ledger's to say.
fn pass_position(
    state: &AppState,
    token: &str,
    sale_id: &str,
    shopper: &Shopper,
) -> Result<u32, ApiError> {
    state
        .tokens
        .verify_pass(token, state.clock.now())
        .filter(|p| p.sale_id == sale_id && p.customer_id == shopper.customer_id())
        .map(|p| p.n)
        .ok_or_else(|| {
            ApiError::from(holdfast_core::Rejection::PassInvalid {
                reason: "the pass is forged, expired, or not yours".into(),
            })
        })
}

/// The sale a hold id names, and the hold's number in it; an id naming no sale is, to the
/// caller, simply no such hold.
fn hold_and_sale(state: &AppState, raw_id: &str) -> Result<(SaleHandle, HoldId), ApiError> {
    let (sale_id, hold) = parse_hold_id(raw_id)?;
    let sale = find_sale(state, sale_id)
        .map_err(|_| ApiError::not_found("hold_not_found", "no such hold"))?;
    Ok((sale, hold))
}

fn card_token(payment: &ConfirmPayment) -> Result<String, ApiError> {
    if payment.method != "card" {
        return Err(ApiError::bad_request(
            "unsupported_payment_method",
            format!(
                "payment method '{}' is not accepted here; use \"card\"",
                payment.method
            ),
        ));
    }
    match payment.token.as_deref() {
        Some(token) if !token.is_empty() && token.len() <= CARD_TOKEN_LEN_MAX => {
            Ok(token.to_owned())
        }
        _ => Err(ApiError::bad_request(
            "invalid_payment",
            "payment.token must be a card token from the acquirer",
        )),
    }
}

/// Pays for a hold: it becomes an order.
#[utoipa::path(post, path = "/v1/holds/{hold_id}/confirm", tag = "shopper",
    security(("customer" = [])), params(("hold_id" = String, Path), ("Idempotency-Key" = Option<String>, Header, description = "the same key again replays the first answer")),
    request_body = ConfirmRequest,
    responses((status = 200, description = "confirmed", body = OrderBody),
        (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn confirm_hold(
    State(state): State<AppState>,
    Customer(shopper): Customer,
    _slot: WriteSlot,
    ApiPath(raw_id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ConfirmRequest>,
) -> Result<Response, ApiError> {
    let (sale, hold) = hold_and_sale(&state, &raw_id)?;
    let card = card_token(&body.payment)?;
    let fingerprint = fingerprint(&format!("confirm {raw_id}"), &body);
    let guard = match start(&state, &shopper, idempotency_key(&headers)?, &fingerprint)? {
        Start::Replay(answer) => return Ok(answer.into_response()),
        Start::Run(guard) => guard,
    };
    let payment = Payment {
        raw_id: &raw_id,
        customer_id: shopper.customer_id().to_owned(),
        card,
        fingerprint,
        declined_releases_hold: false,
        active_quantity: None,
    };
    let (answer, _) = pay(&state, &sale, hold, payment, guard, render_confirm).await?;
    Ok(answer.into_response())
}

/// Who pays for which hold, with what.
struct Payment<'a> {
    raw_id: &'a str,
    customer_id: String,
    card: String,
    /// The paying request's fingerprint (it covers the card token).
    fingerprint: String,
    /// Whether a declined card gives the hold back (a purchase) or leaves it for another card
    /// (a confirm).
    declined_releases_hold: bool,
    /// The hold's quantity, when this request placed it itself (so it is active and the sale
    /// need not be asked).
    active_quantity: Option<u32>,
}

/// Authorises the card for an active hold, confirms the hold, and settles the authorisation:
/// captured for the order, voided if the ledger did not confirm. Returns the answer and the
/// sale's outcome.
async fn pay(
    state: &AppState,
    sale: &SaleHandle,
    hold: HoldId,
    mut payment: Payment<'_>,
    guard: Option<InFlightGuard>,
    render: Renderer,
) -> Result<(StoredAnswer, Outcome), ApiError> {
    let owner = payment.customer_id.clone();
    // The ledger re-checks the hold when confirming; this early look only decides whether to
    // ask the card network for money, and how much.
    let active_quantity = match payment.active_quantity {
        Some(quantity) => Some(quantity),
        None => {
            sale.read_latest(move |s| {
                s.active_hold(hold)
                    .filter(|h| h.shopper.customer_id() == owner)
                    .map(|h| h.quantity)
            })
            .await?
        }
    };
    let spec = sale.view().spec.clone();
    // Only an active hold is paid for; otherwise the ledger answers (expired, already
    // confirmed, not found) without any money moving.
    let authorization = match active_quantity {
        Some(quantity) if !spec.rehearsal => {
            let request = AuthorizeRequest {
                card_token: std::mem::take(&mut payment.card),
                amount: spec.price * u64::from(quantity),
                currency: CURRENCY,
                // A retry with the same card must not authorise twice; another card is another
                // attempt. The request fingerprint covers the card token.
                // The buyer is named too: a hold placed but never made durable (the server
                // died first) leaves its id to be placed again, perhaps for someone else.
                idempotency_key: format!(
                    "authorize {} {} {}",
                    payment.raw_id, payment.customer_id, payment.fingerprint
                ),
            };
            match state.payments.authorize(request).await {
                Ok(authorization) => Some(authorization),
                Err(declined @ PaymentError::Declined { .. }) if payment.declined_releases_hold => {
                    return release_declined(sale, hold, payment, guard, declined.into()).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
        _ => None,
    };
    let payment_ref = match (&authorization, active_quantity) {
        (Some(auth), _) => auth.id.clone(),
        (None, Some(_)) => "rehearsal".to_owned(),
        (None, None) => String::new(),
    };
    let command = Command::ConfirmHold {
        hold,
        customer_id: payment.customer_id,
        payment_ref,
    };
    let render = Render::Outcome(render);
    let result = execute(sale, command, guard, payment.fingerprint, render).await;
    if let Some(auth) = authorization {
        let outcome = result.as_ref().ok().map(|(_, o)| o.clone());
        let sale_id = spec.id.clone();
        settle(state, auth.id, sale_id, payment.raw_id.to_owned(), outcome).await;
    }
    result
}

/// Gives back the hold a declined card was to pay for, and keeps the decline as the request's
/// answer in the same durable write: a retry under the same key is declined again, and the
/// units are for sale again at once.
async fn release_declined(
    sale: &SaleHandle,
    hold: HoldId,
    payment: Payment<'_>,
    guard: Option<InFlightGuard>,
    declined: ApiError,
) -> Result<(StoredAnswer, Outcome), ApiError> {
    let command = Command::ReleaseHold {
        hold,
        customer_id: payment.customer_id,
    };
    let render = Render::Given(Box::new(declined.stored()));
    execute(sale, command, guard, payment.fingerprint, render).await
}

/// Captures the authorisation if it paid for the confirmed order, voids it otherwise (the hold
/// expired during payment, or the ledger could not write). Each runs in a task of its own, so a
/// caller who hangs up cannot stop a payment half-settled; what the card network does not take
/// now is retried by `Settlements`. The buyer does not wait for a capture: the order is durable,
/// and its `payment_ref` is itself the intent to capture, which the settlement worker carries
/// out if this task does not finish. A void is waited for: until it is written down or done,
/// nothing else remembers it.
async fn settle(
    state: &AppState,
    authorization: String,
    sale_id: String,
    hold_id: String,
    outcome: Option<Outcome>,
) {
    let settlements = state.settlements.clone();
    match outcome {
        Some(Ok(Reply::Confirmed(order))) if order.payment_ref == authorization => {
            tokio::spawn(async move { settlements.capture_order(&sale_id, &order).await });
        }
        _ => {
            let voiding = tokio::spawn(async move {
                let key = format!("settle {hold_id}");
                if let Err(error) = settlements.void(&sale_id, &authorization, &key).await {
                    tracing::error!(%error, %authorization, "a void to retry could not be written down");
                }
            });
            let _ = voiding.await;
        }
    }
}

/// A hold as its shopper sees it.
#[derive(Serialize, ToSchema)]
pub(super) struct HoldStatus {
    hold_id: String,
    /// `active`, `confirmed`, `released` or `expired`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    quantity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deliver_by: Option<String>,
}

impl HoldStatus {
    fn ended(hold_id: String, status: &'static str) -> HoldStatus {
        HoldStatus {
            hold_id,
            status,
            quantity: None,
            expires_at: None,
            deliver_by: None,
        }
    }
}

/// Gives a hold's units back.
#[utoipa::path(delete, path = "/v1/holds/{hold_id}", tag = "shopper",
    security(("customer" = [])), params(("hold_id" = String, Path)),
    responses((status = 200, description = "released", body = HoldStatus),
        (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn release_hold(
    State(state): State<AppState>,
    Customer(shopper): Customer,
    _slot: WriteSlot,
    ApiPath(raw_id): ApiPath<String>,
) -> Result<Json<HoldStatus>, ApiError> {
    let (sale, hold) = hold_and_sale(&state, &raw_id)?;
    let command = Command::ReleaseHold {
        hold,
        customer_id: shopper.customer_id().to_owned(),
    };
    sale.execute(command, None).await?.outcome?;
    Ok(Json(HoldStatus::ended(raw_id, "released")))
}

/// A hold, and how it ended.
#[utoipa::path(get, path = "/v1/holds/{hold_id}", tag = "shopper",
    security(("customer" = [])), params(("hold_id" = String, Path)),
    responses((status = 200, description = "the hold", body = HoldStatus),
        (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn get_hold(
    State(state): State<AppState>,
    Customer(shopper): Customer,
    ApiPath(raw_id): ApiPath<String>,
) -> Result<Json<HoldStatus>, ApiError> {
    let (sale, hold) = hold_and_sale(&state, &raw_id)?;
    let owner = shopper.customer_id().to_owned();
    let id = raw_id.clone();
    let body = sale
        .read(move |s| {
            if let Some(h) = s
                .active_hold(hold)
                .filter(|h| h.shopper.customer_id() == owner)
            {
                return Some(HoldStatus {
                    hold_id: id,
                    status: "active",
                    quantity: Some(h.quantity),
                    expires_at: Some(format_time(h.expires_at)),
                    deliver_by: h.deliver_by.map(format_day),
                });
            }
            let status = match s.hold_end_for(hold, &owner)? {
                HoldEnd::Confirmed(_) => "confirmed",
                HoldEnd::Released => "released",
                HoldEnd::Expired => "expired",
            };
            Some(HoldStatus::ended(id, status))
        })
        .await?;
    body.map(Json)
        .ok_or_else(|| ApiError::not_found("hold_not_found", "no such hold"))
}

/// One order, to its shopper or the operator.
#[utoipa::path(get, path = "/v1/orders/{order_id}", tag = "shopper",
    security(("customer" = []), ("operator" = [])), params(("order_id" = String, Path)),
    responses((status = 200, description = "the order", body = OrderBody),
        (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn get_order(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw_id): ApiPath<String>,
) -> Result<Json<OrderBody>, ApiError> {
    let not_found = || ApiError::not_found("order_not_found", "no such order");
    let (sale_id, order) = parse_order_id(&raw_id)?;
    let sale = find_sale(&state, sale_id).map_err(|_| not_found())?;
    let order = sale
        .read(move |s| s.order(order).cloned())
        .await?
        .ok_or_else(not_found)?;
    if let Caller::Customer(shopper) = &caller
        && shopper.customer_id() != order.shopper.customer_id()
    {
        return Err(not_found());
    }
    Ok(Json(OrderBody::new(sale_id, &order)))
}
