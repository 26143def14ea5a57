//! Ringing up a sale. Everything one sale changes — the journal entry, the allotment it uses,
//! what its buyer took, the receivable, stored card or transfer it creates — is written in one
//! transaction, synced, before the receipt exists.
//!
//! The rules a web sale keeps hold at the counter too, on what the till can see: a scarce item
//! sells only inside its sale's window (by the server's time as the till last learned it), at
//! the sale's price, within the sale's per-person limit — counted per line, and per buyer
//! across this till's sales when the buyer's phone is recorded. The server counts again, across
//! every till and the web, when the till syncs.

use std::collections::BTreeMap;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, OsRng};
use chacha20poly1305::{AeadCore, ChaCha20Poly1305, Key, Nonce};
use holdfast_core::normalise_phone;
use holdfast_core::terminal::entry::{EntryBody, EntryLine, EntryTender};
use holdfast_core::terminal::wire::OfflineCardLimits;

use crate::journal::{Creates, Item, Journal, NewSale};

/// How a customer pays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tender {
    Cash,
    /// Authorised online before the sale was journaled, under the till's `reference`.
    Card {
        authorization: String,
        reference: String,
    },
    /// Taken with the network down: the card is sealed on disk and authorised later. The phone
    /// is how the customer is reached if the card is declined after the fact.
    CardOffline {
        card_token: String,
        phone: String,
    },
    /// Recorded as pending until the owner confirms the money arrived.
    BankTransfer,
    /// The customer leaves a phone number and pays later by a link.
    PayLater {
        phone: String,
    },
}

