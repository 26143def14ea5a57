//! One task per sale owns that sale's state and is its only writer. It takes every command
//! that is waiting (up to a bound), decides them in order, submits their events as one batch to
//! the log, and answers only once that batch is durable.
//!
//! Pipelining: while one batch is being synced the actor already decides the next, so the cost
//! of deciding and the cost of syncing overlap instead of adding up. The log makes batches
//! durable in submission order, so every answer still waits for everything it depends on.
//! Readers of the sale's counters use a published view that only ever shows durable state.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use holdfast_core::{
    Command, Event, HoldCounters, QueueMode, QueueView, Rejection, Reply, Sale, SaleSpec,
    SaleStatus, Timestamp,
};
use holdfast_store::{Batch, Durable, Record, StoreError};
use tokio::sync::{mpsc, oneshot, watch};

use crate::answer::StoredAnswer;
use crate::clock::Clock;
use crate::config::Limits;
use crate::ledger_error::LedgerError;
use crate::log_entry::LogEntry;
use crate::snapshots::Snapshotter;
use crate::streams::StreamWriter;

pub type Outcome = Result<Reply, Rejection>;

/// Renders the answer to store for an idempotent request, from the sale and the outcome. A
/// plain function so the stored answer is the same one the caller would have rendered.
pub type Renderer = fn(&SaleSpec, &Outcome) -> StoredAnswer;

/// The answer to store for an idempotent request.
pub enum Render {
    /// Rendered from the command's outcome.
    Outcome(Renderer),
    /// Decided before the command ran (a declined card, whose hold the command gives back).
    Given(Box<StoredAnswer>),
}

impl Render {
    pub fn answer(self, spec: &SaleSpec, outcome: &Outcome) -> StoredAnswer {
        match self {
            Render::Outcome(render) => render(spec, outcome),
            Render::Given(answer) => *answer,
        }
    }
}

/// Asks the actor to store the rendered answer under `key` in the same durable write as the
/// command's events.
pub struct Idempotent {
    pub key: String,
    pub fingerprint: String,
    pub render: Render,
}

pub struct Executed {
    pub outcome: Outcome,
    pub answer: Option<StoredAnswer>,
}

/// Answers a read: runs against the state when decided, replies once that state is durable.
type ReadFn = Box<dyn FnOnce(&Sale) -> DeferredReply + Send>;
type DeferredReply = Box<dyn FnOnce() + Send>;
type PendingReply = oneshot::Sender<Result<Executed, LedgerError>>;

/// When a command's caller is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerWhen {
    /// Once its batch is durable: what every answer to a client waits for.
    Durable,
    /// An accepted command as soon as it is decided, its batch already on its way to the log (a
    /// refusal still once durable). Only for a caller whose own answer waits for a later write
    /// of the same sale's — durable after this one, since batches become durable in order — or
    /// for [`SaleHandle::durable`].
    Decided,
}

enum Request {
    Execute {
        command: Command,
        idempotent: Option<Idempotent>,
        reply: Option<PendingReply>,
        answer_when: AnswerWhen,
    },
    Read {
        read: ReadFn,
        /// Whether the answer must wait until everything decided before it is durable.
        durable_only: bool,
    },
}

/// A decided batch waiting for its durability before its answers go out.
struct InFlight {
    /// `None` when the batch wrote nothing; it completes as soon as the batches before it do.
    durable: Option<Durable>,
    replies: Vec<(PendingReply, Executed)>,
    reads: Vec<DeferredReply>,
    view: Option<Arc<SaleView>>,
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
    pub paused: holdfast_core::Paused,
    pub orders: usize,
    pub holds_placed: u64,
    /// The delivery day a hold placed at the view's time would be promised.
    pub promising: Option<holdfast_core::Day>,
    pub queue: QueueView,
}

impl SaleView {
    fn of(sale: &Sale, spec: &Arc<SaleSpec>, now: Timestamp) -> SaleView {
        SaleView {
            spec: spec.clone(),
            total: sale.total(),
            available: sale.available(),
            held: sale.held(),
            sold: sale.sold(),
            allotted: sale.allotted(),
            shares_left: holdfast_core::Channel::ALL.map(|c| sale.share_left(c)),
            closed: sale.closed_at().is_some(),
            paused: sale.paused(),
            orders: sale.orders().len(),
            holds_placed: sale.holds_placed(),
            promising: sale.delivery_quote(now).ok().flatten(),
            queue: sale
                .queue()
                .view(spec.queue == QueueMode::Lottery, spec.pass_ttl_millis),
        }
    }

