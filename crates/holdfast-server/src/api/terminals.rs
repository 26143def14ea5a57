//! Terminal calls: registration (operator), allotments and journal sync (signed by the terminal).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use holdfast_core::terminal::auth::{self, Authorization, SignedRequest};
use holdfast_core::terminal::wire::{
    AllotmentAnswer, AllotmentRequest, CatalogueItem, OfflineCardLimits, PaymentAnswer,
    PaymentRequest, StoreCatalogue, SyncAnswer, SyncRequest, TillReport,
};
use holdfast_core::{Timestamp, is_valid_sale_id};
use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::credentials::Operator;
use super::extract::{ApiBytes, ApiJson, ApiPath};
use super::overload::WriteSlot;
use super::routes::Routes;
use super::wire::{format_time, in_range, stock_quantity};
use crate::error::{ApiError, ErrorBody};
use crate::idempotency::{Begin, Owner, StoredAnswer, fingerprint};
use crate::payments::PaymentError;
use crate::state::AppState;
use crate::streams::{store_stream, terminal_stream};
use crate::terminals::is_valid_store_name;
use crate::terminals::{
    AuthRefusal, Noted, ReceivableView, SYNC_ENTRIES_MAX, Terminal, TerminalView,
};

pub fn routes() -> Routes {
    use Method as M;
    Routes::default()
        .add("/v1/terminals", &[M::POST], post(register))
        .add(
            "/v1/terminals/{id}/allotments",
            &[M::POST],
            post(allotments),
        )
        .add("/v1/terminals/{id}/sync", &[M::POST], post(sync))
        .add("/v1/terminals/{id}/quarantine", &[M::GET], get(quarantine))
        .add("/v1/terminals/{id}/secret", &[M::POST], post(rotate_secret))
        .add("/v1/terminals/{id}", &[M::GET], get(view))
        .add("/v1/terminals/{id}/view", &[M::POST], post(own_view))
        .add(
            "/v1/stores/{store}/catalogue",
            &[M::GET, M::PUT],
            get(get_catalogue).put(set_catalogue),
        )
        .add(
            "/v1/terminals/{id}/payments",
            &[M::POST],
            post(card_payment),
        )
        .add(
            "/v1/stores/{store}/offline-card-limits",
            &[M::POST],
            post(set_store_limits),
        )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RegisterRequest {
    terminal_id: String,
    store: String,
}

/// A till's credentials: its secret is shown once.
#[derive(Serialize, ToSchema)]
pub(super) struct Registered {
    terminal_id: String,
    store: String,
    secret: String,
}

/// Registers a till.
#[utoipa::path(post, path = "/v1/terminals", tag = "operator", security(("operator" = [])),
    request_body = RegisterRequest,
    responses((status = 201, description = "registered", body = Registered), (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn register(
    State(state): State<AppState>,
    _: Operator,
    _slot: WriteSlot,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    if !is_valid_sale_id(&body.terminal_id) || !is_valid_store_name(&body.store) {
        return Err(ApiError::bad_request(
            "invalid_terminal",
            "terminal_id must be 1-64 letters, digits, '-' or '_', and store must be given",
        ));
    }
    state
        .place(&terminal_stream(&body.terminal_id), true)
        .await?;
    match state
        .terminals
        .register(&body.terminal_id, &body.store)
        .await?
    {
        Some(secret) => Ok((
            StatusCode::CREATED,
            Json(Registered {
                terminal_id: body.terminal_id,
                store: body.store,
                secret,
            }),
        )),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "terminal_exists",
            "this terminal is registered already; its secret is not shown again",
        )),
    }
}

/// A till that lost its data is registered again: a new secret, the same history. Its new
/// journal continues after `acked_through`, from `head`.
#[derive(Serialize, ToSchema)]
pub(super) struct NewSecret {
    terminal_id: String,
    secret: String,
    acked_through: u64,
    head: String,
}

#[utoipa::path(post, path = "/v1/terminals/{id}/secret", tag = "operator",
    security(("operator" = [])), params(("id" = String, Path)),
    responses((status = 200, description = "a new secret; the history kept", body = NewSecret), (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn rotate_secret(
    State(state): State<AppState>,
    _: Operator,
    _slot: WriteSlot,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<NewSecret>, ApiError> {
    let (secret, progress) =
        state.terminals.rotate_secret(&id).await?.ok_or_else(|| {
            ApiError::not_found("terminal_not_found", format!("no terminal '{id}'"))
        })?;
    Ok(Json(NewSecret {
        terminal_id: id,
        secret,
        acked_through: progress.applied_through,
        head: progress.head.to_hex(),
    }))
}

/// A request from the terminal named in the path, carrying that terminal's valid signature over
/// method, path, signing time, nonce and the exact body — received once.
pub(super) struct Signed {
    terminal: Arc<Terminal>,
    body: Bytes,
}

fn refuse(why: impl std::fmt::Display) -> ApiError {
    ApiError::unauthorized_terminal(
        "unauthorized",
        format!(
            "this call needs 'Authorization: Terminal <id>:<signed at>:<nonce>:<signature>' \
         from that terminal: {why}"
        ),
    )
}

impl FromRequest<AppState> for Signed {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let (mut parts, body) = request.into_parts();
        let ApiPath(id) = ApiPath::<String>::from_request_parts(&mut parts, state).await?;
        let auth = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(Authorization::parse)
            .ok_or_else(|| refuse("the header is missing or malformed"))?;
        let terminal = state
            .terminals
            .get(&id)
            .filter(|_| auth.terminal == id)
            .ok_or_else(|| refuse("no such terminal"))?;
        // Everything that needs no body is checked before a byte of it is read.
        terminal
            .check_time(&auth, state.clock.now())
            .map_err(auth_refusal)?;
        let (method, path) = (parts.method.clone(), parts.uri.path().to_owned());
        let ApiBytes(body) =
            ApiBytes::from_request(Request::from_parts(parts, body), state).await?;
        let request = SignedRequest {
            method: method.as_str(),
            path: &path,
            signed_at: auth.signed_at,
            nonce: &auth.nonce,
            body: &body,
        };
        terminal
            .admit(&auth, &request, state.clock.now())
            .map_err(auth_refusal)?;
        Ok(Signed { terminal, body })
    }
}

fn auth_refusal(refusal: AuthRefusal) -> ApiError {
    match refusal {
        AuthRefusal::Refused(auth::Refused::TooMany) => ApiError::overloaded(5),
        AuthRefusal::Refused(refused @ auth::Refused::Replayed) => {
            ApiError::unauthorized_terminal("request_replayed", refused.to_string())
        }
        AuthRefusal::Refused(refused) => {
            ApiError::unauthorized_terminal("signature_expired", refused.to_string())
        }
        AuthRefusal::BadSignature => refuse(refusal),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))
}

/// Sets the till's allotment of a sale (claiming or returning the difference).
#[utoipa::path(post, path = "/v1/terminals/{id}/allotments", tag = "terminal",
    security(("terminal" = [])), params(("id" = String, Path)), request_body = AllotmentRequest,
    responses((status = 200, description = "the allotment held now", body = AllotmentAnswer), (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn allotments(
    State(state): State<AppState>,
    Signed { terminal, body }: Signed,
) -> Result<Json<AllotmentAnswer>, ApiError> {
    let _slot = WriteSlot::take(&state)?;
    let request: AllotmentRequest = parse(&body)?;
    let target = stock_quantity(request.quantity, 0)?;
    let (granted, terms) = terminal
        .set_allotment(state.0.as_ref(), &request.sale_id, target)
        .await?;
    Ok(Json(AllotmentAnswer {
        sale_id: request.sale_id,
        granted,
        terms,
    }))
}

/// Uploads the till's journal; each entry applies exactly once.
#[utoipa::path(post, path = "/v1/terminals/{id}/sync", tag = "terminal",
    security(("terminal" = [])), params(("id" = String, Path)), request_body = SyncRequest,
    responses((status = 200, description = "acknowledged", body = SyncAnswer), (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn sync(
    State(state): State<AppState>,
    Signed { terminal, body }: Signed,
) -> Result<Json<SyncAnswer>, ApiError> {
    // Reconnect storms: a few syncs at a time, the rest told to come back at a spread-out time,
    // so live shoppers keep being answered.
    let Ok(_slot) = state.sync_permits.clone().try_acquire_owned() else {
        metrics::counter!("holdfast_syncs_deferred_total").increment(1);
        terminal.deferred(state.clock.now());
        return Err(ApiError::overloaded(rand::rng().random_range(1..=5)));
    };
    let request: SyncRequest = parse(&body)?;
    if request.entries.len() > SYNC_ENTRIES_MAX {
        return Err(ApiError::bad_request(
            "too_many_entries",
            format!("send at most {SYNC_ENTRIES_MAX} entries at once"),
        ));
    }
    let entries = request
        .entries
        .into_iter()
        .map(|entry| {
            entry
                .into_entry()
                .ok_or_else(|| ApiError::bad_request("invalid_entry", "prev must be 64 hex digits"))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let now = state.clock.now();
    let outcome = terminal
        .sync(state.0.as_ref(), &entries, request.report, now)
        .await?;
    metrics::counter!("holdfast_sync_entries_total").increment(entries.len() as u64);
    let store = state.store_settings(&terminal.store).await?;
    let catalogue = store
        .catalogue
        .filter(|c| c.version > request.catalogue_version);
    Ok(Json(SyncAnswer {
        acked_through: outcome.acked_through,
        head: outcome.head.to_hex(),
        receipt: outcome.receipt,
        stopped: outcome.stopped,
        quarantined: outcome.quarantined,
        flagged: outcome.flagged,
        settled: outcome.settled,
        offline_card_limits: store.offline_card_limits,
        catalogue,
        give_back: outcome.give_back,
    }))
}

const PAYMENT_REFERENCE_LEN_MAX: usize = 128;
const CARD_TOKEN_LEN_MAX: usize = 256;

/// A card payment from the counter: authorised and captured through the server's card
/// network connection, idempotent on the till's reference (online sales, and offline ones
/// forwarded after an outage). The reference binds the amount and the card: a retry with the
/// same ones gets the first answer, a reuse with others is refused.
#[utoipa::path(post, path = "/v1/terminals/{id}/payments", tag = "terminal",
    security(("terminal" = [])), params(("id" = String, Path)), request_body = PaymentRequest,
    responses((status = 200, description = "approved", body = PaymentAnswer), (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn card_payment(
    State(state): State<AppState>,
    Signed { terminal, body }: Signed,
) -> Result<Response, ApiError> {
    let _slot = WriteSlot::take(&state)?;
    let request: PaymentRequest = parse(&body)?;
    let well_formed = (1..=PAYMENT_REFERENCE_LEN_MAX).contains(&request.reference.len())
        && request.reference.bytes().all(|b| b.is_ascii_graphic())
        && (1..=CARD_TOKEN_LEN_MAX).contains(&request.card_token.len());
    if !well_formed {
        return Err(ApiError::bad_request(
            "invalid_payment",
            format!(
                "reference (1-{PAYMENT_REFERENCE_LEN_MAX} visible ASCII characters) and \
                 card_token (1-{CARD_TOKEN_LEN_MAX} characters) are required"
            ),
        ));
    }
    let amount = in_range("invalid_amount", "amount", request.amount, 1, i64::MAX)? as u64;
    let fingerprint = fingerprint("till card payment", &(amount, &request.card_token));
    let owner = Owner::Terminal(terminal.id.clone());
    let guard =
        match state
            .idempotency
            .begin(owner, &request.reference, &fingerprint, state.clock.now())?
        {
            Begin::Replay(answer) => return Ok(answer.into_response()),
            Begin::Fresh(guard) => guard,
        };
    let key = format!("terminal {} {}", terminal.id, request.reference);
    let charged = state
        .settlements
        .charge(terminal.stream(), request.card_token, amount, &key)
        .await;
    let answer = match charged {
        Ok(authorization) => {
            let approved = PaymentAnswer {
                status: "approved".into(),
                authorization_id: authorization.id,
                amount,
            };
            StoredAnswer::json(200, &approved)
        }
        Err(declined @ PaymentError::Declined { .. }) => ApiError::from(declined).stored(),
        // Not an answer about this payment (the network is down): a retry tries afresh.
        Err(other) => return Err(other.into()),
    };
    let answer = guard
        .finish_durably(terminal.writer(), fingerprint, answer, state.clock.now())
        .await?;
    Ok(answer.into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsRequest {
    per_sale_max: i64,
    outstanding_total_max: i64,
    outstanding_count_max: i64,
    age_max_hours: i64,
}

#[derive(Serialize, ToSchema)]
pub(super) struct StoreLimits {
    store: String,
    offline_card_limits: OfflineCardLimits,
}

/// The operator's limits on card payments a store's tills may take offline.
#[utoipa::path(post, path = "/v1/stores/{store}/offline-card-limits", tag = "operator",
    security(("operator" = [])), params(("store" = String, Path)), request_body = LimitsRequest,
    responses((status = 200, description = "set", body = StoreLimits), (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn set_store_limits(
    State(state): State<AppState>,
    _: Operator,
    _slot: WriteSlot,
    ApiPath(store): ApiPath<String>,
    ApiJson(body): ApiJson<LimitsRequest>,
) -> Result<Json<StoreLimits>, ApiError> {
    let store = store_name(store)?;
    let limit = |field, value, min, max| in_range("invalid_card_limits", field, value, min, max);
    let limits = OfflineCardLimits {
        per_sale_max: limit("per_sale_max", body.per_sale_max, 0, i64::MAX)? as u64,
        outstanding_total_max: limit(
            "outstanding_total_max",
            body.outstanding_total_max,
            0,
            i64::MAX,
        )? as u64,
        outstanding_count_max: limit(
            "outstanding_count_max",
            body.outstanding_count_max,
            0,
            100_000,
        )? as u32,
        age_max_hours: limit("age_max_hours", body.age_max_hours, 1, 7 * 24)? as u32,
    };
    state.place(&store_stream(&store), true).await?;
    state.terminals.stores.set_limits(&store, limits).await?;
    Ok(Json(StoreLimits {
        store,
        offline_card_limits: limits,
    }))
}

/// Entries a person must settle (quarantined, never applied) and flagged ones (applied).
#[derive(Serialize, ToSchema)]
pub(super) struct Quarantine {
    terminal_id: String,
    store: String,
    quarantine: Vec<Noted>,
    flagged: Vec<Noted>,
}

#[utoipa::path(get, path = "/v1/terminals/{id}/quarantine", tag = "operator",
    security(("operator" = [])), params(("id" = String, Path)),
    responses((status = 200, description = "entries to look at", body = Quarantine), (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn quarantine(
    State(state): State<AppState>,
    _: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Quarantine>, ApiError> {
    let view = find_terminal(&state, &id)?.view(state.clock.now()).await;
    Ok(Json(Quarantine {
        terminal_id: view.terminal_id,
        store: view.store,
        quarantine: view.quarantine,
        flagged: view.flagged,
    }))
}

fn find_terminal(state: &AppState, id: &str) -> Result<Arc<Terminal>, ApiError> {
    state
        .terminals
        .get(id)
        .ok_or_else(|| ApiError::not_found("terminal_not_found", format!("no terminal '{id}'")))
}

/// The shop as its owner sees it from the server: what the till sold and synced, who owes
/// what, transfers to confirm, what waits at the till, entries a person must look at.
#[utoipa::path(get, path = "/v1/terminals/{id}", tag = "operator",
    security(("operator" = [])), params(("id" = String, Path)),
    responses((status = 200, description = "the till", body = TerminalViewBody), (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn view(
    State(state): State<AppState>,
    _: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TerminalViewBody>, ApiError> {
    let view = find_terminal(&state, &id)?.view(state.clock.now()).await;
    Ok(Json(view_body(view)))
}

/// The same view, asked for by the till itself (a signed POST with an empty body).
#[utoipa::path(post, path = "/v1/terminals/{id}/view", tag = "terminal",
    security(("terminal" = [])), params(("id" = String, Path)),
    responses((status = 200, description = "the till", body = TerminalViewBody), (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn own_view(
    State(state): State<AppState>,
    Signed { terminal, .. }: Signed,
) -> Result<Json<TerminalViewBody>, ApiError> {
    Ok(Json(view_body(terminal.view(state.clock.now()).await)))
}

/// The shop as its owner sees it from the server.
#[derive(Serialize, ToSchema)]
pub(super) struct TerminalViewBody {
    terminal_id: String,
    store: String,
    last_sync_at: Option<String>,
    synced_through: u64,
    takings: u64,
    /// Units sold per sale id.
    units_sold: std::collections::BTreeMap<String, u64>,
    waiting_at_till: Option<TillReport>,
    receivables: Vec<ReceivableView>,
    transfers_pending: Vec<TransferPending>,
    quarantine: Vec<Noted>,
    flagged: Vec<Noted>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct TransferPending {
    seq: u64,
    amount: u64,
    taken_at: String,
}

fn view_body(view: TerminalView) -> TerminalViewBody {
    let transfers_pending = view
        .transfers_pending
        .iter()
        .map(|(seq, t)| TransferPending {
            seq: *seq,
            amount: t.amount,
            taken_at: format_time(Timestamp(t.at)),
        })
        .collect();
    TerminalViewBody {
        terminal_id: view.terminal_id,
        store: view.store,
        last_sync_at: view.last_sync_at.map(format_time),
        synced_through: view.synced_through,
        takings: view.takings,
        units_sold: view.units_sold,
        waiting_at_till: view.waiting_at_till,
        receivables: view.receivables,
        transfers_pending,
        quarantine: view.quarantine,
        flagged: view.flagged,
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CatalogueRequest {
    items: Vec<CatalogueItem>,
    business_number: Option<String>,
    bank_account: Option<String>,
}

const CATALOGUE_ITEMS_MAX: usize = 5_000;
const CATALOGUE_TEXT_CHARS_MAX: usize = 128;

/// The operator sets a store's catalogue once; every till of the store pulls it on its next
/// sync. A scarce item's price is its sale's, whatever the request says.
#[utoipa::path(put, path = "/v1/stores/{store}/catalogue", tag = "operator",
    security(("operator" = [])), params(("store" = String, Path)), request_body = CatalogueRequest,
    responses((status = 200, description = "the catalogue, versioned", body = StoreCatalogue), (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn set_catalogue(
    State(state): State<AppState>,
    _: Operator,
    _slot: WriteSlot,
    ApiPath(store): ApiPath<String>,
    ApiJson(body): ApiJson<CatalogueRequest>,
) -> Result<Json<StoreCatalogue>, ApiError> {
    let store = store_name(store)?;
    let invalid = |why: String| ApiError::bad_request("invalid_catalogue", why);
    if body.items.len() > CATALOGUE_ITEMS_MAX {
        return Err(invalid(format!("at most {CATALOGUE_ITEMS_MAX} items")));
    }
    let text_ok = |t: &str| holdfast_core::is_display_text(t, CATALOGUE_TEXT_CHARS_MAX);
    let mut items = Vec::with_capacity(body.items.len());
    for mut item in body.items {
        if !text_ok(&item.sku) || !text_ok(&item.name) {
            return Err(invalid(format!(
                "sku and name must be 1-{CATALOGUE_TEXT_CHARS_MAX} characters without control characters"
            )));
        }
        if let Some(sale_id) = &item.sale_id {
            let sale = state.sale_view(sale_id).ok_or_else(|| {
                ApiError::not_found("sale_not_found", format!("no sale with id '{sale_id}'"))
            })?;
            item.price = sale.spec.price;
        }
        items.push(item);
    }
    let extra_ok = |t: &Option<String>| t.as_deref().is_none_or(text_ok);
    if !extra_ok(&body.business_number) || !extra_ok(&body.bank_account) {
        return Err(invalid(
            "business_number and bank_account must be short text".into(),
        ));
    }
    state.place(&store_stream(&store), true).await?;
    let catalogue = StoreCatalogue {
        version: 0,
        items,
        business_number: body.business_number,
        bank_account: body.bank_account,
    };
    Ok(Json(
        state
            .terminals
            .stores
            .set_catalogue(&store, catalogue)
            .await?,
    ))
}

/// A store's catalogue, as its tills pull it.
#[utoipa::path(get, path = "/v1/stores/{store}/catalogue", tag = "operator",
    security(("operator" = [])), params(("store" = String, Path)),
    responses((status = 200, description = "the catalogue", body = StoreCatalogue), (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn get_catalogue(
    State(state): State<AppState>,
    _: Operator,
    ApiPath(store): ApiPath<String>,
) -> Result<Json<StoreCatalogue>, ApiError> {
    let store = store_name(store)?;
    let settings = state.store_settings(&store).await?;
    Ok(Json(settings.catalogue.unwrap_or_default()))
}

/// A store's name, as the operator gave it: 1-128 characters, none of them control
/// characters (it names a stream and keys in the ledger).
fn store_name(name: String) -> Result<String, ApiError> {
    if is_valid_store_name(&name) {
        Ok(name)
    } else {
        Err(ApiError::bad_request(
            "invalid_store",
            "a store's name must be 1-128 characters, without control characters",
        ))
    }
}
