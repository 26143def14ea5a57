//! `holdfast bench`: hold+confirm over HTTP on loopback with fsync on, against a bare axum
//! endpoint measured in the same run as the ceiling, and the in-process core alone.
//!
//! The machine is shared and noisy, so each scenario runs several times, interleaved, and the
//! report gives medians and the ratio of medians.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::routing::post;
use clap::Args;
use hdrhistogram::Histogram;
use holdfast_core::{
    Channel, Command, HoldId, PER_CUSTOMER_LIMIT_MAX, Reply, STOCK_MAX, Sale, SaleSpec, Shopper,
    Timestamp,
};
use hyper::Method;
use hyper::body::Bytes;

use crate::http::{
    HttpClient, InProcessServer, ToolData, send_json, send_raw, send_raw_retry_after,
};
use serde_json::{Value, json};

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Seconds each measured run lasts (after a one-second warm-up).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Concurrent keep-alive connections driving the load (shoppers in flight at once).
    #[arg(long, default_value_t = 256)]
    pub connections: usize,
    /// Runs of each scenario, interleaved; the report gives medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Run only one scenario (for profiling); the report then has no ratio.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    scenario: Scenario,
    /// Storm: terminals reconnecting at once.
    #[arg(long, default_value_t = 1_000)]
    terminals: usize,
    /// Storm: offline sales in each terminal's journal.
    #[arg(long, default_value_t = 500)]
    entries: usize,
    /// Strangers: connections trickling a request body in at a byte a second.
    #[arg(long, default_value_t = 600)]
    strangers: usize,
    /// Strangers: the buyer's holds measured in each phase of each run.
    #[arg(long, default_value_t = 200)]
    holds: usize,
    /// Measure Holdfast beside the common design for flash sales (throughput, exactness, and
    /// purchases lost to SIGKILL) instead of the scenarios.
    #[arg(long, value_enum)]
    peer: Option<crate::peer::Peer>,
    /// Sellout and --peer: units in the sale (one per person).
    #[arg(long, default_value_t = 10_000)]
    pub units: u32,
    /// Sustained: purchases (hold + confirm) each run makes before it stops; compaction:
    /// purchases a simulated day.
    #[arg(long, default_value_t = 1_000_000)]
    purchases: u64,
    /// Compaction: simulated days.
    #[arg(long, default_value_t = 4)]
    days: u32,
    /// Sustained: events between a sale's snapshots (the server's own default when not given).
    #[arg(long)]
    snapshot_every_events: Option<u64>,
    /// Ledger: write requests the server serves at once before it sheds more with 429 (the
    /// server's own default when not given).
    #[arg(long)]
    writes_in_flight_max: Option<usize>,
    #[arg(long, help = crate::http::DATA_HELP)]
    pub data: Option<PathBuf>,
    /// The postgres scenario: a PostgreSQL server where the bench may create (and afterwards
    /// drop) databases of its own, e.g. postgres://postgres@127.0.0.1:5432/postgres.
    #[arg(long, env = "HOLDFAST_BENCH_DATABASE_URL", hide_env_values = true)]
    pub database: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    All,
    Bare,
    /// The bare endpoint plus one small record appended to the embedded log and synced before
    /// the answer: the least any durable request costs on this machine.
    Floor,
    Ledger,
    Core,
    /// Terminals reconnecting at once with journals of offline sales, under live traffic.
    Storm,
    /// A buyer's hold with and without hundreds of slow, unauthenticated connections.
    Strangers,
    /// A till's journal of scarce sales uploaded in batches against one entry per request.
    TillSync,
    /// PostgreSQL against the embedded log, round trips and commits per purchase, three nodes
    /// against one, and the time a dead owner's sale takes to be served again (--database).
    Postgres,
    /// A crowd that keeps asking after the last of --units is sold: requests answered per
    /// second after the sell-out, with and without idempotency keys, against the bare endpoint.
    Sellout,
    /// One sale bought from without a pause until --purchases complete: p50, p99 and the worst
    /// second's p99, to show whether periodic work (snapshots) stalls callers.
    Sustained,
    /// --days of stored answers (--purchases a day) in the embedded log, compacted as the
    /// server does against not: the log's size each day and each compaction step's time.
    Compaction,
}

