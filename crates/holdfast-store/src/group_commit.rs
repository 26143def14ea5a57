//! Group commit: one writer thread, one sync for every batch that queued up while the previous
//! sync ran. Under load the batches grow by themselves; idle, a lone batch is synced at once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::backend::{Batch, Compacted, Fate, LogBackend, StoreError};

/// The server's judgement of each keyed value (key, value bytes) in a compaction step, made on
/// the writer's thread.
pub type FateOf = Box<dyn FnMut(&str, &[u8]) -> Fate + Send>;

#[derive(Clone, Copy, Debug)]
pub struct GroupCommitConfig {
    /// Batches waiting for the writer; senders wait when it is full (back-pressure).
    pub queue_batches_max: usize,
    /// Batches made durable by one commit.
    pub commit_batches_max: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            queue_batches_max: 8192,
            commit_batches_max: 1024,
        }
    }
}

struct Append {
    batch: Batch,
    done: oneshot::Sender<Result<u64, StoreError>>,
}

struct Compact {
    rows_max: usize,
    fate: FateOf,
    done: oneshot::Sender<Result<Compacted, StoreError>>,
}

enum Job {
    Append(Append),
    Compact(Compact),
}

/// A cloneable handle for appending to the log from async code.
#[derive(Clone)]
pub struct LogHandle {
    sender: mpsc::Sender<Job>,
}

impl LogHandle {
    /// Batches sent but not yet picked up by the writer.
    pub fn queued(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    /// Appends `batch` and waits until it is durable. Returns the sequence number of the batch's
    /// last record.
    pub async fn append(&self, batch: Batch) -> Result<u64, StoreError> {
        self.submit(batch).await?.await
    }

    /// Queues `batch` (waiting only while the queue is full) and returns a future that
    /// resolves once it is durable. Batches become durable in the order they were submitted,
    /// so a caller may submit the next batch before the previous one resolves.
    pub async fn submit(&self, batch: Batch) -> Result<Durable, StoreError> {
        let (done, answer) = oneshot::channel();
        self.sender
            .send(Job::Append(Append { batch, done }))
            .await
            .map_err(|_| StoreError::Stopped)?;
        Ok(Durable(answer))
    }

    /// One step of compacting the stored values (see `LogBackend::compact_values`), taken by
    /// the writer between two commits; `fate` runs on the writer's thread.
    pub async fn compact_values(
        &self,
        rows_max: usize,
        fate: FateOf,
    ) -> Result<Compacted, StoreError> {
        let (done, answer) = oneshot::channel();
        let job = Job::Compact(Compact {
            rows_max,
            fate,
            done,
        });
        self.sender
            .send(job)
            .await
            .map_err(|_| StoreError::Stopped)?;
        answer.await.unwrap_or(Err(StoreError::Stopped))
    }
}

/// Resolves when a submitted batch is durable, with the sequence number of its last record.
pub struct Durable(oneshot::Receiver<Result<u64, StoreError>>);

impl Future for Durable {
    type Output = Result<u64, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(StoreError::Stopped)))
    }
}

impl From<oneshot::Receiver<Result<u64, StoreError>>> for Durable {
    fn from(answer: oneshot::Receiver<Result<u64, StoreError>>) -> Durable {
        Durable(answer)
    }
}

pub struct GroupCommit;

impl GroupCommit {
    /// Starts the writer thread. It ends when every handle is dropped.
    pub fn spawn<B: LogBackend>(backend: B, config: GroupCommitConfig) -> LogHandle {
        assert!(config.queue_batches_max > 0 && config.commit_batches_max > 0);
        let (sender, receiver) = mpsc::channel(config.queue_batches_max);
        std::thread::Builder::new()
            .name("holdfast-log".into())
            .spawn(move || write_loop(backend, receiver, config.commit_batches_max))
            .expect("spawn the log writer thread");
        LogHandle { sender }
    }
}

fn write_loop<B: LogBackend>(mut backend: B, mut receiver: mpsc::Receiver<Job>, max: usize) {
    // After a failed sync the state of the file is unknown: refuse everything after it
    // rather than acknowledge writes on top of a hole.
    let mut stopped = false;
    let mut next = None;
    while let Some(first) = next.take().or_else(|| receiver.blocking_recv()) {
        let mut appends = match first {
            Job::Append(append) => vec![append],
            Job::Compact(compact) => {
                let result = match stopped {
                    true => Err(StoreError::Stopped),
                    false => compact_values(&mut backend, compact.rows_max, compact.fate),
                };
                // A compaction's write failing leaves the file as uncertain as a commit's.
                if let Err(StoreError::Io(error)) = &result {
                    stopped = backend.stops_after_failure();
                    tracing::error!(%error, stopped, "log compaction failed");
                }
                let _ = compact.done.send(result);
                continue;
            }
        };
        while appends.len() < max {
            match receiver.try_recv() {
                Ok(Job::Append(append)) => appends.push(append),
                Ok(compact) => {
                    next = Some(compact);
                    break;
                }
                Err(_) => break,
            }
        }
        if stopped {
            for append in appends {
                let _ = append.done.send(Err(StoreError::Stopped));
            }
            continue;
        }
        stopped = commit(&mut backend, appends);
    }
}

/// Commits one group of appends and answers each; true when the log must stop taking writes.
fn commit<B: LogBackend>(backend: &mut B, mut appends: Vec<Append>) -> bool {
    let batches: Vec<Batch> = appends
        .iter_mut()
        .map(|a| std::mem::take(&mut a.batch))
        .collect();
    let started = Instant::now();
    let result = backend.commit(&batches);
    metrics::histogram!("holdfast_log_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("holdfast_log_batches_per_commit").record(appends.len() as f64);
    match result {
        Ok(ends) => {
            assert_eq!(ends.len(), appends.len(), "one end per batch");
            for (append, end) in appends.into_iter().zip(ends) {
                let _ = append.done.send(end);
            }
            false
        }
        Err(error) => {
            let stopped = backend.stops_after_failure();
            tracing::error!(%error, stopped, "log commit failed");
            for append in appends {
                let _ = append.done.send(Err(error.clone()));
            }
            stopped
        }
    }
}

fn compact_values<B: LogBackend>(
    backend: &mut B,
    rows_max: usize,
    mut fate: FateOf,
) -> Result<Compacted, StoreError> {
    let started = Instant::now();
    let result = backend.compact_values(rows_max, &mut *fate);
    metrics::histogram!("holdfast_log_compaction_seconds").record(started.elapsed().as_secs_f64());
    if let Ok(compacted) = &result {
        metrics::counter!("holdfast_log_values_dropped_total").increment(compacted.dropped as u64);
    }
    result
}
