//! `holdfast bench --scenario compaction`: days of stored answers written to the embedded log
//! as the server writes them (appended, a commit's in one row), one log compacted after each
//! day as the server does (answers older than a day dropped) and one not, side by side.
//! Reports the log's size after each day and how long each compaction step held the writer.

use std::time::{Duration, Instant};

use holdfast_store::{Batch, Fate, LogBackend, SqliteLog};

use crate::http::ToolData;

/// Stored answers one commit carries (the server's commits under load carry tens to hundreds).
const ANSWERS_PER_COMMIT: usize = 64;
/// About the size of a stored hold or confirm answer: fingerprint, status, time and JSON body.
const ANSWER_BYTES: usize = 280;
/// The server's step: see `holdfast_server`'s compaction worker.
const ROWS_PER_STEP: usize = 64;

pub struct CompactionArgs<'a> {
    /// Purchases a simulated day; each stores two answers (hold and confirm).
    pub purchases_per_day: u64,
    pub days: u32,
    pub data: Option<&'a std::path::Path>,
}

struct Day {
    kept_bytes: u64,
    compacted_bytes: u64,
    steps: Vec<Duration>,
    dropped: usize,
}

pub fn run(args: CompactionArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.purchases_per_day > 0 && args.days > 0,
        "nothing to write"
    );
    let data = ToolData::new(args.data, "bench")?;
    let mut kept = SqliteLog::open(&data.next_server_dir()?)?;
    let mut compacted = SqliteLog::open(&data.next_server_dir()?)?;
    let answers = args.purchases_per_day as usize * 2;
    let mut days = Vec::new();
    for day in 0..args.days {
        for commit in 0..answers.div_ceil(ANSWERS_PER_COMMIT) {
            let batch = answers_of(day, commit);
            kept.commit(std::slice::from_ref(&batch))?;
            compacted.commit(&[batch])?;
        }
        let (steps, dropped) = compact(&mut compacted, day)?;
        days.push(Day {
            kept_bytes: kept.database_bytes()?,
            compacted_bytes: compacted.database_bytes()?,
            steps,
            dropped,
        });
        eprintln!("day {} written", day + 1);
    }
    report(&args, &days);
    Ok(())
}

fn answers_of(day: u32, commit: usize) -> Batch {
    let values = (0..ANSWERS_PER_COMMIT)
        .map(|n| {
            let key = format!("idem/9:bench-{n:03}/d{day}-{commit}-{n}");
            (key, vec![b'a'; ANSWER_BYTES])
        })
        .collect();
    Batch {
        values,
        ..Batch::default()
    }
}

/// Steps as the server does at the end of `today`: answers of earlier days have expired.
fn compact(log: &mut SqliteLog, today: u32) -> anyhow::Result<(Vec<Duration>, usize)> {
    let mut fate = |key: &str, _: &[u8]| {
        let day: u32 = key
            .rsplit_once("/d")
            .and_then(|(_, rest)| rest.split('-').next()?.parse().ok())
            .expect("a bench key");
        if day < today { Fate::Drop } else { Fate::Wait }
    };
    let (mut steps, mut dropped) = (Vec::new(), 0);
    loop {
        let started = Instant::now();
        let step = log.compact_values(ROWS_PER_STEP, &mut fate)?;
        steps.push(started.elapsed());
        dropped += step.dropped;
        if !step.more {
            return Ok((steps, dropped));
        }
    }
}

fn report(args: &CompactionArgs, days: &[Day]) {
    let purchases = args.purchases_per_day;
    println!(
        "holdfast bench --scenario compaction: {purchases} purchases a day (two stored answers \
         each, {ANSWER_BYTES} B, {ANSWERS_PER_COMMIT} a commit), answers kept a day, steps of \
         {ROWS_PER_STEP} rows\n"
    );
    println!(
        "| day | log not compacted (MB) | log compacted (MB) | answers dropped | steps | step p50 ms | step max ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (n, day) in days.iter().enumerate() {
        let mut steps = day.steps.clone();
        steps.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {} | {:.1} | {:.1} | {} | {} | {:.2} | {:.2} |",
            n + 1,
            day.kept_bytes as f64 / 1e6,
            day.compacted_bytes as f64 / 1e6,
            day.dropped,
            steps.len(),
            ms(steps[steps.len() / 2]),
            ms(*steps.last().expect("a step at least")),
        );
    }
    let last = days.last().expect("a day at least");
    println!(
        "\nafter {} days: compacted / not compacted = {:.2}; compacted bytes per purchase of a day: {:.0}",
        days.len(),
        last.compacted_bytes as f64 / last.kept_bytes as f64,
        last.compacted_bytes as f64 / purchases as f64,
    );
}
