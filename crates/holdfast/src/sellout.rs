//! `holdfast bench --scenario sellout`: a scarce sale (one unit per person) and a crowd that
//! keeps asking after the last unit is gone, as on the day of a drop. Each connection is a
//! shopper who tries to hold until they get a unit (then pays and the next shopper takes the
//! connection) or the sale is over. Measured: how fast the stock goes, and how many requests a
//! second are answered once it has gone — with an `Idempotency-Key` on every attempt (each
//! refusal then stored durably) and without — against the bare endpoint in the same run.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hyper::Method;
use hyper::body::Bytes;
use serde_json::json;

use crate::bench::{BenchArgs, Checkout, OPERATOR, Runtimes, bare_run, bench_tokens, median, send};
use crate::http::{HttpClient, InProcessServer, ToolData, send_raw};

/// Selling takes at most this long before a run gives up.
const SELLING_LIMIT: Duration = Duration::from_secs(120);
const SALE: &str = "drop";

pub(crate) struct Sellout {
    /// Seconds from the first request to the last unit sold.
    selling_s: f64,
    pub purchases: u64,
    /// Requests answered per second after the first `sold_out`.
    answered_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    /// Answers after sell-out that were neither `409 sold_out` nor a sale (must be 0).
    unexpected: u64,
}

#[derive(Default)]
struct Counts {
    purchases: u64,
    after: Option<Histogram<u64>>,
    unexpected: u64,
}

/// What every connection shares.
struct Crowd {
    address: SocketAddr,
    tokens: Arc<Vec<String>>,
    next_shopper: AtomicUsize,
    keyed: bool,
    checkout: Checkout,
    sold_out_at: OnceLock<Instant>,
    measure: Duration,
    started: Instant,
}

