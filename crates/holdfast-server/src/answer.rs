//! An HTTP answer as stored for replay under an idempotency key (see `idempotency.rs`): made by
//! the sale's actor in the same durable write as the command's effects.

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use holdfast_core::Timestamp;
use serde::Serialize;

/// How long a stored answer replays; after that the key is fresh again. Acquirers keep their
/// idempotency keys for a day; so do we.
pub const ANSWER_LIFETIME_MILLIS: u64 = 24 * 3_600_000;

/// An HTTP answer as stored for replay: the status, the exact JSON bytes sent, and when.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredAnswer {
    pub status: u16,
    pub body: Bytes,
    /// Set by the sale's actor when the answer is made durable.
    pub stored_at: Timestamp,
}

impl StoredAnswer {
    pub fn expired(&self, now: Timestamp) -> bool {
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

    pub fn decode(bytes: &[u8]) -> Option<(String, StoredAnswer)> {
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
