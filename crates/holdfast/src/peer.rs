//! `holdfast bench --peer redis`: the design a marketplace builds for a flash sale today — a Lua
//! check-and-decrement with a per-buyer set in Redis, behind an HTTP endpoint — measured beside
//! Holdfast, with the same load generator, in the same run. Redis is Debian's `redis-server`,
//! started here on a free port in a fresh directory, with its append-only file synced on every
//! write (`appendfsync always`) or once a second (`everysec`).
//!
//! Three measurements per target:
//! - **throughput**: purchases per second and p99 with `--connections` buyers for `--seconds`;
//! - **exactness**: `--units` units, one per buyer, a crowd buying until well past the sell-out;
//!   acknowledged purchases beyond the stock are oversold;
//! - **durability**: the process that keeps the data is killed with SIGKILL under load, started
//!   again on the same directory, and every acknowledged purchase looked for.
//!
//! The peer endpoint takes the buyer from the `Authorization` header without checking any
//! signature (Holdfast verifies a signed token on every request), and a purchase is one request
//! (Holdfast's is a hold, then a confirm with a card payment, each durable).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hdrhistogram::Histogram;
use hyper::Method;
use hyper::body::Bytes;
use serde_json::{Value, json};

use crate::bench::{BenchArgs, Checkout, OPERATOR, Runtimes, median};
use crate::http::{HttpClient, ToolData, send_json, send_raw};

/// Check, decrement and record in one atomic step: the correct form of the common design.
const BUY: &str = r"
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return -1 end
local left = tonumber(redis.call('GET', KEYS[1]) or '0')
if left <= 0 then return 0 end
redis.call('DECR', KEYS[1])
redis.call('SADD', KEYS[2], ARGV[1])
return redis.call('RPUSH', KEYS[3], ARGV[1])
";
const STOCK_KEY: &str = "drop:stock";
const BUYERS_KEY: &str = "drop:buyers";
const ORDERS_KEY: &str = "drop:orders";
/// How long the durability run buys before the store is killed.
const KILL_AFTER: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Peer {
    /// Debian's redis-server with a Lua script, behind axum.
    Redis,
}

/// How Redis keeps its data: its append-only file synced on every write, once a second, or
/// no file at all (memory only, as the service the issue measured was published).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Aof {
    Always,
    EverySec,
    Off,
}

#[derive(Clone, Copy)]
enum Target {
    Holdfast(Checkout),
    Redis(Aof),
}

impl Target {
    const ALL: [Target; 5] = [
        Target::Holdfast(Checkout::HoldThenConfirm),
        Target::Holdfast(Checkout::OneRequest),
        Target::Redis(Aof::Always),
        Target::Redis(Aof::EverySec),
        Target::Redis(Aof::Off),
    ];

    fn name(self) -> &'static str {
        match self {
            Target::Holdfast(Checkout::HoldThenConfirm) => {
                "Holdfast, hold then confirm (SQLite WAL, synchronous=FULL)"
            }
            Target::Holdfast(Checkout::OneRequest) => {
                "Holdfast, one-request purchase (SQLite WAL, synchronous=FULL)"
            }
            Target::Redis(Aof::Always) => "Redis + Lua, appendfsync always",
            Target::Redis(Aof::EverySec) => "Redis + Lua, appendfsync everysec",
            Target::Redis(Aof::Off) => "Redis + Lua, no persistence",
        }
    }
}