impl Crowd {
    fn over(&self) -> bool {
        match self.sold_out_at.get() {
            Some(at) => at.elapsed() >= self.measure,
            None => self.started.elapsed() >= SELLING_LIMIT,
        }
    }
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let units = args.units;
    anyhow::ensure!(units > 0, "--units must be at least 1");
    let runtimes = Runtimes::new()?;
    let client = crate::http::client(args.connections);
    let data = ToolData::new(args.data.as_deref(), "bench")?;
    let (mut bare, mut keyed, mut unkeyed) = (Vec::new(), Vec::new(), Vec::new());
    let bar = crate::progress::bar(3 * args.runs as u64, "measurements");
    for run in 1..=args.runs {
        bar.set_message(format!("run {run}/{}: bare endpoint", args.runs));
        bare.push(bare_run(&runtimes, &client, args)?.requests_per_s);
        bar.inc(1);
        for (with_keys, results) in [(true, &mut keyed), (false, &mut unkeyed)] {
            bar.set_message(format!(
                "run {run}/{}: sell-out, {}",
                args.runs,
                if with_keys { "keyed" } else { "no keys" }
            ));
            let server = InProcessServer::start(&runtimes.server, &data, OPERATOR)?;
            let measured = runtimes.client.block_on(sell_out(
                &client,
                server.address,
                args,
                with_keys,
                Checkout::HoldThenConfirm,
            ));
            server.stop(&runtimes.server);
            results.push(measured?);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    report(args, &data, &bare, &keyed, &unkeyed);
    Ok(())
}

pub(crate) async fn sell_out(
    client: &HttpClient,
    address: SocketAddr,
    args: &BenchArgs,
    keyed: bool,
    checkout: Checkout,
) -> anyhow::Result<Sellout> {
    let sale = json!({
        "id": SALE, "sku": "DROP-1", "name": "Scarce stock", "price": 1000,
        "stock": args.units, "per_customer_limit": 1,
        "opens_at": "2020-01-01T00:00:00Z", "queue": "none",
    });
    let (status, answer) = send(client, address, "/v1/sales", OPERATOR, &sale).await?;
    anyhow::ensure!(
        status == 201,
        "creating the sale answered {status}: {answer}"
    );
    let shoppers = args.units as usize + args.connections;
    let crowd = Arc::new(Crowd {
        address,
        tokens: bench_tokens(client, address, shoppers).await?,
        next_shopper: AtomicUsize::new(args.connections),
        keyed,
        checkout,
        sold_out_at: OnceLock::new(),
        measure: Duration::from_secs(args.seconds),
        started: Instant::now(),
    });
    let tasks: Vec<_> = (0..args.connections)
        .map(|c| tokio::spawn(shopper_loop(client.clone(), crowd.clone(), c)))
        .collect();
    let mut after = Histogram::<u64>::new(3)?;
    let (mut purchases, mut unexpected) = (0, 0);
    for task in tasks {
        let counts = task.await??;
        purchases += counts.purchases;
        unexpected += counts.unexpected;
        if let Some(one) = &counts.after {
            after.add(one)?;
        }
    }
    let sold_out_at = crowd
        .sold_out_at
        .get()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("the sale did not sell out within {SELLING_LIMIT:?}"))?;
    Ok(Sellout {
        selling_s: (sold_out_at - crowd.started).as_secs_f64(),
        purchases,
        answered_per_s: after.len() as f64 / args.seconds as f64,
        p50_us: after.value_at_quantile(0.5),
        p99_us: after.value_at_quantile(0.99),
        unexpected,
    })
}

/// One connection: a shopper trying until they hold a unit (then paying, and handing the
/// connection to the next shopper) until the measured time after the sell-out is over.
async fn shopper_loop(
    client: HttpClient,
    crowd: Arc<Crowd>,
    connection: usize,
) -> anyhow::Result<Counts> {
    let mut counts = Counts {
        after: Some(Histogram::new(3)?),
        ..Counts::default()
    };
    let (hold_url, hold) = match crowd.checkout {
        Checkout::HoldThenConfirm => (
            format!("http://{}/v1/sales/{SALE}/holds", crowd.address),
            Bytes::from_static(br#"{"quantity":1,"channel":"web"}"#),
        ),
        Checkout::OneRequest => (
            format!("http://{}/v1/sales/{SALE}/purchases", crowd.address),
            Bytes::from_static(
                br#"{"quantity":1,"channel":"web","payment":{"method":"card","token":"tok_visa"}}"#,
            ),
        ),
    };
    let confirm = Bytes::from_static(br#"{"payment":{"method":"card","token":"tok_visa"}}"#);
    let mut shopper = connection;
    let mut authorization = format!("Bearer {}", crowd.tokens[shopper]);
    for attempt in 0u64.. {
        if crowd.over() {
            break;
        }
        let key = format!("s{shopper}-{attempt}");
        let key = crowd.keyed.then_some(key.as_str());
        let started = Instant::now();
        let (status, body) = send_raw(
            &client,
            Method::POST,
            &hold_url,
            Some(&authorization),
            key,
            hold.clone(),
        )
        .await?;
        let sold_out_at = match status {
            409 => Some(*crowd.sold_out_at.get_or_init(Instant::now)),
            _ => crowd.sold_out_at.get().copied(),
        };
        if sold_out_at.is_some_and(|at| started >= at) {
            let histogram = counts.after.as_mut().expect("histogram");
            let _ = histogram.record(started.elapsed().as_micros() as u64);
            if status != 409 && status != 201 {
                counts.unexpected += 1;
            }
        }
        if status != 201 {
            continue;
        }
        let bought = match crowd.checkout {
            Checkout::OneRequest => true,
            Checkout::HoldThenConfirm => {
                confirm_hold(&client, &crowd, &authorization, shopper, &body, &confirm).await?
            }
        };
        counts.purchases += u64::from(bought);
        shopper = crowd.next_shopper.fetch_add(1, Ordering::Relaxed);
        let Some(token) = crowd.tokens.get(shopper) else {
            break;
        };
        authorization = format!("Bearer {token}");
    }
    Ok(counts)
}

/// Pays for the hold `held` answered; true once it is an order. The shopper moves on either
/// way (with a limit of one, another hold would be refused).
async fn confirm_hold(
    client: &HttpClient,
    crowd: &Crowd,
    authorization: &str,
    shopper: usize,
    held: &[u8],
    confirm: &Bytes,
) -> anyhow::Result<bool> {
    let held: serde_json::Value = serde_json::from_slice(held)?;
    let hold_id = held["hold_id"].as_str().unwrap_or_default();
    let url = format!("http://{}/v1/holds/{hold_id}/confirm", crowd.address);
    let key = format!("c{shopper}");
    let (status, _) = send_raw(
        client,
        Method::POST,
        &url,
        Some(authorization),
        Some(&key),
        confirm.clone(),
    )
    .await?;
    Ok(status == 200)
}

fn report(args: &BenchArgs, data: &ToolData, bare: &[f64], keyed: &[Sellout], unkeyed: &[Sellout]) {
    println!(
        "holdfast bench --scenario sellout: {} runs, {} units one per person, {} connections, \
         {} s measured after the sell-out, loopback, fsync on (data in {})\n",
        args.runs,
        args.units,
        args.connections,
        args.seconds,
        data.root().display()
    );
    let bare_median = median(bare.to_vec());
    println!(
        "| variant | answered/s after sell-out (median) | of bare | p50 µs | p99 µs | selling s | \
         sold | unexpected answers | runs (answered/s) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    let runs = |values: Vec<f64>| {
        values
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "| bare endpoint | {bare_median:.0} | 1.000 | | | | | | {} |",
        runs(bare.to_vec())
    );
    for (name, results) in [
        ("sold-out holds, Idempotency-Key on each", keyed),
        ("sold-out holds, no key", unkeyed),
    ] {
        let median_of = |f: &dyn Fn(&Sellout) -> f64| median(results.iter().map(f).collect());
        let answered = median_of(&|r| r.answered_per_s);
        println!(
            "| {name} | {answered:.0} | {:.3} | {:.0} | {:.0} | {:.2} | {} | {} | {} |",
            answered / bare_median,
            median_of(&|r| r.p50_us as f64),
            median_of(&|r| r.p99_us as f64),
            median_of(&|r| r.selling_s),
            results
                .iter()
                .map(|r| r.purchases.to_string())
                .collect::<Vec<_>>()
                .join("/"),
            results.iter().map(|r| r.unexpected).sum::<u64>(),
            runs(results.iter().map(|r| r.answered_per_s).collect()),
        );
    }
}
