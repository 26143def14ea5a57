//! The counter page, with no server anywhere: selling must not need the network.

use holdfast_pos::journal::{Item, Journal};
use holdfast_pos::till::Registration;
use holdfast_pos::web::{Counter, router};

async fn counter_page() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    journal
        .put_item(&Item {
            sku: "TEA".into(),
            name: "Barley <tea>".into(),
            price: 3_000,
            sale_id: None,
        })
        .unwrap();
    let registration = Registration {
        terminal_id: "till-1".into(),
        store: "Mapo cafe".into(),
        servers: vec!["http://127.0.0.1:9".into()],
        secret: hex::encode([7u8; 32]),
    };
    journal.set_setting("registration", &registration).unwrap();
    drop(journal);
    let counter = Counter::open(dir.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(counter)).await.unwrap() });
    (base, dir)
}

fn form(client: &reqwest::Client, base: &str, body: &str) -> reqwest::RequestBuilder {
    client
        .post(format!("{base}/"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned())
}

#[tokio::test]
async fn the_counter_page_sells_and_prints_a_receipt_offline() {
    let (base, _dir) = counter_page().await;
    let client = reqwest::Client::new();
    let page = client
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Barley &lt;tea&gt; · 3000"),
        "the catalogue is listed, escaped: {page}"
    );
    assert!(page.contains("<span id=\"waiting\">0</span> sale(s) waiting to sync"));

    let sold = form(
        &client,
        &base,
        "sku=TEA&quantity=2&tender=pay-later&phone=010-1234-5678",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(sold.status(), 200);
    let receipt = sold.text().await.unwrap();
    assert!(
        receipt.contains("TOTAL") && receipt.contains("6000"),
        "{receipt}"
    );
    assert!(
        receipt.contains("to pay: http://127.0.0.1:9/pay/till-1/R-"),
        "{receipt}"
    );

    let refused = form(&client, &base, "sku=TEA&quantity=1&tender=pay-later&phone=")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    assert!(refused.text().await.unwrap().contains("phone number"));
    let unknown = form(&client, &base, "sku=COFFEE&quantity=1&tender=cash")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 422);

    let status: serde_json::Value = client
        .get(format!("{base}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["entries"], 1, "refusals leave no trace");
    assert_eq!(status["waiting_to_sync"], 1);
    assert_eq!(
        (
            status["receivables_open"].as_i64(),
            status["receivables_owed"].as_i64()
        ),
        (Some(1), Some(6000))
    );
}

/// Another web site open in the cashier's browser can neither act through the page (a form
/// posting to it) nor read it under a name of its own that resolves to the till.
#[tokio::test]
async fn only_the_page_itself_can_act_through_it() {
    let (base, _dir) = counter_page().await;
    let client = reqwest::Client::new();
    let sale = "sku=TEA&quantity=1&tender=cash";
    let forged = [
        ("origin", "http://shop-offers.example"),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ];
    for (header, value) in forged {
        let refused = form(&client, &base, sale)
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 403, "{header}: {value}");
    }
    let rebound = client
        .get(format!("{base}/status"))
        .header("host", "till.attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);

    let entries = |client: reqwest::Client| {
        let url = format!("{base}/status");
        async move {
            let status: serde_json::Value =
                client.get(url).send().await.unwrap().json().await.unwrap();
            status["entries"].as_i64().unwrap()
        }
    };
    assert_eq!(entries(client.clone()).await, 0, "nothing forged was sold");
    let own = form(&client, &base, sale)
        .header("origin", base.as_str())
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200, "the page's own form sells");
    let by_hand = form(&client, &base, sale).send().await.unwrap();
    assert_eq!(by_hand.status(), 200, "so does curl, which is no browser");
    assert_eq!(entries(client).await, 2);
}
