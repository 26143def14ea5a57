//! Crash test with real processes: start `holdfast serve`, drive concurrent holds and
//! confirms, and one-request purchases, SIGKILL it at random moments, restart it on the same
//! data, retry every request cut off with its own key, and at the end prove that the orders on
//! the server are exactly the acknowledged ones, no unit was sold twice, limits held and the
//! stock balances.

use std::collections::{HashMap, HashSet};
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use common::{Served, customer_tokens, phone_of, serve, tier_and_seed};

const OPERATOR: &str = "crash-test-operator";
/// SIGKILLs in the full tier (`HOLDFAST_TESTS=full`, as `scripts/test` runs it), and in the
/// quick one a plain `cargo test` runs.
const KILLS_FULL: usize = 24;
const KILLS_QUICK: usize = 6;
/// The quick tier's seed: the same run every time. The full tier draws a fresh one.
const QUICK_SEED: u64 = 42;
const WORKERS: usize = 16;
const CUSTOMERS: usize = 600;
const LIMIT: u64 = 2;
const STOCK: u64 = 900;

/// Snapshots are taken often, so kills land while one is being built and saved.
fn start_server(data: &std::path::Path) -> Served {
    serve(OPERATOR, |command| {
        command
            .arg("--data")
            .arg(data)
            .args(["--snapshot-every-events", "40"]);
    })
}

#[derive(Clone, Debug)]
struct Acknowledged {
    order_id: String,
    customer: usize,
    quantity: u64,
}

/// A request cut off by a kill, to be sent again with the same key.
struct Pending {
    customer: usize,
    key: String,
    what: Cut,
}

enum Cut {
    Confirm { hold_id: String },
    Purchase { quantity: u64 },
}

struct Shared {
    base: String,
    tokens: Arc<Vec<String>>,
    acknowledged: Arc<Mutex<Vec<Acknowledged>>>,
    pending: Arc<Mutex<Vec<Pending>>>,
    cut_off: Arc<Mutex<usize>>,
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    key: &str,
    body: Value,
) -> Result<(u16, Value), reqwest::Error> {
    let response = client
        .post(url)
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let body = response.json().await?;
    Ok((status, body))
}

/// What became of a confirm or a purchase.
enum Paid {
    Acknowledged,
    Refused(String),
    CutOff,
}

/// Sends a confirm or a purchase and records what it answered; one cut off is kept for a retry.
async fn pay(shared: &Shared, client: &reqwest::Client, pending: Pending) -> Paid {
    let payment = json!({"method": "card", "token": "tok_visa"});
    let (url, body, paid) = match &pending.what {
        Cut::Confirm { hold_id } => (
            format!("{}/v1/holds/{hold_id}/confirm", shared.base),
            json!({"payment": payment}),
            200,
        ),
        Cut::Purchase { quantity } => (
            format!("{}/v1/sales/crash/purchases", shared.base),
            json!({"quantity": quantity, "channel": "web", "payment": payment}),
            201,
        ),
    };
    let token = &shared.tokens[pending.customer];
    match post(client, &url, token, &pending.key, body).await {
        Ok((status, order)) if status == paid => {
            shared.acknowledged.lock().unwrap().push(Acknowledged {
                order_id: order["order_id"].as_str().unwrap().to_owned(),
                customer: pending.customer,
                quantity: order["quantity"].as_u64().unwrap(),
            });
            Paid::Acknowledged
        }
        Ok((status, body)) => {
            let code = body["error"]["code"].as_str().unwrap_or_default();
            let refusals = [
                "hold_expired",
                "sold_out",
                "limit_exceeded",
                "hold_not_found",
            ];
            assert!(refusals.contains(&code), "{url} answered {status} {body}");
            Paid::Refused(code.to_owned())
        }
        Err(_) => {
            *shared.cut_off.lock().unwrap() += 1;
            shared.pending.lock().unwrap().push(pending);
            Paid::CutOff
        }
    }
}

