//! Idempotency keys: a repeated request with the same key (per customer) gets the first answer
//! and changes nothing. The answer is made durable in the same write as the command's events,
//! so it survives a restart; this map is the in-memory index of those answers, plus a marker
//! for requests still in flight so two concurrent copies cannot both run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use holdfast_core::Timestamp;
use holdfast_store::{Batch, Fate};
use serde::Serialize;
use sha2::{Digest, Sha256};

use axum::http::StatusCode;

pub use crate::answer::StoredAnswer;
use crate::error::ApiError;
use crate::ledger_error::LedgerError;
use crate::streams::StreamWriter;

const KEY_PREFIX: &str = "idem/";
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;

/// The index is split by owner into this many parts, each behind its own lock: a sweep of
/// expired answers, or a part's table growing, then holds up only the requests of the owners
/// in that part, for a 64th of the time. One table of two million answers took seconds to grow
/// or sweep, and every request waited (`holdfast bench --scenario sustained`).
const SHARDS: usize = 64;

/// Answers stored in one part between two sweeps of its expired ones.
const PRUNE_EVERY_ANSWERS: u64 = 1_024;

/// Whose keys these are: each owner has a key space of its own and a bound on it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    Customer(String),
    Terminal(String),
}

impl Owner {
    /// The storage key for one of this owner's keys. A customer id is length-prefixed (so no
    /// two pairs produce the same string) and starts with a digit; a terminal's starts with
    /// "till/", so the two spaces cannot meet.
    fn storage_key(&self, key: &str) -> String {
        match self {
            Owner::Customer(id) => format!("{KEY_PREFIX}{}:{id}/{key}", id.len()),
            Owner::Terminal(id) => format!("{KEY_PREFIX}till/{id}/{key}"),
        }
    }

    fn of_storage_key(key: &str) -> Option<Owner> {
        let rest = key.strip_prefix(KEY_PREFIX)?;
        if let Some(till) = rest.strip_prefix("till/") {
            return Some(Owner::Terminal(till.split_once('/')?.0.to_owned()));
        }
        let (len, rest) = rest.split_once(':')?;
        let id = rest.get(..len.parse::<usize>().ok()?)?;
        Some(Owner::Customer(id.to_owned()))
    }
}

/// What becomes of a stored value when the log's values are compacted, if it is an answer:
/// dropped once expired, and until then waited for (the answers stored after it expire later
/// still). An answer that cannot be read is kept: start-up reports it rather than lose it.
pub fn fate_of(key: &str, value: &[u8], now: Timestamp) -> Option<Fate> {
    if !key.starts_with(KEY_PREFIX) {
        return None;
    }
    Some(match StoredAnswer::decode(value) {
        Some((_, answer)) if answer.expired(now) => Fate::Drop,
        Some(_) => Fate::Wait,
        None => Fate::Keep,
    })
}

/// A digest of what a request asked for, so a key reused for a different request is caught.
pub fn fingerprint(route: &str, body: &impl Serialize) -> String {
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(body).expect("request bodies serialise"));
    hex::encode(&hasher.finalize()[..16])
}

#[derive(Debug, thiserror::Error)]
#[error("the stored answer under '{0}' cannot be read")]
pub struct UnreadableAnswer(String);

enum Slot {
    InFlight {
        fingerprint: String,
    },
    Done {
        fingerprint: String,
        answer: StoredAnswer,
    },
}

/// Answers one owner may have stored and not yet expired (a day's worth). A shopper makes a
/// few requests a sale and a till a few hundred payments a day; beyond this a caller is
/// hoarding keys, and is told to slow down rather than grow the server's memory.
pub const KEYS_PER_OWNER_MAX: usize = 10_000;

#[derive(Default)]
struct Slots {
    by_key: HashMap<String, Slot>,
    per_owner: HashMap<Owner, usize>,
    /// When a full owner last caused a sweep: at most one a minute, so an owner knocking at
    /// its bound cannot make every request walk the whole index.
    swept_for_full_owner_at: Option<Timestamp>,
    stored_since_sweep: u64,
}

const FULL_OWNER_SWEEP_EVERY_MILLIS: u64 = 60_000;

impl Slots {
    fn insert(&mut self, key: String, owner: &Owner, slot: Slot) {
        if self.by_key.insert(key, slot).is_none() {
            match self.per_owner.get_mut(owner) {
                Some(count) => *count += 1,
                None => {
                    self.per_owner.insert(owner.clone(), 1);
                }
            }
        }
    }

