//! Uploading the journal: from the server's last acknowledgement, in batches, until nothing is
//! left. Safe to interrupt anywhere: the server applies each entry once, and the next run
//! resumes from whatever was acknowledged.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

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

fn receipt_ok(secret: &[u8], acked: u64, head: &str, receipt: &str) -> bool {
    let Ok(signature) = hex::decode(receipt) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(format!("acked {acked} {head}").as_bytes());
    mac.verify_slice(&signature).is_ok()
}

pub async fn sync_once(journal: &mut Journal, uplink: &Uplink) -> Result<SyncReport, SyncError> {
    let path = format!("/v1/terminals/{}/sync", uplink.terminal());
    let mut report = SyncReport {
        acked_through: journal.acked()?,
        ..SyncReport::default()
    };
    loop {
        let entries = journal.after(report.acked_through, BATCH_ENTRIES_MAX)?;
        if entries.is_empty() {
            return Ok(report);
        }
        let wire: Vec<Value> = entries
            .iter()
            .map(|e| json!({"seq": e.seq, "prev": e.prev.to_hex(), "body": String::from_utf8_lossy(&e.body)}))
            .collect();
        let (status, answer) = uplink.post(&path, &json!({"entries": wire})).await?;
        if status != 200 {
            return Err(SyncError::Refused(status, answer));
        }
        let acked = answer["acked_through"].as_u64().unwrap_or(0);
        let head = answer["head"].as_str().unwrap_or_default();
        if !receipt_ok(
            uplink.secret(),
            acked,
            head,
            answer["receipt"].as_str().unwrap_or_default(),
        ) {
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
