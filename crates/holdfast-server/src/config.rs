use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::payments::{PaymentProvider, SimulatedAcquirer};

/// Everything `Application::build` needs. Tests build one with `Config::for_tests`.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The operator's bearer token. `None` makes the server generate one (see `Application`).
    pub operator_token: Option<String>,
    pub clock: Arc<dyn Clock>,
    pub payments: Arc<dyn PaymentProvider>,
    pub limits: Limits,
    /// Several nodes on one PostgreSQL database; `None` is one process on the embedded log in
    /// `data_dir`.
    pub cluster: Option<ClusterConfig>,
}

/// Named bounds on every queue and batch.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Commands waiting for one sale's actor; beyond it callers get 429 at once.
    pub sale_queue_commands_max: usize,
    /// Commands one actor decides before one durable append.
    pub sale_batch_commands_max: usize,
    /// Batches one actor may have submitted but not yet seen durable.
    pub sale_batches_in_flight_max: usize,
    /// Events in a sale's log between two snapshots.
    pub snapshot_every_events: u64,
    /// Write requests being served at once; more are answered 429 at once.
    pub writes_in_flight_max: usize,
    /// Terminal syncs being served at once; more are told to retry after a spread-out pause.
    pub syncs_in_flight_max: usize,
    /// Sales one server keeps.
    pub sales_max: usize,
    /// Largest request body accepted (a till's sync has its own, larger bound).
    pub body_bytes_max: usize,
    /// Connections served at once; beyond it new ones wait in the listen backlog.
    pub connections_max: usize,
    /// How long a client has to send a request's headers, and how long an idle keep-alive
    /// connection is kept.
    pub header_read_timeout: Duration,
    /// How long a request body may take to arrive, plus a little per kilobyte.
    pub body_read_timeout: Duration,
    /// How often payment settlements the card network has not taken are looked at again.
    pub settlement_retry_every: Duration,
    /// How long a customer token lives when the operator does not say.
    pub customer_token_ttl_s_default: u64,
    /// How often the event feed samples what the operator watches.
    pub feed_every: Duration,
    /// How often the log's keyed values are compacted (expired answers, settled payments).
    pub compact_values_every: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sale_queue_commands_max: 16_384,
            sale_batch_commands_max: 1_024,
            sale_batches_in_flight_max: 4,
            snapshot_every_events: 100_000,
            sales_max: 10_000,
            writes_in_flight_max: 512,
            syncs_in_flight_max: 16,
            body_bytes_max: 16 * 1024,
            connections_max: 16_384,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            settlement_retry_every: Duration::from_secs(5),
            customer_token_ttl_s_default: 24 * 3600,
            feed_every: Duration::from_secs(1),
            compact_values_every: Duration::from_secs(10),
        }
    }
}

impl Config {
    pub fn new(listen: SocketAddr, data_dir: PathBuf, operator_token: Option<String>) -> Config {
        Config {
            listen,
            data_dir,
            operator_token,
            clock: Arc::new(SystemClock),
            payments: Arc::new(SimulatedAcquirer::default()),
            limits: Limits::default(),
            cluster: None,
        }
    }
}

/// How a node joins the others.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub database_url: String,
    /// Where the other nodes reach this one (`http://host:port`).
    pub advertise: String,
    /// How long a lease lasts without renewal: how soon a dead node's sales are taken over.
    pub lease_ttl: Duration,
}