    fn is_full(&self, owner: &Owner) -> bool {
        self.per_owner.get(owner).copied().unwrap_or(0) >= KEYS_PER_OWNER_MAX
    }

    fn remove(&mut self, key: &str, owner: &Owner) {
        if self.by_key.remove(key).is_some() {
            let count = self
                .per_owner
                .get_mut(owner)
                .expect("an owner of a stored key");
            *count -= 1;
            if *count == 0 {
                self.per_owner.remove(owner);
            }
        }
    }

    fn sweep(&mut self, now: Timestamp) {
        let expired: Vec<String> = self
            .by_key
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Done { answer, .. } if answer.expired(now)))
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            let owner = Owner::of_storage_key(&key).expect("stored keys name their owner");
            self.remove(&key, &owner);
        }
    }
}

type Shards = Arc<[Mutex<Slots>]>;

#[derive(Clone)]
pub struct Idempotency {
    shards: Shards,
}

impl Default for Idempotency {
    fn default() -> Self {
        let shards: Vec<Mutex<Slots>> = (0..SHARDS).map(|_| Mutex::default()).collect();
        Idempotency {
            shards: shards.into(),
        }
    }
}

/// The part of the index that keeps `owner`'s keys (the same in every process: the hasher's
/// keys are fixed).
fn shard_of(owner: &Owner) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    owner.hash(&mut hasher);
    (hasher.finish() % SHARDS as u64) as usize
}

pub enum Begin {
    /// First time: run the request, then call `finish` (or drop the guard to forget it).
    Fresh(InFlightGuard),
    Replay(StoredAnswer),
}

/// Removes the in-flight marker unless the request finished with a stored answer.
pub struct InFlightGuard {
    shards: Shards,
    owner: Owner,
    key: String,
    finished: bool,
}

impl InFlightGuard {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn finish(mut self, fingerprint: String, answer: StoredAnswer) {
        let now = answer.stored_at;
        let mut slots = self.shards[shard_of(&self.owner)]
            .lock()
            .expect("idempotency map");
        // Sweeping expired answers every so many keeps the cost per request constant and the
        // map bounded by a day's worth of keys.
        slots.stored_since_sweep += 1;
        if slots.stored_since_sweep >= PRUNE_EVERY_ANSWERS {
            slots.stored_since_sweep = 0;
            slots.sweep(now);
        }
        let done = Slot::Done {
            fingerprint,
            answer,
        };
        // The marker put in by `begin` is still there (a sweep takes only expired answers).
        match slots.by_key.get_mut(&self.key) {
            Some(slot) => *slot = done,
            None => slots.insert(self.key.clone(), &self.owner, done),
        }
        self.finished = true;
    }

    /// Stores `answer` durably on its own (for requests whose effects are not a sale's events,
    /// such as a till's card payment), then finishes.
    pub async fn finish_durably(
        self,
        log: &StreamWriter,
        fingerprint: String,
        mut answer: StoredAnswer,
        now: Timestamp,
    ) -> Result<StoredAnswer, LedgerError> {
        answer.stored_at = now;
        let batch = Batch {
            values: vec![(self.key.clone(), answer.encode(&fingerprint))],
            ..Batch::default()
        };
        log.append(batch).await?;
        self.finish(fingerprint, answer.clone());
        Ok(answer)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.shards[shard_of(&self.owner)]
                .lock()
                .expect("idempotency map")
                .remove(&self.key, &self.owner);
        }
    }
}

impl Idempotency {
    /// Rebuilds the index from the values recovered from the log, leaving out expired answers.
    pub fn recover(
        values: &[(String, Vec<u8>)],
        now: Timestamp,
    ) -> Result<Idempotency, UnreadableAnswer> {
        let idempotency = Idempotency::default();
        idempotency.absorb(values, now)?;
        Ok(idempotency)
    }

