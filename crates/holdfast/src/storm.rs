//! `holdfast bench --scenario storm`: many terminals, each with a journal of offline sales,
//! reconnect at the same instant while shoppers keep buying. Measures the time until every
//! journal is acknowledged, and live shopper latency before and during the storm.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hdrhistogram::Histogram;
use holdfast_core::terminal::auth::{Authorization, SignedRequest};
use holdfast_core::terminal::{JournalEntry, chain};
use holdfast_server::clock::Clock;
use holdfast_server::terminals::SYNC_ENTRIES_MAX;
use hyper::Method;
use hyper::body::Bytes;
use serde_json::{Value, json};

use crate::http::{
    HttpClient, InProcessServer, ToolData, send_json, send_raw, send_raw_retry_after,
};

const OPERATOR: &str = "storm-operator";
const LIVE_CONNECTIONS: usize = 64;

pub struct StormArgs<'a> {
    pub terminals: usize,
    pub entries: usize,
    pub baseline: Duration,
    pub data: Option<&'a std::path::Path>,
}

struct Terminal {
    id: String,
    secret: Vec<u8>,
    journal: Vec<JournalEntry>,
}

pub fn run(args: StormArgs<'_>) -> anyhow::Result<()> {
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("storm-server")
        .enable_all()
        .build()?;
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("storm-client")
        .enable_all()
        .build()?;
    let data = ToolData::new(args.data, "storm")?;
    let server = InProcessServer::start(&server_runtime, &data, OPERATOR)?;
    let result = client_runtime.block_on(storm(server.address, &args));
    server.stop(&server_runtime);
    result
}

async fn operator(
    client: &HttpClient,
    address: SocketAddr,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let (status, answer) = send_json(
        client,
        Method::POST,
        &format!("http://{address}{path}"),
        Some(OPERATOR),
        Some(&body),
    )
    .await?;
    ensure!(
        (200..300).contains(&status),
        "{path} answered {status}: {answer}"
    );
    Ok(answer)
}

