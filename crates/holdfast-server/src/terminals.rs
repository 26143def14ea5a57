//! Shop terminals: registration, request signatures, allotments, and exactly-once journal sync.
//!
//! A terminal signs every request with its own secret. Its journal arrives as hash-chained
//! entries (`holdfast_core::terminal`); each new entry's effects on sales (units sold out of an
//! allotment) are applied by the sale's actor, idempotently per journal entry, and only then is
//! the terminal's progress made durable and acknowledged. A crash between the two is safe: the
//! terminal resends, the sale ignores an entry it already applied, and progress catches up.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use holdfast_core::terminal::auth::{self, Authorization, ReplayGuard, SignedRequest};
use holdfast_core::terminal::{ChainHash, JournalEntry, Progress};
use holdfast_core::{Channel, Command, HolderId, Reply, Timestamp};
use holdfast_store::{Batch, LogHandle, Record, Snapshot, StoredSnapshot};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, LedgerError};
use crate::ledger::Ledger;

/// Log streams and values under these prefixes belong to terminals, not sales. Sale ids cannot
/// contain ':' or '/', so the namespaces cannot collide.
pub const STREAM_PREFIX: &str = "terminal:";
const REGISTRATION_KEY: &str = "terminal/";
const STORE_LIMITS_KEY: &str = "store-limits/";

