//! The event feed: what an operator watches, sampled once a second (`Limits::feed_every`) into
//! a `Sample` — every sale's stock buckets, holds and orders per second, waiting room and the
//! delivery day being promised; the server's requests, refusals for load and latency; every
//! till's contact and backlog. Samples are kept for the last ten minutes, so a client that
//! reconnects with `Last-Event-ID` misses nothing, and a new one draws its charts from history
//! at once. `GET /v1/events` (`api/events.rs`) streams them; the dashboard draws them.
//!
//! On several nodes each node samples the sales and tills it serves.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use holdfast_core::{SaleStatus, Timestamp};
use serde::Serialize;
use tokio::sync::watch;

use crate::api::wire::{format_day, format_time};
use crate::state::AppState;
use crate::terminals::{Reach, TerminalStatus};

/// Samples kept: ten minutes at one a second...
const SAMPLES_KEPT: usize = 600;
/// ...and no more bytes than this, however many sales and tills a sample describes.
const SAMPLES_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Tills listed by name in one sample; the rest are counted. Those in trouble come first.
const TILLS_LISTED_MAX: usize = 200;

/// The samples of the last minutes, and a signal for subscribers when a new one is taken.
pub struct Feed {
    samples: Mutex<Kept>,
    /// The newest sample's id, and whether the feed has ended (the server is stopping).
    newest: watch::Sender<(u64, bool)>,
}

#[derive(Default)]
struct Kept {
    samples: VecDeque<(u64, Arc<str>)>,
    bytes: usize,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            samples: Mutex::new(Kept::default()),
            newest: watch::Sender::new((0, false)),
        }
    }
}

impl Feed {
    fn push(&self, id: u64, sample: Arc<str>) {
        let mut kept = self.samples.lock().expect("feed samples");
        kept.bytes += sample.len();
        kept.samples.push_back((id, sample));
        while kept.samples.len() > SAMPLES_KEPT
            || (kept.bytes > SAMPLES_BYTES_MAX && kept.samples.len() > 1)
        {
            let (_, oldest) = kept.samples.pop_front().expect("not empty");
            kept.bytes -= oldest.len();
        }
        drop(kept);
        self.newest.send_modify(|(newest, _)| *newest = id);
    }

    /// The samples kept that are newer than `id` (all of them without one), oldest first.
    pub fn after(&self, id: Option<u64>) -> Vec<(u64, Arc<str>)> {
        let kept = self.samples.lock().expect("feed samples");
        kept.samples
            .iter()
            .filter(|(sample, _)| id.is_none_or(|id| *sample > id))
            .cloned()
            .collect()
    }

    /// Changes when a sample is taken or the feed ends.
    pub fn subscribe(&self) -> watch::Receiver<(u64, bool)> {
        self.newest.subscribe()
    }

    /// Ends every subscriber's stream (the server is stopping).
    pub fn end(&self) {
        self.newest.send_modify(|(_, ended)| *ended = true);
    }
}

#[derive(Serialize)]
struct Sample {
    id: u64,
    at: String,
    server: ServerSample,
    sales: Vec<SaleSample>,
    tills: TillsSample,
}

#[derive(Serialize)]
struct ServerSample {
    requests_per_s: f64,
    /// Requests refused for load (`429`) per second: the server is overloaded while this is
    /// above zero.
    shed_per_s: f64,
    shed_total: u64,
    overloaded: bool,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

#[derive(Serialize)]
struct SaleSample {
    id: String,
    name: String,
    state: SaleStatus,
    paused: holdfast_core::Paused,
    stock: StockSample,
    holds_per_s: f64,
    orders_per_s: f64,
    orders: usize,
    queue: QueueSample,
    /// The delivery day a hold placed now is promised, on a sale with a delivery plan.
    promising: Option<String>,
}

#[derive(Serialize)]
struct StockSample {
    total: u32,
    /// In the pool for anyone.
    available: u32,
    /// Of `available`, reserved for a channel (web, app, phone, store).
    shares: u32,
    allotted: u32,
    held: u32,
    sold: u32,
}

#[derive(Serialize)]
struct QueueSample {
    mode: holdfast_core::QueueMode,
    entries: u32,
    waiting: u32,
    /// The last position let in.
    admitted: u32,
    admission_per_s: u32,
    passes_outstanding: u32,
}

#[derive(Serialize)]
struct TillsSample {
    total: usize,
    online: usize,
    /// In touch, but the server put their syncs off: the server is overloaded, not the shop.
    deferred: usize,
    /// No contact within the online window (or never).
    unreachable: usize,
    list: Vec<TillSample>,
}

#[derive(Serialize)]
struct TillSample {
    terminal_id: String,
    store: String,
    reach: Reach,
    last_contact_at: Option<String>,
    /// The last moment it was known in touch, while it is not.
    offline_since: Option<String>,
    entries_pending: u64,
    quarantined: usize,
    allotment_left: u32,
}

/// What the previous sample counted, for the rates of this one.
#[derive(Default)]
struct Previous {
    taken: Option<Instant>,
    shed_total: u64,
    /// Per sale: holds placed and orders so far.
    sales: HashMap<String, (u64, usize)>,
}

/// Takes a sample every `every` until `stop`, then ends the feed.
pub async fn run(state: AppState, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut previous = Previous::default();
    let mut last_id = 0;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break,
            _ = ticks.tick() => {}
        }
        let now = state.clock.now();
        // Ids are the sample's time in ms, kept increasing, so a `Last-Event-ID` from before
        // a restart still means "after this moment".
        let id = u64::try_from(now.0).unwrap_or(0).max(last_id + 1);
        last_id = id;
        let sample = take(&state, id, now, &mut previous).await;
        let json = serde_json::to_string(&sample).expect("samples serialise");
        state.feed.push(id, json.into());
    }
    state.feed.end();
}

