//! Uploading the journal: from the server's last acknowledgement, in batches, until nothing is
//! left. Safe to interrupt anywhere: the server applies each entry once, and the next run
//! resumes from whatever was acknowledged. Each answer also brings what the server holds for
//! this till: paid receivables, the store's offline-card limits and catalogue, and scarce sales
//! to give units back to.

use chacha20poly1305::Key;
use holdfast_core::terminal::auth;
use holdfast_core::terminal::entry::{EntryBody, OpenedReceivable};
use holdfast_core::terminal::wire::{
    AllotmentAnswer, AllotmentRequest, PaymentRequest, SyncAnswer, SyncRequest, TillReport,
    WireEntry,
};
use holdfast_core::terminal::{ChainHash, Progress};
use serde_json::Value;

use crate::journal::{DeclinedCard, Journal};
use crate::uplink::{Uplink, UplinkError};

const BATCH_ENTRIES_MAX: usize = 500;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub acked_through: u64,
    pub uploaded: u64,
    /// Entries the server will never apply (kept for a person to settle).
    pub quarantined: Vec<u64>,
    /// Entries applied but flagged for a person (a buyer past the per-person limit).
    pub flagged: Vec<u64>,
    /// Why the server stopped short, if it did.
    pub stopped: Option<String>,
    /// Units given back to sales whose pool ran dry.
    pub given_back: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    #[error("the server refused ({0}): {1}")]
    Refused(u16, Value),
    #[error("the server's receipt does not verify: not trusting its acknowledgement")]
    BadReceipt,
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

/// What is waiting here, told to the server with every sync.
fn report(journal: &Journal) -> anyhow::Result<TillReport> {
    let waiting = journal.waiting()?;
    Ok(TillReport {
        unsynced: waiting.unsynced,
        cards_waiting: waiting.cards_waiting,
        cards_waiting_amount: waiting.cards_waiting_amount,
        transfers_pending: waiting.transfers_pending,
        refunds_due: waiting.refunds_due,
        allotments: journal
            .allotments()?
            .into_iter()
            .map(|a| (a.sale_id, a.remaining))
            .collect(),
    })
}

pub async fn sync_once(journal: &mut Journal, uplink: &Uplink) -> Result<SyncReport, SyncError> {
    // Start on the preferred healthy address, so the shop's line is used again once it is back.
    if !uplink.check_health().await {
        return Err(SyncError::Uplink(UplinkError::Unreachable(
            uplink.addresses(),
        )));
    }
    let path = format!("/v1/terminals/{}/sync", uplink.terminal());
    let mut report = SyncReport {
        acked_through: journal.acked()?,
        ..SyncReport::default()
    };
    // At least one request even with nothing to upload: its answer also brings what the
    // server holds for this till.
    let mut first = true;
    loop {
        let entries = journal.after(report.acked_through, BATCH_ENTRIES_MAX)?;
        if entries.is_empty() && !first {
            break;
        }
        first = false;
        let request = SyncRequest {
            entries: entries.iter().map(WireEntry::of).collect(),
            report: Some(self::report(journal)?),
            catalogue_version: journal.setting("catalogue_version")?.unwrap_or(0),
        };
        let body = serde_json::to_value(&request).expect("sync requests serialise");
        let (status, answer) = uplink.post(&path, &body).await?;
        if status != 200 {
            return Err(SyncError::Refused(status, answer));
        }
        let answer: SyncAnswer =
            serde_json::from_value(answer).map_err(|_| SyncError::BadReceipt)?;
        let progress = Progress {
            applied_through: answer.acked_through,
            head: ChainHash::from_hex(&answer.head).ok_or(SyncError::BadReceipt)?,
        };
        if !auth::receipt_verifies(uplink.secret(), &progress, &answer.receipt) {
            return Err(SyncError::BadReceipt);
        }
        journal.set_setting("clock_offset_ms", &uplink.clock_offset_ms())?;
        report.quarantined.extend(&answer.quarantined);
        report.flagged.extend(&answer.flagged);
        report.stopped = answer.stopped.clone();
        take_what_the_server_holds(journal, &answer)?;
        if !answer.give_back.is_empty() {
            report.given_back += give_back(journal, uplink, &answer.give_back).await?;
        }
        if entries.is_empty() {
            break;
        }
        let advanced = answer.acked_through > report.acked_through;
        if advanced {
            report.uploaded += answer.acked_through - report.acked_through;
            report.acked_through = answer.acked_through;
            journal.set_setting("acked_through", &answer.acked_through)?;
        }
        if !advanced || report.stopped.is_some() {
            break;
        }
    }
    Ok(report)
}

