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

pub mod auth;
pub mod entry;
pub mod wire;

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