/// Shops until the server dies under it or there is nothing left to buy.
async fn shopper(shared: Arc<Shared>, round: usize, worker: usize, seed: u64) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    // First finish what the last crash interrupted, with the same keys.
    let retries: Vec<Pending> = {
        let mut pending = shared.pending.lock().unwrap();
        let take = pending.len().min(2);
        pending.drain(..take).collect()
    };
    for retry in retries {
        pay(&shared, &client, retry).await;
    }
    for n in 0.. {
        let customer = rng.random_range(0..CUSTOMERS);
        let key = format!("hold-{round}-{worker}-{n}");
        let quantity = rng.random_range(1..=LIMIT);
        if rng.random_bool(0.5) {
            let what = Cut::Purchase { quantity };
            let key = format!("purchase-{round}-{worker}-{n}");
            match pay(
                &shared,
                &client,
                Pending {
                    customer,
                    key,
                    what,
                },
            )
            .await
            {
                Paid::CutOff => return,
                Paid::Refused(code) if code == "sold_out" => return,
                Paid::Acknowledged | Paid::Refused(_) => continue,
            }
        }
        let url = format!("{}/v1/sales/crash/holds", shared.base);
        let body = json!({"quantity": quantity, "channel": "web"});
        match post(&client, &url, &shared.tokens[customer], &key, body).await {
            Ok((201, hold)) => {
                let hold_id = hold["hold_id"].as_str().unwrap().to_owned();
                let pending = Pending {
                    customer,
                    key: format!("confirm-{round}-{worker}-{n}"),
                    what: Cut::Confirm { hold_id },
                };
                pay(&shared, &client, pending).await;
            }
            Ok((409, _)) => return, // sold out
            Ok((403, body)) => assert_eq!(body["error"]["code"], "limit_exceeded"),
            Ok((status, body)) => panic!("hold answered {status} {body}"),
            Err(_) => {
                *shared.cut_off.lock().unwrap() += 1;
                return;
            }
        }
    }
}

