//! Uploading the journal: from the server's last acknowledgement, in batches, until nothing is
//! left. Safe to interrupt anywhere: the server applies each entry once, and the next run
//! resumes from whatever was acknowledged.

use holdfast_core::terminal::auth;
use holdfast_core::terminal::{ChainHash, Progress};
use serde_json::{Value, json};

use crate::journal::Journal;
use crate::uplink::{Uplink, UplinkError};

const BATCH_ENTRIES_MAX: usize = 500;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub acked_through: u64,
    pub uploaded: u64,
    /// Entries the server will never apply (kept for a person to settle).
    pub quarantined: Vec<u64>,
    /// Why the server stopped short, if it did.
    pub stopped: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    #[error("the server refused the sync ({0}): {1}")]
    Refused(u16, Value),
    #[error("the server's receipt does not verify: not trusting its acknowledgement")]
    BadReceipt,
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

pub async fn sync_once(journal: &mut Journal, uplink: &Uplink) -> Result<SyncReport, SyncError> {
    // Start on the preferred healthy address, so the shop's line is used again once it is back.
    if !uplink.check_health().await {
        return Err(SyncError::Uplink(UplinkError::Unreachable));
    }
    let path = format!("/v1/terminals/{}/sync", uplink.terminal());
    let mut report = SyncReport {
        acked_through: journal.acked()?,
        ..SyncReport::default()
    };
    // At least one request even with nothing to upload: its answer also says which
    // receivables customers have paid by link.
    let mut first = true;
    loop {
        let entries = journal.after(report.acked_through, BATCH_ENTRIES_MAX)?;
        if entries.is_empty() && !first {
            return Ok(report);
        }
        first = false;
        let wire: Vec<Value> = entries
            .iter()
            .map(|e| json!({"seq": e.seq, "prev": e.prev.to_hex(), "body": String::from_utf8_lossy(&e.body)}))
            .collect();
        let (status, answer) = uplink.post(&path, &json!({"entries": wire})).await?;
        if status != 200 {
            return Err(SyncError::Refused(status, answer));
        }
        let acked = answer["acked_through"].as_u64().unwrap_or(0);
        let progress = Progress {
            applied_through: acked,
            head: answer["head"]
                .as_str()
                .and_then(ChainHash::from_hex)
                .ok_or(SyncError::BadReceipt)?,
        };
        let receipt = answer["receipt"].as_str().unwrap_or_default();
        if !auth::receipt_verifies(uplink.secret(), &progress, receipt) {
            return Err(SyncError::BadReceipt);
        }
        report.quarantined.extend(
            answer["quarantined"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64),
        );
        report.stopped = answer["stopped"].as_str().map(str::to_owned);
        // The operator's offline-card limits for this store, when set, replace the till's own.
        if let Ok(limits) = serde_json::from_value::<crate::counter::OfflineCardLimits>(
            answer["offline_card_limits"].clone(),
        ) {
            journal.set_setting("offline_card_limits", &limits)?;
        }
        for id in answer["settled"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            journal
                .read()
                .execute("UPDATE receivable SET settled = 1 WHERE id = ?1", [id])
                .map_err(anyhow::Error::from)?;
        }
        if entries.is_empty() {
            return Ok(report);
        }
        let advanced = acked > report.acked_through;
        if advanced {
            report.uploaded += acked - report.acked_through;
            report.acked_through = acked;
            journal.set_setting("acked_through", &acked)?;
        }
        if !advanced || report.stopped.is_some() {
            return Ok(report);
        }
    }
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
/// twice. Once settled either way, the sealed card is erased.
pub async fn forward_cards(
    journal: &mut Journal,
    key: &chacha20poly1305::Key,
    uplink: &Uplink,
) -> Result<ForwardReport, SyncError> {
    let pending: Vec<(i64, i64, Vec<u8>, String, i64)> = {
        let mut statement = journal
            .read()
            .prepare("SELECT seq, amount, sealed, phone, created_at FROM offline_card WHERE forwarded = 0 ORDER BY seq")
            .map_err(anyhow::Error::from)?;
        let rows = statement
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(anyhow::Error::from)?;
        rows.collect::<Result<_, _>>()
            .map_err(anyhow::Error::from)?
    };
    let path = format!("/v1/terminals/{}/payments", uplink.terminal());
    let mut report = ForwardReport::default();
    for (seq, amount, sealed, phone, created_at) in pending {
        let Some(card) = crate::counter::open(key, &sealed) else {
            return Err(SyncError::Local(anyhow::anyhow!(
                "stored card #{seq} does not open: the key or the data was changed"
            )));
        };
        let body = json!({"reference": format!("offline-{seq}"), "amount": amount, "card_token": String::from_utf8_lossy(&card)});
        let outcome = match uplink.post(&path, &body).await {
            Ok((200, _)) => "approved",
            Ok((402, _)) => "declined",
            Ok((status, answer)) => return Err(SyncError::Refused(status, answer)),
            Err(_) => {
                report.waiting += 1;
                continue;
            }
        };
        let tx = journal
            .connection()
            .transaction()
            .map_err(anyhow::Error::from)?;
        if outcome == "declined" {
            // The customer now owes the store: journal it, so the server can offer the pay link.
            let id = crate::counter::new_receivable_id();
            let body =
                json!({"receivable": {"id": id, "phone": phone, "amount": amount, "for_seq": seq}})
                    .to_string();
            let at = chrono::Utc::now().timestamp_millis();
            let entry = crate::journal::append(&tx, &body, at)?;
            tx.execute(
                "INSERT INTO receivable (id, seq, phone, amount, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![id, entry as i64, phone, amount, created_at],
            )
            .map_err(anyhow::Error::from)?;
            report.declined += 1;
        } else {
            report.approved += 1;
        }
        tx.execute(
            "UPDATE offline_card SET forwarded = 1, sealed = X'' WHERE seq = ?1",
            [seq],
        )
        .map_err(anyhow::Error::from)?;
        tx.commit().map_err(anyhow::Error::from)?;
    }
    Ok(report)
}
