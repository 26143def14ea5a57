//! The HTTP API end to end, in one test binary, against real servers on loopback.

mod bad_input;
mod dashboard;
mod events;
mod helpers;
mod hostile;
mod ledger;
mod openapi;
mod queue;
mod terminals;

use helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[apply(backends)]
async fn hold_confirm_and_read_back(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_sale(sale_json("masks", 3, 1, json!({}))).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["state"], "open");
    let alice = app.token("alice", Some("010-1234-5678"), None).await;
    let hold = app.hold("masks", &alice, 1).await;
    assert_eq!(hold.status, StatusCode::CREATED, "{}", hold.body);
    let hold_id = hold.body["hold_id"].as_str().unwrap();
    assert_eq!(hold.body["expires_at"], "2026-01-01T00:10:00.000Z");
    let confirmed = app.confirm(hold_id, &alice).await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.body);
    assert_eq!(confirmed.body["status"], "confirmed");
    assert_captured(&app, 1, "the order's payment captured").await;
    assert_eq!(stock(&app.sale("masks").await), (3, 2, 0, 1));

    let order_id = confirmed.body["order_id"].as_str().unwrap();
    let mine = app
        .call(
            Method::GET,
            &format!("/v1/orders/{order_id}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(
        (mine.status, mine.body["customer_id"].as_str()),
        (StatusCode::OK, Some("alice"))
    );
    let bob = app.token("bob", None, None).await;
    let theirs = app
        .call(
            Method::GET,
            &format!("/v1/orders/{order_id}"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(
        (theirs.status, theirs.code()),
        (StatusCode::NOT_FOUND, "order_not_found")
    );
    let listed = app
        .call(Method::GET, "/v1/sales/masks/orders", Some(OPERATOR), None)
        .await;
    assert_eq!(listed.body["orders"][0]["order_id"], order_id);
    assert_eq!(listed.body["next"], serde_json::Value::Null);
}

#[apply(backends)]
async fn creating_the_same_sale_twice_is_a_retry_but_a_different_one_conflicts(backend: Backend) {
    let app = spawn_app(backend).await;
    let sale = sale_json("masks", 10, 1, json!({}));
    assert_eq!(
        app.create_sale(sale.clone()).await.status,
        StatusCode::CREATED
    );
    assert_eq!(app.create_sale(sale).await.status, StatusCode::OK);
    let other = app.create_sale(sale_json("masks", 99, 1, json!({}))).await;
    assert_eq!(
        (other.status, other.code()),
        (StatusCode::CONFLICT, "sale_exists")
    );
    assert_eq!(stock(&app.sale("masks").await).0, 10);
}

#[apply(backends)]
async fn an_expired_hold_goes_back_on_sale_and_confirm_answers_410(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(sale_json("masks", 1, 1, json!({"hold_ttl_s": 60})))
        .await;
    let alice = app.token("alice", None, None).await;
    let bob = app.token("bob", None, None).await;
    let hold = app.hold("masks", &alice, 1).await;
    let hold_id = hold.body["hold_id"].as_str().unwrap().to_owned();
    assert_eq!(app.hold("masks", &bob, 1).await.code(), "sold_out");
    app.advance_s(60);
    assert_eq!(app.hold("masks", &bob, 1).await.status, StatusCode::CREATED);
    let late = app.confirm(&hold_id, &alice).await;
    assert_eq!(
        (late.status, late.code()),
        (StatusCode::GONE, "hold_expired")
    );
    assert_eq!(
        app.acquirer.captured(),
        0,
        "an expired hold is never charged"
    );
}

#[apply(backends)]
async fn nothing_sells_before_the_opening_instant(backend: Backend) {
    let app = spawn_app(backend).await;
    let sale = sale_json("drop", 5, 1, json!({"opens_at": "2026-01-01T04:00:00Z"}));
    assert_eq!(app.create_sale(sale).await.body["state"], "scheduled");
    let alice = app.token("alice", None, None).await;
    let early = app.hold("drop", &alice, 1).await;
    assert_eq!(
        (early.status, early.code()),
        (StatusCode::FORBIDDEN, "not_open")
    );
    assert_eq!(
        early.body["error"]["message"],
        "the sale has not opened yet; it opens at 2026-01-01T04:00:00.000Z",
        "times in messages are RFC 3339, as on the wire"
    );
    app.advance_s(4 * 3600 - 1);
    assert_eq!(app.hold("drop", &alice, 1).await.code(), "not_open");
    app.advance_s(1);
    assert_eq!(
        app.hold("drop", &alice, 1).await.status,
        StatusCode::CREATED
    );
}

#[apply(backends)]
async fn one_per_person_across_accounts_sharing_a_phone_or_address(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(sale_json("masks", 100, 1, json!({}))).await;
    let first = app
        .token("acct-1", Some("010-5555-0000"), Some("12 Main St, Apt 3"))
        .await;
    let same_phone = app.token("acct-2", Some("+82 10 5555 0000"), None).await;
    let same_address = app.token("acct-3", None, Some("12 main st apt 3")).await;
    let stranger = app
        .token("acct-4", Some("010-7777-0000"), Some("9 Oak Rd"))
        .await;
    assert_eq!(
        app.hold("masks", &first, 1).await.status,
        StatusCode::CREATED
    );
    for token in [&same_phone, &same_address] {
        let refused = app.hold("masks", token, 1).await;
        assert_eq!(
            (refused.status, refused.code()),
            (StatusCode::FORBIDDEN, "limit_exceeded")
        );
    }
    assert_eq!(
        app.hold("masks", &stranger, 1).await.status,
        StatusCode::CREATED
    );
}

#[apply(backends)]
async fn a_declined_card_keeps_the_hold_for_another_try(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(sale_json("masks", 1, 1, json!({}))).await;
    let alice = app.token("alice", None, None).await;
    let hold_id = app.hold("masks", &alice, 1).await.body["hold_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let declined = app
        .confirm_with_card(&hold_id, &alice, "tok_declined")
        .await;
    assert_eq!(
        (declined.status, declined.code()),
        (StatusCode::PAYMENT_REQUIRED, "payment_declined")
    );
    assert_eq!(stock(&app.sale("masks").await), (1, 0, 1, 0));
    assert_eq!(app.confirm(&hold_id, &alice).await.status, StatusCode::OK);
}

#[apply(backends)]
async fn releasing_a_hold_returns_the_unit(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(sale_json("masks", 1, 1, json!({}))).await;
    let alice = app.token("alice", None, None).await;
    let hold_id = app.hold("masks", &alice, 1).await.body["hold_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let released = app
        .call(
            Method::DELETE,
            &format!("/v1/holds/{hold_id}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(released.status, StatusCode::OK);
    assert_eq!(stock(&app.sale("masks").await), (1, 1, 0, 0));
    let status = app
        .call(
            Method::GET,
            &format!("/v1/holds/{hold_id}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status.body["status"], "released");
    assert_eq!(app.confirm(&hold_id, &alice).await.code(), "hold_released");
}

#[apply(backends)]
async fn restock_and_close(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(sale_json("masks", 1, 5, json!({}))).await;
    let alice = app.token("alice", None, None).await;
    app.hold("masks", &alice, 1).await;
    assert_eq!(app.sale("masks").await["state"], "sold_out");
    let restocked = app
        .call(
            Method::POST,
            "/v1/sales/masks/restock",
            Some(OPERATOR),
            Some(json!({"quantity": 30})),
        )
        .await;
    assert_eq!(
        (restocked.status, stock(&restocked.body)),
        (StatusCode::OK, (31, 30, 1, 0))
    );
    assert_eq!(
        app.hold("masks", &alice, 2).await.status,
        StatusCode::CREATED
    );
    let closed = app
        .call(Method::POST, "/v1/sales/masks/close", Some(OPERATOR), None)
        .await;
    assert_eq!(closed.body["state"], "closed");
    assert_eq!(app.hold("masks", &alice, 1).await.code(), "not_open");
}

#[apply(backends)]
async fn rehearsal_orders_are_flagged_and_never_charged(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(sale_json("dry-run", 5, 1, json!({"rehearsal": true})))
        .await;
    let alice = app.token("alice", None, None).await;
    let hold = app.hold("dry-run", &alice, 1).await;
    let confirmed = app
        .confirm(hold.body["hold_id"].as_str().unwrap(), &alice)
        .await;
    assert_eq!(confirmed.body["rehearsal"], true);
    assert_eq!(app.acquirer.captured(), 0);
}

#[apply(backends)]
async fn channel_shares_are_kept_apart_until_released(backend: Backend) {
    let app = spawn_app(backend).await;
    let sale = sale_json("masks", 3, 5, json!({"channels": {"phone": 2}}));
    app.create_sale(sale).await;
    let alice = app.token("alice", None, None).await;
    assert_eq!(
        app.hold("masks", &alice, 1).await.status,
        StatusCode::CREATED
    );
    assert_eq!(app.hold("masks", &alice, 1).await.code(), "sold_out");
    let released = app
        .call(
            Method::POST,
            "/v1/sales/masks/channels/phone/release",
            Some(OPERATOR),
            None,
        )
        .await;
    assert_eq!(released.body["released"], 2);
    assert_eq!(
        app.hold("masks", &alice, 2).await.status,
        StatusCode::CREATED
    );
}

#[apply(backends)]
async fn a_price_above_its_ceiling_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let gouging = sale_json(
        "masks",
        3,
        1,
        json!({"price": 120000, "price_ceiling": 50000}),
    );
    let refused = app.create_sale(gouging).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "price_above_ceiling")
    );
    let missing = app
        .call(Method::GET, "/v1/sales/masks", Some(OPERATOR), None)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    if backend != Backend::Embedded {
        let leased = app
            .count_rows("SELECT COUNT(*) FROM lease WHERE stream = 'masks'")
            .await;
        assert_eq!(leased, 0, "a refused sale takes no lease");
    }
    // Should an id ever be leased with nothing in it, a hold there is still "no such sale",
    // not "send it again".
    let shopper = app.token("alice", None, None).await;
    let hold = app.hold("masks", &shopper, 1).await;
    assert_eq!(
        (hold.status, hold.code()),
        (StatusCode::NOT_FOUND, "sale_not_found")
    );
}

#[apply(backends)]
async fn the_delivery_day_is_quoted_with_the_hold_and_kept(backend: Backend) {
    let app = spawn_app(backend).await;
    let sale = sale_json(
        "masks",
        10,
        1,
        json!({"delivery": {"capacity_per_day": 1, "first_day": "2026-01-02"}}),
    );
    app.create_sale(sale).await;
    let mut days = Vec::new();
    for n in 0..3 {
        let token = app.token(&format!("c{n}"), None, None).await;
        let hold = app.hold("masks", &token, 1).await;
        let confirmed = app
            .confirm(hold.body["hold_id"].as_str().unwrap(), &token)
            .await;
        assert_eq!(hold.body["deliver_by"], confirmed.body["deliver_by"]);
        days.push(confirmed.body["deliver_by"].as_str().unwrap().to_owned());
    }
    assert_eq!(days, ["2026-01-02", "2026-01-03", "2026-01-04"]);
}

/// The embedded log's own guard; several nodes on PostgreSQL share their database by design.
#[tokio::test]
async fn a_second_server_cannot_open_the_same_data() {
    let app = spawn_app(Backend::Embedded).await;
    let config = holdfast_server::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        app.dir.path().to_path_buf(),
        None,
    );
    let second = holdfast_server::Application::build(config).await;
    assert!(matches!(
        second,
        Err(holdfast_server::StartError::DataDirInUse(_))
    ));
}

#[apply(backends)]
async fn health_and_metrics_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    let health = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(health.body["status"], "ok");
    app.create_sale(sale_json("masks", 1, 1, json!({}))).await;
    let alice = app.token("alice", None, None).await;
    app.hold("masks", &alice, 1).await;
    let metrics = app.call(Method::GET, "/metrics", None, None).await;
    let text = metrics.body.as_str().unwrap();
    assert!(text.contains("holdfast_commands_total"), "{text}");
}

/// `/metrics` parsed as Prometheus parses it says what the API says: a sale's buckets, the
/// requests by route and status, a till's pending entries, the process.
#[apply(backends)]
async fn the_metrics_say_what_the_api_says(backend: Backend) {
    let app = spawn_app(backend).await;
    // Names of their own: every test in this binary shares one metrics registry.
    app.create_sale(sale_json("metered", 10, 2, json!({})))
        .await;
    let alice = app.token("alice-metered", None, None).await;
    let bob = app.token("bob-metered", None, None).await;
    let held = app.hold("metered", &alice, 2).await;
    assert_eq!(held.status, StatusCode::CREATED);
    let confirmed = app
        .confirm(held.body["hold_id"].as_str().unwrap(), &alice)
        .await;
    assert_eq!(confirmed.status, StatusCode::OK);
    assert_eq!(
        app.hold("metered", &bob, 1).await.status,
        StatusCode::CREATED
    );
    let secret = terminals::register(&app, "till-metered").await;
    terminals::sync_report(&app, "till-metered", &secret, 3, None).await;

    let (total, available, held, sold) = stock(&app.sale("metered").await);
    let scrape = scrape(&app).await;
    let value = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no {name} {labels:?}"))
    };
    let units = |bucket| {
        value(
            "holdfast_sale_units",
            &[("sale", "metered"), ("bucket", bucket)],
        )
    };
    assert_eq!(
        (
            units("total"),
            units("available"),
            units("held"),
            units("sold")
        ),
        (total as f64, available as f64, held as f64, sold as f64)
    );
    assert_eq!((held, sold), (1, 2));
    let holds = [
        ("route", "/v1/sales/:id/holds"),
        ("method", "POST"),
        ("status", "201"),
    ];
    assert!(value("holdfast_http_requests_total", &holds) >= 2.0);
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "holdfast_http_request_seconds"
                && matches!(s.value, prometheus_parse::Value::Histogram(_))),
        "request latencies are a histogram"
    );
    let till = [("terminal", "till-metered")];
    assert_eq!(value("holdfast_terminal_entries_pending", &till), 3.0);
    assert_eq!(value("holdfast_terminal_quarantined", &till), 0.0);
    assert!(value("holdfast_terminal_seconds_since_contact", &till) >= 0.0);
    assert!(value("holdfast_idempotency_answers", &[]) >= 0.0);
    assert!(value("holdfast_log_bytes", &[]) > 0.0);
    assert!(value("process_resident_memory_bytes", &[]) > 0.0);
    assert!(value("process_open_fds", &[]) > 0.0);
}