async fn storm(address: SocketAddr, args: &StormArgs<'_>) -> anyhow::Result<()> {
    let client = crate::http::client(LIVE_CONNECTIONS + args.terminals);
    let sale = json!({"id": "live", "sku": "L", "name": "Live stock", "price": 1000, "stock": 10_000_000,
        "per_customer_limit": 1_000_000, "opens_at": "2020-01-01T00:00:00Z"});
    operator(&client, address, "/v1/sales", sale).await?;
    let mut tokens = Vec::new();
    for n in 0..LIVE_CONNECTIONS {
        let answer = operator(
            &client,
            address,
            "/v1/customer-tokens",
            json!({"customer_id": format!("live-{n}")}),
        )
        .await?;
        tokens.push(format!(
            "Bearer {}",
            answer["token"].as_str().context("token")?
        ));
    }
    eprintln!(
        "registering {} terminals, building {} journal entries each",
        args.terminals, args.entries
    );
    let scarce_per_till = args.entries.div_ceil(SCARCE_EVERY) as u32;
    let scarce = json!({"id": "scarce", "sku": "KF94", "name": "Masks", "price": SCARCE_PRICE,
        "stock": scarce_per_till as usize * args.terminals, "per_customer_limit": 1,
        "opens_at": "2020-01-01T00:00:00Z"});
    operator(&client, address, "/v1/sales", scarce).await?;
    let mut terminals = Vec::new();
    for n in 0..args.terminals {
        let id = format!("till-{n}");
        let answer = operator(
            &client,
            address,
            "/v1/terminals",
            json!({"terminal_id": id, "store": format!("store-{}", n % 97)}),
        )
        .await?;
        let terminal = Terminal {
            journal: offline_journal(n, args.entries, SCARCE_EVERY),
            secret: hex::decode(answer["secret"].as_str().context("secret")?)?,
            id,
        };
        let path = format!("/v1/terminals/{}/allotments", terminal.id);
        let body = serde_json::to_vec(&json!({"sale_id": "scarce", "quantity": scarce_per_till}))?;
        let (status, _, granted) = signed_post(&client, address, &terminal, &path, body).await?;
        ensure!(
            status == 200,
            "allotment answered {status}: {}",
            String::from_utf8_lossy(&granted)
        );
        terminals.push(terminal);
    }
    let commits_before = log_commits(&client, address).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let live: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(n, token)| tokio::spawn(shopper(client.clone(), address, token, n, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1) + args.baseline).await;
    eprintln!("storm: {} terminals reconnect at once", args.terminals);
    let deferred = Arc::new(AtomicU64::new(0));
    let storm_started = Instant::now();
    let syncs: Vec<_> = terminals
        .into_iter()
        .map(|t| {
            let deferred = deferred.clone();
            tokio::spawn(sync_all(
                client.clone(),
                address,
                t,
                deferred,
                SYNC_ENTRIES_MAX,
            ))
        })
        .collect();
    let mut acked = Vec::new();
    for sync in syncs {
        acked.push(sync.await??);
    }
    let storm_finished = Instant::now();
    let commits = log_commits(&client, address).await? - commits_before;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for task in live {
        samples.extend(task.await??);
    }
    let mut baseline = Histogram::<u64>::new(3)?;
    let mut during = Histogram::<u64>::new(3)?;
    let baseline_from = storm_started - args.baseline;
    for (started, micros) in samples {
        if started >= baseline_from && started < storm_started {
            baseline.record(micros)?;
        } else if started >= storm_started && started < storm_finished {
            during.record(micros)?;
        }
    }
    let all_synced = acked.iter().all(|&a| a == args.entries as u64);
    let elapsed = storm_finished - storm_started;
    let entries = (args.terminals * args.entries) as f64;
    println!(
        "holdfast bench --scenario storm: {} terminals x {} offline sales (every {SCARCE_EVERY}th a scarce unit from the till's allotment, every {SCARCE_EVERY}th+1 a pay-later receivable), {LIVE_CONNECTIONS} live shoppers",
        args.terminals, args.entries
    );
    let scarce_sold =
        operator_get(&client, address, "/v1/sales/scarce").await?["stock"]["sold"].clone();
    println!(
        "scarce units recorded sold: {scarce_sold} (of {} sold at the tills)",
        scarce_per_till as usize * args.terminals
    );
    println!(
        "durable commits during the storm: {commits} ({:.1} entries per commit)",
        (args.terminals * args.entries) as f64 / commits.max(1) as f64
    );
    println!(
        "all journals acknowledged in full: {all_synced} (each entry applied once: the server accepts only the next entry of each chain)"
    );
    println!(
        "storm duration:      {:.2} s ({:.0} entries/s)",
        elapsed.as_secs_f64(),
        entries / elapsed.as_secs_f64()
    );
    println!(
        "syncs told to wait:  {} (429 + Retry-After, honoured)",
        deferred.load(Ordering::Relaxed)
    );
    for (name, h) in [
        ("live, before storm", &baseline),
        ("live, during storm", &during),
    ] {
        println!(
            "{name:<20} p50 {} µs, p99 {} µs ({} requests)",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.len()
        );
    }
    if !baseline.is_empty() && !during.is_empty() {
        println!(
            "live p99 during / before: {:.2}",
            during.value_at_quantile(0.99) as f64 / baseline.value_at_quantile(0.99) as f64
        );
    }
    ensure!(all_synced, "some journal was not fully acknowledged");
    Ok(())
}

