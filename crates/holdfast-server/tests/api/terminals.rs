//! Terminals over HTTP: signed calls, allotments, exactly-once journal sync.

use std::sync::atomic::{AtomicU64, Ordering};

use holdfast_core::Timestamp;
use holdfast_core::terminal::auth::{self, Authorization, SignedRequest};
use holdfast_core::terminal::{JournalEntry, Progress, chain};
use holdfast_server::Limits;
use holdfast_server::clock::Clock;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

pub async fn register(app: &TestApp, id: &str) -> String {
    let body = json!({"terminal_id": id, "store": "Mapo cafe"});
    let answer = app
        .call(Method::POST, "/v1/terminals", Some(OPERATOR), Some(body))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.body["secret"].as_str().unwrap().to_owned()
}

/// A request signed by terminal `id` at the app's current time with a fresh nonce.
pub async fn signed(app: &TestApp, id: &str, secret: &str, path: &str, body: &Value) -> Answer {
    let request = signed_request(id, secret, path, body, app.clock.now());
    send(app, request).await
}

/// A till's sync carrying only its report: entries waiting at the till, and units left in its
/// allotment of the sale `masks` (when given).
pub async fn sync_report(
    app: &TestApp,
    till: &str,
    secret: &str,
    unsynced: u64,
    left: Option<u32>,
) {
    let allotments: Vec<(&str, u32)> = left.map(|units| ("masks", units)).into_iter().collect();
    let body = json!({"entries": [], "report": {"unsynced": unsynced, "cards_waiting": 0,
        "cards_waiting_amount": 0, "transfers_pending": 0, "refunds_due": 0,
        "allotments": allotments}});
    let path = format!("/v1/terminals/{till}/sync");
    let synced = signed(app, till, secret, &path, &body).await;
    assert_eq!(synced.status, StatusCode::OK, "{}", synced.body);
}

/// The exact bytes and header of a signed request, so a test can send it again.
fn signed_request(
    id: &str,
    secret: &str,
    path: &str,
    body: &Value,
    signed_at: Timestamp,
) -> (String, Vec<u8>, String) {
    static NONCES: AtomicU64 = AtomicU64::new(1);
    let nonce = format!("{:032x}", NONCES.fetch_add(1, Ordering::Relaxed));
    let bytes = serde_json::to_vec(body).unwrap();
    let request = SignedRequest {
        method: "POST",
        path,
        signed_at,
        nonce: &nonce,
        body: &bytes,
    };
    let auth = Authorization::sign(id, &hex::decode(secret).unwrap(), &request);
    (path.to_owned(), bytes, auth.header_value())
}

async fn send(app: &TestApp, (path, bytes, authorization): (String, Vec<u8>, String)) -> Answer {
    let response = app
        .client
        .post(format!("{}{path}", app.next_base()))
        .header("Authorization", authorization)
        .header("Content-Type", "application/json")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status();
    Answer {
        status,
        body: response.json().await.unwrap_or(Value::Null),
    }
}

/// An app with a 10-unit sale "masks" and a registered till-1 holding `allot` units of it.
async fn till_holding(backend: Backend, allot: u32) -> (TestApp, String) {
    let app = spawn_app(backend).await;
    app.create_sale(sale_json("masks", 10, 1, json!({}))).await;
    let secret = register(&app, "till-1").await;
    let body = json!({"sale_id": "masks", "quantity": allot});
    let granted = signed(
        &app,
        "till-1",
        &secret,
        "/v1/terminals/till-1/allotments",
        &body,
    )
    .await;
    assert_eq!(granted.body["granted"], allot);
    (app, secret)
}

fn wire(entries: &[JournalEntry]) -> Value {
    let entries: Vec<Value> = entries
        .iter()
        .map(|e| json!({"seq": e.seq, "prev": e.prev.to_hex(), "body": String::from_utf8(e.body.clone()).unwrap()}))
        .collect();
    json!({"entries": entries})
}

fn journal() -> Vec<JournalEntry> {
    chain(&[
        br#"{"lines":[{"sku":"KF94","quantity":2,"unit_price":39900,"sale_id":"masks"}],"tender":{"kind":"cash"},"at":1767225600000}"#,
        br#"{"lines":[{"sku":"AMERICANO","quantity":1,"unit_price":4500}],"tender":{"kind":"pay_later","phone":"010-1234-5678"},"at":1767225601000}"#,
        br#"{"lines":[{"sku":"KF94","quantity":1,"unit_price":39900,"sale_id":"masks"}],"tender":{"kind":"card_offline","phone":"010-2222-3333"},"at":1767225602000}"#,
    ])
}