impl Tender {
    fn phone(&self) -> Option<&str> {
        match self {
            Tender::CardOffline { phone, .. } | Tender::PayLater { phone } => Some(phone),
            _ => None,
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
    #[error("'{sku}' is not on sale now (its sale opens at {opens_at} and may have closed)")]
    NotOnSale { sku: String, opens_at: String },
    #[error("'{sku}' is limited to {limit} per person; this buyer would have {would_have}")]
    LimitExceeded {
        sku: String,
        limit: u32,
        would_have: u32,
    },
    #[error("offline card limit: {0}")]
    OfflineCardLimit(String),
    #[error("a pay-later or offline card sale needs the customer's phone number")]
    PhoneRequired,
    #[error("'{0}' is not a phone number")]
    InvalidPhone(String),
}

pub struct Line {
    pub sku: String,
    pub quantity: u32,
}

/// A sale as the cashier rings it up.
pub struct Basket {
    pub lines: Vec<Line>,
    /// The buyer's phone for a cash, card or transfer sale of a scarce item, when given: the
    /// per-person limit counts it here and on the server.
    pub buyer_phone: Option<String>,
}

impl Basket {
    pub fn of(lines: Vec<Line>) -> Basket {
        Basket {
            lines,
            buyer_phone: None,
        }
    }
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

fn entry_tender(tender: &Tender, receivable: Option<&str>) -> EntryTender {
    match tender {
        Tender::Cash => EntryTender::Cash,
        Tender::Card { authorization, .. } => EntryTender::Card {
            authorization: authorization.clone(),
        },
        // The journal (which is synced and may be read) never holds card data.
        Tender::CardOffline { phone, .. } => EntryTender::CardOffline {
            phone: phone.clone(),
        },
        Tender::BankTransfer => EntryTender::BankTransfer { reference: None },
        Tender::PayLater { phone } => EntryTender::PayLater {
            phone: phone.clone(),
            receivable: receivable.map(str::to_owned),
        },
    }
}

/// A basket priced and checked against everything the till knows.
pub struct Priced {
    items: Vec<(Item, u32)>,
    pub total: u64,
    /// Units per scarce sale.
    allotted: BTreeMap<String, u32>,
    /// The buyer's normalised phone, when known.
    buyer: Option<String>,
}

/// What `basket` costs, paid with `tender` at `now_millis`, or why it cannot be sold.
pub fn price(
    journal: &Journal,
    basket: &Basket,
    tender: &Tender,
    now_millis: i64,
) -> anyhow::Result<Result<Priced, Refusal>> {
    let buyer = match buyer_phone(basket, tender) {
        Ok(buyer) => buyer,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let mut items = Vec::new();
    let mut allotted: BTreeMap<String, u32> = BTreeMap::new();
    let mut total = 0u64;
    for line in &basket.lines {
        if line.quantity == 0 {
            return Ok(Err(Refusal::Quantity));
        }
        let Some(item) = journal.item(&line.sku)? else {
            return Ok(Err(Refusal::UnknownItem(line.sku.clone())));
        };
        if let Some(sale_id) = &item.sale_id {
            let units = allotted.entry(sale_id.clone()).or_default();
            *units = units.saturating_add(line.quantity);
        }
        total = total.saturating_add(item.price.saturating_mul(u64::from(line.quantity)));
        items.push((item, line.quantity));
    }
    for (sale_id, &asked) in &allotted {
        let sku = items
            .iter()
            .find(|(item, _)| item.sale_id.as_ref() == Some(sale_id))
            .map(|(item, _)| item.sku.clone())
            .unwrap_or_default();
        if let Some(refusal) =
            scarce_refusal(journal, sale_id, &sku, asked, buyer.as_deref(), now_millis)?
        {
            return Ok(Err(refusal));
        }
    }
    Ok(Ok(Priced {
        items,
        total,
        allotted,
        buyer,
    }))
}

/// The buyer's normalised phone: given for the sale, or the tender's.
fn buyer_phone(basket: &Basket, tender: &Tender) -> Result<Option<String>, Refusal> {
    if let Some(phone) = tender.phone()
        && phone.trim().is_empty()
    {
        return Err(Refusal::PhoneRequired);
    }
    match basket.buyer_phone.as_deref().or(tender.phone()) {
        None => Ok(None),
        Some(raw) => normalise_phone(raw)
            .map(Some)
            .map_err(|_| Refusal::InvalidPhone(raw.to_owned())),
    }
}

fn scarce_refusal(
    journal: &Journal,
    sale_id: &str,
    sku: &str,
    asked: u32,
    buyer: Option<&str>,
    now_millis: i64,
) -> anyhow::Result<Option<Refusal>> {
    let allotment = journal.allotment(sale_id)?;
    let left = allotment.as_ref().map_or(0, |a| a.remaining);
    if asked > left {
        return Ok(Some(Refusal::AllotmentExhausted {
            sku: sku.to_owned(),
            left,
        }));
    }
    let Some(terms) = allotment.and_then(|a| a.terms) else {
        return Ok(None);
    };
    if !terms.open_at(now_millis) {
        let opens_at = chrono::DateTime::from_timestamp_millis(terms.opens_at_ms)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        return Ok(Some(Refusal::NotOnSale {
            sku: sku.to_owned(),
            opens_at,
        }));
    }
    let before = match buyer {
        Some(phone) => journal.bought_here(sale_id, phone)?,
        None => 0,
    };
    let would_have = before.saturating_add(asked);
    if would_have > terms.per_customer_limit {
        return Ok(Some(Refusal::LimitExceeded {
            sku: sku.to_owned(),
            limit: terms.per_customer_limit,
            would_have,
        }));
    }
    Ok(None)
}

/// What `basket` would cost, or why it cannot be sold (for an online card, before asking).
pub fn quote(
    journal: &Journal,
    basket: &Basket,
    now_millis: i64,
) -> anyhow::Result<Result<u64, Refusal>> {
    Ok(price(journal, basket, &Tender::Cash, now_millis)?.map(|p| p.total))
}

/// Rings up a sale. Refusals change nothing; an accepted sale is durable when this returns.
pub fn sell(
    journal: &mut Journal,
    card_key: &Key,
    basket: &Basket,
    tender: Tender,
    now_millis: i64,
) -> anyhow::Result<Result<Sold, Refusal>> {
    let priced = match price(journal, basket, &tender, now_millis)? {
        Ok(priced) => priced,
        Err(refusal) => return Ok(Err(refusal)),
    };
    if matches!(tender, Tender::CardOffline { .. }) {
        let limits: OfflineCardLimits = journal.setting("offline_card_limits")?.unwrap_or_default();
        if let Some(refusal) = offline_card_refusal(journal, &limits, priced.total, now_millis)? {
            return Ok(Err(refusal));
        }
    }
    let receivable = matches!(tender, Tender::PayLater { .. }).then(new_receivable_id);
    let body = EntryBody {
        lines: priced
            .items
            .iter()
            .map(|(item, quantity)| EntryLine {
                sku: item.sku.clone(),
                name: item.name.clone(),
                quantity: *quantity,
                unit_price: item.price,
                sale_id: item.sale_id.clone(),
            })
            .collect(),
        total: priced.total,
        tender: Some(entry_tender(&tender, receivable.as_deref())),
        at: now_millis,
        // The tender's phone is in the tender already.
        buyer_phone: basket
            .buyer_phone
            .clone()
            .filter(|_| tender.phone().is_none()),
        ..EntryBody::default()
    };
    let creates = match &tender {
        Tender::PayLater { phone } => Creates::Receivable {
            id: receivable
                .clone()
                .expect("a pay-later sale has a receivable"),
            phone: phone.clone(),
        },
        Tender::CardOffline { card_token, phone } => Creates::StoredCard {
            sealed: seal(card_key, card_token.as_bytes()),
            phone: phone.clone(),
        },
        Tender::BankTransfer => Creates::BankTransfer,
        Tender::Card { reference, .. } => Creates::CardSold {
            reference: reference.clone(),
        },
        Tender::Cash => Creates::Nothing,
    };
    let seq = journal.record_sale(&NewSale {
        body: body.to_json(),
        at: now_millis,
        total: priced.total,
        allotted: priced.allotted.into_iter().collect(),
        buyer_phone: priced.buyer,
        creates,
    })?;
    let lines = priced
        .items
        .into_iter()
        .map(|(item, q)| (item.name, q, item.price))
        .collect();
    Ok(Ok(Sold {
        seq,
        lines,
        total: priced.total,
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
    let (count, sum, oldest) = journal.stored_card_totals()?;
    let refusal = if count >= u64::from(limits.outstanding_count_max) {
        Some(format!(
            "{count} offline card payments are already waiting (at most {})",
            limits.outstanding_count_max
        ))
    } else if sum.saturating_add(amount) > limits.outstanding_total_max {
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
