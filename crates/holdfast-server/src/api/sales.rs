//! Operator calls: create and read sales, restock, close, release a channel share, list
//! orders, issue customer tokens.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use holdfast_core::{Command, Pausable, STOCK_MAX, Shopper, is_valid_sale_id};
use serde_json::{Value, json};

use super::credentials::{Caller, Operator};
use super::extract::{ApiJson, ApiPath};
use super::overload::WriteSlot;
use super::wire::{
    CreateSale, CustomerTokenRequest, OrderBody, OrdersQuery, RestockRequest, format_time,
    in_range, parse_channel, parse_order_id, sale_body,
};
use crate::actor::SaleHandle;
use crate::auth::CustomerIdentity;
use crate::error::ApiError;
use crate::ledger::Created;
use crate::state::AppState;

const ORDERS_PAGE_DEFAULT: usize = 100;
const ORDERS_PAGE_MAX: usize = 1_000;
const TOKEN_TTL_S_MAX: i64 = 30 * 24 * 3600;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/sales", post(create_sale))
        .route("/v1/sales/{id}", get(get_sale))
        .route("/v1/sales/{id}/restock", post(restock))
        .route("/v1/sales/{id}/close", post(close))
        .route("/v1/sales/{id}/pause", setting_pause(Pausable::Sale, true))
        .route(
            "/v1/sales/{id}/resume",
            setting_pause(Pausable::Sale, false),
        )
        .route(
            "/v1/sales/{id}/waiting-room/pause",
            setting_pause(Pausable::WaitingRoom, true),
        )
        .route(
            "/v1/sales/{id}/waiting-room/resume",
            setting_pause(Pausable::WaitingRoom, false),
        )
        .route(
            "/v1/sales/{id}/channels/{channel}/release",
            post(release_share),
        )
        .route("/v1/sales/{id}/orders", get(list_orders))
        .route("/v1/customer-tokens", post(issue_customer_token))
}

fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
    seed
}

pub fn find_sale(state: &AppState, id: &str) -> Result<SaleHandle, ApiError> {
    state
        .ledger
        .sale(id)
        .ok_or_else(|| ApiError::not_found("sale_not_found", format!("no sale with id '{id}'")))
}

fn sale_json(state: &AppState, sale: &SaleHandle) -> Json<Value> {
    Json(sale_body(&sale.view(), state.clock.now()))
}

async fn create_sale(
    State(state): State<AppState>,
    _: Operator,
    _slot: WriteSlot,
    ApiJson(body): ApiJson<CreateSale>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // Several nodes: this one takes the new sale's stream (or reads back the sale another
    // node made under that id).
    if is_valid_sale_id(&body.id) {
        state.place(&body.id, true).await?;
    }
    // A retry of the same creation must compare equal, so it reuses the existing sale's seed.
    let existing_seed = state
        .ledger
        .sale(&body.id)
        .and_then(|s| s.view().spec.lottery_seed);
    let spec = body.into_spec(existing_seed.unwrap_or_else(random_seed))?;
    match state.ledger.create(spec.clone()).await? {
        Created::New(sale) => {
            state.publish_views(&spec.id);
            Ok((StatusCode::CREATED, sale_json(&state, &sale)))
        }
        // Creating the same sale again is a retry: answer as before, change nothing.
        Created::Existing(sale) if *sale.view().spec == spec => {
            Ok((StatusCode::OK, sale_json(&state, &sale)))
        }
        Created::Existing(_) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "sale_exists",
            format!("a different sale with id '{}' already exists", spec.id),
        )),
    }
}

async fn get_sale(
    State(state): State<AppState>,
    _: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(sale_json(&state, &find_sale(&state, &id)?))
}

async fn run(
    state: &AppState,
    id: &str,
    command: Command,
) -> Result<(SaleHandle, holdfast_core::Reply), ApiError> {
    let sale = find_sale(state, id)?;
    let reply = sale.execute(command, None).await?.outcome?;
    Ok((sale, reply))
}

async fn restock(
    State(state): State<AppState>,
    _: Operator,
    _slot: WriteSlot,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<RestockRequest>,
) -> Result<Json<Value>, ApiError> {
    let quantity = in_range("quantity", body.quantity, 1, i64::from(STOCK_MAX))? as u32;
    let (sale, _) = run(&state, &id, Command::Restock { quantity }).await?;
    Ok(sale_json(&state, &sale))
}

