//! `holdfast bench --scenario postgres --database URL`: the ledger on PostgreSQL against the
//! embedded log, what each purchase costs PostgreSQL, three nodes against one, and how long a
//! dead owner's sale takes to be served again.
//!
//! Every run uses databases of its own, created on the server `--database` names and dropped
//! when the run is done. Scenarios are interleaved run by run; the report gives medians and
//! ratios of medians from the same runs (the machine is shared and noisy).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use holdfast_server::ClusterConfig;
use serde_json::json;

use crate::bench::{
    BenchArgs, OPERATOR, RunResult, Runtimes, Target, Workload, bench_tokens, create_bench_sale,
    drive, ledger_load, median, send, table_row,
};
use crate::http::{HttpClient, InProcessServer, ToolData};

/// A node's lease time in the fail-over runs: the default a node starts with.
const LEASE_TTL_MS: u64 = 3_000;

pub fn run(args: &BenchArgs, admin_url: &str) -> anyhow::Result<()> {
    let runtimes = Runtimes::new()?;
    let client = crate::http::client(args.connections);
    let data = ToolData::new(args.data.as_deref(), "bench")?;
    let admin = Admin::connect(admin_url)?;
    let mut results = Results::default();
    for run in 1..=args.runs {
        let progress = |what: &str| eprintln!("run {run}/{}: {what}", args.runs);
        progress("embedded log, hold+confirm");
        results
            .embedded
            .push(crate::bench::ledger_run(&runtimes, &client, args, &data)?);
        progress("PostgreSQL, one node in process, hold+confirm");
        results
            .postgres
            .push(postgres_run(&runtimes, &client, args, &admin)?);
        progress("one node process, one sale");
        results
            .one_node
            .push(nodes_run(&runtimes, &client, args, &admin, 1, 1)?);
        progress("three node processes, one sale");
        results
            .three_nodes
            .push(nodes_run(&runtimes, &client, args, &admin, 3, 1)?);
        progress("three node processes, three sales");
        results
            .three_sales
            .push(nodes_run(&runtimes, &client, args, &admin, 3, 3)?);
        progress("fail-over after the owner's SIGKILL");
        results
            .failover_s
            .push(failover_run(&runtimes, &client, &admin)?);
    }
    results.report(args);
    Ok(())
}

#[derive(Default)]
struct Results {
    embedded: Vec<RunResult>,
    postgres: Vec<(RunResult, Costs)>,
    one_node: Vec<(RunResult, Cpu)>,
    three_nodes: Vec<(RunResult, Cpu)>,
    three_sales: Vec<(RunResult, Cpu)>,
    failover_s: Vec<f64>,
}

/// What a run's purchases cost PostgreSQL.
struct Costs {
    purchases: u64,
    /// Transactions the database committed for the run (its own count, `pg_stat_database`).
    commits: u64,
    /// Commits and statements (each a round trip) the log writer sent.
    log_commits: u64,
    log_round_trips: u64,
}

/// CPU time per purchase: of the holdfast node processes together, and of PostgreSQL (every
/// `postgres` process on this machine, its background writers included).
#[derive(Clone, Copy)]
struct Cpu {
    nodes_ms: f64,
    postgres_ms: f64,
}

/// CPU seconds used so far by the processes `pids`, and by every `postgres` process.
fn cpu_seconds(pids: &[u32]) -> anyhow::Result<(f64, f64)> {
    let ticks: f64 = String::from_utf8(Command::new("getconf").arg("CLK_TCK").output()?.stdout)?
        .trim()
        .parse()?;
    // utime and stime are the 14th and 15th fields of /proc/<pid>/stat, after the name.
    let used = |stat: &str| -> Option<(String, f64)> {
        let (name, rest) = stat.split_once(") ")?;
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks_used =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some((name.rsplit('(').next()?.to_owned(), ticks_used / ticks))
    };
    let (mut nodes, mut postgres) = (0.0, 0.0);
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((name, seconds)) = used(&stat) else {
            continue;
        };
        if pids.contains(&pid) {
            nodes += seconds;
        } else if name == "postgres" {
            postgres += seconds;
        }
    }
    Ok((nodes, postgres))
}