/// Paid receivables, the store's offline-card limits, its catalogue.
fn take_what_the_server_holds(journal: &mut Journal, answer: &SyncAnswer) -> anyhow::Result<()> {
    if let Some(limits) = answer.offline_card_limits {
        journal.set_setting("offline_card_limits", &limits)?;
    }
    for id in &answer.settled {
        journal.settle_receivable(id)?;
    }
    if let Some(catalogue) = &answer.catalogue {
        journal.replace_server_catalogue(&catalogue.items)?;
        journal.set_setting("business_number", &catalogue.business_number)?;
        journal.set_setting("bank_account", &catalogue.bank_account)?;
        journal.set_setting("catalogue_version", &catalogue.version)?;
    }
    Ok(())
}

/// Gives back what this till holds beyond `keep` of sales whose pool ran dry, having synced
/// every sale made from them first. Returns the units given back.
async fn give_back(
    journal: &mut Journal,
    uplink: &Uplink,
    sales: &[(String, u32)],
) -> Result<u32, SyncError> {
    let mut given = 0;
    for (sale_id, keep) in sales {
        let Some(allotment) = journal.allotment(sale_id)? else {
            continue;
        };
        if allotment.remaining <= *keep || journal.acked()? < journal.entry_count()? {
            continue;
        }
        let answer = set_allotment(uplink, sale_id, *keep).await?;
        journal.set_allotment(sale_id, answer.granted, Some(&answer.terms))?;
        given += allotment.remaining.saturating_sub(answer.granted);
    }
    Ok(given)
}

/// Asks the server to set this till's allotment of `sale_id` to `quantity`.
pub async fn set_allotment(
    uplink: &Uplink,
    sale_id: &str,
    quantity: u32,
) -> Result<AllotmentAnswer, SyncError> {
    let path = format!("/v1/terminals/{}/allotments", uplink.terminal());
    let request = AllotmentRequest {
        sale_id: sale_id.to_owned(),
        quantity: i64::from(quantity),
    };
    let body = serde_json::to_value(&request).expect("allotment requests serialise");
    let (status, answer) = uplink.post(&path, &body).await?;
    if status != 200 {
        return Err(SyncError::Refused(status, answer));
    }
    serde_json::from_value(answer.clone()).map_err(|_| SyncError::Refused(status, answer))
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ForwardReport {
    pub approved: u32,
    /// Declined after the fact: each became a receivable with the customer's phone.
    pub declined: u32,
    /// Still waiting (the network or the card network is down).
    pub waiting: u32,
}

/// Sends stored offline card payments to the card network through the server. Each carries
/// the till's reference (`offline-<entry>`) as its idempotency key, so a retry never charges
/// twice; the outcome is recorded once however many syncs forward at the same time. Once
/// settled either way, the sealed card is erased.
pub async fn forward_cards(
    journal: &mut Journal,
    key: &Key,
    uplink: &Uplink,
    now_millis: i64,
) -> Result<ForwardReport, SyncError> {
    let path = format!("/v1/terminals/{}/payments", uplink.terminal());
    let mut report = ForwardReport::default();
    for card in journal.stored_cards()? {
        let Some(token) = crate::counter::open(key, &card.sealed) else {
            return Err(SyncError::Local(anyhow::anyhow!(
                "stored card #{} does not open: the key or the data was changed",
                card.seq
            )));
        };
        let request = PaymentRequest {
            reference: format!("offline-{}", card.seq),
            amount: i64::try_from(card.amount).unwrap_or(i64::MAX),
            card_token: String::from_utf8_lossy(&token).into_owned(),
        };
        let body = serde_json::to_value(&request).expect("payments serialise");
        let declined = match uplink.post(&path, &body).await {
            Ok((200, _)) => false,
            Ok((402, _)) => true,
            // Another sync is forwarding this very card right now; it records the outcome.
            Ok((409, answer)) if answer["error"]["code"] == "idempotency_in_progress" => {
                report.waiting += 1;
                continue;
            }
            Ok((status, answer)) => return Err(SyncError::Refused(status, answer)),
            Err(_) => {
                report.waiting += 1;
                continue;
            }
        };
        // The customer now owes the store: journaled, so the server offers the pay link.
        let receivable = declined.then(|| {
            let id = crate::counter::new_receivable_id();
            let body = EntryBody {
                receivable: Some(OpenedReceivable {
                    id: id.clone(),
                    phone: card.phone.clone(),
                    amount: card.amount,
                    for_seq: Some(card.seq),
                }),
                at: now_millis,
                ..EntryBody::default()
            };
            DeclinedCard {
                id,
                body: body.to_json(),
                at: now_millis,
            }
        });
        if !journal.card_forwarded(&card, receivable.as_ref())? {
            continue; // Another sync recorded this card first.
        }
        if declined {
            report.declined += 1;
        } else {
            report.approved += 1;
        }
    }
    Ok(report)
}
