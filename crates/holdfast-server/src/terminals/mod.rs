//! Shop terminals: registration, request signatures, allotments, stores, and exactly-once
//! journal sync (`sync.rs`).
//!
//! A terminal signs every request with its own secret. Its journal arrives as hash-chained
//! entries (`holdfast_core::terminal`); each new entry's effects on sales (units sold out of an
//! allotment) are applied by the sale's actor, idempotently per journal entry, and only then is
//! the terminal's progress made durable and acknowledged. A crash between the two is safe: the
//! terminal resends, the sale ignores an entry it already applied, and progress catches up.

mod desk;
mod stores;
mod sync;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use holdfast_core::terminal::auth::{self, Authorization, ReplayGuard, SignedRequest};
use holdfast_core::terminal::wire::{SaleTerms, TillReport};
use holdfast_core::terminal::{ChainHash, Progress};
use holdfast_core::{HolderId, Rejection, SaleSpec, Timestamp};
use holdfast_store::{Batch, Snapshot, StoredSnapshot};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ledger_error::LedgerError;
use crate::streams::{StreamWriter, Streams, terminal_stream};
pub use desk::{Pending, SaleCall, SaleCallAnswer, SaleDesk, TillSaleOutcome, serve_sale_call};
pub use stores::{StoreSettings, Stores, is_valid_store_name};

pub use sync::SyncOutcome;

/// A terminal's registration is kept under this key (in its own stream's values).
const REGISTRATION_KEY: &str = "terminal/";
/// Entries one sync request may carry.
pub const SYNC_ENTRIES_MAX: usize = 1_000;
/// A sync carries up to `SYNC_ENTRIES_MAX` journal entries of a few hundred bytes each.
pub const SYNC_BODY_BYTES_MAX: usize = SYNC_ENTRIES_MAX * 2048;
const SECRET_BYTES: usize = 32;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Registration {
    store: String,
    secret: String,
}

/// An entry with a reason a person must read: quarantined (never applied) or flagged
/// (applied, but past a rule such as the per-person limit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Noted {
    pub seq: u64,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receivable {
    pub seq: u64,
    pub phone: String,
    pub amount: u64,
    /// When the sale that opened it was made, by the till's clock.
    #[serde(default)]
    pub at: i64,
    /// The card authorisation that settled it, once paid.
    pub settled_by: Option<String>,
}

/// A bank transfer a till took, waiting for the owner to confirm it arrived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingTransfer {
    pub amount: u64,
    pub at: i64,
}

/// What the server knows of one terminal, kept as its stream's snapshot.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SyncState {
    applied_through: u64,
    head: String,
    quarantine: Vec<Noted>,
    #[serde(default)]
    flagged: Vec<Noted>,
    /// Money customers owe this till's store, learned from synced entries.
    #[serde(default)]
    receivables: BTreeMap<String, Receivable>,
    /// Bank transfers taken and not yet confirmed, by entry.
    #[serde(default)]
    transfers: BTreeMap<u64, PendingTransfer>,
    /// Takings of synced sale entries, in minor units.
    #[serde(default)]
    takings: u64,
    /// Units sold per scarce sale, from synced entries that applied.
    #[serde(default)]
    units_sold: BTreeMap<String, u64>,
    #[serde(default)]
    last_sync_at: Option<Timestamp>,
    /// What the till said was waiting there, at its last sync.
    #[serde(default)]
    report: Option<TillReport>,
}

impl SyncState {
    fn progress(&self) -> Progress {
        Progress {
            applied_through: self.applied_through,
            head: ChainHash::from_hex(&self.head).unwrap_or(ChainHash::GENESIS),
        }
    }
}