async fn take(state: &AppState, id: u64, now: Timestamp, previous: &mut Previous) -> Sample {
    let taken = Instant::now();
    let seconds = previous
        .taken
        .map_or(0.0, |at| taken.duration_since(at).as_secs_f64());
    let per_s = |delta: u64| {
        if seconds > 0.0 {
            delta as f64 / seconds
        } else {
            0.0
        }
    };
    let (requests, p50, p99) = state.latencies.take();
    let shed_total = state.requests_shed.load(Ordering::Relaxed);
    let shed_per_s = per_s(shed_total.saturating_sub(previous.shed_total));
    let to_ms = |micros: u64| (requests > 0).then(|| micros as f64 / 1000.0);
    let server = ServerSample {
        requests_per_s: per_s(requests),
        shed_per_s,
        shed_total,
        overloaded: shed_per_s > 0.0,
        p50_ms: to_ms(p50),
        p99_ms: to_ms(p99),
    };
    let mut counts = HashMap::new();
    let mut sales = Vec::new();
    for (sale_id, sale) in state.ledger.sales() {
        let view = sale.view();
        let counted = (view.holds_placed, view.orders);
        let (holds_before, orders_before) =
            previous.sales.get(&sale_id).copied().unwrap_or(counted);
        let queue = &view.queue;
        sales.push(SaleSample {
            id: sale_id.clone(),
            name: view.spec.name.clone(),
            state: view.status(now),
            paused: view.paused,
            stock: StockSample {
                total: view.total,
                available: view.available,
                shares: view.shares_left.iter().sum(),
                allotted: view.allotted,
                held: view.held,
                sold: view.sold,
            },
            holds_per_s: per_s(view.holds_placed.saturating_sub(holds_before)),
            orders_per_s: per_s(view.orders.saturating_sub(orders_before) as u64),
            orders: view.orders,
            queue: QueueSample {
                mode: view.spec.queue,
                entries: queue.entries,
                waiting: queue.entries.saturating_sub(queue.admitted_through),
                admitted: queue.admitted_through,
                admission_per_s: view.spec.admission_per_s,
                passes_outstanding: queue.outstanding,
            },
            promising: view.promising.map(format_day),
        });
        counts.insert(sale_id, counted);
    }
    sales.sort_by(|a, b| a.id.cmp(&b.id));
    *previous = Previous {
        taken: Some(taken),
        shed_total,
        sales: counts,
    };
    Sample {
        id,
        at: format_time(now),
        server,
        sales,
        tills: tills(state, now).await,
    }
}

async fn tills(state: &AppState, now: Timestamp) -> TillsSample {
    let mut statuses = Vec::new();
    for terminal in state.terminals.all() {
        statuses.push(terminal.status().await);
    }
    let reach: Vec<Reach> = statuses.iter().map(|s| s.reach(now)).collect();
    let count = |wanted: &[Reach]| reach.iter().filter(|r| wanted.contains(r)).count();
    let mut list: Vec<TillSample> = statuses
        .into_iter()
        .zip(reach.iter().copied())
        .map(|(status, reach)| till(status, reach))
        .collect();
    // Trouble first (out of touch, then put off, then a backlog), then by name.
    list.sort_by(|a, b| {
        let rank = |t: &TillSample| {
            (
                t.reach == Reach::Online,
                t.quarantined == 0,
                t.entries_pending == 0,
            )
        };
        rank(a)
            .cmp(&rank(b))
            .then_with(|| a.terminal_id.cmp(&b.terminal_id))
    });
    list.truncate(TILLS_LISTED_MAX);
    TillsSample {
        total: reach.len(),
        online: count(&[Reach::Online]),
        deferred: count(&[Reach::Deferred]),
        unreachable: count(&[Reach::Unreachable, Reach::Never]),
        list,
    }
}

fn till(status: TerminalStatus, reach: Reach) -> TillSample {
    let out_of_touch = matches!(reach, Reach::Unreachable);
    TillSample {
        reach,
        last_contact_at: status.last_contact_at.map(format_time),
        offline_since: status
            .last_contact_at
            .filter(|_| out_of_touch)
            .map(format_time),
        entries_pending: status.unsynced,
        quarantined: status.quarantined,
        allotment_left: status.allotments.iter().map(|(_, units)| units).sum(),
        terminal_id: status.terminal_id,
        store: status.store,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The feed keeps ten minutes of samples, and never more bytes than its budget: a server
    /// with thousands of sales does not grow without bound.
    #[test]
    fn the_feed_forgets_the_oldest_samples_first_within_its_bounds() {
        let feed = Feed::default();
        for id in 1..=SAMPLES_KEPT as u64 + 5 {
            feed.push(id, Arc::from("{}"));
        }
        let kept = feed.after(None);
        assert_eq!(kept.len(), SAMPLES_KEPT);
        assert_eq!(kept[0].0, 6, "the oldest went first");
        let big: Arc<str> = Arc::from("x".repeat(SAMPLES_BYTES_MAX / 4).as_str());
        for id in 1_000..1_010 {
            feed.push(id, big.clone());
        }
        let kept = feed.after(None);
        let bytes: usize = kept.iter().map(|(_, s)| s.len()).sum();
        assert!(bytes <= SAMPLES_BYTES_MAX, "{bytes}");
        assert_eq!(kept.last().unwrap().0, 1_009, "the newest is always kept");
        assert_eq!(feed.after(Some(1_007)).len(), 2);
    }
}