#[derive(Default)]
struct Measured {
    purchases_per_s: Vec<f64>,
    p99_us: Vec<f64>,
    oversold: Vec<i64>,
    sold: Vec<u64>,
    lost: Vec<usize>,
    acknowledged: Vec<usize>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let redis = redis_server_binary()?;
    let bench = Bench {
        runtimes: Runtimes::new()?,
        client: crate::http::client(args.connections),
        args,
        data: ToolData::new(args.data.as_deref(), "bench")?,
        redis,
    };
    let mut measured: Vec<Measured> = Target::ALL.iter().map(|_| Measured::default()).collect();
    let bar = crate::progress::bar((args.runs * Target::ALL.len() * 3) as u64, "measurements");
    for run in 1..=args.runs {
        for (target, results) in Target::ALL.iter().zip(&mut measured) {
            let step = |what: &str| format!("run {run}/{}: {}, {what}", args.runs, target.name());
            bar.set_message(step("throughput"));
            let (per_s, p99) = throughput(*target, &bench)?;
            results.purchases_per_s.push(per_s);
            results.p99_us.push(p99);
            bar.inc(1);
            bar.set_message(step("exactness"));
            let sold = exactness(*target, &bench)?;
            results.sold.push(sold);
            results.oversold.push(sold as i64 - i64::from(args.units));
            bar.inc(1);
            bar.set_message(step("SIGKILL"));
            let (acknowledged, lost) = durability(*target, &bench)?;
            results.acknowledged.push(acknowledged);
            results.lost.push(lost);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    report(args, &bench.data, &measured);
    Ok(())
}

fn redis_server_binary() -> anyhow::Result<PathBuf> {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("redis-server"))
        .find(|path| path.is_file());
    found.context(
        "--peer redis needs Debian's redis-server on the PATH: sudo apt-get install redis-server",
    )
}

/// What every measurement of a run shares.
struct Bench<'a> {
    runtimes: Runtimes,
    client: HttpClient,
    args: &'a BenchArgs,
    data: ToolData,
    redis: PathBuf,
}

/// Purchases per second and the p99 of purchase requests, `--seconds` at `--connections`.
fn throughput(target: Target, bench: &Bench) -> anyhow::Result<(f64, f64)> {
    let Bench {
        runtimes,
        client,
        args,
        data,
        redis,
    } = bench;
    match target {
        Target::Holdfast(checkout) => {
            let result = crate::bench::ledger_run_with(runtimes, client, args, data, checkout)?;
            anyhow::ensure!(result.errors == 0, "{} failed purchases", result.errors);
            Ok((result.purchases_per_s, result.p99_us as f64))
        }
        Target::Redis(aof) => {
            let store = RedisStore::start(redis, &data.next_server_dir()?, aof)?;
            let peer = PeerService::start(runtimes, &store, u32::MAX as u64)?;
            let outcome = runtimes.client.block_on(buy_from_peer(
                client,
                peer.address,
                args.connections,
                Duration::from_secs(args.seconds),
                None,
            ))?;
            peer.stop(runtimes);
            anyhow::ensure!(outcome.failed == 0, "{} failed purchases", outcome.failed);
            Ok((
                outcome.acknowledged.len() as f64 / args.seconds as f64,
                outcome.latencies.value_at_quantile(0.99) as f64,
            ))
        }
    }
}

/// Units sold (acknowledged) of `--units`, by a crowd still buying well past the sell-out.
fn exactness(target: Target, bench: &Bench) -> anyhow::Result<u64> {
    let Bench {
        runtimes,
        client,
        args,
        data,
        redis,
    } = bench;
    match target {
        Target::Holdfast(checkout) => {
            let server = crate::http::InProcessServer::start(&runtimes.server, data, OPERATOR)?;
            let sold = runtimes.client.block_on(async {
                let mut short = BenchArgs::clone(args);
                short.seconds = 1;
                crate::sellout::sell_out(client, server.address, &short, true, checkout).await
            });
            server.stop(&runtimes.server);
            Ok(sold?.purchases)
        }
        Target::Redis(aof) => {
            let store = RedisStore::start(redis, &data.next_server_dir()?, aof)?;
            let peer = PeerService::start(runtimes, &store, u64::from(args.units))?;
            let outcome = runtimes.client.block_on(buy_from_peer(
                client,
                peer.address,
                args.connections,
                SELLOUT_LIMIT,
                Some(u64::from(args.units)),
            ))?;
            peer.stop(runtimes);
            Ok(outcome.acknowledged.len() as u64)
        }
    }
}

