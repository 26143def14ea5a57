//! Ringing up a sale. Everything one sale changes — the journal entry, the allotment it uses,
//! the receivable or the stored card it creates — is written in one transaction, synced, before
//! the receipt exists.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, OsRng};
use chacha20poly1305::{AeadCore, ChaCha20Poly1305, Key, Nonce};
use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::journal::{Item, Journal, append};

/// How a customer pays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tender {
    Cash,
    /// Authorised and captured online before the sale was journaled.
    Card {
        authorization: String,
    },
    /// Taken with the network down: the card is sealed on disk and authorised later. The phone
    /// is how the customer is reached if the card is declined after the fact.
    CardOffline {
        card_token: String,
        phone: String,
    },
    /// Recorded as pending until the bank confirms it.
    BankTransfer,
    /// The customer leaves a phone number and pays later by a link.
    PayLater {
        phone: String,
    },
}

/// Limits on store-and-forward card payments, as the operator sets them for the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineCardLimits {
    pub per_sale_max: u64,
    pub outstanding_total_max: u64,
    pub outstanding_count_max: u32,
    /// Offline card payments older than this are refused (the major vendors use 24 hours).
    pub age_max_hours: u32,
}

impl Default for OfflineCardLimits {
    fn default() -> Self {
        OfflineCardLimits {
            per_sale_max: 100_000,
            outstanding_total_max: 1_000_000,
            outstanding_count_max: 50,
            age_max_hours: 24,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("unknown item '{0}'")]
    UnknownItem(String),
    #[error("quantity must be at least 1")]
    Quantity,
    #[error(
        "only {left} of '{sku}' left in this till's allotment; ask the server for more when online"
    )]
    AllotmentExhausted { sku: String, left: u32 },
    #[error("offline card limit: {0}")]
    OfflineCardLimit(String),
    #[error("a pay-later or offline card sale needs the customer's phone number")]
    PhoneRequired,
}

pub struct Line {
    pub sku: String,
    pub quantity: u32,
}

/// What was sold, as printed on the receipt.
#[derive(Debug, Clone)]
pub struct Sold {
    pub seq: u64,
    pub lines: Vec<(String, u32, u64)>,
    pub total: u64,
    pub tender: Tender,
    pub receivable: Option<String>,
    pub at_millis: i64,
}

/// A receivable's id. It is the credential in the customer's pay link, so it is unguessable.
pub fn new_receivable_id() -> String {
    format!("R-{}", hex::encode(rand::random::<[u8; 16]>()))
}

/// The key that seals stored cards, kept in its own file beside (never inside) the journal.
pub fn card_key(dir: &Path) -> anyhow::Result<Key> {
    let path = dir.join("card.key");
    match std::fs::read(&path) {
        Ok(bytes) if bytes.len() == 32 => {
            let array: [u8; 32] = bytes.try_into().expect("checked length");
            Ok(Key::from(array))
        }
        Ok(_) => anyhow::bail!("{} is damaged", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = ChaCha20Poly1305::generate_key(&mut OsRng);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            use std::io::Write;
            let mut file = options.open(&path)?;
            file.write_all(&key)?;
            file.sync_all()?;
            Ok(key)
        }
        Err(e) => Err(e.into()),
    }
}

/// `nonce ‖ ciphertext`, authenticated: a changed byte fails to open.
pub fn seal(key: &Key, plaintext: &[u8]) -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new(key);
    let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
    let mut sealed = nonce.to_vec();
    sealed.extend(
        cipher
            .encrypt(&nonce, plaintext)
            .expect("encryption of a small buffer"),
    );
    sealed
}

