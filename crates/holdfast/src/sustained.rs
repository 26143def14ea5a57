//! `holdfast bench --scenario sustained`: one sale bought from without a pause until a given
//! number of purchases have completed, to show whether periodic work (a snapshot of a sale
//! grown to hundreds of thousands of orders) ever stalls the callers. Reports p50 and p99 over
//! the whole run and the worst single second's p99, per run and as medians.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

use crate::bench::{Checkout, OPERATOR, Plan, Runtimes, drive_with, ledger_workload, median};
use crate::http::{InProcessServer, ToolData};

pub struct SustainedArgs<'a> {
    pub purchases: u64,
    pub connections: usize,
    pub runs: usize,
    pub data: Option<&'a Path>,
    /// The server's snapshot interval, when not its default.
    pub snapshot_every_events: Option<u64>,
}

/// A run stops by itself after this long even if the purchases were not all made.
const RUN_LIMIT: Duration = Duration::from_secs(30 * 60);

struct Run {
    purchases: u64,
    seconds: f64,
    requests: u64,
    errors: u64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    /// The worst second's p99, and which second it was.
    worst_second: (u32, u64),
    /// Seconds whose p99 was above 3x the run's p50.
    seconds_over: usize,
    snapshot: Option<(u64, usize)>,
    /// The log's files (and the snapshot file) once the server stopped.
    log_bytes: u64,
    /// Starting a server again on the run's data: recovering every sale.
    recovery_s: f64,
}

pub fn run(args: SustainedArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.purchases > 0, "--purchases must be at least 1");
    let runtimes = Runtimes::new()?;
    let client = crate::http::client(args.connections);
    let data = ToolData::new(args.data, "bench")?;
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let dir = data.next_server_dir()?;
        let mut config = holdfast_server::Config::new(
            "127.0.0.1:0".parse()?,
            dir.clone(),
            Some(OPERATOR.into()),
        );
        if let Some(every) = args.snapshot_every_events {
            config.limits.snapshot_every_events = every;
        }
        let server = InProcessServer::start_with(&runtimes.server, config.clone())?;
        let label = format!("run {run}/{}: purchases", args.runs);
        let measured = runtimes
            .client
            .block_on(buy_until(&client, server.address, &args, &label));
        server.stop(&runtimes.server);
        let mut measured = measured?;
        measured.snapshot = newest_snapshot(&dir, "bench")?;
        measured.log_bytes = bytes_in(&dir)?;
        let started = Instant::now();
        let again = InProcessServer::start_with(&runtimes.server, config)?;
        measured.recovery_s = started.elapsed().as_secs_f64();
        again.stop(&runtimes.server);
        runs.push(measured);
    }
    report(&args, &data, &runs);
    Ok(())
}

