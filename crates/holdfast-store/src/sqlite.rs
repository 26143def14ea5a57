//! The embedded default: one SQLite file in WAL mode with `synchronous=FULL`, so each commit
//! appends to the write-ahead log and syncs it once. SQLite's WAL frames carry checksums, so a
//! tail torn by a crash is detected and ignored on open; our own per-row checksum then verifies
//! every payload as it is read back.
//!
//! Sale snapshots live in a second file, `snapshots.db`, written by [`SqliteSnapshots`] from its
//! own connection: building and syncing a snapshot of a large sale then never holds the log's
//! write lock, so no commit waits for one. Older data directories keep their snapshots in the
//! log file's `snapshot` table, which is still read; for each stream the newer one wins.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

use crate::backend::{
    Batch, Compacted, Fate, LogBackend, Recovery, StoreError, StoredRecord, StoredSnapshot,
    checksum, last_writes_kept,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    payload BLOB NOT NULL,
    crc INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS log_by_stream ON log (stream, seq);
CREATE TABLE IF NOT EXISTS snapshot (
    stream TEXT PRIMARY KEY,
    through INTEGER NOT NULL,
    payload BLOB NOT NULL,
    crc INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS value_log (
    seq INTEGER PRIMARY KEY,
    entries BLOB NOT NULL,
    crc INTEGER NOT NULL
);
";

const SNAPSHOT_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS snapshot (
    stream TEXT PRIMARY KEY,
    through INTEGER NOT NULL,
    payload BLOB NOT NULL,
    crc INTEGER NOT NULL
);
";

const LOG_FILE: &str = "holdfast.db";
const SNAPSHOTS_FILE: &str = "snapshots.db";

pub struct SqliteLog {
    connection: Connection,
    path: PathBuf,
    /// The sequence number of the last durable record.
    last_seq: u64,
}

fn io(error: rusqlite::Error) -> StoreError {
    StoreError::Io(error.to_string())
}

impl SqliteLog {
    /// Opens (creating if needed) the log file `holdfast.db` in `dir`.
    pub fn open(dir: &Path) -> Result<SqliteLog, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(e.to_string()))?;
        let path = dir.join(LOG_FILE);
        let connection = open_durable(&path, SCHEMA)?;
        let last_seq: Option<i64> = connection
            .query_row("SELECT MAX(seq) FROM log", [], |row| row.get(0))
            .map_err(io)?;
        Ok(SqliteLog {
            connection,
            path,
            last_seq: last_seq.unwrap_or(0) as u64,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pages the log's database holds (in the file or still in its write-ahead log),
    /// in bytes: what it would take on disk once checkpointed. Freed pages are counted, as
    /// the file keeps them for reuse.
    pub fn database_bytes(&self) -> Result<u64, StoreError> {
        let pages: i64 = self
            .connection
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .map_err(io)?;
        let page_size: i64 = self
            .connection
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .map_err(io)?;
        Ok((pages * page_size) as u64)
    }
}

impl LogBackend for SqliteLog {
    fn commit(&mut self, batches: &[Batch]) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
        let mut last = self.last_seq;
        let tx = self.connection.transaction().map_err(io)?;
        let mut ends = Vec::with_capacity(batches.len());
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO log (stream, payload, crc) VALUES (?1, ?2, ?3)")
                .map_err(io)?;
            let mut snapshot = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO snapshot (stream, through, payload, crc)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(io)?;
            // Values are appended, not updated in place: a keyed update dirties a random B-tree
            // page per value, and every dirty page is written to the WAL and synced. All of a
            // commit's values share one row (the commit is atomic as a whole, and this log has
            // no fences to keep apart), so a busy commit costs one insert, not hundreds. The
            // newest value for a key wins when read back.
            let mut values = tx
                .prepare_cached("INSERT INTO value_log (entries, crc) VALUES (?1, ?2)")
                .map_err(io)?;
            let mut all_values = Vec::new();
            for batch in batches {
                for record in &batch.records {
                    let crc = checksum(&record.stream, &record.payload);
                    insert
                        .execute(params![record.stream, record.payload, crc])
                        .map_err(io)?;
                    last = tx.last_insert_rowid() as u64;
                }
                for snap in &batch.snapshots {
                    let crc = checksum(&snap.stream, &snap.payload);
                    snapshot
                        .execute(params![snap.stream, last as i64, snap.payload, crc])
                        .map_err(io)?;
                }
                all_values.extend(batch.values.iter());
                ends.push(Ok(last));
            }
            if !all_values.is_empty() {
                let entries = pack_values(all_values);
                let crc = checksum("values", &entries);
                values.execute(params![entries, crc]).map_err(io)?;
            }
        }
        tx.commit().map_err(io)?;
        self.last_seq = last;
        Ok(ends)
    }

    fn compact_values(
        &mut self,
        rows_max: usize,
        fate: &mut dyn FnMut(&str, &[u8]) -> Fate,
    ) -> Result<Compacted, StoreError> {
        let tx = self.connection.transaction().map_err(io)?;
        // Rows are read one at a time: a step that finds its first row not ready reads no more.
        let (mut through, mut rows_taken, mut entries) = (None, 0, Vec::new());
        let mut fates = Vec::new();
        for_each_value_row(&tx, Some(rows_max), |seq, row| {
            let row_fates: Vec<Fate> = row.iter().map(|(k, v)| fate(k, v)).collect();
            if row_fates.contains(&Fate::Wait) {
                return Ok(false);
            }
            (through, rows_taken) = (Some(seq), rows_taken + 1);
            entries.extend(row);
            fates.extend(row_fates);
            Ok(true)
        })?;
        let Some(through) = through else {
            return Ok(Compacted::default());
        };
        let judged: Vec<_> = entries.iter().zip(fates).collect();
        let kept = last_writes_kept(&judged);
        let compacted = Compacted {
            looked_at: judged.len(),
            dropped: judged.len() - kept.len(),
            more: rows_taken == rows_max,
        };
        if rows_taken == 1 && compacted.dropped == 0 {
            return Ok(compacted); // the step would rewrite the row as it is
        }
        // What is kept takes the place of the newest row it replaces, so every value written
        // after it still comes later, and wins, as before.
        tx.execute("DELETE FROM value_log WHERE seq <= ?1", [through])
            .map_err(io)?;
        if !kept.is_empty() {
            let entries = pack_values(kept);
            let crc = checksum("values", &entries);
            tx.execute(
                "INSERT INTO value_log (seq, entries, crc) VALUES (?1, ?2, ?3)",
                params![through, entries, crc],
            )
            .map_err(io)?;
        }
        tx.commit().map_err(io)?;
        Ok(compacted)
    }

    fn recover(&mut self) -> Result<Recovery, StoreError> {
        let mut recovery = Recovery::default();
        let dir = self.path.parent().expect("the log file is in a directory");
        // Made here if missing, so the reader below finds it.
        open_durable(&dir.join(SNAPSHOTS_FILE), SNAPSHOT_SCHEMA)?;
        recovery.snapshots = SqliteReader::open(dir)?.snapshots()?;
        recovery.values = value_rows(&self.connection)?;
        // Streams without a snapshot need the log from its start.
        let mut streams = self
            .connection
            .prepare("SELECT DISTINCT stream FROM log")
            .map_err(io)?;
        let mut streams_without_snapshot = false;
        for stream in streams
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(io)?
        {
            let stream = stream.map_err(io)?;
            if !recovery.snapshots.iter().any(|s| s.stream == stream) {
                streams_without_snapshot = true;
                break;
            }
        }
        drop(streams);
        let from = if streams_without_snapshot {
            0
        } else {
            recovery
                .snapshots
                .iter()
                .map(|s| s.through)
                .min()
                .unwrap_or(0)
        };
        let mut records = self
            .connection
            .prepare("SELECT seq, stream, payload, crc FROM log WHERE seq > ?1 ORDER BY seq")
            .map_err(io)?;
        let rows = records
            .query_map([from as i64], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Vec<u8>>(2)?,
                    row.get::<_, u32>(3)?,
                ))
            })
            .map_err(io)?;
        for row in rows {
            let (seq, stream, payload, crc) = row.map_err(io)?;
            if checksum(&stream, &payload) != crc {
                return Err(StoreError::Corrupt {
                    what: "record",
                    key: seq.to_string(),
                });
            }
            recovery.records.push(StoredRecord {
                seq: seq as u64,
                stream,
                payload,
            });
        }
        Ok(recovery)
    }
}