async fn all_orders(client: &reqwest::Client, base: &str) -> Vec<Value> {
    let mut orders = Vec::new();
    let mut after = String::new();
    loop {
        let url = format!("{base}/v1/sales/crash/orders?limit=1000&after={after}");
        let page: Value = client
            .get(url)
            .bearer_auth(OPERATOR)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        orders.extend(page["orders"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => return orders,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_orders_survive_sigkill() {
    let (full_tier, seed) = tier_and_seed("crash test", QUICK_SEED);
    let kills = if full_tier { KILLS_FULL } else { KILLS_QUICK };
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();

    let mut server = start_server(dir.path());
    let sale = json!({
        "id": "crash", "sku": "KF94", "name": "KF94 masks", "price": 39900, "stock": STOCK,
        "per_customer_limit": LIMIT, "opens_at": "2020-01-01T00:00:00Z", "hold_ttl_s": 600,
    });
    let created = client
        .post(format!("{}/v1/sales", server.base))
        .bearer_auth(OPERATOR)
        .json(&sale)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let tokens = customer_tokens(&client, &[server.base.clone()], OPERATOR, CUSTOMERS).await;
    let tokens = Arc::new(tokens);
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let pending = Arc::new(Mutex::new(Vec::new()));
    let mut rounds_cut_mid_flight = 0;

    for round in 0..kills {
        let cut_off = Arc::new(Mutex::new(0));
        let shared = Arc::new(Shared {
            base: server.base.clone(),
            tokens: tokens.clone(),
            acknowledged: acknowledged.clone(),
            pending: pending.clone(),
            cut_off: cut_off.clone(),
        });
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| tokio::spawn(shopper(shared.clone(), round, w, rng.random())))
            .collect();
        // Fault injection, not synchronisation: the kill lands wherever the traffic is.
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..250))).await;
        server.child.kill().expect("SIGKILL the server");
        server.child.wait().unwrap();
        for worker in workers {
            worker.await.unwrap();
        }
        if *cut_off.lock().unwrap() > 0 {
            rounds_cut_mid_flight += 1;
        }
        server = start_server(dir.path());
    }

    // Finish every interrupted confirm with its original key, then audit.
    let shared = Shared {
        base: server.base.clone(),
        tokens: tokens.clone(),
        acknowledged: acknowledged.clone(),
        pending: pending.clone(),
        cut_off: Arc::new(Mutex::new(0)),
    };
    let leftovers: Vec<Pending> = pending.lock().unwrap().drain(..).collect();
    for retry in leftovers {
        pay(&shared, &client, retry).await;
    }
    assert!(
        shared.pending.lock().unwrap().is_empty(),
        "every retry was answered"
    );
    let sale: Value = client
        .get(format!("{}/v1/sales/crash", server.base))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let orders = all_orders(&client, &server.base).await;
    server.child.kill().unwrap();

    let stock = &sale["stock"];
    let (total, available, held, sold, allotted) = (
        stock["total"].as_u64().unwrap(),
        stock["available"].as_u64().unwrap(),
        stock["held"].as_u64().unwrap(),
        stock["sold"].as_u64().unwrap(),
        stock["allotted"].as_u64().unwrap(),
    );
    assert_eq!(total, STOCK);
    assert_eq!(total, available + allotted + held + sold, "escrow equation");
    assert!(sold <= total);
    let sold_in_orders: u64 = orders.iter().map(|o| o["quantity"].as_u64().unwrap()).sum();
    assert_eq!(sold_in_orders, sold, "orders account for every sold unit");

    let order_ids: HashSet<&str> = orders
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    let hold_ids: HashSet<&str> = orders
        .iter()
        .map(|o| o["hold_id"].as_str().unwrap())
        .collect();
    assert_eq!(order_ids.len(), orders.len(), "an order id appears twice");
    assert_eq!(hold_ids.len(), orders.len(), "a hold was sold twice");

    let acknowledged = acknowledged.lock().unwrap().clone();
    let by_id: HashMap<&str, &Value> = orders
        .iter()
        .map(|o| (o["order_id"].as_str().unwrap(), o))
        .collect();
    for ack in &acknowledged {
        let order = by_id
            .get(ack.order_id.as_str())
            .unwrap_or_else(|| panic!("acknowledged order {} lost", ack.order_id));
        assert_eq!(order["customer_id"], format!("c{}", ack.customer));
        assert_eq!(order["quantity"], ack.quantity);
    }
    // Every request cut off was sent again with its key until it was answered, so an order
    // nobody was told of is one made twice (or from a hold its buyer never saw).
    let acknowledged_ids: HashSet<&str> =
        acknowledged.iter().map(|a| a.order_id.as_str()).collect();
    assert_eq!(
        acknowledged_ids.len(),
        acknowledged.len(),
        "an order acknowledged twice"
    );
    assert_eq!(
        order_ids, acknowledged_ids,
        "orders on the server that nobody was told of"
    );
    let mut per_phone: HashMap<String, u64> = HashMap::new();
    for order in &orders {
        let customer: usize = order["customer_id"].as_str().unwrap()[1..].parse().unwrap();
        *per_phone.entry(phone_of(customer)).or_default() += order["quantity"].as_u64().unwrap();
    }
    assert!(
        per_phone.values().all(|&units| units <= LIMIT),
        "a person exceeded the limit"
    );

    println!(
        "{kills} kills, {rounds_cut_mid_flight} cut requests mid-flight; {} acknowledged orders, {} on the server, {sold} sold",
        acknowledged.len(),
        orders.len()
    );
    assert!(
        !acknowledged.is_empty(),
        "the test must sell something to prove anything"
    );
    assert!(
        rounds_cut_mid_flight >= kills / 2,
        "kills must land mid-traffic: only {rounds_cut_mid_flight}"
    );

    // The log, binary on disk, read back as JSON lines by `holdfast log dump` alone: one
    // confirmation per order, no more.
    let dump = std::process::Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(["log", "dump", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(dump.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines[0]["record"]["entry"], "sale_created");
    let confirmations = lines
        .iter()
        .filter(|line| line["stream"] == "crash")
        .flat_map(|line| {
            line["record"]["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|event| event.get("HoldConfirmed").is_some())
        .count();
    assert_eq!(
        confirmations,
        orders.len(),
        "the dump shows every order once"
    );

    // And the stored answers a retry gets back, readable too.
    let values = std::process::Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(["log", "dump", "--values", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(values.status.success());
    let answers = String::from_utf8(values.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|line| line["key"].as_str().unwrap().starts_with("idem/"))
        .count();
    assert!(
        answers >= acknowledged.len(),
        "{answers} stored answers for {} acknowledged orders",
        acknowledged.len()
    );
}
