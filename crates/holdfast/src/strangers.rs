//! `holdfast bench --scenario strangers`: a buyer's hold while strangers hold hundreds of
//! connections open, each trickling a request body in at a byte a second (and reconnecting
//! when cut off, as an attacker would). Measures the buyer's hold latency with and without
//! the strangers, in the same run, and counts any hold refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hdrhistogram::Histogram;
use hyper::Method;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::http::{HttpClient, InProcessServer, ToolData, send_json};

const OPERATOR: &str = "strangers-operator";
/// What each stranger sends: a body promised, never finished.
const SLOW_HEAD: &[u8] = b"POST /pay/ghost/none HTTP/1.1\r\nHost: holdfast\r\n\
    Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nc";

pub struct StrangersArgs<'a> {
    pub strangers: usize,
    pub holds: usize,
    pub runs: usize,
    pub data: Option<&'a std::path::Path>,
}

struct Phase {
    p50_us: u64,
    p99_us: u64,
    refused: u64,
}

pub fn run(args: StrangersArgs<'_>) -> anyhow::Result<()> {
    ensure!(
        args.strangers > 0 && args.holds > 0 && args.runs > 0,
        "--strangers, --holds and --runs must be at least 1"
    );
    let server_runtime = runtime("strangers-server")?;
    let client_runtime = runtime("strangers-client")?;
    let data = ToolData::new(args.data, "strangers")?;
    let server = InProcessServer::start(&server_runtime, &data, OPERATOR)?;
    let result = client_runtime.block_on(measure(server.address, &args));
    server.stop(&server_runtime);
    report(&args, &result?);
    Ok(())
}

fn runtime(name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()?)
}

/// Per run: (without strangers, with strangers).
async fn measure(
    address: SocketAddr,
    args: &StrangersArgs<'_>,
) -> anyhow::Result<Vec<(Phase, Phase)>> {
    let client = crate::http::client(4);
    let base = format!("http://{address}");
    let sale = json!({"id": "drop", "sku": "KF94", "name": "Masks", "price": 39900,
        "stock": 10_000_000, "per_customer_limit": 1, "opens_at": "2020-01-01T00:00:00Z"});
    let (status, answer) = send_json(
        &client,
        Method::POST,
        &format!("{base}/v1/sales"),
        Some(OPERATOR),
        Some(&sale),
    )
    .await?;
    ensure!(
        status == 201,
        "creating the sale answered {status}: {answer}"
    );
    let identity = json!({"customer_id": "buyer", "phone": "010-0000-0001"});
    let (_, answer) = send_json(
        &client,
        Method::POST,
        &format!("{base}/v1/customer-tokens"),
        Some(OPERATOR),
        Some(&identity),
    )
    .await?;
    let buyer = answer["token"].as_str().context("token")?.to_owned();
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        eprintln!("run {run}/{}: {} holds alone", args.runs, args.holds);
        let alone = buyer_holds(&client, &base, &buyer, args.holds).await?;
        eprintln!(
            "run {run}/{}: {} holds beside {} slow strangers",
            args.runs, args.holds, args.strangers
        );
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicU64::new(0));
        let strangers: Vec<_> = (0..args.strangers)
            .map(|_| tokio::spawn(stranger(address, stop.clone(), open.clone())))
            .collect();
        while open.load(Ordering::Relaxed) < args.strangers as u64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let beside = buyer_holds(&client, &base, &buyer, args.holds).await?;
        stop.store(true, Ordering::Relaxed);
        for stranger in strangers {
            let _ = stranger.await;
        }
        runs.push((alone, beside));
    }
    Ok(runs)
}

/// One hold after another, each released again so the limit of one is never in the way.
async fn buyer_holds(
    client: &HttpClient,
    base: &str,
    token: &str,
    holds: usize,
) -> anyhow::Result<Phase> {
    let mut latency = Histogram::<u64>::new(3)?;
    let mut refused = 0;
    let body = json!({"quantity": 1, "channel": "web"});
    for _ in 0..holds {
        let started = Instant::now();
        let (status, answer) = send_json(
            client,
            Method::POST,
            &format!("{base}/v1/sales/drop/holds"),
            Some(token),
            Some(&body),
        )
        .await?;
        latency.record(started.elapsed().as_micros() as u64)?;
        if status != 201 {
            refused += 1;
            continue;
        }
        let hold = answer["hold_id"].as_str().context("hold_id")?;
        let (status, _) = send_json(
            client,
            Method::DELETE,
            &format!("{base}/v1/holds/{hold}"),
            Some(token),
            None,
        )
        .await?;
        ensure!(status == 200, "releasing a hold answered {status}");
    }
    Ok(Phase {
        p50_us: latency.value_at_quantile(0.5),
        p99_us: latency.value_at_quantile(0.99),
        refused,
    })
}

/// Holds a connection open with a body that never finishes, a byte a second, and comes back
/// whenever the server cuts it off.
async fn stranger(address: SocketAddr, stop: Arc<AtomicBool>, open: Arc<AtomicU64>) {
    let mut counted = false;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if stream.write_all(SLOW_HEAD).await.is_err() {
            continue;
        }
        if !counted {
            open.fetch_add(1, Ordering::Relaxed);
            counted = true;
        }
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if stream.write_all(b"c").await.is_err() {
                break;
            }
        }
    }
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

fn report(args: &StrangersArgs<'_>, runs: &[(Phase, Phase)]) {
    let alone_p50 = median(runs.iter().map(|(a, _)| a.p50_us).collect());
    let beside_p50 = median(runs.iter().map(|(_, b)| b.p50_us).collect());
    let alone_p99 = median(runs.iter().map(|(a, _)| a.p99_us).collect());
    let beside_p99 = median(runs.iter().map(|(_, b)| b.p99_us).collect());
    let refused: u64 = runs.iter().map(|(a, b)| a.refused + b.refused).sum();
    println!(
        "holdfast bench --scenario strangers: {} runs, {} holds each, {} slow strangers\n",
        args.runs, args.holds, args.strangers
    );
    println!("| buyer's hold | median p50 µs | median p99 µs | runs p50 µs |");
    println!("|---|---:|---:|---|");
    for (name, pick) in [("alone", 0), ("beside the strangers", 1)] {
        let p50s: Vec<String> = runs
            .iter()
            .map(|(a, b)| if pick == 0 { a.p50_us } else { b.p50_us }.to_string())
            .collect();
        let (p50, p99) = if pick == 0 {
            (alone_p50, alone_p99)
        } else {
            (beside_p50, beside_p99)
        };
        println!("| {name} | {p50} | {p99} | {} |", p50s.join(", "));
    }
    println!(
        "\nbeside / alone (ratio of median p50): {:.2}; holds refused: {refused}",
        beside_p50 as f64 / alone_p50.max(1) as f64
    );
}