    /// Answers kept (and requests in flight), all owners together.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().expect("idempotency map").by_key.len())
            .sum()
    }

    /// Takes in stored answers (at start-up, or from a stream this node has just taken over).
    pub fn absorb(
        &self,
        values: &[(String, Vec<u8>)],
        now: Timestamp,
    ) -> Result<(), UnreadableAnswer> {
        for (key, bytes) in values.iter().filter(|(k, _)| k.starts_with(KEY_PREFIX)) {
            let owner = Owner::of_storage_key(key).ok_or_else(|| UnreadableAnswer(key.clone()))?;
            let mut slots = self.shards[shard_of(&owner)]
                .lock()
                .expect("idempotency map");
            let (fingerprint, answer) =
                StoredAnswer::decode(bytes).ok_or_else(|| UnreadableAnswer(key.clone()))?;
            if answer.expired(now) {
                slots.remove(key, &owner);
                continue;
            }
            let done = Slot::Done {
                fingerprint,
                answer,
            };
            slots.insert(key.clone(), &owner, done);
        }
        Ok(())
    }

    /// Starts a request under `owner`'s `key`: a replay of the stored answer, a refusal (the
    /// key is in use, or was used for another request), or a fresh run.
    pub fn begin(
        &self,
        owner: Owner,
        key: &str,
        fingerprint: &str,
        now: Timestamp,
    ) -> Result<Begin, ApiError> {
        let key = owner.storage_key(key);
        let mut slots = self.shards[shard_of(&owner)]
            .lock()
            .expect("idempotency map");
        match slots.by_key.get(&key) {
            Some(Slot::Done { answer, .. }) if answer.expired(now) => slots.remove(&key, &owner),
            Some(slot) if !same(slot, fingerprint) => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was already used for a different request",
                ));
            }
            Some(Slot::Done { answer, .. }) => return Ok(Begin::Replay(answer.clone())),
            Some(Slot::InFlight { .. }) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_in_progress",
                    "a request with this Idempotency-Key is still being processed; retry shortly",
                ));
            }
            None => {}
        }
        // A key not seen before (or whose answer has expired).
        let sweep_due = slots
            .swept_for_full_owner_at
            .is_none_or(|at| at.plus_millis(FULL_OWNER_SWEEP_EVERY_MILLIS) <= now);
        if slots.is_full(&owner) && sweep_due {
            slots.sweep(now);
            slots.swept_for_full_owner_at = Some(now);
        }
        if slots.is_full(&owner) {
            return Err(ApiError {
                retry_after_s: Some(3600),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_idempotency_keys",
                    format!(
                        "at most {KEYS_PER_OWNER_MAX} Idempotency-Keys are kept per caller \
                             for a day; reuse a key only to retry the same request"
                    ),
                )
            });
        }
        let in_flight = Slot::InFlight {
            fingerprint: fingerprint.to_owned(),
        };
        slots.insert(key.clone(), &owner, in_flight);
        Ok(Begin::Fresh(InFlightGuard {
            shards: self.shards.clone(),
            owner,
            key,
            finished: false,
        }))
    }
}

fn same(slot: &Slot, fingerprint: &str) -> bool {
    match slot {
        Slot::InFlight { fingerprint: f } | Slot::Done { fingerprint: f, .. } => f == fingerprint,
    }
}

/// Checks an `Idempotency-Key` header value.
pub fn validate_key(raw: &str) -> Result<&str, ApiError> {
    let ok = (1..=IDEMPOTENCY_KEY_LEN_MAX).contains(&raw.len())
        && raw.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(raw)
    } else {
        Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1-255 visible ASCII characters",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::ANSWER_LIFETIME_MILLIS;

    #[test]
    fn each_owner_keeps_a_bounded_number_of_keys_and_expired_ones_free_room() {
        let index = Idempotency::default();
        let alice = Owner::Customer("alice".into());
        let now = Timestamp(1_000);
        for n in 0..KEYS_PER_OWNER_MAX {
            let Ok(Begin::Fresh(guard)) = index.begin(alice.clone(), &format!("k{n}"), "f", now)
            else {
                panic!("key {n} refused")
            };
            let answer = StoredAnswer {
                stored_at: now,
                ..StoredAnswer::json(200, &"ok")
            };
            guard.finish("f".into(), answer);
        }
        let refused = index
            .begin(alice.clone(), "one-more", "f", now)
            .err()
            .unwrap();
        assert_eq!(refused.code, "too_many_idempotency_keys");
        let bob = Owner::Customer("bob".into());
        assert!(matches!(
            index.begin(bob, "k0", "f", now),
            Ok(Begin::Fresh(_))
        ));
        let day_later = now.plus_millis(ANSWER_LIFETIME_MILLIS);
        assert!(matches!(
            index.begin(alice, "one-more", "f", day_later),
            Ok(Begin::Fresh(_))
        ));
    }

    #[test]
    fn owners_keys_never_meet() {
        let customer = Owner::Customer("till/x".into());
        let till = Owner::Terminal("x".into());
        assert_ne!(customer.storage_key("k"), till.storage_key("k"));
        for owner in [customer, till] {
            assert_eq!(
                Owner::of_storage_key(&owner.storage_key("a/b")),
                Some(owner)
            );
        }
    }
}
