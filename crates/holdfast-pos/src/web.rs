//! The counter page: a small web page on the till itself (loopback by default) that a cashier
//! can use all day. Every tender, online card included; whether the line is up; what is left of
//! each scarce item; who owes what, with a "paid" button; bank transfers to confirm; receipts to
//! print again. It works with no network, like the CLI: it writes the same journal through the
//! same `counter::sell` and `card::pay`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path as UrlPath, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use holdfast_core::terminal::entry::{EntryBody, EntryTender};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use crate::card::{self, CardOutcome};
use crate::counter::{self, Basket, Line, Sold, Tender};
use crate::receipt::receipt;
use crate::till::Till;

/// Whether the till can reach the server, as the background sync last found.
#[derive(Default)]
pub struct LineStatus {
    state: AtomicU8,
    last_sync_ms: AtomicI64,
}

const LINE_UP: u8 = 1;
const LINE_DOWN: u8 = 2;
const LINE_SYNCING: u8 = 3;

impl LineStatus {
    pub fn syncing(&self) {
        self.state.store(LINE_SYNCING, Ordering::Relaxed);
    }

    pub fn synced(&self, at_ms: i64) {
        self.state.store(LINE_UP, Ordering::Relaxed);
        self.last_sync_ms.store(at_ms, Ordering::Relaxed);
    }

    pub fn down(&self) {
        self.state.store(LINE_DOWN, Ordering::Relaxed);
    }

    fn describe(&self) -> &'static str {
        match self.state.load(Ordering::Relaxed) {
            LINE_UP => "online",
            LINE_DOWN => "offline",
            LINE_SYNCING => "syncing",
            _ => "unknown",
        }
    }
}

pub struct Counter {
    till: Mutex<Till>,
    pub line: Arc<LineStatus>,
}

impl Counter {
    pub fn open(dir: &Path) -> anyhow::Result<Arc<Counter>> {
        Ok(Arc::new(Counter {
            till: Mutex::new(Till::open(dir)?),
            line: Arc::new(LineStatus::default()),
        }))
    }
}

pub fn router(counter: Arc<Counter>) -> Router {
    Router::new()
        .route("/", get(page).post(sell))
        .route("/status", get(status))
        .route("/receipts/{seq}", get(reprint))
        .route("/receivables/{id}/paid", post(receivable_paid))
        .route("/transfers/{seq}/confirm", post(transfer_confirmed))
        .layer(axum::middleware::from_fn(from_the_page_itself))
        .with_state(counter)
}

/// The page acts on the till's journal, so it answers only the page itself. Its `Host` must
/// name this machine by address or as `localhost`: a web site whose name is made to resolve here
/// (DNS rebinding) cannot read receipts and phone numbers. And a change made from a browser
/// must come from the page's own origin: a form on another web site the cashier has open cannot
/// sell, mark a debt paid or confirm a transfer (cross-site request forgery). Browsers tell
/// where a request comes from (`Sec-Fetch-Site`, `Origin`); a client that is not a browser, such
/// as curl, sends neither and is let through.
async fn from_the_page_itself(request: axum::extract::Request, next: Next) -> Response {
    let headers = request.headers();
    let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"));
    let host = text("host");
    if host.is_some_and(|host| !names_this_machine(host)) {
        return refused("This page answers only to this machine's address or localhost.");
    }
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
    let from_elsewhere = text("sec-fetch-site").is_some_and(|s| s != "same-origin" && s != "none")
        || text("origin")
            .is_some_and(|origin| Some(origin) != host.map(|h| format!("http://{h}")).as_deref());
    if changes && from_elsewhere {
        return refused("This page takes changes only from itself, not from another web site.");
    }
    next.run(request).await
}

/// Whether a `Host` header names this machine: an IP address (with or without a port), or
/// `localhost` — never a domain name, which anyone can point here.
fn names_this_machine(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.parse::<std::net::IpAddr>().is_ok() || name.eq_ignore_ascii_case("localhost")
}

