//! `holdfast load`: simulated shoppers over real HTTP, through join → poll → hold → confirm.
//!
//! Bounded in shoppers, in requests in flight and in time; it stops by itself. Without `--url`
//! it starts its own server in this process on a fresh data directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use hyper::Method;
use indicatif::ProgressBar;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::http::{HttpClient, InProcessServer, ToolData, send_json, send_json_retry_after};

#[derive(Args)]
pub struct LoadArgs {
    /// Server to drive, like http://127.0.0.1:8080 (its operator token in
    /// HOLDFAST_OPERATOR_TOKEN). Without it, one is started in-process.
    #[arg(long, value_parser = crate::http::server_url)]
    url: Option<String>,
    /// Simulated shoppers, each with their own account and phone number.
    #[arg(long, default_value_t = 10_000)]
    shoppers: usize,
    /// Units on sale.
    #[arg(long, default_value_t = 4_000)]
    stock: u32,
    /// Units per person.
    #[arg(long, default_value_t = 1)]
    limit: u32,
    /// How shoppers are admitted.
    #[arg(long, value_enum, default_value_t = QueueArg::Fifo)]
    queue: QueueArg,
    /// Waiting room admissions per second.
    #[arg(long, default_value_t = 2_000)]
    admission_per_s: u32,
    /// Seconds from creating the sale to its opening; shoppers join in the meantime.
    #[arg(long, default_value_t = 5)]
    opens_in_s: u64,
    /// Requests in flight at most, across all shoppers.
    #[arg(long, default_value_t = 512)]
    in_flight: usize,
    /// Stop after this many seconds, whatever is still going on.
    #[arg(long, default_value_t = 300)]
    deadline_s: u64,
    /// Only join and poll, never buy, for --poll-for-s seconds: the waiting room under load.
    #[arg(long)]
    poll_only: bool,
    /// Seconds of polling with --poll-only.
    #[arg(long, default_value_t = 30)]
    poll_for_s: u64,
    /// Poll every this many milliseconds instead of following the server's `poll_after_s`.
    #[arg(long)]
    poll_every_ms: Option<u64>,
    /// Process id of the server given by --url, to report its peak memory.
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long, help = crate::http::DATA_HELP)]
    data: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum QueueArg {
    None,
    Fifo,
    Lottery,
}

impl QueueArg {
    fn name(self) -> &'static str {
        match self {
            QueueArg::None => "none",
            QueueArg::Fifo => "fifo",
            QueueArg::Lottery => "lottery",
        }
    }
}

const OPERATOR_IN_PROCESS: &str = "load-operator";
/// The pause after an overload or a failed connection when the server names none.
const RETRY_AFTER_DEFAULT: Duration = Duration::from_secs(1);

/// Everything measured, shared by all shoppers.
#[derive(Default)]
struct Stats {
    statuses: HashMap<u16, u64>,
    transport_errors: u64,
    latency_us: Option<Histogram<u64>>,
    poll_latency_us: Option<Histogram<u64>>,
    /// (queue position, when the confirm was answered) for every purchase.
    purchases: Vec<(u32, Instant)>,
    outcomes: HashMap<&'static str, u64>,
}

struct Shop {
    client: HttpClient,
    base: String,
    sale: String,
    in_flight: Semaphore,
    stats: Mutex<Stats>,
    deadline: Instant,
    poll_until: Option<Instant>,
    poll_every: Option<Duration>,
    queued: bool,
}

enum Answer {
    Status(u16, Value),
    /// Overloaded, or the connection failed: wait and try again.
    Retry(Duration),
}

impl Shop {
    async fn request(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
        poll: bool,
    ) -> Answer {
        let _slot = self
            .in_flight
            .acquire()
            .await
            .expect("semaphore stays open");
        let started = Instant::now();
        let url = format!("{}{path}", self.base);
        let result = send_json_retry_after(&self.client, method, &url, Some(token), body).await;
        let elapsed = started.elapsed().as_micros() as u64;
        let mut stats = self.stats.lock().expect("stats");
        let histogram = if poll {
            &mut stats.poll_latency_us
        } else {
            &mut stats.latency_us
        };
        let _ = histogram
            .get_or_insert_with(|| Histogram::new(3).expect("histogram"))
            .record(elapsed);
        match result {
            Ok((status, retry_after, value)) => {
                *stats.statuses.entry(status).or_default() += 1;
                if status == 429 || status == 503 {
                    // Wait as long as the server asks: it asks for longer when many are waiting.
                    Answer::Retry(retry_after.map_or(RETRY_AFTER_DEFAULT, Duration::from_secs))
                } else {
                    Answer::Status(status, value)
                }
            }
            Err(_) => {
                stats.transport_errors += 1;
                Answer::Retry(RETRY_AFTER_DEFAULT)
            }
        }
    }

