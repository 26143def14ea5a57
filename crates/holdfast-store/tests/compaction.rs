//! Compacting the stored keyed values: whatever start-up reads afterwards is what it read
//! before, less the keys the server let go, and a log whose values all expire stops growing.

use std::collections::HashMap;

use holdfast_store::{Batch, Fate, GroupCommit, GroupCommitConfig, LogBackend, Record, SqliteLog};
use proptest::prelude::*;

/// The test's server: a value's first byte says what becomes of it.
fn fate_by_first_byte(_key: &str, value: &[u8]) -> Fate {
    match value.first() {
        Some(b'd') => Fate::Drop,
        Some(b'w') => Fate::Wait,
        _ => Fate::Keep,
    }
}

/// Last write wins, as start-up reads values.
fn last_writes(values: &[(String, Vec<u8>)]) -> HashMap<String, Vec<u8>> {
    values.iter().cloned().collect()
}

#[derive(Clone, Debug)]
enum Step {
    /// One commit's values: (key number, fate letter) pairs.
    Commit(Vec<(u8, u8)>),
    Compact {
        rows_max: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let fate = prop_oneof![Just(b'k'), Just(b'd'), Just(b'w')];
    prop_oneof![
        3 => prop::collection::vec((0u8..6, fate), 1..4).prop_map(Step::Commit),
        1 => (1usize..5).prop_map(|rows_max| Step::Compact { rows_max }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn compaction_changes_nothing_start_up_reads_but_the_dropped(
        steps in prop::collection::vec(step(), 1..40)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SqliteLog::open(dir.path()).unwrap();
        let mut written = Vec::new();
        for (n, step) in steps.iter().enumerate() {
            match step {
                Step::Commit(values) => {
                    let values: Vec<(String, Vec<u8>)> = values
                        .iter()
                        .map(|(key, fate)| (format!("k{key}"), vec![*fate, n as u8]))
                        .collect();
                    written.extend(values.clone());
                    let batch = Batch { values, ..Batch::default() };
                    log.commit(&[batch]).unwrap();
                }
                Step::Compact { rows_max } => {
                    log.compact_values(*rows_max, &mut fate_by_first_byte).unwrap();
                }
            }
        }
        let expected = last_writes(&written);
        let read = last_writes(&SqliteLog::open(dir.path()).unwrap().recover().unwrap().values);
        for (key, value) in &expected {
            match fate_by_first_byte(key, value) {
                // A dropped key may be gone, or not reached yet; never replaced.
                Fate::Drop => prop_assert!(read.get(key).is_none_or(|v| v == value)),
                _ => prop_assert_eq!(read.get(key), Some(value), "key {}", key),
            }
        }
        prop_assert!(read.keys().all(|key| expected.contains_key(key)));
    }
}

fn answers(day: u8, commit: usize, count: usize) -> Batch {
    Batch {
        values: (0..count)
            .map(|n| {
                (
                    format!("answer/{day}/{commit}/{n}"),
                    [vec![b'a', day], vec![0; 200]].concat(),
                )
            })
            .collect(),
        ..Batch::default()
    }
}

#[test]
fn a_log_whose_values_expire_stops_growing() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SqliteLog::open(dir.path()).unwrap();
    log.commit(&[Batch {
        values: vec![("setting".into(), b"kept".to_vec())],
        ..Batch::default()
    }])
    .unwrap();
    let mut sizes = Vec::new();
    for day in 0..6u8 {
        for commit in 0..50 {
            log.commit(&[answers(day, commit, 20)]).unwrap();
        }
        // Answers of days before yesterday have expired.
        let mut fate = |key: &str, _: &[u8]| match key.strip_prefix("answer/") {
            Some(rest) if rest.split('/').next().unwrap().parse::<u8>().unwrap() + 1 < day => {
                Fate::Drop
            }
            Some(_) => Fate::Wait,
            None => Fate::Keep,
        };
        while log.compact_values(16, &mut fate).unwrap().more {}
        sizes.push(log.database_bytes().unwrap());
    }
    let values = SqliteLog::open(dir.path())
        .unwrap()
        .recover()
        .unwrap()
        .values;
    let days: std::collections::BTreeSet<&str> = values
        .iter()
        .filter_map(|(key, _)| key.strip_prefix("answer/")?.split('/').next())
        .collect();
    assert_eq!(days.into_iter().collect::<Vec<_>>(), ["4", "5"]);
    assert!(values.contains(&("setting".into(), b"kept".to_vec())));
    // Two days' answers are kept at a time: once the first are dropped, the pages they took
    // are reused, and two more days grow the file by less than a tenth of what one day adds.
    let a_day = sizes[1] - sizes[0];
    assert!(sizes[5] - sizes[3] < a_day / 10, "bytes by day: {sizes:?}");
}

#[tokio::test]
async fn compaction_takes_its_turn_between_commits() {
    let dir = tempfile::tempdir().unwrap();
    let log = GroupCommit::spawn(
        SqliteLog::open(dir.path()).unwrap(),
        GroupCommitConfig::default(),
    );
    log.append(Batch {
        records: vec![Record {
            stream: "s".into(),
            payload: b"r".to_vec(),
        }],
        values: vec![
            ("old".into(), b"d".to_vec()),
            ("kept".into(), b"k".to_vec()),
        ],
        ..Batch::default()
    })
    .await
    .unwrap();
    let compacted = log
        .compact_values(8, Box::new(fate_by_first_byte))
        .await
        .unwrap();
    assert_eq!(
        (compacted.looked_at, compacted.dropped, compacted.more),
        (2, 1, false)
    );
    let end = log
        .append(Batch {
            records: vec![Record {
                stream: "s".into(),
                payload: b"r2".to_vec(),
            }],
            ..Batch::default()
        })
        .await
        .unwrap();
    assert_eq!(end, 2, "records are untouched by compaction");
    let recovery = SqliteLog::open(dir.path()).unwrap().recover().unwrap();
    assert_eq!(recovery.values, [("kept".to_string(), b"k".to_vec())]);
    assert_eq!(recovery.records.len(), 2);
}
