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
use hyper::Method;
use hyper::body::Bytes;
use serde_json::{Value, json};

use crate::http::{HttpClient, InProcessServer, send_json, send_raw, send_raw_retry_after};

const OPERATOR: &str = "storm-operator";
const LIVE_CONNECTIONS: usize = 64;

pub struct StormArgs {
    pub terminals: usize,
    pub entries: usize,
    pub baseline: Duration,
    pub data: std::path::PathBuf,
}

struct Terminal {
    id: String,
    secret: Vec<u8>,
    journal: Vec<JournalEntry>,
}

pub fn run(args: StormArgs) -> anyhow::Result<()> {
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
    let server = InProcessServer::start(&server_runtime, &args.data, OPERATOR)?;
    let result = client_runtime.block_on(storm(server.address, &args));
    server.stop(&server_runtime);
    let _ = std::fs::remove_dir_all(&args.data);
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

async fn storm(address: SocketAddr, args: &StormArgs) -> anyhow::Result<()> {
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
        let bodies: Vec<Vec<u8>> = (0..args.entries)
            .map(|i| format!(r#"{{"lines":[{{"sku":"TEA","quantity":1,"unit_price":3000}}],"tender":{{"kind":"cash"}},"at":{i}}}"#).into_bytes())
            .collect();
        let refs: Vec<&[u8]> = bodies.iter().map(|b| b.as_slice()).collect();
        terminals.push(Terminal {
            id,
            secret: hex::decode(answer["secret"].as_str().context("secret")?)?,
            journal: chain(&refs),
        });
    }

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
        .map(|t| tokio::spawn(sync_all(client.clone(), address, t, deferred.clone())))
        .collect();
    let mut acked = Vec::new();
    for sync in syncs {
        acked.push(sync.await??);
    }
    let storm_finished = Instant::now();
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
        "holdfast bench --scenario storm: {} terminals x {} offline sales, {LIVE_CONNECTIONS} live shoppers",
        args.terminals, args.entries
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
) -> anyhow::Result<u64> {
    let path = format!("/v1/terminals/{}/sync", terminal.id);
    let url = format!("http://{address}{path}");
    let mut acked = 0u64;
    while acked < terminal.journal.len() as u64 {
        let entries: Vec<Value> = terminal.journal[acked as usize..]
            .iter()
            .take(holdfast_server::terminals::SYNC_ENTRIES_MAX)
            .map(|e| json!({"seq": e.seq, "prev": e.prev.to_hex(), "body": String::from_utf8_lossy(&e.body)}))
            .collect();
        let body = serde_json::to_vec(&json!({"entries": entries}))?;
        let nonce = format!("{:032x}", rand::random::<u128>());
        let request = SignedRequest {
            method: "POST",
            path: &path,
            signed_at: holdfast_server::clock::SystemClock.now(),
            nonce: &nonce,
            body: &body,
        };
        let authorization =
            Authorization::sign(&terminal.id, &terminal.secret, &request).header_value();
        let (status, retry_after, answer) = send_raw_retry_after(
            &client,
            Method::POST,
            &url,
            Some(&authorization),
            None,
            Bytes::from(body),
        )
        .await?;
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