/// A live shopper buying in a loop until told to stop; returns (start, latency µs) per request.
async fn shopper(
    client: HttpClient,
    address: SocketAddr,
    token: String,
    n: usize,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<(Instant, u64)>> {
    let hold_url = format!("http://{address}/v1/sales/live/holds");
    let hold = Bytes::from_static(br#"{"quantity":1,"channel":"web"}"#);
    let confirm = Bytes::from_static(br#"{"payment":{"method":"card","token":"tok_visa"}}"#);
    let mut samples = Vec::new();
    for i in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let started = Instant::now();
        let (status, body) = send_raw(
            &client,
            Method::POST,
            &hold_url,
            Some(&token),
            Some(&format!("h{n}-{i}")),
            hold.clone(),
        )
        .await?;
        samples.push((started, started.elapsed().as_micros() as u64));
        if status != 201 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let answer: Value = serde_json::from_slice(&body)?;
        let url = format!(
            "http://{address}/v1/holds/{}/confirm",
            answer["hold_id"].as_str().unwrap_or_default()
        );
        let started = Instant::now();
        send_raw(
            &client,
            Method::POST,
            &url,
            Some(&token),
            Some(&format!("c{n}-{i}")),
            confirm.clone(),
        )
        .await?;
        samples.push((started, started.elapsed().as_micros() as u64));
    }
    Ok(samples)
}

/// Uploads a terminal's whole journal, signed, waiting whenever the server says so.
async fn sync_all(
    client: HttpClient,
    address: SocketAddr,
    terminal: Terminal,
    deferred: Arc<AtomicU64>,
    entries_per_request: usize,
) -> anyhow::Result<u64> {
    let path = format!("/v1/terminals/{}/sync", terminal.id);
    let mut acked = 0u64;
    while acked < terminal.journal.len() as u64 {
        let entries: Vec<Value> = terminal.journal[acked as usize..]
            .iter()
            .take(entries_per_request)
            .map(|e| json!({"seq": e.seq, "prev": e.prev.to_hex(), "body": String::from_utf8_lossy(&e.body)}))
            .collect();
        let body = serde_json::to_vec(&json!({"entries": entries}))?;
        let (status, retry_after, answer) =
            signed_post(&client, address, &terminal, &path, body).await?;
        match status {
            200 => {
                let answer: Value = serde_json::from_slice(&answer)?;
                acked = answer["acked_through"].as_u64().context("acked_through")?;
            }
            429 => {
                deferred.fetch_add(1, Ordering::Relaxed);
                // A terminal told to wait, waits: as long as the server said.
                tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1))).await;
            }
            other => anyhow::bail!(
                "sync of {} answered {other}: {}",
                terminal.id,
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    Ok(acked)
}

const SCARCE_EVERY: usize = 5;
const SCARCE_PRICE: u64 = 39_900;

/// A till's journal of offline sales: tea for cash, every `scarce_every`th a scarce unit out
/// of its allotment, the one after it a pay-later sale that opens a receivable.
fn offline_journal(till: usize, entries: usize, scarce_every: usize) -> Vec<JournalEntry> {
    let at = holdfast_server::clock::SystemClock.now().0;
    let bodies: Vec<Vec<u8>> = (0..entries)
        .map(|i| {
            let body = match i % scarce_every {
                0 => json!({"lines": [{"sku": "KF94", "name": "Masks", "quantity": 1,
                    "unit_price": SCARCE_PRICE, "sale_id": "scarce"}], "total": SCARCE_PRICE,
                    "tender": {"kind": "cash"}, "at": at + i as i64}),
                1 => json!({"lines": [{"sku": "TEA", "quantity": 1, "unit_price": 3000}],
                    "total": 3000, "tender": {"kind": "pay_later", "phone": "010-0000-0000",
                    "receivable": format!("R-{till}-{i}")}, "at": at + i as i64}),
                _ => json!({"lines": [{"sku": "TEA", "quantity": 1, "unit_price": 3000}],
                    "total": 3000, "tender": {"kind": "cash"}, "at": at + i as i64}),
            };
            body.to_string().into_bytes()
        })
        .collect();
    let refs: Vec<&[u8]> = bodies.iter().map(|b| b.as_slice()).collect();
    chain(&refs)
}

/// A request signed by `terminal`, sent once: the status, `Retry-After`, and the answer.
async fn signed_post(
    client: &HttpClient,
    address: SocketAddr,
    terminal: &Terminal,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<(u16, Option<u64>, Bytes)> {
    let nonce = format!("{:032x}", rand::random::<u128>());
    let request = SignedRequest {
        method: "POST",
        path,
        signed_at: holdfast_server::clock::SystemClock.now(),
        nonce: &nonce,
        body: &body,
    };
    let authorization =
        Authorization::sign(&terminal.id, &terminal.secret, &request).header_value();
    send_raw_retry_after(
        client,
        Method::POST,
        &format!("http://{address}{path}"),
        Some(&authorization),
        None,
        Bytes::from(body),
    )
    .await
}

async fn operator_get(
    client: &HttpClient,
    address: SocketAddr,
    path: &str,
) -> anyhow::Result<Value> {
    let (status, answer) = send_json(
        client,
        Method::GET,
        &format!("http://{address}{path}"),
        Some(OPERATOR),
        None,
    )
    .await?;
    ensure!(status == 200, "{path} answered {status}: {answer}");
    Ok(answer)
}

/// Durable commits the server's log has made so far, from its `/metrics`.
pub async fn log_commits(client: &HttpClient, address: SocketAddr) -> anyhow::Result<u64> {
    let (_, page) = send_raw(
        client,
        Method::GET,
        &format!("http://{address}/metrics"),
        None,
        None,
        Bytes::new(),
    )
    .await?;
    Ok(String::from_utf8_lossy(&page)
        .lines()
        .find_map(|line| line.strip_prefix("holdfast_log_batches_per_commit_count "))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

pub struct TillSyncArgs<'a> {
    pub entries: usize,
    pub runs: usize,
    pub data: Option<&'a std::path::Path>,
}

/// `holdfast bench --scenario till-sync`: one till's journal of scarce sales uploaded as the
/// agent does (500 entries a request, each sale's entries applied as one batch), against the
/// same journal uploaded one entry per request (one durable write each), on one server, runs
/// interleaved.
pub fn till_sync(args: TillSyncArgs<'_>) -> anyhow::Result<()> {
    let server_runtime = runtime("till-sync-server")?;
    let client_runtime = runtime("till-sync-client")?;
    let data = ToolData::new(args.data, "storm")?;
    let server = InProcessServer::start(&server_runtime, &data, OPERATOR)?;
    let result = client_runtime.block_on(till_sync_runs(server.address, &args));
    server.stop(&server_runtime);
    let runs = result?;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "holdfast bench --scenario till-sync: {} runs, a journal of {} scarce sales each way\n",
        args.runs, args.entries
    );
    println!("| upload | median entries/s | median durable commits | runs (entries/s) |");
    println!("|---|---:|---:|---|");
    for (name, pick) in [
        ("500 entries a request (the agent)", 0),
        ("one entry a request", 1),
    ] {
        let rates: Vec<f64> = runs.iter().map(|r| r[pick].0).collect();
        let commits: Vec<f64> = runs.iter().map(|r| r[pick].1 as f64).collect();
        let list: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "| {name} | {:.0} | {:.0} | {} |",
            median(rates.clone()),
            median(commits),
            list.join(", ")
        );
    }
    let batched = median(runs.iter().map(|r| r[0].0).collect());
    let single = median(runs.iter().map(|r| r[1].0).collect());
    println!(
        "\nbatched / one per request (ratio of medians): {:.1}",
        batched / single
    );
    Ok(())
}

fn runtime(name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()?)
}

/// Per run: [(entries/s, commits)] batched, then one per request.
async fn till_sync_runs(
    address: SocketAddr,
    args: &TillSyncArgs<'_>,
) -> anyhow::Result<Vec<[(f64, u64); 2]>> {
    let client = crate::http::client(4);
    let stock = args.entries * 2 * args.runs;
    let sale = json!({"id": "scarce", "sku": "KF94", "name": "Masks", "price": SCARCE_PRICE,
        "stock": stock, "per_customer_limit": 1, "opens_at": "2020-01-01T00:00:00Z"});
    operator(&client, address, "/v1/sales", sale).await?;
    let mut runs = Vec::new();
    for run in 0..args.runs {
        let mut measured = [(0.0, 0); 2];
        for (way, per_request) in [(0, 500), (1, 1)] {
            eprintln!(
                "run {}/{}: {} entries, {per_request} a request",
                run + 1,
                args.runs,
                args.entries
            );
            let id = format!("till-{run}-{way}");
            let answer = operator(
                &client,
                address,
                "/v1/terminals",
                json!({"terminal_id": id, "store": "bench"}),
            )
            .await?;
            let terminal = Terminal {
                journal: offline_journal(run, args.entries, 1),
                secret: hex::decode(answer["secret"].as_str().context("secret")?)?,
                id,
            };
            let path = format!("/v1/terminals/{}/allotments", terminal.id);
            let body = serde_json::to_vec(&json!({"sale_id": "scarce", "quantity": args.entries}))?;
            let (status, _, _) = signed_post(&client, address, &terminal, &path, body).await?;
            ensure!(status == 200, "allotment answered {status}");
            let commits_before = log_commits(&client, address).await?;
            let started = Instant::now();
            let deferred = Arc::new(AtomicU64::new(0));
            let acked = sync_all(client.clone(), address, terminal, deferred, per_request).await?;
            let elapsed = started.elapsed().as_secs_f64();
            ensure!(acked == args.entries as u64, "only {acked} acknowledged");
            let commits = log_commits(&client, address).await? - commits_before;
            measured[way] = (args.entries as f64 / elapsed, commits);
        }
        runs.push(measured);
    }
    let sold = operator_get(&client, address, "/v1/sales/scarce").await?["stock"]["sold"].as_u64();
    ensure!(
        sold == Some((args.entries * 2 * args.runs) as u64),
        "every scarce sale recorded once: {sold:?}"
    );
    Ok(runs)
}