async fn buy_until(
    client: &crate::http::HttpClient,
    address: std::net::SocketAddr,
    args: &SustainedArgs<'_>,
    label: &str,
) -> anyhow::Result<Run> {
    let workload =
        ledger_workload(client, address, args.connections, Checkout::HoldThenConfirm).await?;
    let wanted = Arc::new(AtomicI64::new(args.purchases as i64));
    // The first second (connections opening, caches filling) is not measured.
    let measure_from = Instant::now() + Duration::from_secs(1);
    let plan = Plan {
        measure_from,
        until: measure_from + RUN_LIMIT,
        purchases_wanted: Some(wanted.clone()),
        timeline: true,
    };
    let bar = crate::progress::bar(args.purchases, label);
    let watch = {
        let (bar, wanted, total) = (bar.clone(), wanted.clone(), args.purchases as i64);
        tokio::spawn(async move {
            loop {
                bar.set_position((total - wanted.load(Ordering::Relaxed)).max(0) as u64);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let outcome = drive_with(client, address, workload, args.connections, plan).await;
    watch.abort();
    bar.finish_and_clear();
    let outcome = outcome?;
    let seconds = measure_from.elapsed().as_secs_f64();
    let latencies = outcome.latencies.context("merged histogram")?;
    let p50_us = latencies.value_at_quantile(0.50);
    let per_second = per_second_p99(&outcome.timeline)?;
    let worst_second = per_second
        .iter()
        .copied()
        .max_by_key(|(_, p99)| *p99)
        .unwrap_or((0, 0));
    Ok(Run {
        purchases: outcome.purchases,
        seconds,
        requests: latencies.len(),
        errors: outcome.errors,
        p50_us,
        p99_us: latencies.value_at_quantile(0.99),
        p999_us: latencies.value_at_quantile(0.999),
        max_us: latencies.max(),
        worst_second,
        seconds_over: per_second
            .iter()
            .filter(|(_, p99)| *p99 > 3 * p50_us)
            .count(),
        snapshot: None,
        log_bytes: 0,
        recovery_s: 0.0,
    })
}

/// The bytes of the SQLite files (with their write-ahead logs) in a server's directory.
fn bytes_in(dir: &Path) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().contains(".db") {
            bytes += entry.metadata()?.len();
        }
    }
    Ok(bytes)
}

/// The p99 of the requests that started in each second (seconds with fewer than 100 requests,
/// such as the last one, are left out: their p99 is one request).
fn per_second_p99(timeline: &[(u32, u32)]) -> anyhow::Result<Vec<(u32, u64)>> {
    let seconds = timeline.iter().map(|(s, _)| *s).max().map_or(0, |s| s + 1);
    let mut histograms: Vec<Histogram<u64>> = (0..seconds)
        .map(|_| Histogram::new_with_bounds(1, 3_600_000_000, 2))
        .collect::<Result<_, _>>()?;
    for (second, micros) in timeline {
        histograms[*second as usize].saturating_record(u64::from(*micros));
    }
    Ok(histograms
        .iter()
        .enumerate()
        .filter(|(_, h)| h.len() >= 100)
        .map(|(second, h)| (second as u32, h.value_at_quantile(0.99)))
        .collect())
}

/// The sale's newest snapshot: the log position it covers and its size.
fn newest_snapshot(dir: &Path, sale: &str) -> anyhow::Result<Option<(u64, usize)>> {
    let path = dir.join("snapshots.db");
    if !path.exists() {
        return Ok(None);
    }
    let db = rusqlite::Connection::open(path)?;
    let found = db.query_row(
        "SELECT through, length(payload) FROM snapshot WHERE stream = ?1",
        [sale],
        |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as usize)),
    );
    match found {
        Ok(found) => Ok(Some(found)),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

fn report(args: &SustainedArgs, data: &ToolData, runs: &[Run]) {
    println!(
        "holdfast bench --scenario sustained: {} runs of {} purchases, {} connections, \
         loopback, fsync on (data in {})\n",
        args.runs,
        args.purchases,
        args.connections,
        data.root().display()
    );
    println!(
        "| run | purchases | seconds | purchases/s | requests | errors | p50 µs | p99 µs | \
         p99/p50 | p99.9 µs | max µs | worst second's p99 µs (at s) | seconds with p99 > 3x p50 \
         | last snapshot (log position, bytes) | log bytes per purchase | recovery s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|");
    for (n, run) in runs.iter().enumerate() {
        let snapshot = run.snapshot.map_or("none".to_owned(), |(through, bytes)| {
            format!("{through}, {bytes}")
        });
        println!(
            "| {} | {} | {:.1} | {:.0} | {} | {} | {} | {} | {:.2} | {} | {} | {} ({}) | {} | {} | \
             {:.0} | {:.2} |",
            n + 1,
            run.purchases,
            run.seconds,
            run.purchases as f64 / run.seconds,
            run.requests,
            run.errors,
            run.p50_us,
            run.p99_us,
            run.p99_us as f64 / run.p50_us.max(1) as f64,
            run.p999_us,
            run.max_us,
            run.worst_second.1,
            run.worst_second.0,
            run.seconds_over,
            snapshot,
            run.log_bytes as f64 / run.purchases.max(1) as f64,
            run.recovery_s,
        );
    }
    let median_of = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
    println!(
        "\nmedians: {:.0} purchases/s, p50 {:.0} µs, p99 {:.0} µs, p99/p50 {:.2}, worst second's \
         p99 {:.0} µs, log bytes per purchase {:.0}, recovery {:.2} s",
        median_of(&|r| r.purchases as f64 / r.seconds),
        median_of(&|r| r.p50_us as f64),
        median_of(&|r| r.p99_us as f64),
        median_of(&|r| r.p99_us as f64 / r.p50_us.max(1) as f64),
        median_of(&|r| r.worst_second.1 as f64),
        median_of(&|r| r.log_bytes as f64 / r.purchases.max(1) as f64),
        median_of(&|r| r.recovery_s),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_second_gets_its_own_p99() {
        let mut timeline = Vec::new();
        for n in 0..200u32 {
            timeline.push((0, 1_000 + n));
            timeline.push((1, if n < 190 { 2_000 } else { 90_000 }));
        }
        timeline.push((2, 5));
        let seconds = per_second_p99(&timeline).unwrap();
        assert_eq!(seconds.len(), 2, "the last, thin second is left out");
        assert!((1_190..1_200).contains(&seconds[0].1), "{seconds:?}");
        assert!(seconds[1].1 >= 89_000, "{seconds:?}");
    }
}
