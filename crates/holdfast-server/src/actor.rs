//! One task per sale owns that sale's state and is its only writer. It takes every command
//! that is waiting (up to a bound), decides them in order, appends their events in one durable
//! batch, and only then answers. Readers of the sale's counters use a published view and never
//! wait for the actor.

use std::sync::Arc;
use std::time::Duration;

use holdfast_core::{Command, Event, Rejection, Reply, Sale, SaleSpec, SaleStatus, Timestamp};
use holdfast_store::{Batch, LogHandle, Record, Snapshot};
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::Clock;
use crate::config::Limits;
use crate::error::LedgerError;
use crate::idempotency::StoredAnswer;
use crate::log_entry::LogEntry;

pub type Outcome = Result<Reply, Rejection>;

/// Renders the answer to store for an idempotent request, from the sale and the outcome. A
/// plain function so the stored answer is the same one the caller would have rendered.
pub type Renderer = fn(&SaleSpec, &Outcome) -> StoredAnswer;

/// Asks the actor to store the rendered answer under `key` in the same durable write as the
/// command's events.
pub struct Idempotent {
    pub key: String,
    pub fingerprint: String,
    pub render: Renderer,
}

pub struct Executed {
    pub outcome: Outcome,
    pub answer: Option<StoredAnswer>,
}

type ReadFn = Box<dyn FnOnce(&Sale) + Send>;

enum Request {
    Execute {
        command: Command,
        idempotent: Option<Idempotent>,
        reply: Option<oneshot::Sender<Result<Executed, LedgerError>>>,
    },
    Read(ReadFn),
}

/// The sale's counters as of its last durable batch.
#[derive(Clone, Debug)]
pub struct SaleView {
    pub spec: Arc<SaleSpec>,
    pub total: u32,
    pub available: u32,
    pub held: u32,
    pub sold: u32,
    pub allotted: u32,
    pub shares_left: [u32; 4],
    pub closed: bool,
    pub orders: usize,
}

impl SaleView {
    fn of(sale: &Sale, spec: &Arc<SaleSpec>) -> SaleView {
        SaleView {
            spec: spec.clone(),
            total: sale.total(),
            available: sale.available(),
            held: sale.held(),
            sold: sale.sold(),
            allotted: sale.allotted(),
            shares_left: holdfast_core::Channel::ALL.map(|c| sale.share_left(c)),
            closed: sale.closed_at().is_some(),
            orders: sale.orders().len(),
        }
    }

    pub fn status(&self, now: Timestamp) -> SaleStatus {
        SaleStatus::of(&self.spec, self.closed, self.available, now)
    }
}

/// A cheap, cloneable way to talk to one sale's actor.
#[derive(Clone)]
pub struct SaleHandle {
    sender: mpsc::Sender<Request>,
    view: watch::Receiver<Arc<SaleView>>,
}

impl SaleHandle {
    pub fn view(&self) -> Arc<SaleView> {
        self.view.borrow().clone()
    }

    /// Runs `command`; answers once its events are durable. A full queue answers `Busy` at once
    /// rather than letting callers pile up.
    pub async fn execute(
        &self,
        command: Command,
        idempotent: Option<Idempotent>,
    ) -> Result<Executed, LedgerError> {
        let (reply, answer) = oneshot::channel();
        let request = Request::Execute {
            command,
            idempotent,
            reply: Some(reply),
        };
        self.sender.try_send(request).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => LedgerError::Busy,
            mpsc::error::TrySendError::Closed(_) => LedgerError::Stopped,
        })?;
        answer.await.map_err(|_| LedgerError::Stopped)?
    }

    /// Reads from the sale's full state inside its actor, after every earlier command is durable.
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Sale) -> T + Send + 'static,
    ) -> Result<T, LedgerError> {
        let (reply, answer) = oneshot::channel();
        let request = Request::Read(Box::new(move |sale| {
            let _ = reply.send(read(sale));
        }));
        self.sender.try_send(request).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => LedgerError::Busy,
            mpsc::error::TrySendError::Closed(_) => LedgerError::Stopped,
        })?;
        answer.await.map_err(|_| LedgerError::Stopped)
    }
}

pub struct SaleActor {
    sale: Sale,
    spec: Arc<SaleSpec>,
    log: LogHandle,
    clock: Arc<dyn Clock>,
    limits: Limits,
    receiver: mpsc::Receiver<Request>,
    view: watch::Sender<Arc<SaleView>>,
    last_now: Timestamp,
    events_since_snapshot: u64,
    stopped: bool,
}

const TICK_EVERY: Duration = Duration::from_secs(1);

