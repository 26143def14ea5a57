//! The terminal's journal: one SQLite file, WAL mode, `synchronous=FULL`, so a sale is on disk
//! before its receipt is printed. Entries are numbered from 1 and hash-chained
//! (`holdfast_core::terminal`), and the server's acknowledgement is recorded beside them.
//!
//! This module owns every SQL statement the till runs: the rest of the agent asks it in
//! Rust. Several processes may share the file (the counter page, a background sync, a manual
//! `sync`); anything that must happen once — forwarding a stored card, resolving a card attempt
//! — is decided inside an immediate (write-locked) transaction.

use std::path::Path;

use holdfast_core::terminal::entry::EntryBody;
use holdfast_core::terminal::wire::{CatalogueItem, SaleTerms};
use holdfast_core::terminal::{ChainHash, JournalEntry};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::{Serialize, de::DeserializeOwned};

/// Each step moves a journal from the version before it; `PRAGMA user_version` says how far a
/// file is. A till updated in the field opens its old journal and carries on.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE journal (
        seq INTEGER PRIMARY KEY,
        prev TEXT NOT NULL,
        body TEXT NOT NULL,
        hash TEXT NOT NULL,
        at INTEGER NOT NULL
    );
    CREATE TABLE setting (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE catalogue (
        sku TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        price INTEGER NOT NULL,
        sale_id TEXT
    );
    CREATE TABLE allotment (sale_id TEXT PRIMARY KEY, remaining INTEGER NOT NULL);
    CREATE TABLE receivable (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        phone TEXT NOT NULL,
        amount INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        settled INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE offline_card (
        seq INTEGER PRIMARY KEY,
        amount INTEGER NOT NULL,
        sealed BLOB NOT NULL,
        phone TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        forwarded INTEGER NOT NULL DEFAULT 0
    );",
    // The sale's terms with its allotment; what each buyer took of a scarce sale here; online
    // card attempts journaled before the card network is asked; bank transfers to confirm;
    // where an item came from (the server's catalogue, or typed in at this till).
    "ALTER TABLE allotment ADD COLUMN terms TEXT;
    CREATE TABLE buyer_usage (
        sale_id TEXT NOT NULL,
        phone TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        PRIMARY KEY (sale_id, phone)
    );
    CREATE TABLE card_attempt (
        reference TEXT PRIMARY KEY,
        amount INTEGER NOT NULL,
        sale TEXT NOT NULL,
        sealed BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        authorization TEXT
    );
    CREATE TABLE bank_transfer (
        seq INTEGER PRIMARY KEY,
        amount INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        confirmed_at INTEGER
    );
    ALTER TABLE catalogue ADD COLUMN local INTEGER NOT NULL DEFAULT 1;",
];

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

/// A scarce sale's units this till may sell, and the terms they are sold under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allotment {
    pub sale_id: String,
    pub remaining: u32,
    /// Known once the server granted units with them (a till set up before knows none).
    pub terms: Option<SaleTerms>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OpenReceivable {
    pub id: String,
    pub seq: u64,
    pub phone: String,
    pub amount: u64,
    pub created_at: i64,
}

/// A stored card waiting to be forwarded. The card stays sealed until it is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCard {
    pub seq: u64,
    pub amount: u64,
    pub sealed: Vec<u8>,
    pub phone: String,
    pub created_at: i64,
}

/// An online card payment asked of the card network, journaled before it was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardAttempt {
    pub reference: String,
    pub amount: u64,
    /// The sale it pays for, as the lines to journal once approved.
    pub sale: String,
    pub sealed: Vec<u8>,
    pub created_at: i64,
    pub state: AttemptState,
    pub authorization: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptState {
    /// Asked, no answer known: resume it with the same reference.
    Pending,
    /// Approved and the sale journaled.
    Sold,
    Declined,
    /// Approved, but the customer had gone: the money is owed back.
    RefundDue,
    /// No server could be reached: nothing was asked.
    Unsent,
}

