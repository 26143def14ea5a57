//! Tried as an attacker would: resellers with look-alike identities, garbage, forgeries and
//! replays. Each is answered with its 4xx and code, nothing panics, the ledger is unchanged.

use holdfast_server::Limits;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

/// A reseller opens accounts whose phone or address only *looks* different. Each shares the
/// first account's limit, on the ledger and in the waiting room.
#[apply(backends)]
async fn look_alike_phones_and_addresses_are_one_person(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(sale_json("masks", 10, 1, json!({}))).await;
    let first = app
        .token(
            "reseller-0",
            Some("010-8000-0004"),
            Some("12 Main St, Apt 3"),
        )
        .await;
    assert_eq!(
        app.hold("masks", &first, 1).await.status,
        StatusCode::CREATED
    );
    let look_alikes = [
        (Some("０１０-８０００-０００４"), None),
        (Some("010\u{200B}8000\u{200B}0004"), None),
        (Some("+82 10 8000 0004"), None),
        (Some("82-10-8000-0004"), None),
        (Some("(+82) 10 8000 0004"), None),
        (None, Some("１２ Ｍａｉｎ Ｓｔ， Ａｐｔ ３")),
        (None, Some("12 Ma\u{200B}in St, Apt 3")),
        (None, Some("12 M\u{0430}in St, Apt 3")),
    ];
    for (n, (phone, address)) in look_alikes.into_iter().enumerate() {
        let token = app
            .token(&format!("reseller-{}", n + 1), phone, address)
            .await;
        let refused = app.hold("masks", &token, 1).await;
        assert_eq!(
            (refused.status, refused.code()),
            (StatusCode::FORBIDDEN, "limit_exceeded"),
            "{phone:?} {address:?}: {}",
            refused.body
        );
    }
    assert_eq!(stock(&app.sale("masks").await), (10, 9, 1, 0));
}

#[apply(backends)]
async fn look_alike_phones_get_one_place_in_the_waiting_room(backend: Backend) {
    let app = spawn_app(backend).await;
    let sale = sale_json(
        "drop",
        10,
        1,
        json!({"queue": "fifo", "opens_at": "2026-01-01T01:00:00Z"}),
    );
    app.create_sale(sale).await;
    for (n, phone) in [
        "010-8000-0004",
        "０１０-８０００-０００４",
        "010\u{2060}8000-0004",
    ]
    .into_iter()
    .enumerate()
    {
        let token = app.token(&format!("r{n}"), Some(phone), None).await;
        let joined = app
            .call(
                Method::POST,
                "/v1/sales/drop/queue",
                Some(&token),
                Some(json!({})),
            )
            .await;
        assert_eq!(joined.status, StatusCode::OK, "{}", joined.body);
    }
    assert_eq!(
        app.sale("drop").await["queue"]["entries"],
        1,
        "one place for one person"
    );
}

/// A phone that is not one is refused when the token is asked for, rather than dropped (a
/// dropped phone is a limit dodged).
#[apply(backends)]
async fn a_phone_that_is_not_a_phone_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    for phone in ["call me", "010-CALL-0004", "٠١٠٨٠٠٠٠٠٠٤", "1"] {
        let body = json!({"customer_id": "c", "phone": phone});
        let refused = app
            .call(
                Method::POST,
                "/v1/customer-tokens",
                Some(OPERATOR),
                Some(body),
            )
            .await;
        assert_eq!(
            (refused.status, refused.code()),
            (StatusCode::BAD_REQUEST, "invalid_phone"),
            "{phone}"
        );
    }
}