fn refused(why: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        Html(format!("<p id=\"refused\">{}</p>", escape(why))),
    )
        .into_response()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn internal(error: anyhow::Error) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Html(format!(
            "<p>The till cannot read its journal: {}</p>",
            escape(&error.to_string())
        )),
    )
        .into_response()
}

const STYLE: &str = "body{font-family:sans-serif;max-width:46em;margin:1em auto;padding:0 1em}\
    .line{padding:.2em .6em;border-radius:.4em;color:#fff}.online{background:#2a7}.offline{background:#c33}\
    .syncing,.unknown{background:#888}table{border-collapse:collapse}td,th{padding:.2em .6em;text-align:left}\
    form.sale label{display:block;margin:.3em 0}button{margin:.2em}";

/// Polls the till's own status, so the line indicator follows the network without a reload.
const SCRIPT: &str = "setInterval(async()=>{try{const s=await (await fetch('/status')).json();\
    const l=document.getElementById('line');l.textContent=s.line;l.className='line '+s.line;\
    document.getElementById('waiting').textContent=s.waiting_to_sync}catch(e){}},1000)";

async fn page(State(counter): State<Arc<Counter>>) -> Result<Html<String>, Response> {
    let till = counter.till.lock().await;
    let journal = &till.journal;
    let mut options = String::new();
    for item in journal.catalogue().map_err(internal)? {
        let left = match &item.sale_id {
            Some(sale_id) => {
                let remaining = journal
                    .allotment(sale_id)
                    .map_err(internal)?
                    .map_or(0, |a| a.remaining);
                format!(" ({remaining} left)")
            }
            None => String::new(),
        };
        options.push_str(&format!(
            "<option value=\"{0}\">{1} · {2}{3}</option>",
            escape(&item.sku),
            escape(&item.name),
            item.price,
            left
        ));
    }
    let waiting = journal.waiting().map_err(internal)?;
    let mut owed = String::new();
    for r in journal.open_receivables().map_err(internal)? {
        owed.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>#{}</td><td><form method=\"post\" action=\"/receivables/{}/paid\">\
             <button>paid</button></form></td></tr>",
            escape(&r.phone), r.amount, r.seq, escape(&r.id)
        ));
    }
    let mut transfers = String::new();
    for t in journal.pending_transfers().map_err(internal)? {
        transfers.push_str(&format!(
            "<tr><td>#{0}</td><td>{1}</td><td><form method=\"post\" action=\"/transfers/{0}/confirm\">\
             <button>arrived</button></form></td></tr>",
            t.seq, t.amount
        ));
    }
    let header = till.header().map_err(internal)?;
    let last = waiting.entries;
    let reprints: String = (last.saturating_sub(4)..=last)
        .filter(|seq| *seq > 0)
        .rev()
        .map(|seq| format!("<a href=\"/receipts/{seq}\">#{seq}</a> "))
        .collect();
    Ok(Html(format!(
        "<!doctype html><meta charset=\"utf-8\"><title>{store} · till {till_id}</title>\
         <style>{STYLE}</style><h1>{store} · till {till_id}</h1>\
         <p>Line: <span id=\"line\" class=\"line {line}\">{line}</span> · \
         <span id=\"waiting\">{unsynced}</span> sale(s) waiting to sync</p>\
         <form class=\"sale\" method=\"post\" action=\"/\">\
         <label>Item <select name=\"sku\">{options}</select></label>\
         <label>Qty <input name=\"quantity\" type=\"number\" min=\"1\" value=\"1\"></label>\
         <label>Paid by <select name=\"tender\" id=\"tender\"><option value=\"cash\">cash</option>\
         <option value=\"card\">card (online)</option><option value=\"card-offline\">card (offline)</option>\
         <option value=\"bank-transfer\">bank transfer</option><option value=\"pay-later\">pay later</option>\
         </select></label>\
         <label>Phone <input name=\"phone\" id=\"phone\"></label>\
         <label>Card <input name=\"card_token\" id=\"card_token\"></label>\
         <button id=\"sell\">Sell</button></form>\
         <h2>Who owes</h2><table id=\"owed\">{owed}</table>{nobody_owes}\
         <h2>Bank transfers to confirm</h2><table id=\"transfers\">{transfers}</table>{no_transfers}\
         <h2>Receipts</h2><p id=\"reprints\">{reprints}</p>\
         <script>{SCRIPT}</script>",
        store = escape(&header.store),
        till_id = escape(&header.terminal),
        line = counter.line.describe(),
        unsynced = waiting.unsynced,
        nobody_owes = if owed.is_empty() {
            "<p>Nobody owes anything.</p>"
        } else {
            ""
        },
        no_transfers = if transfers.is_empty() {
            "<p>None waiting.</p>"
        } else {
            ""
        },
    )))
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

