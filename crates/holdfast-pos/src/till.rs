//! A registered till as its commands and its counter page use it: the journal, the uplink to
//! the server, the key that seals stored cards, and what every receipt carries.

use std::path::Path;

use anyhow::Context;
use chacha20poly1305::Key;
use serde::{Deserialize, Serialize};

use crate::counter;
use crate::journal::Journal;
use crate::receipt::Header;
use crate::uplink::Uplink;

/// What `holdfast-pos init` saves in the journal.
#[derive(Clone, Serialize, Deserialize)]
pub struct Registration {
    pub terminal_id: String,
    pub store: String,
    pub servers: Vec<String>,
    pub secret: String,
}

pub struct Till {
    pub journal: Journal,
    pub uplink: Uplink,
    pub key: Key,
    pub registration: Registration,
}

impl Till {
    /// Opens the till kept in `dir`; it must have been registered (`init`).
    pub fn open(dir: &Path) -> anyhow::Result<Till> {
        let journal = Journal::open(dir)?;
        let registration: Registration = journal.setting("registration")?.with_context(|| {
            format!(
                "the till in {} is not registered yet: run `holdfast-pos init` first",
                dir.display()
            )
        })?;
        let secret = hex::decode(&registration.secret)
            .context("the till's secret in its journal is damaged")?;
        let uplink = Uplink::new(
            registration.servers.clone(),
            registration.terminal_id.clone(),
            secret,
        );
        uplink.set_clock_offset_ms(journal.setting("clock_offset_ms")?.unwrap_or(0));
        Ok(Till {
            key: counter::card_key(dir)?,
            journal,
            uplink,
            registration,
        })
    }

    /// The time to journal a sale at: this machine's clock, corrected by what the server's
    /// answers said of it (so a shop whose clock is wrong still sells inside a sale's window).
    pub fn now_millis(&self) -> i64 {
        chrono::Utc::now().timestamp_millis() + self.uplink.clock_offset_ms()
    }

    pub fn header(&self) -> anyhow::Result<Header> {
        Ok(Header {
            store: self.registration.store.clone(),
            terminal: self.registration.terminal_id.clone(),
            pay_base: self.registration.servers[0].clone(),
            business_number: self.journal.setting("business_number")?.flatten(),
            bank_account: self.journal.setting("bank_account")?.flatten(),
        })
    }
}
