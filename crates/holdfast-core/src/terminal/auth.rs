//! Request authentication: every call a terminal makes is signed with its own secret over what
//! it asks (method, path, body) and when (`signed_at`, a fresh `nonce`), so a captured request
//! can neither be altered nor replayed later. The server and the till agent both build the
//! signing input here, so the two sides cannot drift apart.

use std::collections::BTreeSet;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

use super::Progress;
use crate::time::Timestamp;

type HmacSha256 = Hmac<Sha256>;

/// How far a request's signing time may lie from the server's clock, either way.
pub const SIGNATURE_WINDOW_MILLIS: i64 = 5 * 60_000;
/// Requests one terminal may sign within one window; more are refused until older ones age
/// out. Bounds the memory that remembering nonces takes.
pub const NONCES_PER_TERMINAL_MAX: usize = 8_192;
const NONCE_HEX_LEN_RANGE: std::ops::RangeInclusive<usize> = 16..=64;
const SCHEME: &str = "Terminal ";

/// What a terminal signs for one request.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub signed_at: Timestamp,
    pub nonce: &'a str,
    pub body: &'a [u8],
}

impl SignedRequest<'_> {
    fn mac(&self, secret: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
        let head = format!(
            "holdfast terminal v2\n{}\n{}\n{}\n{}\n",
            self.method, self.path, self.signed_at.0, self.nonce
        );
        mac.update(head.as_bytes());
        mac.update(self.body);
        mac
    }

    pub fn sign(&self, secret: &[u8]) -> String {
        hex_string(&self.mac(secret).finalize().into_bytes())
    }

    /// Checks a hex signature in constant time.
    pub fn verify(&self, secret: &[u8], signature_hex: &str) -> bool {
        decode_hex(signature_hex).is_some_and(|s| self.mac(secret).verify_slice(&s).is_ok())
    }
}

/// `Authorization: Terminal <id>:<signed_at ms>:<nonce hex>:<signature hex>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    pub terminal: String,
    pub signed_at: Timestamp,
    pub nonce: String,
    pub signature: String,
}

impl Authorization {
    /// Signs `request` as `terminal`.
    pub fn sign(terminal: &str, secret: &[u8], request: &SignedRequest) -> Authorization {
        Authorization {
            terminal: terminal.to_owned(),
            signed_at: request.signed_at,
            nonce: request.nonce.to_owned(),
            signature: request.sign(secret),
        }
    }

    pub fn header_value(&self) -> String {
        format!(
            "{SCHEME}{}:{}:{}:{}",
            self.terminal, self.signed_at.0, self.nonce, self.signature
        )
    }

    /// Reads the header, checking only its shape.
    pub fn parse(value: &str) -> Option<Authorization> {
        let mut fields = value.strip_prefix(SCHEME)?.split(':');
        let (terminal, signed_at, nonce, signature) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        let well_formed = fields.next().is_none()
            && !terminal.is_empty()
            && NONCE_HEX_LEN_RANGE.contains(&nonce.len())
            && nonce.bytes().all(|b| b.is_ascii_hexdigit())
            && signature.len() == 64;
        if !well_formed {
            return None;
        }
        Some(Authorization {
            terminal: terminal.to_owned(),
            signed_at: Timestamp(signed_at.parse().ok()?),
            nonce: nonce.to_owned(),
            signature: signature.to_owned(),
        })
    }
}

/// The server's signed acknowledgement of a sync, which the till checks before trusting it.
pub fn receipt(secret: &[u8], progress: &Progress) -> String {
    hex_string(&receipt_mac(secret, progress).finalize().into_bytes())
}

pub fn receipt_verifies(secret: &[u8], progress: &Progress, receipt_hex: &str) -> bool {
    decode_hex(receipt_hex).is_some_and(|r| receipt_mac(secret, progress).verify_slice(&r).is_ok())
}

fn receipt_mac(secret: &[u8], progress: &Progress) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    let text = format!(
        "acked {} {}",
        progress.applied_through,
        progress.head.to_hex()
    );
    mac.update(text.as_bytes());
    mac
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Why a correctly signed request is still refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum Refused {
    #[error("the request was signed too far from the server's time; sign it again now")]
    OutsideWindow,
    #[error("the request was signed before the server started; sign it again now")]
    SignedBeforeStart,
    #[error("this request was already received once (its nonce was used)")]
    Replayed,
    #[error("too many requests from this terminal in a short time")]
    TooMany,
}

/// One terminal's recently used nonces. A request is accepted once, within the window
/// around the server's clock; nonces older than the window are forgotten, since their
/// requests would be refused by time anyway. Nonces live in memory, so a request signed
/// before the server started is refused: its nonce may have been used before a restart.
#[derive(Debug)]
pub struct ReplayGuard {
    started_at: Timestamp,
    seen: BTreeSet<(Timestamp, String)>,
}

impl ReplayGuard {
    pub fn new(started_at: Timestamp) -> ReplayGuard {
        ReplayGuard {
            started_at,
            seen: BTreeSet::new(),
        }
    }

    /// The cheap test, before the body is read or the signature checked.
    pub fn check_time(&self, signed_at: Timestamp, now: Timestamp) -> Result<(), Refused> {
        if signed_at.0.abs_diff(now.0) > SIGNATURE_WINDOW_MILLIS.unsigned_abs() {
            return Err(Refused::OutsideWindow);
        }
        if signed_at < self.started_at {
            return Err(Refused::SignedBeforeStart);
        }
        Ok(())
    }

    /// Records a verified request's nonce; refuses one seen before.
    pub fn admit(&mut self, auth: &Authorization, now: Timestamp) -> Result<(), Refused> {
        self.check_time(auth.signed_at, now)?;
        let horizon = Timestamp(now.0.saturating_sub(SIGNATURE_WINDOW_MILLIS));
        while self.seen.first().is_some_and(|(at, _)| *at < horizon) {
            self.seen.pop_first();
        }
        // The signature covers both, so a replay repeats the pair exactly.
        let key = (auth.signed_at, auth.nonce.clone());
        if self.seen.contains(&key) {
            return Err(Refused::Replayed);
        }
        if self.seen.len() >= NONCES_PER_TERMINAL_MAX {
            return Err(Refused::TooMany);
        }
        self.seen.insert(key);
        Ok(())
    }
}
