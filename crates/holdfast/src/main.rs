//! `holdfast`: one binary for the server and its tools.

mod bench;
mod http;
mod load;
mod storm;
mod strangers;
mod verify;

/// The server allocates small, short-lived objects per request on several threads, the case
/// glibc's allocator handles worst; mimalloc cut CPU per request measurably (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use holdfast_server::payments::{NetworkConditions, SimulatedAcquirer};
use holdfast_server::{Application, Config};

#[derive(Parser)]
#[command(
    name = "holdfast",
    version,
    about = "A commerce engine for flash sales and outages: exact stock, durable, fair.",
    long_about = "A commerce engine for flash sales and outages: exact stock, durable, fair.\n\n\
        Start a server with `holdfast serve`; it keeps its data in ./holdfast-data and needs no \
        other setup. The operator token (for creating sales) comes from HOLDFAST_OPERATOR_TOKEN, \
        or is generated and printed at start-up."
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the HTTP server on an embedded store (no setup needed).
    Serve {
        /// Address and port to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Directory for the durable log; created if missing.
        #[arg(long, default_value = "./holdfast-data")]
        data: PathBuf,
        /// The operator's bearer token. Generated and printed when not given.
        #[arg(long, env = "HOLDFAST_OPERATOR_TOKEN", hide_env_values = true)]
        operator_token: Option<String>,
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
    /// Recompute a sale's lottery from its published draw and check it.
    VerifyDraw(verify::VerifyDrawArgs),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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

async fn serve(
    listen: SocketAddr,
    data: PathBuf,
    operator_token: Option<String>,
    card: NetworkConditions,
) -> anyhow::Result<()> {
    let mut config = Config::new(listen, data.clone(), operator_token);
    // No card network is reachable from here: the simulator stands in for the acquirer.
    config.payments = Arc::new(SimulatedAcquirer::new(card, config.clock.clone()));
    let app = Application::build(config).await?;
    // Scripts and tests wait for this line; keep its shape.
    println!("holdfast listening on http://{}", app.local_addr());
    if app.operator_token_generated() {
        println!("operator token: {}", app.operator_token());
        println!("(set HOLDFAST_OPERATOR_TOKEN to choose your own)");
    }
    tracing::info!(data = %data.display(), "serving");
    app.run_until(shutdown_signal()).await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Commands::Serve {
            listen,
            data,
            operator_token,
            card_latency_ms,
            card_declines_per_mille,
        } => {
            let card = NetworkConditions {
                latency: std::time::Duration::from_millis(card_latency_ms),
                declines_per_mille: card_declines_per_mille.min(1000),
                outages: Vec::new(),
            };
            tokio::runtime::Runtime::new()?.block_on(serve(listen, data, operator_token, card))
        }
        Commands::Bench(args) => bench::run(args),
        Commands::Load(args) => load::run(args),
        Commands::VerifyDraw(args) => verify::run(args),
    }
}
