//! A log whose commits wait at a gate the test opens, so what happens before a write is
//! durable can be told from what happens after, without any timing assumption.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use holdfast_store::{Batch, Compacted, Fate, LogBackend, Recovery, StoreError};

/// Wraps a backend: each commit says it is waiting, then waits for the gate to let one through
/// (or for the gate to be dropped, which lets every later commit through).
pub struct GatedLog<B> {
    inner: B,
    gate: Receiver<()>,
    waiting: Sender<()>,
    commits: Arc<Mutex<Vec<usize>>>,
}

/// The test's side of a [`GatedLog`].
pub struct Gate {
    /// One message lets one commit through; dropping it lets all through.
    pub open: Sender<()>,
    /// A message each time a commit reaches the gate.
    pub waiting: Receiver<()>,
    /// How many batches each commit made durable, in order.
    pub commits: Arc<Mutex<Vec<usize>>>,
}

impl<B: LogBackend> GatedLog<B> {
    pub fn new(inner: B) -> (GatedLog<B>, Gate) {
        let (open, gate) = channel();
        let (waiting_tx, waiting) = channel();
        let commits = Arc::new(Mutex::new(Vec::new()));
        let log = GatedLog {
            inner,
            gate,
            waiting: waiting_tx,
            commits: commits.clone(),
        };
        let gate = Gate {
            open,
            waiting,
            commits,
        };
        (log, gate)
    }
}

impl<B: LogBackend> LogBackend for GatedLog<B> {
    fn commit(&mut self, batches: &[Batch]) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
        let _ = self.waiting.send(());
        let _ = self.gate.recv(); // an error: the gate was dropped, everything goes through
        self.commits.lock().unwrap().push(batches.len());
        self.inner.commit(batches)
    }

    fn recover(&mut self) -> Result<Recovery, StoreError> {
        self.inner.recover()
    }

    fn compact_values(
        &mut self,
        rows_max: usize,
        fate: &mut dyn FnMut(&str, &[u8]) -> Fate,
    ) -> Result<Compacted, StoreError> {
        self.inner.compact_values(rows_max, fate)
    }
}
