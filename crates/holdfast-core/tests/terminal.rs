//! The terminal sync protocol: exactly once, in order, whatever the network does.

mod common;

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
    #![proptest_config(common::cases(200, 2000))]

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

mod request_auth {
    use holdfast_core::Timestamp;
    use holdfast_core::terminal::auth::{
        Authorization, NONCES_PER_TERMINAL_MAX, Refused, ReplayGuard, SIGNATURE_WINDOW_MILLIS,
        SignedRequest,
    };

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: Timestamp = Timestamp(1_800_000_000_000);

    fn auth(signed_at: Timestamp, nonce: &str, body: &[u8]) -> Authorization {
        let request = SignedRequest {
            method: "POST",
            path: "/v1/terminals/till-1/allotments",
            signed_at,
            nonce,
            body,
        };
        Authorization {
            terminal: "till-1".into(),
            signed_at,
            nonce: nonce.into(),
            signature: request.sign(SECRET),
        }
    }

    #[test]
    fn the_header_round_trips_and_a_signature_covers_every_part() {
        let signed = auth(NOW, "00112233445566778899aabbccddeeff", b"{\"quantity\":5}");
        let parsed = Authorization::parse(&signed.header_value()).unwrap();
        assert_eq!(parsed, signed);
        let check = |method, path, at, nonce, body: &[u8]| {
            SignedRequest {
                method,
                path,
                signed_at: at,
                nonce,
                body,
            }
            .verify(SECRET, &parsed.signature)
        };
        let (path, nonce) = ("/v1/terminals/till-1/allotments", parsed.nonce.as_str());
        assert!(check("POST", path, NOW, nonce, b"{\"quantity\":5}"));
        assert!(!check("GET", path, NOW, nonce, b"{\"quantity\":5}"));
        assert!(!check(
            "POST",
            "/v1/terminals/till-2/allotments",
            NOW,
            nonce,
            b"{\"quantity\":5}"
        ));
        assert!(!check(
            "POST",
            path,
            Timestamp(NOW.0 + 1),
            nonce,
            b"{\"quantity\":5}"
        ));
        assert!(!check(
            "POST",
            path,
            NOW,
            "00112233445566778899aabbccddeefe",
            b"{\"quantity\":5}"
        ));
        assert!(!check("POST", path, NOW, nonce, b"{\"quantity\":6}"));
    }

    #[test]
    fn malformed_headers_are_not_read() {
        let good = auth(NOW, "00112233445566778899aabbccddeeff", b"").header_value();
        for bad in [
            "Bearer x".to_owned(),
            "Terminal till-1:sig".to_owned(),
            good.replace("Terminal ", "terminal "),
            format!("{good}:extra"),
            good.replace("00112233445566778899aabbccddeeff", "short"),
            good.replace(
                "00112233445566778899aabbccddeeff",
                "zz112233445566778899aabbccddeeff",
            ),
            good.replace(":1800000000000:", ":soon:"),
        ] {
            assert_eq!(Authorization::parse(&bad), None, "{bad}");
        }
    }

    #[test]
    fn a_request_is_accepted_once_and_only_near_the_servers_time() {
        let mut guard = ReplayGuard::new(Timestamp(NOW.0 - 60_000));
        let fresh = auth(NOW, "00000000000000000000000000000001", b"");
        assert_eq!(guard.admit(&fresh, NOW), Ok(()));
        assert_eq!(
            guard.admit(&fresh, Timestamp(NOW.0 + 1_000)),
            Err(Refused::Replayed)
        );
        let late = Timestamp(NOW.0 + SIGNATURE_WINDOW_MILLIS + 1);
        assert_eq!(guard.admit(&fresh, late), Err(Refused::OutsideWindow));
        let early = auth(
            Timestamp(NOW.0 + SIGNATURE_WINDOW_MILLIS + 1),
            "00000000000000000000000000000002",
            b"",
        );
        assert_eq!(guard.admit(&early, NOW), Err(Refused::OutsideWindow));
        let before_start = auth(
            Timestamp(NOW.0 - 61_000),
            "00000000000000000000000000000003",
            b"",
        );
        assert_eq!(
            guard.admit(&before_start, NOW),
            Err(Refused::SignedBeforeStart)
        );
    }

    #[test]
    fn remembered_nonces_are_bounded_and_age_out() {
        let mut guard = ReplayGuard::new(NOW);
        for n in 0..NONCES_PER_TERMINAL_MAX {
            let at = Timestamp(NOW.0 + (n as i64 % 1_000));
            guard
                .admit(&auth(at, &format!("{n:032x}"), b""), at)
                .unwrap();
        }
        let one_more = auth(NOW, &format!("{:032x}", u64::MAX), b"");
        assert_eq!(
            guard.admit(&one_more, Timestamp(NOW.0 + 999)),
            Err(Refused::TooMany)
        );
        let later = Timestamp(NOW.0 + SIGNATURE_WINDOW_MILLIS + 1_000);
        let fresh = auth(later, &format!("{:032x}", u64::MAX), b"");
        assert_eq!(
            guard.admit(&fresh, later),
            Ok(()),
            "old nonces were forgotten"
        );
    }
}
