//! Every kind of bad input gets its documented 4xx and leaves the ledger exactly as it was.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

/// Each case: (what, method, path, token, content type, body, status, code).
type Case<'a> = (
    &'a str,
    Method,
    String,
    Option<String>,
    &'a str,
    Vec<u8>,
    StatusCode,
    &'a str,
);

#[apply(backends)]
async fn bad_input_gets_a_4xx_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(sale_json("masks", 10, 2, json!({}))).await;
    let alice = app.token("alice", Some("010-1111-2222"), None).await;
    let held = app.hold("masks", &alice, 1).await;
    let hold_id = held.body["hold_id"].as_str().unwrap().to_owned();
    let before = app.sale("masks").await;

    let json_type = "application/json";
    let holds = "/v1/sales/masks/holds".to_string();
    let alice_token = Some(alice.clone());
    let body = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let mut forged = alice.clone();
    forged.pop();
    forged.push(if alice.ends_with('A') { 'B' } else { 'A' });
    let (header, payload) = {
        let mut parts = alice.split('.');
        (
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().to_owned(),
        )
    };
    let unsigned = format!("{header}.{payload}.");
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            Method::POST,
            holds.clone(),
            alice_token.clone(),
            json_type,
            b"{\"quantity\": 1".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "wrong type",
            Method::POST,
            holds.clone(),
            alice_token.clone(),
            json_type,
            body(json!({"quantity": "one"})),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "missing field",
            Method::POST,
            holds.clone(),
            alice_token.clone(),
            json_type,
            body(json!({"channel": "web"})),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "negative quantity",
            Method::POST,
            holds.clone(),
            alice_token.clone(),
            json_type,
            body(json!({"quantity": -1})),
            StatusCode::BAD_REQUEST,
            "invalid_quantity",
        ),
        (
            "zero quantity",
            Method::POST,
            holds.clone(),
            alice_token.clone(),
            json_type,
            body(json!({"quantity": 0})),
            StatusCode::BAD_REQUEST,
            "invalid_quantity",
        ),
        (
            "huge quantity",
            Method::POST,
            holds.clone(),
            alice_token.clone(),
            json_type,
            body(json!({"quantity": 9_000_000_000_000i64})),
            StatusCode::BAD_REQUEST,
            "invalid_quantity",
        ),
        (
            "quantity beyond i64",
            Method::POST,
            holds.clone(),
            alice_token.clone(),
            json_type,
            b"{\"quantity\": 1e40}".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "over the limit",
            Method::POST,
            holds.clone(),
            alice_token.clone(),
            json_type,
            body(json!({"quantity": 2})),
            StatusCode::FORBIDDEN,
            "limit_exceeded",
        ),
        (
            "unknown channel",
            Method::POST,
            holds.clone(),
            alice_token.clone(),
            json_type,
            body(json!({"quantity": 1, "channel": "fax"})),
            StatusCode::BAD_REQUEST,
            "invalid_channel",
        ),
        (
            "unknown sale",
            Method::POST,
            "/v1/sales/nope/holds".into(),
            alice_token.clone(),
            json_type,
            body(json!({"quantity": 1})),
            StatusCode::NOT_FOUND,
            "sale_not_found",
        ),
        (
            "no token",
            Method::POST,
            holds.clone(),
            None,
            json_type,
            body(json!({"quantity": 1})),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "forged signature",
            Method::POST,
            holds.clone(),
            Some(forged),
            json_type,
            body(json!({"quantity": 1})),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "unsigned token",
            Method::POST,
            holds.clone(),
            Some(unsigned),
            json_type,
            body(json!({"quantity": 1})),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "garbage token",
            Method::POST,
            holds.clone(),
            Some("x.y.z".into()),
            json_type,
            body(json!({"quantity": 1})),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "operator token as shopper",
            Method::POST,
            holds.clone(),
            Some(OPERATOR.into()),
            json_type,
            body(json!({"quantity": 1})),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "shopper token as operator",
            Method::POST,
            "/v1/sales/masks/restock".into(),
            alice_token.clone(),
            json_type,
            body(json!({"quantity": 5})),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "oversized body",
            Method::POST,
            holds.clone(),
            alice_token.clone(),
            json_type,
            body(json!({"quantity": 1, "pad": "x".repeat(64 * 1024)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "not JSON",
            Method::POST,
            holds.clone(),
            alice_token.clone(),
            "text/plain",
            b"quantity=1".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "bad idempotency key",
            Method::POST,
            holds.clone(),
            alice_token.clone(),
            json_type,
            body(json!({"quantity": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
        ),
        (
            "negative restock",
            Method::POST,
            "/v1/sales/masks/restock".into(),
            Some(OPERATOR.into()),
            json_type,
            body(json!({"quantity": -5})),
            StatusCode::BAD_REQUEST,
            "invalid_quantity",
        ),
        (
            "huge restock",
            Method::POST,
            "/v1/sales/masks/restock".into(),
            Some(OPERATOR.into()),
            json_type,
            body(json!({"quantity": 4_000_000_000u64})),
            StatusCode::BAD_REQUEST,
            "invalid_quantity",
        ),
        (
            "confirm unknown hold",
            Method::POST,
            "/v1/holds/masks.h999/confirm".into(),
            alice_token.clone(),
            json_type,
            body(json!({"payment": {"method": "card", "token": "tok_visa"}})),
            StatusCode::NOT_FOUND,
            "hold_not_found",
        ),
        (
            "confirm nonsense id",
            Method::POST,
            "/v1/holds/%00%ff/confirm".into(),
            alice_token.clone(),
            json_type,
            body(json!({"payment": {"method": "card", "token": "tok_visa"}})),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            "confirm malformed id",
            Method::POST,
            "/v1/holds/masks-h1/confirm".into(),
            alice_token.clone(),
            json_type,
            body(json!({"payment": {"method": "card", "token": "tok_visa"}})),
            StatusCode::NOT_FOUND,
            "hold_not_found",
        ),
        (
            "confirm without card",
            Method::POST,
            format!("/v1/holds/{hold_id}/confirm"),
            alice_token.clone(),
            json_type,
            body(json!({"payment": {"method": "cash"}})),
            StatusCode::BAD_REQUEST,
            "unsupported_payment_method",
        ),
        (
            "confirm empty token",
            Method::POST,
            format!("/v1/holds/{hold_id}/confirm"),
            alice_token.clone(),
            json_type,
            body(json!({"payment": {"method": "card", "token": ""}})),
            StatusCode::BAD_REQUEST,
            "invalid_payment",
        ),
        (
            "orders bad limit",
            Method::GET,
            "/v1/sales/masks/orders?limit=-3".into(),
            Some(OPERATOR.into()),
            json_type,
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        ),
        (
            "customer token for a second",
            Method::POST,
            "/v1/customer-tokens".into(),
            Some(OPERATOR.into()),
            json_type,
            body(json!({"customer_id": "brief", "ttl_s": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_ttl",
        ),
        (
            "offline card limits below zero",
            Method::POST,
            "/v1/stores/Mapo/offline-card-limits".into(),
            Some(OPERATOR.into()),
            json_type,
            body(json!({"per_sale_max": -1, "outstanding_total_max": 0,
                        "outstanding_count_max": 0, "age_max_hours": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_card_limits",
        ),
        (
            "orders bad cursor",
            Method::GET,
            "/v1/sales/masks/orders?after=zzz".into(),
            Some(OPERATOR.into()),
            json_type,
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
        ),
        (
            "unknown route",
            Method::GET,
            "/v1/nothing".into(),
            None,
            json_type,
            vec![],
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "wrong method",
            Method::PUT,
            "/v1/sales/masks".into(),
            Some(OPERATOR.into()),
            json_type,
            vec![],
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (what, method, path, token, content_type, payload, status, code) in cases {
        let answer = if what == "bad idempotency key" {
            let request = app
                .client
                .request(method, format!("{}{path}", app.base))
                .bearer_auth(token.unwrap())
                .header("Content-Type", content_type)
                .header("Idempotency-Key", "has spaces in it")
                .body(payload);
            let response = request.send().await.unwrap();
            Answer {
                status: response.status(),
                body: response.json().await.unwrap(),
            }
        } else {
            app.raw(method, &path, token.as_deref(), content_type, payload)
                .await
        };
        assert_eq!(
            (answer.status, answer.code()),
            (status, code),
            "{what}: {}",
            answer.body
        );
        assert!(
            answer.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }

    let bad_sales = [
        (json!({"stock": -1}), "invalid_stock"),
        (json!({"stock": 100_000_001}), "invalid_stock"),
        (json!({"stock": 1i64 << 40}), "invalid_stock"),
        (json!({"per_customer_limit": 0}), "invalid_limit"),
        (json!({"per_customer_limit": -3}), "invalid_limit"),
        (json!({"price": -1}), "invalid_price"),
        (json!({"price_ceiling": -1}), "invalid_price_ceiling"),
        (
            json!({"price": 50_000, "price_ceiling": 40_000}),
            "price_above_ceiling",
        ),
        (json!({"channels": {"web": -1}}), "invalid_channel_shares"),
        (
            json!({"hold_ttl_s": 9_000_000_000_000_000_000i64}),
            "invalid_hold_ttl",
        ),
        (json!({"hold_ttl_s": 86_401}), "invalid_hold_ttl"),
        (json!({"pass_ttl_s": 5}), "invalid_pass_ttl"),
        (json!({"pass_ttl_s": -5}), "invalid_pass_ttl"),
        (json!({"admission_per_s": 0}), "invalid_admission_rate"),
        (
            json!({"admission_per_s": 5_000_000_000i64}),
            "invalid_admission_rate",
        ),
        (json!({"opens_at": "0001-01-01T00:00:00Z"}), "invalid_time"),
        (
            json!({"delivery": {"capacity_per_day": 1, "first_day": "+262142-12-31"}}),
            "invalid_delivery",
        ),
        (
            json!({"delivery": {"capacity_per_day": 1, "first_day": "1969-12-31"}}),
            "invalid_delivery",
        ),
        (
            json!({"delivery": {"capacity_per_day": -1, "first_day": "2026-01-02"}}),
            "invalid_delivery",
        ),
        (json!({"opens_at": "next tuesday"}), "invalid_time"),
        (
            json!({"closes_at": "2025-01-01T00:00:00Z"}),
            "invalid_window",
        ),
        (json!({"id": "has space"}), "invalid_sale_id"),
        (json!({"channels": {"web": 50}}), "invalid_channel_shares"),
        (json!({"queue": "stampede"}), "invalid_queue"),
        (json!({"per_customer_limitt": 1}), "invalid_body"),
        (json!({"hold_ttl_s": 0}), "invalid_hold_ttl"),
        (
            json!({"delivery": {"capacity_per_day": 0, "first_day": "2026-01-02"}}),
            "invalid_delivery",
        ),
        // Names end up on receipts, exports, logs and the dashboard.
        (json!({"sku": "KF94\u{0000}"}), "invalid_sale"),
        (json!({"sku": "KF94\n100"}), "invalid_sale"),
        (json!({"name": "masks\u{001b}[2J"}), "invalid_sale"),
        (json!({"name": "\u{00a0}\t"}), "invalid_sale"),
        (json!({"name": "m".repeat(201)}), "invalid_sale"),
    ];
    for (patch, code) in bad_sales {
        let refused = app
            .create_sale(sale_json("other", 10, 1, patch.clone()))
            .await;
        assert_eq!(refused.code(), code, "{patch}: {}", refused.body);
        assert!(refused.status.is_client_error());
    }
    assert_eq!(
        app.call(Method::GET, "/v1/sales/other", Some(OPERATOR), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.sale("masks").await,
        before,
        "bad input changed the ledger"
    );
    let long_name = json!({"sku": "KF94-100", "name": "마스크".repeat(66) + "만"});
    let created = app.create_sale(sale_json("named", 10, 1, long_name)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
}

/// A delivery calendar full to its last day refuses the next hold and keeps serving the sale;
/// it once panicked the sale's writer while formatting a day past the calendar.
#[apply(backends)]
async fn a_calendar_full_to_its_last_day_refuses_holds_and_the_sale_lives_on(backend: Backend) {
    let app = spawn_app(backend).await;
    let delivery = json!({"delivery": {"capacity_per_day": 1, "first_day": "9999-12-30"}});
    let created = app.create_sale(sale_json("far", 10, 1, delivery)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let mut days = Vec::new();
    for n in 0..3 {
        let shopper = app.token(&format!("c{n}"), None, None).await;
        let held = app.hold("far", &shopper, 1).await;
        days.push((
            held.status,
            held.body["deliver_by"].clone(),
            held.code().to_owned(),
        ));
    }
    assert_eq!(
        days,
        [
            (StatusCode::CREATED, json!("9999-12-30"), String::new()),
            (StatusCode::CREATED, json!("9999-12-31"), String::new()),
            (
                StatusCode::CONFLICT,
                serde_json::Value::Null,
                "no_delivery_day".to_owned()
            ),
        ]
    );
    let restocked = app
        .call(
            Method::POST,
            "/v1/sales/far/restock",
            Some(OPERATOR),
            Some(json!({"quantity": 1})),
        )
        .await;
    assert_eq!(restocked.status, StatusCode::OK, "{}", restocked.body);
    assert_eq!(stock(&restocked.body), (11, 9, 2, 0));
}

/// Messages are for people: what a caller sent is quoted, never echoed back whole.
#[apply(backends)]
async fn error_messages_do_not_echo_large_input(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_sale(sale_json("masks", 10, 1, json!({}))).await;
    let alice = app.token("alice", None, None).await;
    let long = "x".repeat(12_000);
    let answers = [
        app.hold_body("masks", &alice, json!({"quantity": 1, "channel": long}))
            .await,
        app.hold_body("masks", &alice, json!({"quantity": long}))
            .await,
        app.create_sale(sale_json("other", 1, 1, json!({"queue": long})))
            .await,
        app.create_sale(sale_json("other", 1, 1, json!({"opens_at": long})))
            .await,
    ];
    for answer in answers {
        assert!(answer.status.is_client_error(), "{}", answer.body);
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(
            message.chars().count() <= 301,
            "{} characters",
            message.len()
        );
    }
}