/// The PostgreSQL server the bench makes its databases on.
struct Admin {
    url: String,
    client: tokio_postgres::Client,
    runtime: tokio::runtime::Runtime,
}

impl Admin {
    fn connect(url: &str) -> anyhow::Result<Admin> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .with_context(|| "cannot reach the PostgreSQL server given with --database")?;
            tokio::spawn(connection);
            anyhow::Ok(client)
        })?;
        Ok(Admin {
            url: url.to_owned(),
            client,
            runtime,
        })
    }

    /// A new database of the bench's own, as a URL.
    fn create(&self) -> anyhow::Result<Database<'_>> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "holdfast_bench_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.runtime.block_on(
            self.client
                .batch_execute(&format!("CREATE DATABASE {name}")),
        )?;
        let (base, _) = self
            .url
            .rsplit_once('/')
            .context("--database must end with a database name")?;
        Ok(Database {
            admin: self,
            url: format!("{base}/{name}"),
            name,
        })
    }

    fn commits(&self, database: &str) -> anyhow::Result<u64> {
        let row = self.runtime.block_on(self.client.query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
            &[&database],
        ))?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

/// A database the bench made: dropped (with whatever connections are still on it) when done.
struct Database<'a> {
    admin: &'a Admin,
    url: String,
    name: String,
}

impl Drop for Database<'_> {
    fn drop(&mut self) {
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(error) = self
            .admin
            .runtime
            .block_on(self.admin.client.batch_execute(&drop))
        {
            eprintln!("could not drop the bench database {}: {error}", self.name);
        }
    }
}

fn cluster_config(url: &str, lease_ttl_ms: u64) -> ClusterConfig {
    ClusterConfig {
        database_url: url.to_owned(),
        advertise: String::new(),
        lease_ttl: Duration::from_millis(lease_ttl_ms),
    }
}

/// The same load as the embedded-log run, on one node in this process on PostgreSQL.
fn postgres_run(
    runtimes: &Runtimes,
    client: &HttpClient,
    args: &BenchArgs,
    admin: &Admin,
) -> anyhow::Result<(RunResult, Costs)> {
    let database = admin.create()?;
    let mut config = holdfast_server::Config::new(
        "127.0.0.1:0".parse()?,
        std::env::temp_dir(),
        Some(OPERATOR.into()),
    );
    config.cluster = Some(cluster_config(&database.url, LEASE_TTL_MS));
    let server = InProcessServer::start_with(&runtimes.server, config)?;
    let address = server.address;
    let log_before = runtimes.client.block_on(log_counters(client, address))?;
    let result = runtimes.client.block_on(ledger_load(
        client,
        address,
        args,
        crate::bench::Checkout::HoldThenConfirm,
    ))?;
    let log_after = runtimes.client.block_on(log_counters(client, address))?;
    let purchases = runtimes.client.block_on(orders(client, address, "bench"))?;
    server.stop(&runtimes.server);
    // The server's connections have closed: their counts are in the database's statistics.
    let costs = Costs {
        purchases,
        commits: admin.commits(&database.name)?,
        log_commits: log_after.0 - log_before.0,
        log_round_trips: log_after.1 - log_before.1,
    };
    Ok((result, costs))
}