pub struct Terminal {
    pub id: String,
    pub store: String,
    secret: Vec<u8>,
    /// Appends to this terminal's stream.
    writer: StreamWriter,
    /// One sync or allotment change at a time per terminal.
    state: tokio::sync::Mutex<SyncState>,
    replay: std::sync::Mutex<ReplayGuard>,
    /// Held while a pay link of this till is being charged.
    pub paying: tokio::sync::Mutex<()>,
    /// When this till last reached the server, and when the server last put its sync off.
    contact: std::sync::Mutex<Contact>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Contact {
    at: Option<Timestamp>,
    deferred_at: Option<Timestamp>,
}

/// A till as an operator watches it: whether it is in touch, and what waits at the counter.
#[derive(Clone, Debug, Serialize)]
pub struct TerminalStatus {
    pub terminal_id: String,
    pub store: String,
    /// When it last reached the server (any signed call this node took), if ever.
    pub last_contact_at: Option<Timestamp>,
    /// When the server last told its sync to come back later (shedding under load): a till
    /// that is put off is reachable; one with no contact at all is not.
    pub deferred_at: Option<Timestamp>,
    pub last_sync_at: Option<Timestamp>,
    /// Journal entries waiting at the till, as of its last sync.
    pub unsynced: u64,
    pub quarantined: usize,
    pub flagged: usize,
    /// Units left in its allotments, by sale, as of its last sync.
    pub allotments: Vec<(String, u32)>,
}

/// Whether a till is in touch, as far as this server can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reach {
    /// It reached the server within `ONLINE_WITHIN_MS`.
    Online,
    /// It reached the server, which put its sync off for load: the shop's line works, the
    /// server is overloaded.
    Deferred,
    /// Not heard from within `ONLINE_WITHIN_MS`: its line (or the till) is down.
    Unreachable,
    /// Never heard from since this server started.
    Never,
}

/// A till is online when it reached the server within this long (tills sync every few seconds
/// while their line is up).
pub const ONLINE_WITHIN_MS: i64 = 30_000;

impl TerminalStatus {
    pub fn reach(&self, now: Timestamp) -> Reach {
        let recent = |at: Option<Timestamp>| at.is_some_and(|at| now.0 - at.0 <= ONLINE_WITHIN_MS);
        let put_off_last = self.deferred_at >= self.last_contact_at;
        if recent(self.deferred_at) && put_off_last {
            Reach::Deferred
        } else if recent(self.last_contact_at) {
            Reach::Online
        } else if self.last_contact_at.is_some() {
            Reach::Unreachable
        } else {
            Reach::Never
        }
    }
}

/// Why a terminal's request is not let in.
#[derive(Debug, Error)]
pub enum AuthRefusal {
    #[error("the signature does not match this terminal's key")]
    BadSignature,
    #[error(transparent)]
    Refused(#[from] auth::Refused),
}

/// Terminal records that cannot be read back.
#[derive(Debug, Error)]
pub enum TerminalsUnreadable {
    #[error("a terminal record cannot be read: {0}")]
    Json(#[from] serde_json::Error),
    #[error("terminal '{0}' was read back by a node that does not hold it")]
    NotHeld(String),
}

/// Why a terminal's call about a sale is refused.
#[derive(Debug, Error)]
pub enum TerminalError {
    #[error("no sale with id '{0}'")]
    UnknownSale(String),
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

pub struct Terminals {
    registry: RwLock<HashMap<String, Arc<Terminal>>>,
    pub stores: Stores,
    registering: tokio::sync::Mutex<()>,
    streams: Streams,
    /// Requests signed before this are refused: the nonces seen before a restart are gone.
    started_at: Timestamp,
}

/// A terminal holds allotments under its stream's name.
fn holder(terminal: &str) -> HolderId {
    HolderId(terminal_stream(terminal))
}

/// The terms a till sells a scarce sale under.
pub fn terms(spec: &SaleSpec) -> SaleTerms {
    SaleTerms {
        price: spec.price,
        per_customer_limit: spec.per_customer_limit,
        opens_at_ms: spec.opens_at.0,
        closes_at_ms: spec.closes_at.map(|t| t.0),
    }
}

impl Terminals {
    /// Rebuilds registrations and stores (keyed values) and sync progress (the terminal
    /// streams' snapshots, written with every applied batch).
    pub fn recover(
        streams: Streams,
        values: &[(String, Vec<u8>)],
        snapshots: &[StoredSnapshot],
        started_at: Timestamp,
    ) -> Result<Terminals, TerminalsUnreadable> {
        let terminals = Terminals {
            registry: RwLock::new(HashMap::new()),
            stores: Stores::recover(streams.clone(), values)?,
            registering: tokio::sync::Mutex::new(()),
            streams,
            started_at,
        };
        for (key, _) in values {
            if let Some(id) = key.strip_prefix(REGISTRATION_KEY) {
                let stream = terminal_stream(id);
                let snapshot = snapshots.iter().find(|s| s.stream == stream);
                terminals.adopt(id, values, snapshot)?;
            }
        }
        Ok(terminals)
    }