impl AttemptState {
    fn as_str(self) -> &'static str {
        match self {
            AttemptState::Pending => "pending",
            AttemptState::Sold => "sold",
            AttemptState::Declined => "declined",
            AttemptState::RefundDue => "refund_due",
            AttemptState::Unsent => "unsent",
        }
    }

    fn parse(raw: &str) -> AttemptState {
        match raw {
            "sold" => AttemptState::Sold,
            "declined" => AttemptState::Declined,
            "refund_due" => AttemptState::RefundDue,
            "unsent" => AttemptState::Unsent,
            _ => AttemptState::Pending,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PendingTransfer {
    pub seq: u64,
    pub amount: u64,
    pub created_at: i64,
}

/// What is waiting at this till, for `status`, the counter page and the server's view.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Waiting {
    pub entries: u64,
    pub unsynced: u64,
    pub cards_waiting: u64,
    pub cards_waiting_amount: u64,
    pub receivables_open: u64,
    pub receivables_owed: u64,
    pub transfers_pending: u64,
    pub refunds_due: u64,
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
        let mut journal = Journal { connection };
        journal.migrate()?;
        Ok(journal)
    }

    fn migrate(&mut self) -> anyhow::Result<()> {
        let tx = self.immediate()?;
        let version = tx.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
        // A journal from before versions had its tables already: adopt it as version 1.
        let untracked = version == 0
            && tx.query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'journal'",
                [],
                |r| r.get::<_, i64>(0),
            )? == 1;
        let start = if untracked { 1 } else { version };
        anyhow::ensure!(
            start <= MIGRATIONS.len(),
            "this journal was written by a newer holdfast-pos (version {start}); update this one"
        );
        for migration in &MIGRATIONS[start..] {
            tx.execute_batch(migration)?;
        }
        tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
        tx.commit()?;
        Ok(())
    }

    /// A transaction that holds the write lock from its start, so what it reads is still true
    /// when it writes, whatever other process shares the file.
    fn immediate(&mut self) -> rusqlite::Result<Transaction<'_>> {
        self.connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
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

    /// Adds or changes an item typed in at this till.
    pub fn put_item(&self, item: &Item) -> anyhow::Result<()> {
        self.connection.execute(
            "INSERT OR REPLACE INTO catalogue (sku, name, price, sale_id, local) VALUES (?1, ?2, ?3, ?4, 1)",
            params![item.sku, item.name, item.price as i64, item.sale_id],
        )?;
        Ok(())
    }

    /// Replaces the items that came from the server with `items`; items typed in here stay,
    /// unless the server now sells the same SKU.
    pub fn replace_server_catalogue(&mut self, items: &[CatalogueItem]) -> anyhow::Result<()> {
        let tx = self.immediate()?;
        tx.execute("DELETE FROM catalogue WHERE local = 0", [])?;
        for item in items {
            tx.execute(
                "INSERT OR REPLACE INTO catalogue (sku, name, price, sale_id, local) VALUES (?1, ?2, ?3, ?4, 0)",
                params![item.sku, item.name, item.price as i64, item.sale_id],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn item(&self, sku: &str) -> anyhow::Result<Option<Item>> {
        Ok(self
            .connection
            .query_row(
                "SELECT sku, name, price, sale_id FROM catalogue WHERE sku = ?1",
                [sku],
                item_row,
            )
            .optional()?)
    }

    pub fn catalogue(&self) -> anyhow::Result<Vec<Item>> {
        let mut statement = self
            .connection
            .prepare("SELECT sku, name, price, sale_id FROM catalogue ORDER BY name")?;
        let rows = statement.query_map([], item_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn allotment(&self, sale_id: &str) -> anyhow::Result<Option<Allotment>> {
        Ok(self
            .connection
            .query_row(
                "SELECT sale_id, remaining, terms FROM allotment WHERE sale_id = ?1",
                [sale_id],
                allotment_row,
            )
            .optional()?)
    }

    pub fn allotments(&self) -> anyhow::Result<Vec<Allotment>> {
        let mut statement = self
            .connection
            .prepare("SELECT sale_id, remaining, terms FROM allotment ORDER BY sale_id")?;
        let rows = statement.query_map([], allotment_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records what the server granted; with terms, the scarce item's price follows the sale's.
    pub fn set_allotment(
        &self,
        sale_id: &str,
        remaining: u32,
        terms: Option<&SaleTerms>,
    ) -> anyhow::Result<()> {
        let terms_json = terms.map(serde_json::to_string).transpose()?;
        self.connection.execute(
            "INSERT INTO allotment (sale_id, remaining, terms) VALUES (?1, ?2, ?3)
             ON CONFLICT (sale_id) DO UPDATE SET remaining = ?2, terms = COALESCE(?3, terms)",
            params![sale_id, remaining, terms_json],
        )?;
        if let Some(terms) = terms {
            self.connection.execute(
                "UPDATE catalogue SET price = ?1 WHERE sale_id = ?2",
                params![terms.price as i64, sale_id],
            )?;
        }
        Ok(())
    }

    /// Units of `sale_id` this till sold to the buyer with this normalised phone.
    pub fn bought_here(&self, sale_id: &str, phone: &str) -> anyhow::Result<u32> {
        let quantity: Option<i64> = self
            .connection
            .query_row(
                "SELECT quantity FROM buyer_usage WHERE sale_id = ?1 AND phone = ?2",
                params![sale_id, phone],
                |r| r.get(0),
            )
            .optional()?;
        Ok(quantity.unwrap_or(0) as u32)
    }

    /// Starts this (empty) journal after entry `through` whose hash is `head`: a till
    /// registered again continues the chain the server already holds, acknowledged so far.
    pub fn continue_chain(&mut self, through: u64, head: ChainHash) -> anyhow::Result<()> {
        let tx = self.immediate()?;
        let entries: i64 = tx.query_row("SELECT COUNT(*) FROM journal", [], |r| r.get(0))?;
        anyhow::ensure!(
            entries == 0,
            "only an empty journal can continue another's chain"
        );
        let start = serde_json::to_string(&(through, head.to_hex()))?;
        tx.execute(
            "INSERT OR REPLACE INTO setting (key, value) VALUES ('chain_start', ?1), ('acked_through', ?2)",
            params![start, through.to_string()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The number and hash of the last entry.
    pub fn head(&self) -> anyhow::Result<(u64, ChainHash)> {
        head(&self.connection)
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

    /// The body of entry `seq`.
    pub fn entry(&self, seq: u64) -> anyhow::Result<Option<String>> {
        Ok(self
            .connection
            .query_row(
                "SELECT body FROM journal WHERE seq = ?1",
                [seq as i64],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Every journal body, oldest first (for tests and audits).
    pub fn bodies(&self) -> anyhow::Result<Vec<String>> {
        let mut statement = self
            .connection
            .prepare("SELECT body FROM journal ORDER BY seq")?;
        let rows = statement.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn acked(&self) -> anyhow::Result<u64> {
        Ok(self.setting::<u64>("acked_through")?.unwrap_or(0))
    }

    pub fn entry_count(&self) -> anyhow::Result<u64> {
        Ok(self.head()?.0)
    }

    /// Journals a sale and everything it changes, in one transaction: the entry, the allotment
    /// it used, what its buyer took of each scarce sale, and the receivable, stored card, card
    /// attempt or bank transfer it creates. Durable when this returns.
    pub fn record_sale(&mut self, sale: &NewSale) -> anyhow::Result<u64> {
        let tx = self.immediate()?;
        let seq = append(&tx, &sale.body, sale.at)?;
        for (sale_id, quantity) in &sale.allotted {
            tx.execute(
                "UPDATE allotment SET remaining = remaining - ?1 WHERE sale_id = ?2",
                params![quantity, sale_id],
            )?;
            if let Some(phone) = &sale.buyer_phone {
                tx.execute(
                    "INSERT INTO buyer_usage (sale_id, phone, quantity) VALUES (?1, ?2, ?3)
                     ON CONFLICT (sale_id, phone) DO UPDATE SET quantity = quantity + ?3",
                    params![sale_id, phone, quantity],
                )?;
            }
        }
        let amount = sale.total as i64;
        match &sale.creates {
            Creates::Nothing => {}
            Creates::Receivable { id, phone } => {
                tx.execute(
                    "INSERT INTO receivable (id, seq, phone, amount, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, seq as i64, phone, amount, sale.at],
                )?;
            }
            Creates::StoredCard { sealed, phone } => {
                tx.execute(
                    "INSERT INTO offline_card (seq, amount, sealed, phone, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![seq as i64, amount, sealed, phone, sale.at],
                )?;
            }
            Creates::BankTransfer => {
                tx.execute(
                    "INSERT INTO bank_transfer (seq, amount, created_at) VALUES (?1, ?2, ?3)",
                    params![seq as i64, amount, sale.at],
                )?;
            }
            Creates::CardSold { reference } => {
                let changed = tx.execute(
                    "UPDATE card_attempt SET state = 'sold' WHERE reference = ?1 AND state = 'pending'",
                    [reference],
                )?;
                anyhow::ensure!(changed == 1, "card attempt {reference} was settled already");
            }
        }
        tx.commit()?;
        Ok(seq)
    }

    /// Stored cards not yet forwarded, oldest first.
    pub fn stored_cards(&self) -> anyhow::Result<Vec<StoredCard>> {
        let mut statement = self.connection.prepare(
            "SELECT seq, amount, sealed, phone, created_at FROM offline_card WHERE forwarded = 0 ORDER BY seq",
        )?;
        let rows = statement.query_map([], |r| {
            Ok(StoredCard {
                seq: r.get::<_, i64>(0)? as u64,
                amount: r.get::<_, i64>(1)? as u64,
                sealed: r.get(2)?,
                phone: r.get(3)?,
                created_at: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Outstanding stored cards: how many, how much, and when the oldest was taken.
    pub fn stored_card_totals(&self) -> anyhow::Result<(u64, u64, Option<i64>)> {
        let (count, sum, oldest): (i64, i64, Option<i64>) = self.connection.query_row(
            "SELECT COUNT(*), COALESCE(SUM(amount), 0), MIN(created_at) FROM offline_card WHERE forwarded = 0",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        Ok((count as u64, sum as u64, oldest))
    }

    /// Records what the card network said of a stored card, exactly once however many syncs
    /// forwarded it at the same time: the first to record it wins, and a decline becomes one
    /// receivable (journaled, so the server offers its pay link). The sealed card is erased.
    /// Returns false when another sync had recorded it already.
    pub fn card_forwarded(
        &mut self,
        card: &StoredCard,
        declined: Option<&DeclinedCard>,
    ) -> anyhow::Result<bool> {
        let tx = self.immediate()?;
        let claimed = tx.execute(
            "UPDATE offline_card SET forwarded = 1, sealed = X'' WHERE seq = ?1 AND forwarded = 0",
            [card.seq as i64],
        )?;
        if claimed == 0 {
            return Ok(false);
        }
        if let Some(declined) = declined {
            let entry = append(&tx, &declined.body, declined.at)?;
            tx.execute(
                "INSERT INTO receivable (id, seq, phone, amount, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![declined.id, entry as i64, card.phone, card.amount as i64, card.created_at],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    pub fn open_receivables(&self) -> anyhow::Result<Vec<OpenReceivable>> {
        let mut statement = self.connection.prepare(
            "SELECT id, seq, phone, amount, created_at FROM receivable WHERE settled = 0 ORDER BY created_at",
        )?;
        let rows = statement.query_map([], |r| {
            Ok(OpenReceivable {
                id: r.get(0)?,
                seq: r.get::<_, i64>(1)? as u64,
                phone: r.get(2)?,
                amount: r.get::<_, i64>(3)? as u64,
                created_at: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Closes a receivable (paid by link, or paid at the counter). False if there is no open
    /// one with that id.
    pub fn settle_receivable(&self, id: &str) -> anyhow::Result<bool> {
        let changed = self.connection.execute(
            "UPDATE receivable SET settled = 1 WHERE id = ?1 AND settled = 0",
            [id],
        )?;
        Ok(changed == 1)
    }

    /// Journals an online card attempt before the card network is asked.
    pub fn begin_card_attempt(&mut self, attempt: &CardAttempt) -> anyhow::Result<()> {
        let tx = self.immediate()?;
        tx.execute(
            "INSERT INTO card_attempt (reference, amount, sale, sealed, created_at, state) VALUES (?1, ?2, ?3, ?4, ?5, 'pending')",
            params![attempt.reference, attempt.amount as i64, attempt.sale, attempt.sealed, attempt.created_at],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Card attempts in `state`, oldest first.
    pub fn card_attempts(&self, state: AttemptState) -> anyhow::Result<Vec<CardAttempt>> {
        let mut statement = self.connection.prepare(
            "SELECT reference, amount, sale, sealed, created_at, state, authorization FROM card_attempt WHERE state = ?1 ORDER BY created_at",
        )?;
        let rows = statement.query_map([state.as_str()], |r| {
            Ok(CardAttempt {
                reference: r.get(0)?,
                amount: r.get::<_, i64>(1)? as u64,
                sale: r.get(2)?,
                sealed: r.get(3)?,
                created_at: r.get(4)?,
                state: AttemptState::parse(&r.get::<_, String>(5)?),
                authorization: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Closes a pending attempt as declined, or as approved with no sale to show for it (the
    /// money is owed back). The sealed card is erased either way. False if it was not pending.
    pub fn end_card_attempt(
        &mut self,
        reference: &str,
        state: AttemptState,
        authorization: Option<&str>,
    ) -> anyhow::Result<bool> {
        let tx = self.immediate()?;
        let changed = tx.execute(
            "UPDATE card_attempt SET state = ?2, authorization = ?3, sealed = X'' WHERE reference = ?1 AND state = 'pending'",
            params![reference, state.as_str(), authorization],
        )?;
        tx.commit()?;
        Ok(changed == 1)
    }

    pub fn pending_transfers(&self) -> anyhow::Result<Vec<PendingTransfer>> {
        let mut statement = self.connection.prepare(
            "SELECT seq, amount, created_at FROM bank_transfer WHERE confirmed_at IS NULL ORDER BY seq",
        )?;
        let rows = statement.query_map([], |r| {
            Ok(PendingTransfer {
                seq: r.get::<_, i64>(0)? as u64,
                amount: r.get::<_, i64>(1)? as u64,
                created_at: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The owner saw the transfer of sale `seq` arrive: journaled (the server learns it on
    /// sync) and closed here, in one transaction. False if no such pending transfer.
    pub fn confirm_transfer(&mut self, seq: u64, at: i64) -> anyhow::Result<bool> {
        let tx = self.immediate()?;
        let changed = tx.execute(
            "UPDATE bank_transfer SET confirmed_at = ?2 WHERE seq = ?1 AND confirmed_at IS NULL",
            params![seq as i64, at],
        )?;
        if changed == 0 {
            return Ok(false);
        }
        let body = EntryBody {
            transfer_confirmed: Some(seq),
            at,
            ..EntryBody::default()
        };
        append(&tx, &body.to_json(), at)?;
        tx.commit()?;
        Ok(true)
    }

    /// What is waiting at this till.
    pub fn waiting(&self) -> anyhow::Result<Waiting> {
        let entries = self.head()?.0;
        let (cards, cards_amount, _) = self.stored_card_totals()?;
        let receivables = self.open_receivables()?;
        Ok(Waiting {
            entries,
            unsynced: entries - self.acked()?.min(entries),
            cards_waiting: cards,
            cards_waiting_amount: cards_amount,
            receivables_open: receivables.len() as u64,
            receivables_owed: receivables.iter().map(|r| r.amount).sum(),
            transfers_pending: self.pending_transfers()?.len() as u64,
            refunds_due: self.card_attempts(AttemptState::RefundDue)?.len() as u64,
        })
    }
}

/// Everything one sale writes, prepared by `counter::sell`.
pub struct NewSale {
    pub body: String,
    pub at: i64,
    pub total: u64,
    /// Units taken out of each scarce sale's allotment.
    pub allotted: Vec<(String, u32)>,
    /// The buyer's normalised phone, when known: counted against the per-person limit here.
    pub buyer_phone: Option<String>,
    pub creates: Creates,
}

pub enum Creates {
    Nothing,
    Receivable {
        id: String,
        phone: String,
    },
    StoredCard {
        sealed: Vec<u8>,
        phone: String,
    },
    BankTransfer,
    /// The approved online card attempt this sale completes.
    CardSold {
        reference: String,
    },
}

/// A stored card the card network declined: the receivable it becomes.
pub struct DeclinedCard {
    pub id: String,
    pub body: String,
    pub at: i64,
}

fn item_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
    Ok(Item {
        sku: row.get(0)?,
        name: row.get(1)?,
        price: row.get::<_, i64>(2)? as u64,
        sale_id: row.get(3)?,
    })
}

fn allotment_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Allotment> {
    let terms: Option<String> = row.get(2)?;
    Ok(Allotment {
        sale_id: row.get(0)?,
        remaining: row.get::<_, i64>(1)?.max(0) as u32,
        terms: terms.and_then(|t| serde_json::from_str(&t).ok()),
    })
}

/// The last entry's number and hash; with no entries, where the chain starts (entry 0 of a new
/// till, or the server's head for a till registered again).
fn head(connection: &Connection) -> anyhow::Result<(u64, ChainHash)> {
    let last: Option<(i64, String)> = connection
        .query_row(
            "SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let (seq, hash) = match last {
        Some((seq, hash)) => (seq, hash),
        None => {
            let start: Option<String> = connection
                .query_row(
                    "SELECT value FROM setting WHERE key = 'chain_start'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            match start
                .map(|s| serde_json::from_str::<(u64, String)>(&s))
                .transpose()?
            {
                Some((seq, hash)) => (seq as i64, hash),
                None => return Ok((0, ChainHash::GENESIS)),
            }
        }
    };
    Ok((
        seq as u64,
        ChainHash::from_hex(&hash).ok_or_else(|| anyhow::anyhow!("damaged hash at {seq}"))?,
    ))
}

/// Appends an entry inside `tx`, continuing the chain; returns its number.
fn append(tx: &Transaction<'_>, body: &str, at_millis: i64) -> anyhow::Result<u64> {
    let (last, prev) = head(tx)?;
    let seq = last + 1;
    let hash = ChainHash::of(&prev, seq, body.as_bytes());
    tx.execute(
        "INSERT INTO journal (seq, prev, body, hash, at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![seq as i64, prev.to_hex(), body, hash.to_hex(), at_millis],
    )?;
    Ok(seq)
}
