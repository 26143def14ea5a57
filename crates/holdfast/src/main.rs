//! `holdfast`: one binary for the server and its tools.

mod bench;
mod cluster_bench;
mod compaction_bench;
mod http;
mod load;
mod log_dump;
mod peer;
mod progress;
mod replay;
mod sellout;
mod storm;
mod strangers;
mod sustained;
mod verify;

/// The server allocates small, short-lived objects per request on several threads, the case
/// glibc's allocator handles worst; mimalloc cut CPU per request measurably (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use holdfast_server::payments::{NetworkConditions, SimulatedAcquirer};
use holdfast_server::{Application, ClusterConfig, Config, OperatorTokenSource};

#[derive(Parser)]
#[command(
    name = "holdfast",
    version,
    about = "A commerce engine for flash sales and outages: exact stock, durable, fair.",
    long_about = "A commerce engine for flash sales and outages: exact stock, durable, fair.\n\n\
        Start a server with `holdfast serve`; it keeps its data in ./holdfast-data and needs no \
        other setup. The operator token (for creating sales) comes from HOLDFAST_OPERATOR_TOKEN \
        or --operator-token-file; without either, one is made at the first start and kept in the \
        data directory (file operator-token, readable by its owner only)."
)]
struct Cli {
    /// Log lines as plain text (coloured only on a terminal) or as JSON objects for collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the HTTP server on an embedded store (no setup needed).
    Serve {
        /// Address and port to listen on.
        #[arg(short, long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Directory for the durable log and the server's secrets; created if missing.
        #[arg(short, long, default_value = "./holdfast-data")]
        data: PathBuf,
        /// A file holding the operator token (instead of HOLDFAST_OPERATOR_TOKEN; a token on
        /// the command line would show in process listings, so there is no such option).
        #[arg(long)]
        operator_token_file: Option<PathBuf>,
        /// A PostgreSQL database several nodes share (postgres://user@host:port/name), instead
        /// of the embedded log in --data. Every node needs the same operator token.
        #[arg(long, env = "HOLDFAST_DATABASE_URL", hide_env_values = true)]
        database: Option<String>,
        /// With --database: where the other nodes reach this one [default: http://<listen>,
        /// with an unspecified address read as 127.0.0.1].
        #[arg(long)]
        advertise: Option<String>,
        /// With --database: how long, in milliseconds, a node's hold on a sale lasts without
        /// renewal — how soon another node takes over the sales of one that died.
        #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(500..=60_000))]
        lease_ttl_ms: u64,
        /// Events a sale writes between two snapshots of it, at least: a sale then waits as many
        /// events as its last snapshot held records, so snapshots grow rarer as it grows. Fewer:
        /// faster restarts, more background work.
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
        snapshot_every_events: u64,
        /// Simulated card network: milliseconds added to every call.
        #[arg(long, default_value_t = 0)]
        card_latency_ms: u64,
        /// Simulated card network: declines per 1,000 authorisations (besides `tok_declined`).
        #[arg(long, default_value_t = 0)]
        card_declines_per_mille: u32,
    },
    /// Measure hold+confirm over HTTP against a bare endpoint, and the core alone.
    Bench(bench::BenchArgs),
    /// Drive simulated shoppers through join, poll, hold and confirm, and report.
    Load(load::LoadArgs),
    /// Replay an incident (or your own sale) on a virtual clock, with an HTML report.
    Replay(replay::ReplayArgs),
    /// Read a data directory's log: `holdfast log dump` prints it as JSON lines.
    Log(log_dump::LogArgs),
    /// Recompute a sale's lottery from its published draw and check it.
    VerifyDraw(verify::VerifyDrawArgs),
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        // Colour codes only where a person reads them: not in files or collectors.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("install SIGTERM handler");
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// The operator token from the environment or the named file; `None` lets the server keep its
/// own in the data directory.
fn configured_operator_token(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(file) = file {
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the operator token file {}", file.display()))?;
        anyhow::ensure!(
            !token.trim().is_empty(),
            "the operator token file {} is empty",
            file.display()
        );
        return Ok(Some(token.trim().to_owned()));
    }
    Ok(std::env::var("HOLDFAST_OPERATOR_TOKEN")
        .ok()
        .filter(|t| !t.is_empty()))
}

/// Several nodes on one database: the URL and this node's address checked before anything
/// starts.
fn cluster_config(
    database_url: String,
    advertise: Option<String>,
    lease_ttl_ms: u64,
) -> anyhow::Result<ClusterConfig> {
    anyhow::ensure!(
        database_url.starts_with("postgres://") || database_url.starts_with("postgresql://"),
        "--database takes a PostgreSQL URL such as postgres://holdfast@127.0.0.1:5432/holdfast"
    );
    let advertise = match advertise {
        Some(raw) => http::server_url(&raw).map_err(|why| anyhow::anyhow!("--advertise: {why}"))?,
        None => String::new(),
    };
    Ok(ClusterConfig {
        database_url,
        advertise,
        lease_ttl: std::time::Duration::from_millis(lease_ttl_ms),
    })
}

async fn serve(
    listen: SocketAddr,
    data: PathBuf,
    operator_token: Option<String>,
    card: NetworkConditions,
    cluster: Option<ClusterConfig>,
    snapshot_every_events: u64,
) -> anyhow::Result<()> {
    let mut config = Config::new(listen, data.clone(), operator_token);
    config.limits.snapshot_every_events = snapshot_every_events;
    let shared = cluster.is_some();
    config.cluster = cluster;
    // No card network is reachable from here: the simulator stands in for the acquirer.
    config.payments = Arc::new(SimulatedAcquirer::new(card, config.clock.clone()));
    let app = Application::build(config).await?;
    // Scripts and tests wait for this line; keep its shape.
    say(&format!(
        "holdfast listening on http://{}",
        app.local_addr()
    ));
    match app.operator_token_source() {
        OperatorTokenSource::Configured => {
            say("operator token: as configured (HOLDFAST_OPERATOR_TOKEN or --operator-token-file)")
        }
        OperatorTokenSource::Created(path) => say(&format!(
            "operator token: {} (made now and kept in {}; set HOLDFAST_OPERATOR_TOKEN to choose your own)",
            app.operator_token(),
            path.display()
        )),
        OperatorTokenSource::Kept(path) => {
            say(&format!("operator token: kept in {}", path.display()))
        }
    }
    if shared {
        say("ledger: the PostgreSQL database given, shared with any other node on it");
        tracing::info!("serving as one node of several");
    } else {
        tracing::info!(data = %data.display(), "serving");
    }
    app.run_until(shutdown_signal()).await?;
    tracing::info!("shut down: requests in flight were answered");
    Ok(())
}

/// Prints a line; a closed output (a pipe whose reader left) must not stop the server.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Commands::Serve {
            listen,
            data,
            operator_token_file,
            database,
            advertise,
            lease_ttl_ms,
            snapshot_every_events,
            card_latency_ms,
            card_declines_per_mille,
        } => {
            let card = NetworkConditions {
                latency: std::time::Duration::from_millis(card_latency_ms),
                declines_per_mille: card_declines_per_mille.min(1000),
                outages: Vec::new(),
            };
            let token = configured_operator_token(operator_token_file.as_deref())?;
            let cluster = database
                .map(|url| cluster_config(url, advertise, lease_ttl_ms))
                .transpose()?;
            tokio::runtime::Runtime::new()?.block_on(serve(
                listen,
                data,
                token,
                card,
                cluster,
                snapshot_every_events,
            ))
        }
        Commands::Bench(args) => bench::run(args),
        Commands::Load(args) => load::run(args),
        Commands::Log(args) => log_dump::run(args),
        Commands::Replay(args) => replay::run(args),
        Commands::VerifyDraw(args) => verify::run(args),
    }
}

/// Errors are told in one line with their causes (`error: what: why`), never as a stack trace,
/// whatever RUST_BACKTRACE says: they are for the person who ran the command.
fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr().lock(), "error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