/// The log writer's commits and round trips so far, from the server's metrics.
async fn log_counters(client: &HttpClient, address: SocketAddr) -> anyhow::Result<(u64, u64)> {
    let url = format!("http://{address}/metrics");
    let (_, page) = crate::http::send_raw(
        client,
        hyper::Method::GET,
        &url,
        None,
        None,
        Default::default(),
    )
    .await?;
    let page = String::from_utf8_lossy(&page);
    let value = |name: &str| {
        page.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    Ok((
        value("holdfast_pg_log_commits_total"),
        value("holdfast_pg_log_round_trips_total"),
    ))
}

async fn orders(client: &HttpClient, address: SocketAddr, sale: &str) -> anyhow::Result<u64> {
    let url = format!("http://{address}/v1/sales/{sale}");
    let (_, body) =
        crate::http::send_json(client, hyper::Method::GET, &url, Some(OPERATOR), None).await?;
    body["orders"].as_u64().context("the sale's order count")
}

/// A `holdfast serve` process on a database: killed (SIGKILL) when dropped.
struct Node {
    child: Child,
    address: SocketAddr,
}

impl Node {
    fn start(database: &str, lease_ttl_ms: u64) -> anyhow::Result<Node> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["serve", "--listen", "127.0.0.1:0", "--lease-ttl-ms"])
            .arg(lease_ttl_ms.to_string())
            .env("HOLDFAST_DATABASE_URL", database)
            .env("HOLDFAST_OPERATOR_TOKEN", OPERATOR)
            .env("RUST_LOG", "off")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("the node's output")?;
        BufReader::new(stdout).read_line(&mut line)?;
        let address = line
            .trim()
            .strip_prefix("holdfast listening on http://")
            .with_context(|| format!("a node said {line:?} instead of where it listens"))?
            .parse()?;
        Ok(Node { child, address })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nodes` processes on one database, with `sales` sales each made on (so owned by) a node of
/// its own; connections take turns over the nodes and the sales.
fn nodes_run(
    runtimes: &Runtimes,
    client: &HttpClient,
    args: &BenchArgs,
    admin: &Admin,
    nodes: usize,
    sales: usize,
) -> anyhow::Result<(RunResult, Cpu)> {
    let database = admin.create()?;
    let started: Vec<Node> = (0..nodes)
        .map(|_| Node::start(&database.url, LEASE_TTL_MS))
        .collect::<anyhow::Result<_>>()?;
    let pids: Vec<u32> = started.iter().map(|n| n.child.id()).collect();
    let sale_ids: Vec<String> = (0..sales).map(|sale| format!("bench-{sale}")).collect();
    let (result, cpu) = runtimes.client.block_on(async {
        for (n, sale) in sale_ids.iter().enumerate() {
            create_bench_sale(client, started[n % nodes].address, sale).await?;
        }
        // Every pairing of node and sale, so with one sale every node hands requests over
        // and with one sale per node some requests go straight to the owner.
        let targets: Vec<Target> = (0..nodes * sales)
            .map(|n| Target {
                address: started[n % nodes].address,
                sale: sale_ids[n % sales].clone(),
            })
            .collect();
        let workload = Workload::Ledger {
            tokens: bench_tokens(client, started[0].address, args.connections).await?,
            targets: Arc::new(targets),
            checkout: crate::bench::Checkout::HoldThenConfirm,
        };
        let before = cpu_seconds(&pids)?;
        let result = drive(client, started[0].address, workload, args).await?;
        let after = cpu_seconds(&pids)?;
        let mut purchases = 0;
        for sale in &sale_ids {
            purchases += orders(client, started[0].address, sale).await?;
        }
        let per_purchase = |seconds: f64| seconds * 1000.0 / purchases.max(1) as f64;
        let cpu = Cpu {
            nodes_ms: per_purchase(after.0 - before.0),
            postgres_ms: per_purchase(after.1 - before.1),
        };
        anyhow::Ok((result, cpu))
    })?;
    drop(started);
    Ok((result, cpu))
}

/// Seconds from the owner's SIGKILL to the first hold another node answers.
fn failover_run(runtimes: &Runtimes, client: &HttpClient, admin: &Admin) -> anyhow::Result<f64> {
    let database = admin.create()?;
    let mut owner = Node::start(&database.url, LEASE_TTL_MS)?;
    let other = Node::start(&database.url, LEASE_TTL_MS)?;
    runtimes.client.block_on(async {
        create_bench_sale(client, owner.address, "bench").await?;
        let token = bench_tokens(client, other.address, 1).await?[0].clone();
        // The other node serves the sale through its owner before the kill…
        let body = json!({"quantity": 1, "channel": "web"});
        let hold = || {
            send(
                client,
                other.address,
                "/v1/sales/bench/holds",
                &token,
                &body,
            )
        };
        let (status, answer) = hold().await?;
        if status != 201 {
            bail!("a hold through the other node answered {status}: {answer}");
        }
        owner.child.kill()?;
        let killed = Instant::now();
        // …and by itself once the owner's lease has run out. Holds are tried every 20 ms.
        loop {
            let (status, _) = hold().await?;
            if status == 201 {
                return Ok(killed.elapsed().as_secs_f64());
            }
            if killed.elapsed() > Duration::from_secs(60) {
                bail!("no other node served the sale within a minute");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

impl Results {
    fn report(&self, args: &BenchArgs) {
        let rate = |r: &[&RunResult]| median(r.iter().map(|x| x.purchases_per_s).collect());
        println!(
            "holdfast bench --scenario postgres: {} runs x {} s, {} connections, loopback, \
             fsync and synchronous_commit on\n",
            args.runs, args.seconds, args.connections
        );
        println!("| ledger | median purchases/s | p50 µs | p99 µs | errors | runs (purchases/s) |");
        println!("|---|---:|---:|---:|---:|---|");
        let embedded: Vec<&RunResult> = self.embedded.iter().collect();
        let postgres: Vec<&RunResult> = self.postgres.iter().map(|(r, _)| r).collect();
        let one: Vec<&RunResult> = self.one_node.iter().map(|(r, _)| r).collect();
        let three: Vec<&RunResult> = self.three_nodes.iter().map(|(r, _)| r).collect();
        let spread: Vec<&RunResult> = self.three_sales.iter().map(|(r, _)| r).collect();
        for (name, results) in [
            ("embedded SQLite, in process", &embedded),
            ("PostgreSQL, one node in process", &postgres),
            ("PostgreSQL, 1 node process, 1 sale", &one),
            ("PostgreSQL, 3 node processes, 1 sale", &three),
            ("PostgreSQL, 3 node processes, 3 sales", &spread),
        ] {
            println!("{}", table_row(name, results, |r| r.purchases_per_s));
        }
        println!(
            "\nPostgreSQL / SQLite, in process (ratio of medians): {:.2}",
            rate(&postgres) / rate(&embedded)
        );
        println!(
            "3 nodes / 1 node, one sale: {:.2}; three sales: {:.2}",
            rate(&three) / rate(&one),
            rate(&spread) / rate(&one)
        );
        let per = |f: fn(&Costs) -> u64| {
            median(
                self.postgres
                    .iter()
                    .map(|(_, c)| f(c) as f64 / c.purchases.max(1) as f64)
                    .collect(),
            )
        };
        println!(
            "per purchase (hold + confirm), median: {:.3} database commits (all, from \
             pg_stat_database), {:.3} log commits, {:.3} log round trips",
            per(|c| c.commits),
            per(|c| c.log_commits),
            per(|c| c.log_round_trips)
        );
        for (name, runs) in [
            ("1 node, 1 sale", &self.one_node),
            ("3 nodes, 1 sale", &self.three_nodes),
            ("3 nodes, 3 sales", &self.three_sales),
        ] {
            println!(
                "CPU per purchase, {name}, median: {:.3} ms in holdfast nodes, {:.3} ms in \
                 PostgreSQL",
                median(runs.iter().map(|(_, c)| c.nodes_ms).collect()),
                median(runs.iter().map(|(_, c)| c.postgres_ms).collect())
            );
        }
        let failover: Vec<String> = self.failover_s.iter().map(|s| format!("{s:.2}")).collect();
        println!(
            "fail-over, owner SIGKILL to the first hold another node answers (lease {} s): \
             median {:.2} s (runs: {})",
            LEASE_TTL_MS / 1000,
            median(self.failover_s.clone()),
            failover.join(", ")
        );
    }
}
