//! The terminal's journal: one SQLite file, WAL mode, `synchronous=FULL`, so a sale is on disk
//! before its receipt is printed. Entries are numbered from 1 and hash-chained
//! (`holdfast_core::terminal`), and the server's acknowledgement is recorded beside them.

use std::path::Path;

use holdfast_core::terminal::{ChainHash, JournalEntry};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Serialize, de::DeserializeOwned};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY,
    prev TEXT NOT NULL,
    body TEXT NOT NULL,
    hash TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS setting (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS catalogue (
    sku TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    price INTEGER NOT NULL,
    sale_id TEXT
);
CREATE TABLE IF NOT EXISTS allotment (sale_id TEXT PRIMARY KEY, remaining INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS receivable (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    phone TEXT NOT NULL,
    amount INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    settled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS offline_card (
    seq INTEGER PRIMARY KEY,
    amount INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    phone TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    forwarded INTEGER NOT NULL DEFAULT 0
);
";

pub struct Journal {
    connection: Connection,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub sku: String,
    pub name: String,
    pub price: u64,
    pub sale_id: Option<String>,
}

impl Journal {
    pub fn open(dir: &Path) -> anyhow::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let connection = Connection::open(dir.join("journal.db"))?;
        // The counter page and its background sync each have a connection; one waits briefly
        // for the other's write instead of failing.
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.execute_batch(SCHEMA)?;
        Ok(Journal { connection })
    }

    pub fn connection(&mut self) -> &mut Connection {
        &mut self.connection
    }

    pub fn read(&self) -> &Connection {
        &self.connection
    }

    pub fn setting<T: DeserializeOwned>(&self, key: &str) -> anyhow::Result<Option<T>> {
        let raw: Option<String> = self
            .connection
            .query_row("SELECT value FROM setting WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()?;
        Ok(raw.map(|r| serde_json::from_str(&r)).transpose()?)
    }

    pub fn set_setting(&self, key: &str, value: &impl Serialize) -> anyhow::Result<()> {
        self.connection.execute(
            "INSERT OR REPLACE INTO setting (key, value) VALUES (?1, ?2)",
            params![key, serde_json::to_string(value)?],
        )?;
        Ok(())
    }

    pub fn put_item(&self, item: &Item) -> anyhow::Result<()> {
        self.connection.execute(
            "INSERT OR REPLACE INTO catalogue (sku, name, price, sale_id) VALUES (?1, ?2, ?3, ?4)",
            params![item.sku, item.name, item.price as i64, item.sale_id],
        )?;
        Ok(())
    }

    pub fn item(&self, sku: &str) -> anyhow::Result<Option<Item>> {
        Ok(self
            .connection
            .query_row(
                "SELECT sku, name, price, sale_id FROM catalogue WHERE sku = ?1",
                [sku],
                |row| {
                    Ok(Item {
                        sku: row.get(0)?,
                        name: row.get(1)?,
                        price: row.get::<_, i64>(2)? as u64,
                        sale_id: row.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn allotment(&self, sale_id: &str) -> anyhow::Result<u32> {
        let remaining: Option<i64> = self
            .connection
            .query_row(
                "SELECT remaining FROM allotment WHERE sale_id = ?1",
                [sale_id],
                |row| row.get(0),
            )
            .optional()?;
        Ok(remaining.unwrap_or(0) as u32)
    }

    pub fn set_allotment(&self, sale_id: &str, remaining: u32) -> anyhow::Result<()> {
        self.connection.execute(
            "INSERT OR REPLACE INTO allotment (sale_id, remaining) VALUES (?1, ?2)",
            params![sale_id, remaining],
        )?;
        Ok(())
    }

    /// The number and hash of the last entry.
    pub fn head(&self) -> anyhow::Result<(u64, ChainHash)> {
        let last: Option<(i64, String)> = self
            .connection
            .query_row(
                "SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        Ok(match last {
            None => (0, ChainHash::GENESIS),
            Some((seq, hash)) => (
                seq as u64,
                ChainHash::from_hex(&hash)
                    .ok_or_else(|| anyhow::anyhow!("damaged hash at {seq}"))?,
            ),
        })
    }

    /// Entries after `acked`, oldest first, at most `limit`.
    pub fn after(&self, acked: u64, limit: usize) -> anyhow::Result<Vec<JournalEntry>> {
        let mut statement = self
            .connection
            .prepare("SELECT seq, prev, body FROM journal WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let rows = statement.query_map(params![acked as i64, limit as i64], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        let mut entries = Vec::new();
        for row in rows {
            let (seq, prev, body) = row?;
            let prev =
                ChainHash::from_hex(&prev).ok_or_else(|| anyhow::anyhow!("damaged entry {seq}"))?;
            entries.push(JournalEntry {
                seq: seq as u64,
                prev,
                body: body.into_bytes(),
            });
        }
        Ok(entries)
    }

    pub fn acked(&self) -> anyhow::Result<u64> {
        Ok(self.setting::<u64>("acked_through")?.unwrap_or(0))
    }

    pub fn entry_count(&self) -> anyhow::Result<u64> {
        Ok(self.head()?.0)
    }
}

/// Appends an entry inside `tx`, continuing the chain; returns its number.
pub fn append(tx: &rusqlite::Transaction<'_>, body: &str, at_millis: i64) -> anyhow::Result<u64> {
    let last: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let (seq, prev) = match last {
        None => (1u64, ChainHash::GENESIS),
        Some((seq, hash)) => (
            seq as u64 + 1,
            ChainHash::from_hex(&hash).ok_or_else(|| anyhow::anyhow!("damaged hash"))?,
        ),
    };
    let hash = ChainHash::of(&prev, seq, body.as_bytes());
    tx.execute(
        "INSERT INTO journal (seq, prev, body, hash, at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![seq as i64, prev.to_hex(), body, hash.to_hex(), at_millis],
    )?;
    Ok(seq)
}
