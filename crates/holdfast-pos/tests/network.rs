//! Real network faults between a till and the server, through a fault-injecting TCP proxy on
//! loopback: requests that never arrive, answers that never return.

mod common;

use common::{Fault, FaultProxy, Server, masks_till};
use holdfast_pos::counter::{self, Tender};
use holdfast_pos::journal::Item;
use holdfast_pos::sync::sync_once;
use holdfast_pos::uplink::Uplink;

#[tokio::test]
async fn lost_requests_and_lost_answers_neither_lose_nor_double_a_sale() {
    let server_dir = tempfile::tempdir().unwrap();
    let till_dir = tempfile::tempdir().unwrap();
    let server = Server::start(server_dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let mut till = masks_till(&server.base, till_dir.path(), "till-3", "Mapo", 50, 10).await;
    till.journal
        .put_item(&Item {
            sku: "TEA".into(),
            name: "Tea".into(),
            price: 3_000,
            sale_id: None,
        })
        .unwrap();
    for n in 0..20 {
        let sku = if n % 2 == 0 { "KF94" } else { "TEA" };
        let sold = counter::sell(
            &mut till.journal,
            &till.key,
            &common::basket(sku, 1),
            Tender::Cash,
            common::now_millis() + n,
        );
        assert!(sold.unwrap().is_ok());
    }
    let proxy = FaultProxy::start(server.address).await;
    let secret = hex::decode(
        till.journal
            .setting::<serde_json::Value>("registration")
            .unwrap()
            .unwrap()["secret"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let uplink = Uplink::new(vec![proxy.base.clone()], "till-3".into(), secret);
    let sold_on_server = || async {
        common::operator(&server.base, reqwest::Method::GET, "/v1/sales/masks", None).await["stock"]
            ["sold"]
            .as_u64()
            .unwrap()
    };

    proxy.set(Fault::DropRequests);
    assert!(sync_once(&mut till.journal, &uplink).await.is_err());
    assert_eq!(
        (sold_on_server().await, till.journal.acked().unwrap()),
        (0, 0),
        "nothing arrived"
    );

    proxy.set(Fault::DropAnswers);
    assert!(sync_once(&mut till.journal, &uplink).await.is_err());
    assert_eq!(
        sold_on_server().await,
        10,
        "the server applied the batch it never answered"
    );
    assert_eq!(
        till.journal.acked().unwrap(),
        0,
        "the till does not know it was applied"
    );

    proxy.set(Fault::Pass);
    let report = sync_once(&mut till.journal, &uplink).await.unwrap();
    assert_eq!(report.acked_through, 20);
    assert_eq!(sold_on_server().await, 10, "resent, applied once");
    server.stop().await;
}

#[tokio::test]
async fn health_checks_move_the_till_to_the_backup_and_back_to_the_shop_line() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = Server::start(server_dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let shop_line = FaultProxy::start(server.address).await;
    let mobile_backup = FaultProxy::start(server.address).await;
    let uplink = Uplink::new(
        vec![shop_line.base.clone(), mobile_backup.base.clone()],
        "till-x".into(),
        vec![1; 32],
    );
    assert!(uplink.check_health().await);
    assert_eq!(uplink.preferred(), 0, "the shop's line while it works");
    shop_line.set(Fault::DropRequests);
    assert!(uplink.check_health().await);
    assert_eq!(
        uplink.preferred(),
        1,
        "the mobile backup while the line is down"
    );
    shop_line.set(Fault::Pass);
    assert!(uplink.check_health().await);
    assert_eq!(
        uplink.preferred(),
        0,
        "back to the line once it answers again"
    );
    mobile_backup.set(Fault::DropRequests);
    shop_line.set(Fault::DropRequests);
    assert!(
        !uplink.check_health().await,
        "nothing healthy: the till keeps selling offline"
    );
    server.stop().await;
}

/// A shop's clock an hour off from the server's: the till learns the server's time from its
/// answers and signs with that, so its requests are not refused as stale.
#[tokio::test]
async fn a_till_whose_clock_is_an_hour_off_still_syncs() {
    let server_dir = tempfile::tempdir().unwrap();
    let till_dir = tempfile::tempdir().unwrap();
    let local_now = chrono::Utc::now().timestamp_millis();
    let mut config = holdfast_server::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        server_dir.path().to_path_buf(),
        Some(common::OPERATOR.into()),
    );
    config.clock = std::sync::Arc::new(HourAhead);
    let server = Server::start_with(config).await;
    let mut till = masks_till(&server.base, till_dir.path(), "till-9", "Mapo", 5, 2).await;
    let sold = counter::sell(
        &mut till.journal,
        &till.key,
        &common::basket("KF94", 1),
        Tender::Cash,
        local_now + 3_600_000,
    );
    assert!(sold.unwrap().is_ok());
    let report = sync_once(&mut till.journal, &till.uplink).await.unwrap();
    assert_eq!(report.acked_through, 1);
    let sale = common::operator(&server.base, reqwest::Method::GET, "/v1/sales/masks", None).await;
    assert_eq!(sale["stock"]["sold"], 1);
}

/// The server's clock in that test: the real time plus an hour.
struct HourAhead;

impl holdfast_server::clock::Clock for HourAhead {
    fn now(&self) -> holdfast_core::Timestamp {
        holdfast_core::Timestamp(chrono::Utc::now().timestamp_millis() + 3_600_000)
    }
}
