//! The PostgreSQL store against a real, throwaway PostgreSQL: schema, leases, fenced appends,
//! a writer that lost its stream, one stopped mid-transaction.

use std::time::Duration;

use holdfast_store::{
    Batch, Compacted, Fate, Fence, LogBackend, PgLog, PgStore, Record, SCHEMA_VERSION, Snapshot,
    StoreError,
};
use holdfast_testkit::TestPostgres;

const TTL: Duration = Duration::from_secs(30);

fn record(stream: &str, payload: &str) -> Record {
    Record {
        stream: stream.into(),
        payload: payload.as_bytes().to_vec(),
    }
}

fn fenced(stream: &str, epoch: u64, payload: &str) -> Batch {
    Batch {
        records: vec![record(stream, payload)],
        values: vec![(format!("idem/{payload}"), payload.as_bytes().to_vec())],
        fence: Some(Fence {
            stream: stream.into(),
            epoch,
        }),
        ..Batch::default()
    }
}

fn payloads(recovery: &holdfast_store::StreamRecovery) -> Vec<String> {
    recovery
        .records
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).unwrap())
        .collect()
}

/// Ends a lease's time, as if its holder had stopped renewing it.
async fn expire(url: &str, stream: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute(
            "UPDATE lease SET expires_at = now() - interval '1 second' WHERE stream = $1",
            &[&stream],
        )
        .await
        .unwrap();
}

