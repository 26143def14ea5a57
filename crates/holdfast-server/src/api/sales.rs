//! Operator calls: create and read sales, restock, close, release a channel share, list
//! orders, issue customer tokens.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::Method;
use axum::http::StatusCode;
use axum::routing::{MethodRouter, get, post};
use holdfast_core::{Command, Pausable, Shopper, is_valid_sale_id};
use serde::Serialize;
use utoipa::ToSchema;

use super::credentials::{Caller, Operator};
use super::extract::{ApiJson, ApiPath};
use super::overload::WriteSlot;
use super::routes::Routes;
use super::wire::{
    CreateSale, CustomerTokenRequest, OrderBody, OrdersQuery, RestockRequest, SaleBody,
    format_time, in_range, parse_channel, parse_order_id, stock_quantity,
};
use crate::actor::SaleHandle;
use crate::auth::CustomerIdentity;
use crate::error::{ApiError, ErrorBody};
use crate::ledger::Created;
use crate::state::AppState;

const ORDERS_PAGE_DEFAULT: usize = 100;
const ORDERS_PAGE_MAX: usize = 1_000;
const TOKEN_TTL_S_MAX: i64 = 30 * 24 * 3600;

/// The pause and resume calls: path, what they set, and what they do (for the OpenAPI
/// document, which describes them from this table).
pub const PAUSES: [(&str, Pausable, bool, &str); 4] = [
    (
        "/v1/sales/{id}/pause",
        Pausable::Sale,
        true,
        "Pauses the sale: no new hold or allotment; holds already placed may still be paid, and tills' sales are still recorded",
    ),
    (
        "/v1/sales/{id}/resume",
        Pausable::Sale,
        false,
        "Resumes a paused sale",
    ),
    (
        "/v1/sales/{id}/waiting-room/pause",
        Pausable::WaitingRoom,
        true,
        "Pauses admissions: shoppers keep joining and keep their places; passes given stay good",
    ),
    (
        "/v1/sales/{id}/waiting-room/resume",
        Pausable::WaitingRoom,
        false,
        "Resumes admissions at the sale's rate",
    ),
];

pub fn routes() -> Routes {
    let routes = Routes::default()
        .add("/v1/sales", &[Method::POST], post(create_sale))
        .add("/v1/sales/{id}", &[Method::GET], get(get_sale))
        .add("/v1/sales/{id}/restock", &[Method::POST], post(restock))
        .add("/v1/sales/{id}/close", &[Method::POST], post(close))
        .add(
            "/v1/sales/{id}/channels/{channel}/release",
            &[Method::POST],
            post(release_share),
        )
        .add("/v1/sales/{id}/orders", &[Method::GET], get(list_orders))
        .add(
            "/v1/customer-tokens",
            &[Method::POST],
            post(issue_customer_token),
        );
    PAUSES
        .into_iter()
        .fold(routes, |routes, (path, part, paused, _)| {
            routes.add(path, &[Method::POST], setting_pause(part, paused))
        })
}

fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
    seed
}

/// The sale, for a write. On several nodes a sale this node does not hold this instant (its
/// lease lost a moment ago, or vacant after its holder died) is placed again first: taken over
/// here, or the caller is told to send the request again — never "no such sale" for a sale
/// that exists.
pub async fn locate_sale(state: &AppState, id: &str) -> Result<SaleHandle, ApiError> {
    if let Some(sale) = state.ledger.sale(id) {
        return Ok(sale);
    }
    if state.cluster.is_some() && is_valid_sale_id(id) {
        match state.place(id, false).await? {
            crate::cluster::Placement::Nowhere => {}
            // Ours, and nothing stored in it (a creation that was refused): no such sale.
            crate::cluster::Placement::Here => {
                return state
                    .ledger
                    .sale(id)
                    .map_or_else(|| find_sale(state, id), Ok);
            }
            _ => {
                return state
                    .ledger
                    .sale(id)
                    .ok_or_else(|| crate::ledger_error::LedgerError::Moved.into());
            }
        }
    }
    find_sale(state, id)
}

pub fn find_sale(state: &AppState, id: &str) -> Result<SaleHandle, ApiError> {
    if let Some(sale) = state.ledger.sale(id) {
        return Ok(sale);
    }
    // Several nodes: a sale whose view is published exists, only not here this instant (its
    // lease was just lost, or another node is taking it over): "send it again", never "no
    // such sale".
    if state.cluster.as_ref().is_some_and(|c| c.view(id).is_some()) {
        return Err(crate::ledger_error::LedgerError::Moved.into());
    }
    Err(ApiError::not_found(
        "sale_not_found",
        format!("no sale with id '{id}'"),
    ))
}

fn sale_json(state: &AppState, sale: &SaleHandle) -> Json<SaleBody> {
    Json(SaleBody::new(&sale.view(), state.clock.now()))
}