async fn close(
    State(state): State<AppState>,
    _: Operator,
    _slot: WriteSlot,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let (sale, _) = run(&state, &id, Command::Close).await?;
    Ok(sale_json(&state, &sale))
}

/// The call that pauses (`paused`) or resumes `part` of a sale.
fn setting_pause(part: Pausable, paused: bool) -> MethodRouter<AppState> {
    post(
        move |State(state): State<AppState>,
              _: Operator,
              _slot: WriteSlot,
              ApiPath(id): ApiPath<String>| async move {
            let command = Command::SetPaused { part, paused };
            let (sale, _) = run(&state, &id, command).await?;
            Ok::<_, ApiError>(sale_json(&state, &sale))
        },
    )
}

async fn release_share(
    State(state): State<AppState>,
    _: Operator,
    _slot: WriteSlot,
    ApiPath((id, channel)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let channel = parse_channel(Some(&channel))?;
    let (sale, reply) = run(&state, &id, Command::ReleaseChannelShare { channel }).await?;
    let holdfast_core::Reply::ShareReleased { quantity } = reply else {
        unreachable!("releasing a share answers with its size")
    };
    Ok(Json(
        json!({"channel": channel, "released": quantity, "sale": sale_body(&sale.view(), state.clock.now())}),
    ))
}

async fn list_orders(
    State(state): State<AppState>,
    _: Operator,
    ApiPath(id): ApiPath<String>,
    query: Result<Query<OrdersQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let sale = find_sale(&state, &id)?;
    let after = match query.after.as_deref().filter(|a| !a.is_empty()) {
        None => 0,
        Some(raw) => match parse_order_id(raw) {
            Ok((sale_id, order)) if sale_id == id => order.0,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_cursor",
                    "after must be an order_id from this sale",
                ));
            }
        },
    };
    let limit = match query.limit.as_deref() {
        None => ORDERS_PAGE_DEFAULT,
        Some(raw) => {
            let parsed = raw.parse::<i64>().map_err(|_| {
                ApiError::bad_request("invalid_limit", "limit must be a whole number")
            })?;
            in_range("limit", parsed, 1, ORDERS_PAGE_MAX as i64)? as usize
        }
    };
    let sale_id = id.clone();
    let (orders, next) = sale
        .read(move |sale| {
            let start = usize::try_from(after)
                .unwrap_or(usize::MAX)
                .min(sale.orders().len());
            let page: Vec<OrderBody> = sale.orders()[start..]
                .iter()
                .take(limit)
                .map(|o| OrderBody::new(&sale_id, o))
                .collect();
            let more = sale.orders().len() > start + page.len();
            let next = page
                .last()
                .filter(|_| more)
                .map(|o| o.order_id().to_owned());
            (serde_json::to_value(&page).expect("orders serialise"), next)
        })
        .await?;
    Ok(Json(json!({"orders": orders, "next": next})))
}

fn bounded_text(
    field: &'static str,
    value: Option<String>,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.chars().count() > max || v.chars().any(char::is_control) => {
            Err(ApiError::bad_request(
                "invalid_customer",
                format!("{field} must be at most {max} characters, without control characters"),
            ))
        }
        other => Ok(other),
    }
}

async fn issue_customer_token(
    State(state): State<AppState>,
    _: Operator,
    ApiJson(body): ApiJson<CustomerTokenRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let customer_id = bounded_text("customer_id", Some(body.customer_id), 128)?.unwrap_or_default();
    if customer_id.trim().is_empty() {
        return Err(ApiError::bad_request(
            "invalid_customer",
            "customer_id must not be empty",
        ));
    }
    let identity = CustomerIdentity {
        customer_id,
        phone: bounded_text("phone", body.phone, 32)?,
        address: bounded_text("address", body.address, 512)?,
    };
    // The identity keys limits count against must exist for every token: refuse here what
    // would otherwise be dropped.
    Shopper::new(
        &identity.customer_id,
        identity.phone.as_deref(),
        identity.address.as_deref(),
    )?;
    let ttl_s = in_range(
        "ttl_s",
        body.ttl_s
            .unwrap_or(state.limits.customer_token_ttl_s_default as i64),
        60,
        TOKEN_TTL_S_MAX,
    )?;
    let expires_at = state.clock.now().plus_millis(ttl_s as u64 * 1000);
    let token = state.tokens.issue(&identity, expires_at);
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "expires_at": format_time(expires_at)})),
    ))
}
