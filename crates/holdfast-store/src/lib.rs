//! Holdfast's durable log.
//!
//! Every accepted command becomes a record appended here *before* its caller is answered.
//! [`GroupCommit`] runs one writer thread that gathers every batch that arrived while the
//! previous sync ran and makes them durable with one sync. Backends implement [`LogBackend`];
//! the embedded default is [`SqliteLog`]; [`PgLog`] and [`PgStore`] put it in PostgreSQL for
//! several nodes.

mod backend;
mod group_commit;
mod postgres;
mod sqlite;

pub use backend::{
    Batch, Compacted, Fate, Fence, LogBackend, Record, Recovery, Snapshot, StoreError,
    StoredRecord, StoredSnapshot, checksum,
};
pub use group_commit::{Durable, FateOf, GroupCommit, GroupCommitConfig, LogHandle};
pub use postgres::{Lease, PgLog, PgStore, SCHEMA_VERSION, StreamRecovery};
pub use sqlite::{SqliteLog, SqliteReader, SqliteSnapshots};
