//! A drop replayed in virtual time: the real `Sale` (the core the server runs) takes every
//! join, tick, hold and payment at its virtual instant, and every event goes to a real durable
//! log (the embedded SQLite log, one commit per virtual second) — only the clock and the crowd
//! are simulated, from the scenario's seed. Beside it, the naive design meets the same crowd.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use holdfast_core::{
    Channel, Command, DeliveryPlan, Event, HoldId, QueueMode, Reply, Sale, SaleSpec, Shopper,
    Timestamp,
};
use holdfast_server::log_entry::LogEntry;
use holdfast_store::SqliteLog;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::report::{Check, Outcome, Second};
use super::scenario::{Crowd, Scenario};

const TICK_MS: i64 = 100;
const DAY_MS: i64 = 86_400_000;
/// From being let in to asking for a hold (reading the page, choosing).
const TO_HOLD_MS: (i64, i64) = (500, 3_000);
/// A naive shopper whose request timed out tries again this much later, for this long.
const NAIVE_RETRY_MS: i64 = 2_000;
const NAIVE_PATIENCE_MS: i64 = 300_000;

/// Someone arriving: their account, phone, channel, and whether they came early.
struct Arrival {
    at_ms: i64,
    account: u32,
    second_account: bool,
    channel: Channel,
    early: bool,
}

enum Action {
    Hold { arrival: u32, position: u32 },
    Confirm { arrival: u32, hold: HoldId },
}

/// Counts for the second being played.
#[derive(Default)]
struct Tally {
    joins: u64,
    holds: u64,
    orders: u64,
    requests: u64,
    refused: BTreeMap<&'static str, u64>,
}

