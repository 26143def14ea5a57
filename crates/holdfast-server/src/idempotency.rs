//! Idempotency keys: a repeated request with the same key (per customer) gets the first answer
//! and changes nothing. The answer is made durable in the same write as the command's events,
//! so it survives a restart; this map is the in-memory index of those answers, plus a marker
//! for requests still in flight so two concurrent copies cannot both run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use holdfast_core::Timestamp;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

const KEY_PREFIX: &str = "idem/";
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;

/// How long a stored answer replays; after that the key is fresh again. Acquirers keep their
/// idempotency keys for a day; so do we.
pub const ANSWER_LIFETIME_MILLIS: u64 = 24 * 3_600_000;
/// Stored answers between two sweeps of expired ones.
const PRUNE_EVERY_ANSWERS: u64 = 65_536;

/// An HTTP answer as stored for replay: the status, the exact JSON bytes sent, and when.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredAnswer {
    pub status: u16,
    pub body: Bytes,
    /// Set by the sale's actor when the answer is made durable.
    pub stored_at: Timestamp,
}

impl StoredAnswer {
    fn expired(&self, now: Timestamp) -> bool {
        self.stored_at.plus_millis(ANSWER_LIFETIME_MILLIS) <= now
    }
}

impl StoredAnswer {
    pub fn json(status: u16, body: &impl Serialize) -> StoredAnswer {
        let bytes = serde_json::to_vec(body).expect("answers serialise");
        StoredAnswer {
            status,
            body: Bytes::from(bytes),
            stored_at: Timestamp(0),
        }
    }

    /// `<fingerprint> <status> <stored at>\n<body>`: the fingerprint is hex and the others
    /// digits, so the first spaces and newline cannot be part of any.
    pub fn encode(&self, fingerprint: &str) -> Vec<u8> {
        let mut bytes =
            format!("{fingerprint} {} {}\n", self.status, self.stored_at.0).into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<(String, StoredAnswer)> {
        let newline = bytes.iter().position(|&b| b == b'\n')?;
        let head = std::str::from_utf8(&bytes[..newline]).ok()?;
        let mut fields = head.split(' ');
        let (fingerprint, status, stored_at) = (fields.next()?, fields.next()?, fields.next()?);
        let answer = StoredAnswer {
            status: status.parse().ok()?,
            body: Bytes::copy_from_slice(&bytes[newline + 1..]),
            stored_at: Timestamp(stored_at.parse().ok()?),
        };
        Some((fingerprint.to_owned(), answer))
    }
}

impl IntoResponse for StoredAnswer {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let json = HeaderValue::from_static("application/json");
        (status, [(header::CONTENT_TYPE, json)], self.body).into_response()
    }
}

/// The storage key for a customer's idempotency key. The customer id is length-prefixed so no
/// two (customer, key) pairs can produce the same string.
pub fn storage_key(customer_id: &str, key: &str) -> String {
    format!("{KEY_PREFIX}{}:{customer_id}/{key}", customer_id.len())
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

#[derive(Clone, Default)]
pub struct Idempotency {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    stored_since_prune: Arc<std::sync::atomic::AtomicU64>,
}

pub enum Begin {
    /// First time: run the request, then call `finish` (or drop the guard to forget it).
    Fresh(InFlightGuard),
    Replay(StoredAnswer),
}

/// Removes the in-flight marker unless the request finished with a stored answer.
pub struct InFlightGuard {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    stored_since_prune: Arc<std::sync::atomic::AtomicU64>,
    key: String,
    finished: bool,
}

impl InFlightGuard {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn finish(mut self, fingerprint: String, answer: StoredAnswer) {
        let now = answer.stored_at;
        let mut slots = self.slots.lock().expect("idempotency map");
        // Sweeping expired answers every so many keeps the cost per request constant and the
        // map bounded by a day's worth of keys.
        let stored = self
            .stored_since_prune
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if stored + 1 >= PRUNE_EVERY_ANSWERS {
            self.stored_since_prune
                .store(0, std::sync::atomic::Ordering::Relaxed);
            slots.retain(
                |_, slot| !matches!(slot, Slot::Done { answer, .. } if answer.expired(now)),
            );
        }
        slots.insert(
            self.key.clone(),
            Slot::Done {
                fingerprint,
                answer,
            },
        );
        self.finished = true;
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.slots
                .lock()
                .expect("idempotency map")
                .remove(&self.key);
        }
    }
}

impl Idempotency {
    /// Rebuilds the index from the values recovered from the log, leaving out expired answers.
    pub fn recover(
        values: &[(String, Vec<u8>)],
        now: Timestamp,
    ) -> Result<Idempotency, UnreadableAnswer> {
        let mut slots = HashMap::new();
        for (key, bytes) in values.iter().filter(|(k, _)| k.starts_with(KEY_PREFIX)) {
            let (fingerprint, answer) =
                StoredAnswer::decode(bytes).ok_or_else(|| UnreadableAnswer(key.clone()))?;
            if answer.expired(now) {
                slots.remove(key);
                continue;
            }
            slots.insert(
                key.clone(),
                Slot::Done {
                    fingerprint,
                    answer,
                },
            );
        }
        Ok(Idempotency {
            slots: Arc::new(Mutex::new(slots)),
            stored_since_prune: Arc::default(),
        })
    }

    pub fn begin(&self, key: String, fingerprint: &str, now: Timestamp) -> Result<Begin, ApiError> {
        let mut slots = self.slots.lock().expect("idempotency map");
        if matches!(slots.get(&key), Some(Slot::Done { answer, .. }) if answer.expired(now)) {
            slots.remove(&key);
        }
        match slots.get(&key) {
            Some(slot) if !same(slot, fingerprint) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different request",
            )),
            Some(Slot::Done { answer, .. }) => Ok(Begin::Replay(answer.clone())),
            Some(Slot::InFlight { .. }) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_in_progress",
                "a request with this Idempotency-Key is still being processed; retry shortly",
            )),
            None => {
                slots.insert(
                    key.clone(),
                    Slot::InFlight {
                        fingerprint: fingerprint.to_owned(),
                    },
                );
                Ok(Begin::Fresh(InFlightGuard {
                    slots: self.slots.clone(),
                    stored_since_prune: self.stored_since_prune.clone(),
                    key,
                    finished: false,
                }))
            }
        }
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