/// A fresh database in a cluster of its own, where node a holds `sale-1`: its epoch.
async fn node_a_holds_a_sale(database: &str) -> (TestPostgres, String, PgStore, u64) {
    let cluster = TestPostgres::start();
    let url = cluster.database(database);
    let store = PgStore::connect(&url, 4).await.unwrap();
    let epoch = store
        .acquire("sale-1", "node-a", "http://a", TTL)
        .await
        .unwrap()
        .unwrap();
    (cluster, url, store, epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_lost_its_stream_can_never_write_to_it_again() {
    let (_cluster, url, store, a) = node_a_holds_a_sale("fence").await;
    // While node a holds it, node b cannot take it.
    let held = store
        .acquire("sale-1", "node-b", "http://b", TTL)
        .await
        .unwrap();
    assert_eq!(held.unwrap_err().node, "node-a");
    let url_a = url.clone();
    let mut log_a = tokio::task::spawn_blocking(move || PgLog::connect(&url_a, "node-a").unwrap())
        .await
        .unwrap();
    let (first, log_back) = tokio::task::spawn_blocking(move || {
        let outcome = log_a.commit(&[fenced("sale-1", a, "a1")]).unwrap();
        (outcome, log_a)
    })
    .await
    .unwrap();
    log_a = log_back;
    assert!(first[0].is_ok(), "{first:?}");

    expire(&url, "sale-1").await;
    let b = store
        .acquire("sale-1", "node-b", "http://b", TTL)
        .await
        .unwrap()
        .unwrap();
    assert!(b > a, "a takeover raises the epoch");
    let url_b = url.clone();
    let (late, ok) = tokio::task::spawn_blocking(move || {
        let late = log_a
            .commit(&[fenced("sale-1", a, "a2"), Batch::default()])
            .unwrap();
        let mut log_b = PgLog::connect(&url_b, "node-b").unwrap();
        let ok = log_b.commit(&[fenced("sale-1", b, "b1")]).unwrap();
        (late, ok)
    })
    .await
    .unwrap();
    assert_eq!(
        late[0],
        Err(StoreError::Fenced {
            stream: "sale-1".into()
        })
    );
    assert!(
        late[1].is_ok(),
        "an unfenced batch in the same commit still lands"
    );
    assert!(ok[0].is_ok());
    let loaded = store.load_stream("sale-1").await.unwrap();
    assert_eq!(
        payloads(&loaded),
        ["a1", "b1"],
        "the zombie's append left no trace"
    );
    let keys: Vec<&str> = loaded.values.iter().map(|(k, _)| k.as_str()).collect();
    assert!(keys.contains(&"idem/a1") && keys.contains(&"idem/b1") && !keys.contains(&"idem/a2"));
    // Renewing tells a node which streams it still holds.
    let kept = store
        .renew("node-a", &[("sale-1".into(), a)], TTL)
        .await
        .unwrap();
    assert!(kept.is_empty());
}

/// A takeover waits for an append in flight; a writer stopped in the middle of its transaction
/// (SIGSTOP) holds nothing for ever: the database ends its transaction and the takeover goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_an_append_in_flight_but_not_for_a_stopped_writer() {
    let (_cluster, url, store, a) = node_a_holds_a_sale("stall").await;
    expire(&url, "sale-1").await;

    // Node a's writer is inside its transaction, its fenced append done, not yet committed:
    // it has stopped (like a SIGSTOPped process), holding the lease row's share lock.
    let mut writer = {
        let mut config: postgres::Config = url.parse().unwrap();
        config.options("-c idle_in_transaction_session_timeout=2000");
        tokio::task::spawn_blocking(move || config.connect(postgres::NoTls).unwrap())
            .await
            .unwrap()
    };
    let appended = tokio::task::spawn_blocking(move || {
        let mut tx = writer.transaction().unwrap();
        tx.execute(
            "SELECT 1 FROM lease WHERE stream = 'sale-1' AND epoch = $1 AND node = 'node-a' FOR SHARE",
            &[&(a as i64)],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO log (stream, epoch, payload, crc) VALUES ('sale-1', $1, 'stalled', 0)",
            &[&(a as i64)],
        )
        .unwrap();
        // Stopped here: the transaction stays open, idle.
        std::mem::forget(tx);
        writer
    })
    .await
    .unwrap();

    let started = std::time::Instant::now();
    let b = store
        .acquire("sale-1", "node-b", "http://b", TTL)
        .await
        .unwrap()
        .unwrap();
    assert!(b > a);
    assert!(
        started.elapsed() >= Duration::from_millis(1_000),
        "the takeover waited for the stopped writer's transaction to end"
    );
    let loaded = store.load_stream("sale-1").await.unwrap();
    assert!(
        payloads(&loaded).is_empty(),
        "the stopped writer's append was rolled back"
    );
    // A blocking client closes on a thread of its own.
    tokio::task::spawn_blocking(move || drop(appended))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_values_secrets_and_a_newer_schema() {
    let (_cluster, url, store, a) = node_a_holds_a_sale("misc").await;
    let url_a = url.clone();
    tokio::task::spawn_blocking(move || {
        let mut log = PgLog::connect(&url_a, "node-a").unwrap();
        let with_snapshot = Batch {
            snapshots: vec![Snapshot {
                stream: "sale-1".into(),
                payload: b"state".to_vec(),
            }],
            ..fenced("sale-1", a, "a2")
        };
        let global = Batch {
            values: vec![("terminal/till-1".into(), b"registration".to_vec())],
            ..Batch::default()
        };
        let outcome = log
            .commit(&[
                fenced("sale-1", a, "a1"),
                with_snapshot,
                fenced("sale-1", a, "a3"),
                global,
            ])
            .unwrap();
        assert!(outcome.iter().all(Result::is_ok), "{outcome:?}");
    })
    .await
    .unwrap();
    let loaded = store.load_stream("sale-1").await.unwrap();
    assert_eq!(loaded.snapshot.as_ref().unwrap().payload, b"state");
    assert_eq!(payloads(&loaded), ["a3"], "only records after the snapshot");
    assert_eq!(
        store.global_values().await.unwrap(),
        [("terminal/till-1".to_owned(), b"registration".to_vec())]
    );

    let (one, two) = tokio::join!(
        store.shared_secret("token-secret", b"first"),
        store.shared_secret("token-secret", b"second")
    );
    assert_eq!(
        one.unwrap(),
        two.unwrap(),
        "every node gets the same secret"
    );

    store
        .query_i64(&format!(
            "UPDATE holdfast_schema SET version = {} RETURNING version::bigint",
            SCHEMA_VERSION + 1
        ))
        .await
        .unwrap();
    let refused = PgStore::connect(&url, 1).await.err().unwrap();
    assert!(
        refused
            .to_string()
            .contains("newer than this holdfast knows"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_are_read_back_only_once_they_change() {
    let cluster = TestPostgres::start();
    let store = PgStore::connect(&cluster.database("views"), 2)
        .await
        .unwrap();
    store.publish_view("sale-1", b"one").await.unwrap();
    store.publish_view("sale-2", b"two").await.unwrap();
    let (all, seen) = store.published_views_since(0).await.unwrap();
    assert_eq!(all.len(), 2);
    let (none, same) = store.published_views_since(seen).await.unwrap();
    assert!(none.is_empty() && same == seen);
    store.publish_view("sale-1", b"one again").await.unwrap();
    let (changed, newer) = store.published_views_since(seen).await.unwrap();
    assert_eq!(changed, [("sale-1".to_owned(), b"one again".to_vec())]);
    assert!(newer > seen);
}

/// PostgreSQL crashes under the writer: the commit in flight fails, the writer connects again
/// for the next, but refuses the failed streams' batches until they come under a new epoch —
/// nothing may land on top of a batch whose fate is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_database_crash_the_writer_resumes_but_not_on_top_of_an_uncertain_batch() {
    let (cluster, url, store, a) = node_a_holds_a_sale("crash").await;
    let url_a = url.clone();
    let mut log = tokio::task::spawn_blocking(move || {
        let mut log = PgLog::connect(&url_a, "node-a").unwrap();
        assert!(log.commit(&[fenced("sale-1", a, "a1")]).unwrap()[0].is_ok());
        log
    })
    .await
    .unwrap();
    cluster.restart_immediately();
    log = tokio::task::spawn_blocking(move || {
        assert!(log.commit(&[fenced("sale-1", a, "a2")]).is_err());
        let global = Batch {
            values: vec![("global".into(), b"value".to_vec())],
            ..Batch::default()
        };
        let after = log.commit(&[fenced("sale-1", a, "a3"), global]).unwrap();
        assert_eq!(after[0], Err(StoreError::Stopped));
        assert!(after[1].is_ok(), "{after:?}");
        log
    })
    .await
    .unwrap();
    let again = store
        .acquire("sale-1", "node-a", "http://a", TTL)
        .await
        .unwrap()
        .unwrap();
    assert!(again > a);
    tokio::task::spawn_blocking(move || {
        assert!(log.commit(&[fenced("sale-1", again, "a4")]).unwrap()[0].is_ok());
    })
    .await
    .unwrap();
    let loaded = store.load_stream("sale-1").await.unwrap();
    assert_eq!(payloads(&loaded), ["a1", "a4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_deletes_what_is_dropped_in_steps_and_starts_over() {
    let (_cluster, url, store, a) = node_a_holds_a_sale("compaction").await;
    let compacted = tokio::task::spawn_blocking(move || {
        let mut log = PgLog::connect(&url, "node-a").unwrap();
        let batches: Vec<Batch> = (0..5)
            .map(|n| fenced("sale-1", a, &format!("a{n}")))
            .collect();
        log.commit(&batches).unwrap();
        // Even-numbered answers have expired.
        let mut fate = |key: &str, _: &[u8]| match key.ends_with(['0', '2', '4']) {
            true => Fate::Drop,
            false => Fate::Wait,
        };
        let steps: Vec<Compacted> = (0..3)
            .map(|_| log.compact_values(2, &mut fate).unwrap())
            .collect();
        let again = log.compact_values(10, &mut fate).unwrap();
        (steps, again)
    })
    .await
    .unwrap();
    let (steps, again) = compacted;
    let looked_at: Vec<(usize, bool)> = steps.iter().map(|s| (s.looked_at, s.more)).collect();
    assert_eq!(looked_at, [(2, true), (2, true), (1, false)]);
    assert_eq!(steps.iter().map(|s| s.dropped).sum::<usize>(), 3);
    assert_eq!(
        (again.looked_at, again.dropped),
        (2, 0),
        "a new pass from the start"
    );
    let left = store.values_of("sale-1").await.unwrap();
    let keys: Vec<&str> = left.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["idem/a1", "idem/a3"]);
}