pub fn play(scenario: &Scenario, data: &Path, bar: &ProgressBar) -> anyhow::Result<Outcome> {
    let sale_setup = scenario.sale.as_ref().expect("checked");
    let crowd = scenario.shoppers.as_ref().expect("checked");
    let start = scenario.start_ms();
    let spec = spec(scenario, start)?;
    let opens_at = spec.opens_at.0;
    let mut rng = StdRng::seed_from_u64(scenario.seed);
    let arrivals = arrivals(crowd, sale_setup.opens_at_s, &mut rng);
    let mut log = SqliteLog::open(data).context("opening the replay's log")?;
    let created = LogEntry::SaleCreated { spec: spec.clone() };
    super::commit(&mut log, &spec.id, created)?;
    let mut sale = Sale::new(spec.clone());
    let mut naive = Naive::new(scenario, spec.stock);

    let mut shoppers: HashMap<u32, Shopper> = HashMap::new();
    let mut entry_arrival: Vec<u32> = Vec::new();
    let mut wheel: BTreeMap<i64, Vec<Action>> = BTreeMap::new();
    let mut restocks: VecDeque<_> = scenario
        .restock
        .iter()
        .map(|r| (r.at_s as i64 * 1000, r.quantity))
        .collect();
    let mut next_arrival = 0;
    let mut pending: Vec<Event> = Vec::new();
    let mut tally = Tally::default();
    let mut seconds = Vec::new();
    let mut folded = 0u64;
    let mut admitted_seen = 0u32;
    let mut commands = 0u64;
    let mut second_started = Instant::now();
    let duration_ms = scenario.duration_s as i64 * 1000;
    let mut t = 0;
    while t <= duration_ms {
        let now = Timestamp(start + t);
        let mut run = |sale: &mut Sale, command: Command, tally: &mut Tally| {
            commands += 1;
            tally.requests += 1;
            let handled = sale.handle(&command, now);
            pending.extend(handled.events.iter().cloned());
            (handled.events, handled.outcome)
        };
        while restocks.front().is_some_and(|(at, _)| *at <= t) {
            let (_, quantity) = restocks.pop_front().expect("checked");
            run(&mut sale, Command::Restock { quantity }, &mut tally).1?;
            naive.stock += i64::from(quantity);
        }
        if sale_setup.release_shares_at_s.map(|s| s as i64 * 1000) == Some(t) {
            for channel in Channel::ALL {
                if spec.channel_shares[channel.index()] > 0 {
                    run(
                        &mut sale,
                        Command::ReleaseChannelShare { channel },
                        &mut tally,
                    )
                    .1?;
                }
            }
        }
        while next_arrival < arrivals.len() && arrivals[next_arrival].at_ms <= t {
            let id = next_arrival as u32;
            let arrival = &arrivals[id as usize];
            next_arrival += 1;
            let shopper = shopper_of(arrival);
            naive.arrive(id, arrival, t);
            if arrival.early && now.0 < opens_at || sale_setup.queue == "none" {
                let hold = Command::PlaceHold {
                    shopper: shopper.clone(),
                    quantity: 1,
                    channel: arrival.channel,
                    pass: None,
                };
                let (_, outcome) = run(&mut sale, hold, &mut tally);
                match outcome {
                    Ok(Reply::Held(hold)) => {
                        tally.holds += 1;
                        schedule_payment(&mut wheel, &mut rng, crowd, t, id, hold.id);
                    }
                    Ok(_) => {}
                    Err(refused) => *tally.refused.entry(refused.code()).or_default() += 1,
                }
            }
            if sale_setup.queue != "none" {
                tally.joins += 1;
                let join = Command::Join {
                    shopper: shopper.clone(),
                };
                if let (_, Ok(Reply::Joined { entry, .. })) = run(&mut sale, join, &mut tally) {
                    if entry as usize == entry_arrival.len() {
                        entry_arrival.push(id);
                    } else {
                        folded += 1; // the same person again: the place they have
                    }
                }
            }
            shoppers.insert(id, shopper);
        }
        run(&mut sale, Command::Tick, &mut tally).1?;
        tally.requests -= 1; // the clock's tick is not a shopper's request
        // Any command may have let positions in (the core admits before deciding).
        let through = sale.queue().admitted_through();
        for position in admitted_seen + 1..=through {
            let arrival = entry_arrival[position as usize - 1];
            let at = t + rng.random_range(TO_HOLD_MS.0..=TO_HOLD_MS.1);
            wheel
                .entry(at.div_euclid(TICK_MS) * TICK_MS)
                .or_default()
                .push(Action::Hold { arrival, position });
        }
        admitted_seen = through;
        for action in wheel.remove(&t).unwrap_or_default() {
            match action {
                Action::Hold { arrival, position } => {
                    let info = &arrivals[arrival as usize];
                    let hold = Command::PlaceHold {
                        shopper: shoppers[&arrival].clone(),
                        quantity: 1,
                        channel: info.channel,
                        pass: Some(position),
                    };
                    match run(&mut sale, hold, &mut tally).1 {
                        Ok(Reply::Held(hold)) => {
                            tally.holds += 1;
                            if rng.random::<f64>() >= crowd.abandon {
                                schedule_payment(&mut wheel, &mut rng, crowd, t, arrival, hold.id);
                            }
                        }
                        Ok(_) => {}
                        Err(refused) => *tally.refused.entry(refused.code()).or_default() += 1,
                    }
                }
                Action::Confirm { arrival, hold } => {
                    let confirm = Command::ConfirmHold {
                        hold,
                        customer_id: shoppers[&arrival].customer_id().to_owned(),
                        payment_ref: format!("replay-{arrival}"),
                    };
                    match run(&mut sale, confirm, &mut tally).1 {
                        Ok(Reply::Confirmed(_)) => tally.orders += 1,
                        Ok(_) => {}
                        Err(refused) => *tally.refused.entry(refused.code()).or_default() += 1,
                    }
                }
            }
        }
        if t % 1000 == 0 {
            naive.second(t, opens_at - start, &arrivals);
            if !pending.is_empty() {
                let events = std::mem::take(&mut pending);
                super::commit(&mut log, &spec.id, LogEntry::Events { events })?;
            }
            seconds.push(second_of(&sale, &tally, &naive, t, start, second_started));
            tally = Tally::default();
            second_started = Instant::now();
            bar.set_position(t as u64 / 1000);
        }
        t += TICK_MS;
    }
    Ok(outcome(scenario, &sale, seconds, &naive, folded, commands))
}

fn spec(scenario: &Scenario, start: i64) -> anyhow::Result<SaleSpec> {
    let setup = scenario.sale.as_ref().expect("checked");
    let mut shares = [0u32; 4];
    for (name, units) in &setup.channels {
        let channel = Channel::parse(name).with_context(|| format!("no channel {name}"))?;
        shares[channel.index()] = *units;
    }
    let spec = SaleSpec {
        id: scenario.name.replace('.', "-"),
        sku: "KF94".into(),
        name: scenario.title.clone(),
        price: setup.price,
        stock: setup.stock,
        per_customer_limit: setup.per_person_limit,
        opens_at: Timestamp(start + setup.opens_at_s as i64 * 1000),
        closes_at: None,
        hold_ttl_millis: setup.hold_ttl_s * 1000,
        queue: if setup.queue == "none" {
            QueueMode::None
        } else {
            QueueMode::Fifo
        },
        rehearsal: false,
        channel_shares: shares,
        price_ceiling: None,
        delivery: setup.delivery.as_ref().map(|d| DeliveryPlan {
            capacity_per_day: d.capacity_per_day,
            first_day: holdfast_core::Day(start.div_euclid(DAY_MS)),
        }),
        admission_per_s: setup.admission_per_s,
        pass_ttl_millis: 120_000,
        lottery_seed: None,
    };
    spec.validate()
        .context("the scenario's sale is not valid")?;
    Ok(spec)
}