pub fn open(key: &Key, sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < 12 {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().ok()?;
    ChaCha20Poly1305::new(key)
        .decrypt(&Nonce::from(nonce), ciphertext)
        .ok()
}

fn tender_json(tender: &Tender, receivable: Option<&str>) -> serde_json::Value {
    match tender {
        Tender::Cash => json!({"kind": "cash"}),
        Tender::Card { authorization } => json!({"kind": "card", "authorization": authorization}),
        // The journal (which is synced and may be read) never holds card data.
        Tender::CardOffline { phone, .. } => json!({"kind": "card_offline", "phone": phone}),
        Tender::BankTransfer => json!({"kind": "bank_transfer", "status": "pending"}),
        Tender::PayLater { phone } => {
            json!({"kind": "pay_later", "phone": phone, "receivable": receivable})
        }
    }
}

/// What `lines` cost at this till's prices, or why they cannot be sold (unknown item, not
/// enough allotment left).
pub fn quote(journal: &Journal, lines: &[Line]) -> anyhow::Result<Result<u64, Refusal>> {
    Ok(price(journal, lines)?.map(|(_, total)| total))
}

type Priced = (Vec<(Item, u32)>, u64);

fn price(journal: &Journal, lines: &[Line]) -> anyhow::Result<Result<Priced, Refusal>> {
    let mut priced = Vec::new();
    let mut total = 0u64;
    for line in lines {
        if line.quantity == 0 {
            return Ok(Err(Refusal::Quantity));
        }
        let Some(item) = journal.item(&line.sku)? else {
            return Ok(Err(Refusal::UnknownItem(line.sku.clone())));
        };
        if let Some(sale_id) = &item.sale_id {
            let asked: u32 = lines
                .iter()
                .filter(|l| l.sku == line.sku)
                .map(|l| l.quantity)
                .sum();
            let left = journal.allotment(sale_id)?;
            if asked > left {
                return Ok(Err(Refusal::AllotmentExhausted {
                    sku: line.sku.clone(),
                    left,
                }));
            }
        }
        total += item.price * u64::from(line.quantity);
        priced.push((item, line.quantity));
    }
    Ok(Ok((priced, total)))
}

/// Rings up a sale. Refusals change nothing; an accepted sale is durable when this returns.
pub fn sell(
    journal: &mut Journal,
    card_key: &Key,
    lines: &[Line],
    tender: Tender,
    now_millis: i64,
) -> anyhow::Result<Result<Sold, Refusal>> {
    let limits: OfflineCardLimits = journal.setting("offline_card_limits")?.unwrap_or_default();
    let (priced, total) = match price(journal, lines)? {
        Ok(priced) => priced,
        Err(refusal) => return Ok(Err(refusal)),
    };
    if let Tender::PayLater { phone } | Tender::CardOffline { phone, .. } = &tender
        && phone.trim().is_empty()
    {
        return Ok(Err(Refusal::PhoneRequired));
    }
    if matches!(tender, Tender::CardOffline { .. })
        && let Some(refusal) = offline_card_refusal(journal, &limits, total, now_millis)?
    {
        return Ok(Err(refusal));
    }
    let receivable = matches!(tender, Tender::PayLater { .. }).then(new_receivable_id);
    let body = json!({
        "lines": priced.iter().map(|(item, quantity)| json!({
            "sku": item.sku, "name": item.name, "quantity": quantity, "unit_price": item.price, "sale_id": item.sale_id,
        })).collect::<Vec<_>>(),
        "total": total,
        "tender": tender_json(&tender, receivable.as_deref()),
        "at": now_millis,
    })
    .to_string();
    let tx = journal.connection().transaction()?;
    let seq = append(&tx, &body, now_millis)?;
    for (item, quantity) in &priced {
        if let Some(sale_id) = &item.sale_id {
            tx.execute(
                "UPDATE allotment SET remaining = remaining - ?1 WHERE sale_id = ?2",
                params![quantity, sale_id],
            )?;
        }
    }
    match &tender {
        Tender::PayLater { phone } => {
            tx.execute(
                "INSERT INTO receivable (id, seq, phone, amount, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![receivable, seq as i64, phone, total as i64, now_millis],
            )?;
        }
        Tender::CardOffline { card_token, phone } => {
            tx.execute(
                "INSERT INTO offline_card (seq, amount, sealed, phone, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![seq as i64, total as i64, seal(card_key, card_token.as_bytes()), phone, now_millis],
            )?;
        }
        Tender::Cash | Tender::Card { .. } | Tender::BankTransfer => {}
    }
    tx.commit()?;
    let lines = priced
        .into_iter()
        .map(|(item, q)| (item.name, q, item.price))
        .collect();
    Ok(Ok(Sold {
        seq,
        lines,
        total,
        tender,
        receivable,
        at_millis: now_millis,
    }))
}

fn offline_card_refusal(
    journal: &Journal,
    limits: &OfflineCardLimits,
    amount: u64,
    now_millis: i64,
) -> anyhow::Result<Option<Refusal>> {
    if amount > limits.per_sale_max {
        return Ok(Some(Refusal::OfflineCardLimit(format!(
            "{amount} is over the {} allowed per offline card sale",
            limits.per_sale_max
        ))));
    }
    let oldest_allowed = now_millis - i64::from(limits.age_max_hours) * 3_600_000;
    let (count, sum, oldest): (i64, i64, Option<i64>) = journal.read().query_row(
        "SELECT COUNT(*), COALESCE(SUM(amount), 0), MIN(created_at) FROM offline_card WHERE forwarded = 0",
        [],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?;
    let refusal = if count as u64 >= u64::from(limits.outstanding_count_max) {
        Some(format!(
            "{count} offline card payments are already waiting (at most {})",
            limits.outstanding_count_max
        ))
    } else if sum as u64 + amount > limits.outstanding_total_max {
        Some(format!(
            "{sum} is already waiting; at most {} may be outstanding",
            limits.outstanding_total_max
        ))
    } else if oldest.is_some_and(|o| o < oldest_allowed) {
        Some(format!(
            "a stored card payment is older than {} hours; reconnect first",
            limits.age_max_hours
        ))
    } else {
        None
    };
    Ok(refusal.map(Refusal::OfflineCardLimit))
}