/// Strangers trickling bodies in (a byte a second) once held every write slot, and every real
/// hold was refused `429`. Bodies are now read whole before a slot is taken.
#[apply(backends)]
async fn slow_bodies_from_strangers_hold_no_write_slot(backend: Backend) {
    let app = spawn_app_with(
        backend,
        Limits {
            writes_in_flight_max: 2,
            ..Limits::default()
        },
    )
    .await;
    app.create_sale(sale_json("masks", 10, 1, json!({}))).await;
    let buyer = app.token("buyer", Some("010-1234-0000"), None).await;
    let before = metric(&app, "holdfast_request_bodies_in_progress").await;
    let slow_request = b"POST /pay/ghost/none HTTP/1.1\r\nHost: holdfast\r\n\
        Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nc";
    let mut strangers = Vec::new();
    for _ in 0..20 {
        strangers.push(raw_connection(&app, slow_request).await);
    }
    // Wait until the server is reading every one of those bodies.
    let mut waited = 0;
    while metric(&app, "holdfast_request_bodies_in_progress").await < before + 20.0 {
        waited += 1;
        assert!(
            waited < 500,
            "the server never started reading the slow bodies"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for _ in 0..3 {
        let held = app.hold("masks", &buyer, 1).await;
        assert_eq!(held.status, StatusCode::CREATED, "{}", held.body);
        let hold_id = held.body["hold_id"].as_str().unwrap().to_owned();
        let released = app
            .call(
                Method::DELETE,
                &format!("/v1/holds/{hold_id}"),
                Some(&buyer),
                None,
            )
            .await;
        assert_eq!(released.status, StatusCode::OK);
    }
    drop(strangers);
}

#[apply(backends)]
async fn a_body_that_does_not_arrive_in_time_is_cut_off_with_408(backend: Backend) {
    let app = spawn_app_with(
        backend,
        Limits {
            body_read_timeout: std::time::Duration::from_millis(200),
            ..Limits::default()
        },
    )
    .await;
    let mut slow = raw_connection(
        &app,
        b"POST /v1/sales/masks/holds HTTP/1.1\r\nHost: holdfast\r\n\
          Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await;
    let (status, text) = read_until_closed(&mut slow).await;
    assert_eq!(status, Some(408), "{text}");
    assert!(text.contains("\"request_timeout\""), "{text}");
}

#[apply(backends)]
async fn headers_that_do_not_arrive_in_time_close_the_connection(backend: Backend) {
    let app = spawn_app_with(
        backend,
        Limits {
            header_read_timeout: std::time::Duration::from_millis(200),
            ..Limits::default()
        },
    )
    .await;
    let mut slow = raw_connection(&app, b"POST /v1/sales/masks/holds HTTP/1.1\r\nHost: hol").await;
    let (status, _) = read_until_closed(&mut slow).await;
    assert_ne!(status, Some(200));
    // An idle connection that never sends a request is closed too.
    let mut idle = raw_connection(&app, b"").await;
    read_until_closed(&mut idle).await;
}

/// A body larger than the route takes is refused from its `Content-Length`, in our JSON error
/// format (the queue route once answered 413 in plain text), before any of it is read.
#[apply(backends)]
async fn a_huge_body_is_refused_in_json_before_it_is_read(backend: Backend) {
    let app = spawn_app(backend).await;
    for path in [
        "/v1/sales/masks/queue",
        "/v1/sales/masks/holds",
        "/v1/terminals/t/sync",
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: holdfast\r\nContent-Type: application/json\r\n\
             Content-Length: 20971520\r\n\r\n"
        );
        let mut stream = raw_connection(&app, head.as_bytes()).await;
        let (status, text) = read_until_closed(&mut stream).await;
        assert_eq!(status, Some(413), "{path}: {text}");
        assert!(text.contains("\"payload_too_large\""), "{path}: {text}");
    }
}

/// Garbage of every kind on every route, with every kind of credential: never a 5xx, every
/// refusal in our error format, and the ledger exactly as it was.
#[apply(backends)]
async fn every_route_survives_garbage_and_the_ledger_is_unchanged(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(sale_json("masks", 10, 2, json!({}))).await;
    let alice = app.token("alice", Some("010-1111-2222"), None).await;
    let held = app.hold("masks", &alice, 1).await;
    assert_eq!(held.status, StatusCode::CREATED);
    let stranger = app.token("stranger", None, None).await;
    let register = json!({"terminal_id": "till-1", "store": "Mapo"});
    app.call(
        Method::POST,
        "/v1/terminals",
        Some(OPERATOR),
        Some(register),
    )
    .await;
    let before = (app.sale("masks").await, orders(&app).await);

    let nested = format!("{}{}", "[".repeat(8_000), "]".repeat(8_000));
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"{\"quantity\": 1".to_vec(),
        nested.into_bytes(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"a string\"".to_vec(),
        b"-0".to_vec(),
        b"\xff\xfe{\x00}".to_vec(),
        br#"{"quantity": "1", "channel": 5, "pass": []}"#.to_vec(),
        br#"{"quantity": 1e308}"#.to_vec(),
        br#"{"quantity": -9223372036854775809}"#.to_vec(),
        br#"{"quantity": 18446744073709551616, "channel": "web"}"#.to_vec(),
        r#"{"quantity": 1, "channel": "ｗｅｂ", "pass": "x.y.z"}"#
            .as_bytes()
            .to_vec(),
        br#"{"id": "\u0000", "stock": -1, "opens_at": "9999-99-99T99:99:99Z"}"#.to_vec(),
        br#"{"entries": [{"seq": -1, "prev": "zz", "body": 7}]}"#.to_vec(),
        br#"{"reference": "", "amount": 9223372036854775807, "card_token": null}"#.to_vec(),
        br#"{"payment": {"method": "card", "token": 12}}"#.to_vec(),
        b"card_token=%ff%00&card_token=two".to_vec(),
    ];
    let long_id = "x".repeat(9_000);
    let routes = [
        (Method::POST, "/v1/sales".to_owned()),
        (Method::GET, "/v1/sales/masks".into()),
        (Method::POST, "/v1/sales/masks/restock".into()),
        (
            Method::GET,
            "/v1/sales/masks/orders?after=%ff&limit=-1".into(),
        ),
        (Method::POST, "/v1/customer-tokens".into()),
        (Method::POST, "/v1/sales/masks/queue".into()),
        (Method::GET, "/v1/sales/masks/queue/not-a-ticket".into()),
        (Method::GET, "/v1/sales/masks/draw".into()),
        (Method::POST, "/v1/sales/masks/holds".into()),
        (Method::POST, format!("/v1/sales/{long_id}/holds")),
        (Method::POST, "/v1/sales/%ff%fe/holds".into()),
        (Method::GET, "/v1/holds/masks.h1".into()),
        (Method::POST, "/v1/holds/masks.h1/confirm".into()),
        (
            Method::POST,
            "/v1/holds/masks.h99999999999999999999/confirm".into(),
        ),
        (Method::GET, "/v1/orders/masks.o1".into()),
        (Method::POST, "/v1/terminals".into()),
        (Method::POST, "/v1/terminals/till-1/allotments".into()),
        (Method::POST, "/v1/terminals/till-1/sync".into()),
        (Method::GET, "/v1/terminals/till-1/quarantine".into()),
        (Method::POST, "/v1/terminals/till-1/payments".into()),
        (Method::POST, "/v1/stores/Mapo/offline-card-limits".into()),
        // Names no database takes (a NUL), and one no stream may have.
        (Method::PUT, "/v1/stores/Ma%00po/catalogue".into()),
        (Method::POST, "/v1/terminals/till%001/sync".into()),
        (
            Method::POST,
            format!("/v1/stores/{long_id}/offline-card-limits"),
        ),
        (Method::GET, "/pay/till-1/r-none".into()),
        (Method::POST, "/pay/till-1/r-none".into()),
        (Method::PATCH, "/v1/sales/masks".into()),
    ];
    let credentials = [
        None,
        Some("Bearer garbage".to_owned()),
        Some(format!("Bearer {stranger}")),
        Some(format!("Bearer {OPERATOR}")),
        Some("Terminal till-1:1:00112233445566778899aabbccddeeff:00".to_owned()),
        Some("Basic \u{0}".to_owned()),
    ];
    let mut tried = 0;
    for (method, path) in &routes {
        for credential in &credentials {
            for (n, body) in bodies.iter().enumerate() {
                let content_type = if n % 3 == 2 {
                    "text/plain"
                } else {
                    "application/json"
                };
                let mut request = app
                    .client
                    .request(method.clone(), format!("{}{path}", app.base))
                    .header("Content-Type", content_type)
                    .body(body.clone());
                if let Some(credential) = credential
                    && let Ok(value) = reqwest::header::HeaderValue::from_str(credential)
                {
                    request = request.header("Authorization", value);
                }
                let response = request.send().await.unwrap();
                let status = response.status();
                let challenge = response.headers().get("www-authenticate").cloned();
                let text = response.text().await.unwrap();
                let what = format!(
                    "{method} {} as {credential:?} with body {n}",
                    &path[..path.len().min(60)]
                );
                assert!(!status.is_server_error(), "{what}: {status} {text}");
                // RFC 9110 §15.5.2: a 401 names the scheme to authenticate with.
                if status == StatusCode::UNAUTHORIZED {
                    let challenge = challenge.unwrap_or_else(|| panic!("{what}: no challenge"));
                    let scheme = challenge.to_str().unwrap().split(' ').next().unwrap();
                    assert!(["Bearer", "Terminal"].contains(&scheme), "{what}: {scheme}");
                }
                if status.is_client_error() {
                    let error: serde_json::Value = serde_json::from_str(&text)
                        .unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
                    assert!(error["error"]["code"].is_string(), "{what}: {text}");
                    assert!(error["error"]["message"].is_string(), "{what}: {text}");
                }
                tried += 1;
            }
        }
    }
    assert_eq!(tried, routes.len() * credentials.len() * bodies.len());
    assert_eq!(
        (app.sale("masks").await, orders(&app).await),
        before,
        "garbage changed the ledger"
    );
}

async fn orders(app: &TestApp) -> serde_json::Value {
    app.call(Method::GET, "/v1/sales/masks/orders", Some(OPERATOR), None)
        .await
        .body
}

/// Tickets, passes and customer tokens are all signed by the server, but each carries its kind
/// and its sale: none stands in for another, none works on another sale.
/// An auth scheme's name is case-insensitive (RFC 9110 §11.1): a client that writes `bearer`
/// or `BEARER` is not a stranger. The token itself is still compared exactly.
#[apply(backends)]
async fn the_bearer_scheme_is_case_insensitive(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(sale_json("masks", 10, 1, json!({}))).await;
    let alice = app.token("alice", None, None).await;
    let hold = json!({"quantity": 1, "channel": "web"});
    for (n, scheme) in ["bearer", "BEARER", "bEaReR"].into_iter().enumerate() {
        let base = app.next_base();
        let read = app
            .client
            .get(format!("{base}/v1/sales/masks"))
            .header("Authorization", format!("{scheme} {OPERATOR}"))
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), StatusCode::OK, "{scheme}, operator");
        let held = app
            .client
            .post(format!("{base}/v1/sales/masks/holds"))
            .header("Authorization", format!("{scheme} {alice}"))
            .header("Idempotency-Key", format!("scheme-{n}"))
            .json(&hold)
            .send()
            .await
            .unwrap();
        let status = held.status();
        let expected = [
            StatusCode::CREATED,
            StatusCode::FORBIDDEN,
            StatusCode::FORBIDDEN,
        ][n];
        assert_eq!(
            status,
            expected,
            "{scheme}, customer: {}",
            held.text().await.unwrap()
        );
    }
    let wrong_case_token = app
        .client
        .get(format!("{}/v1/sales/masks", app.next_base()))
        .header(
            "Authorization",
            format!("bearer {}", OPERATOR.to_uppercase()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_case_token.status(), StatusCode::UNAUTHORIZED);
}

#[apply(backends)]
async fn no_token_stands_in_for_another_kind_or_another_sale(backend: Backend) {
    let app = spawn_app(backend).await;
    for id in ["drop", "other"] {
        let sale = sale_json(id, 5, 1, json!({"queue": "fifo"}));
        app.create_sale(sale).await;
    }
    let alice = app.token("alice", Some("010-5555-0001"), None).await;
    let queue = |sale: &str| format!("/v1/sales/{sale}/queue");
    let joined = app
        .call(Method::POST, &queue("drop"), Some(&alice), Some(json!({})))
        .await;
    let ticket = joined.body["ticket"].as_str().unwrap().to_owned();
    app.advance_s(1);
    app.call(Method::POST, &queue("drop"), Some(&alice), Some(json!({})))
        .await;
    let admitted = app
        .call(
            Method::GET,
            &format!("{}/{ticket}", queue("drop")),
            Some(&alice),
            None,
        )
        .await;
    let pass = admitted.body["pass"].as_str().expect("admitted").to_owned();
    let hold_with = |sale: &'static str, pass: String| {
        let body = json!({"quantity": 1, "channel": "web", "pass": pass});
        let alice = alice.clone();
        let app = &app;
        async move {
            app.call(
                Method::POST,
                &format!("/v1/sales/{sale}/holds"),
                Some(&alice),
                Some(body),
            )
            .await
        }
    };
    let cases = [
        (
            "a ticket as a pass",
            hold_with("drop", ticket.clone()).await,
        ),
        (
            "a customer token as a pass",
            hold_with("drop", alice.clone()).await,
        ),
        (
            "a pass on another sale",
            hold_with("other", pass.clone()).await,
        ),
        (
            "a pass as a ticket",
            app.call(
                Method::GET,
                &format!("{}/{pass}", queue("drop")),
                Some(&alice),
                None,
            )
            .await,
        ),
        (
            "a ticket on another sale",
            app.call(
                Method::GET,
                &format!("{}/{ticket}", queue("other")),
                Some(&alice),
                None,
            )
            .await,
        ),
        (
            "a pass as a customer token",
            app.call(Method::GET, "/v1/sales/drop", Some(&pass), None)
                .await,
        ),
    ];
    for (what, answer) in cases {
        assert!(
            matches!(
                (answer.status, answer.code()),
                (StatusCode::FORBIDDEN, "pass_invalid" | "ticket_invalid")
                    | (StatusCode::UNAUTHORIZED, "unauthorized")
            ),
            "{what}: {} {}",
            answer.status,
            answer.body
        );
    }
    assert_eq!(stock(&app.sale("drop").await).2, 0, "nothing was held");
    let held = hold_with("drop", pass).await;
    assert_eq!(
        held.status,
        StatusCode::CREATED,
        "the genuine pass still works: {}",
        held.body
    );
}

/// A stranger who makes up an HTTP method per request must not make up a metric series per
/// request too: every series is kept for the life of the process, so unbounded label values
/// are unbounded memory (and a scrape that grows without end).
#[apply(backends)]
async fn made_up_methods_do_not_grow_the_metrics(backend: Backend) {
    let app = spawn_app(backend).await;
    let made_up = |n: usize| format!("MADEUP{n}");
    for n in 0..20 {
        let method = Method::from_bytes(made_up(n).as_bytes()).unwrap();
        let answer = app
            .raw(method, "/v1/health", None, "text/plain", Vec::new())
            .await;
        assert!(answer.status.is_client_error(), "{}", answer.status);
    }
    let page = metrics_page(&app, &app.base).await;
    assert!(
        !page.contains(&made_up(0)),
        "a made-up method became a label value"
    );
    let other = page
        .lines()
        .filter(|line| {
            line.starts_with("holdfast_http_requests_total{") && line.contains("method=\"other\"")
        })
        .count();
    assert!(
        other > 0,
        "methods outside the standard ones are counted as `other`"
    );
}