/// Sale snapshots in their own file, and a reader of the log to build them from, each on its
/// own connection: nothing here takes the log's write lock.
pub struct SqliteSnapshots {
    log: Connection,
    snapshots: Connection,
}

impl SqliteSnapshots {
    /// Opens the snapshot file of the log in `dir` (creating it if needed) and a reading
    /// connection to the log. The log must have been opened first.
    pub fn open(dir: &Path) -> Result<SqliteSnapshots, StoreError> {
        let log = Connection::open_with_flags(
            dir.join(LOG_FILE),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(io)?;
        let snapshots = open_durable(&dir.join(SNAPSHOTS_FILE), SNAPSHOT_SCHEMA)?;
        // Only this connection writes the file (and a tool an operator points at it); waiting
        // long for its lock holds nobody else up.
        snapshots
            .busy_timeout(std::time::Duration::from_secs(60))
            .map_err(io)?;
        Ok(SqliteSnapshots { log, snapshots })
    }

    /// The stream's newest snapshot (from either file) and its durable records after it.
    pub fn load_stream(
        &self,
        stream: &str,
    ) -> Result<(Option<StoredSnapshot>, Vec<StoredRecord>), StoreError> {
        let snapshot = [&self.log, &self.snapshots]
            .into_iter()
            .map(|connection| read_snapshots(connection, Some(stream)))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .max_by_key(|snapshot| snapshot.through);
        let through = snapshot.as_ref().map_or(0, |s| s.through);
        let mut query = self
            .log
            .prepare_cached(
                "SELECT seq, payload, crc FROM log WHERE stream = ?1 AND seq > ?2 ORDER BY seq",
            )
            .map_err(io)?;
        let rows = query
            .query_map(params![stream, through as i64], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, Vec<u8>>(1)?,
                    row.get::<_, u32>(2)?,
                ))
            })
            .map_err(io)?;
        let mut records = Vec::new();
        for row in rows {
            let (seq, payload, crc) = row.map_err(io)?;
            if checksum(stream, &payload) != crc {
                return Err(StoreError::Corrupt {
                    what: "record",
                    key: seq.to_string(),
                });
            }
            records.push(StoredRecord {
                seq: seq as u64,
                stream: stream.to_owned(),
                payload,
            });
        }
        Ok((snapshot, records))
    }

    /// Keeps `snapshot` durably, unless the stream already has one covering as much.
    pub fn save(&self, snapshot: &StoredSnapshot) -> Result<(), StoreError> {
        let crc = checksum(&snapshot.stream, &snapshot.payload);
        self.snapshots
            .execute(
                "INSERT INTO snapshot (stream, through, payload, crc) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (stream) DO UPDATE
                 SET through = excluded.through, payload = excluded.payload, crc = excluded.crc
                 WHERE excluded.through > snapshot.through",
                params![
                    snapshot.stream,
                    snapshot.through as i64,
                    snapshot.payload,
                    crc
                ],
            )
            .map_err(io)?;
        Ok(())
    }
}