fn answer(status: StatusCode, id: &str, text: &str) -> Response {
    (
        status,
        Html(format!(
            "<!doctype html><meta charset=\"utf-8\"><style>{STYLE}</style>\
             <p id=\"{id}\">{}</p><a href=\"/\" id=\"next\">Back to the counter</a>",
            escape(text)
        )),
    )
        .into_response()
}

fn printed(till: &Till, sold: &Sold) -> Response {
    match till.header() {
        Ok(header) => Html(format!(
            "<!doctype html><meta charset=\"utf-8\"><style>{STYLE}</style>\
             <pre id=\"receipt\">{}</pre><a href=\"/\" id=\"next\">Next sale</a>",
            escape(&receipt(&header, sold))
        ))
        .into_response(),
        Err(error) => internal(error),
    }
}

async fn sell(
    State(counter): State<Arc<Counter>>,
    form: Result<Form<SellForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return answer(
            StatusCode::BAD_REQUEST,
            "refused",
            "Choose an item and a quantity.",
        );
    };
    let phone = form.phone.trim().to_owned();
    let basket = Basket {
        lines: vec![Line {
            sku: form.sku,
            quantity: form.quantity,
        }],
        buyer_phone: (!phone.is_empty()
            && !matches!(form.tender.as_str(), "pay-later" | "card-offline"))
        .then(|| phone.clone()),
    };
    let mut guard = counter.till.lock().await;
    let till = &mut *guard;
    let now = till.now_millis();
    if form.tender == "card" {
        let outcome = card::pay(
            &mut till.journal,
            &till.key,
            &till.uplink,
            &basket,
            &form.card_token,
            now,
        )
        .await;
        return match outcome {
            Ok(CardOutcome::Sold(sold)) => printed(till, &sold),
            Ok(CardOutcome::Refused(refusal)) => answer(
                StatusCode::UNPROCESSABLE_ENTITY,
                "refused",
                &format!("Not sold: {refusal}"),
            ),
            Ok(CardOutcome::Declined) => answer(
                StatusCode::PAYMENT_REQUIRED,
                "refused",
                "Not sold: the card was declined.",
            ),
            Ok(CardOutcome::LineDown) => {
                counter.line.down();
                answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "line-down",
                    "The line is down and nothing was charged: take the card offline, cash or pay later.",
                )
            }
            Ok(CardOutcome::AnswerLost { .. }) => answer(
                StatusCode::ACCEPTED,
                "answer-lost",
                "The card network's answer was lost: press Sell again with the same card to finish (it will not charge twice), or take another tender.",
            ),
            Err(error) => internal(error),
        };
    }
    let tender = match form.tender.as_str() {
        "cash" => Tender::Cash,
        "bank-transfer" => Tender::BankTransfer,
        "pay-later" => Tender::PayLater { phone },
        "card-offline" => Tender::CardOffline {
            card_token: form.card_token,
            phone,
        },
        _ => return answer(StatusCode::BAD_REQUEST, "refused", "Unknown way to pay."),
    };
    match counter::sell(&mut till.journal, &till.key, &basket, tender, now) {
        Ok(Ok(sold)) => printed(till, &sold),
        Ok(Err(refusal)) => answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            "refused",
            &format!("Not sold: {refusal}"),
        ),
        Err(error) => internal(error),
    }
}

