//! A till that lost its data directory is registered again by the operator: a new secret, the
//! server's history kept, and the new journal continuing the chain where the server's record
//! ends.

mod common;

use std::process::Command;

use common::{OPERATOR, Server, basket, masks_till, now_millis, operator};
use holdfast_pos::counter::{self, Tender};
use holdfast_pos::sync::sync_once;
use holdfast_pos::till::Till;

const AGENT: &str = env!("CARGO_BIN_EXE_holdfast-pos");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_till_that_lost_its_data_is_registered_again_and_carries_on() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = Server::start(server_dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let lost = tempfile::tempdir().unwrap();
    let mut till = masks_till(&server.base, lost.path(), "till-7", "Mapo", 10, 4).await;
    for _ in 0..2 {
        let sold = counter::sell(
            &mut till.journal,
            &till.key,
            &basket("KF94", 1),
            Tender::Cash,
            now_millis(),
        );
        assert!(sold.unwrap().is_ok());
    }
    sync_once(&mut till.journal, &till.uplink).await.unwrap();
    let old_uplink = till.uplink_clone();
    drop(till);
    drop(lost); // The disk is gone.

    let fresh = tempfile::tempdir().unwrap();
    let init = Command::new(AGENT)
        .arg("--data")
        .arg(fresh.path())
        .args([
            "init",
            "--again",
            "--terminal-id",
            "till-7",
            "--store",
            "Mapo",
            "--server",
            &server.base,
        ])
        .env("HOLDFAST_OPERATOR_TOKEN", OPERATOR)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut till = Till::open(fresh.path()).unwrap();
    assert_eq!(
        till.journal.acked().unwrap(),
        2,
        "continues after the server's record"
    );
    // The old secret no longer opens the door.
    let refused = sync_once(
        &mut holdfast_pos::journal::Journal::open(fresh.path()).unwrap(),
        &old_uplink,
    )
    .await;
    assert!(
        matches!(refused, Err(holdfast_pos::sync::SyncError::Refused(401, _))),
        "{refused:?}"
    );

    let allotment = holdfast_pos::sync::set_allotment(&till.uplink, "masks", 2)
        .await
        .unwrap();
    till.journal
        .set_allotment("masks", allotment.granted, Some(&allotment.terms))
        .unwrap();
    till.journal
        .put_item(&holdfast_pos::journal::Item {
            sku: "KF94".into(),
            name: "KF94 masks".into(),
            price: 39_900,
            sale_id: Some("masks".into()),
        })
        .unwrap();
    let now = till.now_millis();
    let sold = counter::sell(
        &mut till.journal,
        &till.key,
        &basket("KF94", 1),
        Tender::Cash,
        now,
    )
    .unwrap();
    assert_eq!(sold.unwrap().seq, 3);
    let report = sync_once(&mut till.journal, &till.uplink).await.unwrap();
    assert_eq!((report.acked_through, report.stopped), (3, None));
    let view = operator(
        &server.base,
        reqwest::Method::GET,
        "/v1/terminals/till-7",
        None,
    )
    .await;
    assert_eq!(
        view["units_sold"]["masks"], 3,
        "the history and the new sale, once each: {view}"
    );
    server.stop().await;
}
