//! The real `holdfast-pos sync` process interrupted mid-upload — SIGKILLed, or its server
//! stopped — then run to the end: the server has every entry exactly once.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{OPERATOR, Server, Till, client, masks_till};
use holdfast_pos::counter::{self, Tender};
use holdfast_pos::journal::{Item, Journal};
use holdfast_testkit::KilledOnDrop;
use rand::Rng;
use serde_json::{Value, json};

const AGENT: &str = env!("CARGO_BIN_EXE_holdfast-pos");

/// Journals `sales` cash sales, every `every`-th one a mask from the allotment, tea otherwise.
fn sell_many(till: &mut Till, sales: u64, every: u64) {
    let tea = Item {
        sku: "TEA".into(),
        name: "Tea".into(),
        price: 3_000,
        sale_id: None,
    };
    till.journal.put_item(&tea).unwrap();
    for n in 0..sales {
        let sku = if n % every == 0 { "KF94" } else { "TEA" };
        let sold = counter::sell(
            &mut till.journal,
            &till.key,
            &common::basket(sku, 1),
            Tender::Cash,
            common::now_millis() + n as i64,
        );
        assert!(sold.unwrap().is_ok());
    }
}

fn acked(dir: &std::path::Path) -> u64 {
    Journal::open(dir).unwrap().acked().unwrap()
}

/// Waits (by watching the journal, not the clock) until `threshold` entries are acknowledged
/// or the process is gone.
async fn wait_for_ack(dir: &std::path::Path, threshold: u64, child: &mut std::process::Child) {
    while acked(dir) < threshold && child.try_wait().unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The real agent's `sync`, running in the background on `dir`.
fn start_sync(dir: &std::path::Path) -> KilledOnDrop {
    let child = Command::new(AGENT)
        .arg("--data")
        .arg(dir)
        .arg("sync")
        .spawn()
        .unwrap();
    KilledOnDrop(child)
}

fn sync_to_the_end(dir: &std::path::Path) {
    let finished = Command::new(AGENT)
        .arg("--data")
        .arg(dir)
        .arg("sync")
        .output()
        .unwrap();
    assert!(
        finished.status.success(),
        "{}",
        String::from_utf8_lossy(&finished.stderr)
    );
}

async fn masks_on_server(base: &str) -> Value {
    let url = format!("{base}/v1/sales/masks");
    client()
        .get(url)
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_killed_mid_way_resumes_without_losing_or_doubling() {
    const SALES: u64 = 3_000;
    let server_dir = tempfile::tempdir().unwrap();
    let till_dir = tempfile::tempdir().unwrap();
    let server = Server::start(server_dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let mut till = masks_till(&server.base, till_dir.path(), "till-9", "Mapo", 1000, 1000).await;
    sell_many(&mut till, SALES, 3);
    drop(till);

    let seed: u64 = rand::random();
    println!("sigkill seed {seed}");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut acked_before_kill = Vec::new();
    for _ in 0..3 {
        // Kill once the upload has gone a random number of batches further, so every kill
        // lands mid-upload: acknowledged work behind it, unacknowledged work ahead.
        let threshold =
            (acked(till_dir.path()) + rng.random_range(1..=2u64) * 500).min(SALES - 500);
        let mut child = start_sync(till_dir.path());
        wait_for_ack(till_dir.path(), threshold, &mut child).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        acked_before_kill.push(acked(till_dir.path()));
    }
    sync_to_the_end(till_dir.path());
    assert_eq!(acked(till_dir.path()), SALES);

    let sale = masks_on_server(&server.base).await;
    assert_eq!(
        sale["stock"]["sold"], 1000,
        "every allotted sale once: {sale}"
    );
    assert_eq!(sale["stock"]["allotted"], 0);
    let quarantine = common::operator(
        &server.base,
        reqwest::Method::GET,
        "/v1/terminals/till-9/quarantine",
        None,
    )
    .await;
    assert_eq!(quarantine["quarantine"], json!([]));
    println!("acknowledged when killed: {acked_before_kill:?}");
    assert!(
        acked_before_kill.iter().all(|&a| a < SALES),
        "every kill must land mid-upload: {acked_before_kill:?}"
    );
    server.stop().await;
}

/// The server stops in the middle of an agent's upload and comes back on the same data; the
/// agent's next run finishes the job, each entry once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_during_an_upload_loses_and_doubles_nothing() {
    let server_dir = tempfile::tempdir().unwrap();
    let till_dir = tempfile::tempdir().unwrap();
    let server = Server::start(server_dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let mut till = masks_till(&server.base, till_dir.path(), "till-5", "Mapo", 1000, 1000).await;
    sell_many(&mut till, 1000, 1);
    drop(till);

    let mut child = start_sync(till_dir.path());
    wait_for_ack(till_dir.path(), 500, &mut child).await;
    // The server goes away mid-upload (the agent sees its connection fail) ...
    let address = server.address;
    server.stop().await;
    let status = child.wait().unwrap();
    let acked_at_restart = acked(till_dir.path());
    // ... and comes back on the same data and address.
    let server = Server::start(server_dir.path(), address).await;
    sync_to_the_end(till_dir.path());
    assert_eq!(acked(till_dir.path()), 1000);
    let sale = masks_on_server(&server.base).await;
    assert_eq!(
        (
            sale["stock"]["sold"].as_u64(),
            sale["stock"]["allotted"].as_u64()
        ),
        (Some(1000), Some(0)),
        "{sale}"
    );
    println!(
        "first upload ended with {status}, acknowledged {acked_at_restart} of 1000 when the server went away"
    );
    server.stop().await;
}
