//! What a journal entry says, as the till writes it and the server reads it: one set of types
//! for both ends, so the two cannot read an entry differently.
//!
//! An entry is a sale at the counter (lines, total, tender), or a receivable opened after the
//! fact (a stored card declined once forwarded), or an owner's confirmation that a bank
//! transfer arrived. Everything in it comes from a till and is untrusted on the server:
//! [`EntryBody::effects`] checks it before anything is applied.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::person::Shopper;
use crate::time::Timestamp;

/// How the customer paid, as journaled. Card data never appears here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryTender {
    Cash,
    /// Authorised and captured online before the sale was journaled.
    Card {
        authorization: String,
    },
    /// Taken with the network down; the sealed card waits at the till to be forwarded.
    CardOffline {
        phone: String,
    },
    /// Pending until the owner confirms the money arrived.
    BankTransfer {
        #[serde(default)]
        reference: Option<String>,
    },
    /// The customer left a phone number and pays by link.
    PayLater {
        phone: String,
        receivable: Option<String>,
    },
}

impl EntryTender {
    /// The phone the tender recorded: the buyer, for the per-person limit.
    pub fn phone(&self) -> Option<&str> {
        match self {
            EntryTender::CardOffline { phone } | EntryTender::PayLater { phone, .. } => Some(phone),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryLine {
    pub sku: String,
    #[serde(default)]
    pub name: String,
    pub quantity: u32,
    #[serde(default)]
    pub unit_price: u64,
    /// Set when the units came out of the terminal's allotment of a scarce sale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sale_id: Option<String>,
}

/// A receivable opened after the fact: a stored card declined once forwarded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenedReceivable {
    pub id: String,
    pub phone: String,
    pub amount: u64,
    /// The entry whose stored card was declined.
    #[serde(default)]
    pub for_seq: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryBody {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<EntryLine>,
    #[serde(default)]
    pub total: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tender: Option<EntryTender>,
    /// When, by the till's clock corrected to the server's (milliseconds since the epoch).
    #[serde(default)]
    pub at: i64,
    /// The buyer's phone for a sale that is not pay-later or a stored card (the cashier asks
    /// for it when a scarce item is sold): the per-person limit counts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buyer_phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receivable: Option<OpenedReceivable>,
    /// The owner confirms the bank transfer of this entry arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_confirmed: Option<u64>,
}

/// Units sold out of an allotment of one sale, by one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllottedSold {
    pub quantity: u32,
    pub unit_price: u64,
}

/// What one entry does on the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryEffects {
    pub sold: BTreeMap<String, AllottedSold>,
    /// What the customer was charged, in minor units.
    pub total: u64,
    pub sold_at: Timestamp,
    pub buyer: Option<Shopper>,
    pub receivable: Option<OpenedReceivable>,
    /// A bank transfer (the entry's own tender) waiting for the owner.
    pub transfer_pending: bool,
    pub transfer_confirmed: Option<u64>,
}

impl EntryBody {
    /// Reads an entry's bytes. `Err` is the reason to quarantine it.
    pub fn read(bytes: &[u8]) -> Result<EntryBody, String> {
        serde_json::from_slice(bytes).map_err(|_| "the entry is not a readable sale".to_owned())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("entries serialise")
    }

    /// What this entry does, checked: one price per sale in an entry, quantities that add up
    /// without overflowing (a sum that wrapped once recorded a small sale), a buyer's phone
    /// that is a phone.
    pub fn effects(&self) -> Result<EntryEffects, String> {
        let mut sold: BTreeMap<String, AllottedSold> = BTreeMap::new();
        for line in &self.lines {
            let Some(sale_id) = &line.sale_id else {
                continue;
            };
            let entry = sold.entry(sale_id.clone()).or_insert(AllottedSold {
                quantity: 0,
                unit_price: line.unit_price,
            });
            if entry.unit_price != line.unit_price {
                return Err(format!("{sale_id}: sold at two prices in one entry"));
            }
            entry.quantity = entry
                .quantity
                .checked_add(line.quantity)
                .ok_or_else(|| format!("{sale_id}: the line quantities add up past any stock"))?;
        }
        let phone = self
            .buyer_phone
            .as_deref()
            .or_else(|| self.tender.as_ref().and_then(EntryTender::phone));
        let buyer = match phone {
            Some(phone) if !sold.is_empty() => Some(
                Shopper::by_phone(phone)
                    .map_err(|e| format!("the buyer's phone cannot be read: {e}"))?,
            ),
            _ => None,
        };
        Ok(EntryEffects {
            sold,
            total: self.total,
            sold_at: Timestamp(self.at),
            buyer,
            receivable: self.opened_receivable(),
            transfer_pending: matches!(self.tender, Some(EntryTender::BankTransfer { .. })),
            transfer_confirmed: self.transfer_confirmed,
        })
    }

    /// The receivable this entry opens: a pay-later sale, or a declined stored card.
    fn opened_receivable(&self) -> Option<OpenedReceivable> {
        if let Some(opened) = &self.receivable {
            return Some(opened.clone());
        }
        match &self.tender {
            Some(EntryTender::PayLater {
                phone,
                receivable: Some(id),
            }) => Some(OpenedReceivable {
                id: id.clone(),
                phone: phone.clone(),
                amount: self.total,
                for_seq: None,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_written_before_these_types_still_read() {
        let old = br#"{"lines":[{"sku":"KF94","name":"KF94 masks","quantity":2,"unit_price":39900,"sale_id":"masks"}],"total":79800,"tender":{"kind":"pay_later","phone":"010-1234-5678","receivable":"R-1"},"at":5}"#;
        let effects = EntryBody::read(old).unwrap().effects().unwrap();
        assert_eq!(
            effects.sold["masks"],
            AllottedSold {
                quantity: 2,
                unit_price: 39_900
            }
        );
        assert_eq!(effects.receivable.unwrap().amount, 79_800);
        assert!(effects.buyer.is_some());
        let declined = br#"{"receivable":{"id":"R-2","phone":"010-1","amount":1000,"for_seq":3}}"#;
        assert_eq!(
            EntryBody::read(declined)
                .unwrap()
                .effects()
                .unwrap()
                .receivable
                .unwrap()
                .for_seq,
            Some(3)
        );
    }

    #[test]
    fn nonsense_is_a_reason_to_quarantine() {
        let wraps = br#"{"lines":[{"sku":"K","quantity":4294967295,"unit_price":1,"sale_id":"m"},{"sku":"K","quantity":2,"unit_price":1,"sale_id":"m"}]}"#;
        assert!(EntryBody::read(wraps).unwrap().effects().is_err());
        let two_prices = br#"{"lines":[{"sku":"K","quantity":1,"unit_price":1,"sale_id":"m"},{"sku":"K","quantity":1,"unit_price":2,"sale_id":"m"}]}"#;
        assert!(EntryBody::read(two_prices).unwrap().effects().is_err());
        let bad_phone = br#"{"lines":[{"sku":"K","quantity":1,"unit_price":1,"sale_id":"m"}],"buyer_phone":"call me"}"#;
        assert!(EntryBody::read(bad_phone).unwrap().effects().is_err());
        assert!(EntryBody::read(b"\"text\"").is_err());
        assert!(EntryBody::read(b"{").is_err());
    }
}
