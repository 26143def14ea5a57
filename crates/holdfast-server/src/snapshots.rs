//! Sale snapshots, built away from the sale's writer.
//!
//! A snapshot is a fold of a stream's durable records, so it need not come from the actor that
//! wrote them: when a sale's actor has written enough events since the last snapshot it only
//! names its stream here (`Snapshotter::request`, which never waits). One background task then
//! reads the stream's newest snapshot and the records after it back from the store, rebuilds the
//! sale exactly as recovery does (deep check included, so a snapshot that does not add up is
//! never written), and saves the new snapshot on a connection of its own. The actor, and every
//! caller waiting on the log, never waits for a snapshot; what it costs is one more copy of the
//! sale in memory while it is built, and CPU on a blocking thread.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use holdfast_store::{PgStore, SqliteSnapshots, StoreError, StoredRecord, StoredSnapshot};
use tokio::sync::mpsc;

use crate::ledger::rebuild;
use crate::log_entry::encode_snapshot;

/// Where snapshots are read from and saved to.
#[derive(Clone)]
pub enum SnapshotStore {
    /// The embedded log's snapshot file (blocking connections, used on a blocking thread).
    Embedded(Arc<Mutex<SqliteSnapshots>>),
    /// PostgreSQL, shared by several nodes.
    Shared(PgStore),
}

type Loaded = (Option<StoredSnapshot>, Vec<StoredRecord>);

impl SnapshotStore {
    pub fn embedded(dir: &Path) -> Result<SnapshotStore, StoreError> {
        let store = SqliteSnapshots::open(dir)?;
        Ok(SnapshotStore::Embedded(Arc::new(Mutex::new(store))))
    }

    async fn load(&self, stream: &str) -> Result<Loaded, String> {
        match self {
            SnapshotStore::Embedded(store) => {
                let (store, stream) = (store.clone(), stream.to_owned());
                tokio::task::spawn_blocking(move || {
                    store.lock().expect("snapshot store").load_stream(&stream)
                })
                .await
                .map_err(|e| e.to_string())?
            }
            SnapshotStore::Shared(store) => store
                .load_records(stream)
                .await
                .map(|loaded| (loaded.snapshot, loaded.records)),
        }
        .map_err(|e| e.to_string())
    }

    async fn save(&self, snapshot: StoredSnapshot) -> Result<(), String> {
        match self {
            SnapshotStore::Embedded(store) => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || {
                    store.lock().expect("snapshot store").save(&snapshot)
                })
                .await
                .map_err(|e| e.to_string())?
            }
            SnapshotStore::Shared(store) => store.save_snapshot(&snapshot).await,
        }
        .map_err(|e| e.to_string())
    }
}

/// Where sales' actors ask for a snapshot. Cheap to clone.
#[derive(Clone)]
pub struct Snapshotter {
    due: mpsc::UnboundedSender<String>,
}

impl Snapshotter {
    /// Starts the one task that builds snapshots, one stream at a time. It ends when every
    /// `Snapshotter` is dropped. Must run inside a tokio runtime.
    pub fn spawn(store: SnapshotStore) -> Snapshotter {
        let (due, requests) = mpsc::unbounded_channel();
        tokio::spawn(run(store, requests));
        Snapshotter { due }
    }

    /// Asks for a snapshot of `stream` as of its durable records; returns at once.
    pub fn request(&self, stream: &str) {
        // The task ends only when every sender is gone, so this send cannot fail while a sale
        // still asks; if it ever did, the sale would simply recover from an older snapshot.
        let _ = self.due.send(stream.to_owned());
    }
}

async fn run(store: SnapshotStore, mut requests: mpsc::UnboundedReceiver<String>) {
    let mut due = BTreeSet::new();
    while let Some(stream) = requests.recv().await {
        due.insert(stream);
        while let Ok(stream) = requests.try_recv() {
            due.insert(stream);
        }
        while let Some(stream) = due.pop_first() {
            let started = Instant::now();
            match take(&store, &stream).await {
                Ok(Some(bytes)) => {
                    metrics::counter!("holdfast_snapshots_total", "result" => "written")
                        .increment(1);
                    metrics::histogram!("holdfast_snapshot_seconds")
                        .record(started.elapsed().as_secs_f64());
                    tracing::debug!(sale = %stream, bytes, "snapshot written");
                }
                Ok(None) => {}
                Err(error) => {
                    // Not fatal: recovery replays from the previous snapshot instead.
                    metrics::counter!("holdfast_snapshots_total", "result" => "failed")
                        .increment(1);
                    tracing::warn!(sale = %stream, %error, "snapshot not written");
                }
            }
        }
    }
}

/// Runs `build` on a thread of its own that the scheduler runs only when no other thread wants
/// the CPU (Linux `SCHED_IDLE`; elsewhere the lowest priority the platform allows): under load,
/// a snapshot takes only the time requests leave, and is simply done later.
async fn when_idle<T: Send + 'static>(
    build: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (done, built) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("holdfast-snapshot".into())
        .spawn(move || {
            lowest_priority();
            let _ = done.send(build());
        })
        .map_err(|e| e.to_string())?;
    built.await.map_err(|e| e.to_string())
}

#[cfg(target_os = "linux")]
fn lowest_priority() {
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_native_id,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    let set = set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        idle,
    );
    if let Err(error) = set {
        tracing::debug!(?error, "snapshot thread keeps its priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lowest_priority() {
    if let Err(error) =
        thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
    {
        tracing::debug!(?error, "snapshot thread keeps its priority");
    }
}

/// Builds and saves one snapshot of `stream`; answers its size, or `None` when nothing was
/// written since the last one.
async fn take(store: &SnapshotStore, stream: &str) -> Result<Option<usize>, String> {
    let (snapshot, records) = store.load(stream).await?;
    let Some(through) = records.last().map(|record| record.seq) else {
        return Ok(None);
    };
    let name = stream.to_owned();
    let payload = when_idle(move || -> Result<Vec<u8>, String> {
        let mut sales =
            rebuild(snapshot.into_iter().collect(), records).map_err(|e| e.to_string())?;
        let (sale, _) = sales
            .remove(&name)
            .ok_or_else(|| format!("no sale '{name}' in its own stream"))?;
        Ok(encode_snapshot(&sale))
    })
    .await??;
    let bytes = payload.len();
    store
        .save(StoredSnapshot {
            stream: stream.to_owned(),
            through,
            payload,
        })
        .await?;
    Ok(Some(bytes))
}
