//! What an operator watches and alerts on: the Prometheus exposition at `/metrics` (requests by
//! route and status with latency, per-sale stock and waiting room, tills, the payment retry
//! queue, the idempotency index, the log's size, the process), and the latencies of the last
//! moments, which the event feed reports as p50 and p99.
//!
//! Counters and histograms are recorded where things happen; gauges describing state (a sale's
//! buckets, a till's last contact) are read fresh from that state at each scrape, so the hot
//! path pays nothing for them.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use axum::http::Method;
use hdrhistogram::Histogram;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::state::AppInner;

/// Latency buckets (seconds) for request and commit histograms: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The process's one Prometheus recorder (the metrics facade allows one; tests build many
/// servers in one process and share it).
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("the buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            process_collector().describe();
            handle
        })
        .clone()
}

fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Records one answered request: by route template (never the raw path, whose ids are
/// unbounded), method and status.
pub fn record_request(route: &str, method: &Method, status: u16, elapsed: Duration) {
    let method = method_label(method);
    ROUTES.with_borrow_mut(|routes| {
        if !routes.contains_key(route) {
            routes.insert(route.to_owned(), RouteMetrics::new(route));
        }
        let metrics = routes.get_mut(route).expect("inserted above");
        metrics.requests(method, status).increment(1);
        metrics.seconds.record(elapsed.as_secs_f64());
    });
}

/// The method as a label value: a standard method by name, any other a client made up as
/// `other` — each label value is a series kept for the life of the process, so a stranger
/// inventing a method per request must not invent a series per request.
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

thread_local! {
    /// Each thread's handles to the request metrics, by route template: building a metric's
    /// key and looking it up in the registry cost more than the request's own rules did. Routes,
    /// method labels and statuses are few, so this stays small.
    static ROUTES: std::cell::RefCell<HashMap<String, RouteMetrics>> =
        std::cell::RefCell::new(HashMap::new());
}

struct RouteMetrics {
    /// The route as a label value.
    label: String,
    seconds: metrics::Histogram,
    requests: Vec<((&'static str, u16), metrics::Counter)>,
}

impl RouteMetrics {
    fn new(route: &str) -> RouteMetrics {
        // `/v1/sales/{id}/holds` is written `/v1/sales/:id/holds`: braces inside a label value
        // are legal, but simple parsers of the exposition stop at the first `}`.
        let label = route.replace('{', ":").replace('}', "");
        let seconds =
            metrics::histogram!("holdfast_http_request_seconds", "route" => label.clone());
        RouteMetrics {
            label,
            seconds,
            requests: Vec::new(),
        }
    }

    fn requests(&mut self, method: &'static str, status: u16) -> &metrics::Counter {
        let index = match self
            .requests
            .iter()
            .position(|(key, _)| *key == (method, status))
        {
            Some(index) => index,
            None => {
                let counter = metrics::counter!("holdfast_http_requests_total",
                    "route" => self.label.clone(), "method" => method, "status" => status.to_string());
                self.requests.push(((method, status), counter));
                self.requests.len() - 1
            }
        };
        &self.requests[index].1
    }
}

/// Request latencies since the last look, for the event feed's p50 and p99.
pub struct RecentLatencies(Mutex<Histogram<u64>>);

impl Default for RecentLatencies {
    fn default() -> Self {
        RecentLatencies(Mutex::new(
            Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds"),
        ))
    }
}

impl RecentLatencies {
    pub fn record(&self, elapsed: Duration) {
        let micros = (elapsed.as_micros() as u64).clamp(1, 60_000_000);
        let _ = self.0.lock().expect("latencies").record(micros);
    }

    /// The p50 and p99 (µs) of what was recorded since the last call, and starts afresh.
    pub fn take(&self) -> (u64, u64, u64) {
        let mut histogram = self.0.lock().expect("latencies");
        let taken = (
            histogram.len(),
            histogram.value_at_quantile(0.50),
            histogram.value_at_quantile(0.99),
        );
        histogram.reset();
        taken
    }
}

/// Holds answered from a sale's published counters, by refusal: counted with atomics on the
/// request path and handed to the registry at each scrape.
#[derive(Default)]
pub struct RefusedFromView([std::sync::atomic::AtomicU64; 3]);

impl RefusedFromView {
    /// A closed sale's refusal shares `not_open` with one not open yet.
    const CODES: [&'static str; 3] = ["not_open", "sale_paused", "sold_out"];

    pub fn count(&self, refusal: &holdfast_core::Rejection) {
        if let Some(i) = Self::CODES.iter().position(|c| *c == refusal.code()) {
            self.0[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn publish(&self) {
        for (code, count) in Self::CODES.iter().zip(&self.0) {
            metrics::counter!("holdfast_holds_refused_from_view_total", "result" => *code)
                .absolute(count.load(std::sync::atomic::Ordering::Relaxed));
        }
    }
}

/// Reads the state the gauges describe, then renders the exposition.
///
/// One server at a time: the registry is the process's, and tests run several servers in one
/// process, each of whose pages must describe that server.
pub async fn render(state: &AppInner) -> String {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    metrics::gauge!("holdfast_request_bodies_in_progress").set(
        state
            .bodies_in_progress
            .load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    refresh_sales(state);
    refresh_terminals(state).await;
    metrics::gauge!("holdfast_idempotency_answers").set(state.idempotency.len() as f64);
    metrics::gauge!("holdfast_payment_settlements_pending").set(state.settlements.pending() as f64);
    if let Some(bytes) = log_bytes(state).await {
        metrics::gauge!("holdfast_log_bytes").set(bytes as f64);
    }
    state.refused_from_view.publish();
    process_collector().collect();
    state.metrics.render()
}

fn refresh_sales(state: &AppInner) {
    let now = state.clock.now();
    for (id, sale) in state.ledger.sales() {
        let view = sale.view();
        let units = |bucket: &'static str, value: u32| {
            metrics::gauge!("holdfast_sale_units", "sale" => id.clone(), "bucket" => bucket)
                .set(f64::from(value));
        };
        let shares: u32 = view.shares_left.iter().sum();
        units("total", view.total);
        units("available", view.available);
        units("shares", shares);
        units("held", view.held);
        units("sold", view.sold);
        units("allotted", view.allotted);
        let queue = &view.queue;
        let waiting = queue.entries.saturating_sub(queue.admitted_through);
        let gauge = |name: &'static str, value: f64| {
            metrics::gauge!(name, "sale" => id.clone()).set(value);
        };
        gauge("holdfast_sale_queue_entries", f64::from(queue.entries));
        gauge("holdfast_sale_queue_waiting", f64::from(waiting));
        gauge(
            "holdfast_sale_queue_admitted_position",
            f64::from(queue.admitted_through),
        );
        gauge(
            "holdfast_sale_passes_outstanding",
            f64::from(queue.outstanding),
        );
        gauge("holdfast_sale_orders", view.orders as f64);
        let open = view.status(now) == holdfast_core::SaleStatus::Open;
        gauge("holdfast_sale_open", if open { 1.0 } else { 0.0 });
    }
}

async fn refresh_terminals(state: &AppInner) {
    let now = state.clock.now();
    let mut online = 0;
    for terminal in state.terminals.all() {
        let status = terminal.status().await;
        let id = status.terminal_id.clone();
        let gauge = |name: &'static str, value: f64| {
            metrics::gauge!(name, "terminal" => id.clone()).set(value);
        };
        let since = status.last_contact_at.map(|at| (now.0 - at.0).max(0));
        if status.reach(now) == crate::terminals::Reach::Online {
            online += 1;
        }
        gauge(
            "holdfast_terminal_seconds_since_contact",
            since.map_or(-1.0, |ms| ms as f64 / 1000.0),
        );
        gauge("holdfast_terminal_entries_pending", status.unsynced as f64);
        gauge("holdfast_terminal_quarantined", status.quarantined as f64);
    }
    metrics::gauge!("holdfast_terminals_online").set(f64::from(online));
    metrics::gauge!("holdfast_terminals").set(state.terminals.all().len() as f64);
}

/// How many bytes the log takes: the embedded database's files, or the log table on
/// PostgreSQL.
async fn log_bytes(state: &AppInner) -> Option<u64> {
    if let Some(cluster) = &state.cluster {
        let size = cluster
            .store
            .query_i64("SELECT pg_total_relation_size('log')")
            .await
            .ok()?;
        return u64::try_from(size).ok();
    }
    let dir = state.data_dir.as_ref()?;
    let files = ["holdfast.db", "holdfast.db-wal"];
    Some(
        files
            .iter()
            .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
            .map(|m| m.len())
            .sum(),
    )
}
