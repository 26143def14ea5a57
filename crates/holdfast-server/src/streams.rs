//! Streams: what the log is divided into, and who may write each.
//!
//! A sale's stream is named by the sale's id; a terminal's and a store's carry a prefix (sale
//! ids cannot contain ':', so the names cannot collide). Each stream has one writer at a time.
//! Alone on the embedded log, this process writes every stream. On PostgreSQL with several
//! nodes, a node writes only the streams it holds a lease on, and every batch it appends carries
//! the lease's epoch as its fence (`holdfast_store::Fence`): the database refuses the append
//! once another node has taken the stream over.

use std::sync::Arc;

use holdfast_store::{Batch, Compacted, Durable, FateOf, Fence, LogHandle, StoreError};

use crate::ledger_error::LedgerError;

pub const TERMINAL_PREFIX: &str = "terminal:";
pub const STORE_PREFIX: &str = "store:";

/// A stream's kind and the id it carries, read from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind<'a> {
    Sale(&'a str),
    Terminal(&'a str),
    Store(&'a str),
}

impl StreamKind<'_> {
    pub fn of(stream: &str) -> StreamKind<'_> {
        if let Some(id) = stream.strip_prefix(TERMINAL_PREFIX) {
            StreamKind::Terminal(id)
        } else if let Some(id) = stream.strip_prefix(STORE_PREFIX) {
            StreamKind::Store(id)
        } else {
            StreamKind::Sale(stream)
        }
    }
}

pub fn terminal_stream(id: &str) -> String {
    format!("{TERMINAL_PREFIX}{id}")
}

pub fn store_stream(id: &str) -> String {
    format!("{STORE_PREFIX}{id}")
}

/// Appends to one stream as its writer: every batch carries the writer's fence.
#[derive(Clone)]
pub struct StreamWriter {
    log: LogHandle,
    fence: Fence,
}

impl StreamWriter {
    pub fn stream(&self) -> &str {
        &self.fence.stream
    }

    /// Appends `batch` and waits until it is durable.
    pub async fn append(&self, batch: Batch) -> Result<u64, StoreError> {
        self.submit(batch).await?.await
    }

    /// Queues `batch`; the answer resolves once it is durable (see `LogHandle::submit`).
    pub async fn submit(&self, mut batch: Batch) -> Result<Durable, StoreError> {
        batch.fence = Some(self.fence.clone());
        self.log.submit(batch).await
    }
}

/// Which streams this node holds, on several nodes (`cluster::Cluster` keeps the leases).
pub trait Leases: Send + Sync {
    /// The epoch this node holds `stream` at, if it holds it.
    fn epoch(&self, stream: &str) -> Option<u64>;
}

/// Hands out writers for the streams this node may write.
#[derive(Clone)]
pub struct Streams {
    log: LogHandle,
    leases: Option<Arc<dyn Leases>>,
}

impl Streams {
    /// One process writing every stream, on the embedded log.
    pub fn alone(log: LogHandle) -> Streams {
        Streams { log, leases: None }
    }

    /// One node of several, writing what its leases allow.
    pub fn shared(log: LogHandle, leases: Arc<dyn Leases>) -> Streams {
        Streams {
            log,
            leases: Some(leases),
        }
    }

    pub fn is_shared(&self) -> bool {
        self.leases.is_some()
    }

    /// One step of compacting the log's keyed values (see `LogBackend::compact_values`).
    pub async fn compact_values(
        &self,
        rows_max: usize,
        fate: FateOf,
    ) -> Result<Compacted, StoreError> {
        self.log.compact_values(rows_max, fate).await
    }

    /// A writer for `stream`, if this node holds it.
    pub fn writer(&self, stream: &str) -> Result<StreamWriter, LedgerError> {
        let epoch = match &self.leases {
            None => 0,
            Some(leases) => leases.epoch(stream).ok_or(LedgerError::Moved)?,
        };
        Ok(StreamWriter {
            log: self.log.clone(),
            fence: Fence {
                stream: stream.to_owned(),
                epoch,
            },
        })
    }
}
