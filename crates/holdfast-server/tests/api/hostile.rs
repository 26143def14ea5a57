//! Tried as an attacker would: resellers with look-alike identities, garbage, forgeries and
//! replays. Each is answered with its 4xx and code, nothing panics, the ledger is unchanged.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

/// A reseller opens accounts whose phone or address only *looks* different. Each shares the
/// first account's limit, on the ledger and in the waiting room.
#[tokio::test]
async fn look_alike_phones_and_addresses_are_one_person() {
    let app = spawn_app().await;
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

#[tokio::test]
async fn look_alike_phones_get_one_place_in_the_waiting_room() {
    let app = spawn_app().await;
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
#[tokio::test]
async fn a_phone_that_is_not_a_phone_is_refused() {
    let app = spawn_app().await;
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
