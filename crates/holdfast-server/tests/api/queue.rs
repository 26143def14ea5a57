//! The waiting room over HTTP: tickets, passes, admission, sold out, the published draw.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

async fn join(app: &TestApp, sale: &str, token: &str) -> Answer {
    app.call(
        Method::POST,
        &format!("/v1/sales/{sale}/queue"),
        Some(token),
        Some(json!({"channel": "web"})),
    )
    .await
}

async fn poll(app: &TestApp, sale: &str, token: &str, ticket: &str) -> Answer {
    app.call(
        Method::GET,
        &format!("/v1/sales/{sale}/queue/{ticket}"),
        Some(token),
        None,
    )
    .await
}

async fn hold_with_pass(app: &TestApp, sale: &str, token: &str, pass: Option<&str>) -> Answer {
    let body = json!({"quantity": 1, "channel": "web", "pass": pass});
    app.call(
        Method::POST,
        &format!("/v1/sales/{sale}/holds"),
        Some(token),
        Some(body),
    )
    .await
}

/// Lets the sale's actor catch up with the manual clock (admissions, expiries): any command
/// does; a repeated join changes nothing else.
async fn nudge(app: &TestApp, sale: &str, token: &str) {
    assert_eq!(join(app, sale, token).await.status, StatusCode::OK);
}

struct Shopper {
    token: String,
    ticket: String,
}

async fn line_up(app: &TestApp, sale: &str, n: usize) -> Vec<Shopper> {
    let mut shoppers = Vec::new();
    for i in 0..n {
        let token = app
            .token(&format!("q{i}"), Some(&format!("010-9000-{i:04}")), None)
            .await;
        let joined = join(app, sale, &token).await;
        assert_eq!(joined.status, StatusCode::OK, "{}", joined.body);
        assert_eq!(
            joined.body["entry_id"].as_str().map(str::len),
            Some(16),
            "{}",
            joined.body
        );
        let ticket = joined.body["ticket"].as_str().unwrap().to_owned();
        shoppers.push(Shopper { token, ticket });
    }
    shoppers
}

fn queued_sale(id: &str, stock: u32, mode: &str, opens_at: &str) -> Value {
    sale_json(
        id,
        stock,
        1,
        json!({"queue": mode, "opens_at": opens_at, "admission_per_s": 100, "hold_ttl_s": 60}),
    )
}

#[apply(backends)]
async fn joining_before_the_opening_gives_a_place_and_one_person_gets_one_place(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(queued_sale("drop", 10, "fifo", "2026-01-01T01:00:00Z"))
        .await;
    let shoppers = line_up(&app, "drop", 3).await;
    let third = poll(&app, "drop", &shoppers[2].token, &shoppers[2].ticket).await;
    assert_eq!(
        (
            third.body["state"].as_str(),
            third.body["position"].as_u64()
        ),
        (Some("not_open"), Some(3))
    );
    assert_eq!(third.body["eta_s"], 3600 + 1);
    // Same account again: the very same ticket. Another account with the same phone: the same place.
    let again = join(&app, "drop", &shoppers[1].token).await;
    assert_eq!(again.body["ticket"], shoppers[1].ticket.as_str());
    let twin = app
        .token("q1-second-account", Some("+82 10 9000 0001"), None)
        .await;
    assert_eq!(join(&app, "drop", &twin).await.body["position"], 2);
    assert_eq!(app.sale("drop").await["queue"]["entries"], 3);
}

#[apply(backends)]
async fn forged_altered_and_borrowed_tickets_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(queued_sale("drop", 10, "fifo", "2026-01-01T00:00:00Z"))
        .await;
    let shoppers = line_up(&app, "drop", 2).await;
    let mut altered = shoppers[0].ticket.clone();
    altered.insert(altered.len() / 2, 'x');
    for (token, ticket) in [
        (&shoppers[0].token, altered.as_str()),
        (&shoppers[0].token, "not-a-ticket"),
        (&shoppers[1].token, shoppers[0].ticket.as_str()),
    ] {
        let refused = poll(&app, "drop", token, ticket).await;
        assert_eq!(
            (refused.status, refused.code()),
            (StatusCode::FORBIDDEN, "ticket_invalid")
        );
    }
    // A ticket is not a customer token either.
    let confused = app
        .call(
            Method::GET,
            "/v1/sales/drop",
            Some(&shoppers[0].ticket),
            None,
        )
        .await;
    assert_eq!(confused.status, StatusCode::UNAUTHORIZED);
}