/// Reads a data directory's log and snapshots and writes nothing, so it may look at the data of
/// a running server (for `holdfast log dump`).
pub struct SqliteReader {
    log: Connection,
    snapshots: Option<Connection>,
}

impl SqliteReader {
    pub fn open(dir: &Path) -> Result<SqliteReader, StoreError> {
        let read_only = |file: &str| {
            Connection::open_with_flags(
                dir.join(file),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| StoreError::Io(format!("{}: {e}", dir.join(file).display())))
        };
        let log = read_only(LOG_FILE)?;
        let snapshots = match dir.join(SNAPSHOTS_FILE).exists() {
            true => Some(read_only(SNAPSHOTS_FILE)?),
            false => None,
        };
        Ok(SqliteReader { log, snapshots })
    }

    /// Calls `each` with every record in log order, checksums verified.
    pub fn records(
        &self,
        mut each: impl FnMut(StoredRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut query = self
            .log
            .prepare("SELECT seq, stream, payload, crc FROM log ORDER BY seq")
            .map_err(io)?;
        let mut rows = query.query([]).map_err(io)?;
        while let Some(row) = rows.next().map_err(io)? {
            let (seq, stream, payload, crc): (i64, String, Vec<u8>, u32) = (
                row.get(0).map_err(io)?,
                row.get(1).map_err(io)?,
                row.get(2).map_err(io)?,
                row.get(3).map_err(io)?,
            );
            if checksum(&stream, &payload) != crc {
                return Err(StoreError::Corrupt {
                    what: "record",
                    key: seq.to_string(),
                });
            }
            each(StoredRecord {
                seq: seq as u64,
                stream,
                payload,
            })?;
        }
        Ok(())
    }

    /// The keyed values as stored, oldest first: a key written twice appears twice, and the
    /// later write is the one start-up keeps.
    pub fn values(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        value_rows(&self.log)
    }

    /// The newest snapshot of each stream, from either file.
    pub fn snapshots(&self) -> Result<Vec<StoredSnapshot>, StoreError> {
        let mut newest: HashMap<String, StoredSnapshot> = HashMap::new();
        for connection in std::iter::once(&self.log).chain(self.snapshots.as_ref()) {
            for snapshot in read_snapshots(connection, None)? {
                if newest
                    .get(&snapshot.stream)
                    .is_none_or(|kept| kept.through < snapshot.through)
                {
                    newest.insert(snapshot.stream.clone(), snapshot);
                }
            }
        }
        let mut snapshots: Vec<_> = newest.into_values().collect();
        snapshots.sort_by(|a, b| a.stream.cmp(&b.stream));
        Ok(snapshots)
    }
}

/// A connection in WAL mode whose every commit is synced, with `schema` in place.
fn open_durable(path: &Path, schema: &str) -> Result<Connection, StoreError> {
    let connection = Connection::open(path).map_err(io)?;
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .map_err(io)?;
    connection
        .pragma_update(None, "synchronous", "FULL")
        .map_err(io)?;
    connection.execute_batch(schema).map_err(io)?;
    Ok(connection)
}

/// Every snapshot in a `snapshot` table (or one stream's), checksums verified.
fn read_snapshots(
    connection: &Connection,
    stream: Option<&str>,
) -> Result<Vec<StoredSnapshot>, StoreError> {
    let mut query = connection
        .prepare_cached(
            "SELECT stream, through, payload, crc FROM snapshot WHERE ?1 IS NULL OR stream = ?1",
        )
        .map_err(io)?;
    let rows = query
        .query_map([stream], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, Vec<u8>>(2)?,
                row.get::<_, u32>(3)?,
            ))
        })
        .map_err(io)?;
    let mut snapshots = Vec::new();
    for row in rows {
        let (stream, through, payload, crc) = row.map_err(io)?;
        verify("snapshot", &stream, &payload, crc)?;
        snapshots.push(StoredSnapshot {
            stream,
            through: through as u64,
            payload,
        });
    }
    Ok(snapshots)
}