fn allotted(sale: &Value) -> (u64, u64, u64) {
    let s = &sale["stock"];
    (
        s["available"].as_u64().unwrap(),
        s["allotted"].as_u64().unwrap(),
        s["sold"].as_u64().unwrap(),
    )
}

#[apply(backends)]
async fn a_journal_is_applied_exactly_once_across_retries_and_a_restart(backend: Backend) {
    let (app, secret) = till_holding(backend, 4).await;
    assert_eq!(allotted(&app.sale("masks").await), (6, 4, 0));

    let journal = journal();
    let path = "/v1/terminals/till-1/sync";
    let first = signed(&app, "till-1", &secret, path, &wire(&journal[..2])).await;
    assert_eq!(first.body["acked_through"], 2, "{}", first.body);
    // The answer was lost; the terminal resends everything.
    let retry = signed(&app, "till-1", &secret, path, &wire(&journal)).await;
    assert_eq!(
        (
            retry.body["acked_through"].as_u64(),
            retry.body["head"].as_str()
        ),
        (Some(3), Some(journal[2].hash().to_hex().as_str()))
    );
    let progress = Progress {
        applied_through: 3,
        head: journal[2].hash(),
    };
    assert!(auth::receipt_verifies(
        &hex::decode(&secret).unwrap(),
        &progress,
        retry.body["receipt"].as_str().unwrap()
    ));
    signed(&app, "till-1", &secret, path, &wire(&journal)).await;
    assert_eq!(
        allotted(&app.sale("masks").await),
        (6, 1, 3),
        "2 + 1 units sold, once"
    );

    let app = app.restart().await;
    let after = signed(&app, "till-1", &secret, path, &wire(&journal)).await;
    assert_eq!(after.body["acked_through"], 3);
    assert_eq!(allotted(&app.sale("masks").await), (6, 1, 3));
}

/// A till whose answer was slow sends its batch again, and the two copies arrive at once (on
/// two nodes, with two nodes): the journal is still applied once. What serialises them is the
/// terminal's own lock, on the one node that holds the terminal's stream.
#[apply(backends)]
async fn the_same_batch_arriving_twice_at_once_is_applied_once(backend: Backend) {
    let (app, secret) = till_holding(backend, 4).await;
    let journal = wire(&journal());
    let path = "/v1/terminals/till-1/sync";
    let now = app.clock.now();
    let (first, second) = tokio::join!(
        send(&app, signed_request("till-1", &secret, path, &journal, now)),
        send(&app, signed_request("till-1", &secret, path, &journal, now)),
    );
    assert_eq!(first.body["acked_through"], 3, "{}", first.body);
    assert_eq!(second.body["acked_through"], 3, "{}", second.body);
    assert_eq!(
        allotted(&app.sale("masks").await),
        (6, 1, 3),
        "3 units sold, once"
    );
}

#[apply(backends)]
async fn a_gap_acknowledges_only_what_came_before_it(backend: Backend) {
    let (app, secret) = till_holding(backend, 5).await;
    let journal = journal();
    let gapped = vec![journal[0].clone(), journal[2].clone()];
    let answer = signed(
        &app,
        "till-1",
        &secret,
        "/v1/terminals/till-1/sync",
        &wire(&gapped),
    )
    .await;
    assert_eq!(answer.body["acked_through"], 1);
    assert!(
        answer.body["stopped"].as_str().unwrap().contains("missing"),
        "{}",
        answer.body
    );
}