    /// Starts serving a terminal from its registration (among `values`) and its progress
    /// snapshot: at start-up, or when this node takes the terminal's stream over.
    pub fn adopt(
        &self,
        id: &str,
        values: &[(String, Vec<u8>)],
        snapshot: Option<&StoredSnapshot>,
    ) -> Result<(), TerminalsUnreadable> {
        let key = format!("{REGISTRATION_KEY}{id}");
        let Some((_, bytes)) = values.iter().rev().find(|(k, _)| *k == key) else {
            return Ok(());
        };
        let registration: Registration = serde_json::from_slice(bytes)?;
        let state = match snapshot {
            Some(snapshot) => serde_json::from_slice::<SyncState>(&snapshot.payload)?,
            None => SyncState::default(),
        };
        let secret = hex::decode(&registration.secret).unwrap_or_default();
        let writer = self
            .streams
            .writer(&terminal_stream(id))
            .map_err(|_| TerminalsUnreadable::NotHeld(id.to_owned()))?;
        let terminal = Terminal::new(
            id,
            &registration.store,
            secret,
            writer,
            state,
            self.started_at,
        );
        self.registry
            .write()
            .expect("terminal registry")
            .insert(id.to_owned(), Arc::new(terminal));
        Ok(())
    }

    /// Stops serving a terminal another node has taken over.
    pub fn drop_terminal(&self, id: &str) {
        self.registry.write().expect("terminal registry").remove(id);
    }