/// The exactness run stops a second after the first `sold_out`, or after this long.
const SELLOUT_LIMIT: Duration = Duration::from_secs(120);

/// Acknowledged purchases before a SIGKILL of the process keeping the data, and how many of
/// them are missing once it has started again on the same directory.
fn durability(target: Target, bench: &Bench) -> anyhow::Result<(usize, usize)> {
    let Bench {
        runtimes,
        client,
        args,
        data,
        redis,
    } = bench;
    let dir = data.next_server_dir()?;
    match target {
        Target::Holdfast(checkout) => runtimes
            .client
            .block_on(holdfast_killed(client, args, &dir, checkout)),
        Target::Redis(aof) => {
            let mut store = RedisStore::start(redis, &dir, aof)?;
            let peer = PeerService::start(runtimes, &store, u32::MAX as u64)?;
            let kill_at = Instant::now() + KILL_AFTER;
            let outcome = runtimes.client.block_on(async {
                let buying = buy_from_peer(
                    client,
                    peer.address,
                    args.connections,
                    KILL_AFTER * 10,
                    None,
                );
                let killing = async {
                    tokio::time::sleep_until(kill_at.into()).await;
                    store.kill();
                };
                let (outcome, ()) = tokio::join!(buying, killing);
                outcome
            })?;
            peer.stop(runtimes);
            store.restart()?;
            let kept = runtimes.client.block_on(store.buyers())?;
            let lost = outcome
                .acknowledged
                .iter()
                .filter(|buyer| !kept.contains(*buyer))
                .count();
            Ok((outcome.acknowledged.len(), lost))
        }
    }
}

/// Redis as a child process on a free loopback port, its append-only file in `dir`.
struct RedisStore {
    binary: PathBuf,
    dir: PathBuf,
    aof: Aof,
    port: u16,
    child: Child,
}

impl RedisStore {
    fn start(binary: &Path, dir: &Path, aof: Aof) -> anyhow::Result<RedisStore> {
        std::fs::create_dir_all(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = spawn_redis(binary, dir, aof, port)?;
        let store = RedisStore {
            binary: binary.to_owned(),
            dir: dir.to_owned(),
            aof,
            port,
            child,
        };
        store.wait_until_ready()?;
        Ok(store)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn wait_until_ready(&self) -> anyhow::Result<()> {
        let client = redis::Client::open(self.url())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = client
                .get_connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            match ready {
                Ok(_) => return Ok(()),
                // Loading the append-only file answers LOADING until it is done.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => bail!("redis-server did not answer within 30 s: {error}"),
            }
        }
    }

    /// SIGKILL: no chance to flush anything.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        self.child = spawn_redis(&self.binary, &self.dir, self.aof, self.port)?;
        self.wait_until_ready()
    }