/// Limits on store-and-forward card payments, set by the operator per store and sent to every
/// till of that store with its sync answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineCardLimits {
    pub per_sale_max: u64,
    pub outstanding_total_max: u64,
    pub outstanding_count_max: u32,
    pub age_max_hours: u32,
}
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

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Quarantined {
    pub seq: u64,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SyncState {
    applied_through: u64,
    head: String,
    quarantine: Vec<Quarantined>,
    /// Money customers owe this till's store, learned from synced entries.
    #[serde(default)]
    receivables: BTreeMap<String, Receivable>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receivable {
    pub seq: u64,
    pub phone: String,
    pub amount: u64,
    /// The card authorisation that settled it, once paid.
    pub settled_by: Option<String>,
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
    /// One sync or allotment change at a time per terminal.
    state: tokio::sync::Mutex<SyncState>,
    replay: std::sync::Mutex<ReplayGuard>,
    /// Held while a pay link of this till is being charged.
    pub paying: tokio::sync::Mutex<()>,
}

/// Why a terminal's request is not let in.
#[derive(Debug, thiserror::Error)]
pub enum AuthRefusal {
    #[error("the signature does not match this terminal's key")]
    BadSignature,
    #[error(transparent)]
    Refused(#[from] auth::Refused),
}

/// A terminal journal entry's body: a sale (lines, total, tender), or a receivable opened
/// after the fact (a stored card declined once forwarded).
#[derive(Debug, Deserialize)]
struct SaleEntry {
    #[serde(default)]
    lines: Vec<Line>,
    #[serde(default)]
    total: u64,
    #[serde(default)]
    tender: serde_json::Value,
    receivable: Option<OpenedReceivable>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct OpenedReceivable {
    pub id: String,
    pub phone: String,
    pub amount: u64,
}

impl SaleEntry {
    /// The receivable this entry opens, if any.
    fn receivable(&self) -> Option<OpenedReceivable> {
        if let Some(opened) = &self.receivable {
            return Some(opened.clone());
        }
        let tender = &self.tender;
        if tender["kind"] != "pay_later" {
            return None;
        }
        Some(OpenedReceivable {
            id: tender["receivable"].as_str()?.to_owned(),
            phone: tender["phone"].as_str().unwrap_or_default().to_owned(),
            amount: self.total,
        })
    }
}

/// What one journal entry does on the server, read from its body once.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EntryEffects {
    /// Units sold out of this terminal's allotment, per sale.
    pub sold: BTreeMap<String, u32>,
    /// Money a customer now owes the store.
    pub receivable: Option<OpenedReceivable>,
}

/// Reads a journal entry's body. `Err` is the reason to quarantine it: the body is not a sale
/// the server can read, or its numbers make no sense. The till's numbers are untrusted, so
/// sums are checked (a sum that wrapped would record a small sale).
pub fn read_entry(body: &[u8]) -> Result<EntryEffects, String> {
    let entry: SaleEntry =
        serde_json::from_slice(body).map_err(|_| "the entry is not a readable sale".to_owned())?;
    let mut sold: BTreeMap<String, u32> = BTreeMap::new();
    for line in &entry.lines {
        if let Some(sale_id) = &line.sale_id {
            let sum = sold.entry(sale_id.clone()).or_default();
            *sum = sum
                .checked_add(line.quantity)
                .ok_or_else(|| format!("{sale_id}: the line quantities add up past any stock"))?;
        }
    }
    Ok(EntryEffects {
        sold,
        receivable: entry.receivable(),
    })
}

#[derive(Debug, Deserialize)]
struct Line {
    quantity: u32,
    /// Set when the units came out of the terminal's allotment of a scarce sale.
    sale_id: Option<String>,
}

pub struct SyncAnswer {
    pub acked_through: u64,
    pub head: ChainHash,
    pub receipt: String,
    pub stopped: Option<String>,
    pub quarantined: Vec<u64>,
    /// Receivables customers have paid by link, so the till can close them.
    pub settled: Vec<String>,
}

pub struct Terminals {
    registry: RwLock<HashMap<String, Arc<Terminal>>>,
    store_limits: RwLock<HashMap<String, OfflineCardLimits>>,
    registering: tokio::sync::Mutex<()>,
    log: LogHandle,
    /// Requests signed before this are refused: the nonces seen before a restart are gone.
    started_at: Timestamp,
}

fn holder(terminal: &str) -> HolderId {
    HolderId(format!("{STREAM_PREFIX}{terminal}"))
}

impl Terminals {
    /// Rebuilds registrations (keyed values) and sync progress (the terminal streams'
    /// snapshots, written with every applied batch).
    pub fn recover(
        log: LogHandle,
        values: &[(String, Vec<u8>)],
        snapshots: &[StoredSnapshot],
        started_at: Timestamp,
    ) -> Result<Terminals, serde_json::Error> {
        let mut registrations = BTreeMap::new();
        let mut store_limits = HashMap::new();
        for (key, bytes) in values {
            if let Some(id) = key.strip_prefix(REGISTRATION_KEY) {
                registrations.insert(
                    id.to_owned(),
                    serde_json::from_slice::<Registration>(bytes)?,
                );
            } else if let Some(store) = key.strip_prefix(STORE_LIMITS_KEY) {
                store_limits.insert(
                    store.to_owned(),
                    serde_json::from_slice::<OfflineCardLimits>(bytes)?,
                );
            }
        }
        let mut progress = HashMap::new();
        for snapshot in snapshots {
            if let Some(id) = snapshot.stream.strip_prefix(STREAM_PREFIX) {
                progress.insert(
                    id.to_owned(),
                    serde_json::from_slice::<SyncState>(&snapshot.payload)?,
                );
            }
        }
        let registry = registrations
            .into_iter()
            .map(|(id, registration)| {
                let state = progress.remove(&id).unwrap_or_default();
                let terminal = Terminal {
                    secret: hex::decode(&registration.secret).unwrap_or_default(),
                    store: registration.store,
                    state: tokio::sync::Mutex::new(state),
                    replay: std::sync::Mutex::new(ReplayGuard::new(started_at)),
                    paying: tokio::sync::Mutex::new(()),
                    id: id.clone(),
                };
                (id, Arc::new(terminal))
            })
            .collect();
        Ok(Terminals {
            registry: RwLock::new(registry),
            store_limits: RwLock::new(store_limits),
            registering: tokio::sync::Mutex::new(()),
            log,
            started_at,
        })
    }

    pub fn get(&self, id: &str) -> Option<Arc<Terminal>> {
        self.registry
            .read()
            .expect("terminal registry")
            .get(id)
            .cloned()
    }

    pub fn store_limits(&self, store: &str) -> Option<OfflineCardLimits> {
        self.store_limits
            .read()
            .expect("store limits")
            .get(store)
            .copied()
    }

    /// Sets a store's offline-card limits durably; its tills receive them on their next sync.
    pub async fn set_store_limits(
        &self,
        store: &str,
        limits: OfflineCardLimits,
    ) -> Result<(), LedgerError> {
        let value = serde_json::to_vec(&limits).expect("limits serialise");
        let batch = Batch {
            values: vec![(format!("{STORE_LIMITS_KEY}{store}"), value)],
            ..Batch::default()
        };
        self.log.append(batch).await?;
        self.store_limits
            .write()
            .expect("store limits")
            .insert(store.to_owned(), limits);
        Ok(())
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
        let value = serde_json::to_vec(&registration).expect("registrations serialise");
        let batch = Batch {
            values: vec![(format!("{REGISTRATION_KEY}{id}"), value)],
            ..Batch::default()
        };
        self.log.append(batch).await?;
        let terminal = Terminal {
            id: id.to_owned(),
            store: store.to_owned(),
            secret: secret.clone(),
            state: tokio::sync::Mutex::new(SyncState::default()),
            replay: std::sync::Mutex::new(ReplayGuard::new(self.started_at)),
            paying: tokio::sync::Mutex::new(()),
        };
        self.registry
            .write()
            .expect("terminal registry")
            .insert(id.to_owned(), Arc::new(terminal));
        Ok(Some(hex::encode(secret)))
    }
}

impl Terminal {
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
        Ok(())
    }

    /// The time test alone, before the body is read.
    pub fn check_time(&self, auth: &Authorization, now: Timestamp) -> Result<(), AuthRefusal> {
        let replay = self.replay.lock().expect("replay guard");
        Ok(replay.check_time(auth.signed_at, now)?)
    }

    pub async fn quarantine(&self) -> Vec<Quarantined> {
        self.state.lock().await.quarantine.clone()
    }

    /// Sets this terminal's allotment of a sale to `target` units, claiming or returning the
    /// difference. Setting (rather than adding) makes a replayed request harmless. Answers the
    /// allotment held afterwards, which is less than asked when the pool runs short.
    pub async fn set_allotment(
        &self,
        ledger: &Ledger,
        sale_id: &str,
        target: u32,
    ) -> Result<u32, ApiError> {
        let _exclusive = self.state.lock().await;
        let sale = ledger.sale(sale_id).ok_or_else(|| {
            ApiError::not_found("sale_not_found", format!("no sale with id '{sale_id}'"))
        })?;
        let holder = holder(&self.id);
        let current = {
            let holder = holder.clone();
            sale.read(move |s| s.allotment(&holder)).await?
        };
        let command = match target.cmp(&current) {
            std::cmp::Ordering::Equal => return Ok(current),
            std::cmp::Ordering::Greater => Command::ClaimAllotment {
                holder,
                channel: Channel::Store,
                quantity: target - current,
            },
            std::cmp::Ordering::Less => Command::ReturnAllotment {
                holder,
                quantity: current - target,
            },
        };
        match sale.execute(command, None).await?.outcome? {
            Reply::Granted { quantity } => Ok(current + quantity),
            _ => Ok(target),
        }
    }

    /// Applies the new entries of `batch` exactly once, then makes the progress durable.
    pub async fn sync(
        &self,
        ledger: &Ledger,
        log: &LogHandle,
        batch: &[JournalEntry],
    ) -> Result<SyncAnswer, LedgerError> {
        let mut state = self.state.lock().await;
        let accepted = state.progress().accept(batch);
        let mut progress = state.progress();
        let mut stopped = accepted.stopped.map(|b| b.to_string());
        let mut applied = Vec::new();
        let mut quarantined = Vec::new();
        let mut opened = Vec::new();
        for &index in &accepted.new {
            let entry = &batch[index];
            let effects = read_entry(&entry.body);
            match self.apply(ledger, entry.seq, &effects).await {
                Ok(None) => {}
                Ok(Some(reason)) => quarantined.push(Quarantined {
                    seq: entry.seq,
                    reason,
                }),
                Err(error) => {
                    // The ledger could not take it now: acknowledge up to the entry before.
                    stopped = Some(format!(
                        "entry {} could not be applied yet: {error}",
                        entry.seq
                    ));
                    break;
                }
            }
            progress = Progress {
                applied_through: entry.seq,
                head: entry.hash(),
            };
            if let Ok(EntryEffects {
                receivable: Some(receivable),
                ..
            }) = effects
            {
                opened.push((entry.seq, receivable));
            }
            applied.push(entry);
        }
        if !applied.is_empty() {
            let mut next = state.clone();
            next.applied_through = progress.applied_through;
            next.head = progress.head.to_hex();
            next.quarantine.extend(quarantined.iter().cloned());
            for (seq, OpenedReceivable { id, phone, amount }) in opened {
                next.receivables.entry(id).or_insert(Receivable {
                    seq,
                    phone,
                    amount,
                    settled_by: None,
                });
            }
            let trail: Vec<serde_json::Value> = applied
                .iter()
                .map(
                    |e| serde_json::json!({"seq": e.seq, "body": String::from_utf8_lossy(&e.body)}),
                )
                .collect();
            let batch = Batch {
                records: vec![Record {
                    stream: format!("{STREAM_PREFIX}{}", self.id),
                    payload: serde_json::to_vec(&trail).expect("entries serialise"),
                }],
                snapshots: vec![self.progress_snapshot(&next)],
                ..Batch::default()
            };
            log.append(batch).await?;
            *state = next;
        }
        Ok(SyncAnswer {
            acked_through: progress.applied_through,
            head: progress.head,
            receipt: auth::receipt(&self.secret, &progress),
            stopped,
            quarantined: quarantined.iter().map(|q| q.seq).collect(),
            settled: state
                .receivables
                .iter()
                .filter(|(_, r)| r.settled_by.is_some())
                .map(|(id, _)| id.clone())
                .collect(),
        })
    }

    pub async fn receivable(&self, id: &str) -> Option<Receivable> {
        self.state.lock().await.receivables.get(id).cloned()
    }

    /// Records that `id` was paid with `authorization`, durably. `None` if there is no such
    /// receivable; the existing settlement if it was paid already.
    pub async fn settle(
        &self,
        log: &LogHandle,
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
        log.append(batch).await?;
        *state = next;
        Ok(Some(settled))
    }

    /// The terminal's progress as its stream's snapshot: recovery reads it back and never
    /// needs to replay the trail.
    fn progress_snapshot(&self, state: &SyncState) -> Snapshot {
        Snapshot {
            stream: format!("{STREAM_PREFIX}{}", self.id),
            payload: serde_json::to_vec(state).expect("progress serialises"),
        }
    }

    /// Applies one entry's effects. `Ok(Some(reason))` quarantines it: it can never apply.
    async fn apply(
        &self,
        ledger: &Ledger,
        seq: u64,
        effects: &Result<EntryEffects, String>,
    ) -> Result<Option<String>, LedgerError> {
        let effects = match effects {
            Ok(effects) => effects,
            Err(reason) => return Ok(Some(reason.clone())),
        };
        for (sale_id, &quantity) in &effects.sold {
            let Some(sale) = ledger.sale(sale_id) else {
                return Ok(Some(format!("no sale '{sale_id}'")));
            };
            let command = Command::RecordAllottedSale {
                holder: holder(&self.id),
                quantity,
                journal_seq: Some(seq),
            };
            if let Err(rejection) = sale.execute(command, None).await?.outcome {
                return Ok(Some(format!("{sale_id}: {rejection}")));
            }
        }
        Ok(None)
    }
}