#[apply(backends)]
async fn selling_beyond_the_allotment_is_quarantined_without_blocking_later_entries(
    backend: Backend,
) {
    let (app, secret) = till_holding(backend, 1).await;
    // Entry 1 sells 2 allotted units, but only 1 was allotted.
    let answer = signed(
        &app,
        "till-1",
        &secret,
        "/v1/terminals/till-1/sync",
        &wire(&journal()),
    )
    .await;
    assert_eq!(
        (
            answer.body["acked_through"].as_u64(),
            answer.body["quarantined"].clone()
        ),
        (Some(3), json!([1]))
    );
    assert_eq!(
        allotted(&app.sale("masks").await),
        (9, 0, 1),
        "the allotment is never oversold"
    );
    let listed = app
        .call(
            Method::GET,
            "/v1/terminals/till-1/quarantine",
            Some(OPERATOR),
            None,
        )
        .await;
    assert_eq!(listed.body["quarantine"][0]["seq"], 1);
    assert!(
        listed.body["quarantine"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("allotted")
    );
}

#[apply(backends)]
async fn setting_an_allotment_twice_claims_once_and_lowering_it_returns_units(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(sale_json("masks", 10, 1, json!({}))).await;
    let secret = register(&app, "till-1").await;
    let path = "/v1/terminals/till-1/allotments";
    for _ in 0..2 {
        let answer = signed(
            &app,
            "till-1",
            &secret,
            path,
            &json!({"sale_id": "masks", "quantity": 4}),
        )
        .await;
        assert_eq!(answer.body["granted"], 4);
    }
    assert_eq!(allotted(&app.sale("masks").await), (6, 4, 0));
    signed(
        &app,
        "till-1",
        &secret,
        path,
        &json!({"sale_id": "masks", "quantity": 1}),
    )
    .await;
    assert_eq!(allotted(&app.sale("masks").await), (9, 1, 0));
    let greedy = signed(
        &app,
        "till-1",
        &secret,
        path,
        &json!({"sale_id": "masks", "quantity": 50}),
    )
    .await;
    assert_eq!(greedy.body["granted"], 10, "never more than the pool");
}

#[apply(backends)]
async fn unsigned_forged_or_borrowed_signatures_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(sale_json("masks", 10, 1, json!({}))).await;
    let secret = register(&app, "till-1").await;
    let other = register(&app, "till-2").await;
    let body = json!({"sale_id": "masks", "quantity": 4});
    let wrong_key = signed(
        &app,
        "till-1",
        &other,
        "/v1/terminals/till-1/allotments",
        &body,
    )
    .await;
    assert_eq!(wrong_key.status, StatusCode::UNAUTHORIZED);
    let wrong_path = signed(
        &app,
        "till-1",
        &secret,
        "/v1/terminals/till-2/allotments",
        &body,
    )
    .await;
    assert_eq!(wrong_path.status, StatusCode::UNAUTHORIZED);
    let unsigned = app
        .call(
            Method::POST,
            "/v1/terminals/till-1/sync",
            None,
            Some(json!({"entries": []})),
        )
        .await;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED);
    let again = app
        .call(
            Method::POST,
            "/v1/terminals",
            Some(OPERATOR),
            Some(json!({"terminal_id": "till-1", "store": "x"})),
        )
        .await;
    assert_eq!(again.code(), "terminal_exists");
    assert_eq!(allotted(&app.sale("masks").await), (10, 0, 0));
}

#[apply(backends)]
async fn syncs_beyond_their_share_are_told_to_come_back_later(backend: Backend) {
    let app = spawn_app_with(
        backend,
        Limits {
            syncs_in_flight_max: 0,
            ..Limits::default()
        },
    )
    .await;
    let secret = register(&app, "till-1").await;
    let deferred = signed(
        &app,
        "till-1",
        &secret,
        "/v1/terminals/till-1/sync",
        &wire(&journal()),
    )
    .await;
    assert_eq!(
        (deferred.status, deferred.code()),
        (StatusCode::TOO_MANY_REQUESTS, "overloaded")
    );
}

/// Quantities from a till are untrusted: lines that add up past `u32` once wrapped to a small
/// sale; the entry is quarantined instead and nothing is recorded.
#[apply(backends)]
async fn line_quantities_that_overflow_are_quarantined_not_wrapped(backend: Backend) {
    let (app, secret) = till_holding(backend, 3).await;
    let journal = chain(&[
        br#"{"lines":[{"sku":"KF94","quantity":4294967295,"sale_id":"masks"},{"sku":"KF94","quantity":2,"sale_id":"masks"}],"tender":{"kind":"cash"}}"#,
    ]);
    let answer = signed(
        &app,
        "till-1",
        &secret,
        "/v1/terminals/till-1/sync",
        &wire(&journal),
    )
    .await;
    assert_eq!(
        (
            answer.body["acked_through"].as_u64(),
            answer.body["quarantined"].clone()
        ),
        (Some(1), json!([1])),
        "{}",
        answer.body
    );
    assert_eq!(
        allotted(&app.sale("masks").await),
        (7, 3, 0),
        "nothing sold"
    );
}

