//! The waiting room: who is in line, in what order, and how far the line has been admitted.
//!
//! A shopper joins once (any identity key already in line returns the same entry). In `fifo`
//! the position is the arrival order. In `lottery`, everyone who joined before the opening is
//! ranked at the opening instant by `sha256(seed ‖ entry id)`; the seed's hash is published when
//! the sale is created and the seed when it opens, so anyone can recompute the draw. Later
//! arrivals queue behind the drawn entrants in arrival order.
//!
//! Admission hands out *passes* by position. A pass is good for one hold and expires after
//! `pass_ttl`. The line advances at the sale's admission rate, and never so far that the passes
//! still outstanding exceed the units available: an admitted shopper finds stock at checkout.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::person::IdentityKey;
use crate::time::Timestamp;

/// Places one waiting room holds at most.
pub const ENTRIES_MAX: u32 = 10_000_000;

/// A pseudonymous, stable name for a place in line: published in the lottery's entrant list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EntryId(pub [u8; 8]);

impl EntryId {
    pub fn of(sale_id: &str, key: &IdentityKey) -> EntryId {
        let digest = Sha256::new()
            .chain_update(b"holdfast entry\0")
            .chain_update(sale_id.as_bytes())
            .chain_update([0])
            .chain_update(identity_bytes(key))
            .finalize();
        EntryId(digest[..8].try_into().expect("a digest has 8 bytes"))
    }

    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(hex: &str) -> Option<EntryId> {
        if hex.len() != 16 {
            return None;
        }
        let mut bytes = [0u8; 8];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(EntryId(bytes))
    }
}

fn identity_bytes(key: &IdentityKey) -> Vec<u8> {
    let (tag, value) = match key {
        IdentityKey::Account(v) => (b'c', v),
        IdentityKey::Phone(v) => (b'p', v),
        IdentityKey::Address(v) => (b'a', v),
    };
    let mut bytes = vec![tag, b':'];
    bytes.extend_from_slice(value.as_bytes());
    bytes
}

/// A stable 64-bit digest of an identity key, for the join dedupe index (stable across
/// restarts, unlike `std`'s randomised hasher).
pub fn key_digest(key: &IdentityKey) -> u64 {
    let digest = Sha256::digest(identity_bytes(key));
    u64::from_le_bytes(digest[..8].try_into().expect("a digest has 8 bytes"))
}

/// The published commitment to a lottery seed.
pub fn seed_commitment(seed: &[u8; 32]) -> String {
    Sha256::digest(seed)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The lottery: the 0-based rank of each entrant, entrants given in join order.
pub fn draw(seed: &[u8; 32], entrants: &[EntryId]) -> Vec<u32> {
    let score = |entry: &EntryId| {
        Sha256::new()
            .chain_update(seed)
            .chain_update(entry.0)
            .finalize()
    };
    let mut order: Vec<(_, u32)> = entrants
        .iter()
        .zip(0u32..)
        .map(|(e, i)| (score(e), i))
        .collect();
    order.sort();
    let mut ranks = vec![0u32; entrants.len()];
    for (rank, (_, index)) in order.into_iter().enumerate() {
        ranks[index as usize] = rank as u32;
    }
    ranks
}

/// Where a ticket's holder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Lottery before the draw: in line, position not known yet.
    AwaitingDraw,
    Waiting {
        position: u32,
    },
    Admitted {
        position: u32,
        pass_expires_at: Timestamp,
    },
    /// Admitted, but the pass was used or ran out.
    PassSpent {
        position: u32,
    },
}

/// What a poll needs to know about the line, cheap to copy after every batch: the draw's ranks
/// are shared, and only admission batches whose passes are still good are listed.
#[derive(Clone, Debug, Default)]
pub struct QueueView {
    pub lottery: bool,
    pub entries: u32,
    pub drawn: Option<u32>,
    pub ranks: Arc<Vec<u32>>,
    pub admitted_through: u32,
    pub expired_through: u32,
    pub outstanding: u32,
    pub admissions: Vec<(u32, Timestamp)>,
    pub pass_ttl_millis: u64,
}

