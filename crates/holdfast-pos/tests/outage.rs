//! A till keeps selling through an outage and loses nothing when it ends: a real server on
//! loopback, really stopped (connections refused) and started again on the same data.

mod common;

use std::sync::Arc;

use common::{Server, basket};
use holdfast_core::terminal::wire::{OfflineCardLimits, WireEntry};
use holdfast_pos::counter::{self, Refusal, Tender};
use holdfast_pos::journal::{Item, Journal};
use holdfast_pos::sync::{ForwardReport, SyncError, forward_cards, set_allotment, sync_once};
use holdfast_pos::uplink::{Uplink, UplinkError};
use serde_json::{Value, json};

/// The stored card bytes of entry `seq`, read straight from the file: what a thief would see.
fn sealed_on_disk(dir: &std::path::Path, seq: u64) -> Vec<u8> {
    let connection = rusqlite::Connection::open(dir.join("journal.db")).unwrap();
    connection
        .query_row(
            "SELECT sealed FROM offline_card WHERE seq = ?1",
            [seq as i64],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test]
async fn a_till_sells_through_an_outage_and_every_sale_arrives_exactly_once() {
    let server_dir = tempfile::tempdir().unwrap();
    let till_dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let server = Server::start(server_dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let (address, base) = (server.address, server.base.clone());
    let sale = json!({"id": "masks", "sku": "KF94", "name": "KF94 masks", "price": 39900, "stock": 10,
        "per_customer_limit": 1, "opens_at": "2020-01-01T00:00:00Z"});
    common::operator(&base, reqwest::Method::POST, "/v1/sales", Some(sale)).await;
    let registered = common::operator(
        &base,
        reqwest::Method::POST,
        "/v1/terminals",
        Some(json!({"terminal_id": "till-1", "store": "Mapo cafe"})),
    )
    .await;
    let secret = hex::decode(registered["secret"].as_str().unwrap()).unwrap();

    // The shop's line is dead from the start; the mobile backup is the real server.
    let uplink = Arc::new(Uplink::new(
        vec!["http://127.0.0.1:9".into(), base.clone()],
        "till-1".into(),
        secret,
    ));
    let mut journal = Journal::open(till_dir.path()).unwrap();
    let key = counter::card_key(till_dir.path()).unwrap();
    // The operator sets the store's offline-card limits; the till takes them on its next sync.
    let limits = json!({"per_sale_max": 50_000, "outstanding_total_max": 1_000_000, "outstanding_count_max": 2, "age_max_hours": 24});
    common::operator(
        &base,
        reqwest::Method::POST,
        "/v1/stores/Mapo%20cafe/offline-card-limits",
        Some(limits),
    )
    .await;
    journal
        .put_item(&Item {
            sku: "KF94".into(),
            name: "KF94 masks".into(),
            price: 39_900,
            sale_id: Some("masks".into()),
        })
        .unwrap();
    journal
        .put_item(&Item {
            sku: "AMERICANO".into(),
            name: "Americano".into(),
            price: 4_500,
            sale_id: None,
        })
        .unwrap();
    let granted = set_allotment(&uplink, "masks", 3).await.unwrap();
    assert_eq!(granted.granted, 3);
    journal
        .set_allotment("masks", 3, Some(&granted.terms))
        .unwrap();
    sync_once(&mut journal, &uplink).await.unwrap();
    let limits: OfflineCardLimits = journal.setting("offline_card_limits").unwrap().unwrap();
    assert_eq!(
        (limits.per_sale_max, limits.outstanding_count_max),
        (50_000, 2)
    );

    // The outage: the server is gone, connections are refused.
    server.stop().await;
    let now = common::now_millis();
    let sells = vec![
        (basket("KF94", 1), Tender::Cash),
        (
            basket("AMERICANO", 1),
            Tender::PayLater {
                phone: "010-1234-5678".into(),
            },
        ),
        (basket("AMERICANO", 2), Tender::BankTransfer),
        (
            basket("KF94", 1),
            Tender::CardOffline {
                card_token: "tok_visa_4242".into(),
                phone: "010-2222-3333".into(),
            },
        ),
        (
            basket("AMERICANO", 1),
            Tender::CardOffline {
                card_token: "tok_declined".into(),
                phone: "010-4444-5555".into(),
            },
        ),
        (basket("KF94", 1), Tender::Cash),
    ];
    // Lunchtime, 11:20 to 12:00: a sale every few minutes through a forty-minute outage.
    for (n, (basket, tender)) in sells.into_iter().enumerate() {
        let at = now + n as i64 * 6 * 60_000;
        let sold = counter::sell(&mut journal, &key, &basket, tender, at).unwrap();
        assert!(sold.is_ok(), "{sold:?}");
    }
    let fourth_mask =
        counter::sell(&mut journal, &key, &basket("KF94", 1), Tender::Cash, now).unwrap();
    assert_eq!(
        fourth_mask.unwrap_err(),
        Refusal::AllotmentExhausted {
            sku: "KF94".into(),
            left: 0
        }
    );
    let big_card = counter::sell(
        &mut journal,
        &key,
        &basket("AMERICANO", 20),
        Tender::CardOffline {
            card_token: "t".into(),
            phone: "010-7777-8888".into(),
        },
        now,
    )
    .unwrap();
    assert!(matches!(big_card, Err(Refusal::OfflineCardLimit(_))));
    let third_card = counter::sell(
        &mut journal,
        &key,
        &basket("AMERICANO", 1),
        Tender::CardOffline {
            card_token: "t".into(),
            phone: "010-7777-8888".into(),
        },
        now,
    )
    .unwrap();
    assert!(
        matches!(third_card, Err(Refusal::OfflineCardLimit(ref why)) if why.contains("already waiting")),
        "{third_card:?}"
    );
    assert!(matches!(
        sync_once(&mut journal, &uplink).await,
        Err(SyncError::Uplink(UplinkError::Unreachable(_)))
    ));
    assert_eq!(
        journal.head().unwrap().0,
        6,
        "six sales journaled, refusals left no trace"
    );

    // Stored cards are sealed: not readable on disk, and any change breaks the seal.
    let sealed = sealed_on_disk(till_dir.path(), 4);
    assert!(!sealed.windows(12).any(|w| w == b"tok_visa_424"));
    assert_eq!(
        counter::open(&key, &sealed).as_deref(),
        Some(&b"tok_visa_4242"[..])
    );
    let mut tampered = sealed.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert_eq!(counter::open(&key, &tampered), None);
    let journal_text = journal.bodies().unwrap().join("\n");
    assert!(
        !journal_text.contains("tok_visa"),
        "card data never goes into the journal"
    );

    // The network returns (the same server data, the same address).
    let server = Server::start(server_dir.path(), address).await;
    // An upload whose answer is lost: the server applied entries 1-2, the till never heard.
    let first_two = journal.after(0, 2).unwrap();
    let lost: Vec<WireEntry> = first_two.iter().map(WireEntry::of).collect();
    uplink
        .post("/v1/terminals/till-1/sync", &json!({"entries": lost}))
        .await
        .unwrap();
    let report = sync_once(&mut journal, &uplink).await.unwrap();
    assert_eq!(
        (
            report.acked_through,
            report.quarantined.clone(),
            report.stopped.clone()
        ),
        (6, vec![], None)
    );
    assert_eq!(
        sync_once(&mut journal, &uplink).await.unwrap().uploaded,
        0,
        "nothing twice"
    );

    let sale = common::operator(&base, reqwest::Method::GET, "/v1/sales/masks", None).await;
    assert_eq!(sale["stock"]["sold"], 3, "three allotted masks, each once");
    assert_eq!(sale["stock"]["allotted"], 0);
    assert_eq!(sale["stock"]["total"], 10);
    // Stored cards go to the card network; the declined one becomes a receivable with its phone.
    let forwarded = forward_cards(&mut journal, &key, &uplink, now)
        .await
        .unwrap();
    assert_eq!(
        (forwarded.approved, forwarded.declined, forwarded.waiting),
        (1, 1, 0)
    );
    assert_eq!(
        forward_cards(&mut journal, &key, &uplink, now)
            .await
            .unwrap(),
        ForwardReport::default(),
        "nothing charged twice"
    );
    assert!(
        sealed_on_disk(till_dir.path(), 4).is_empty(),
        "settled cards are erased"
    );
    let receivables: Vec<(String, u64)> = journal
        .open_receivables()
        .unwrap()
        .into_iter()
        .map(|r| (r.phone, r.amount))
        .collect();
    assert_eq!(
        receivables,
        [
            ("010-1234-5678".to_string(), 4_500),
            ("010-4444-5555".to_string(), 4_500)
        ],
        "pay-later and the late-declined card are receivables, not losses"
    );
    // Both customers pay by the link on their receipt; the till hears of it on its next sync.
    assert_eq!(
        sync_once(&mut journal, &uplink)
            .await
            .unwrap()
            .acked_through,
        7,
        "the late decline was journaled as a receivable"
    );
    let mut ids: Vec<(u64, String)> = journal
        .open_receivables()
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.id))
        .collect();
    ids.sort();
    let ids: Vec<String> = ids.into_iter().map(|(_, id)| id).collect();
    for id in &ids {
        let page = client
            .get(format!("{base}/pay/till-1/{id}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains("Amount due: <b>4500</b>"), "{page}");
        let paid: Value = client
            .post(format!("{base}/pay/till-1/{id}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("card_token=tok_visa")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(paid["status"], "paid", "{paid}");
    }
    let again: Value = client
        .post(format!("{base}/pay/till-1/{}", ids[0]))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("card_token=tok_visa")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["status"], "paid", "paying twice is harmless");
    let missing = client
        .get(format!("{base}/pay/till-1/R-nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    sync_once(&mut journal, &uplink).await.unwrap();
    assert_eq!(
        journal.open_receivables().unwrap(),
        [],
        "both receivables closed at the till"
    );

    // Online card at the counter, now that the network is back: authorised before journaling.
    let paid = holdfast_pos::card::pay(
        &mut journal,
        &key,
        &uplink,
        &basket("AMERICANO", 1),
        "tok_visa",
        common::now_millis(),
    )
    .await
    .unwrap();
    assert!(
        matches!(paid, holdfast_pos::card::CardOutcome::Sold(_)),
        "{paid:?}"
    );
    let declined = holdfast_pos::card::pay(
        &mut journal,
        &key,
        &uplink,
        &basket("AMERICANO", 1),
        "tok_declined",
        common::now_millis(),
    )
    .await
    .unwrap();
    assert!(matches!(
        declined,
        holdfast_pos::card::CardOutcome::Declined
    ));
    server.stop().await;
}
