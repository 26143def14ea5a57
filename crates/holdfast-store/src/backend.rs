use thiserror::Error;

/// One log record: an opaque payload on a named stream (one stream per sale).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub stream: String,
    pub payload: Vec<u8>,
}

/// A stream's state as of the last record of the batch it travels in. Start-up loads it and
/// replays only the stream's later records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub stream: String,
    pub payload: Vec<u8>,
}

/// What one caller wants made durable at once: records, snapshots and keyed values (such as
/// idempotency answers), all in the same atomic write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub records: Vec<Record>,
    pub snapshots: Vec<Snapshot>,
    pub values: Vec<(String, Vec<u8>)>,
    /// When set, the batch is written only while its writer still holds `fence.stream` at
    /// `fence.epoch` (several nodes on PostgreSQL); its values belong to that stream. The
    /// embedded log has one writer and ignores it.
    pub fence: Option<Fence>,
}

/// A writer's claim on a stream: the epoch of the lease it holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    pub stream: String,
    pub epoch: u64,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.snapshots.is_empty() && self.values.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub seq: u64,
    pub stream: String,
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    pub stream: String,
    /// The last log sequence number this snapshot covers for its stream.
    pub through: u64,
    pub payload: Vec<u8>,
}

/// Everything start-up needs, read back and checksum-verified.
#[derive(Debug, Default)]
pub struct Recovery {
    pub snapshots: Vec<StoredSnapshot>,
    /// Keyed values in the order they were written; for a key written twice the later wins.
    pub values: Vec<(String, Vec<u8>)>,
    /// Records after the oldest snapshot, in log order. Records a stream's own snapshot
    /// already covers are included; the caller skips them by comparing `seq` to `through`.
    pub records: Vec<StoredRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum StoreError {
    #[error("storage I/O failed: {0}")]
    Io(String),
    #[error("checksum mismatch in {what} {key}: the store is corrupt")]
    Corrupt { what: &'static str, key: String },
    #[error("the log stopped after an earlier write failure; restart to recover")]
    Stopped,
    #[error("this node no longer holds '{stream}': another node took it over")]
    Fenced { stream: String },
}

/// What becomes of one keyed value when the stored values are compacted; the server, which
/// knows what each key means, decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Still read at start-up: carried forward.
    Keep,
    /// Read by nobody any more (an expired answer, a settled payment): dropped.
    Drop,
    /// Cannot be decided yet (an answer that expires later): the compaction stops before the
    /// stored row holding it, and so before everything written after it.
    Wait,
}

/// What one compaction step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Values looked at.
    pub looked_at: usize,
    /// Values dropped, superseded ones included.
    pub dropped: usize,
    /// Whether the step stopped at its bound with more to look at: the caller may step again
    /// at once rather than wait for its next turn.
    pub more: bool,
}

/// A durable, ordered log. `commit` returns only once every batch given is durable; a batch is
/// never partly durable.
pub trait LogBackend: Send + 'static {
    /// Appends the batches in order, atomically and durably, with as few syncs as the backend
    /// allows. Returns, per batch, the sequence number of its last record (or the log's last
    /// sequence number when the batch has no records), or `Fenced` for a batch whose writer no
    /// longer holds its stream (it is not written; the others are). An outer error means
    /// nothing is known to be durable.
    fn commit(&mut self, batches: &[Batch]) -> Result<Vec<Result<u64, StoreError>>, StoreError>;

    /// Reads back everything needed to rebuild state, verifying checksums.
    fn recover(&mut self) -> Result<Recovery, StoreError>;

    /// Compacts the stored keyed values, oldest first, looking at no more than `rows_max` of the
    /// backend's stored rows: `fate` is asked about every value in them. A key's last write
    /// among them decides its fate, and its earlier writes go (start-up reads only the last),
    /// so what start-up reads afterwards differs only by the keys `fate` dropped. Atomic and
    /// durable, like a commit; it runs on the writer, between commits.
    fn compact_values(
        &mut self,
        rows_max: usize,
        fate: &mut dyn FnMut(&str, &[u8]) -> Fate,
    ) -> Result<Compacted, StoreError>;

    /// Whether every later write must be refused after a failed commit: true for a single file,
    /// whose state after a failed sync is unknown. A backend that confines the uncertainty to
    /// the failed batches' streams (by their fences) answers false and takes later commits.
    fn stops_after_failure(&self) -> bool {
        true
    }
}

/// Of values written in order with their fates: each key's last write, in order, where its
/// fate is to be kept.
pub(crate) fn last_writes_kept<'a>(
    judged: &[(&'a (String, Vec<u8>), Fate)],
) -> Vec<&'a (String, Vec<u8>)> {
    let last: std::collections::HashMap<&str, usize> = judged
        .iter()
        .enumerate()
        .map(|(n, (entry, _))| (entry.0.as_str(), n))
        .collect();
    judged
        .iter()
        .enumerate()
        .filter(|(n, (entry, fate))| *fate == Fate::Keep && last[entry.0.as_str()] == *n)
        .map(|(_, (entry, _))| *entry)
        .collect()
}

/// The checksum stored beside every payload, covering its key as well so a payload cannot be
/// silently moved to another key.
pub fn checksum(key: &str, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key.as_bytes());
    hasher.update(&[0]);
    hasher.update(payload);
    hasher.finalize()
}