/// The crowd, in order of arrival: the early ones evenly until the opening, the rest on a
/// triangle peaking at `peak_at_s`; some come back with a second account.
fn arrivals(crowd: &Crowd, opens_at_s: u64, rng: &mut StdRng) -> Vec<Arrival> {
    let channels: Vec<(Channel, f64)> = crowd
        .channels
        .iter()
        .filter_map(|(name, share)| Some((Channel::parse(name)?, *share)))
        .collect();
    let total: f64 = channels.iter().map(|(_, s)| s).sum();
    let pick_channel = |rng: &mut StdRng| {
        let mut x = rng.random::<f64>() * total;
        for (channel, share) in &channels {
            if x < *share {
                return *channel;
            }
            x -= share;
        }
        Channel::Web
    };
    let (from, peak, until) = (
        crowd.arrive_from_s as f64 * 1000.0,
        crowd.peak_at_s as f64 * 1000.0,
        crowd.arrive_until_s as f64 * 1000.0,
    );
    let mut list = Vec::with_capacity(crowd.count as usize);
    for account in 0..crowd.count {
        let early = account < crowd.early_count;
        let at_ms = if early {
            let span = (opens_at_s.saturating_sub(crowd.early_from_s)) as f64 * 1000.0;
            crowd.early_from_s as f64 * 1000.0 + rng.random::<f64>() * span
        } else {
            triangle(rng.random::<f64>(), from, peak, until)
        } as i64;
        let channel = pick_channel(rng);
        list.push(Arrival {
            at_ms,
            account,
            second_account: false,
            channel,
            early,
        });
        if rng.random::<f64>() < crowd.second_account {
            let later = at_ms + rng.random_range(0..60_000);
            list.push(Arrival {
                at_ms: later,
                account,
                second_account: true,
                channel: pick_channel(rng),
                early: false,
            });
        }
    }
    list.sort_by_key(|a| a.at_ms);
    list
}

/// The inverse of the triangle distribution's CDF.
fn triangle(u: f64, a: f64, c: f64, b: f64) -> f64 {
    if b <= a {
        return a;
    }
    let split = (c - a) / (b - a);
    if u < split {
        a + (u * (b - a) * (c - a)).sqrt()
    } else {
        b - ((1.0 - u) * (b - a) * (b - c)).sqrt()
    }
}

/// A shopper's identity: a second account carries the same phone, written another way.
fn shopper_of(arrival: &Arrival) -> Shopper {
    let (head, tail) = (arrival.account / 10_000, arrival.account % 10_000);
    let (id, phone) = if arrival.second_account {
        (
            format!("a{}-second", arrival.account),
            format!("+82 10 {head:04} {tail:04}"),
        )
    } else {
        (
            format!("a{}", arrival.account),
            format!("010-{head:04}-{tail:04}"),
        )
    };
    Shopper::new(&id, Some(&phone), None).expect("the replay's phones are phones")
}

fn schedule_payment(
    wheel: &mut BTreeMap<i64, Vec<Action>>,
    rng: &mut StdRng,
    crowd: &Crowd,
    t: i64,
    arrival: u32,
    hold: HoldId,
) {
    let pay_ms = rng.random_range(crowd.pay_s[0] * 1000..=crowd.pay_s[1] * 1000) as i64;
    let at = (t + pay_ms).div_euclid(TICK_MS) * TICK_MS;
    wheel
        .entry(at)
        .or_default()
        .push(Action::Confirm { arrival, hold });
}