impl SaleActor {
    /// Starts the actor for a sale already rebuilt from the log.
    pub fn spawn(
        sale: Sale,
        events_since_snapshot: u64,
        log: LogHandle,
        clock: Arc<dyn Clock>,
        limits: Limits,
    ) -> SaleHandle {
        assert!(limits.sale_batch_commands_max > 0);
        let spec = Arc::new(sale.spec().clone());
        let (sender, receiver) = mpsc::channel(limits.sale_queue_commands_max);
        let (view, view_receiver) = watch::channel(Arc::new(SaleView::of(&sale, &spec)));
        let actor = SaleActor {
            last_now: clock.now(),
            sale,
            spec,
            log,
            clock,
            limits,
            receiver,
            view,
            events_since_snapshot,
            stopped: false,
        };
        tokio::spawn(actor.run());
        SaleHandle {
            sender,
            view: view_receiver,
        }
    }

    async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let first = tokio::select! {
                request = self.receiver.recv() => match request {
                    Some(request) => request,
                    None => return,
                },
                _ = tick.tick() => Request::Execute { command: Command::Tick, idempotent: None, reply: None },
            };
            let mut requests = vec![first];
            while requests.len() < self.limits.sale_batch_commands_max {
                match self.receiver.try_recv() {
                    Ok(request) => requests.push(request),
                    Err(_) => break,
                }
            }
            self.process(requests).await;
        }
    }

    /// A clock that never goes backwards, so a clock step cannot un-expire a hold.
    fn now(&mut self) -> Timestamp {
        self.last_now = self.last_now.max(self.clock.now());
        self.last_now
    }

    async fn process(&mut self, requests: Vec<Request>) {
        if self.stopped {
            return; // Dropping the requests answers every caller with `Stopped`.
        }
        let now = self.now();
        let mut events: Vec<Event> = Vec::new();
        let mut values = Vec::new();
        let mut replies = Vec::new();
        let mut reads = Vec::new();
        for request in requests {
            match request {
                Request::Execute {
                    command,
                    idempotent,
                    reply,
                } => {
                    let handled = self.sale.handle(&command, now);
                    count(&command, &handled.outcome);
                    events.extend(handled.events);
                    let answer = idempotent.map(|request| {
                        let answer = (request.render)(&self.spec, &handled.outcome);
                        values.push((request.key, answer.encode(&request.fingerprint)));
                        answer
                    });
                    if let Some(reply) = reply {
                        replies.push((
                            reply,
                            Executed {
                                outcome: handled.outcome,
                                answer,
                            },
                        ));
                    }
                }
                Request::Read(read) => reads.push(read),
            }
        }
        let changed = !events.is_empty();
        if changed || !values.is_empty() {
            let batch = self.batch(events, values);
            if let Err(error) = self.log.append(batch).await {
                tracing::error!(%error, sale = %self.spec.id, "append failed; sale stops");
                self.stopped = true;
                for (reply, _) in replies {
                    let _ = reply.send(Err(LedgerError::Storage(error.clone())));
                }
                return;
            }
        }
        if changed {
            self.view
                .send_replace(Arc::new(SaleView::of(&self.sale, &self.spec)));
        }
        for (reply, executed) in replies {
            let _ = reply.send(Ok(executed));
        }
        for read in reads {
            read(&self.sale);
        }
    }

    fn batch(&mut self, events: Vec<Event>, values: Vec<(String, Vec<u8>)>) -> Batch {
        let mut batch = Batch {
            values,
            ..Batch::default()
        };
        if events.is_empty() {
            return batch;
        }
        self.events_since_snapshot += events.len() as u64;
        let entry = LogEntry::Events { events };
        batch.records.push(Record {
            stream: self.spec.id.clone(),
            payload: entry.encode(),
        });
        if self.events_since_snapshot >= self.limits.snapshot_every_events {
            let state = serde_json::to_vec(&self.sale.snapshot()).expect("snapshots serialise");
            batch.snapshots.push(Snapshot {
                stream: self.spec.id.clone(),
                payload: state,
            });
            self.events_since_snapshot = 0;
        }
        batch
    }
}

fn count(command: &Command, outcome: &Outcome) {
    let name = match command {
        Command::PlaceHold { .. } => "hold",
        Command::ConfirmHold { .. } => "confirm",
        Command::ReleaseHold { .. } => "release",
        Command::Restock { .. } => "restock",
        Command::Close => "close",
        Command::ReleaseChannelShare { .. } => "release_share",
        Command::ClaimAllotment { .. } => "claim_allotment",
        Command::ReturnAllotment { .. } => "return_allotment",
        Command::RecordAllottedSale { .. } => "allotted_sale",
        Command::Tick => return,
    };
    let result = match outcome {
        Ok(_) => "accepted",
        Err(rejection) => rejection.code(),
    };
    metrics::counter!("holdfast_commands_total", "command" => name, "result" => result)
        .increment(1);
}
