//! All sales: rebuilding them from the log at start-up, creating new ones, finding them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use holdfast_core::{Sale, SaleSnapshot, SaleSpec};
use holdfast_store::{
    Batch, GroupCommit, GroupCommitConfig, LogBackend, LogHandle, Record, StoreError,
    StoredSnapshot,
};
use thiserror::Error;

use crate::actor::{SaleActor, SaleHandle};
use crate::clock::Clock;
use crate::config::Limits;
use crate::error::LedgerError;
use crate::log_entry::LogEntry;
use crate::terminals;

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
}

pub enum Created {
    New(SaleHandle),
    /// A sale with this id exists already; the caller compares specs.
    Existing(SaleHandle),
}

pub struct Ledger {
    sales: RwLock<HashMap<String, SaleHandle>>,
    creating: tokio::sync::Mutex<()>,
    log: LogHandle,
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
        clock: Arc<dyn Clock>,
        limits: Limits,
    ) -> Result<(Ledger, RecoveredRest), RecoveryError> {
        let recovery = backend.recover()?;
        let mut sales: BTreeMap<String, (Sale, u64)> = BTreeMap::new();
        let mut through: HashMap<String, u64> = HashMap::new();
        let (terminal_snapshots, sale_snapshots): (Vec<_>, Vec<_>) = recovery
            .snapshots
            .into_iter()
            .partition(|s| s.stream.starts_with(terminals::STREAM_PREFIX));
        for snapshot in sale_snapshots {
            let inconsistent = |reason: String| RecoveryError::Inconsistent {
                stream: snapshot.stream.clone(),
                reason,
            };
            let state: SaleSnapshot = serde_json::from_slice(&snapshot.payload)
                .map_err(|e| inconsistent(e.to_string()))?;
            let sale = Sale::restore(state).map_err(inconsistent)?;
            through.insert(snapshot.stream.clone(), snapshot.through);
            sales.insert(snapshot.stream, (sale, 0));
        }
        let replayed = recovery.records.len();
        for record in recovery.records {
            // Terminal streams are an audit trail; their state comes from their snapshots.
            let terminal = record.stream.starts_with(terminals::STREAM_PREFIX);
            if terminal || record.seq <= through.get(&record.stream).copied().unwrap_or(0) {
                continue;
            }
            let entry =
                LogEntry::decode(&record.payload).map_err(|e| RecoveryError::Undecodable {
                    seq: record.seq,
                    reason: e.to_string(),
                })?;
            match entry {
                LogEntry::SaleCreated { spec } => {
                    spec.validate().map_err(|e| RecoveryError::Undecodable {
                        seq: record.seq,
                        reason: e.to_string(),
                    })?;
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
        tracing::info!(sales = sales.len(), records = replayed, "ledger recovered");
        let log = GroupCommit::spawn(backend, GroupCommitConfig::default());
        let handles = sales
            .into_iter()
            .map(|(id, (sale, since))| {
                let handle = SaleActor::spawn(sale, since, log.clone(), clock.clone(), limits);
                (id, handle)
            })
            .collect();
        let ledger = Ledger {
            sales: RwLock::new(handles),
            creating: tokio::sync::Mutex::new(()),
            log,
            clock,
            limits,
        };
        let rest = RecoveredRest {
            values: recovery.values,
            terminal_snapshots,
        };
        Ok((ledger, rest))
    }

    pub fn log(&self) -> &LogHandle {
        &self.log
    }

    pub fn sale(&self, id: &str) -> Option<SaleHandle> {
        self.sales.read().expect("sales map").get(id).cloned()
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
        self.log.append(batch).await?;
        let id = spec.id.clone();
        let handle = SaleActor::spawn(
            Sale::new(spec),
            1,
            self.log.clone(),
            self.clock.clone(),
            self.limits,
        );
        self.sales
            .write()
            .expect("sales map")
            .insert(id, handle.clone());
        Ok(Created::New(handle))
    }
}