pub(crate) const OPERATOR: &str = "bench-operator";
const WARM_UP: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub(crate) struct RunResult {
    pub requests_per_s: f64,
    /// Confirms answered 200 per second (ledger only).
    pub purchases_per_s: f64,
    /// Requests answered 429 overloaded (and retried after the pause the server asked for).
    pub shed: u64,
    /// The pauses the server asked of them (`Retry-After`, seconds).
    pub waits_asked_s: Vec<u64>,
    pub p50_us: u64,
    pub p99_us: u64,
    pub errors: u64,
}

#[derive(Clone)]
pub(crate) enum Workload {
    Bare,
    /// Each connection buys with its own customer token: hold, then confirm, from the sale
    /// and through the server its turn among `targets` gives it.
    Ledger {
        tokens: Arc<Vec<String>>,
        targets: Arc<Vec<Target>>,
        checkout: Checkout,
    },
}

/// How a shopper buys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Checkout {
    /// `POST /v1/sales/{id}/holds`, then `POST /v1/holds/{id}/confirm`.
    HoldThenConfirm,
    /// `POST /v1/sales/{id}/purchases`: both in one request.
    OneRequest,
}

/// Where a connection buys: a server, and a sale on it.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub address: SocketAddr,
    pub sale: String,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.runs == 0 || args.connections == 0 || args.seconds == 0 {
        bail!("--runs, --connections and --seconds must be at least 1");
    }
    if args.scenario == Scenario::Strangers {
        return crate::strangers::run(crate::strangers::StrangersArgs {
            strangers: args.strangers,
            holds: args.holds,
            runs: args.runs,
            data: args.data.as_deref(),
        });
    }
    if args.peer.is_some() {
        return crate::peer::run(&args);
    }
    if args.scenario == Scenario::Sellout {
        return crate::sellout::run(&args);
    }
    if args.scenario == Scenario::Sustained {
        return crate::sustained::run(crate::sustained::SustainedArgs {
            purchases: args.purchases,
            connections: args.connections,
            runs: args.runs,
            data: args.data.as_deref(),
            snapshot_every_events: args.snapshot_every_events,
        });
    }
    if args.scenario == Scenario::Compaction {
        return crate::compaction_bench::run(crate::compaction_bench::CompactionArgs {
            purchases_per_day: args.purchases,
            days: args.days,
            data: args.data.as_deref(),
        });
    }
    if args.scenario == Scenario::TillSync {
        return crate::storm::till_sync(crate::storm::TillSyncArgs {
            entries: args.entries,
            runs: args.runs,
            data: args.data.as_deref(),
        });
    }
    if args.scenario == Scenario::Postgres {
        let database = args
            .database
            .clone()
            .context("the postgres scenario needs --database (or HOLDFAST_BENCH_DATABASE_URL)")?;
        return crate::cluster_bench::run(&args, &database);
    }
    if args.scenario == Scenario::Storm {
        return crate::storm::run(crate::storm::StormArgs {
            terminals: args.terminals,
            entries: args.entries,
            baseline: Duration::from_secs(args.seconds),
            data: args.data.as_deref(),
        });
    }
    let runtimes = Runtimes::new()?;
    let client = crate::http::client(args.connections);
    let data = ToolData::new(args.data.as_deref(), "bench")?;
    let (mut bare, mut floors, mut ledger, mut core) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let wanted = |s: Scenario| args.scenario == Scenario::All || args.scenario == s;
    let steps = [
        Scenario::Bare,
        Scenario::Floor,
        Scenario::Ledger,
        Scenario::Core,
    ]
    .into_iter()
    .filter(|s| wanted(*s))
    .count();
    let bar = crate::progress::bar((args.runs * steps) as u64, "measurements");
    for run in 1..=args.runs {
        if wanted(Scenario::Bare) {
            bar.set_message(format!("run {run}/{}: bare endpoint", args.runs));
            bare.push(bare_run(&runtimes, &client, &args)?);
            bar.inc(1);
        }
        if wanted(Scenario::Floor) {
            bar.set_message(format!("run {run}/{}: durable floor", args.runs));
            let embedded = floor_run(&runtimes, &client, &args, FloorLog::embedded(&data)?)?;
            let file = floor_run(&runtimes, &client, &args, FloorLog::append_file(&data)?)?;
            floors.push((embedded, file));
            bar.inc(1);
        }
        if wanted(Scenario::Ledger) {
            bar.set_message(format!("run {run}/{}: ledger hold+confirm", args.runs));
            ledger.push(ledger_run(&runtimes, &client, &args, &data)?);
            bar.inc(1);
        }
        if wanted(Scenario::Core) {
            bar.set_message(format!("run {run}/{}: core alone", args.runs));
            core.push(core_commands_per_s(Duration::from_secs(args.seconds)));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    report(&args, &data, &bare, &floors, &ledger, &core);
    Ok(())
}

pub(crate) struct Runtimes {
    pub server: tokio::runtime::Runtime,
    pub client: tokio::runtime::Runtime,
}

impl Runtimes {
    /// Server and load generator each get their own runtime, so they compete for the cores the
    /// same way in every scenario.
    pub fn new() -> anyhow::Result<Runtimes> {
        Ok(Runtimes {
            server: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("bench-server")
                .enable_all()
                .build()?,
            client: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("bench-client")
                .enable_all()
                .build()?,
        })
    }
}

pub(crate) fn bare_run(
    runtimes: &Runtimes,
    client: &HttpClient,
    args: &BenchArgs,
) -> anyhow::Result<RunResult> {
    let router = Router::new().route("/bare", post(|| async { axum::Json(json!({})) }));
    serve_and_drive(runtimes, client, args, router)
}

/// The bare endpoint, answering only once a small record of its own is durable: what is left of
/// the ceiling when every answer waits for a sync, before any of the ledger's own work.
fn floor_run(
    runtimes: &Runtimes,
    client: &HttpClient,
    args: &BenchArgs,
    log: FloorLog,
) -> anyhow::Result<RunResult> {
    let router = Router::new().route(
        "/bare",
        post(move || {
            let log = log.clone();
            async move {
                let status = match log.append(vec![0x5a; FLOOR_RECORD_BYTES]).await {
                    true => hyper::StatusCode::OK,
                    false => hyper::StatusCode::SERVICE_UNAVAILABLE,
                };
                (status, axum::Json(json!({})))
            }
        }),
    );
    serve_and_drive(runtimes, client, args, router)
}

/// About the size of one hold's record in the ledger's log.
const FLOOR_RECORD_BYTES: usize = 64;

/// Where the durable floor's endpoint writes.
#[derive(Clone)]
enum FloorLog {
    /// The embedded log exactly as the server runs it: SQLite in WAL mode, every commit synced,
    /// behind the same group commit.
    Embedded(holdfast_store::LogHandle),
    /// A plain file, appended to and synced (`fdatasync`) once for every group of records that
    /// queued up while the previous sync ran: no database at all, the least any durable write
    /// can cost on this machine.
    AppendFile(std::sync::mpsc::Sender<(Vec<u8>, tokio::sync::oneshot::Sender<()>)>),
}

impl FloorLog {
    fn embedded(data: &ToolData) -> anyhow::Result<FloorLog> {
        let backend = holdfast_store::SqliteLog::open(&data.next_server_dir()?)?;
        let log = holdfast_store::GroupCommit::spawn(backend, Default::default());
        Ok(FloorLog::Embedded(log))
    }

    fn append_file(data: &ToolData) -> anyhow::Result<FloorLog> {
        let mut file = std::fs::File::create(data.next_server_dir()?.join("floor.log"))?;
        let (sender, receiver) =
            std::sync::mpsc::channel::<(Vec<u8>, tokio::sync::oneshot::Sender<()>)>();
        std::thread::Builder::new()
            .name("floor-log".into())
            .spawn(move || {
                use std::io::Write;
                while let Ok(first) = receiver.recv() {
                    let group: Vec<_> = std::iter::once(first).chain(receiver.try_iter()).collect();
                    let bytes: Vec<u8> =
                        group.iter().flat_map(|(r, _)| r.iter().copied()).collect();
                    // A failed write or sync answers nobody: their senders drop, and they fail.
                    if file
                        .write_all(&bytes)
                        .and_then(|()| file.sync_data())
                        .is_err()
                    {
                        return;
                    }
                    for (_, done) in group {
                        let _ = done.send(());
                    }
                }
            })?;
        Ok(FloorLog::AppendFile(sender))
    }

    /// Whether `record` became durable.
    async fn append(&self, record: Vec<u8>) -> bool {
        match self {
            FloorLog::Embedded(log) => {
                let record = holdfast_store::Record {
                    stream: "floor".to_owned(),
                    payload: record,
                };
                let batch = holdfast_store::Batch {
                    records: vec![record],
                    ..Default::default()
                };
                log.append(batch).await.is_ok()
            }
            FloorLog::AppendFile(writer) => {
                let (done, synced) = tokio::sync::oneshot::channel();
                writer.send((record, done)).is_ok() && synced.await.is_ok()
            }
        }
    }
}

/// Serves `router` on loopback and drives its `/bare` route with the bare workload.
fn serve_and_drive(
    runtimes: &Runtimes,
    client: &HttpClient,
    args: &BenchArgs,
    router: Router,
) -> anyhow::Result<RunResult> {
    let listener = runtimes
        .server
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let address = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtimes.server.spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    let result = runtimes
        .client
        .block_on(drive(client, address, Workload::Bare, args));
    let _ = stop.send(());
    let _ = runtimes.server.block_on(server);
    result
}

pub(crate) fn ledger_run(
    runtimes: &Runtimes,
    client: &HttpClient,
    args: &BenchArgs,
    data: &ToolData,
) -> anyhow::Result<RunResult> {
    ledger_run_with(runtimes, client, args, data, Checkout::HoldThenConfirm)
}

pub(crate) fn ledger_run_with(
    runtimes: &Runtimes,
    client: &HttpClient,
    args: &BenchArgs,
    data: &ToolData,
    checkout: Checkout,
) -> anyhow::Result<RunResult> {
    let mut config = holdfast_server::Config::new(
        "127.0.0.1:0".parse()?,
        data.next_server_dir()?,
        Some(OPERATOR.into()),
    );
    if let Some(max) = args.writes_in_flight_max {
        config.limits.writes_in_flight_max = max;
    }
    let server = InProcessServer::start_with(&runtimes.server, config)?;
    let result = runtimes
        .client
        .block_on(ledger_load(client, server.address, args, checkout));
    server.stop(&runtimes.server);
    result
}

/// Creates a sale `sale` on the server at `address` with all the stock there may be.
pub(crate) async fn create_bench_sale(
    client: &HttpClient,
    address: SocketAddr,
    sale: &str,
) -> anyhow::Result<()> {
    let body = json!({
        "id": sale, "sku": "B-1", "name": "Benchmark stock", "price": 1000,
        "stock": STOCK_MAX, "per_customer_limit": PER_CUSTOMER_LIMIT_MAX,
        "opens_at": "2020-01-01T00:00:00Z", "queue": "none",
    });
    let (status, answer) = send(client, address, "/v1/sales", OPERATOR, &body).await?;
    anyhow::ensure!(
        status == 201,
        "creating the bench sale answered {status}: {answer}"
    );
    Ok(())
}

/// A customer token per connection.
pub(crate) async fn bench_tokens(
    client: &HttpClient,
    address: SocketAddr,
    connections: usize,
) -> anyhow::Result<Arc<Vec<String>>> {
    let mut tokens = Vec::with_capacity(connections);
    for n in 0..connections {
        let request = json!({"customer_id": format!("bench-{n}")});
        let (_, body) = send(client, address, "/v1/customer-tokens", OPERATOR, &request).await?;
        tokens.push(body["token"].as_str().context("token")?.to_owned());
    }
    Ok(Arc::new(tokens))
}

pub(crate) async fn ledger_load(
    client: &HttpClient,
    address: SocketAddr,
    args: &BenchArgs,
    checkout: Checkout,
) -> anyhow::Result<RunResult> {
    let workload = ledger_workload(client, address, args.connections, checkout).await?;
    drive(client, address, workload, args).await
}

/// Creates the bench sale on the server at `address` and a shopper per connection buying it.
pub(crate) async fn ledger_workload(
    client: &HttpClient,
    address: SocketAddr,
    connections: usize,
    checkout: Checkout,
) -> anyhow::Result<Workload> {
    create_bench_sale(client, address, "bench").await?;
    Ok(Workload::Ledger {
        tokens: bench_tokens(client, address, connections).await?,
        targets: Arc::new(vec![Target {
            address,
            sale: "bench".into(),
        }]),
        checkout,
    })
}

pub(crate) async fn send(
    client: &HttpClient,
    address: SocketAddr,
    path: &str,
    token: &str,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    send_json(
        client,
        Method::POST,
        &format!("http://{address}{path}"),
        Some(token),
        Some(body),
    )
    .await
}

#[derive(serde::Deserialize)]
struct HoldAnswer {
    hold_id: String,
}

/// Sends until the answer is not `429 overloaded`, waiting as the server asks between tries
/// and resending the same request (same idempotency key), as a well-behaved client does.
/// Returns the final status, body and when that try started; `None` if `until` comes first.
pub(crate) async fn until_answered(
    client: &HttpClient,
    url: &str,
    authorization: &str,
    key: &str,
    body: Bytes,
    until: Instant,
    waits_asked_s: &mut Vec<u64>,
) -> anyhow::Result<Option<(u16, Bytes, Instant)>> {
    loop {
        let started = Instant::now();
        let (status, retry_after, answer) = send_raw_retry_after(
            client,
            Method::POST,
            url,
            Some(authorization),
            Some(key),
            body.clone(),
        )
        .await?;
        if status != 429 {
            return Ok(Some((status, answer, started)));
        }
        let asked = retry_after.unwrap_or(1);
        waits_asked_s.push(asked);
        let pause = Duration::from_secs(asked);
        if Instant::now() + pause >= until {
            return Ok(None);
        }
        tokio::time::sleep(pause).await;
    }
}

/// When a connection stops, and what it keeps besides the histogram.
#[derive(Clone)]
pub(crate) struct Plan {
    pub measure_from: Instant,
    pub until: Instant,
    /// Purchases still wanted by the whole run; every connection stops once none are.
    pub purchases_wanted: Option<Arc<AtomicI64>>,
    /// Whether to keep every latency with the second it started in.
    pub timeline: bool,
}

#[derive(Default)]
pub(crate) struct ConnectionOutcome {
    pub latencies: Option<Histogram<u64>>,
    pub errors: u64,
    pub purchases: u64,
    /// The pause asked of each request shed (`Retry-After`, seconds).
    pub waits_asked_s: Vec<u64>,
    /// (second since measuring began, latency µs) per request, when the plan asks for it.
    pub timeline: Vec<(u32, u32)>,
}

/// One connection's loop.
async fn connection_loop(
    client: HttpClient,
    address: SocketAddr,
    workload: Workload,
    connection: usize,
    plan: Plan,
) -> anyhow::Result<ConnectionOutcome> {
    let (measure_from, until) = (plan.measure_from, plan.until);
    let mut latencies = Histogram::<u64>::new(3)?;
    let mut timeline = Vec::new();
    let mut errors = 0;
    let mut purchases = 0u64;
    let mut waits_asked_s = Vec::new();
    let mut record = |started: Instant, ok: bool| {
        if started >= measure_from {
            let micros = started.elapsed().as_micros() as u64;
            let _ = latencies.record(micros);
            if plan.timeline {
                let second = (started - measure_from).as_secs() as u32;
                timeline.push((second, micros.min(u64::from(u32::MAX)) as u32));
            }
            if !ok {
                errors += 1;
            }
        }
    };
    let mut bought = |started: Instant| {
        if started >= measure_from {
            purchases += 1;
            if let Some(wanted) = &plan.purchases_wanted {
                wanted.fetch_sub(1, Ordering::Relaxed);
            }
        }
    };
    let wanted_more = || {
        plan.purchases_wanted
            .as_ref()
            .is_none_or(|wanted| wanted.load(Ordering::Relaxed) > 0)
    };
    let bare_url = format!("http://{address}/bare");
    let target = match &workload {
        Workload::Bare => None,
        Workload::Ledger { targets, .. } => Some(targets[connection % targets.len()].clone()),
    };
    let (buy_at, sale) = target.map_or((address, String::new()), |t| (t.address, t.sale));
    let hold_url = format!("http://{buy_at}/v1/sales/{sale}/holds");
    let purchase_url = format!("http://{buy_at}/v1/sales/{sale}/purchases");
    let purchase = Bytes::from_static(
        br#"{"quantity":1,"channel":"web","payment":{"method":"card","token":"tok_visa"}}"#,
    );
    let empty = Bytes::from_static(b"{}");
    let hold = Bytes::from_static(br#"{"quantity":1,"channel":"web"}"#);
    let confirm = Bytes::from_static(br#"{"payment":{"method":"card","token":"tok_visa"}}"#);
    let authorization = match &workload {
        Workload::Bare => "Bearer none".to_owned(),
        Workload::Ledger { tokens, .. } => format!("Bearer {}", tokens[connection]),
    };
    for n in 0u64.. {
        if Instant::now() >= until || !wanted_more() {
            break;
        }
        match &workload {
            Workload::Bare => {
                let started = Instant::now();
                let (status, _) = send_raw(
                    &client,
                    Method::POST,
                    &bare_url,
                    Some(&authorization),
                    None,
                    empty.clone(),
                )
                .await?;
                record(started, status == 200);
            }
            Workload::Ledger {
                checkout: Checkout::OneRequest,
                ..
            } => {
                let key = format!("p-{connection}-{n}");
                let sent = until_answered(
                    &client,
                    &purchase_url,
                    &authorization,
                    &key,
                    purchase.clone(),
                    until,
                    &mut waits_asked_s,
                )
                .await?;
                let Some((status, _, started)) = sent else {
                    break;
                };
                record(started, status == 201);
                if status == 201 {
                    bought(started);
                }
            }
            Workload::Ledger { .. } => {
                let key = format!("h-{connection}-{n}");
                let sent = until_answered(
                    &client,
                    &hold_url,
                    &authorization,
                    &key,
                    hold.clone(),
                    until,
                    &mut waits_asked_s,
                )
                .await?;
                let Some((status, body, started)) = sent else {
                    break;
                };
                record(started, status == 201);
                let Ok(answer) = serde_json::from_slice::<HoldAnswer>(&body) else {
                    continue;
                };
                let key = format!("c-{connection}-{n}");
                let url = format!("http://{buy_at}/v1/holds/{}/confirm", answer.hold_id);
                let sent = until_answered(
                    &client,
                    &url,
                    &authorization,
                    &key,
                    confirm.clone(),
                    until,
                    &mut waits_asked_s,
                )
                .await?;
                let Some((status, _, started)) = sent else {
                    break;
                };
                record(started, status == 200);
                if status == 200 {
                    bought(started);
                }
            }
        }
    }
    Ok(ConnectionOutcome {
        latencies: Some(latencies),
        errors,
        purchases,
        waits_asked_s,
        timeline,
    })
}

pub(crate) async fn drive(
    client: &HttpClient,
    address: SocketAddr,
    workload: Workload,
    args: &BenchArgs,
) -> anyhow::Result<RunResult> {
    let measure_from = Instant::now() + WARM_UP;
    let plan = Plan {
        measure_from,
        until: measure_from + Duration::from_secs(args.seconds),
        purchases_wanted: None,
        timeline: false,
    };
    let outcome = drive_with(client, address, workload, args.connections, plan).await?;
    let latencies = outcome.latencies.expect("merged histogram");
    Ok(RunResult {
        requests_per_s: latencies.len() as f64 / args.seconds as f64,
        purchases_per_s: outcome.purchases as f64 / args.seconds as f64,
        shed: outcome.waits_asked_s.len() as u64,
        waits_asked_s: outcome.waits_asked_s,
        p50_us: latencies.value_at_quantile(0.50),
        p99_us: latencies.value_at_quantile(0.99),
        errors: outcome.errors,
    })
}

/// Runs `connections` connection loops to the plan and merges what they measured.
pub(crate) async fn drive_with(
    client: &HttpClient,
    address: SocketAddr,
    workload: Workload,
    connections: usize,
    plan: Plan,
) -> anyhow::Result<ConnectionOutcome> {
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            tokio::spawn(connection_loop(
                client.clone(),
                address,
                workload.clone(),
                c,
                plan.clone(),
            ))
        })
        .collect();
    let mut merged = ConnectionOutcome {
        latencies: Some(Histogram::<u64>::new(3)?),
        ..ConnectionOutcome::default()
    };
    for task in tasks {
        let outcome = task.await??;
        if let (Some(all), Some(one)) = (&mut merged.latencies, &outcome.latencies) {
            all.add(one)?;
        }
        merged.waits_asked_s.extend(outcome.waits_asked_s);
        merged.errors += outcome.errors;
        merged.purchases += outcome.purchases;
        merged.timeline.extend(outcome.timeline);
    }
    Ok(merged)
}

/// The core alone: hold then confirm, round-robin over many shoppers, no I/O.
fn core_commands_per_s(duration: Duration) -> f64 {
    let mut spec = SaleSpec::plain(
        "core",
        1000,
        STOCK_MAX,
        PER_CUSTOMER_LIMIT_MAX,
        Timestamp(0),
    );
    spec.hold_ttl_millis = 600_000;
    let mut sale = Sale::new(spec);
    let shoppers: Vec<Shopper> = (0..1000)
        .map(|n| Shopper::new(&format!("c{n}"), Some(&format!("010-{n:08}")), None).unwrap())
        .collect();
    let started = Instant::now();
    let mut commands = 0u64;
    let mut now = Timestamp(1);
    while started.elapsed() < duration {
        for shopper in &shoppers {
            now = Timestamp(now.0 + 1);
            let hold = Command::PlaceHold {
                shopper: shopper.clone(),
                quantity: 1,
                channel: Channel::Web,
                pass: None,
            };
            let Ok(Reply::Held(h)) = sale.handle(&hold, now).outcome else {
                continue;
            };
            let confirm = Command::ConfirmHold {
                hold: HoldId(h.id.0),
                customer_id: shopper.customer_id().to_owned(),
                payment_ref: "auth".into(),
            };
            let _ = sale.handle(&confirm, now);
            commands += 2;
        }
    }
    commands as f64 / started.elapsed().as_secs_f64()
}

/// A report's row: the median of `rate` over the runs, median latencies, errors, each run.
pub(crate) fn table_row(name: &str, results: &[&RunResult], rate: fn(&RunResult) -> f64) -> String {
    let median_of = |f: &dyn Fn(&RunResult) -> f64| median(results.iter().map(|r| f(r)).collect());
    let runs: Vec<String> = results.iter().map(|r| format!("{:.0}", rate(r))).collect();
    format!(
        "| {name} | {:.0} | {:.0} | {:.0} | {} | {} |",
        median_of(&|r| rate(r)),
        median_of(&|r| r.p50_us as f64),
        median_of(&|r| r.p99_us as f64),
        results.iter().map(|r| r.errors).sum::<u64>(),
        runs.join(", ")
    )
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn report(
    args: &BenchArgs,
    data: &ToolData,
    bare: &[RunResult],
    floors: &[(RunResult, RunResult)],
    ledger: &[RunResult],
    core: &[f64],
) {
    let rate = |r: &[RunResult]| median(r.iter().map(|x| x.requests_per_s).collect());
    let (embedded, file): (Vec<RunResult>, Vec<RunResult>) = floors.iter().cloned().unzip();
    println!(
        "holdfast bench: {} runs x {} s, {} connections, loopback, fsync on (data in {})\n",
        args.runs,
        args.seconds,
        args.connections,
        data.root().display()
    );
    println!("| scenario | median req/s | p50 µs | p99 µs | errors | runs (req/s) |");
    println!("|---|---:|---:|---:|---:|---|");
    for (name, results) in [
        ("bare axum endpoint (ceiling)", bare),
        (
            "bare + a record synced in the embedded log (floor)",
            &embedded,
        ),
        ("bare + a record synced in a plain file (floor)", &file),
        ("ledger hold+confirm", ledger),
    ] {
        let results: Vec<&RunResult> = results.iter().collect();
        println!("{}", table_row(name, &results, |r| r.requests_per_s));
    }
    let core_runs = core
        .iter()
        .map(|c| format!("{c:.0}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "\nledger / bare (ratio of medians): {:.3}",
        rate(ledger) / rate(bare)
    );
    if !floors.is_empty() {
        println!(
            "floor / bare: {:.3} (embedded log), {:.3} (plain file); ledger / embedded floor: {:.3}",
            rate(&embedded) / rate(bare),
            rate(&file) / rate(bare),
            rate(ledger) / rate(&embedded)
        );
    }
    let purchases = median(ledger.iter().map(|x| x.purchases_per_s).collect());
    let purchase_runs = ledger
        .iter()
        .map(|x| format!("{:.0}", x.purchases_per_s))
        .collect::<Vec<_>>()
        .join(", ");
    println!("ledger completed purchases/s: median {purchases:.0} (runs: {purchase_runs})");
    let shed: u64 = ledger.iter().map(|x| x.shed).sum();
    let mut waits: Vec<u64> = ledger
        .iter()
        .flat_map(|x| x.waits_asked_s.clone())
        .collect();
    waits.sort_unstable();
    match (waits.get(waits.len() / 2), waits.last()) {
        (Some(median), Some(max)) => println!(
            "ledger requests shed with 429 and retried: {shed} (Retry-After asked: median \
             {median} s, max {max} s)"
        ),
        _ => println!("ledger requests shed with 429 and retried: {shed}"),
    }
    println!(
        "core alone: median {:.0} commands/s (runs: {core_runs})",
        median(core.to_vec())
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_floor_answers_only_once_its_record_is_written() {
        let scratch = tempfile::tempdir().unwrap();
        let data = ToolData::new(Some(&scratch.path().join("data")), "bench").unwrap();
        for log in [
            FloorLog::embedded(&data).unwrap(),
            FloorLog::append_file(&data).unwrap(),
        ] {
            let record = |n: u8| log.append(vec![n; FLOOR_RECORD_BYTES]);
            let answers = tokio::join!(record(1), record(2), record(3));
            assert_eq!(answers, (true, true, true));
        }
        let embedded = holdfast_store::SqliteReader::open(&data.root().join("server-1")).unwrap();
        let mut records = Vec::new();
        embedded
            .records(|record| {
                records.push(record.payload);
                Ok(())
            })
            .unwrap();
        records.sort();
        let expected: Vec<Vec<u8>> = (1..=3).map(|n| vec![n; FLOOR_RECORD_BYTES]).collect();
        assert_eq!(records, expected);
        let file = std::fs::read(data.root().join("server-2").join("floor.log")).unwrap();
        let mut file_records: Vec<Vec<u8>> = file
            .chunks(FLOOR_RECORD_BYTES)
            .map(<[u8]>::to_vec)
            .collect();
        file_records.sort();
        assert_eq!(file_records, expected);
    }
}