    async fn buyers(&self) -> anyhow::Result<HashSet<String>> {
        let client = redis::Client::open(self.url())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let buyers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(BUYERS_KEY)
            .query_async(&mut connection)
            .await?;
        Ok(buyers.into_iter().collect())
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_redis(binary: &Path, dir: &Path, aof: Aof, port: u16) -> anyhow::Result<Child> {
    let persistence: &[&str] = match aof {
        Aof::Always => &["--appendonly", "yes", "--appendfsync", "always"],
        Aof::EverySec => &["--appendonly", "yes", "--appendfsync", "everysec"],
        Aof::Off => &["--appendonly", "no"],
    };
    Command::new(binary)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(persistence)
        .args(["--save", ""])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server")
}

/// The HTTP side of the common design: `POST /v1/sales/{id}/purchases`, the buyer named by the
/// bearer token, answered `201 {"order": n}`, `409 sold_out` or `403 limit_exceeded`.
struct PeerService {
    address: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

#[derive(Clone)]
struct PeerState {
    redis: redis::aio::MultiplexedConnection,
    buy: Arc<redis::Script>,
}

impl PeerService {
    fn start(runtimes: &Runtimes, store: &RedisStore, stock: u64) -> anyhow::Result<PeerService> {
        let url = store.url();
        let (state, listener) = runtimes.server.block_on(async {
            let client = redis::Client::open(url)?;
            let mut redis = client.get_multiplexed_async_connection().await?;
            redis::cmd("SET")
                .arg(STOCK_KEY)
                .arg(stock)
                .query_async::<()>(&mut redis)
                .await?;
            let state = PeerState {
                redis,
                buy: Arc::new(redis::Script::new(BUY)),
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            anyhow::Ok((state, listener))
        })?;
        let address = listener.local_addr()?;
        let router = Router::new()
            .route("/v1/sales/{id}/purchases", post(purchase))
            .with_state(state);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = runtimes.server.spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(PeerService {
            address,
            stop,
            task,
        })
    }

    fn stop(self, runtimes: &Runtimes) {
        let _ = self.stop.send(());
        let _ = runtimes.server.block_on(self.task);
    }
}

async fn purchase(
    State(mut state): State<PeerState>,
    UrlPath(_sale): UrlPath<String>,
    headers: HeaderMap,
) -> (StatusCode, axum::Json<Value>) {
    let Some(buyer) = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
    else {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"code": "unauthorized"})),
        );
    };
    let answer: redis::RedisResult<i64> = state
        .buy
        .key(STOCK_KEY)
        .key(BUYERS_KEY)
        .key(ORDERS_KEY)
        .arg(buyer)
        .invoke_async(&mut state.redis)
        .await;
    match answer {
        Ok(order) if order > 0 => (StatusCode::CREATED, axum::Json(json!({"order": order}))),
        Ok(0) => (
            StatusCode::CONFLICT,
            axum::Json(json!({"code": "sold_out"})),
        ),
        Ok(_) => (
            StatusCode::FORBIDDEN,
            axum::Json(json!({"code": "limit_exceeded"})),
        ),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"code": "unavailable", "message": error.to_string()})),
        ),
    }
}

struct PeerOutcome {
    /// Buyers whose purchase was answered 201.
    acknowledged: Vec<String>,
    failed: u64,
    latencies: Histogram<u64>,
}