    pub fn status(&self, now: Timestamp) -> SaleStatus {
        SaleStatus::of(&self.spec, self.closed, self.available, now)
    }

    /// The counters that decide some holds' answers without the sale (`HoldCounters`).
    pub fn counters(&self) -> HoldCounters {
        HoldCounters {
            opens_at: self.spec.opens_at,
            closes_at: self.spec.closes_at,
            closed: self.closed,
            paused: self.paused,
            available: self.available,
            held: self.held,
        }
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

    /// Every change of the view, for whoever publishes it to other nodes.
    pub fn view_changes(&self) -> watch::Receiver<Arc<SaleView>> {
        self.view.clone()
    }

    /// Whether the actor has stopped (after a failed write, or refused by its fence).
    pub fn is_stopped(&self) -> bool {
        self.sender.is_closed()
    }

    /// Runs `command`; answers once its events are durable. A full queue answers `Busy` at once
    /// rather than letting callers pile up.
    pub async fn execute(
        &self,
        command: Command,
        idempotent: Option<Idempotent>,
    ) -> Result<Executed, LedgerError> {
        self.execute_answered(command, idempotent, AnswerWhen::Durable)
            .await
    }

    pub async fn execute_answered(
        &self,
        command: Command,
        idempotent: Option<Idempotent>,
        answer_when: AnswerWhen,
    ) -> Result<Executed, LedgerError> {
        let (reply, answer) = oneshot::channel();
        let request = Request::Execute {
            command,
            idempotent,
            reply: Some(reply),
            answer_when,
        };
        self.sender.try_send(request).map_err(queue_refused)?;
        answer.await.map_err(|_| LedgerError::Stopped)?
    }

    /// Runs `commands` in order, answering each once its events are durable. They are queued
    /// together, so the actor decides them in one batch and makes them durable with one write.
    /// If the queue cannot take one, neither it nor any after it is sent (each answers `Busy`):
    /// a later command never runs ahead of an earlier one.
    pub async fn execute_many(&self, commands: Vec<Command>) -> Vec<Result<Executed, LedgerError>> {
        let mut answers = Vec::with_capacity(commands.len());
        let mut refused = None;
        for command in commands {
            if let Some(error) = &refused {
                answers.push(Err(error_like(error)));
                continue;
            }
            let (reply, answer) = oneshot::channel();
            let request = Request::Execute {
                command,
                idempotent: None,
                reply: Some(reply),
                answer_when: AnswerWhen::Durable,
            };
            match self.sender.try_send(request) {
                Ok(()) => answers.push(Ok(answer)),
                Err(error) => {
                    let error = queue_refused(error);
                    answers.push(Err(error_like(&error)));
                    refused = Some(error);
                }
            }
        }
        let mut executed = Vec::with_capacity(answers.len());
        for answer in answers {
            executed.push(match answer {
                Ok(answer) => answer.await.unwrap_or(Err(LedgerError::Stopped)),
                Err(error) => Err(error),
            });
        }
        executed
    }

    /// Reads from the sale's full state inside its actor; answers once every earlier command
    /// is durable, so the answer never shows what a crash could still undo.
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Sale) -> T + Send + 'static,
    ) -> Result<T, LedgerError> {
        self.read_with(read, true).await
    }

    /// Waits until everything this sale decided before now is durable (waiting for room in the
    /// sale's queue rather than refusing: the caller has something decided to make good on).
    pub async fn durable(&self) -> Result<(), LedgerError> {
        let (request, answer) = read_request(|_| (), true);
        self.sender
            .send(request)
            .await
            .map_err(|_| LedgerError::Stopped)?;
        answer.await.map_err(|_| LedgerError::Stopped)
    }

    /// Reads the latest decided state without waiting for it to be durable. Only for checks
    /// whose answer is confirmed by a later command anyway (such as whether to ask the card
    /// network for money before confirming a hold).
    pub async fn read_latest<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Sale) -> T + Send + 'static,
    ) -> Result<T, LedgerError> {
        self.read_with(read, false).await
    }

    async fn read_with<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Sale) -> T + Send + 'static,
        durable_only: bool,
    ) -> Result<T, LedgerError> {
        let (request, answer) = read_request(read, durable_only);
        self.sender.try_send(request).map_err(queue_refused)?;
        answer.await.map_err(|_| LedgerError::Stopped)
    }
}