#[apply(backends)]
async fn a_hold_needs_a_pass_and_a_pass_is_used_once(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(queued_sale("drop", 5, "fifo", "2026-01-01T00:00:00Z"))
        .await;
    let shoppers = line_up(&app, "drop", 2).await;
    let without = hold_with_pass(&app, "drop", &shoppers[0].token, None).await;
    assert_eq!(
        (without.status, without.code()),
        (StatusCode::FORBIDDEN, "pass_required")
    );
    app.advance_s(1);
    nudge(&app, "drop", &shoppers[0].token).await;
    let admitted = poll(&app, "drop", &shoppers[0].token, &shoppers[0].ticket).await;
    assert_eq!(admitted.body["state"], "admitted", "{}", admitted.body);
    let pass = admitted.body["pass"].as_str().unwrap().to_owned();
    // Someone else's pass is not yours.
    let stolen = hold_with_pass(&app, "drop", &shoppers[1].token, Some(&pass)).await;
    assert_eq!(
        (stolen.status, stolen.code()),
        (StatusCode::FORBIDDEN, "pass_invalid")
    );
    let held = hold_with_pass(&app, "drop", &shoppers[0].token, Some(&pass)).await;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.body);
    assert_eq!(
        app.confirm(held.body["hold_id"].as_str().unwrap(), &shoppers[0].token)
            .await
            .status,
        StatusCode::OK
    );
    let replayed = hold_with_pass(&app, "drop", &shoppers[0].token, Some(&pass)).await;
    assert_eq!(
        (replayed.status, replayed.code()),
        (StatusCode::FORBIDDEN, "pass_invalid")
    );
}

#[apply(backends)]
async fn sold_out_reaches_every_waiter_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(queued_sale("drop", 2, "fifo", "2026-01-01T00:00:00Z"))
        .await;
    let shoppers = line_up(&app, "drop", 6).await;
    app.advance_s(1);
    nudge(&app, "drop", &shoppers[0].token).await;
    for shopper in &shoppers[..2] {
        let pass = poll(&app, "drop", &shopper.token, &shopper.ticket)
            .await
            .body["pass"]
            .as_str()
            .unwrap()
            .to_owned();
        let held = hold_with_pass(&app, "drop", &shopper.token, Some(&pass)).await;
        app.confirm(held.body["hold_id"].as_str().unwrap(), &shopper.token)
            .await;
    }
    for shopper in &shoppers[2..] {
        let answer = poll(&app, "drop", &shopper.token, &shopper.ticket).await;
        assert_eq!(answer.body["state"], "sold_out", "{}", answer.body);
        assert_eq!(
            (&answer.body["chance"], &answer.body["poll_after_s"]),
            (&json!("none"), &Value::Null),
            "nothing left to wait for: the client is not asked to poll again"
        );
    }
}

#[apply(backends)]
async fn a_restock_admits_more(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(queued_sale("drop", 1, "fifo", "2026-01-01T00:00:00Z"))
        .await;
    let shoppers = line_up(&app, "drop", 3).await;
    app.advance_s(1);
    nudge(&app, "drop", &shoppers[0].token).await;
    assert_eq!(
        poll(&app, "drop", &shoppers[1].token, &shoppers[1].ticket)
            .await
            .body["state"],
        "waiting"
    );
    app.call(
        Method::POST,
        "/v1/sales/drop/restock",
        Some(OPERATOR),
        Some(json!({"quantity": 2})),
    )
    .await;
    app.advance_s(1);
    nudge(&app, "drop", &shoppers[0].token).await;
    for shopper in &shoppers[1..] {
        assert_eq!(
            poll(&app, "drop", &shopper.token, &shopper.ticket)
                .await
                .body["state"],
            "admitted"
        );
    }
}

