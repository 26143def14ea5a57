//! All sales this process writes: rebuilding them from the log (at start-up, or when this node
//! takes a sale over from another), creating new ones, finding them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use holdfast_core::{Sale, SaleSpec};
use holdfast_store::{
    Batch, GroupCommit, GroupCommitConfig, LogBackend, Record, StoreError, StoredRecord,
    StoredSnapshot,
};
use thiserror::Error;

use crate::actor::{SaleActor, SaleHandle};
use crate::clock::Clock;
use crate::config::Limits;
pub use crate::ledger_error::LedgerError;
use crate::log_entry::LogEntry;
use crate::snapshots::Snapshotter;
use crate::streams::{StreamKind, Streams};

/// Reasons the server refuses to start: it will not serve from a log it cannot trust.
#[derive(Debug, Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("log record {seq} cannot be decoded: {reason}")]
    Undecodable { seq: u64, reason: String },
    #[error("log record {seq} belongs to sale '{stream}', which was never created")]
    UnknownSale { seq: u64, stream: String },
    #[error("sale '{stream}' is inconsistent after replay: {reason}")]
    Inconsistent { stream: String, reason: String },
    #[error("stream '{0}' was read back by a node that does not hold it")]
    NotHeld(String),
}

pub enum Created {
    New(SaleHandle),
    /// A sale with this id exists already; the caller compares specs.
    Existing(SaleHandle),
}

pub struct Ledger {
    sales: RwLock<HashMap<String, SaleHandle>>,
    creating: tokio::sync::Mutex<()>,
    streams: Streams,
    snapshotter: Snapshotter,
    clock: Arc<dyn Clock>,
    limits: Limits,
}

/// What recovery hands back besides the ledger: keyed values (idempotency answers, terminal
/// registrations) and the snapshots of terminal streams (their sync progress).
pub struct RecoveredRest {
    pub values: Vec<(String, Vec<u8>)>,
    pub terminal_snapshots: Vec<StoredSnapshot>,
}

impl Ledger {
    /// Rebuilds every sale from snapshots and the log after them, checks each deeply, then
    /// starts the log writer and one actor per sale. Must run inside a tokio runtime.
    pub fn recover<B: LogBackend>(
        mut backend: B,
        snapshotter: Snapshotter,
        clock: Arc<dyn Clock>,
        limits: Limits,
    ) -> Result<(Ledger, RecoveredRest), RecoveryError> {
        let recovery = backend.recover()?;
        let (terminal_snapshots, sale_snapshots): (Vec<_>, Vec<_>) = recovery
            .snapshots
            .into_iter()
            .partition(|s| !matches!(StreamKind::of(&s.stream), StreamKind::Sale(_)));
        let replayed = recovery.records.len();
        let sales = rebuild(sale_snapshots, recovery.records)?;
        tracing::info!(sales = sales.len(), records = replayed, "ledger recovered");
        let log = GroupCommit::spawn(backend, GroupCommitConfig::default());
        let ledger = Ledger::empty(Streams::alone(log), snapshotter, clock, limits);
        for (_, (sale, since)) in sales {
            ledger.start(sale, since)?;
        }
        let rest = RecoveredRest {
            values: recovery.values,
            terminal_snapshots,
        };
        Ok((ledger, rest))
    }

    /// A ledger with no sales yet, writing through `streams`: one node of several, which
    /// takes sales over one at a time (`adopt`).
    pub fn empty(
        streams: Streams,
        snapshotter: Snapshotter,
        clock: Arc<dyn Clock>,
        limits: Limits,
    ) -> Ledger {
        Ledger {
            sales: RwLock::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
            streams,
            snapshotter,
            clock,
            limits,
        }
    }

    /// Starts serving a sale this node has just taken over, from its stream as stored. A
    /// stream with nothing in it (a sale never created) starts nothing.
    pub fn adopt(
        &self,
        stream: &str,
        snapshot: Option<StoredSnapshot>,
        records: Vec<StoredRecord>,
    ) -> Result<(), RecoveryError> {
        let sales = rebuild(snapshot.into_iter().collect(), records)?;
        for (id, (sale, since)) in sales {
            if id == stream {
                self.start(sale, since)?;
            }
        }
        Ok(())
    }

    /// Stops serving a sale another node has taken over. Its actor ends once the requests it
    /// has finish; whatever it still tries to write is refused by its fence.
    pub fn drop_sale(&self, id: &str) {
        self.sales.write().expect("sales map").remove(id);
    }

