//! The requests and answers of the terminal calls, as both ends serialise them: the server
//! writes what the till reads, from the same types. Times are milliseconds since the epoch
//! (`_ms`), as in the journal.

use serde::{Deserialize, Serialize};

use super::{ChainHash, JournalEntry};

/// Limits on store-and-forward card payments, set by the operator per store and sent to every
/// till of that store with its sync answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// What a till must know of a scarce sale to sell it offline as the server would.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SaleTerms {
    pub price: u64,
    pub per_customer_limit: u32,
    pub opens_at_ms: i64,
    pub closes_at_ms: Option<i64>,
}

impl SaleTerms {
    /// Whether a unit may be sold at `at_ms`, by the sale's window.
    pub fn open_at(&self, at_ms: i64) -> bool {
        at_ms >= self.opens_at_ms && self.closes_at_ms.is_none_or(|c| at_ms < c)
    }
}

/// An item of a store's catalogue, as the server keeps it for every till of the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CatalogueItem {
    pub sku: String,
    pub name: String,
    pub price: u64,
    /// A scarce item sold out of an allotment of this sale; its price is the sale's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sale_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AllotmentRequest {
    pub sale_id: String,
    /// The allotment the terminal wants to hold from now on (0 returns everything).
    pub quantity: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AllotmentAnswer {
    pub sale_id: String,
    pub granted: u32,
    pub terms: SaleTerms,
}

/// One journal entry on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WireEntry {
    pub seq: u64,
    /// Hex hash of the previous entry (64 zeros before entry 1).
    pub prev: String,
    /// The entry exactly as the terminal journaled it; hashed as these UTF-8 bytes.
    pub body: String,
}

impl WireEntry {
    pub fn of(entry: &JournalEntry) -> WireEntry {
        WireEntry {
            seq: entry.seq,
            prev: entry.prev.to_hex(),
            body: String::from_utf8_lossy(&entry.body).into_owned(),
        }
    }

    /// `None` if `prev` is not a hash.
    pub fn into_entry(self) -> Option<JournalEntry> {
        Some(JournalEntry {
            seq: self.seq,
            prev: ChainHash::from_hex(&self.prev)?,
            body: self.body.into_bytes(),
        })
    }
}

/// What is waiting at a till, reported with every sync so the owner sees the shop from the
/// server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TillReport {
    pub unsynced: u64,
    pub cards_waiting: u64,
    pub cards_waiting_amount: u64,
    pub transfers_pending: u64,
    pub refunds_due: u64,
    /// Units left per scarce sale in this till's allotments.
    #[serde(default)]
    pub allotments: Vec<(String, u32)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncRequest {
    pub entries: Vec<WireEntry>,
    #[serde(default)]
    pub report: Option<TillReport>,
    /// The catalogue version the till has; the answer carries the catalogue when it is older.
    #[serde(default)]
    pub catalogue_version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncAnswer {
    pub acked_through: u64,
    pub head: String,
    /// The server's signature over `acked_through` and `head` (see `auth::receipt`).
    pub receipt: String,
    pub stopped: Option<String>,
    pub quarantined: Vec<u64>,
    #[serde(default)]
    pub flagged: Vec<u64>,
    /// Receivables customers have paid by link, so the till can close them.
    pub settled: Vec<String>,
    pub offline_card_limits: Option<OfflineCardLimits>,
    /// The store's catalogue, when the till's is out of date.
    #[serde(default)]
    pub catalogue: Option<StoreCatalogue>,
    /// Scarce sales whose pool ran dry: keep at most this many units, give back the rest.
    #[serde(default)]
    pub give_back: Vec<(String, u32)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoreCatalogue {
    pub version: u64,
    pub items: Vec<CatalogueItem>,
    /// Printed on receipts.
    #[serde(default)]
    pub business_number: Option<String>,
    /// Where a bank transfer goes, printed on its receipt.
    #[serde(default)]
    pub bank_account: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PaymentRequest {
    /// The till's own name for this payment; retries reuse it, so a card is charged once.
    pub reference: String,
    pub amount: i64,
    pub card_token: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PaymentAnswer {
    pub status: String,
    pub authorization_id: String,
    pub amount: u64,
}
