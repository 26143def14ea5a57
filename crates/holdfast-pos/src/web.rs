//! The counter page: a small web page on the till itself (loopback only by default) to ring up
//! sales and see what is waiting, for staff who would rather click than type. It works with no
//! network, like the CLI: it writes the same journal through the same `counter::sell`.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chacha20poly1305::Key;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use crate::counter::{self, Line, Tender};
use crate::journal::Journal;
use crate::receipt::receipt;

pub struct Counter {
    pub journal: Mutex<Journal>,
    pub card_key: Key,
    pub store: String,
    pub terminal: String,
    pub pay_base: String,
    pub clock: fn() -> i64,
}

pub fn router(counter: Arc<Counter>) -> Router {
    Router::new()
        .route("/", get(page).post(sell))
        .route("/status", get(status))
        .with_state(counter)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn page(State(counter): State<Arc<Counter>>) -> Result<Html<String>, Response> {
    let journal = counter.journal.lock().await;
    let items = catalogue(&journal).map_err(internal)?;
    let options: String = items
        .iter()
        .map(|(sku, name, price)| {
            format!(
                "<option value=\"{0}\">{1} · {2}</option>",
                escape(sku),
                escape(name),
                price
            )
        })
        .collect();
    let waiting = journal.head().map_err(internal)?.0 - journal.acked().map_err(internal)?;
    Ok(Html(format!(
        "<!doctype html><meta charset=\"utf-8\"><title>{store} · till {till}</title>\
         <h1>{store} · till {till}</h1><p id=\"waiting\">{waiting} sale(s) waiting to sync</p>\
         <form method=\"post\">\
         <label>Item <select name=\"sku\">{options}</select></label> \
         <label>Qty <input name=\"quantity\" type=\"number\" min=\"1\" value=\"1\"></label> \
         <label>Paid by <select name=\"tender\"><option value=\"cash\">cash</option>\
         <option value=\"card-offline\">card (offline)</option><option value=\"bank-transfer\">bank transfer</option>\
         <option value=\"pay-later\">pay later</option></select></label> \
         <label>Phone <input name=\"phone\"></label> <label>Card <input name=\"card_token\"></label> \
         <button>Sell</button></form>",
        store = escape(&counter.store),
        till = escape(&counter.terminal),
    )))
}

fn catalogue(journal: &Journal) -> anyhow::Result<Vec<(String, String, i64)>> {
    let mut statement = journal
        .read()
        .prepare("SELECT sku, name, price FROM catalogue ORDER BY name")?;
    let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn internal(error: anyhow::Error) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the till cannot read its journal: {error}"),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct SellForm {
    sku: String,
    quantity: u32,
    tender: String,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    card_token: String,
}

async fn sell(
    State(counter): State<Arc<Counter>>,
    form: Result<Form<SellForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return (
            StatusCode::BAD_REQUEST,
            Html("<p>Choose an item and a quantity.</p>".to_owned()),
        )
            .into_response();
    };
    let tender = match form.tender.as_str() {
        "cash" => Tender::Cash,
        "bank-transfer" => Tender::BankTransfer,
        "pay-later" => Tender::PayLater { phone: form.phone },
        "card-offline" => Tender::CardOffline {
            card_token: form.card_token,
            phone: form.phone,
        },
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                Html("<p>Unknown way to pay.</p>".to_owned()),
            )
                .into_response();
        }
    };
    let lines = [Line {
        sku: form.sku,
        quantity: form.quantity,
    }];
    let mut journal = counter.journal.lock().await;
    match counter::sell(
        &mut journal,
        &counter.card_key,
        &lines,
        tender,
        (counter.clock)(),
    ) {
        Ok(Ok(sold)) => {
            let printed = receipt(&counter.store, &counter.terminal, &counter.pay_base, &sold);
            Html(format!("<!doctype html><meta charset=\"utf-8\"><pre id=\"receipt\">{}</pre><a href=\"/\">Next sale</a>", escape(&printed))).into_response()
        }
        Ok(Err(refusal)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Html(format!(
                "<p id=\"refused\">Not sold: {}</p><a href=\"/\">Back</a>",
                escape(&refusal.to_string())
            )),
        )
            .into_response(),
        Err(error) => internal(error),
    }
}

async fn status(State(counter): State<Arc<Counter>>) -> Result<Json<serde_json::Value>, Response> {
    let journal = counter.journal.lock().await;
    let (entries, _) = journal.head().map_err(internal)?;
    let acked = journal.acked().map_err(internal)?;
    let (receivables, owed): (i64, i64) = journal
        .read()
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM receivable WHERE settled = 0",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|e| internal(e.into()))?;
    Ok(Json(json!({
        "entries": entries,
        "waiting_to_sync": entries - acked,
        "receivables_open": receivables,
        "receivables_owed": owed,
    })))
}
