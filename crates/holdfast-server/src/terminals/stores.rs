//! What the operator sets once per store and every till of the store receives with its sync
//! answers: offline-card limits, and the catalogue (items, prices, the business registration
//! number and bank account printed on receipts). A scarce item's price is its sale's.

use std::collections::HashMap;
use std::sync::RwLock;

use holdfast_core::terminal::wire::{OfflineCardLimits, StoreCatalogue};
use holdfast_store::Batch;

use crate::ledger_error::LedgerError;
use crate::streams::{Streams, store_stream};

const LIMITS_KEY: &str = "store-limits/";
const CATALOGUE_KEY: &str = "store-catalogue/";

/// Characters at most in a store's name.
pub const STORE_NAME_CHARS_MAX: usize = 128;

/// Whether `name` can name a store: 1-128 characters, not blank, none of them control characters.
pub fn is_valid_store_name(name: &str) -> bool {
    holdfast_core::is_display_text(name, STORE_NAME_CHARS_MAX)
}

#[derive(Clone, Debug, Default)]
pub struct StoreSettings {
    pub offline_card_limits: Option<OfflineCardLimits>,
    pub catalogue: Option<StoreCatalogue>,
}

/// Each store's settings are written into the store's own stream (`store:<id>`): one writer at
/// a time, so catalogue versions never fork.
pub struct Stores {
    settings: RwLock<HashMap<String, StoreSettings>>,
    streams: Streams,
}

impl Stores {
    pub fn recover(streams: Streams, values: &[(String, Vec<u8>)]) -> serde_json::Result<Stores> {
        let stores = Stores {
            settings: RwLock::new(HashMap::new()),
            streams,
        };
        stores.absorb(values)?;
        Ok(stores)
    }

    /// Takes in settings as stored (at start-up, or read back from a store's stream when
    /// another node may have changed them).
    pub fn absorb(&self, values: &[(String, Vec<u8>)]) -> serde_json::Result<()> {
        let mut settings = self.settings.write().expect("stores");
        for (key, bytes) in values {
            if let Some(store) = key.strip_prefix(LIMITS_KEY) {
                settings
                    .entry(store.to_owned())
                    .or_default()
                    .offline_card_limits = Some(serde_json::from_slice(bytes)?);
            } else if let Some(store) = key.strip_prefix(CATALOGUE_KEY) {
                settings.entry(store.to_owned()).or_default().catalogue =
                    Some(serde_json::from_slice(bytes)?);
            }
        }
        Ok(())
    }

    pub fn get(&self, store: &str) -> StoreSettings {
        self.settings
            .read()
            .expect("stores")
            .get(store)
            .cloned()
            .unwrap_or_default()
    }

    /// Sets a store's offline-card limits durably; its tills receive them on their next sync.
    pub async fn set_limits(
        &self,
        store: &str,
        limits: OfflineCardLimits,
    ) -> Result<(), LedgerError> {
        let value = serde_json::to_vec(&limits).expect("limits serialise");
        self.write(store, format!("{LIMITS_KEY}{store}"), value)
            .await?;
        self.settings
            .write()
            .expect("stores")
            .entry(store.to_owned())
            .or_default()
            .offline_card_limits = Some(limits);
        Ok(())
    }

    /// Replaces a store's catalogue durably, as the next version; its tills pull it on their
    /// next sync. Answers the catalogue as stored.
    pub async fn set_catalogue(
        &self,
        store: &str,
        mut catalogue: StoreCatalogue,
    ) -> Result<StoreCatalogue, LedgerError> {
        let version = self
            .get(store)
            .catalogue
            .map_or(0, |current| current.version);
        catalogue.version = version + 1;
        let value = serde_json::to_vec(&catalogue).expect("catalogues serialise");
        self.write(store, format!("{CATALOGUE_KEY}{store}"), value)
            .await?;
        self.settings
            .write()
            .expect("stores")
            .entry(store.to_owned())
            .or_default()
            .catalogue = Some(catalogue.clone());
        Ok(catalogue)
    }

    async fn write(&self, store: &str, key: String, value: Vec<u8>) -> Result<(), LedgerError> {
        let batch = Batch {
            values: vec![(key, value)],
            ..Batch::default()
        };
        let writer = self.streams.writer(&store_stream(store))?;
        writer.append(batch).await?;
        Ok(())
    }
}