async fn operator_post(app: &TestApp, path: &str) -> Answer {
    let answer = app.call(Method::POST, path, Some(OPERATOR), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
    answer
}

/// An operator pauses the waiting room (nobody new admitted, places kept, no ETA promised),
/// then the sale (no new hold, a hold already placed still paid), then resumes both.
#[apply(backends)]
async fn an_operator_pauses_and_resumes_the_waiting_room_and_the_sale(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(queued_sale("drop", 5, "fifo", "2026-01-01T00:00:00Z"))
        .await;
    let shoppers = line_up(&app, "drop", 3).await;
    let paused = operator_post(&app, "/v1/sales/drop/waiting-room/pause").await;
    assert_eq!(
        paused.body["paused"],
        json!({"sale": false, "waiting_room": true})
    );
    app.advance_s(5);
    nudge(&app, "drop", &shoppers[0].token).await;
    let waiting = poll(&app, "drop", &shoppers[0].token, &shoppers[0].ticket).await;
    assert_eq!(
        (
            &waiting.body["state"],
            &waiting.body["paused"],
            &waiting.body["eta_s"]
        ),
        (&json!("waiting"), &json!(true), &Value::Null),
        "{}",
        waiting.body
    );
    operator_post(&app, "/v1/sales/drop/waiting-room/resume").await;
    app.advance_s(1);
    nudge(&app, "drop", &shoppers[0].token).await;
    let admitted = poll(&app, "drop", &shoppers[0].token, &shoppers[0].ticket).await;
    assert_eq!(admitted.body["state"], "admitted", "{}", admitted.body);
    let pass = admitted.body["pass"].as_str().unwrap();
    let held = hold_with_pass(&app, "drop", &shoppers[0].token, Some(pass)).await;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.body);

    operator_post(&app, "/v1/sales/drop/pause").await;
    let second = poll(&app, "drop", &shoppers[1].token, &shoppers[1].ticket).await;
    let pass = second.body["pass"].as_str().unwrap();
    let refused = hold_with_pass(&app, "drop", &shoppers[1].token, Some(pass)).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::FORBIDDEN, "sale_paused")
    );
    let hold_id = held.body["hold_id"].as_str().unwrap();
    let confirmed = app.confirm(hold_id, &shoppers[0].token).await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.body);
    let resumed = operator_post(&app, "/v1/sales/drop/resume").await;
    assert_eq!(
        resumed.body["paused"],
        json!({"sale": false, "waiting_room": false})
    );
    let held = hold_with_pass(&app, "drop", &shoppers[1].token, Some(pass)).await;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.body);
}

#[apply(backends)]
async fn an_expired_hold_admits_the_next_person(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(queued_sale("drop", 1, "fifo", "2026-01-01T00:00:00Z"))
        .await;
    let shoppers = line_up(&app, "drop", 2).await;
    app.advance_s(1);
    nudge(&app, "drop", &shoppers[0].token).await;
    let pass = poll(&app, "drop", &shoppers[0].token, &shoppers[0].ticket)
        .await
        .body["pass"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        hold_with_pass(&app, "drop", &shoppers[0].token, Some(&pass))
            .await
            .status,
        StatusCode::CREATED
    );
    let second = poll(&app, "drop", &shoppers[1].token, &shoppers[1].ticket).await;
    assert_eq!(
        (
            second.body["state"].as_str(),
            second.body["chance"].as_str()
        ),
        (Some("waiting"), Some("possible"))
    );
    app.advance_s(60);
    nudge(&app, "drop", &shoppers[0].token).await;
    assert_eq!(
        poll(&app, "drop", &shoppers[1].token, &shoppers[1].ticket)
            .await
            .body["state"],
        "admitted"
    );
}

