//! An outage replayed in virtual time: tills keep selling with their line down, journaling
//! every sale, and reconnect at once. Each sale is a unit of the till's allotment, recorded by
//! the real core with the till's journal sequence (so a repeat is recognised and changes
//! nothing); every event goes to the real durable log. The server offers `sync_slots` syncs at
//! a time and tells the rest to come back in 1-5 s, as `holdfast serve` does.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use holdfast_core::{Command, HolderId, Reply, Sale, SaleSpec, Timestamp};
use holdfast_server::log_entry::LogEntry;
use holdfast_store::SqliteLog;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::report::{Chart, Check, Outcome, Second, Series};
use super::scenario::Scenario;

/// Units each till holds of the lunch sale before the day starts.
const ALLOTMENT: u32 = 10_000;
/// Entries sent in one sync at most (`SYNC_ENTRIES_MAX` on the server is larger).
const SYNC_BATCH: usize = 500;
/// The rush ends this long before the replay does, so every journal can be seen through.
const QUIET_END_S: i64 = 300;

#[derive(Clone, Copy, PartialEq)]
enum Tender {
    Cash,
    Card,
    PayLater,
}

struct Till {
    holder: HolderId,
    journaled: u64,
    /// The last entry the till knows the server has.
    acked: u64,
    next_sync_ms: i64,
    put_off: bool,
}

/// A chart's line: its name, colour, and what it reads of each second.
type Line<'a> = (&'a str, &'static str, &'a dyn Fn(&Tick) -> f64);

/// What one virtual second looked like.
#[derive(Default, Clone)]
struct Tick {
    waiting_entries: u64,
    offline: u32,
    put_off: u32,
    syncs_accepted: u64,
    syncs_refused: u64,
    recorded: u64,
    repeats: u64,
    taken: u64,
    recorded_money: u64,
}

