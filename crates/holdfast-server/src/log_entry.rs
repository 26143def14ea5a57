//! What the server writes to the log. One record per actor batch; the payload is JSON so an
//! operator can read the audit trail with `sqlite3` alone.

use holdfast_core::{Event, SaleSpec};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
pub enum LogEntry {
    SaleCreated { spec: SaleSpec },
    Events { events: Vec<Event> },
}

impl LogEntry {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("log entries always serialise")
    }

    pub fn decode(bytes: &[u8]) -> Result<LogEntry, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