    /// Sends until answered (retrying overloads after a pause), or gives up at the deadline.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
        poll: bool,
    ) -> Option<(u16, Value)> {
        loop {
            match self.request(method.clone(), path, token, body, poll).await {
                Answer::Status(status, value) => return Some((status, value)),
                Answer::Retry(pause) => {
                    if Instant::now() + pause >= self.deadline {
                        return None;
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    fn outcome(&self, outcome: &'static str) {
        *self
            .stats
            .lock()
            .expect("stats")
            .outcomes
            .entry(outcome)
            .or_default() += 1;
    }

    async fn shop(&self, shopper: usize, token: String) {
        let outcome = self.journey(shopper, &token).await;
        self.outcome(outcome);
    }

    async fn journey(&self, shopper: usize, token: &str) -> &'static str {
        let sale = &self.sale;
        let mut pass = None;
        let mut position = 0;
        if self.queued {
            let Some((200, joined)) = self
                .call(
                    Method::POST,
                    &format!("/v1/sales/{sale}/queue"),
                    token,
                    None,
                    false,
                )
                .await
            else {
                return "join failed";
            };
            let ticket = joined["ticket"].as_str().unwrap_or_default().to_owned();
            let mut answer = joined;
            loop {
                match answer["state"].as_str() {
                    Some("admitted") if !self.poll_only() => {
                        pass = answer["pass"].as_str().map(str::to_owned);
                        position = answer["position"].as_u64().unwrap_or(0) as u32;
                        break;
                    }
                    Some("sold_out") => return "told sold out",
                    Some("expired") => return "pass expired",
                    Some("closed") => return "closed",
                    _ => {}
                }
                if self.poll_until.is_some_and(|until| Instant::now() >= until) {
                    return "polled";
                }
                let hint = Duration::from_secs(answer["poll_after_s"].as_u64().unwrap_or(1));
                let pause = self.poll_every.unwrap_or(hint);
                if Instant::now() + pause >= self.deadline {
                    return "deadline";
                }
                tokio::time::sleep(pause).await;
                let path = format!("/v1/sales/{sale}/queue/{ticket}");
                let Some((_, next)) = self.call(Method::GET, &path, token, None, true).await else {
                    return "deadline";
                };
                answer = next;
            }
        }
        let hold = json!({"quantity": 1, "channel": "web", "pass": pass});
        let Some((status, held)) = self
            .call(
                Method::POST,
                &format!("/v1/sales/{sale}/holds"),
                token,
                Some(&hold),
                false,
            )
            .await
        else {
            return "deadline";
        };
        if status != 201 {
            return if held["error"]["code"] == "sold_out" {
                "sold out at hold"
            } else {
                "hold refused"
            };
        }
        let path = format!(
            "/v1/holds/{}/confirm",
            held["hold_id"].as_str().unwrap_or_default()
        );
        let pay = json!({"payment": {"method": "card", "token": "tok_visa"}});
        match self
            .call(Method::POST, &path, token, Some(&pay), false)
            .await
        {
            Some((200, _)) => {
                let position = if self.queued {
                    position
                } else {
                    shopper as u32 + 1
                };
                self.stats
                    .lock()
                    .expect("stats")
                    .purchases
                    .push((position, Instant::now()));
                "bought"
            }
            Some(_) => "confirm refused",
            None => "deadline",
        }
    }

    fn poll_only(&self) -> bool {
        self.poll_until.is_some()
    }
}

impl LoadArgs {
    /// A waiting-room sale for `holdfast replay --live`: `shoppers` for `stock` units, `limit`
    /// each, admitted `admission_per_s` a second, against the server at `url`.
    pub fn for_replay(
        url: String,
        shoppers: usize,
        stock: u32,
        limit: u32,
        admission_per_s: u32,
    ) -> LoadArgs {
        LoadArgs {
            url: Some(url),
            shoppers,
            stock,
            limit,
            queue: QueueArg::Fifo,
            admission_per_s,
            opens_in_s: 5,
            in_flight: 512,
            deadline_s: 300,
            poll_only: false,
            poll_for_s: 30,
            poll_every_ms: None,
            server_pid: None,
            data: None,
        }
    }
}

pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    if args.shoppers == 0 || args.in_flight == 0 {
        bail!("--shoppers and --in-flight must be at least 1");
    }
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load-server")
        .enable_all()
        .build()?;
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load-client")
        .enable_all()
        .build()?;
    let (base, operator, server) = match &args.url {
        Some(url) => {
            let token = std::env::var("HOLDFAST_OPERATOR_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .context("--url needs the server's operator token in HOLDFAST_OPERATOR_TOKEN")?;
            (url.trim_end_matches('/').to_owned(), token, None)
        }
        None => {
            let data = ToolData::new(args.data.as_deref(), "load")?;
            let server = InProcessServer::start(&server_runtime, &data, OPERATOR_IN_PROCESS)?;
            (
                format!("http://{}", server.address),
                OPERATOR_IN_PROCESS.to_owned(),
                Some((server, data)),
            )
        }
    };
    let result = client_runtime.block_on(drive(&args, base, &operator));
    if let Some((server, _data)) = server {
        server.stop(&server_runtime);
    }
    result
}

async fn drive(args: &LoadArgs, base: String, operator: &str) -> anyhow::Result<()> {
    let client = crate::http::client(args.in_flight);
    let sale = format!("load-{}", std::process::id());
    let opens_at = rfc3339_from_now(args.opens_in_s);
    let spec = json!({
        "id": sale, "sku": "LOAD-1", "name": "Load test stock", "price": 39900,
        "stock": args.stock, "per_customer_limit": args.limit, "opens_at": opens_at,
        "queue": args.queue.name(), "admission_per_s": args.admission_per_s, "hold_ttl_s": 600,
    });
    let (status, body) = send_json(
        &client,
        Method::POST,
        &format!("{base}/v1/sales"),
        Some(operator),
        Some(&spec),
    )
    .await?;
    anyhow::ensure!(status == 201, "creating the sale answered {status}: {body}");

    let tokens = issue_tokens(&client, &base, operator, args.shoppers).await?;
    let started = Instant::now();
    let shop = Arc::new(Shop {
        client,
        base: base.clone(),
        sale: sale.clone(),
        in_flight: Semaphore::new(args.in_flight),
        stats: Mutex::new(Stats::default()),
        deadline: started + Duration::from_secs(args.deadline_s),
        poll_until: args
            .poll_only
            .then(|| started + Duration::from_secs(args.poll_for_s)),
        poll_every: args.poll_every_ms.map(Duration::from_millis),
        queued: args.queue != QueueArg::None,
    });
    let bar = progress(args.shoppers as u64, "shoppers done");
    let mut tasks = tokio::task::JoinSet::new();
    for (shopper, token) in tokens.into_iter().enumerate() {
        let shop = shop.clone();
        let bar = bar.clone();
        tasks.spawn(async move {
            shop.shop(shopper, token).await;
            bar.inc(1);
        });
    }
    let hard_stop = shop.deadline + Duration::from_secs(5);
    while let Ok(Some(_)) = tokio::time::timeout_at(hard_stop.into(), tasks.join_next()).await {}
    tasks.abort_all();
    bar.finish();
    let elapsed = started.elapsed();

    let (_, sale_now) = send_json(
        &shop.client,
        Method::GET,
        &format!("{base}/v1/sales/{sale}"),
        Some(operator),
        None,
    )
    .await?;
    let over_limit = audit_limits(&shop.client, &base, &sale, operator, args.limit).await?;
    let stats = shop.stats.lock().expect("stats");
    report(args, &stats, &sale_now, over_limit, elapsed);
    Ok(())
}

/// An RFC 3339 instant `seconds` from now, from the system clock.
fn rfc3339_from_now(seconds: u64) -> String {
    let at = std::time::SystemTime::now() + Duration::from_secs(seconds);
    let millis = at
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    holdfast_server::api::wire::format_time(holdfast_core::Timestamp(millis))
}

fn progress(total: u64, what: &'static str) -> ProgressBar {
    crate::progress::bar(total, what)
}

async fn issue_tokens(
    client: &HttpClient,
    base: &str,
    operator: &str,
    shoppers: usize,
) -> anyhow::Result<Vec<String>> {
    let bar = progress(shoppers as u64, "customer tokens");
    let url = format!("{base}/v1/customer-tokens");
    let mut tokens = vec![String::new(); shoppers];
    let mut tasks = tokio::task::JoinSet::new();
    let slots = Arc::new(Semaphore::new(64));
    for shopper in 0..shoppers {
        let (client, url, operator, slots, bar) = (
            client.clone(),
            url.clone(),
            operator.to_owned(),
            slots.clone(),
            bar.clone(),
        );
        tasks.spawn(async move {
            let _slot = slots.acquire().await.expect("semaphore stays open");
            let body = json!({"customer_id": format!("shopper-{shopper}"), "phone": format!("010-{shopper:08}")});
            let (status, answer) = send_json(&client, Method::POST, &url, Some(&operator), Some(&body)).await?;
            anyhow::ensure!(status == 201, "token answered {status}: {answer}");
            bar.inc(1);
            Ok::<_, anyhow::Error>((shopper, answer["token"].as_str().unwrap_or_default().to_owned()))
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (shopper, token) = done??;
        tokens[shopper] = token;
    }
    bar.finish_and_clear();
    Ok(tokens)
}

/// Reads every order back and counts the people who hold more than the limit.
async fn audit_limits(
    client: &HttpClient,
    base: &str,
    sale: &str,
    operator: &str,
    limit: u32,
) -> anyhow::Result<usize> {
    let mut per_customer: HashMap<String, u64> = HashMap::new();
    let mut after = String::new();
    loop {
        let url = format!("{base}/v1/sales/{sale}/orders?limit=1000&after={after}");
        let (_, page) = send_json(client, Method::GET, &url, Some(operator), None).await?;
        for order in page["orders"].as_array().into_iter().flatten() {
            let customer = order["customer_id"].as_str().unwrap_or_default().to_owned();
            *per_customer.entry(customer).or_default() += order["quantity"].as_u64().unwrap_or(0);
        }
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    Ok(per_customer
        .values()
        .filter(|&&units| units > u64::from(limit))
        .count())
}

/// How far the order of purchases departs from queue order: the share of pairs of buyers who
/// bought in the opposite order of their positions (0 = exactly queue order).
fn discordant_share(purchases: &[(u32, Instant)]) -> f64 {
    let mut by_time: Vec<&(u32, Instant)> = purchases.iter().collect();
    by_time.sort_by_key(|(_, at)| *at);
    let positions: Vec<u32> = by_time.iter().map(|(p, _)| *p).collect();
    let n = positions.len();
    if n < 2 {
        return 0.0;
    }
    let mut discordant = 0u64;
    for i in 0..n {
        for j in i + 1..n {
            if positions[i] > positions[j] {
                discordant += 1;
            }
        }
    }
    discordant as f64 / (n as f64 * (n as f64 - 1.0) / 2.0)
}

fn peak_rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn report(args: &LoadArgs, stats: &Stats, sale: &Value, over_limit: usize, elapsed: Duration) {
    let answered: u64 = stats.statuses.values().sum();
    let sent = answered + stats.transport_errors;
    let mut statuses: Vec<_> = stats.statuses.iter().collect();
    statuses.sort();
    let mix: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    let mut outcomes: Vec<_> = stats.outcomes.iter().collect();
    outcomes.sort();
    let outcomes: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o}: {n}")).collect();
    let sold = sale["stock"]["sold"].as_u64().unwrap_or(0);
    let beyond_stock = stats
        .purchases
        .iter()
        .filter(|(p, _)| *p > args.stock)
        .count();
    println!(
        "holdfast load: {} shoppers, {} units, limit {}, queue {}, admission {}/s",
        args.shoppers,
        args.stock,
        args.limit,
        args.queue.name(),
        args.admission_per_s
    );
    println!("elapsed:            {:.1} s", elapsed.as_secs_f64());
    println!(
        "requests:           {sent} sent, {:.3}% answered, {} transport errors",
        100.0 * answered as f64 / sent.max(1) as f64,
        stats.transport_errors
    );
    println!("status mix:         {}", mix.join(", "));
    for (name, histogram) in [
        ("latency (writes)", &stats.latency_us),
        ("latency (polls)", &stats.poll_latency_us),
    ] {
        if let Some(h) = histogram {
            println!(
                "{name:<19} p50 {} µs, p90 {} µs, p99 {} µs, max {} µs ({} requests)",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.max(),
                h.len()
            );
        }
    }
    println!("shoppers:           {}", outcomes.join(", "));
    println!(
        "units sold:         {sold} of {} (server), {} purchases seen by shoppers",
        args.stock,
        stats.purchases.len()
    );
    println!("over the limit:     {over_limit} people");
    if args.queue != QueueArg::None && !args.poll_only {
        println!(
            "fairness:           {beyond_stock} buyers beyond position {}; discordant pairs {:.4}",
            args.stock,
            discordant_share(&stats.purchases)
        );
    }
    match (args.url.is_some(), peak_rss_kib(args.server_pid)) {
        (false, Some(kib)) => println!(
            "peak RSS:           {} MiB (server and load generator in one process)",
            kib / 1024
        ),
        (true, Some(kib)) if args.server_pid.is_some() => {
            println!("server peak RSS:    {} MiB", kib / 1024)
        }
        _ => {}
    }
}
