//! PostgreSQL, for several nodes on one database. Each stream (a sale, a till) has one writer at
//! a time: the node holding its *lease*, a row with an epoch that grows with every change of
//! owner. Every append of a fenced batch is conditional, in the same statement, on the lease
//! still carrying the writer's epoch (`FOR SHARE`, which also holds off a takeover until the
//! append commits): a node paused past its lease can never write after another took over.
//!
//! [`PgLog`] is the writer, driven by the group-commit thread like the embedded log: one
//! transaction (one commit, one round trip per statement, pipelined) for every batch that queued
//! up. [`PgStore`] is everything else, asynchronous: the schema, leases, loading one stream when
//! a node takes it over, shared secrets and the sales' published views.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::backend::{
    Batch, Compacted, Fate, Fence, LogBackend, Recovery, StoreError, StoredRecord, StoredSnapshot,
    checksum,
};

/// The schema this build knows. A database with a newer one is refused: an older node must not
/// write into a layout it does not understand.
pub const SCHEMA_VERSION: i32 = 1;

/// The stream of values that belong to no stream.
const GLOBAL: &str = "";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS holdfast_schema (version INT NOT NULL);
CREATE TABLE IF NOT EXISTS log (
    seq BIGSERIAL PRIMARY KEY,
    stream TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    payload BYTEA NOT NULL,
    crc BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS log_by_stream ON log (stream, seq);
CREATE TABLE IF NOT EXISTS snapshot (
    stream TEXT PRIMARY KEY,
    through BIGINT NOT NULL,
    payload BYTEA NOT NULL,
    crc BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    stream TEXT NOT NULL,
    key TEXT NOT NULL,
    value BYTEA NOT NULL,
    crc BIGINT NOT NULL,
    PRIMARY KEY (stream, key)
);
CREATE TABLE IF NOT EXISTS lease (
    stream TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    address TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE SEQUENCE IF NOT EXISTS published_view_version;
CREATE TABLE IF NOT EXISTS published_view (
    stream TEXT PRIMARY KEY,
    payload BYTEA NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS published_view_by_version ON published_view (version);
";

/// A PostgreSQL failure with its causes, which the drivers keep out of their own message.
fn pg(error: impl std::error::Error) -> StoreError {
    let mut message = format!("PostgreSQL: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    StoreError::Io(message)
}

/// The group-commit writer on PostgreSQL, on a blocking connection of its own.
///
/// Unlike the embedded log it carries on after a failed commit (PostgreSQL restarting, the
/// connection dropped): it connects again for the next one. What a failure leaves uncertain is
/// confined to the streams whose batches were in the failed commit: later batches under the
/// same fences are refused (`Stopped`), so no batch can land on top of one whose fate is
/// unknown. Their writers stop, and take the stream again under a new epoch after reading back
/// what is durable.
pub struct PgLog {
    config: postgres::Config,
    connection: Option<Connection>,
    node: String,
    uncertain: std::collections::HashSet<Fence>,
    /// The (stream, key) the last compaction step stopped after.
    compaction_cursor: (String, String),
}

/// The writer's connection and its statements, prepared once per connection: the database
/// parses and plans each only once, and every use is one round trip.
struct Connection {
    client: postgres::Client,
    statements: Statements,
}

struct Statements {
    insert_fenced: postgres::Statement,
    insert_free: postgres::Statement,
    fence_check: postgres::Statement,
    put_values: postgres::Statement,
    put_snapshot: postgres::Statement,
}

impl Connection {
    fn open(config: &postgres::Config) -> Result<Connection, StoreError> {
        let mut client = config.connect(postgres::NoTls).map_err(pg)?;
        // The fence is part of the insert itself: the lease row is read with a share lock in
        // the same statement, so a takeover waits for this append to commit, and an append
        // after a takeover inserts nothing.
        let insert_fenced = client
            .prepare(
                "INSERT INTO log (stream, epoch, payload, crc)
                 SELECT r.stream, l.epoch, r.payload, r.crc
                 FROM unnest($1::text[], $2::bytea[], $3::bigint[]) WITH ORDINALITY
                      AS r(stream, payload, crc, n),
                      (SELECT epoch FROM lease
                       WHERE stream = $4 AND epoch = $5 AND node = $6 FOR SHARE) AS l
                 ORDER BY r.n
                 RETURNING seq, stream",
            )
            .map_err(pg)?;
        let insert_free = client
            .prepare(
                "INSERT INTO log (stream, epoch, payload, crc)
                 SELECT r.stream, 0, r.payload, r.crc
                 FROM unnest($1::text[], $2::bytea[], $3::bigint[]) WITH ORDINALITY
                      AS r(stream, payload, crc, n)
                 ORDER BY r.n
                 RETURNING seq, stream",
            )
            .map_err(pg)?;
        let fence_check = client
            .prepare("SELECT 1 FROM lease WHERE stream = $1 AND epoch = $2 AND node = $3 FOR SHARE")
            .map_err(pg)?;
        // The last write of a key in the batch wins, as it would written one by one.
        let put_values = client
            .prepare(
                "INSERT INTO kv (stream, key, value, crc)
                 SELECT DISTINCT ON (v.key) $1, v.key, v.value, v.crc
                 FROM unnest($2::text[], $3::bytea[], $4::bigint[]) WITH ORDINALITY
                      AS v(key, value, crc, n)
                 ORDER BY v.key, v.n DESC
                 ON CONFLICT (stream, key) DO UPDATE
                   SET value = excluded.value, crc = excluded.crc",
            )
            .map_err(pg)?;
        // A snapshot covers its stream's records up to the batch's last one (`$2`), or, in a
        // batch without records of that stream, up to the stream's last one so far.
        let put_snapshot = client
            .prepare(
                "INSERT INTO snapshot (stream, through, payload, crc)
                 SELECT $1::text,
                        COALESCE($2::bigint, (SELECT MAX(seq) FROM log WHERE stream = $1), 0),
                        $3, $4
                 ON CONFLICT (stream) DO UPDATE
                   SET through = excluded.through, payload = excluded.payload, crc = excluded.crc",
            )
            .map_err(pg)?;
        let statements = Statements {
            insert_fenced,
            insert_free,
            fence_check,
            put_values,
            put_snapshot,
        };
        Ok(Connection { client, statements })
    }
}

impl PgLog {
    /// Connects as `node` (the name its leases carry). The schema must exist (`PgStore::connect`
    /// makes it).
    pub fn connect(url: &str, node: &str) -> Result<PgLog, StoreError> {
        let mut config: postgres::Config = url.parse().map_err(pg)?;
        // A writer stopped mid-transaction (SIGSTOP, a stall) must not hold its share lock on
        // a lease for ever: the database ends the transaction, and the takeover goes on.
        config.options("-c idle_in_transaction_session_timeout=2000");
        config.connect_timeout(Duration::from_secs(5));
        let connection = Connection::open(&config)?;
        Ok(PgLog {
            config,
            connection: Some(connection),
            node: node.to_owned(),
            uncertain: Default::default(),
            compaction_cursor: Default::default(),
        })
    }

    fn connection(&mut self) -> Result<&mut Connection, StoreError> {
        if self
            .connection
            .as_ref()
            .is_none_or(|c| c.client.is_closed())
        {
            self.connection = None;
            self.connection = Some(Connection::open(&self.config)?);
        }
        Ok(self.connection.as_mut().expect("connected just now"))
    }

    /// Writes every batch in one transaction. A batch whose fence no longer holds writes
    /// nothing (its records' insert is the first thing it does, and inserts nothing), and the
    /// others still commit.
    fn commit_all(
        &mut self,
        batches: &[&Batch],
    ) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
        let node = self.node.clone();
        let Connection { client, statements } = self.connection()?;
        let mut writer = BatchWriter {
            tx: client.transaction().map_err(pg)?,
            node: &node,
            statements,
            round_trips: 2, // BEGIN and COMMIT
        };
        let outcomes = batches
            .iter()
            .map(|batch| writer.write(batch))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let round_trips = writer.round_trips;
        writer.tx.commit().map_err(pg)?;
        metrics::counter!("holdfast_pg_log_round_trips_total").increment(round_trips);
        metrics::counter!("holdfast_pg_log_commits_total").increment(1);
        Ok(outcomes)
    }
}

/// One commit's transaction and the statements it writes with.
struct BatchWriter<'a> {
    tx: postgres::Transaction<'a>,
    node: &'a str,
    statements: &'a Statements,
    round_trips: u64,
}

impl BatchWriter<'_> {
    /// Writes one batch: `Ok(Err(Fenced))`, having written nothing, when its writer no longer
    /// holds its stream.
    fn write(&mut self, batch: &Batch) -> Result<Result<u64, StoreError>, StoreError> {
        let fence = batch.fence.as_ref();
        let fenced = || {
            Ok(Err(StoreError::Fenced {
                stream: fence.map(|f| f.stream.clone()).unwrap_or_default(),
            }))
        };
        let mut last_by_stream: BTreeMap<String, i64> = BTreeMap::new();
        if batch.records.is_empty() {
            if let Some(fence) = fence {
                // A snapshot or an answer from a node that lost the stream is as stale as a
                // record.
                self.round_trips += 1;
                let held = self
                    .tx
                    .query(
                        &self.statements.fence_check,
                        &[&fence.stream, &(fence.epoch as i64), &self.node],
                    )
                    .map_err(pg)?;
                if held.is_empty() {
                    return fenced();
                }
            }
        } else {
            let streams: Vec<&str> = batch.records.iter().map(|r| r.stream.as_str()).collect();
            let payloads: Vec<&[u8]> = batch.records.iter().map(|r| r.payload.as_slice()).collect();
            let crcs: Vec<i64> = batch
                .records
                .iter()
                .map(|r| i64::from(checksum(&r.stream, &r.payload)))
                .collect();
            self.round_trips += 1;
            let rows = match fence {
                Some(fence) => self.tx.query(
                    &self.statements.insert_fenced,
                    &[
                        &streams,
                        &payloads,
                        &crcs,
                        &fence.stream,
                        &(fence.epoch as i64),
                        &self.node,
                    ],
                ),
                None => self
                    .tx
                    .query(&self.statements.insert_free, &[&streams, &payloads, &crcs]),
            }
            .map_err(pg)?;
            if rows.len() != batch.records.len() {
                // Nothing was inserted: the lease no longer carries this epoch.
                return fenced();
            }
            for row in rows {
                let seq: i64 = row.get(0);
                let last = last_by_stream.entry(row.get(1)).or_default();
                *last = (*last).max(seq);
            }
        }
        // From here the lease is held with a share lock until the commit: no takeover can come
        // between, so the rest needs no fence of its own.
        for snapshot in &batch.snapshots {
            let through = last_by_stream.get(&snapshot.stream).copied();
            let crc = i64::from(checksum(&snapshot.stream, &snapshot.payload));
            self.round_trips += 1;
            self.tx
                .execute(
                    &self.statements.put_snapshot,
                    &[&snapshot.stream, &through, &snapshot.payload, &crc],
                )
                .map_err(pg)?;
        }
        if !batch.values.is_empty() {
            // A fenced batch's values belong to its stream, and come back when a node takes the
            // stream over; the others are global ('').
            let stream = fence.map_or(GLOBAL, |f| f.stream.as_str());
            let keys: Vec<&str> = batch.values.iter().map(|(k, _)| k.as_str()).collect();
            let values: Vec<&[u8]> = batch.values.iter().map(|(_, v)| v.as_slice()).collect();
            let crcs: Vec<i64> = batch
                .values
                .iter()
                .map(|(k, v)| i64::from(checksum(k, v)))
                .collect();
            self.round_trips += 1;
            self.tx
                .execute(
                    &self.statements.put_values,
                    &[&stream, &keys, &values, &crcs],
                )
                .map_err(pg)?;
        }
        Ok(Ok(
            last_by_stream.values().copied().max().unwrap_or(0) as u64
        ))
    }
}

impl LogBackend for PgLog {
    fn commit(&mut self, batches: &[Batch]) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
        let refused: Vec<bool> = batches
            .iter()
            .map(|b| b.fence.as_ref().is_some_and(|f| self.uncertain.contains(f)))
            .collect();
        let writable: Vec<&Batch> = batches
            .iter()
            .zip(&refused)
            .filter(|(_, refused)| !**refused)
            .map(|(batch, _)| batch)
            .collect();
        let mut written = match self.commit_all(&writable) {
            Ok(outcomes) => outcomes.into_iter(),
            Err(error) => {
                let fences = writable.iter().filter_map(|b| b.fence.clone());
                self.uncertain.extend(fences);
                // The connection may be what failed: the next commit makes a new one.
                self.connection = None;
                return Err(error);
            }
        };
        Ok(refused
            .into_iter()
            .map(|refused| match refused {
                true => Err(StoreError::Stopped),
                false => written.next().expect("one outcome per batch written"),
            })
            .collect())
    }

    fn stops_after_failure(&self) -> bool {
        false
    }

    /// Values here are one row per key (a write replaces the key's row), so there is nothing
    /// superseded to drop and no order to keep: a step walks the next `rows_max` keys from
    /// where the last stopped (starting over after the last), and deletes those `fate` drops,
    /// unless another node has rewritten them since they were read. `Wait` keeps a value.
    fn compact_values(
        &mut self,
        rows_max: usize,
        fate: &mut dyn FnMut(&str, &[u8]) -> Fate,
    ) -> Result<Compacted, StoreError> {
        let (stream_after, key_after) = self.compaction_cursor.clone();
        let limit = i64::try_from(rows_max).unwrap_or(i64::MAX);
        let Connection { client, .. } = self.connection()?;
        let mut tx = client.transaction().map_err(pg)?;
        let rows = tx
            .query(
                "SELECT stream, key, value, crc FROM kv WHERE (stream, key) > ($1, $2)
                 ORDER BY stream, key LIMIT $3",
                &[&stream_after, &key_after, &limit],
            )
            .map_err(pg)?;
        let mut compacted = Compacted {
            looked_at: rows.len(),
            more: rows.len() == rows_max,
            ..Compacted::default()
        };
        for row in &rows {
            let (stream, key, value): (String, String, Vec<u8>) =
                (row.get(0), row.get(1), row.get(2));
            verify("value", &key, &value, row.get(3))?;
            if fate(&key, &value) == Fate::Drop {
                compacted.dropped += tx
                    .execute(
                        "DELETE FROM kv WHERE stream = $1 AND key = $2 AND value = $3",
                        &[&stream, &key, &value],
                    )
                    .map_err(pg)? as usize;
            }
        }
        tx.commit().map_err(pg)?;
        self.compaction_cursor = match rows.last() {
            Some(last) if compacted.more => (last.get(0), last.get(1)),
            _ => Default::default(),
        };
        Ok(compacted)
    }

    /// Nothing is read back at start-up on PostgreSQL: a node loads a stream when it takes the
    /// stream over (`PgStore::load_stream`).
    fn recover(&mut self) -> Result<Recovery, StoreError> {
        Ok(Recovery::default())
    }
}