fn verify(what: &'static str, key: &str, payload: &[u8], crc: u32) -> Result<(), StoreError> {
    if checksum(key, payload) == crc {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            what,
            key: key.to_owned(),
        })
    }
}

/// The stored value rows, oldest first, checksums verified.
fn value_rows(connection: &Connection) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut values = Vec::new();
    for_each_value_row(connection, None, |_, row| {
        values.extend(row);
        Ok(true)
    })?;
    Ok(values)
}

/// Calls `each` with the stored value rows' sequence numbers and entries, oldest first (at most
/// `limit` rows), checksums verified, until it answers false.
fn for_each_value_row(
    connection: &Connection,
    limit: Option<usize>,
    mut each: impl FnMut(i64, Vec<(String, Vec<u8>)>) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let mut query = connection
        .prepare_cached("SELECT seq, entries, crc FROM value_log ORDER BY seq LIMIT ?1")
        .map_err(io)?;
    let mut rows = query.query([limit]).map_err(io)?;
    while let Some(row) = rows.next().map_err(io)? {
        let (seq, packed, crc): (i64, Vec<u8>, u32) = (
            row.get(0).map_err(io)?,
            row.get(1).map_err(io)?,
            row.get(2).map_err(io)?,
        );
        let corrupt = || StoreError::Corrupt {
            what: "values",
            key: seq.to_string(),
        };
        if checksum("values", &packed) != crc {
            return Err(corrupt());
        }
        let mut entries = Vec::new();
        unpack_values(&packed, &mut entries).ok_or_else(corrupt)?;
        if !each(seq, entries)? {
            break;
        }
    }
    Ok(())
}

/// `(u32 key length, key, u32 value length, value)*`, little-endian.
fn pack_values(values: Vec<&(String, Vec<u8>)>) -> Vec<u8> {
    let size: usize = values.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut packed = Vec::with_capacity(size);
    for (key, value) in values {
        for part in [key.as_bytes(), value.as_slice()] {
            let len = u32::try_from(part.len()).expect("a value fits in 4 GiB");
            packed.extend_from_slice(&len.to_le_bytes());
            packed.extend_from_slice(part);
        }
    }
    packed
}

fn unpack_values(mut packed: &[u8], into: &mut Vec<(String, Vec<u8>)>) -> Option<()> {
    fn take<'a>(packed: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(packed.get(..4)?.try_into().ok()?) as usize;
        let part = packed.get(4..4 + len)?;
        *packed = &packed[4 + len..];
        Some(part)
    }
    while !packed.is_empty() {
        let key = String::from_utf8(take(&mut packed)?.to_vec()).ok()?;
        let value = take(&mut packed)?.to_vec();
        into.push((key, value));
    }
    Some(())
}
