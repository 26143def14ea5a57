//! Pay links: a customer who left a phone number at the counter ("pay later"), or whose stored
//! card was declined after the outage, settles the receivable from the link on their receipt.
//! The link itself is the credential (an unguessable receivable id), as on the receipts of the
//! large card vendors.

use axum::Json;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::ApiPath;
use super::overload::WriteSlot;
use super::routes::Routes;
use crate::error::{ApiError, ErrorBody};
use crate::idempotency::fingerprint;
use crate::state::AppState;
use crate::terminals::{Receivable, Terminal};

pub fn routes() -> Routes {
    Routes::default().add(
        "/pay/{terminal}/{receivable}",
        &[Method::GET, Method::POST],
        get(page).post(pay),
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn find(
    state: &AppState,
    terminal: &str,
    id: &str,
) -> Result<(std::sync::Arc<Terminal>, Receivable), ApiError> {
    let not_found = || ApiError::not_found("receivable_not_found", "no such payment request");
    let terminal = state.terminals.get(terminal).ok_or_else(not_found)?;
    let receivable = terminal.receivable(id).await.ok_or_else(not_found)?;
    Ok((terminal, receivable))
}

/// The pay link's page: what is owed, and a form to pay it.
#[utoipa::path(get, path = "/pay/{terminal}/{receivable}", tag = "public",
    params(("terminal" = String, Path), ("receivable" = String, Path, description = "the unguessable id on the receipt")),
    responses((status = 200, description = "the page", content_type = "text/html", body = String), (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn page(
    State(state): State<AppState>,
    ApiPath((terminal, id)): ApiPath<(String, String)>,
) -> Result<Html<String>, ApiError> {
    let (till, receivable) = find(&state, &terminal, &id).await?;
    let status = match &receivable.settled_by {
        Some(_) => "<p>Paid. Thank you.</p>".to_owned(),
        None => format!(
            "<form method=\"post\"><label>Card <input name=\"card_token\" required></label> \
             <button>Pay {}</button></form>",
            receivable.amount
        ),
    };
    Ok(Html(format!(
        "<!doctype html><meta charset=\"utf-8\"><title>Pay {store}</title>\
         <h1>{store}</h1><p>Amount due: <b>{amount}</b> KRW (receipt #{seq})</p>{status}",
        store = escape(&till.store),
        amount = receivable.amount,
        seq = receivable.seq,
    )))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct PayForm {
    card_token: String,
}

/// A receivable paid.
#[derive(Serialize, ToSchema)]
pub(super) struct Paid {
    status: &'static str,
    authorization_id: String,
    amount: u64,
}

/// Pays a receivable; a browser (the form on the page) is answered with a page, a program with
/// JSON.
#[utoipa::path(post, path = "/pay/{terminal}/{receivable}", tag = "public",
    params(("terminal" = String, Path), ("receivable" = String, Path)),
    request_body(content = PayForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "paid (JSON, or a page for a browser)", body = Paid), (status = "default", description = "refused", body = ErrorBody)))]
pub(super) async fn pay(
    State(state): State<AppState>,
    ApiPath((terminal, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<PayForm>, FormRejection>,
) -> Response {
    let wants_page = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    let paid = settle_receivable(&state, &terminal, &id, form).await;
    match (paid, wants_page) {
        (Ok(paid), false) => Json(paid).into_response(),
        (Err(error), false) => error.into_response(),
        (Ok(paid), true) => Html(format!(
            "<!doctype html><meta charset=\"utf-8\"><title>Paid</title>\
             <h1>Paid. Thank you.</h1><p>{} KRW, authorisation {}</p>",
            paid.amount,
            escape(&paid.authorization_id)
        ))
        .into_response(),
        (Err(error), true) => (
            error.status,
            Html(format!(
                "<!doctype html><meta charset=\"utf-8\"><title>Not paid</title>\
                 <h1>Not paid</h1><p>{}</p><p><a href=\"\">Try again</a></p>",
                escape(&error.message)
            )),
        )
            .into_response(),
    }
}

async fn settle_receivable(
    state: &AppState,
    terminal: &str,
    id: &str,
    form: Result<Form<PayForm>, FormRejection>,
) -> Result<Paid, ApiError> {
    let Form(form) = form.map_err(|e| ApiError::bad_request("invalid_payment", e.body_text()))?;
    let (till, receivable) = find(state, terminal, id).await?;
    let _slot = WriteSlot::take(state)?;
    let paid = |authorization: &str, amount: u64| Paid {
        status: "paid",
        authorization_id: authorization.to_owned(),
        amount,
    };
    if let Some(authorization) = receivable.settled_by {
        return Ok(paid(&authorization, receivable.amount));
    }
    if form.card_token.is_empty() || form.card_token.len() > 256 {
        return Err(ApiError::bad_request(
            "invalid_payment",
            "card_token must be a card token from the acquirer",
        ));
    }
    // One attempt at a time per till, so two cards presented at once cannot both be charged.
    let _one_payment = till.paying.lock().await;
    if let Some(authorization) = till.receivable(id).await.and_then(|r| r.settled_by) {
        return Ok(paid(&authorization, receivable.amount));
    }
    // Each card is its own attempt: after a decline the customer may try another card.
    let card = fingerprint("pay link card", &form.card_token);
    let key = format!("receivable {terminal} {id} {card}");
    let authorization = state
        .settlements
        .charge(till.stream(), form.card_token, receivable.amount, &key)
        .await?;
    let settled = till.settle(id, &authorization.id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "receivable_not_found",
            "no such payment request",
        )
    })?;
    Ok(paid(
        settled.settled_by.as_deref().unwrap_or_default(),
        settled.amount,
    ))
}
