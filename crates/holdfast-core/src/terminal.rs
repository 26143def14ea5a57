//! The terminal sync protocol, server side, without I/O.
//!
//! A terminal keeps a journal of entries numbered 1, 2, 3, … Each entry carries the hash of the
//! one before it, so the journal is a hash chain: a gap, a fork (two different entries with the
//! same number) or an edit of an acknowledged entry cannot go unnoticed. The server remembers,
//! per terminal, only how far it has applied and the hash there (`Progress`). Entries at or
//! below that point are duplicates of a retry and are skipped; the next ones must continue the
//! chain exactly.
//!
//! An entry the server cannot apply for a reason that will never change (say, selling more
//! allotted units than the terminal held) still advances the chain — it happened at the counter
//! — but is *quarantined*: recorded with its reason for a person to settle, never blocking the
//! entries behind it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The hash of a journal entry, chaining it to the one before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The hash "before" entry 1.
    pub const GENESIS: ChainHash = ChainHash([0; 32]);

    pub fn of(prev: &ChainHash, seq: u64, body: &[u8]) -> ChainHash {
        let digest = Sha256::new()
            .chain_update(b"holdfast journal v1\0")
            .chain_update(prev.0)
            .chain_update(seq.to_le_bytes())
            .chain_update(body)
            .finalize();
        ChainHash(digest.into())
    }

    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(hex: &str) -> Option<ChainHash> {
        if hex.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ChainHash(bytes))
    }
}

/// One journal entry as it arrives: its number, the hash it claims to follow, and its body
/// exactly as the terminal wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    pub seq: u64,
    pub prev: ChainHash,
    pub body: Vec<u8>,
}

impl JournalEntry {
    pub fn hash(&self) -> ChainHash {
        ChainHash::of(&self.prev, self.seq, &self.body)
    }
}

/// How far the server has applied one terminal's journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub applied_through: u64,
    pub head: ChainHash,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            applied_through: 0,
            head: ChainHash::GENESIS,
        }
    }
}

/// Why a batch stopped short. Entries before the problem are still accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("entry {expected} is missing: the batch jumps to {got}")]
    Gap { expected: u64, got: u64 },
    #[error("entry {seq} does not follow the entry before it (a fork or an edit)")]
    Fork { seq: u64 },
    #[error("entries are out of order at {seq}")]
    OutOfOrder { seq: u64 },
}

/// The outcome of offering a batch of entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Indexes (into the offered batch) of the entries to apply now, in order.
    pub new: Vec<usize>,
    /// Progress once those are applied.
    pub progress: Progress,
    /// Where the batch stopped short, if it did.
    pub stopped: Option<ChainBreak>,
}

impl Progress {
    /// Decides which entries of `batch` are new and continue the chain. Duplicates of what was
    /// already applied are skipped (a retry), except the last applied one, which must match
    /// the head hash exactly (otherwise the terminal forked).
    pub fn accept(&self, batch: &[JournalEntry]) -> Accepted {
        let mut progress = *self;
        let mut new = Vec::new();
        let mut last_seq = 0;
        for (index, entry) in batch.iter().enumerate() {
            let stop = |stopped| Accepted {
                new: new.clone(),
                progress,
                stopped: Some(stopped),
            };
            if entry.seq <= last_seq {
                return stop(ChainBreak::OutOfOrder { seq: entry.seq });
            }
            last_seq = entry.seq;
            if entry.seq < progress.applied_through {
                continue;
            }
            if entry.seq == progress.applied_through {
                if entry.seq > 0 && entry.hash() != progress.head {
                    return stop(ChainBreak::Fork { seq: entry.seq });
                }
                continue;
            }
            if entry.seq != progress.applied_through + 1 {
                return stop(ChainBreak::Gap {
                    expected: progress.applied_through + 1,
                    got: entry.seq,
                });
            }
            if entry.prev != progress.head {
                return stop(ChainBreak::Fork { seq: entry.seq });
            }
            progress = Progress {
                applied_through: entry.seq,
                head: entry.hash(),
            };
            new.push(index);
        }
        Accepted {
            new,
            progress,
            stopped: None,
        }
    }
}

/// Builds the journal a terminal would write, for tests and the agent.
pub fn chain(bodies: &[&[u8]]) -> Vec<JournalEntry> {
    let mut prev = ChainHash::GENESIS;
    bodies
        .iter()
        .zip(1u64..)
        .map(|(body, seq)| {
            let entry = JournalEntry {
                seq,
                prev,
                body: body.to_vec(),
            };
            prev = entry.hash();
            entry
        })
        .collect()
}

/// Request authentication: every call a terminal makes is signed with its own secret over what
/// it asks (method, path, body) and when (`signed_at`, a fresh `nonce`), so a captured request
/// can neither be altered nor replayed later. The server and the till agent both build the
/// signing input here, so the two sides cannot drift apart.
pub mod auth {
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
        decode_hex(receipt_hex)
            .is_some_and(|r| receipt_mac(secret, progress).verify_slice(&r).is_ok())
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
}