#[apply(backends)]
async fn the_lottery_draw_is_published_and_anyone_can_recompute_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app
        .create_sale(queued_sale("lotto", 3, "lottery", "2026-01-01T01:00:00Z"))
        .await;
    let commitment = created.body["lottery"]["seed_commitment"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        created.body["lottery"]["seed"],
        Value::Null,
        "the seed stays secret until the draw"
    );
    let shoppers = line_up(&app, "lotto", 12).await;
    let early = poll(&app, "lotto", &shoppers[0].token, &shoppers[0].ticket).await;
    assert_eq!(
        (
            early.body["state"].as_str(),
            early.body["position"].as_u64()
        ),
        (Some("not_open"), None)
    );
    app.advance_s(3600);
    nudge(&app, "lotto", &shoppers[0].token).await;

    let draw = app
        .call(Method::GET, "/v1/sales/lotto/draw", None, None)
        .await
        .body;
    assert_eq!(draw["seed_commitment"], commitment.as_str());
    let seed_hex = draw["seed"].as_str().unwrap();
    let seed: [u8; 32] = hex::decode(seed_hex).unwrap().try_into().unwrap();
    assert_eq!(
        holdfast_core::seed_commitment(&seed),
        commitment,
        "the seed matches its commitment"
    );
    let entrants: Vec<holdfast_core::EntryId> = draw["entrants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| holdfast_core::EntryId::from_hex(e.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(entrants.len(), 12);
    let recomputed: Vec<u64> = holdfast_core::draw(&seed, &entrants)
        .iter()
        .map(|r| u64::from(r + 1))
        .collect();
    let published: Vec<u64> = draw["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert_eq!(recomputed, published);
    for shopper in &shoppers {
        // Every shopper finds their own line in the draw by the entry id their answers carry.
        let answer = poll(&app, "lotto", &shopper.token, &shopper.ticket).await;
        let entry = answer.body["entry_id"].as_str().unwrap();
        let line = draw["entrants"]
            .as_array()
            .unwrap()
            .iter()
            .position(|e| e == entry)
            .unwrap_or_else(|| panic!("{entry} is not in the draw"));
        assert_eq!(
            answer.body["position"].as_u64(),
            Some(published[line]),
            "{}",
            answer.body
        );
    }
    // Admission accrues from the opening at the sale's rate. Three units: exactly the first
    // three drawn are admitted.
    app.advance_s(1);
    nudge(&app, "lotto", &shoppers[0].token).await;
    // A node that does not serve the sale answers polls from the view the other publishes,
    // which may trail by a moment: wait for it, within a bound.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let admitted: Vec<u64> = positions_in_state(&app, &shoppers, "admitted").await;
        if admitted == [1, 2, 3] || std::time::Instant::now() > deadline {
            assert_eq!(admitted, [1, 2, 3]);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn positions_in_state(app: &TestApp, shoppers: &[Shopper], state: &str) -> Vec<u64> {
    let mut positions = Vec::new();
    for shopper in shoppers {
        let answer = poll(app, "lotto", &shopper.token, &shopper.ticket).await;
        if answer.body["state"] == state {
            positions.push(answer.body["position"].as_u64().unwrap());
        }
    }
    positions.sort();
    positions
}

/// On several nodes, a waiting-room poll is answered by whichever node it reaches, from the view
/// the sale's holder publishes: nothing is handed to the holder, nothing asked of the database.
#[tokio::test]
async fn a_poll_on_another_node_is_answered_there_from_the_published_view() {
    let app = spawn_app(Backend::TwoNodes).await;
    let (holder, other) = (&app.bases[0], &app.bases[1]);
    let sale = queued_sale("line", 5, "fifo", "2026-01-01T00:00:00Z");
    let created = app
        .client
        .post(format!("{holder}/v1/sales"))
        .bearer_auth(OPERATOR)
        .json(&sale)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let token = app.token("polly", None, None).await;
    let joined: Value = app
        .client
        .post(format!("{holder}/v1/sales/line/queue"))
        .bearer_auth(&token)
        .json(&json!({"channel": "web"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ticket = joined["ticket"].as_str().unwrap();
    let health = |base: String| {
        let client = app.client.clone();
        async move {
            let health: Value = client
                .get(format!("{base}/health"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            health
        }
    };
    let poll = || {
        let client = app.client.clone();
        let url = format!("{other}/v1/sales/line/queue/{ticket}");
        let token = token.clone();
        async move {
            let answer = client.get(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(answer.status(), StatusCode::OK);
            let answer: Value = answer.json().await.unwrap();
            assert_eq!(answer["position"], 1, "{answer}");
        }
    };
    // Until the other node follows a view that knows this ticket (it looks every 200 ms), its
    // polls are handed to the holder; from then on, none is.
    let started = std::time::Instant::now();
    let handed_over = loop {
        let before = health(other.clone()).await["requests_handed_over"].clone();
        poll().await;
        if health(other.clone()).await["requests_handed_over"] == before {
            break before;
        }
        assert!(started.elapsed().as_secs() < 10, "the view never arrived");
    };
    for _ in 0..20 {
        poll().await;
    }
    assert_eq!(
        health(other.clone()).await["requests_handed_over"],
        handed_over,
        "no poll was handed to the sale's holder"
    );
}