/// A read for the actor to run, and where its value will arrive.
fn read_request<T: Send + 'static>(
    read: impl FnOnce(&Sale) -> T + Send + 'static,
    durable_only: bool,
) -> (Request, oneshot::Receiver<T>) {
    let (reply, answer) = oneshot::channel();
    let read: ReadFn = Box::new(move |sale| {
        let value = read(sale);
        Box::new(move || {
            let _ = reply.send(value);
        })
    });
    (Request::Read { read, durable_only }, answer)
}

/// Why a sale's queue did not take a request.
fn queue_refused<T>(error: mpsc::error::TrySendError<T>) -> LedgerError {
    match error {
        mpsc::error::TrySendError::Full(_) => LedgerError::Busy,
        mpsc::error::TrySendError::Closed(_) => LedgerError::Stopped,
    }
}

pub struct SaleActor {
    sale: Sale,
    spec: Arc<SaleSpec>,
    log: StreamWriter,
    snapshotter: Snapshotter,
    clock: Arc<dyn Clock>,
    limits: Limits,
    receiver: mpsc::Receiver<Request>,
    view: watch::Sender<Arc<SaleView>>,
    last_now: Timestamp,
    events_since_snapshot: u64,
    /// The sale's records (holds, orders) when the last snapshot was asked for.
    records_at_snapshot: u64,
    in_flight: VecDeque<InFlight>,
    stopped: bool,
}

const TICK_EVERY: Duration = Duration::from_secs(1);

