//! The real `holdfast-pos sync` process, SIGKILLed mid-upload several times, then run to the
//! end: the server has every entry exactly once.

use std::process::Command;
use std::time::Duration;

use holdfast_pos::counter::{self, Line, Tender};
use holdfast_pos::journal::{Item, Journal};
use holdfast_server::{Application, Config};
use rand::Rng;
use serde_json::{Value, json};

const OPERATOR: &str = "sigkill-operator";
const SALES: u64 = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_killed_mid_way_resumes_without_losing_or_doubling() {
    let server_dir = tempfile::tempdir().unwrap();
    let till_dir = tempfile::tempdir().unwrap();
    let app = Application::build(Config::new(
        "127.0.0.1:0".parse().unwrap(),
        server_dir.path().into(),
        Some(OPERATOR.into()),
    ))
    .await
    .unwrap();
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(OPERATOR)
            .json(&body)
            .send()
    };
    let sale = json!({"id": "masks", "sku": "KF94", "name": "KF94", "price": 39900, "stock": 1000,
        "per_customer_limit": 1, "opens_at": "2020-01-01T00:00:00Z"});
    post("/v1/sales", sale).await.unwrap();
    let registered: Value = post(
        "/v1/terminals",
        json!({"terminal_id": "till-9", "store": "Mapo"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let secret = registered["secret"].as_str().unwrap().to_owned();

    let mut journal = Journal::open(till_dir.path()).unwrap();
    journal
        .set_setting(
            "registration",
            &json!({"terminal_id": "till-9", "store": "Mapo", "servers": [base], "secret": secret}),
        )
        .unwrap();
    let uplink = holdfast_pos::uplink::Uplink::new(
        vec![base.clone()],
        "till-9".into(),
        hex::decode(&secret).unwrap(),
    );
    let (_, granted) = uplink
        .post(
            "/v1/terminals/till-9/allotments",
            &json!({"sale_id": "masks", "quantity": 1000}),
        )
        .await
        .unwrap();
    assert_eq!(granted["granted"], 1000);
    journal.set_allotment("masks", 1000).unwrap();
    journal
        .put_item(&Item {
            sku: "KF94".into(),
            name: "KF94".into(),
            price: 39_900,
            sale_id: Some("masks".into()),
        })
        .unwrap();
    journal
        .put_item(&Item {
            sku: "TEA".into(),
            name: "Tea".into(),
            price: 3_000,
            sale_id: None,
        })
        .unwrap();
    let key = counter::card_key(till_dir.path()).unwrap();
    for n in 0..SALES {
        let sku = if n % 3 == 0 { "KF94" } else { "TEA" };
        let sold = counter::sell(
            &mut journal,
            &key,
            &[Line {
                sku: sku.into(),
                quantity: 1,
            }],
            Tender::Cash,
            1_800_000_000_000 + n as i64,
        );
        assert!(sold.unwrap().is_ok());
    }
    drop(journal);

    let seed: u64 = rand::random();
    println!("sigkill seed {seed}");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let agent = env!("CARGO_BIN_EXE_holdfast-pos");
    let mut acked_before_kill = Vec::new();
    let mut acked = 0;
    for _ in 0..3 {
        // Kill once the upload has gone a random number of batches further, so every kill
        // lands mid-upload: acknowledged work behind it, unacknowledged work ahead.
        let batches_further = rng.random_range(1..=2u64);
        let threshold = (acked + batches_further * 500).min(SALES - 500);
        let mut child = Command::new(agent)
            .arg("--data")
            .arg(till_dir.path())
            .arg("sync")
            .spawn()
            .unwrap();
        loop {
            let now_acked = Journal::open(till_dir.path()).unwrap().acked().unwrap();
            if now_acked >= threshold || child.try_wait().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        acked = Journal::open(till_dir.path()).unwrap().acked().unwrap();
        acked_before_kill.push(acked);
    }
    let finished = Command::new(agent)
        .arg("--data")
        .arg(till_dir.path())
        .arg("sync")
        .output()
        .unwrap();
    assert!(
        finished.status.success(),
        "{}",
        String::from_utf8_lossy(&finished.stderr)
    );
    let journal = Journal::open(till_dir.path()).unwrap();
    assert_eq!(journal.acked().unwrap(), SALES);

    let sale: Value = client
        .get(format!("{base}/v1/sales/masks"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        sale["stock"]["sold"], 1000,
        "every allotted sale once: {sale}"
    );
    assert_eq!(sale["stock"]["allotted"], 0);
    let quarantine: Value = client
        .get(format!("{base}/v1/terminals/till-9/quarantine"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(quarantine["quarantine"], json!([]));
    println!("acknowledged when killed: {acked_before_kill:?}");
    assert!(
        acked_before_kill.iter().all(|&a| a < SALES),
        "every kill must land mid-upload: {acked_before_kill:?}"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// The server stops in the middle of an agent's upload and comes back on the same data; the
/// agent's next run finishes the job, each entry once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_during_an_upload_loses_and_doubles_nothing() {
    let server_dir = tempfile::tempdir().unwrap();
    let till_dir = tempfile::tempdir().unwrap();
    let config = || {
        Config::new(
            "127.0.0.1:0".parse().unwrap(),
            server_dir.path().into(),
            Some(OPERATOR.into()),
        )
    };
    let app = Application::build(config()).await.unwrap();
    let address = app.local_addr();
    let base = format!("http://{address}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let post = |path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(OPERATOR)
            .json(&body)
            .send()
    };
    post(
        "/v1/sales",
        json!({"id": "masks", "sku": "KF94", "name": "KF94", "price": 39900, "stock": 1000,
        "per_customer_limit": 1, "opens_at": "2020-01-01T00:00:00Z"}),
    )
    .await
    .unwrap();
    let registered: Value = post(
        "/v1/terminals",
        json!({"terminal_id": "till-5", "store": "Mapo"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let secret = registered["secret"].as_str().unwrap().to_owned();
    let mut journal = Journal::open(till_dir.path()).unwrap();
    journal
        .set_setting(
            "registration",
            &json!({"terminal_id": "till-5", "store": "Mapo", "servers": [base], "secret": secret}),
        )
        .unwrap();
    let uplink = holdfast_pos::uplink::Uplink::new(
        vec![base.clone()],
        "till-5".into(),
        hex::decode(&secret).unwrap(),
    );
    uplink
        .post(
            "/v1/terminals/till-5/allotments",
            &json!({"sale_id": "masks", "quantity": 1000}),
        )
        .await
        .unwrap();
    journal.set_allotment("masks", 1000).unwrap();
    journal
        .put_item(&Item {
            sku: "KF94".into(),
            name: "KF94".into(),
            price: 39_900,
            sale_id: Some("masks".into()),
        })
        .unwrap();
    let key = counter::card_key(till_dir.path()).unwrap();
    for n in 0..1000 {
        let sold = counter::sell(
            &mut journal,
            &key,
            &[Line {
                sku: "KF94".into(),
                quantity: 1,
            }],
            Tender::Cash,
            n,
        );
        assert!(sold.unwrap().is_ok());
    }
    drop(journal);

    let agent = env!("CARGO_BIN_EXE_holdfast-pos");
    let mut child = Command::new(agent)
        .arg("--data")
        .arg(till_dir.path())
        .arg("sync")
        .spawn()
        .unwrap();
    while Journal::open(till_dir.path()).unwrap().acked().unwrap() < 500 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The server goes away mid-upload (the agent sees its connection fail) ...
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let status = child.wait().unwrap();
    let acked_at_restart = Journal::open(till_dir.path()).unwrap().acked().unwrap();
    // ... and comes back on the same data and address.
    let app = Application::build(Config {
        listen: address,
        ..config()
    })
    .await
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let finished = Command::new(agent)
        .arg("--data")
        .arg(till_dir.path())
        .arg("sync")
        .output()
        .unwrap();
    assert!(
        finished.status.success(),
        "{}",
        String::from_utf8_lossy(&finished.stderr)
    );
    assert_eq!(
        Journal::open(till_dir.path()).unwrap().acked().unwrap(),
        1000
    );
    let sale: Value = client
        .get(format!("{base}/v1/sales/masks"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