impl QueueView {
    /// Where the holder of entry `index` stands.
    pub fn standing(&self, index: u32) -> Standing {
        let position = match (self.lottery, self.drawn) {
            (_, _) if index >= self.entries => return Standing::AwaitingDraw,
            (false, _) => index + 1,
            (true, None) => return Standing::AwaitingDraw,
            (true, Some(drawn)) if index < drawn => self.ranks[index as usize] + 1,
            (true, Some(_)) => index + 1,
        };
        if position > self.admitted_through {
            return Standing::Waiting { position };
        }
        match self
            .admissions
            .iter()
            .find(|(through, _)| position <= *through)
        {
            Some((_, at)) if position > self.expired_through => Standing::Admitted {
                position,
                pass_expires_at: at.plus_millis(self.pass_ttl_millis),
            },
            _ => Standing::PassSpent { position },
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Queue {
    entries: Vec<EntryId>,
    by_key: HashMap<u64, u32>,
    /// Lottery only: how many entrants the draw ranked (those who joined before opening).
    drawn: Option<u32>,
    ranks: Arc<Vec<u32>>,
    admitted_through: u32,
    /// Admission batches not yet expired: (last position admitted, when).
    admissions: VecDeque<(u32, Timestamp)>,
    admit_clock: Option<Timestamp>,
    expired_through: u32,
    redeemed: Vec<u64>,
    redeemed_count: u32,
    expired_unused: u32,
}

/// The queue's records without derived indexes, for snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    entries: Vec<EntryId>,
    keys: Vec<(u64, u32)>,
    drawn: Option<u32>,
    admitted_through: u32,
    admissions: Vec<(u32, Timestamp)>,
    admit_clock: Option<Timestamp>,
    expired_through: u32,
    redeemed: Vec<u64>,
}

impl Queue {
    pub fn entries(&self) -> &[EntryId] {
        &self.entries
    }
    pub fn drawn(&self) -> Option<u32> {
        self.drawn
    }
    pub fn ranks(&self) -> Arc<Vec<u32>> {
        self.ranks.clone()
    }
    pub fn admitted_through(&self) -> u32 {
        self.admitted_through
    }
    pub fn expired_through(&self) -> u32 {
        self.expired_through
    }
    pub fn admit_clock(&self) -> Option<Timestamp> {
        self.admit_clock
    }
    pub fn redeemed_count(&self) -> u32 {
        self.redeemed_count
    }
    /// Passes handed out and neither used nor expired: each may still turn into a hold.
    pub fn outstanding(&self) -> u32 {
        self.admitted_through - self.redeemed_count - self.expired_unused
    }
    /// People in line who have not been admitted yet.
    pub fn waiting(&self) -> u32 {
        (self.entries.len() as u32).saturating_sub(self.admitted_through)
    }
    pub fn is_redeemed(&self, position: u32) -> bool {
        let bit = position as usize;
        self.redeemed
            .get(bit / 64)
            .is_some_and(|w| w & (1 << (bit % 64)) != 0)
    }

    /// The entry any of these identity keys already holds.
    pub fn find(&self, keys: &[u64]) -> Option<u32> {
        keys.iter().find_map(|k| self.by_key.get(k).copied())
    }

    pub(crate) fn apply_joined(&mut self, entry: EntryId, keys: &[u64]) {
        let index = self.entries.len() as u32;
        self.entries.push(entry);
        for key in keys {
            self.by_key.entry(*key).or_insert(index);
        }
    }

    pub(crate) fn apply_drawn(&mut self, entrants: u32, seed: &[u8; 32]) {
        assert!(self.drawn.is_none(), "the lottery is drawn once");
        assert!(entrants as usize <= self.entries.len());
        self.ranks = Arc::new(draw(seed, &self.entries[..entrants as usize]));
        self.drawn = Some(entrants);
    }

    pub(crate) fn apply_admitted(&mut self, through: u32, at: Timestamp) {
        assert!(
            through > self.admitted_through,
            "admission only moves forward"
        );
        self.admitted_through = through;
        self.admissions.push_back((through, at));
        self.admit_clock = Some(at);
    }

    pub(crate) fn apply_passes_expired(&mut self, through: u32) {
        assert!(through > self.expired_through && through <= self.admitted_through);
        for position in self.expired_through + 1..=through {
            if !self.is_redeemed(position) {
                self.expired_unused += 1;
            }
        }
        self.expired_through = through;
        while self.admissions.front().is_some_and(|(t, _)| *t <= through) {
            self.admissions.pop_front();
        }
    }

    pub(crate) fn apply_redeemed(&mut self, position: u32) {
        assert!(!self.is_redeemed(position), "a pass is used once");
        let bit = position as usize;
        if self.redeemed.len() <= bit / 64 {
            self.redeemed.resize(bit / 64 + 1, 0);
        }
        self.redeemed[bit / 64] |= 1 << (bit % 64);
        self.redeemed_count += 1;
    }

    /// The oldest admission batch whose passes have run out by `now`.
    pub(crate) fn next_expiry(&self, now: Timestamp, pass_ttl_millis: u64) -> Option<u32> {
        self.admissions
            .iter()
            .take_while(|(_, at)| at.plus_millis(pass_ttl_millis) <= now)
            .last()
            .map(|(through, _)| *through)
    }

    pub fn snapshot(&self) -> QueueSnapshot {
        let mut keys: Vec<(u64, u32)> = self.by_key.iter().map(|(k, v)| (*k, *v)).collect();
        keys.sort();
        QueueSnapshot {
            entries: self.entries.clone(),
            keys,
            drawn: self.drawn,
            admitted_through: self.admitted_through,
            admissions: self.admissions.iter().copied().collect(),
            admit_clock: self.admit_clock,
            expired_through: self.expired_through,
            redeemed: self.redeemed.clone(),
        }
    }

    pub fn restore(snapshot: QueueSnapshot, seed: Option<&[u8; 32]>) -> Queue {
        let mut queue = Queue {
            by_key: snapshot.keys.into_iter().collect(),
            drawn: snapshot.drawn,
            admitted_through: snapshot.admitted_through,
            admissions: snapshot.admissions.into_iter().collect(),
            admit_clock: snapshot.admit_clock,
            expired_through: snapshot.expired_through,
            redeemed: snapshot.redeemed,
            entries: snapshot.entries,
            ..Queue::default()
        };
        if let (Some(drawn), Some(seed)) = (queue.drawn, seed) {
            queue.ranks = Arc::new(draw(seed, &queue.entries[..drawn as usize]));
        }
        queue.redeemed_count = queue.redeemed.iter().map(|w| w.count_ones()).sum();
        queue.expired_unused = (1..=queue.expired_through)
            .filter(|&p| !queue.is_redeemed(p))
            .count() as u32;
        queue
    }

    pub fn view(&self, lottery: bool, pass_ttl_millis: u64) -> QueueView {
        QueueView {
            lottery,
            entries: self.entries.len() as u32,
            drawn: self.drawn,
            ranks: self.ranks.clone(),
            admitted_through: self.admitted_through,
            expired_through: self.expired_through,
            outstanding: self.outstanding(),
            admissions: self.admissions.iter().copied().collect(),
            pass_ttl_millis,
        }
    }

    /// Checks the counters against the records.
    pub fn check(&self) -> Result<(), String> {
        let redeemed: u32 = self.redeemed.iter().map(|w| w.count_ones()).sum();
        if redeemed != self.redeemed_count {
            return Err(format!(
                "redeemed count {} but {redeemed} bits set",
                self.redeemed_count
            ));
        }
        if self.redeemed_count + self.expired_unused > self.admitted_through {
            return Err("more passes used or expired than were admitted".into());
        }
        let beyond = self.admitted_through as usize + 1..self.redeemed.len() * 64;
        if beyond.into_iter().any(|p| self.is_redeemed(p as u32)) || self.is_redeemed(0) {
            return Err("a pass outside the admitted line was used".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_draw_is_a_permutation_fixed_by_the_seed() {
        let entrants: Vec<EntryId> = (0..50)
            .map(|n| EntryId::of("s", &IdentityKey::Account(format!("c{n}"))))
            .collect();
        let ranks = draw(&[7; 32], &entrants);
        let mut sorted = ranks.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<u32>>());
        assert_eq!(draw(&[7; 32], &entrants), ranks, "same seed, same draw");
        assert_ne!(
            draw(&[8; 32], &entrants),
            ranks,
            "another seed, another draw"
        );
    }

    #[test]
    fn entry_ids_round_trip_through_hex() {
        let id = EntryId::of("s", &IdentityKey::Phone("01012345678".into()));
        assert_eq!(EntryId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(EntryId::from_hex("zz"), None);
    }
}