/// Every node's `/metrics`, parsed: each node refreshes the gauges of what it serves, into the
/// one registry this process has, so the last page shows them all.
async fn scrape(app: &TestApp) -> prometheus_parse::Scrape {
    let mut text = String::new();
    for base in &app.bases {
        text = metrics_page(app, base).await;
    }
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).unwrap()
}

#[apply(backends)]
async fn writes_beyond_the_in_flight_bound_are_shed_at_once_and_reads_still_answer(
    backend: Backend,
) {
    let limits = holdfast_server::Limits {
        writes_in_flight_max: 1,
        ..holdfast_server::Limits::default()
    };
    let (app, mut gate) = spawn_app_gated(backend, limits).await;
    app.create_sale(sale_json("masks", 5, 1, json!({}))).await;
    let alice = app.token("alice", None, None).await;
    let bob = app.token("bob", None, None).await;
    let hold_id = app.hold("masks", &alice, 1).await.body["hold_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let app = std::sync::Arc::new(app);
    // Alice's confirm occupies the only write slot, parked inside the card network.
    let confirming = tokio::spawn({
        let app = app.clone();
        let alice = alice.clone();
        async move { app.confirm(&hold_id, &alice).await }
    });
    gate.entered.recv().await.unwrap();
    let shed = app.hold("masks", &bob, 1).await;
    assert_eq!(
        (shed.status, shed.code()),
        (StatusCode::TOO_MANY_REQUESTS, "overloaded")
    );
    let read = app
        .call(Method::GET, "/v1/sales/masks", Some(&bob), None)
        .await;
    assert_eq!(read.status, StatusCode::OK, "reads are never shed");
    gate.release.send(true).unwrap();
    assert_eq!(confirming.await.unwrap().status, StatusCode::OK);
    assert_eq!(
        app.hold("masks", &bob, 1).await.status,
        StatusCode::CREATED,
        "the slot is free again"
    );
}