    /// Every terminal this node serves.
    pub fn all(&self) -> Vec<Arc<Terminal>> {
        let registry = self.registry.read().expect("terminal registry");
        registry.values().cloned().collect()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Terminal>> {
        self.registry
            .read()
            .expect("terminal registry")
            .get(id)
            .cloned()
    }

    /// Registers a terminal durably and returns its secret (shown this once).
    pub async fn register(&self, id: &str, store: &str) -> Result<Option<String>, LedgerError> {
        let _one_at_a_time = self.registering.lock().await;
        if self.get(id).is_some() {
            return Ok(None);
        }
        let mut secret = vec![0u8; SECRET_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
        let registration = Registration {
            store: store.to_owned(),
            secret: hex::encode(&secret),
        };
        let writer = self.write_registration(id, &registration).await?;
        let terminal = Terminal::new(
            id,
            store,
            secret.clone(),
            writer,
            SyncState::default(),
            self.started_at,
        );
        self.registry
            .write()
            .expect("terminal registry")
            .insert(id.to_owned(), Arc::new(terminal));
        Ok(Some(hex::encode(secret)))
    }
}

impl Terminals {
    /// Makes a terminal a new secret (its till lost its data), keeping everything the server
    /// knows of it: its journal's progress, receivables, quarantine. Requests signed with the
    /// old secret are refused from now on. Answers the new secret and where the journal stands.
    pub async fn rotate_secret(&self, id: &str) -> Result<Option<(String, Progress)>, LedgerError> {
        let _one_at_a_time = self.registering.lock().await;
        let Some(old) = self.get(id) else {
            return Ok(None);
        };
        // Holding the old terminal's state keeps its syncs out until the new one is in place.
        let state = old.state.lock().await;
        let mut secret = vec![0u8; SECRET_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
        let registration = Registration {
            store: old.store.clone(),
            secret: hex::encode(&secret),
        };
        let writer = self.write_registration(id, &registration).await?;
        let progress = state.progress();
        let renewed = Terminal::new(
            id,
            &old.store,
            secret.clone(),
            writer,
            state.clone(),
            self.started_at,
        );
        self.registry
            .write()
            .expect("terminal registry")
            .insert(id.to_owned(), Arc::new(renewed));
        Ok(Some((hex::encode(secret), progress)))
    }

    /// Writes a terminal's registration into its stream; answers the stream's writer.
    async fn write_registration(
        &self,
        id: &str,
        registration: &Registration,
    ) -> Result<StreamWriter, LedgerError> {
        let value = serde_json::to_vec(registration).expect("registrations serialise");
        let batch = Batch {
            values: vec![(format!("{REGISTRATION_KEY}{id}"), value)],
            ..Batch::default()
        };
        let writer = self.streams.writer(&terminal_stream(id))?;
        writer.append(batch).await?;
        Ok(writer)
    }
}

impl Terminal {
    fn new(
        id: &str,
        store: &str,
        secret: Vec<u8>,
        writer: StreamWriter,
        state: SyncState,
        started_at: Timestamp,
    ) -> Terminal {
        Terminal {
            id: id.to_owned(),
            store: store.to_owned(),
            secret,
            writer,
            state: tokio::sync::Mutex::new(state),
            replay: std::sync::Mutex::new(ReplayGuard::new(started_at)),
            paying: tokio::sync::Mutex::new(()),
            contact: std::sync::Mutex::default(),
        }
    }

    /// This terminal's stream.
    pub fn stream(&self) -> &str {
        self.writer.stream()
    }

    /// Appends to this terminal's stream (answers stored for its payments, …).
    pub fn writer(&self) -> &StreamWriter {
        &self.writer
    }

    /// Checks a signed request: the cheap time test first, then the signature over the exact
    /// body, then that its nonce is new. Only a genuine, fresh request is remembered.
    pub fn admit(
        &self,
        auth: &Authorization,
        request: &SignedRequest,
        now: Timestamp,
    ) -> Result<(), AuthRefusal> {
        let mut replay = self.replay.lock().expect("replay guard");
        replay.check_time(auth.signed_at, now)?;
        if !request.verify(&self.secret, &auth.signature) {
            return Err(AuthRefusal::BadSignature);
        }
        replay.admit(auth, now)?;
        self.contact.lock().expect("contact").at = Some(now);
        Ok(())
    }

    /// Notes that this till's sync was put off (the server is shedding load).
    pub fn deferred(&self, now: Timestamp) {
        self.contact.lock().expect("contact").deferred_at = Some(now);
    }

    /// How this till stands, for the operator.
    pub async fn status(&self) -> TerminalStatus {
        let contact = *self.contact.lock().expect("contact");
        let state = self.state.lock().await;
        let report = state.report.clone().unwrap_or_default();
        TerminalStatus {
            terminal_id: self.id.clone(),
            store: self.store.clone(),
            last_contact_at: contact.at,
            deferred_at: contact.deferred_at,
            last_sync_at: state.last_sync_at,
            unsynced: report.unsynced,
            quarantined: state.quarantine.len(),
            flagged: state.flagged.len(),
            allotments: report.allotments,
        }
    }

    /// The time test alone, before the body is read.
    pub fn check_time(&self, auth: &Authorization, now: Timestamp) -> Result<(), AuthRefusal> {
        let replay = self.replay.lock().expect("replay guard");
        Ok(replay.check_time(auth.signed_at, now)?)
    }

    /// Sets this terminal's allotment of a sale to `target` units, claiming or returning the
    /// difference. Setting (rather than adding) makes a replayed request harmless. Answers the
    /// allotment held afterwards (less than asked when the pool runs short) and the sale's
    /// terms, which the till sells under while offline.
    pub async fn set_allotment(
        &self,
        sales: &dyn SaleDesk,
        sale_id: &str,
        target: u32,
    ) -> Result<(u32, SaleTerms), TerminalError> {
        let _exclusive = self.state.lock().await;
        let call = SaleCall::SetAllotment {
            holder: holder(&self.id),
            target,
        };
        match sales.call(sale_id, call).await? {
            SaleCallAnswer::Allotment(held) => Ok(held?),
            _ => Err(TerminalError::UnknownSale(sale_id.to_owned())),
        }
    }

    pub async fn receivable(&self, id: &str) -> Option<Receivable> {
        self.state.lock().await.receivables.get(id).cloned()
    }

    /// Records that `id` was paid with `authorization`, durably. `None` if there is no such
    /// receivable; the existing settlement if it was paid already.
    pub async fn settle(
        &self,
        id: &str,
        authorization: &str,
    ) -> Result<Option<Receivable>, LedgerError> {
        let mut state = self.state.lock().await;
        let Some(receivable) = state.receivables.get(id).cloned() else {
            return Ok(None);
        };
        if receivable.settled_by.is_some() {
            return Ok(Some(receivable));
        }
        let mut next = state.clone();
        let settled = Receivable {
            settled_by: Some(authorization.to_owned()),
            ..receivable
        };
        next.receivables.insert(id.to_owned(), settled.clone());
        let batch = Batch {
            snapshots: vec![self.progress_snapshot(&next)],
            ..Batch::default()
        };
        self.writer.append(batch).await?;
        *state = next;
        Ok(Some(settled))
    }

    /// The shop as the owner sees it from the server.
    pub async fn view(&self, now: Timestamp) -> TerminalView {
        let state = self.state.lock().await;
        TerminalView {
            terminal_id: self.id.clone(),
            store: self.store.clone(),
            last_sync_at: state.last_sync_at,
            synced_through: state.applied_through,
            takings: state.takings,
            units_sold: state.units_sold.clone(),
            waiting_at_till: state.report.clone(),
            receivables: state
                .receivables
                .iter()
                .map(|(id, r)| ReceivableView {
                    id: id.clone(),
                    seq: r.seq,
                    phone: r.phone.clone(),
                    amount: r.amount,
                    age_s: (now.0 - r.at).max(0) / 1000,
                    paid_by: r.settled_by.clone(),
                })
                .collect(),
            transfers_pending: state
                .transfers
                .iter()
                .map(|(seq, t)| (*seq, t.clone()))
                .collect(),
            quarantine: state.quarantine.clone(),
            flagged: state.flagged.clone(),
        }
    }

    /// The terminal's progress as its stream's snapshot: recovery reads it back and never
    /// needs to replay the trail.
    fn progress_snapshot(&self, state: &SyncState) -> Snapshot {
        Snapshot {
            stream: self.writer.stream().to_owned(),
            payload: serde_json::to_vec(state).expect("progress serialises"),
        }
    }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ReceivableView {
    pub id: String,
    pub seq: u64,
    pub phone: String,
    pub amount: u64,
    pub age_s: i64,
    pub paid_by: Option<String>,
}

/// Everything the server knows of one till, for its owner.
#[derive(Clone, Debug, Serialize)]
pub struct TerminalView {
    pub terminal_id: String,
    pub store: String,
    pub last_sync_at: Option<Timestamp>,
    pub synced_through: u64,
    pub takings: u64,
    pub units_sold: BTreeMap<String, u64>,
    pub waiting_at_till: Option<TillReport>,
    pub receivables: Vec<ReceivableView>,
    pub transfers_pending: Vec<(u64, PendingTransfer)>,
    pub quarantine: Vec<Noted>,
    pub flagged: Vec<Noted>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(contact: Option<i64>, deferred: Option<i64>) -> TerminalStatus {
        TerminalStatus {
            terminal_id: "t".into(),
            store: "s".into(),
            last_contact_at: contact.map(Timestamp),
            deferred_at: deferred.map(Timestamp),
            last_sync_at: None,
            unsynced: 0,
            quarantined: 0,
            flagged: 0,
            allotments: vec![],
        }
    }

    /// A till put off by a shedding server is told apart from one whose line is down.
    #[test]
    fn reach_tells_a_down_line_from_an_overloaded_server() {
        let now = Timestamp(100_000);
        let cases = [
            (None, None, Reach::Never),
            (Some(99_000), None, Reach::Online),
            (
                Some(100_000 - ONLINE_WITHIN_MS - 1),
                None,
                Reach::Unreachable,
            ),
            (Some(99_000), Some(99_000), Reach::Deferred),
            (Some(99_500), Some(99_000), Reach::Online),
            (Some(10_000), Some(99_000), Reach::Deferred),
            (Some(10_000), Some(20_000), Reach::Unreachable),
        ];
        for (contact, deferred, reach) in cases {
            assert_eq!(
                status(contact, deferred).reach(now),
                reach,
                "{contact:?} {deferred:?}"
            );
        }
    }
}