fn second_of(
    sale: &Sale,
    tally: &Tally,
    naive: &Naive,
    t: i64,
    start: i64,
    started: Instant,
) -> Second {
    let queue = sale.queue();
    let now = Timestamp(start + t);
    let shares: u32 = Channel::ALL.iter().map(|c| sale.share_left(*c)).sum();
    Second {
        t_s: t / 1000,
        available: sale.available(),
        shares,
        held: sale.held(),
        sold: sale.sold(),
        waiting: queue.entries().len() as u32
            - queue.admitted_through().min(queue.entries().len() as u32),
        admitted: queue.admitted_through(),
        joins: tally.joins,
        holds: tally.holds,
        orders: tally.orders,
        requests: tally.requests,
        refused: tally.refused.clone(),
        work_us: started.elapsed().as_micros() as u64,
        promising_day: sale
            .delivery_quote(now)
            .ok()
            .flatten()
            .filter(|_| sale.available() > 0)
            .map(|day| day.0 - start.div_euclid(DAY_MS)),
        naive_sold: naive.sold,
        naive_timeouts: naive.timeouts_this_second,
    }
}

/// The design without a waiting room, meeting the same crowd: every shopper presses "buy"
/// until they get an answer or give up; the server answers `capacity_per_s` a second and the
/// rest time out; requests within `read_write_gap_ms` of each other read the same stock.
struct Naive {
    stock: i64,
    sold: i64,
    capacity_per_s: u64,
    gap_ms: u64,
    sells_before_open: bool,
    per_account_limit: bool,
    trying: VecDeque<(i64, u32)>,
    /// Phones (accounts) that bought; a second account of a person who bought buys again.
    bought: HashMap<u32, u32>,
    timeouts: u64,
    timeouts_this_second: u64,
    sold_before_open: i64,
    over_limit: u64,
}

impl Naive {
    fn new(scenario: &Scenario, stock: u32) -> Naive {
        Naive {
            stock: i64::from(stock),
            sold: 0,
            capacity_per_s: u64::from(scenario.naive.capacity_per_s.max(1)),
            gap_ms: scenario.naive.read_write_gap_ms.max(1),
            sells_before_open: scenario.naive.sells_before_open,
            per_account_limit: scenario.naive.per_account_limit,
            trying: VecDeque::new(),
            bought: HashMap::new(),
            timeouts: 0,
            timeouts_this_second: 0,
            sold_before_open: 0,
            over_limit: 0,
        }
    }

    fn arrive(&mut self, id: u32, _arrival: &Arrival, t: i64) {
        self.trying.push_back((t, id));
    }

    /// One second of the naive server: who gets an answer, who buys, who times out.
    fn second(&mut self, t: i64, opens_after_ms: i64, arrivals: &[Arrival]) {
        self.timeouts_this_second = 0;
        let open = self.sells_before_open || t >= opens_after_ms;
        if !open {
            return;
        }
        let mut due = Vec::new();
        while self.trying.front().is_some_and(|(at, _)| *at <= t) {
            due.push(self.trying.pop_front().expect("checked").1);
        }
        let answered = (due.len() as u64).min(self.capacity_per_s) as usize;
        let windows = (1000 / self.gap_ms).max(1) as usize;
        let per_window = answered.div_ceil(windows).max(1);
        for window in due[..answered].chunks(per_window) {
            // Everyone in the window saw the stock as it was when the window began.
            if self.stock <= 0 {
                break;
            }
            for &id in window {
                let arrival = &arrivals[id as usize];
                let person = arrival.account;
                let again = self.bought.get(&person).copied().unwrap_or(0);
                if again > 0 && !(self.per_account_limit && arrival.second_account) {
                    continue;
                }
                if again > 0 {
                    self.over_limit += 1;
                }
                *self.bought.entry(person).or_default() += 1;
                self.stock -= 1;
                self.sold += 1;
                if t < opens_after_ms {
                    self.sold_before_open += 1;
                }
            }
        }
        for &id in &due[answered..] {
            self.timeouts += 1;
            self.timeouts_this_second += 1;
            let arrived = arrivals[id as usize].at_ms;
            if t + NAIVE_RETRY_MS - arrived < NAIVE_PATIENCE_MS && self.stock > 0 {
                self.trying.push_back((t + NAIVE_RETRY_MS, id));
            }
        }
    }
}