/// A receipt printed again from its journal entry.
async fn reprint(State(counter): State<Arc<Counter>>, UrlPath(seq): UrlPath<u64>) -> Response {
    let till = counter.till.lock().await;
    let entry = match till.journal.entry(seq) {
        Ok(Some(entry)) => entry,
        Ok(None) => return answer(StatusCode::NOT_FOUND, "refused", "No such receipt."),
        Err(error) => return internal(error),
    };
    let Ok(body) = EntryBody::read(entry.as_bytes()) else {
        return answer(
            StatusCode::NOT_FOUND,
            "refused",
            "That entry is not a sale.",
        );
    };
    let Some(sold) = sold_of(seq, &body) else {
        return answer(
            StatusCode::NOT_FOUND,
            "refused",
            "That entry is not a sale.",
        );
    };
    printed(&till, &sold)
}

/// The receipt's view of a journaled sale.
fn sold_of(seq: u64, body: &EntryBody) -> Option<Sold> {
    let (tender, receivable) = match body.tender.clone()? {
        EntryTender::Cash => (Tender::Cash, None),
        EntryTender::Card { authorization } => (
            Tender::Card {
                authorization,
                reference: String::new(),
            },
            None,
        ),
        EntryTender::CardOffline { phone } => (
            Tender::CardOffline {
                card_token: String::new(),
                phone,
            },
            None,
        ),
        EntryTender::BankTransfer { .. } => (Tender::BankTransfer, None),
        EntryTender::PayLater { phone, receivable } => (Tender::PayLater { phone }, receivable),
    };
    Some(Sold {
        seq,
        lines: body
            .lines
            .iter()
            .map(|l| (l.name.clone(), l.quantity, l.unit_price))
            .collect(),
        total: body.total,
        tender,
        receivable,
        at_millis: body.at,
    })
}

async fn receivable_paid(
    State(counter): State<Arc<Counter>>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let till = counter.till.lock().await;
    match till.journal.settle_receivable(&id) {
        Ok(true) => Redirect::to("/").into_response(),
        Ok(false) => answer(StatusCode::NOT_FOUND, "refused", "No such open receivable."),
        Err(error) => internal(error),
    }
}

async fn transfer_confirmed(
    State(counter): State<Arc<Counter>>,
    UrlPath(seq): UrlPath<u64>,
) -> Response {
    let mut till = counter.till.lock().await;
    let now = till.now_millis();
    match till.journal.confirm_transfer(seq, now) {
        Ok(true) => Redirect::to("/").into_response(),
        Ok(false) => answer(
            StatusCode::NOT_FOUND,
            "refused",
            "No such pending transfer.",
        ),
        Err(error) => internal(error),
    }
}

async fn status(State(counter): State<Arc<Counter>>) -> Result<Json<serde_json::Value>, Response> {
    let till = counter.till.lock().await;
    let waiting = till.journal.waiting().map_err(internal)?;
    let allotments: serde_json::Map<String, serde_json::Value> = till
        .journal
        .allotments()
        .map_err(internal)?
        .into_iter()
        .map(|a| (a.sale_id, json!(a.remaining)))
        .collect();
    Ok(Json(json!({
        "line": counter.line.describe(),
        "last_sync_ms": counter.line.last_sync_ms.load(Ordering::Relaxed),
        "entries": waiting.entries,
        "waiting_to_sync": waiting.unsynced,
        "receivables_open": waiting.receivables_open,
        "receivables_owed": waiting.receivables_owed,
        "cards_waiting": waiting.cards_waiting,
        "transfers_pending": waiting.transfers_pending,
        "refunds_due": waiting.refunds_due,
        "allotments": allotments,
    })))
}