/// Creates a sale. The same body again is a harmless retry (200); another sale under the
/// same id is refused.
#[utoipa::path(post, path = "/v1/sales", tag = "operator", security(("operator" = [])),
    request_body = CreateSale,
    responses(
        (status = 201, description = "created", body = SaleBody),
        (status = 200, description = "the same sale, created before", body = SaleBody),
        (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn create_sale(
    State(state): State<AppState>,
    _: Operator,
    _slot: WriteSlot,
    ApiJson(body): ApiJson<CreateSale>,
) -> Result<(StatusCode, Json<SaleBody>), ApiError> {
    // Refused before anything is taken: on several nodes a refused sale must not leave its
    // id leased here with nothing in it.
    body.clone().into_spec(random_seed())?;
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

/// A sale's state and stock.
#[utoipa::path(get, path = "/v1/sales/{id}", tag = "operator",
    security(("operator" = []), ("customer" = [])), params(("id" = String, Path)),
    responses((status = 200, description = "the sale", body = SaleBody),
        (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn get_sale(
    State(state): State<AppState>,
    _: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SaleBody>, ApiError> {
    Ok(sale_json(&state, &find_sale(&state, &id)?))
}

async fn run(
    state: &AppState,
    id: &str,
    command: Command,
) -> Result<(SaleHandle, holdfast_core::Reply), ApiError> {
    let sale = locate_sale(state, id).await?;
    let reply = sale.execute(command, None).await?.outcome?;
    Ok((sale, reply))
}

/// Adds stock to a running sale.
#[utoipa::path(post, path = "/v1/sales/{id}/restock", tag = "operator",
    security(("operator" = [])), params(("id" = String, Path)), request_body = RestockRequest,
    responses((status = 200, description = "the sale", body = SaleBody),
        (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn restock(
    State(state): State<AppState>,
    _: Operator,
    _slot: WriteSlot,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<RestockRequest>,
) -> Result<Json<SaleBody>, ApiError> {
    let quantity = stock_quantity(body.quantity, 1)?;
    let (sale, _) = run(&state, &id, Command::Restock { quantity }).await?;
    Ok(sale_json(&state, &sale))
}

/// Stops new holds for good; holds already placed may still be paid.
#[utoipa::path(post, path = "/v1/sales/{id}/close", tag = "operator",
    security(("operator" = [])), params(("id" = String, Path)),
    responses((status = 200, description = "the sale", body = SaleBody),
        (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn close(
    State(state): State<AppState>,
    _: Operator,
    _slot: WriteSlot,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SaleBody>, ApiError> {
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

/// What a channel's share released to everyone came to.
#[derive(Serialize, ToSchema)]
pub(super) struct ShareReleased {
    #[schema(value_type = String)]
    channel: holdfast_core::Channel,
    released: u32,
    sale: SaleBody,
}

/// Hands a channel's unsold share to the common pool.
#[utoipa::path(post, path = "/v1/sales/{id}/channels/{channel}/release", tag = "operator",
    security(("operator" = [])),
    params(("id" = String, Path), ("channel" = String, Path, description = "web, app, phone or store")),
    responses((status = 200, description = "released", body = ShareReleased),
        (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn release_share(
    State(state): State<AppState>,
    _: Operator,
    _slot: WriteSlot,
    ApiPath((id, channel)): ApiPath<(String, String)>,
) -> Result<Json<ShareReleased>, ApiError> {
    let channel = parse_channel(Some(&channel))?;
    let (sale, reply) = run(&state, &id, Command::ReleaseChannelShare { channel }).await?;
    let holdfast_core::Reply::ShareReleased { quantity } = reply else {
        unreachable!("releasing a share answers with its size")
    };
    Ok(Json(ShareReleased {
        channel,
        released: quantity,
        sale: SaleBody::new(&sale.view(), state.clock.now()),
    }))
}

/// A page of a sale's orders.
#[derive(Serialize, ToSchema)]
pub(super) struct OrdersPage {
    orders: Vec<OrderBody>,
    /// Pass as `after` for the next page; `null` on the last.
    next: Option<String>,
}

/// A sale's orders, oldest first, a page at a time.
#[utoipa::path(get, path = "/v1/sales/{id}/orders", tag = "operator",
    security(("operator" = [])), params(("id" = String, Path), OrdersQuery),
    responses((status = 200, description = "a page", body = OrdersPage),
        (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn list_orders(
    State(state): State<AppState>,
    _: Operator,
    ApiPath(id): ApiPath<String>,
    query: Result<Query<OrdersQuery>, QueryRejection>,
) -> Result<Json<OrdersPage>, ApiError> {
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
            in_range("invalid_limit", "limit", parsed, 1, ORDERS_PAGE_MAX as i64)? as usize
        }
    };
    let sale_id = id.clone();
    let (orders, next) = sale
        .read(move |sale| {
            let start = usize::try_from(after)
                .unwrap_or(usize::MAX)
                .min(sale.orders().len());
            let page: Vec<OrderBody> = sale
                .orders()
                .iter_from(start)
                .take(limit)
                .map(|o| OrderBody::new(&sale_id, o))
                .collect();
            let more = sale.orders().len() > start + page.len();
            let next = page
                .last()
                .filter(|_| more)
                .map(|o| o.order_id().to_owned());
            (page, next)
        })
        .await?;
    Ok(Json(OrdersPage { orders, next }))
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

#[derive(Serialize, ToSchema)]
pub(super) struct CustomerToken {
    token: String,
    expires_at: String,
}

/// A shopper's token, bound to the identity their limits count against.
#[utoipa::path(post, path = "/v1/customer-tokens", tag = "operator",
    security(("operator" = [])), request_body = CustomerTokenRequest,
    responses((status = 201, description = "issued", body = CustomerToken),
        (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn issue_customer_token(
    State(state): State<AppState>,
    _: Operator,
    ApiJson(body): ApiJson<CustomerTokenRequest>,
) -> Result<(StatusCode, Json<CustomerToken>), ApiError> {
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
        "invalid_ttl",
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
        Json(CustomerToken {
            token,
            expires_at: format_time(expires_at),
        }),
    ))
}