fn outcome(
    scenario: &Scenario,
    sale: &Sale,
    seconds: Vec<Second>,
    naive: &Naive,
    folded: u64,
    commands: u64,
) -> Outcome {
    let setup = scenario.sale.as_ref().expect("checked");
    let restocked: u32 = scenario.restock.iter().map(|r| r.quantity).sum();
    let stock = setup.stock + restocked;
    let mut per_person: HashMap<&holdfast_core::IdentityKey, u32> = HashMap::new();
    for order in sale.orders() {
        for key in order.shopper.keys() {
            *per_person.entry(key).or_default() += order.quantity;
        }
    }
    let most = per_person.values().copied().max().unwrap_or(0);
    let opens_at_s = setup.opens_at_s as i64;
    let sold_before_open = seconds
        .iter()
        .filter(|s| s.t_s < opens_at_s)
        .map(|s| s.sold)
        .max()
        .unwrap_or(0);
    let refused_early: u64 = seconds
        .iter()
        .filter(|s| s.t_s <= opens_at_s)
        .map(|s| s.refused.get("not_open").copied().unwrap_or(0))
        .sum();
    let sold = sale.sold();
    let sold_out_at = seconds
        .iter()
        .find(|s| s.sold == stock)
        .map(|s| s.t_s - opens_at_s);
    let mut checks = vec![
        Check::new(
            "sold exactly the stock",
            sold <= stock && sale.total() == stock,
            format!(
                "{sold} of {stock} units sold, {} held, {} left; the ledger balanced after every command",
                sale.held(),
                sale.available()
            ),
        ),
        Check::new(
            "nothing before the announced instant",
            sold_before_open == 0,
            format!(
                "{sold_before_open} units sold before the opening; {refused_early} early attempts refused `not_open`"
            ),
        ),
        Check::new(
            "nobody over the limit",
            most <= setup.per_person_limit,
            format!(
                "the most any person (any account, phone written any way) bought: {most} of {} allowed; {folded} second accounts given the place their person already had",
                setup.per_person_limit
            ),
        ),
    ];
    if setup.queue == "fifo" {
        // Every buyer's place in line was one the waiting room had let in, and it let places
        // in strictly in join order: nobody bought ahead of someone who came before and waited.
        let queue = sale.queue();
        let through = queue.admitted_through();
        let out_of_turn = sale
            .orders()
            .iter()
            .filter(|order| {
                let keys: Vec<u64> = order
                    .shopper
                    .keys()
                    .iter()
                    .map(holdfast_core::key_digest)
                    .collect();
                queue.find(&keys).is_none_or(|entry| entry >= through)
            })
            .count();
        checks.push(Check::new(
            "fair: in the order they came",
            out_of_turn == 0,
            format!(
                "{out_of_turn} orders from a place not yet let in; places 1 to {through} were let in, in join order; {} still waiting when it sold out were told so at once",
                (queue.entries().len() as u32).saturating_sub(through)
            ),
        ));
    }
    if let Some(delivery) = &setup.delivery {
        let first_day = holdfast_core::Day(scenario.start_ms().div_euclid(DAY_MS));
        let last = sale
            .orders()
            .iter()
            .filter_map(|o| o.deliver_by)
            .max()
            .map_or(0, |day| day.0 - first_day.0);
        let mut per_day: HashMap<i64, u32> = HashMap::new();
        for order in sale.orders() {
            if let Some(day) = order.deliver_by {
                *per_day.entry(day.0).or_default() += order.quantity;
            }
        }
        let busiest = per_day.values().copied().max().unwrap_or(0);
        checks.push(Check::new(
            "delivery promises kept",
            busiest <= delivery.capacity_per_day,
            format!(
                "{} parcels a day: orders were quoted day 0 to day {last} before paying; the busiest day has {busiest}",
                delivery.capacity_per_day
            ),
        ));
    }
    let mut naive_lines = vec![format!(
        "sold {} units of {stock}: {} oversold; {} requests timed out",
        naive.sold,
        (naive.sold - i64::from(stock)).max(0),
        naive.timeouts
    )];
    if scenario.naive.sells_before_open {
        naive_lines.push(format!(
            "{} units sold before the announced instant",
            naive.sold_before_open
        ));
    }
    if scenario.naive.per_account_limit {
        naive_lines.push(format!(
            "{} units went to people over the limit (second accounts)",
            naive.over_limit
        ));
    }
    if scenario.naive.same_day_promise
        && let Some(delivery) = &setup.delivery
    {
        let broken =
            (naive.sold.min(i64::from(stock)) - i64::from(delivery.capacity_per_day)).max(0);
        naive_lines.push(format!(
            "{broken} same-day promises broken (the warehouse ships {} a day)",
            delivery.capacity_per_day
        ));
    }
    Outcome {
        seconds,
        checks,
        naive: naive_lines,
        headline: format!(
            "{}; each of the {commands} commands the crowd sent was answered at once (let in, \
             queued, or refused with a reason), none refused for load",
            match sold_out_at {
                Some(s) => format!("{sold} units sold, the last {s} s after the opening"),
                None => format!("{sold} of {stock} units sold"),
            }
        ),
        opens_at_s: Some(opens_at_s),
        extra: Vec::new(),
    }
}
