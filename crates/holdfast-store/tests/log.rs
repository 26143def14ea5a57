use std::path::Path;

use holdfast_store::{
    Batch, GroupCommit, GroupCommitConfig, LogBackend, Record, Recovery, Snapshot, SqliteLog,
    SqliteSnapshots, StoreError, StoredSnapshot,
};
use holdfast_testkit::{Gate, GatedLog};
use rand::{Rng, SeedableRng};

fn record(stream: &str, payload: &str) -> Record {
    Record {
        stream: stream.into(),
        payload: payload.as_bytes().to_vec(),
    }
}

fn payloads(recovery: &Recovery) -> Vec<String> {
    recovery
        .records
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).unwrap())
        .collect()
}

#[test]
fn records_snapshots_and_values_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = SqliteLog::open(dir.path()).unwrap();
        let first = Batch {
            records: vec![record("a", "a1"), record("b", "b1")],
            ..Batch::default()
        };
        let second = Batch {
            records: vec![record("a", "a2")],
            snapshots: vec![Snapshot {
                stream: "a".into(),
                payload: b"a-state".to_vec(),
            }],
            values: vec![("idem/k".into(), b"answer".to_vec())],
            fence: None,
        };
        assert_eq!(log.commit(&[first, second]).unwrap(), vec![Ok(2), Ok(3)]);
        let third = Batch {
            records: vec![record("a", "a3")],
            values: vec![
                ("idem/k".into(), b"second answer".to_vec()),
                ("idem/other".into(), Vec::new()),
            ],
            ..Batch::default()
        };
        assert_eq!(log.commit(&[third]).unwrap(), vec![Ok(4)]);
    }
    let mut log = SqliteLog::open(dir.path()).unwrap();
    let recovery = log.recover().unwrap();
    assert_eq!(recovery.snapshots.len(), 1);
    assert_eq!(recovery.snapshots[0].through, 3);
    // Values come back in the order written: the caller keeps the last one per key.
    let values: Vec<(&str, &[u8])> = recovery
        .values
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    assert_eq!(
        values,
        [
            ("idem/k", &b"answer"[..]),
            ("idem/k", b"second answer"),
            ("idem/other", b"")
        ]
    );
    // Stream "b" has no snapshot, so the log is read from the start.
    assert_eq!(payloads(&recovery), ["a1", "b1", "a2", "a3"]);
}

#[test]
fn with_every_stream_snapshotted_recovery_starts_at_the_oldest_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SqliteLog::open(dir.path()).unwrap();
    let snap = |stream: &str| Snapshot {
        stream: stream.into(),
        payload: b"s".to_vec(),
    };
    for n in 0..10 {
        let batch = Batch {
            records: vec![record("a", &format!("a{n}"))],
            snapshots: if n == 6 { vec![snap("a")] } else { vec![] },
            ..Batch::default()
        };
        log.commit(&[batch]).unwrap();
    }
    let recovery = log.recover().unwrap();
    assert_eq!(payloads(&recovery), ["a7", "a8", "a9"]);
}

#[test]
fn a_snapshot_saved_apart_covers_what_it_was_built_from_and_an_older_one_never_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SqliteLog::open(dir.path()).unwrap();
    for n in 1..=6 {
        let batch = Batch {
            records: vec![record("a", &format!("a{n}")), record("b", &format!("b{n}"))],
            // A snapshot in the log file itself, as older data directories have them.
            snapshots: if n == 2 {
                vec![Snapshot {
                    stream: "a".into(),
                    payload: b"a-through-4".to_vec(),
                }]
            } else {
                vec![]
            },
            ..Batch::default()
        };
        log.commit(&[batch]).unwrap();
    }
    let snapshots = SqliteSnapshots::open(dir.path()).unwrap();
    let (snapshot, records) = snapshots.load_stream("a").unwrap();
    assert_eq!(
        snapshot.unwrap().through,
        4,
        "the log file's snapshot is read"
    );
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [5, 7, 9, 11], "only stream a's records after it");

    let saved = |through: u64, payload: &str| StoredSnapshot {
        stream: "a".into(),
        through,
        payload: payload.as_bytes().to_vec(),
    };
    snapshots.save(&saved(9, "a-through-9")).unwrap();
    snapshots.save(&saved(7, "a-through-7")).unwrap();
    let (snapshot, records) = snapshots.load_stream("a").unwrap();
    assert_eq!(
        snapshot.unwrap().payload,
        b"a-through-9",
        "the newer one is kept"
    );
    assert_eq!(records.len(), 1);

    let recovery = log.recover().unwrap();
    let a = recovery.snapshots.iter().find(|s| s.stream == "a").unwrap();
    assert_eq!((a.through, a.payload.as_slice()), (9, &b"a-through-9"[..]));
    // Stream b has no snapshot, so the log is read from its start.
    assert_eq!(recovery.records.len(), 12);
}

