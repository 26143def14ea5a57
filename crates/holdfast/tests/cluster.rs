//! Three real `holdfast serve` processes on one real PostgreSQL, shoppers spread over all of
//! them, and mid-sale: the sale's owner SIGKILLed (several times, a fresh node started in its
//! place), a node SIGSTOPped past its lease and let go on again, and PostgreSQL itself crashed
//! and restarted (`pg_ctl restart -m immediate`). Afterwards, from the database alone: sold ≤
//! stock, the escrow equation holds, every order a client saw acknowledged exists, nobody is
//! over the limit, and no append carries a stale epoch.

use std::collections::{HashMap, HashSet};
mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use holdfast_core::Sale;
use holdfast_server::log_entry::{LogEntry, decode_snapshot};
use holdfast_testkit::TestPostgres;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use common::{Served, customer_tokens, phone_of, serve, tier_and_seed};

const OPERATOR: &str = "cluster-test-operator";
const SALE: &str = "masks";
const NODES: usize = 3;
const WORKERS: usize = 12;
const CUSTOMERS: usize = 400;
const LIMIT: u64 = 2;
const STOCK: u64 = 600;
/// Short leases keep the test short; the default (3 s) is measured in the benchmark.
const LEASE_TTL_MS: u64 = 1500;
/// Owner SIGKILLs in the full tier (`HOLDFAST_TESTS=full`) and in the quick one.
const KILLS_FULL: usize = 5;
const KILLS_QUICK: usize = 2;
const QUICK_SEED: u64 = 7;

fn start_node(database: &str) -> Served {
    serve(OPERATOR, |command| {
        command
            .args(["--lease-ttl-ms", &LEASE_TTL_MS.to_string()])
            // Snapshots often, so the audit's replay starts from one written under the faults.
            .args(["--snapshot-every-events", "40"])
            .env("HOLDFAST_DATABASE_URL", database)
            // Failures the faults cause are expected here; the audit judges the outcome.
            .env("RUST_LOG", "off");
    })
}

fn signal(node: &Served, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal}");
}

/// What the shoppers share: the nodes they may call, and what they were told.
struct Shop {
    bases: RwLock<Vec<String>>,
    tokens: Vec<String>,
    acknowledged: Mutex<Vec<(String, usize, u64)>>,
    retried: AtomicUsize,
    per_node: Mutex<HashMap<String, usize>>,
    stop: AtomicBool,
}