/// A captured request cannot be used again: an old signed "allot 5", replayed after the till
/// returned its units, once claimed them a second time.
#[apply(backends)]
async fn a_replayed_or_stale_request_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(sale_json("masks", 10, 1, json!({}))).await;
    let secret = register(&app, "till-1").await;
    let path = "/v1/terminals/till-1/allotments";
    let claim = signed_request(
        "till-1",
        &secret,
        path,
        &json!({"sale_id": "masks", "quantity": 5}),
        app.clock.now(),
    );
    assert_eq!(send(&app, claim.clone()).await.body["granted"], 5);
    let returned = signed(
        &app,
        "till-1",
        &secret,
        path,
        &json!({"sale_id": "masks", "quantity": 0}),
    )
    .await;
    assert_eq!(returned.body["granted"], 0);
    app.advance_s(10);
    let replayed = send(&app, claim.clone()).await;
    assert_eq!(
        (replayed.status, replayed.code()),
        (StatusCode::UNAUTHORIZED, "request_replayed")
    );
    // After a restart the nonce is forgotten, so what was signed before it is refused by time.
    let app = app.restart().await;
    let after_restart = send(&app, claim).await;
    assert_eq!(
        (after_restart.status, after_restart.code()),
        (StatusCode::UNAUTHORIZED, "signature_expired")
    );
    let stale = signed_request(
        "till-1",
        &secret,
        path,
        &json!({"sale_id": "masks", "quantity": 5}),
        Timestamp(app.clock.now().0 + 6 * 60_000),
    );
    assert_eq!(send(&app, stale).await.code(), "signature_expired");
    assert_eq!(
        allotted(&app.sale("masks").await),
        (10, 0, 0),
        "claimed nothing"
    );
}

/// A till's payment reference is bound to its amount and card, like an idempotency key: the
/// same request replays the first answer (after a restart too), any other is refused.
#[apply(backends)]
async fn a_payment_reference_reused_for_another_amount_or_card_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let secret = register(&app, "till-1").await;
    let path = "/v1/terminals/till-1/payments";
    let pay = |amount: i64, card: &str| json!({"reference": "sale-17", "amount": amount, "card_token": card});
    let first = signed(&app, "till-1", &secret, path, &pay(1_000, "tok_visa")).await;
    assert_eq!(
        (first.status, &first.body["status"]),
        (StatusCode::OK, &json!("approved"))
    );
    for (what, body) in [
        ("more money", pay(999_000, "tok_visa")),
        ("another card", pay(1_000, "tok_mastercard")),
    ] {
        let reused = signed(&app, "till-1", &secret, path, &body).await;
        assert_eq!(
            (reused.status, reused.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            "{what}: {}",
            reused.body
        );
    }
    let again = signed(&app, "till-1", &secret, path, &pay(1_000, "tok_visa")).await;
    assert_eq!(
        again.body, first.body,
        "the identical request replays the first answer"
    );
    let app = app.restart().await;
    let after_restart = signed(&app, "till-1", &secret, path, &pay(999_000, "tok_visa")).await;
    assert_eq!(after_restart.code(), "idempotency_key_reused");
    let replayed = signed(&app, "till-1", &secret, path, &pay(1_000, "tok_visa")).await;
    assert_eq!(replayed.body, first.body);
    assert_eq!(app.acquirer.captured(), 1, "charged once, for 1,000");
}

/// A customer whose first card is declined on the pay link can pay with another; the debt is
/// paid once.
#[apply(backends)]
async fn a_pay_link_declined_once_can_be_paid_with_another_card_and_only_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let secret = register(&app, "till-1").await;
    let journal = chain(&[
        br#"{"lines":[{"sku":"AMERICANO","quantity":1,"unit_price":4500}],"total":4500,"tender":{"kind":"pay_later","receivable":"r-0123456789abcdef","phone":"010-1234-5678"}}"#,
    ]);
    let synced = signed(
        &app,
        "till-1",
        &secret,
        "/v1/terminals/till-1/sync",
        &wire(&journal),
    )
    .await;
    assert_eq!(synced.body["acked_through"], 1, "{}", synced.body);
    let link = format!("{}/pay/till-1/r-0123456789abcdef", app.base);
    let pay = |card: &'static str| {
        let request = app
            .client
            .post(&link)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!("card_token={card}"));
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    let (declined, _) = pay("tok_declined").await;
    assert_eq!(declined, StatusCode::PAYMENT_REQUIRED);
    let (paid, body) = pay("tok_visa").await;
    assert_eq!(
        (paid, &body["status"]),
        (StatusCode::OK, &json!("paid")),
        "{body}"
    );
    let from_a_browser = app
        .client
        .post(&link)
        .header("Accept", "text/html,application/xhtml+xml")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("card_token=tok_visa")
        .send()
        .await
        .unwrap();
    assert_eq!(from_a_browser.status(), StatusCode::OK);
    let page = from_a_browser.text().await.unwrap();
    assert!(
        page.contains("<h1>Paid. Thank you.</h1>"),
        "a browser gets a page: {page}"
    );
    let (again, again_body) = pay("tok_mastercard").await;
    assert_eq!(
        (again, &again_body["authorization_id"]),
        (StatusCode::OK, &body["authorization_id"])
    );
    assert_eq!(app.acquirer.captured(), 1);
}