#[tokio::test]
async fn batches_that_arrive_during_a_sync_share_the_next_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, gate) = GatedLog::new(SqliteLog::open(dir.path()).unwrap());
    let Gate {
        open,
        waiting: entered,
        commits,
    } = gate;
    let log = GroupCommit::spawn(backend, GroupCommitConfig::default());
    let first = tokio::spawn({
        let log = log.clone();
        async move {
            log.append(Batch {
                records: vec![record("s", "first")],
                ..Batch::default()
            })
            .await
        }
    });
    tokio::task::spawn_blocking(move || entered.recv().unwrap())
        .await
        .unwrap();
    let waiting: Vec<_> = (0..100)
        .map(|n| {
            let log = log.clone();
            tokio::spawn(async move {
                let batch = Batch {
                    records: vec![record("s", &format!("r{n}"))],
                    ..Batch::default()
                };
                log.append(batch).await
            })
        })
        .collect();
    while log.queued() < 100 {
        tokio::task::yield_now().await;
    }
    open.send(()).unwrap();
    drop(open); // only the first commit waits
    assert_eq!(first.await.unwrap().unwrap(), 1);
    let mut seqs = Vec::new();
    for task in waiting {
        seqs.push(task.await.unwrap().unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (2..=101).collect::<Vec<u64>>());
    assert_eq!(
        *commits.lock().unwrap(),
        vec![1, 100],
        "100 queued batches, one commit"
    );
}

fn copy_db(from: &Path, to: &Path) {
    for name in ["holdfast.db", "holdfast.db-wal"] {
        if from.join(name).exists() {
            std::fs::copy(from.join(name), to.join(name)).unwrap();
        }
    }
}

/// A crash can leave the write-ahead log cut anywhere. Whatever the cut, reopening yields
/// exactly the batches committed before some point: whole batches, never a partial one, and
/// never a garbled payload.
#[test]
fn a_torn_tail_is_cut_at_a_commit_boundary() {
    let live = tempfile::tempdir().unwrap();
    let mut log = SqliteLog::open(live.path()).unwrap();
    let mut committed: Vec<Vec<String>> = Vec::new();
    for n in 0..40 {
        let batch: Vec<String> = (0..(n % 5 + 1))
            .map(|i| format!("batch{n}-rec{i}-{}", "x".repeat(n * 37)))
            .collect();
        let records = batch.iter().map(|p| record("s", p)).collect();
        log.commit(&[Batch {
            records,
            ..Batch::default()
        }])
        .unwrap();
        committed.push(batch);
    }
    let wal_len = std::fs::metadata(live.path().join("holdfast.db-wal"))
        .unwrap()
        .len();
    assert!(wal_len > 0, "the test needs an uncheckpointed WAL");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut seen_partial_prefix = false;
    for _ in 0..60 {
        let copy = tempfile::tempdir().unwrap();
        copy_db(live.path(), copy.path());
        let cut = rng.random_range(0..wal_len);
        let wal = std::fs::OpenOptions::new()
            .write(true)
            .open(copy.path().join("holdfast.db-wal"))
            .unwrap();
        wal.set_len(cut).unwrap();
        drop(wal);
        let recovery = SqliteLog::open(copy.path()).unwrap().recover().unwrap();
        let got = payloads(&recovery);
        let whole_batches = (0..=committed.len())
            .find(|&m| committed[..m].concat() == got)
            .unwrap_or_else(|| panic!("cut at {cut}: not a prefix of whole batches: {got:?}"));
        seen_partial_prefix |= whole_batches < committed.len();
    }
    assert!(
        seen_partial_prefix,
        "some cut must lose the tail, or the test proves nothing"
    );
}

#[test]
fn a_payload_changed_behind_the_checksum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SqliteLog::open(dir.path()).unwrap();
    log.commit(&[Batch {
        records: vec![record("s", "pay 100")],
        ..Batch::default()
    }])
    .unwrap();
    drop(log);
    let raw = rusqlite::Connection::open(dir.path().join("holdfast.db")).unwrap();
    raw.execute("UPDATE log SET payload = CAST('pay 900' AS BLOB)", [])
        .unwrap();
    drop(raw);
    let error = SqliteLog::open(dir.path()).unwrap().recover().unwrap_err();
    assert!(
        matches!(error, StoreError::Corrupt { what: "record", .. }),
        "{error}"
    );
}
