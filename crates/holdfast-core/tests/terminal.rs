//! The terminal sync protocol: exactly once, in order, whatever the network does.

use holdfast_core::terminal::{ChainBreak, ChainHash, JournalEntry, Progress, chain};
use proptest::prelude::*;

fn journal(n: usize) -> Vec<JournalEntry> {
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("{{\"sale\":{i}}}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = bodies.iter().map(|b| b.as_slice()).collect();
    chain(&refs)
}

/// What a delivery attempt sends: from which entry, how many.
#[derive(Clone, Debug)]
enum Send {
    /// Resume from the server's acknowledgement, like the agent does.
    Resume(usize),
    /// Resend from an arbitrary earlier point (a retry after a lost answer).
    From(usize, usize),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn every_entry_is_applied_exactly_once_and_in_order(
        n in 1..40usize,
        sends in prop::collection::vec(
            prop_oneof![
                (1..8usize).prop_map(Send::Resume),
                (0..40usize, 1..8usize).prop_map(|(f, l)| Send::From(f, l)),
            ],
            0..30,
        ),
        answers_lost in prop::collection::vec(any::<bool>(), 30),
    ) {
        let journal = journal(n);
        let mut server = Progress::default();
        let mut applied: Vec<u64> = Vec::new();
        // What the terminal believes the server acknowledged (lost answers leave it behind).
        let mut acked = 0u64;
        for (i, send) in sends.iter().enumerate() {
            let (from, len) = match send {
                Send::Resume(len) => (acked as usize, *len),
                Send::From(from, len) => (*from % n, *len),
            };
            let batch: Vec<JournalEntry> = journal[from..(from + len).min(n)].to_vec();
            let accepted = server.accept(&batch);
            for index in &accepted.new {
                applied.push(batch[*index].seq);
            }
            server = accepted.progress;
            if !answers_lost[i] {
                acked = server.applied_through;
            }
        }
        // Finally the terminal catches up from its last acknowledgement.
        let accepted = server.accept(&journal[acked as usize..]);
        for index in &accepted.new {
            applied.push(journal[acked as usize + index].seq);
        }
        prop_assert_eq!(accepted.stopped, None);
        prop_assert_eq!(applied, (1..=n as u64).collect::<Vec<_>>());
        prop_assert_eq!(accepted.progress.head, journal[n - 1].hash());
    }
}

#[test]
fn a_gap_stops_the_batch_after_the_entries_before_it() {
    let journal = journal(5);
    let batch = vec![journal[0].clone(), journal[1].clone(), journal[3].clone()];
    let accepted = Progress::default().accept(&batch);
    assert_eq!(accepted.new, [0, 1]);
    assert_eq!(accepted.progress.applied_through, 2);
    assert_eq!(
        accepted.stopped,
        Some(ChainBreak::Gap {
            expected: 3,
            got: 4
        })
    );
}

#[test]
fn an_edited_or_forked_entry_is_caught() {
    let journal = journal(3);
    let server = Progress::default().accept(&journal).progress;
    // The terminal rewrites entry 3 after it was acknowledged.
    let mut edited = journal[2].clone();
    edited.body = b"{\"sale\":999}".to_vec();
    assert_eq!(
        server.accept(&[edited]).stopped,
        Some(ChainBreak::Fork { seq: 3 })
    );
    // A different entry 4 that does not follow the real entry 3.
    let fork = JournalEntry {
        seq: 4,
        prev: ChainHash::GENESIS,
        body: b"{}".to_vec(),
    };
    assert_eq!(
        server.accept(&[fork]).stopped,
        Some(ChainBreak::Fork { seq: 4 })
    );
}

#[test]
fn hashes_round_trip_through_hex() {
    let hash = journal(1)[0].hash();
    assert_eq!(ChainHash::from_hex(&hash.to_hex()), Some(hash));
    assert_eq!(ChainHash::from_hex("00"), None);
}