    fn start(&self, sale: Sale, events_since_snapshot: u64) -> Result<SaleHandle, RecoveryError> {
        let id = sale.spec().id.clone();
        let writer = self
            .streams
            .writer(&id)
            .map_err(|_| RecoveryError::NotHeld(id.clone()))?;
        let handle = SaleActor::spawn(
            sale,
            events_since_snapshot,
            writer,
            self.snapshotter.clone(),
            self.clock.clone(),
            self.limits,
        );
        self.sales
            .write()
            .expect("sales map")
            .insert(id, handle.clone());
        Ok(handle)
    }

    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    /// The sale's actor, unless it has stopped (after a failed write, or on losing its lease).
    pub fn sale(&self, id: &str) -> Option<SaleHandle> {
        let sales = self.sales.read().expect("sales map");
        sales.get(id).filter(|sale| !sale.is_stopped()).cloned()
    }

    /// Every sale, as (id, handle).
    pub fn sales(&self) -> Vec<(String, SaleHandle)> {
        let sales = self.sales.read().expect("sales map");
        sales
            .iter()
            .map(|(id, sale)| (id.clone(), sale.clone()))
            .collect()
    }

    pub fn sale_count(&self) -> usize {
        self.sales.read().expect("sales map").len()
    }

    /// Creates a sale durably, then starts its actor. Creation is rare, so it is serialised.
    pub async fn create(&self, spec: SaleSpec) -> Result<Created, LedgerError> {
        let _one_at_a_time = self.creating.lock().await;
        if let Some(existing) = self.sale(&spec.id) {
            return Ok(Created::Existing(existing));
        }
        if self.sale_count() >= self.limits.sales_max {
            return Err(LedgerError::TooManySales);
        }
        let entry = LogEntry::SaleCreated { spec: spec.clone() };
        let batch = Batch {
            records: vec![Record {
                stream: spec.id.clone(),
                payload: entry.encode(),
            }],
            ..Batch::default()
        };
        self.streams.writer(&spec.id)?.append(batch).await?;
        let handle = self
            .start(Sale::new(spec), 1)
            .map_err(|_| LedgerError::Moved)?;
        Ok(Created::New(handle))
    }
}

/// Rebuilds sales from their snapshots and the records after them (in log order), checking each
/// deeply. Records of terminal and store streams are an audit trail and are skipped. Answers
/// each sale with the number of events since its snapshot.
pub(crate) fn rebuild(
    snapshots: Vec<StoredSnapshot>,
    records: Vec<StoredRecord>,
) -> Result<BTreeMap<String, (Sale, u64)>, RecoveryError> {
    let mut sales: BTreeMap<String, (Sale, u64)> = BTreeMap::new();
    let mut through: HashMap<String, u64> = HashMap::new();
    for snapshot in snapshots {
        let inconsistent = |reason: String| RecoveryError::Inconsistent {
            stream: snapshot.stream.clone(),
            reason,
        };
        let state = crate::log_entry::decode_snapshot(&snapshot.payload)
            .map_err(|e| inconsistent(e.to_string()))?;
        let sale = Sale::restore(state).map_err(inconsistent)?;
        through.insert(snapshot.stream.clone(), snapshot.through);
        sales.insert(snapshot.stream, (sale, 0));
    }
    for record in records {
        let sale_stream = matches!(StreamKind::of(&record.stream), StreamKind::Sale(_));
        if !sale_stream || record.seq <= through.get(&record.stream).copied().unwrap_or(0) {
            continue;
        }
        let undecodable = |reason: String| RecoveryError::Undecodable {
            seq: record.seq,
            reason,
        };
        match LogEntry::decode(&record.payload).map_err(|e| undecodable(e.to_string()))? {
            LogEntry::SaleCreated { spec } => {
                spec.validate().map_err(|e| undecodable(e.to_string()))?;
                sales.insert(spec.id.clone(), (Sale::new(spec), 1));
            }
            LogEntry::Events { events } => {
                let Some((sale, since_snapshot)) = sales.get_mut(&record.stream) else {
                    return Err(RecoveryError::UnknownSale {
                        seq: record.seq,
                        stream: record.stream,
                    });
                };
                for event in &events {
                    sale.apply(event);
                }
                *since_snapshot += events.len() as u64;
            }
        }
    }
    for (stream, (sale, _)) in &sales {
        sale.check_deep()
            .map_err(|reason| RecoveryError::Inconsistent {
                stream: stream.clone(),
                reason,
            })?;
    }
    Ok(sales)
}
