//! Durability and idempotency across restarts.

use holdfast_server::Limits;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

async fn hold_with_key(app: &TestApp, token: &str, quantity: i64, key: &str) -> Answer {
    let body = json!({"quantity": quantity, "channel": "web"});
    app.call_with(
        Method::POST,
        "/v1/sales/masks/holds",
        Some(token),
        Some(body),
        Some(key),
    )
    .await
}

#[apply(backends)]
async fn a_repeated_idempotency_key_returns_the_first_answer_even_after_a_restart(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    app.create_sale(sale_json("masks", 10, 3, json!({}))).await;
    let alice = app.token("alice", None, None).await;
    let first = hold_with_key(&app, &alice, 1, "key-1").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = hold_with_key(&app, &alice, 1, "key-1").await;
    assert_eq!((again.status, &again.body), (first.status, &first.body));
    assert_eq!(stock(&app.sale("masks").await).2, 1, "one hold, not two");

    let reused = hold_with_key(&app, &alice, 2, "key-1").await;
    assert_eq!(
        (reused.status, reused.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
    );

    // The same key from another customer is another request.
    let bob = app.token("bob", None, None).await;
    assert_eq!(
        hold_with_key(&app, &bob, 1, "key-1").await.status,
        StatusCode::CREATED
    );

    let hold_id = first.body["hold_id"].as_str().unwrap().to_owned();
    let confirm = json!({"payment": {"method": "card", "token": "tok_visa"}});
    let path = format!("/v1/holds/{hold_id}/confirm");
    let paid = app
        .call_with(
            Method::POST,
            &path,
            Some(&alice),
            Some(confirm.clone()),
            Some("pay-1"),
        )
        .await;
    assert_eq!(paid.status, StatusCode::OK);

    let app = app.restart().await;
    let after_restart = hold_with_key(&app, &alice, 1, "key-1").await;
    assert_eq!(
        (after_restart.status, &after_restart.body),
        (first.status, &first.body)
    );
    let paid_again = app
        .call_with(
            Method::POST,
            &path,
            Some(&alice),
            Some(confirm),
            Some("pay-1"),
        )
        .await;
    assert_eq!(paid_again.body, paid.body);
    assert_eq!(stock(&app.sale("masks").await), (10, 8, 1, 1));
    assert_captured(&app, 1, "charged once").await;
}

#[apply(backends)]
async fn a_refusal_is_remembered_under_its_key_too(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(sale_json("masks", 0, 1, json!({}))).await;
    let alice = app.token("alice", None, None).await;
    let first = hold_with_key(&app, &alice, 1, "k").await;
    assert_eq!(first.code(), "sold_out");
    // Answered from the sale's counters, not its actor: it must be as durable all the same.
    let app = app.restart().await;
    app.call(
        Method::POST,
        "/v1/sales/masks/restock",
        Some(OPERATOR),
        Some(json!({"quantity": 5})),
    )
    .await;
    // The retry is the same request: it gets the same answer. A new attempt takes a new key.
    assert_eq!(hold_with_key(&app, &alice, 1, "k").await.code(), "sold_out");
    assert_eq!(
        hold_with_key(&app, &alice, 1, "k2").await.status,
        StatusCode::CREATED
    );
}

async fn buy(app: &TestApp, customer: &str) -> Value {
    let token = app.token(customer, None, None).await;
    let hold = app.hold("masks", &token, 1).await;
    assert_eq!(hold.status, StatusCode::CREATED, "{}", hold.body);
    app.confirm(hold.body["hold_id"].as_str().unwrap(), &token)
        .await
        .body
}

#[apply(backends)]
async fn the_ledger_survives_a_restart_with_and_without_snapshots(backend: Backend) {
    for snapshot_every_events in [3, 100_000] {
        let limits = Limits {
            snapshot_every_events,
            ..Limits::default()
        };
        let app = spawn_app_with(backend, limits).await;
        app.create_sale(sale_json("masks", 20, 1, json!({"hold_ttl_s": 60})))
            .await;
        let mut orders = Vec::new();
        for n in 0..7 {
            orders.push(buy(&app, &format!("c{n}")).await["order_id"].clone());
        }
        let holder = app.token("holder", None, None).await;
        app.hold("masks", &holder, 1).await;
        app.call(
            Method::POST,
            "/v1/sales/masks/restock",
            Some(OPERATOR),
            Some(json!({"quantity": 4})),
        )
        .await;
        let before = app.sale("masks").await;
        assert_eq!(stock(&before), (24, 16, 1, 7));
        if snapshot_every_events == 3 {
            app.wait_for_a_sale_snapshot().await;
        }

        let app = app.restart().await;
        assert_eq!(
            app.sale("masks").await,
            before,
            "snapshot every {snapshot_every_events}"
        );
        let snapshots = app.sale_snapshot_count().await;
        if snapshot_every_events == 3 {
            assert!(snapshots > 0, "this pass must restore from a snapshot");
        } else {
            assert_eq!(snapshots, 0, "this pass must replay the log alone");
        }
        let listed = app
            .call(
                Method::GET,
                "/v1/sales/masks/orders?limit=5",
                Some(OPERATOR),
                None,
            )
            .await;
        assert_eq!(listed.body["orders"].as_array().unwrap().len(), 5);
        let next = listed.body["next"].as_str().unwrap().to_owned();
        let rest = app
            .call(
                Method::GET,
                &format!("/v1/sales/masks/orders?after={next}"),
                Some(OPERATOR),
                None,
            )
            .await;
        let mut seen: Vec<Value> = listed.body["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["order_id"].clone())
            .collect();
        seen.extend(
            rest.body["orders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["order_id"].clone()),
        );
        assert_eq!(seen, orders);
        // The limit still knows who bought, and the hold still expires on time after replay.
        assert_eq!(
            app.hold("masks", &app.token("c0", None, None).await, 1)
                .await
                .code(),
            "limit_exceeded"
        );
        app.advance_s(60);
        assert_eq!(buy(&app, "after-restart").await["status"], "confirmed");
        assert_eq!(stock(&app.sale("masks").await), (24, 16, 0, 8));
    }
}

/// A snapshot is built from the durable log by a task of its own and saved in its own file,
/// so a sale keeps selling while one cannot be written at all.
#[tokio::test]
async fn a_sale_sells_on_while_its_snapshot_cannot_be_written() {
    let limits = Limits {
        snapshot_every_events: 3,
        ..Limits::default()
    };
    let app = spawn_app_with(Backend::Embedded, limits).await;
    app.create_sale(sale_json("masks", 40, 1, json!({}))).await;
    let blocker = rusqlite::Connection::open(app.dir.path().join("snapshots.db")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    for n in 0..12 {
        assert_eq!(buy(&app, &format!("c{n}")).await["status"], "confirmed");
    }
    assert_eq!(app.sale_snapshot_count().await, 0, "nothing could be saved");
    blocker.execute_batch("COMMIT").unwrap();
    app.wait_for_a_sale_snapshot().await;
    let before = app.sale("masks").await;
    assert_eq!(stock(&before), (40, 28, 0, 12));
    let app = app.restart().await;
    assert_eq!(app.sale("masks").await, before);
}

/// A sale that keeps selling keeps being snapshotted (ever less often: as many events between
/// two as the sale had records at the last), so a restart never replays most of its history.
#[tokio::test]
async fn a_growing_sale_keeps_being_snapshotted() {
    let limits = Limits {
        snapshot_every_events: 3,
        ..Limits::default()
    };
    let app = spawn_app_with(Backend::Embedded, limits).await;
    app.create_sale(sale_json("masks", 100, 1, json!({}))).await;
    for n in 0..40 {
        assert_eq!(buy(&app, &format!("c{n}")).await["status"], "confirmed");
    }
    let last_record: i64 = app.count_rows("SELECT MAX(seq) FROM log").await;
    let covered = || {
        let db = rusqlite::Connection::open(app.dir.path().join("snapshots.db")).unwrap();
        db.query_row(
            "SELECT COALESCE(MAX(through), 0) FROM snapshot WHERE stream = 'masks'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while covered() < last_record / 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the newest snapshot covers the log only to {} of {last_record}",
            covered()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A data directory written before records and snapshots were binary (JSON records, a JSON
/// snapshot in the log file itself) opens as it was, and what is written next is binary.
#[tokio::test]
async fn a_data_directory_written_in_json_still_opens() {
    use holdfast_core::{Channel, Command, Reply, Sale, SaleSpec, Shopper, Timestamp};
    use holdfast_server::log_entry::LogEntry;
    use holdfast_store::{Batch, LogBackend, Record, Snapshot, SqliteLog};

    let mut app = spawn_app(Backend::Embedded).await;
    app.stop().await;
    let mut sale = Sale::new(SaleSpec::plain("masks", 1000, 20, 1, Timestamp(0)));
    let json_record = |entry: &LogEntry| Record {
        stream: "masks".into(),
        payload: serde_json::to_vec(entry).unwrap(),
    };
    let purchase = |sale: &mut Sale, who: &str, now: i64| {
        let shopper = Shopper::new(who, None, None).unwrap();
        let hold = Command::PlaceHold {
            shopper: shopper.clone(),
            quantity: 1,
            channel: Channel::Web,
            pass: None,
        };
        let held = sale.handle(&hold, Timestamp(now));
        let Ok(Reply::Held(placed)) = held.outcome else {
            panic!("{:?}", held.outcome)
        };
        let confirm = Command::ConfirmHold {
            hold: placed.id,
            customer_id: who.into(),
            payment_ref: format!("auth-{who}"),
        };
        let mut events = held.events;
        events.extend(sale.handle(&confirm, Timestamp(now)).events);
        LogEntry::Events { events }
    };
    let created = LogEntry::SaleCreated {
        spec: sale.spec().clone(),
    };
    let first = purchase(&mut sale, "alice", 1_000);
    let snapshot = serde_json::to_vec(&sale.snapshot()).unwrap();
    let second = purchase(&mut sale, "bob", 2_000);
    {
        let mut log = SqliteLog::open(app.dir.path()).unwrap();
        let with_snapshot = Batch {
            records: vec![json_record(&created), json_record(&first)],
            snapshots: vec![Snapshot {
                stream: "masks".into(),
                payload: snapshot,
            }],
            ..Batch::default()
        };
        let after = Batch {
            records: vec![json_record(&second)],
            ..Batch::default()
        };
        log.commit(&[with_snapshot, after]).unwrap();
    }
    let app = app.restart().await;
    assert_eq!(stock(&app.sale("masks").await), (20, 18, 0, 2));
    assert_eq!(buy(&app, "carol").await["status"], "confirmed");
    let app = app.restart().await;
    assert_eq!(stock(&app.sale("masks").await), (20, 17, 0, 3));
    let last: Vec<u8> = rusqlite::Connection::open(app.dir.path().join("holdfast.db"))
        .unwrap()
        .query_row(
            "SELECT payload FROM log ORDER BY seq DESC LIMIT 1",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_ne!(last[0], b'{', "new records are binary");
}

#[apply(backends)]
async fn an_idempotency_key_replays_for_a_day_then_is_fresh_again(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(sale_json("masks", 10, 3, json!({}))).await;
    let alice = app.token("alice", None, None).await;
    let first = hold_with_key(&app, &alice, 1, "daily").await;
    app.advance_s(24 * 3600 - 1);
    let within = hold_with_key(&app, &alice, 1, "daily").await;
    assert_eq!(within.body, first.body, "replayed within the day");
    app.advance_s(1);
    // Alice's token has expired too (a day as well); the storefront issues her a new one.
    let alice = app.token("alice", None, None).await;
    let after = hold_with_key(&app, &alice, 1, "daily").await;
    assert_eq!(after.status, StatusCode::CREATED);
    assert_ne!(
        after.body["hold_id"], first.body["hold_id"],
        "a day later the key is fresh"
    );
    // After a restart, the expired answer stays gone and the fresh one replays.
    let app = app.restart().await;
    assert_eq!(
        hold_with_key(&app, &alice, 1, "daily").await.body,
        after.body
    );
}

/// The buyer is answered once the order is durable, not once the card network has taken the
/// capture (a real network can take its time): the capture runs on and is done once.
#[apply(backends)]
async fn a_buyer_does_not_wait_for_the_capture(backend: Backend) {
    let (app, mut gate) = spawn_app_gated_at(backend, Limits::default(), Down::Captures).await;
    app.create_sale(sale_json("masks", 10, 2, json!({}))).await;
    let alice = app.token("alice", None, None).await;
    let held = app.hold("masks", &alice, 1).await;
    let hold_id = held.body["hold_id"].as_str().unwrap().to_owned();
    let in_time = std::time::Duration::from_secs(30);
    let confirmed = tokio::time::timeout(in_time, app.confirm(&hold_id, &alice))
        .await
        .expect("the buyer waited for the card network's capture");
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.body);
    let body = json!({"quantity": 1, "payment": {"method": "card", "token": "tok_visa"}});
    let purchase = app.call(
        Method::POST,
        "/v1/sales/masks/purchases",
        Some(&alice),
        Some(body),
    );
    let bought = tokio::time::timeout(in_time, purchase)
        .await
        .expect("the buyer waited for the card network's capture");
    assert_eq!(bought.status, StatusCode::CREATED, "{}", bought.body);
    gate.entered.recv().await.expect("a capture was asked for");
    assert_eq!(app.acquirer.captured(), 0, "both captures wait at the gate");
    gate.release.send(true).unwrap();
    assert_captured(&app, 2, "captured once each, after the answers").await;
}

/// A capture the card network did not take is kept and retried until it does; after a restart
/// too. Nothing authorised for an order is left uncaptured, nothing is captured twice.
#[apply(backends)]
async fn a_capture_the_network_did_not_take_is_retried_until_it_does(backend: Backend) {
    let limits = Limits {
        settlement_retry_every: std::time::Duration::from_millis(20),
        ..Limits::default()
    };
    let (app, captures_down) = spawn_app_with_network_down(backend, limits, Down::Captures).await;
    app.create_sale(sale_json("masks", 10, 1, json!({}))).await;
    let mut holds = Vec::new();
    for n in 0..3 {
        let shopper = app.token(&format!("c{n}"), None, None).await;
        let held = app.hold("masks", &shopper, 1).await;
        let hold_id = held.body["hold_id"].as_str().unwrap().to_owned();
        let confirmed = app.confirm(&hold_id, &shopper).await;
        assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.body);
        holds.push(hold_id);
    }
    // Each capture is tried once right after its answer, refused, and kept for a retry.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let pending = || metric(&app, "holdfast_payment_settlements_pending");
    while pending().await < 3.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(pending().await, 3.0);
    assert_eq!(app.acquirer.captured(), 0);
    // The server restarts while the network still refuses: nothing is forgotten.
    let app = app.restart().await;
    app.advance_s(60);
    captures_down.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut waited = 0;
    while app.acquirer.captured() < 3 {
        waited += 1;
        assert!(waited < 500, "the captures were never retried");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(app.acquirer.captured(), 3, "captured once each");
}

/// Stored answers under keys ending in `/{key}`, in whatever the backend keeps them in.
async fn stored_answers(app: &TestApp, key: &str) -> i64 {
    match &app.database {
        None => {
            let reader = holdfast_store::SqliteReader::open(app.dir.path()).unwrap();
            let values = reader.values().unwrap();
            let suffix = format!("/{key}");
            values.iter().filter(|(k, _)| k.ends_with(&suffix)).count() as i64
        }
        Some(_) => {
            app.count_rows(&format!(
                "SELECT COUNT(*) FROM kv WHERE key LIKE 'idem/%/{key}'"
            ))
            .await
        }
    }
}

/// A day's answers do not stay in the log for ever: once expired, compaction drops them, and
/// a restart reads what it read before, less them.
#[apply(backends)]
async fn expired_answers_leave_the_log_and_the_rest_survive_a_restart(backend: Backend) {
    let limits = Limits {
        compact_values_every: std::time::Duration::from_millis(20),
        ..Limits::default()
    };
    let app = spawn_app_with(backend, limits).await;
    app.create_sale(sale_json("masks", 10, 3, json!({}))).await;
    let alice = app.token("alice", None, None).await;
    let yesterday = hold_with_key(&app, &alice, 1, "yesterday").await;
    assert_eq!(stored_answers(&app, "yesterday").await, 1);
    app.advance_s(24 * 3600);
    let alice = app.token("alice", None, None).await;
    let today = hold_with_key(&app, &alice, 1, "today").await;
    assert_eq!(today.status, StatusCode::CREATED);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stored_answers(&app, "yesterday").await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the expired answer is still stored after 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(stored_answers(&app, "today").await, 1, "today's is kept");
    let app = app.restart().await;
    assert_eq!(
        hold_with_key(&app, &alice, 1, "today").await.body,
        today.body,
        "today's answer still replays after the restart"
    );
    let again = hold_with_key(&app, &alice, 1, "yesterday").await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_ne!(again.body["hold_id"], yesterday.body["hold_id"]);
    let (_, _, held, sold) = stock(&app.sale("masks").await);
    assert_eq!(
        (held, sold),
        (2, 0),
        "today's two holds; yesterday's expired"
    );
}

/// One request holds and pays. A retry after the card network failed between the two pays for
/// the same hold (a limit of one would refuse a second); a declined card gives the unit back at
/// once, and its retry is declined again; the sold-out answer replays like any other.
#[apply(backends)]
async fn a_purchase_holds_and_pays_in_one_request(backend: Backend) {
    let limits = Limits::default();
    let (app, network_down) =
        spawn_app_with_network_down(backend, limits, Down::Authorizations).await;
    app.create_sale(sale_json("masks", 2, 1, json!({}))).await;
    let alice = app.token("alice", None, None).await;
    let failed = app.purchase("masks", &alice, "tok_visa", "a-1").await;
    assert_eq!(
        (failed.status, failed.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "payment_unavailable")
    );
    assert_eq!(
        stock(&app.sale("masks").await),
        (2, 1, 1, 0),
        "the hold is kept"
    );
    network_down.store(false, std::sync::atomic::Ordering::SeqCst);
    let bought = app.purchase("masks", &alice, "tok_visa", "a-1").await;
    assert_eq!(bought.status, StatusCode::CREATED, "{}", bought.body);
    assert_eq!(bought.body["status"], "confirmed");
    assert_eq!(
        stock(&app.sale("masks").await),
        (2, 1, 0, 1),
        "the same hold, paid"
    );
    assert_captured(&app, 1, "the same hold, paid once").await;
    let again = app.purchase("masks", &alice, "tok_visa", "a-1").await;
    assert_eq!((again.status, &again.body), (bought.status, &bought.body));

    let bob = app.token("bob", None, None).await;
    let declined = app.purchase("masks", &bob, "tok_declined", "b-1").await;
    assert_eq!(declined.code(), "payment_declined");
    assert_eq!(
        stock(&app.sale("masks").await),
        (2, 1, 0, 1),
        "the unit is back"
    );
    let declined_again = app.purchase("masks", &bob, "tok_declined", "b-1").await;
    assert_eq!(
        (declined_again.status, &declined_again.body),
        (declined.status, &declined.body),
        "a retry under the same key gets the first answer"
    );
    let paid = app.purchase("masks", &bob, "tok_visa", "b-2").await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.body);

    let carol = app.token("carol", None, None).await;
    let refused = app.purchase("masks", &carol, "tok_visa", "c-1").await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::CONFLICT, "sold_out")
    );
    let app = app.restart().await;
    let replayed = app.purchase("masks", &carol, "tok_visa", "c-1").await;
    assert_eq!(
        (replayed.status, &replayed.body),
        (refused.status, &refused.body)
    );
    assert_captured(&app, 2, "two purchases, two captures").await;
}