/// Who holds a stream now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub node: String,
    pub address: String,
    pub epoch: u64,
    /// Whether it is still within its time, by the database's clock.
    pub live: bool,
}

/// A stream as a node taking it over finds it.
#[derive(Debug, Default)]
pub struct StreamRecovery {
    pub snapshot: Option<StoredSnapshot>,
    /// Records after the snapshot, in order.
    pub records: Vec<StoredRecord>,
    /// The values written with the stream's batches (idempotency answers, …).
    pub values: Vec<(String, Vec<u8>)>,
}

/// The asynchronous side of the PostgreSQL store: schema, leases, loads, shared secrets, views.
#[derive(Clone)]
pub struct PgStore {
    pool: deadpool_postgres::Pool,
}

impl PgStore {
    /// Connects, creates the schema if the database is new, and refuses one newer than this
    /// build knows.
    pub async fn connect(url: &str, connections: usize) -> Result<PgStore, StoreError> {
        let config: tokio_postgres::Config = url.parse().map_err(pg)?;
        let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(connections)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(pg)?;
        let store = PgStore { pool };
        store.prepare_schema().await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pg)
    }

    async fn prepare_schema(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // "Already exists, skipping" is what every node but the first would hear.
        tx.batch_execute("SET LOCAL client_min_messages = warning")
            .await
            .map_err(pg)?;
        // One node at a time makes or checks the schema.
        tx.execute("SELECT pg_advisory_xact_lock(7268236)", &[])
            .await
            .map_err(pg)?;
        tx.batch_execute(SCHEMA).await.map_err(pg)?;
        let version: Option<i32> = tx
            .query_opt("SELECT version FROM holdfast_schema", &[])
            .await
            .map_err(pg)?
            .map(|row| row.get(0));
        match version {
            None => {
                tx.execute(
                    "INSERT INTO holdfast_schema (version) VALUES ($1)",
                    &[&SCHEMA_VERSION],
                )
                .await
                .map_err(pg)?;
            }
            Some(found) if found > SCHEMA_VERSION => {
                return Err(StoreError::Io(format!(
                    "the database's schema is version {found}, newer than this holdfast \
                     knows ({SCHEMA_VERSION}): update holdfast before pointing it at this database"
                )));
            }
            Some(_) => {}
        }
        tx.commit().await.map_err(pg)?;
        Ok(())
    }

    /// Takes `stream` for `node` if nobody holds it, or its holder's time ran out, or it is
    /// already `node`'s (renewing it). Answers the new epoch, or the holder when it is live.
    pub async fn acquire(
        &self,
        stream: &str,
        node: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<Result<u64, Lease>, StoreError> {
        let client = self.client().await?;
        let ttl_s = ttl.as_secs_f64();
        let taken = client
            .query_opt(
                "INSERT INTO lease (stream, node, address, epoch, expires_at)
                 VALUES ($1, $2, $3, 1, now() + $4::float8 * interval '1 second')
                 ON CONFLICT (stream) DO UPDATE
                   SET node = $2, address = $3, epoch = lease.epoch + 1,
                       expires_at = now() + $4::float8 * interval '1 second'
                   WHERE lease.expires_at < now() OR lease.node = $2
                 RETURNING epoch",
                &[&stream, &node, &address, &ttl_s],
            )
            .await
            .map_err(pg)?;
        if let Some(row) = taken {
            return Ok(Ok(row.get::<_, i64>(0) as u64));
        }
        match self.holder(stream).await? {
            Some(lease) => Ok(Err(lease)),
            // It went away between the two statements: try once more.
            None => Box::pin(self.acquire(stream, node, address, ttl)).await,
        }
    }

    /// Who holds `stream`, if anyone ever did.
    pub async fn holder(&self, stream: &str) -> Result<Option<Lease>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT node, address, epoch, expires_at > now() FROM lease WHERE stream = $1",
                &[&stream],
            )
            .await
            .map_err(pg)?;
        Ok(row.map(|row| Lease {
            node: row.get(0),
            address: row.get(1),
            epoch: row.get::<_, i64>(2) as u64,
            live: row.get(3),
        }))
    }

    /// Extends `node`'s leases that still carry their epochs; answers the streams it still
    /// holds (the others were taken over).
    pub async fn renew(
        &self,
        node: &str,
        held: &[(String, u64)],
        ttl: Duration,
    ) -> Result<Vec<String>, StoreError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let streams: Vec<&str> = held.iter().map(|(s, _)| s.as_str()).collect();
        let epochs: Vec<i64> = held.iter().map(|(_, e)| *e as i64).collect();
        let rows = client
            .query(
                "UPDATE lease SET expires_at = now() + $4::float8 * interval '1 second'
                 FROM unnest($2::text[], $3::bigint[]) AS h(stream, epoch)
                 WHERE lease.stream = h.stream AND lease.epoch = h.epoch AND lease.node = $1
                 RETURNING lease.stream",
                &[&node, &streams, &epochs, &ttl.as_secs_f64()],
            )
            .await
            .map_err(pg)?;
        Ok(rows.into_iter().map(|row| row.get(0)).collect())
    }

    /// Streams whose holders' time has run out, other than `node`'s (a few hundred at a time).
    pub async fn vacant_streams(&self, node: &str) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT stream FROM lease WHERE expires_at < now() AND node <> $1
                 ORDER BY expires_at LIMIT 500",
                &[&node],
            )
            .await
            .map_err(pg)?;
        Ok(rows.into_iter().map(|row| row.get(0)).collect())
    }

    /// Lets `node`'s leases go at once (a clean shutdown), so another node need not wait.
    pub async fn release(&self, node: &str, held: &[(String, u64)]) -> Result<(), StoreError> {
        let client = self.client().await?;
        let streams: Vec<&str> = held.iter().map(|(s, _)| s.as_str()).collect();
        let epochs: Vec<i64> = held.iter().map(|(_, e)| *e as i64).collect();
        client
            .execute(
                "UPDATE lease SET expires_at = now()
                 FROM unnest($2::text[], $3::bigint[]) AS h(stream, epoch)
                 WHERE lease.stream = h.stream AND lease.epoch = h.epoch AND lease.node = $1",
                &[&node, &streams, &epochs],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    /// A stream's snapshot, the records after it and its values, checksums verified.
    pub async fn load_stream(&self, stream: &str) -> Result<StreamRecovery, StoreError> {
        let mut recovery = self.load_records(stream).await?;
        recovery.values = self.values_of(stream).await?;
        Ok(recovery)
    }

    /// A stream's snapshot and the records after it, without its values (what a snapshot is
    /// built from), checksums verified.
    pub async fn load_records(&self, stream: &str) -> Result<StreamRecovery, StoreError> {
        let client = self.client().await?;
        let mut recovery = StreamRecovery::default();
        let through = match client
            .query_opt(
                "SELECT through, payload, crc FROM snapshot WHERE stream = $1",
                &[&stream],
            )
            .await
            .map_err(pg)?
        {
            Some(row) => {
                let payload: Vec<u8> = row.get(1);
                verify("snapshot", stream, &payload, row.get(2))?;
                let through = row.get::<_, i64>(0);
                recovery.snapshot = Some(StoredSnapshot {
                    stream: stream.to_owned(),
                    through: through as u64,
                    payload,
                });
                through
            }
            None => 0,
        };
        for row in client
            .query(
                "SELECT seq, payload, crc FROM log WHERE stream = $1 AND seq > $2 ORDER BY seq",
                &[&stream, &through],
            )
            .await
            .map_err(pg)?
        {
            let seq: i64 = row.get(0);
            let payload: Vec<u8> = row.get(1);
            verify("record", stream, &payload, row.get(2))?;
            recovery.records.push(StoredRecord {
                seq: seq as u64,
                stream: stream.to_owned(),
                payload,
            });
        }
        Ok(recovery)
    }

    /// Keeps a snapshot built by a reader of the stream's records, unless the stream already
    /// has one covering as much. Written on its own connection, apart from the log's writer.
    pub async fn save_snapshot(&self, snapshot: &StoredSnapshot) -> Result<(), StoreError> {
        let client = self.client().await?;
        let crc = i64::from(checksum(&snapshot.stream, &snapshot.payload));
        client
            .execute(
                "INSERT INTO snapshot (stream, through, payload, crc) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (stream) DO UPDATE
                 SET through = EXCLUDED.through, payload = EXCLUDED.payload, crc = EXCLUDED.crc
                 WHERE snapshot.through < EXCLUDED.through",
                &[
                    &snapshot.stream,
                    &(snapshot.through as i64),
                    &snapshot.payload,
                    &crc,
                ],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    /// The values written without a fence, belonging to no stream.
    pub async fn global_values(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.values_of(GLOBAL).await
    }

    /// The values written by `stream`'s writers (idempotency answers, settings, …).
    pub async fn values_of(&self, stream: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let client = self.client().await?;
        let mut values = Vec::new();
        for row in client
            .query(
                "SELECT key, value, crc FROM kv WHERE stream = $1",
                &[&stream],
            )
            .await
            .map_err(pg)?
        {
            let key: String = row.get(0);
            let value: Vec<u8> = row.get(1);
            verify("value", &key, &value, row.get(2))?;
            values.push((key, value));
        }
        Ok(values)
    }

    /// Every stream with something in the log, snapshot or a lease (to list sales).
    pub async fn streams(&self, prefix_excluded: &str) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT stream FROM snapshot WHERE stream NOT LIKE $1 || '%'
                 UNION SELECT DISTINCT stream FROM log WHERE stream NOT LIKE $1 || '%'",
                &[&prefix_excluded],
            )
            .await
            .map_err(pg)?;
        Ok(rows.into_iter().map(|row| row.get(0)).collect())
    }

    /// A secret shared by every node: made by the first to ask, read by the others.
    pub async fn shared_secret(&self, key: &str, fresh: &[u8]) -> Result<Vec<u8>, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&key, &fresh],
            )
            .await
            .map_err(pg)?;
        let row = client
            .query_one("SELECT value FROM meta WHERE key = $1", &[&key])
            .await
            .map_err(pg)?;
        Ok(row.get(0))
    }

    /// Publishes a stream's view for the other nodes (its owner does, a few times a second).
    pub async fn publish_view(&self, stream: &str, payload: &[u8]) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO published_view (stream, payload, version)
                 VALUES ($1, $2, nextval('published_view_version'))
                 ON CONFLICT (stream) DO UPDATE
                   SET payload = $2, version = nextval('published_view_version')",
                &[&stream, &payload],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    /// The views published after `version` (0: all of them), with the newest version seen, so
    /// a node keeps its copies fresh with one cheap query however many sales there are.
    pub async fn published_views_since(
        &self,
        version: i64,
    ) -> Result<(Vec<(String, Vec<u8>)>, i64), StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT stream, payload, version FROM published_view WHERE version > $1",
                &[&version],
            )
            .await
            .map_err(pg)?;
        let newest = rows
            .iter()
            .map(|row| row.get::<_, i64>(2))
            .fold(version, i64::max);
        let views = rows
            .into_iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        Ok((views, newest))
    }

    /// Runs `sql` (for tests and audits that read the database alone).
    pub async fn query_i64(&self, sql: &str) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let row = client.query_one(sql, &[]).await.map_err(pg)?;
        Ok(row.get(0))
    }
}

fn verify(what: &'static str, key: &str, payload: &[u8], crc: i64) -> Result<(), StoreError> {
    if i64::from(checksum(key, payload)) == crc {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            what,
            key: key.to_owned(),
        })
    }
}
