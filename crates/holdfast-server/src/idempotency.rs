//! Idempotency keys: a repeated request with the same key (per customer) gets the first answer
//! and changes nothing. The answer is made durable in the same write as the command's events,
//! so it survives a restart; this map is the in-memory index of those answers, plus a marker
//! for requests still in flight so two concurrent copies cannot both run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

const KEY_PREFIX: &str = "idem/";
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;

/// An HTTP answer as stored for replay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredAnswer {
    pub status: u16,
    pub body: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct StoredEntry {
    fingerprint: String,
    answer: StoredAnswer,
}

impl StoredAnswer {
    pub fn encode(&self, fingerprint: &str) -> Vec<u8> {
        let entry = StoredEntry {
            fingerprint: fingerprint.to_owned(),
            answer: self.clone(),
        };
        serde_json::to_vec(&entry).expect("answers serialise")
    }
}

impl IntoResponse for StoredAnswer {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.body)).into_response()
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
}

pub enum Begin {
    /// First time: run the request, then call `finish` (or drop the guard to forget it).
    Fresh(InFlightGuard),
    Replay(StoredAnswer),
}

/// Removes the in-flight marker unless the request finished with a stored answer.
pub struct InFlightGuard {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    key: String,
    finished: bool,
}

impl InFlightGuard {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn finish(mut self, fingerprint: String, answer: StoredAnswer) {
        let mut slots = self.slots.lock().expect("idempotency map");
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
    /// Rebuilds the index from the values recovered from the log.
    pub fn recover(values: &[(String, Vec<u8>)]) -> Result<Idempotency, serde_json::Error> {
        let mut slots = HashMap::new();
        for (key, bytes) in values.iter().filter(|(k, _)| k.starts_with(KEY_PREFIX)) {
            let entry: StoredEntry = serde_json::from_slice(bytes)?;
            slots.insert(
                key.clone(),
                Slot::Done {
                    fingerprint: entry.fingerprint,
                    answer: entry.answer,
                },
            );
        }
        Ok(Idempotency {
            slots: Arc::new(Mutex::new(slots)),
        })
    }

    pub fn begin(&self, key: String, fingerprint: &str) -> Result<Begin, ApiError> {
        let mut slots = self.slots.lock().expect("idempotency map");
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