pub fn play(scenario: &Scenario, data: &Path, bar: &ProgressBar) -> anyhow::Result<Outcome> {
    let tills_setup = scenario.tills.as_ref().expect("checked");
    let server = scenario.server.as_ref().expect("checked");
    let start = scenario.start_ms();
    let mut rng = StdRng::seed_from_u64(scenario.seed);
    let stock = tills_setup.count * ALLOTMENT;
    let spec = SaleSpec::plain("lunch", tills_setup.price, stock, 1_000, Timestamp(start));
    spec.validate().context("the outage's sale")?;
    let mut log = SqliteLog::open(data).context("opening the replay's log")?;
    super::commit(
        &mut log,
        "lunch",
        LogEntry::SaleCreated { spec: spec.clone() },
    )?;
    let mut sale = Sale::new(spec);
    let mut tills: Vec<Till> = (0..tills_setup.count)
        .map(|n| Till {
            holder: HolderId(format!("till-{n:05}")),
            journaled: 0,
            acked: 0,
            next_sync_ms: rng.random_range(0..tills_setup.sync_every_s as i64 * 1000),
            put_off: false,
        })
        .collect();
    let mut events = Vec::new();
    for till in &tills {
        let claim = Command::ClaimAllotment {
            holder: till.holder.clone(),
            channel: holdfast_core::Channel::Store,
            quantity: ALLOTMENT,
        };
        let handled = sale.handle(&claim, Timestamp(start));
        handled.outcome.context("allotting the tills")?;
        events.extend(handled.events);
    }
    super::commit(&mut log, "lunch", LogEntry::Events { events })?;

    let tenders = [
        (Tender::Cash, tender_share(tills_setup, "cash")),
        (Tender::Card, tender_share(tills_setup, "card")),
        (Tender::PayLater, tender_share(tills_setup, "pay_later")),
    ];
    let tender_total: f64 = tenders.iter().map(|(_, s)| s).sum();
    let down_from = tills_setup.down_from_s as i64 * 1000;
    let down_until = down_from + tills_setup.down_for_s as i64 * 1000;
    let per_second = tills_setup.sales_per_minute / 60.0;
    let mut slots_free_at = vec![0i64; server.sync_slots.max(1) as usize];
    // What each till had journaled when its line came back: the backlog to see through.
    let mut backlog: Option<Vec<u64>> = None;
    let selling_until = scenario.duration_s as i64 - QUIET_END_S;
    let (mut journaled, mut recorded_total, mut repeats_total) = (0u64, 0u64, 0u64);
    let (mut lost_card, mut paper_pay_later, mut refused_total) = (0u64, 0u64, 0u64);
    let mut while_down = 0u64;
    let mut drained_at = None;
    let mut ticks: Vec<Tick> = Vec::new();
    let duration_ms = scenario.duration_s as i64 * 1000;
    for second in 0..=scenario.duration_s as i64 {
        let t = second * 1000;
        let now = Timestamp(start + t);
        let line_up = !(down_from..down_until).contains(&t);
        let mut tick = Tick::default();
        let mut pending = Vec::new();
        for till in tills.iter_mut() {
            if second < selling_until && rng.random::<f64>() < per_second {
                till.journaled += 1;
                journaled += 1;
                tick.taken += tills_setup.price;
                let mut x = rng.random::<f64>() * tender_total;
                let tender = tenders
                    .iter()
                    .find(|(_, share)| {
                        let hit = x < *share;
                        x -= share;
                        hit
                    })
                    .map_or(Tender::Cash, |(t, _)| *t);
                if !line_up {
                    while_down += 1;
                    match tender {
                        Tender::Card => lost_card += 1,
                        Tender::PayLater => paper_pay_later += 1,
                        Tender::Cash => {}
                    }
                }
            }
            if !line_up {
                tick.offline += 1;
                continue;
            }
            if till.acked == till.journaled || till.next_sync_ms > t {
                continue;
            }
            // The request arrives somewhere in this second; a slot is free or it is not (the
            // server takes no queue of syncs: it answers 429 at once).
            let arrives = t + rng.random_range(0..1000);
            let Some(slot) = slots_free_at.iter_mut().find(|free| **free <= arrives) else {
                // Put off for load: told to come back in 1-5 s.
                tick.syncs_refused += 1;
                refused_total += 1;
                till.put_off = true;
                till.next_sync_ms = t + rng.random_range(1_000..=5_000);
                continue;
            };
            till.put_off = false;
            tick.syncs_accepted += 1;
            let applying = Instant::now();
            let through = (till.acked + SYNC_BATCH as u64).min(till.journaled);
            for seq in till.acked + 1..=through {
                let record = Command::RecordAllottedSale {
                    holder: till.holder.clone(),
                    quantity: 1,
                    journal_seq: Some(seq),
                    sold_at: now,
                    unit_price: tills_setup.price,
                    buyer: None,
                };
                let handled = sale.handle(&record, now);
                match handled.outcome {
                    Ok(Reply::AllottedSaleRecorded { .. }) if handled.events.is_empty() => {
                        tick.repeats += 1;
                    }
                    Ok(_) => {
                        tick.recorded += 1;
                        tick.recorded_money += tills_setup.price;
                    }
                    Err(refused) => anyhow::bail!("a till's sale was refused: {refused}"),
                }
                pending.extend(handled.events);
            }
            let service_ms = server.round_trip_ms as i64 + applying.elapsed().as_millis() as i64;
            *slot = arrives + service_ms.max(1);
            // A lost answer: the server has the entries, the till does not know and sends them
            // again at its next sync.
            if rng.random::<f64>() >= server.answers_lost {
                till.acked = through;
            }
            till.next_sync_ms = if till.acked < till.journaled {
                t + service_ms
            } else {
                t + tills_setup.sync_every_s as i64 * 1000
            };
        }
        if !pending.is_empty() {
            super::commit(&mut log, "lunch", LogEntry::Events { events: pending })?;
        }
        tick.waiting_entries = tills.iter().map(|t| t.journaled - t.acked).sum();
        if t >= down_until && backlog.is_none() {
            backlog = Some(tills.iter().map(|t| t.journaled).collect());
        }
        tick.put_off = tills.iter().filter(|t| t.put_off).count() as u32;
        recorded_total += tick.recorded;
        repeats_total += tick.repeats;
        let seen_through = |b: &Vec<u64>| tills.iter().zip(b).all(|(till, j)| till.acked >= *j);
        if drained_at.is_none() && backlog.as_ref().is_some_and(seen_through) {
            drained_at = Some((t - down_until) / 1000);
        }
        ticks.push(tick);
        bar.set_position(second as u64);
        if t >= duration_ms {
            break;
        }
    }
    let left_at_tills: u64 = tills.iter().map(|t| t.journaled - t.acked).sum();
    let sold = u64::from(sale.sold());
    let never_paid = (paper_pay_later as f64 * scenario.naive.pay_later_never_paid).round() as u64;
    let checks = vec![
        Check::new(
            "no sale lost",
            left_at_tills == 0 && sold == journaled,
            format!(
                "{journaled} sales journaled at {} tills, {sold} recorded by the server; {left_at_tills} still waiting at the tills at the end",
                tills_setup.count
            ),
        ),
        Check::new(
            "no sale recorded twice",
            recorded_total == journaled,
            format!(
                "{repeats_total} entries sent again after a lost answer were recognised by their journal sequence and changed nothing"
            ),
        ),
        Check::new(
            "the reconnect storm absorbed",
            drained_at.is_some(),
            format!(
                "{} tills back at once: every sale made with the line down was at the server {} s after it returned; {refused_total} syncs put off for load (429, come back in 1-5 s), each answered at once",
                tills_setup.count,
                drained_at.map_or("—".into(), |s| s.to_string())
            ),
        ),
    ];
    let naive = vec![
        format!(
            "{lost_card} card sales lost while the terminals were down ({} KRW)",
            lost_card * tills_setup.price
        ),
        format!(
            "{paper_pay_later} customers let go with a phone number on paper; if {:.0}% never pay, {} KRW lost",
            scenario.naive.pay_later_never_paid * 100.0,
            never_paid * tills_setup.price
        ),
    ];
    let seconds: Vec<Second> = ticks
        .iter()
        .enumerate()
        .map(|(i, _)| Second {
            t_s: i as i64,
            ..Second::default()
        })
        .collect();
    let chart = |title: &str, unit: &'static str, lines: &[Line]| Chart {
        title: title.to_owned(),
        unit,
        stacked: false,
        series: lines
            .iter()
            .map(|(name, colour, f)| Series::of(name, colour, ticks.iter().map(f)))
            .collect(),
    };
    let extra = vec![
        chart(
            "Entries waiting at the tills",
            "entries",
            &[("waiting", "#5c6bc0", &|t| t.waiting_entries as f64)],
        ),
        chart(
            "Tills",
            "tills",
            &[
                ("line down", "#c62828", &|t| f64::from(t.offline)),
                ("put off for load (reachable)", "#ef6c00", &|t| {
                    f64::from(t.put_off)
                }),
            ],
        ),
        chart(
            "Syncs per second",
            "per s",
            &[
                ("accepted", "#2e7d32", &|t| t.syncs_accepted as f64),
                ("refused for load (429)", "#c62828", &|t| {
                    t.syncs_refused as f64
                }),
            ],
        ),
        chart(
            "Entries recorded per second",
            "per s",
            &[
                ("recorded", "#8d6e63", &|t| t.recorded as f64),
                ("repeats ignored", "#90a4ae", &|t| t.repeats as f64),
            ],
        ),
        Chart {
            title: "Money taken at the counters and recorded at the server".into(),
            unit: "KRW",
            stacked: false,
            series: vec![
                Series::of(
                    "taken",
                    "#000000",
                    running_total(ticks.iter().map(|t| t.taken)),
                ),
                Series::of(
                    "recorded",
                    "#2e7d32",
                    running_total(ticks.iter().map(|t| t.recorded_money)),
                ),
            ],
        },
    ];
    Ok(Outcome {
        seconds,
        checks,
        naive,
        headline: format!(
            "{journaled} sales at {} tills, {while_down} of them with the line down",
            tills_setup.count
        ),
        opens_at_s: Some(down_from / 1000),
        extra,
    })
}

fn running_total(values: impl Iterator<Item = u64>) -> impl Iterator<Item = f64> {
    values.scan(0.0, |total, v| {
        *total += v as f64;
        Some(*total)
    })
}

fn tender_share(tills: &super::scenario::Tills, name: &str) -> f64 {
    tills.tenders.get(name).copied().unwrap_or(0.0)
}