impl SaleActor {
    /// Starts the actor for a sale already rebuilt from the log.
    pub fn spawn(
        sale: Sale,
        events_since_snapshot: u64,
        log: StreamWriter,
        snapshotter: Snapshotter,
        clock: Arc<dyn Clock>,
        limits: Limits,
    ) -> SaleHandle {
        assert!(limits.sale_batch_commands_max > 0);
        let spec = Arc::new(sale.spec().clone());
        let (sender, receiver) = mpsc::channel(limits.sale_queue_commands_max);
        let (view, view_receiver) =
            watch::channel(Arc::new(SaleView::of(&sale, &spec, clock.now())));
        let sale_records = sale.record_count() as u64;
        let actor = SaleActor {
            last_now: clock.now(),
            sale,
            spec,
            log,
            snapshotter,
            clock,
            limits,
            receiver,
            view,
            events_since_snapshot,
            records_at_snapshot: sale_records,
            in_flight: VecDeque::new(),
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
        let in_flight_max = self.limits.sale_batches_in_flight_max;
        assert!(in_flight_max > 0);
        loop {
            let room = self.in_flight.len() < in_flight_max;
            let first = tokio::select! {
                biased;
                durable = oldest_durable(&mut self.in_flight), if !self.in_flight.is_empty() => {
                    self.complete_oldest(durable);
                    if self.stopped {
                        // Every later caller is told at once that the sale stopped.
                        return;
                    }
                    continue;
                }
                request = self.receiver.recv(), if room => match request {
                    Some(request) => request,
                    None if self.in_flight.is_empty() => return,
                    None => continue,
                },
                _ = tick.tick(), if room => Request::Execute { command: Command::Tick, idempotent: None, reply: None, answer_when: AnswerWhen::Durable },
            };
            let mut requests = vec![first];
            while requests.len() < self.limits.sale_batch_commands_max {
                match self.receiver.try_recv() {
                    Ok(request) => requests.push(request),
                    Err(_) => break,
                }
            }
            self.decide(requests).await;
        }
    }

    /// Sends the answers of the oldest batch now that it is durable; after a failed write,
    /// stops the sale: its in-memory state is ahead of what the log holds.
    fn complete_oldest(&mut self, durable: Result<(), StoreError>) {
        let batch = self.in_flight.pop_front().expect("a batch is in flight");
        if let Err(error) = durable {
            tracing::error!(%error, sale = %self.spec.id, "append failed; sale stops");
            self.stopped = true;
            for failed in std::iter::once(batch).chain(self.in_flight.drain(..)) {
                for (reply, _) in failed.replies {
                    let _ = reply.send(Err(LedgerError::Storage(error.clone())));
                }
            }
            return;
        }
        if let Some(view) = batch.view {
            self.view.send_replace(view);
        }
        for (reply, executed) in batch.replies {
            let _ = reply.send(Ok(executed));
        }
        for read in batch.reads {
            read();
        }
    }

    /// A clock that never goes backwards, so a clock step cannot un-expire a hold.
    fn now(&mut self) -> Timestamp {
        self.last_now = self.last_now.max(self.clock.now());
        self.last_now
    }

    async fn decide(&mut self, requests: Vec<Request>) {
        if self.stopped {
            return; // Dropping the requests answers every caller with `Stopped`.
        }
        let now = self.now();
        let mut events: Vec<Event> = Vec::new();
        let mut values = Vec::new();
        let mut replies = Vec::new();
        let mut answered_when_submitted = Vec::new();
        let mut reads = Vec::new();
        let mut counts = CommandCounts::default();
        for request in requests {
            match request {
                Request::Execute {
                    command,
                    idempotent,
                    reply,
                    answer_when,
                } => {
                    let handled = self.sale.handle(&command, now);
                    counts.add(&command, &handled.outcome);
                    events.extend(handled.events);
                    let answer = idempotent.map(|request| {
                        let mut answer = request.render.answer(&self.spec, &handled.outcome);
                        answer.stored_at = now;
                        values.push((request.key, answer.encode(&request.fingerprint)));
                        answer
                    });
                    if let Some(reply) = reply {
                        let executed = Executed {
                            outcome: handled.outcome,
                            answer,
                        };
                        if answer_when == AnswerWhen::Decided && executed.outcome.is_ok() {
                            answered_when_submitted.push((reply, executed));
                        } else {
                            replies.push((reply, executed));
                        }
                    }
                }
                Request::Read {
                    read,
                    durable_only: true,
                } => reads.push(read(&self.sale)),
                Request::Read {
                    read,
                    durable_only: false,
                } => read(&self.sale)(),
            }
        }
        counts.publish();
        let changed = !events.is_empty();
        let durable = if changed || !values.is_empty() {
            let batch = self.batch(events, values);
            match self.log.submit(batch).await {
                Ok(durable) => Some(durable),
                Err(error) => {
                    // Let the failure flow through the same path as a failed sync, and tell
                    // those who were to hear early along with the rest.
                    replies.append(&mut answered_when_submitted);
                    let (failed, answer) = oneshot::channel();
                    let _ = failed.send(Err(error));
                    Some(Durable::from(answer))
                }
            }
        } else {
            None
        };
        for (reply, executed) in answered_when_submitted {
            let _ = reply.send(Ok(executed));
        }
        let view = changed.then(|| Arc::new(SaleView::of(&self.sale, &self.spec, self.last_now)));
        self.in_flight.push_back(InFlight {
            durable,
            replies,
            reads,
            view,
        });
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
        // A snapshot costs time in proportion to the sale's records; waiting for as many events
        // as the last one had records keeps the cost per event constant as the sale grows (the
        // interval doubles with a sale that only grows). It is built elsewhere from what is
        // durable, so asking for one costs this writer nothing.
        let snapshot_due = self
            .limits
            .snapshot_every_events
            .max(self.records_at_snapshot);
        if self.events_since_snapshot >= snapshot_due {
            self.snapshotter.request(&self.spec.id);
            self.events_since_snapshot = 0;
            self.records_at_snapshot = self.sale.record_count() as u64;
        }
        batch
    }
}

async fn oldest_durable(in_flight: &mut VecDeque<InFlight>) -> Result<(), StoreError> {
    match in_flight
        .front_mut()
        .and_then(|batch| batch.durable.as_mut())
    {
        Some(durable) => durable.await.map(|_| ()),
        None => Ok(()),
    }
}

/// Commands decided in one batch, by command and result, so the metrics registry is touched
/// once per distinct pair per batch rather than once per command.
#[derive(Default)]
struct CommandCounts(Vec<((&'static str, &'static str), u64)>);

impl CommandCounts {
    fn add(&mut self, command: &Command, outcome: &Outcome) {
        let Some(name) = command_name(command) else {
            return;
        };
        let result = match outcome {
            Ok(_) => "accepted",
            Err(rejection) => rejection.code(),
        };
        match self.0.iter_mut().find(|(key, _)| *key == (name, result)) {
            Some((_, count)) => *count += 1,
            None => self.0.push(((name, result), 1)),
        }
    }

