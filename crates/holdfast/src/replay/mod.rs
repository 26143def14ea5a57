//! `holdfast replay NAME`: an incident Holdfast was built from, replayed against the real core
//! and the real durable log on a virtual clock, with a report a person would rather look at
//! than read. `--live URL` plays a drop scaled down over HTTP against a running server instead.

mod drop;
mod outage;
mod report;
mod scenario;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;

use crate::http::ToolData;
use crate::load::LoadArgs;
use scenario::{Kind, Scenario};

#[derive(Args)]
pub struct ReplayArgs {
    /// The incident to replay (see --list).
    #[arg(required_unless_present_any = ["list", "file", "show"])]
    name: Option<String>,
    /// Describe the built-in scenarios and stop.
    #[arg(long)]
    list: bool,
    /// Print a built-in scenario's TOML, to start your own from: `holdfast replay --show
    /// ns-restock > my-sale.toml`.
    #[arg(long, value_name = "NAME", conflicts_with = "name")]
    show: Option<String>,
    /// Replay your own sale, described in a TOML file shaped like the built-in ones (see
    /// --show).
    #[arg(long, conflicts_with = "name")]
    file: Option<PathBuf>,
    /// Another seed than the scenario's (a different crowd; the same seed, the same report).
    #[arg(long)]
    seed: Option<u64>,
    /// Where to write the HTML report [default: replay-NAME.html].
    #[arg(long)]
    report: Option<PathBuf>,
    /// Play the drop over HTTP against this running server instead (its operator token in
    /// HOLDFAST_OPERATOR_TOKEN), scaled down to --live-shoppers.
    #[arg(long, value_parser = crate::http::server_url)]
    live: Option<String>,
    /// With --live: shoppers to send; the stock and admission rate are scaled alike.
    #[arg(long, default_value_t = 20_000)]
    live_shoppers: u32,
    #[arg(long, help = crate::http::DATA_HELP)]
    data: Option<PathBuf>,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    if args.list {
        for scenario in Scenario::built_in() {
            println!("{:<14} {}", scenario.name, scenario.title);
            for line in scenario.story.trim().lines() {
                println!("{:<14} {line}", "");
            }
            println!();
        }
        return Ok(());
    }
    if let Some(name) = &args.show {
        let text = scenario::BUILT_IN
            .iter()
            .find(|text| Scenario::parse(text).is_ok_and(|s| &s.name == name))
            .with_context(|| format!("no scenario '{name}' (see --list)"))?;
        print!("{text}");
        return Ok(());
    }
    let mut scenario = find(&args)?;
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    if let Some(url) = args.live {
        return live(&scenario, url, args.live_shoppers);
    }
    let data = ToolData::new(args.data.as_deref(), "replay")?;
    let dir = data.next_server_dir()?;
    let bar = crate::progress::bar(scenario.duration_s, "virtual seconds");
    let started = Instant::now();
    let outcome = match scenario.kind {
        Kind::Drop => drop::play(&scenario, &dir, &bar)?,
        Kind::Outage => outage::play(&scenario, &dir, &bar)?,
    };
    bar.finish_and_clear();
    let wall_s = started.elapsed().as_secs_f64();
    let path = args
        .report
        .unwrap_or_else(|| PathBuf::from(format!("replay-{}.html", scenario.name)));
    let page = report::html(&scenario, &outcome, wall_s, scenario.seed);
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    println!("{}: {}", scenario.name, outcome.headline);
    for check in &outcome.checks {
        let mark = if check.held { "ok  " } else { "FAIL" };
        println!("  {mark} {}: {}", check.promise, check.detail);
    }
    for line in &outcome.naive {
        println!("  naive design: {line}");
    }
    println!(
        "replayed {} virtual seconds in {wall_s:.1} s (seed {}), peak RSS {} MiB; report: {}",
        scenario.duration_s,
        scenario.seed,
        peak_rss_mib().map_or("?".into(), |m| m.to_string()),
        path.display()
    );
    if outcome.checks.iter().any(|c| !c.held) {
        bail!("a promise was broken (see above)");
    }
    Ok(())
}

fn find(args: &ReplayArgs) -> anyhow::Result<Scenario> {
    if let Some(file) = &args.file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        return Scenario::parse(&text).with_context(|| file.display().to_string());
    }
    let name = args.name.as_deref().expect("clap requires one");
    Scenario::built_in()
        .into_iter()
        .find(|s| s.name == name)
        .with_context(|| {
            let names: Vec<String> = Scenario::built_in().into_iter().map(|s| s.name).collect();
            format!("no scenario '{name}': try {} (or --list)", names.join(", "))
        })
}

/// The drop over real HTTP, scaled down: `holdfast load` with the scenario's proportions.
fn live(scenario: &Scenario, url: String, shoppers: u32) -> anyhow::Result<()> {
    let (Kind::Drop, Some(sale), Some(crowd)) =
        (&scenario.kind, &scenario.sale, &scenario.shoppers)
    else {
        bail!(
            "{} is replayed in virtual time only; `holdfast bench --scenario storm` drives real \
             tills reconnecting over HTTP",
            scenario.name
        );
    };
    let shoppers = shoppers.clamp(1, crowd.count);
    let scale = f64::from(shoppers) / f64::from(crowd.count);
    let restocked: u32 = scenario.restock.iter().map(|r| r.quantity).sum();
    let stock = ((f64::from(sale.stock + restocked) * scale).round() as u32).max(1);
    let rate = ((f64::from(sale.admission_per_s) * scale).round() as u32).max(1);
    println!(
        "{} over HTTP at {url}, scaled by {scale:.4}: {shoppers} shoppers, {stock} units, {} per person, {rate} admitted a second",
        scenario.name, sale.per_person_limit
    );
    crate::load::run(LoadArgs::for_replay(
        url,
        shoppers as usize,
        stock,
        sale.per_person_limit,
        rate,
    ))
}

/// Makes one log entry durable, as the server's writer would.
fn commit(
    log: &mut holdfast_store::SqliteLog,
    stream: &str,
    entry: holdfast_server::log_entry::LogEntry,
) -> anyhow::Result<()> {
    use holdfast_store::LogBackend;
    let batch = holdfast_store::Batch {
        records: vec![holdfast_store::Record {
            stream: stream.to_owned(),
            payload: entry.encode(),
        }],
        ..holdfast_store::Batch::default()
    };
    for result in log.commit(&[batch]).context("writing the replay's log")? {
        result.context("writing the replay's log")?;
    }
    Ok(())
}

fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
