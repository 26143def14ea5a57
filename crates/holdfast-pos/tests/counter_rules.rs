//! The rules a web sale keeps, kept at the counter too — and what a shop expects of its till —
//! against a real server on loopback.

mod common;

use common::{Server, basket, masks_till, now_millis, operator};
use holdfast_pos::card::{self, CardOutcome};
use holdfast_pos::counter::{self, Basket, Line, Refusal, Tender};
use holdfast_pos::journal::AttemptState;
use holdfast_pos::sync::{forward_cards, set_allotment, sync_once};
use reqwest::Method;
use serde_json::json;

async fn server() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    (server, dir)
}

/// On a one-per-person sale the till sold two masks in one line and twice to one phone; and
/// the same phone buying at two tills went unnoticed.
#[tokio::test]
async fn the_per_person_limit_holds_at_the_counter_and_across_tills() {
    let (server, _server_dir) = server().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut till_a = masks_till(&server.base, dir_a.path(), "till-a", "Mapo", 10, 4).await;
    let now = now_millis();
    let two = counter::sell(
        &mut till_a.journal,
        &till_a.key,
        &basket("KF94", 2),
        Tender::Cash,
        now,
    );
    assert!(
        matches!(
            two.unwrap(),
            Err(Refusal::LimitExceeded {
                limit: 1,
                would_have: 2,
                ..
            })
        ),
        "two in one line"
    );
    let pay_later = || Tender::PayLater {
        phone: "010-5555-0001".into(),
    };
    let first = counter::sell(
        &mut till_a.journal,
        &till_a.key,
        &basket("KF94", 1),
        pay_later(),
        now,
    );
    assert!(first.unwrap().is_ok());
    let again = counter::sell(
        &mut till_a.journal,
        &till_a.key,
        &basket("KF94", 1),
        pay_later(),
        now,
    );
    assert!(
        matches!(again.unwrap(), Err(Refusal::LimitExceeded { .. })),
        "the same phone twice at one till"
    );
    let same_phone_written_otherwise = Basket {
        lines: vec![Line {
            sku: "KF94".into(),
            quantity: 1,
        }],
        buyer_phone: Some("+82 10 5555 0001".into()),
    };
    let cash = counter::sell(
        &mut till_a.journal,
        &till_a.key,
        &same_phone_written_otherwise,
        Tender::Cash,
        now,
    );
    assert!(matches!(cash.unwrap(), Err(Refusal::LimitExceeded { .. })));
    sync_once(&mut till_a.journal, &till_a.uplink)
        .await
        .unwrap();

    // Another till cannot see till A's sales: it sells, and the server flags it.
    let mut till_b = common::second_till(&server.base, dir_b.path(), "till-b", "Mapo", 4).await;
    let sold_b = counter::sell(
        &mut till_b.journal,
        &till_b.key,
        &basket("KF94", 1),
        pay_later(),
        now,
    );
    assert!(sold_b.unwrap().is_ok());
    let report = sync_once(&mut till_b.journal, &till_b.uplink)
        .await
        .unwrap();
    assert_eq!((report.flagged, report.quarantined), (vec![1], vec![]));
    let sale = operator(&server.base, Method::GET, "/v1/sales/masks", None).await;
    assert_eq!(
        sale["stock"]["sold"], 2,
        "recorded: the units left the counter"
    );
    let flagged = operator(
        &server.base,
        Method::GET,
        "/v1/terminals/till-b/quarantine",
        None,
    )
    .await;
    assert!(
        flagged["flagged"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("limit of 1"),
        "{flagged}"
    );
    // And the person cannot then buy online with that phone.
    let token = operator(
        &server.base,
        Method::POST,
        "/v1/customer-tokens",
        Some(json!({"customer_id": "web-buyer", "phone": "010-5555-0001"})),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let held: serde_json::Value = common::client()
        .post(format!("{}/v1/sales/masks/holds", server.base))
        .bearer_auth(token)
        .json(&json!({"quantity": 1, "channel": "web"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(held["error"]["code"], "limit_exceeded", "{held}");
    server.stop().await;
}

/// A till took units an hour before the opening and sold three at 1,000 against 39,900.
#[tokio::test]
async fn a_till_sells_only_inside_the_window_and_at_the_sales_price() {
    let (server, _server_dir) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let opens_in_an_hour = chrono::Utc::now() + chrono::Duration::hours(1);
    let later = json!({"id": "later", "sku": "KF94", "name": "Masks", "price": 39900, "stock": 10,
        "per_customer_limit": 5, "opens_at": opens_in_an_hour.to_rfc3339()});
    operator(&server.base, Method::POST, "/v1/sales", Some(later)).await;
    let till = masks_till(&server.base, dir.path(), "till-1", "Mapo", 10, 3).await;
    let early = set_allotment(&till.uplink, "later", 3).await;
    assert!(
        matches!(&early, Err(holdfast_pos::sync::SyncError::Refused(403, answer)) if answer["error"]["code"] == "not_open"),
        "{early:?}"
    );

    // A till that knows the terms refuses, by the server's time, to sell before the opening.
    let mut till = till;
    let before = counter::sell(
        &mut till.journal,
        &till.key,
        &basket("KF94", 1),
        Tender::Cash,
        1_500_000_000_000,
    );
    assert!(matches!(before.unwrap(), Err(Refusal::NotOnSale { .. })));

    // A till that sells anyway (its journal edited, or a till that never learned the terms)
    // is quarantined by the server with the reason, and the ledger is untouched.
    till.journal.set_allotment("masks", 3, None).unwrap();
    let cheap = holdfast_pos::journal::Item {
        sku: "CHEAP".into(),
        name: "Masks at a friend's price".into(),
        price: 1_000,
        sale_id: Some("masks".into()),
    };
    till.journal.put_item(&cheap).unwrap();
    let at_1000 = counter::sell(
        &mut till.journal,
        &till.key,
        &basket("CHEAP", 1),
        Tender::Cash,
        now_millis(),
    );
    assert!(at_1000.unwrap().is_ok());
    let report = sync_once(&mut till.journal, &till.uplink).await.unwrap();
    assert_eq!(report.quarantined, vec![1]);
    let listed = operator(
        &server.base,
        Method::GET,
        "/v1/terminals/till-1/quarantine",
        None,
    )
    .await;
    let reason = listed["quarantine"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("1000") && reason.contains("39900"),
        "{reason}"
    );
    let sale = operator(&server.base, Method::GET, "/v1/sales/masks", None).await;
    assert_eq!(sale["stock"]["sold"], 0);
    server.stop().await;
}

/// An online card whose answer was lost: trying again resumes the same attempt and charges
/// once; an attempt nobody came back for is settled by the next sync.
#[tokio::test]
async fn an_online_card_whose_answer_was_lost_is_resumed_and_charged_once() {
    let (server, _server_dir) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut till = masks_till(&server.base, dir.path(), "till-1", "Mapo", 10, 3).await;
    let proxy = common::FaultProxy::start(server.address).await;
    let secret = hex::decode(till.registration_secret()).unwrap();
    let uplink =
        holdfast_pos::uplink::Uplink::new(vec![proxy.base.clone()], "till-1".into(), secret);
    proxy.set(common::Fault::DropAnswers);
    let lost = card::pay(
        &mut till.journal,
        &till.key,
        &uplink,
        &basket("KF94", 1),
        "tok_visa",
        now_millis(),
    )
    .await
    .unwrap();
    let CardOutcome::AnswerLost { reference } = lost else {
        panic!("{lost:?}")
    };
    assert_eq!(card::unanswered(&till.journal).unwrap(), vec![reference]);
    assert_eq!(till.journal.entry_count().unwrap(), 0, "not sold yet");
    proxy.set(common::Fault::Pass);
    let resumed = card::pay(
        &mut till.journal,
        &till.key,
        &uplink,
        &basket("KF94", 1),
        "tok_visa",
        now_millis(),
    )
    .await
    .unwrap();
    assert!(matches!(resumed, CardOutcome::Sold(_)), "{resumed:?}");
    assert!(card::unanswered(&till.journal).unwrap().is_empty());

    // Another lost answer, and this customer pays cash instead: the next sync finds the card
    // was charged with no sale behind it, and lists the refund due.
    proxy.set(common::Fault::DropAnswers);
    let gone = card::pay(
        &mut till.journal,
        &till.key,
        &uplink,
        &basket("KF94", 1),
        "tok_visa_2",
        now_millis(),
    )
    .await
    .unwrap();
    assert!(matches!(gone, CardOutcome::AnswerLost { .. }));
    proxy.set(common::Fault::Pass);
    let much_later = now_millis() + card::UNANSWERED_ATTEMPT_GRACE_MILLIS + 1;
    let settled = card::settle_unanswered(&mut till.journal, &till.key, &uplink, much_later)
        .await
        .unwrap();
    assert_eq!(settled, 1);
    assert_eq!(
        till.journal
            .card_attempts(AttemptState::RefundDue)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(till.journal.waiting().unwrap().refunds_due, 1);
    server.stop().await;
}

/// Two syncs forwarding the same declined stored card at once once made two receivables.
#[tokio::test]
async fn a_stored_card_is_forwarded_once_however_many_syncs_race() {
    let (server, _server_dir) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut till = masks_till(&server.base, dir.path(), "till-1", "Mapo", 10, 3).await;
    let stored = Tender::CardOffline {
        card_token: "tok_declined".into(),
        phone: "010-9999-0000".into(),
    };
    let sold = counter::sell(
        &mut till.journal,
        &till.key,
        &basket("KF94", 1),
        stored,
        now_millis(),
    );
    assert!(sold.unwrap().is_ok());
    let mut racers = Vec::new();
    for _ in 0..4 {
        let journal = holdfast_pos::journal::Journal::open(dir.path()).unwrap();
        let key = till.key;
        let uplink = till.uplink_clone();
        racers.push(tokio::spawn(async move {
            let mut journal = journal;
            forward_cards(&mut journal, &key, &uplink, now_millis())
                .await
                .unwrap()
        }));
    }
    let mut declined = 0;
    for racer in racers {
        declined += racer.await.unwrap().declined;
    }
    assert_eq!(declined, 1, "recorded by one forwarder only");
    assert_eq!(
        till.journal.open_receivables().unwrap().len(),
        1,
        "one debt, one pay link"
    );
    server.stop().await;
}

/// The shop as the owner expects it: a catalogue set once on the server, bank transfers
/// confirmed from the till, the till seen from the server, units given back when the web runs
/// dry.
#[tokio::test]
async fn the_catalogue_transfers_the_owners_view_and_give_back() {
    let (server, _server_dir) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut till = masks_till(&server.base, dir.path(), "till-1", "Mapo", 5, 4).await;
    common::set_mapo_catalogue(&server.base, 1).await;
    sync_once(&mut till.journal, &till.uplink).await.unwrap();
    let kf94 = till.journal.item("KF94").unwrap().unwrap();
    assert_eq!(kf94.price, 39_900, "a scarce item's price is its sale's");
    assert_eq!(till.journal.item("TEA").unwrap().unwrap().price, 3_000);

    let transfer = counter::sell(
        &mut till.journal,
        &till.key,
        &basket("TEA", 2),
        Tender::BankTransfer,
        now_millis(),
    )
    .unwrap()
    .unwrap();
    let printed = holdfast_pos::receipt::receipt(&till.header(), &transfer);
    assert!(
        printed.contains("Shinhan 110-123-456789") && printed.contains("123-45-67890"),
        "{printed}"
    );
    sync_once(&mut till.journal, &till.uplink).await.unwrap();
    let view = operator(&server.base, Method::GET, "/v1/terminals/till-1", None).await;
    assert_eq!(view["transfers_pending"][0]["amount"], 6_000, "{view}");
    assert_eq!(view["takings"], 6_000);
    assert!(
        till.journal
            .confirm_transfer(transfer.seq, now_millis())
            .unwrap()
    );
    sync_once(&mut till.journal, &till.uplink).await.unwrap();
    let view = operator(&server.base, Method::GET, "/v1/terminals/till-1", None).await;
    assert_eq!(view["transfers_pending"], json!([]), "{view}");
    assert_eq!(view["waiting_at_till"]["allotments"], json!([["masks", 4]]));

    // The web sells the last unit of the pool; the online till gives back all but one.
    let token = operator(
        &server.base,
        Method::POST,
        "/v1/customer-tokens",
        Some(json!({"customer_id": "web"})),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let held = common::client()
        .post(format!("{}/v1/sales/masks/holds", server.base))
        .bearer_auth(&token)
        .json(&json!({"quantity": 1, "channel": "web"}))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 201);
    let report = sync_once(&mut till.journal, &till.uplink).await.unwrap();
    assert_eq!(report.given_back, 3);
    assert_eq!(
        till.journal.allotment("masks").unwrap().unwrap().remaining,
        1
    );
    let sale = operator(&server.base, Method::GET, "/v1/sales/masks", None).await;
    assert_eq!(
        (
            sale["stock"]["available"].as_u64(),
            sale["stock"]["allotted"].as_u64()
        ),
        (Some(3), Some(1))
    );
    server.stop().await;
}