    fn publish(self) {
        for ((command, result), count) in self.0 {
            metrics::counter!("holdfast_commands_total", "command" => command, "result" => result)
                .increment(count);
        }
    }
}

fn command_name(command: &Command) -> Option<&'static str> {
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
        Command::Join { .. } => "join",
        Command::SetPaused { .. } => "set_paused",
        Command::Tick => return None,
    };
    Some(name)
}

/// The same refusal for each command not sent after the first that could not be.
fn error_like(error: &LedgerError) -> LedgerError {
    match error {
        LedgerError::Busy => LedgerError::Busy,
        _ => LedgerError::Stopped,
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use holdfast_core::{Channel, Shopper};
    use holdfast_store::{GroupCommit, GroupCommitConfig, SqliteLog};
    use holdfast_testkit::GatedLog;

    use super::*;
    use crate::clock::ManualClock;
    use crate::snapshots::SnapshotStore;
    use crate::streams::Streams;

    fn hold_for(customer: &str) -> Command {
        Command::PlaceHold {
            shopper: Shopper::new(customer, None, None).unwrap(),
            quantity: 1,
            channel: Channel::Web,
            pass: None,
        }
    }

    #[tokio::test]
    async fn an_accepted_command_asked_to_be_answered_when_decided_is_answered_before_its_write() {
        let dir = tempfile::tempdir().unwrap();
        let (log, gate) = GatedLog::new(SqliteLog::open(dir.path()).unwrap());
        let log = GroupCommit::spawn(log, GroupCommitConfig::default());
        let streams = Streams::alone(log);
        let snapshotter = Snapshotter::spawn(SnapshotStore::embedded(dir.path()).unwrap());
        let clock = Arc::new(ManualClock::new(Timestamp(1_000)));
        let sale = Sale::new(SaleSpec::plain("masks", 1000, 1, 1, Timestamp(0)));
        let writer = streams.writer("masks").unwrap();
        let handle = SaleActor::spawn(sale, 0, writer, snapshotter, clock, Limits::default());

        // Answered while its write waits at the gate.
        let held = handle
            .execute_answered(hold_for("alice"), None, AnswerWhen::Decided)
            .await
            .unwrap();
        let Ok(Reply::Held(hold)) = held.outcome else {
            panic!("{:?}", held.outcome)
        };
        assert_eq!(
            handle.view().held,
            0,
            "nothing is published before it is durable"
        );

        // A refusal asked to be answered when decided is still answered only once durable, and so
        // is a command asked the usual way.
        let refused = handle.execute_answered(hold_for("bob"), None, AnswerWhen::Decided);
        let confirm = Command::ConfirmHold {
            hold: hold.id,
            customer_id: "alice".into(),
            payment_ref: "auth-1".into(),
        };
        let confirmed = handle.execute(confirm, None);
        let (mut refused, mut confirmed) = (Box::pin(refused), Box::pin(confirmed));
        assert!((&mut refused).now_or_never().is_none());
        assert!((&mut confirmed).now_or_never().is_none());
        // Both are decided once a later read is answered (the actor takes requests in order).
        handle.read_latest(|_| ()).await.unwrap();
        assert!(
            (&mut refused).now_or_never().is_none(),
            "a refusal before its write"
        );
        assert!(
            (&mut confirmed).now_or_never().is_none(),
            "an order before its write"
        );

        let durable = handle.durable();
        let mut durable = Box::pin(durable);
        assert!((&mut durable).now_or_never().is_none());
        drop(gate); // every commit goes through from now on
        let refused = refused.await.unwrap();
        assert!(
            matches!(refused.outcome, Err(Rejection::SoldOut { .. })),
            "{:?}",
            refused.outcome
        );
        let confirmed = confirmed.await.unwrap();
        assert!(
            matches!(confirmed.outcome, Ok(Reply::Confirmed(_))),
            "{:?}",
            confirmed.outcome
        );
        durable.await.unwrap();
        assert_eq!(handle.view().sold, 1);
    }
}