impl Shop {
    /// Sends until some node gives an answer that is not "try again" (a dead node, a node
    /// that lost the sale, a database in the middle of restarting), always with the same
    /// idempotency key, so a retry can never do a thing twice.
    async fn post(
        &self,
        client: &reqwest::Client,
        path: &str,
        token: &str,
        key: &str,
        body: &Value,
    ) -> (u16, Value) {
        let started = Instant::now();
        let mut attempt = 0usize;
        loop {
            let base = {
                let bases = self.bases.read().unwrap();
                bases[(attempt + key.len()) % bases.len()].clone()
            };
            attempt += 1;
            let sent = client
                .post(format!("{base}{path}"))
                .bearer_auth(token)
                .header("Idempotency-Key", key)
                .json(body)
                .send()
                .await;
            if let Ok(response) = sent {
                let status = response.status().as_u16();
                if let Ok(body) = response.json::<Value>().await
                    && status != 503
                {
                    *self.per_node.lock().unwrap().entry(base).or_default() += 1;
                    return (status, body);
                }
            }
            self.retried.fetch_add(1, Ordering::Relaxed);
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no node answered {path} for a minute"
            );
            // Back-off between attempts, not synchronisation: the next may go to another node.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn shopper(shop: Arc<Shop>, worker: usize, seed: u64) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(8))
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    for n in 0.. {
        if shop.stop.load(Ordering::Relaxed) {
            return;
        }
        let customer = rng.random_range(0..CUSTOMERS);
        let token = &shop.tokens[customer];
        let quantity = rng.random_range(1..=LIMIT);
        let body = json!({"quantity": quantity, "channel": "web"});
        let path = format!("/v1/sales/{SALE}/holds");
        let (status, hold) = shop
            .post(&client, &path, token, &format!("h-{worker}-{n}"), &body)
            .await;
        match status {
            201 => {}
            409 => return, // sold out
            403 => {
                assert_eq!(hold["error"]["code"], "limit_exceeded", "{hold}");
                continue;
            }
            other => panic!("hold answered {other} {hold}"),
        }
        let hold_id = hold["hold_id"].as_str().unwrap();
        let path = format!("/v1/holds/{hold_id}/confirm");
        let body = json!({"payment": {"method": "card", "token": "tok_visa"}});
        let (status, order) = shop
            .post(&client, &path, token, &format!("c-{worker}-{n}"), &body)
            .await;
        match status {
            200 => shop.acknowledged.lock().unwrap().push((
                order["order_id"].as_str().unwrap().to_owned(),
                customer,
                order["quantity"].as_u64().unwrap(),
            )),
            404 | 410 => {}
            other => panic!("confirm answered {other} {order}"),
        }
    }
}

/// The address of the node holding the sale's lease now (a connection of its own: the
/// database restarts under the test).
async fn owner(url: &str) -> Option<String> {
    let db = connect(url).await;
    let row = db
        .query_opt(
            "SELECT address FROM lease WHERE stream = $1 AND expires_at > now()",
            &[&SALE],
        )
        .await
        .unwrap();
    row.map(|row| row.get(0))
}

/// The address of the node that owns the sale, once one of `candidates` does (after a
/// SIGKILL or SIGSTOP, the old owner's lease has to run out first).
async fn owner_among(url: &str, candidates: &[String]) -> String {
    let started = Instant::now();
    loop {
        if let Some(address) = owner(url).await
            && candidates.contains(&address)
        {
            return address;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nobody took the sale over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn bases(nodes: &[Served]) -> Vec<String> {
    nodes.iter().map(|n| n.base.clone()).collect()
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_carries_on_through_dead_stalled_nodes_and_a_database_crash() {
    let (full_tier, seed) = tier_and_seed("cluster test", QUICK_SEED);
    let kills = if full_tier { KILLS_FULL } else { KILLS_QUICK };
    let mut rng = StdRng::seed_from_u64(seed);
    let postgres = TestPostgres::start();
    let url = postgres.database("holdfast");
    let mut nodes: Vec<Served> = (0..NODES).map(|_| start_node(&url)).collect();
    let client = reqwest::Client::new();

    let sale = json!({
        "id": SALE, "sku": "KF94", "name": "KF94 masks", "price": 39900, "stock": STOCK,
        "per_customer_limit": LIMIT, "opens_at": "2020-01-01T00:00:00Z", "hold_ttl_s": 600,
    });
    let created = client
        .post(format!("{}/v1/sales", nodes[0].base))
        .bearer_auth(OPERATOR)
        .json(&sale)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let tokens = customer_tokens(&client, &bases(&nodes), OPERATOR, CUSTOMERS).await;
    let shop = Arc::new(Shop {
        bases: RwLock::new(nodes.iter().map(|n| n.base.clone()).collect()),
        tokens,
        acknowledged: Mutex::default(),
        retried: AtomicUsize::new(0),
        per_node: Mutex::default(),
        stop: AtomicBool::new(false),
    });
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(shopper(shop.clone(), w, rng.random())))
        .collect();

    // Faults land wherever the traffic is: these pauses place them, they synchronise nothing.
    let pause = |rng: &mut StdRng| Duration::from_millis(rng.random_range(300..900));
    let mut faults = Vec::new();
    for kill in 0..kills {
        tokio::time::sleep(pause(&mut rng)).await;
        let address = owner_among(&url, &bases(&nodes)).await;
        let index = nodes.iter().position(|n| n.base == address).unwrap();
        drop(nodes.remove(index)); // SIGKILL, and reaped.
        nodes.push(start_node(&url));
        *shop.bases.write().unwrap() = bases(&nodes);
        faults.push(format!("SIGKILL owner #{kill}"));
        if kill == 0 {
            // A node stalls past its lease (a long pause, a partition) and then goes on.
            tokio::time::sleep(pause(&mut rng)).await;
            let address = owner_among(&url, &bases(&nodes)).await;
            let stalled = nodes.iter().find(|n| n.base == address).unwrap();
            signal(stalled, "-STOP");
            let others: Vec<String> = bases(&nodes)
                .into_iter()
                .filter(|b| *b != address)
                .collect();
            owner_among(&url, &others).await;
            signal(stalled, "-CONT");
            faults.push("SIGSTOP owner until another took over, then SIGCONT".into());
            tokio::time::sleep(pause(&mut rng)).await;
            postgres.restart_immediately();
            faults.push("PostgreSQL restart -m immediate".into());
        }
    }
    tokio::time::sleep(pause(&mut rng)).await;
    shop.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    drop(nodes);

    // The audit reads the database alone.
    let audit = connect(&url).await;
    let sale = replay(&audit).await;
    sale.check_deep().expect("the replayed sale is consistent");
    let (total, available, held, sold, allotted) = (
        u64::from(sale.total()),
        u64::from(sale.available()),
        u64::from(sale.held()),
        u64::from(sale.sold()),
        u64::from(sale.allotted()),
    );
    assert_eq!(total, STOCK);
    assert_eq!(total, available + allotted + held + sold, "escrow equation");
    assert!(sold <= total);
    let orders = sale.orders();
    assert_eq!(
        orders.iter().map(|o| u64::from(o.quantity)).sum::<u64>(),
        sold,
        "orders account for every sold unit"
    );
    let holds: HashSet<u64> = orders.iter().map(|o| o.hold.0).collect();
    assert_eq!(holds.len(), orders.len(), "a hold was sold twice");
    let by_id: HashMap<String, &holdfast_core::Order> = orders
        .iter()
        .map(|o| (format!("{SALE}.o{}", o.id.0), o))
        .collect();
    let acknowledged = shop.acknowledged.lock().unwrap().clone();
    for (order_id, customer, quantity) in &acknowledged {
        let order = by_id
            .get(order_id)
            .unwrap_or_else(|| panic!("acknowledged order {order_id} lost"));
        assert_eq!(order.shopper.customer_id(), format!("c{customer}"));
        assert_eq!(u64::from(order.quantity), *quantity);
    }
    let mut per_phone: HashMap<String, u64> = HashMap::new();
    for order in orders {
        let customer: usize = order.shopper.customer_id()[1..].parse().unwrap();
        *per_phone.entry(phone_of(customer)).or_default() += u64::from(order.quantity);
    }
    assert!(
        per_phone.values().all(|&units| units <= LIMIT),
        "a person is over the limit"
    );
    let stale: i64 = audit
        .query_one(
            "SELECT count(*) FROM (SELECT epoch, max(epoch) OVER (ORDER BY seq ROWS BETWEEN \
             UNBOUNDED PRECEDING AND 1 PRECEDING) AS before FROM log WHERE stream = $1) appends \
             WHERE epoch < before",
            &[&SALE],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stale, 0,
        "an append carries an epoch older than one before it"
    );
    let epochs: i64 = audit
        .query_one(
            "SELECT count(DISTINCT epoch) FROM log WHERE stream = $1",
            &[&SALE],
        )
        .await
        .unwrap()
        .get(0);

    let per_node = shop.per_node.lock().unwrap().clone();
    println!(
        "{}; {} acknowledged orders, {} in the database, {sold} sold; {epochs} owners wrote; \
         {} retries; answers per node {:?}",
        faults.join(", "),
        acknowledged.len(),
        orders.len(),
        shop.retried.load(Ordering::Relaxed),
        per_node.values().collect::<Vec<_>>()
    );
    assert!(
        !acknowledged.is_empty(),
        "the test must sell something to prove anything"
    );
    assert!(
        epochs >= 2,
        "the sale must have changed owner under traffic"
    );
    assert!(
        per_node.len() >= NODES,
        "shoppers must be spread over every node"
    );
}

/// The sale as its stream in the database makes it: the snapshot, then every record after it.
async fn replay(db: &tokio_postgres::Client) -> Sale {
    let snapshot = db
        .query_opt(
            "SELECT through, payload FROM snapshot WHERE stream = $1",
            &[&SALE],
        )
        .await
        .unwrap();
    let (mut sale, through) = match snapshot {
        Some(row) => {
            let state = decode_snapshot(&row.get::<_, Vec<u8>>(1)).unwrap();
            (Some(Sale::restore(state).unwrap()), row.get::<_, i64>(0))
        }
        None => panic!("no snapshot was written in the whole run"),
    };
    let records = db
        .query(
            "SELECT payload FROM log WHERE stream = $1 AND seq > $2 ORDER BY seq",
            &[&SALE, &through],
        )
        .await
        .unwrap();
    for record in records {
        match LogEntry::decode(&record.get::<_, Vec<u8>>(0)).unwrap() {
            LogEntry::SaleCreated { spec } => sale = Some(Sale::new(spec)),
            LogEntry::Events { events } => {
                let sale = sale.as_mut().expect("created before its events");
                for event in &events {
                    sale.apply(event);
                }
            }
        }
    }
    sale.expect("the sale is in the database")
}
