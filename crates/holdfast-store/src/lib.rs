//! Holdfast's durable log.
//!
//! Every accepted command becomes a record appended here *before* its caller is answered.
//! [`GroupCommit`] runs one writer thread that gathers every batch that arrived while the
//! previous sync ran and makes them durable with one sync. Backends implement [`LogBackend`];
//! the embedded default is [`SqliteLog`].

mod backend;
mod group_commit;
mod sqlite;

pub use backend::{
    Batch, LogBackend, Record, Recovery, Snapshot, StoreError, StoredRecord, StoredSnapshot,
    checksum,
};
pub use group_commit::{Durable, GroupCommit, GroupCommitConfig, LogHandle};
pub use sqlite::SqliteLog;