/// `connections` buyers loops, each purchase by a new buyer, for `duration` — or, given a
/// stock, until a second after the first `sold_out`. A connection that fails (the store was
/// killed) stops.
async fn buy_from_peer(
    client: &HttpClient,
    address: SocketAddr,
    connections: usize,
    duration: Duration,
    stock: Option<u64>,
) -> anyhow::Result<PeerOutcome> {
    let until = Instant::now() + duration;
    let sold_out = Arc::new(std::sync::OnceLock::<Instant>::new());
    let stopped = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..connections)
        .map(|connection| {
            let (client, sold_out, stopped) = (client.clone(), sold_out.clone(), stopped.clone());
            tokio::spawn(async move {
                let url = format!("http://{address}/v1/sales/drop/purchases");
                let body = Bytes::from_static(br#"{"quantity":1}"#);
                let mut acknowledged = Vec::new();
                let mut latencies = Histogram::<u64>::new(3)?;
                let mut failed = 0u64;
                for n in 0u64.. {
                    let over = sold_out
                        .get()
                        .is_some_and(|at| at.elapsed() >= Duration::from_secs(1));
                    if Instant::now() >= until || over || stopped.load(Ordering::Relaxed) {
                        break;
                    }
                    let buyer = format!("b{connection}-{n}");
                    let started = Instant::now();
                    let sent = send_raw(
                        &client,
                        Method::POST,
                        &url,
                        Some(&format!("Bearer {buyer}")),
                        None,
                        body.clone(),
                    )
                    .await;
                    let _ = latencies.record(started.elapsed().as_micros() as u64);
                    match sent {
                        Ok((201, _)) => acknowledged.push(buyer),
                        Ok((409, _)) if stock.is_some() => {
                            sold_out.get_or_init(Instant::now);
                        }
                        Ok(_) | Err(_) => {
                            failed += 1;
                            if stock.is_none() {
                                stopped.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                }
                anyhow::Ok((acknowledged, failed, latencies))
            })
        })
        .collect();
    let mut outcome = PeerOutcome {
        acknowledged: Vec::new(),
        failed: 0,
        latencies: Histogram::new(3)?,
    };
    for task in tasks {
        let (acknowledged, failed, latencies) = task.await??;
        outcome.acknowledged.extend(acknowledged);
        outcome.failed += failed;
        outcome.latencies.add(&latencies)?;
    }
    Ok(outcome)
}

/// Holdfast as its own process (`holdfast serve`), buying from it until it is killed with
/// SIGKILL, then started again on the same directory: acknowledged orders, and how many of them
/// it no longer has.
async fn holdfast_killed(
    client: &HttpClient,
    args: &BenchArgs,
    dir: &Path,
    checkout: Checkout,
) -> anyhow::Result<(usize, usize)> {
    let mut server = ServeProcess::start(dir)?;
    let address = server.address;
    let created = crate::bench::create_bench_sale(client, address, "bench").await;
    created?;
    let tokens = crate::bench::bench_tokens(client, address, args.connections).await?;
    let kill_at = Instant::now() + KILL_AFTER;
    let buying = async {
        let tasks: Vec<_> = (0..args.connections)
            .map(|c| {
                let (client, token) = (client.clone(), tokens[c].clone());
                tokio::spawn(async move {
                    buy_until_refused(&client, address, &token, c, checkout).await
                })
            })
            .collect();
        let mut acknowledged = Vec::new();
        for task in tasks {
            acknowledged.extend(task.await?);
        }
        anyhow::Ok(acknowledged)
    };
    let killing = async {
        tokio::time::sleep_until(kill_at.into()).await;
        server.kill();
    };
    let (acknowledged, ()) = tokio::join!(buying, killing);
    let acknowledged = acknowledged?;
    let server = ServeProcess::start(dir)?;
    let kept = all_order_ids(client, server.address).await?;
    let lost = acknowledged.iter().filter(|id| !kept.contains(*id)).count();
    Ok((acknowledged.len(), lost))
}

/// One buyer's loop (hold then confirm, or one-request purchases) until a request fails;
/// answers the order ids acknowledged.
async fn buy_until_refused(
    client: &HttpClient,
    address: SocketAddr,
    token: &str,
    connection: usize,
    checkout: Checkout,
) -> Vec<String> {
    let hold_body = json!({"quantity": 1, "channel": "web"});
    let payment = json!({"method": "card", "token": "tok_visa"});
    let confirm_body = json!({ "payment": payment });
    let purchase_body = json!({"quantity": 1, "channel": "web", "payment": payment});
    let mut orders = Vec::new();
    for n in 0u64.. {
        let bought = match checkout {
            Checkout::OneRequest => {
                let url = format!("http://{address}/v1/sales/bench/purchases");
                let key = format!("p{connection}-{n}");
                send_keyed(client, &url, token, &key, &purchase_body).await
            }
            Checkout::HoldThenConfirm => {
                let url = format!("http://{address}/v1/sales/bench/holds");
                let hold = send_keyed(
                    client,
                    &url,
                    token,
                    &format!("h{connection}-{n}"),
                    &hold_body,
                )
                .await;
                let Some(hold_id) = hold.and_then(|b| b["hold_id"].as_str().map(str::to_owned))
                else {
                    break;
                };
                let url = format!("http://{address}/v1/holds/{hold_id}/confirm");
                send_keyed(
                    client,
                    &url,
                    token,
                    &format!("c{connection}-{n}"),
                    &confirm_body,
                )
                .await
            }
        };
        match bought.and_then(|b| b["order_id"].as_str().map(str::to_owned)) {
            Some(order) => orders.push(order),
            None => break,
        }
    }
    orders
}

async fn send_keyed(
    client: &HttpClient,
    url: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> Option<Value> {
    let (status, answer) = send_raw(
        client,
        Method::POST,
        url,
        Some(&format!("Bearer {token}")),
        Some(key),
        Bytes::from(serde_json::to_vec(body).ok()?),
    )
    .await
    .ok()?;
    (200..300)
        .contains(&status)
        .then(|| serde_json::from_slice(&answer).ok())
        .flatten()
}

async fn all_order_ids(
    client: &HttpClient,
    address: SocketAddr,
) -> anyhow::Result<HashSet<String>> {
    let mut ids = HashSet::new();
    let mut after = String::new();
    loop {
        let url = format!("http://{address}/v1/sales/bench/orders?limit=1000{after}");
        let (status, page) = send_json(client, Method::GET, &url, Some(OPERATOR), None).await?;
        anyhow::ensure!(status == 200, "listing orders answered {status}: {page}");
        for order in page["orders"].as_array().into_iter().flatten() {
            ids.insert(order["order_id"].as_str().unwrap_or_default().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return Ok(ids),
        }
    }
}

/// `holdfast serve` (this very binary) as a child process on a free port.
struct ServeProcess {
    address: SocketAddr,
    child: Child,
}

impl ServeProcess {
    fn start(dir: &Path) -> anyhow::Result<ServeProcess> {
        use std::io::BufRead;
        let mut child = Command::new(std::env::current_exe()?)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir)
            .env("HOLDFAST_OPERATOR_TOKEN", OPERATOR)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting holdfast serve")?;
        let stdout = child.stdout.take().context("serve's output")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let address = loop {
            let line = lines
                .next()
                .context("holdfast serve ended before listening")??;
            if let Some(url) = line.strip_prefix("holdfast listening on http://") {
                break url.parse()?;
            }
        };
        // Keep reading its output so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(ServeProcess { address, child })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn report(args: &BenchArgs, data: &ToolData, measured: &[Measured]) {
    println!(
        "holdfast bench --peer redis: {} runs; throughput {} s at {} connections; exactness \
         {} units one per buyer; SIGKILL after {} s of buying (data in {})\n",
        args.runs,
        args.seconds,
        args.connections,
        args.units,
        KILL_AFTER.as_secs(),
        data.root().display()
    );
    println!(
        "| design | purchases/s (median) | of Redis always | p99 µs | sold of {} (runs) | \
         oversold | acknowledged before SIGKILL (runs) | lost after SIGKILL (runs) |",
        args.units
    );
    println!("|---|---:|---:|---:|---|---:|---|---|");
    let always = Target::ALL
        .iter()
        .position(|t| matches!(t, Target::Redis(Aof::Always)))
        .expect("the durable peer is measured");
    let durable_peer = median(measured[always].purchases_per_s.clone());
    let list = |values: Vec<String>| values.join(" / ");
    for (target, m) in Target::ALL.iter().zip(measured) {
        let per_s = median(m.purchases_per_s.clone());
        println!(
            "| {} | {per_s:.0} | {:.2} | {:.0} | {} | {} | {} | {} |",
            target.name(),
            per_s / durable_peer,
            median(m.p99_us.clone()),
            list(m.sold.iter().map(u64::to_string).collect()),
            m.oversold.iter().copied().max().unwrap_or(0).max(0),
            list(m.acknowledged.iter().map(usize::to_string).collect()),
            list(m.lost.iter().map(usize::to_string).collect()),
        );
    }
    println!(
        "\nHoldfast's hold then confirm is two requests, each durable; its one-request purchase \
         is one request with two durable writes (the hold, then the order) and a card payment \
         between; both verify a signed token. The peer's is one request naming its buyer, one \
         durable write, no payment. \
         SIGKILL ends the process, not the machine: what a process wrote before it died is still \
         in the kernel's page cache, so `everysec` loses nothing here; it can lose up to a \
         second of acknowledged purchases when the machine itself goes down."
    );
}
