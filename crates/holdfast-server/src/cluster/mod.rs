//! Several nodes on one PostgreSQL: leases, views of sales served elsewhere, and forwarding.
//!
//! Every stream (a sale, a terminal, a store) has at most one writer: the node holding its
//! lease. A lease is a row with an epoch that grows with every change of holder; the database's
//! clock decides when it runs out, and every append carries the epoch (see `streams.rs`), so a
//! node that stalled past its lease can never write after another took over. This module keeps
//! the leases a node holds (renewing them, noticing those it lost), finds who holds the others,
//! caches the views other nodes publish of their sales (so waiting-room polls are answered
//! anywhere), and hands requests to their stream's holder in batches (`forward.rs`).
//!
//! What a node does on taking or losing a stream (rebuilding a sale, dropping a terminal) is
//! the application's business: `state.rs` drives it with what this module reports.

mod forward;
mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use holdfast_store::{Lease, PgStore, StoreError, StreamRecovery};
use tokio::time::Instant;

use crate::actor::SaleView;
pub use crate::config::ClusterConfig;
use crate::streams::Leases;
pub use forward::{
    BATCH_PATH, Forwarded, ForwardedAnswer, ForwardedRequest, Forwarder, NOT_HERE, SIGNATURE_HEADER,
};
pub use view::{PublishedView, encode_ranks, ranks_stream};

/// Connections one node keeps to PostgreSQL for leases, loads and views (the log writer has
/// one of its own).
const POOL_CONNECTIONS: usize = 8;
/// Another node's lease, once looked up, is trusted this long before looking again.
const HOLDER_CACHE: Duration = Duration::from_millis(500);

/// A lease this node holds, and until when it may trust it without renewing.
#[derive(Clone, Copy, Debug)]
struct Held {
    epoch: u64,
    until: Instant,
}

/// Where a stream is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// This node holds it.
    Here,
    /// Another node holds it, reachable at this address.
    There(String),
    /// Nobody has ever held it: it does not exist.
    Nowhere,
    /// Its holder's lease ran out: whoever asks first takes it over.
    Vacant,
}

pub struct Cluster {
    pub node: String,
    pub address: String,
    pub store: PgStore,
    pub ttl: Duration,
    pub forwarder: Forwarder,
    held: RwLock<HashMap<String, Held>>,
    others: Mutex<HashMap<String, (Lease, Instant)>>,
    views: RwLock<HashMap<String, Arc<SaleView>>>,
    /// Lottery ranks published by other nodes, by sale.
    ranks: Mutex<HashMap<String, Arc<Vec<u32>>>>,
    /// One takeover at a time per stream on this node.
    taking: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Cluster {
    /// Connects, prepares the schema, and reads the secret nodes sign their calls with.
    pub async fn join(config: &ClusterConfig, node: String) -> Result<Cluster, StoreError> {
        let store = PgStore::connect(&config.database_url, POOL_CONNECTIONS).await?;
        let secret = store
            .shared_secret("cluster-secret", &crate::auth::random_secret())
            .await?;
        Ok(Cluster {
            node: node.clone(),
            address: config.advertise.clone(),
            store,
            ttl: config.lease_ttl,
            forwarder: Forwarder::new(node, secret),
            held: RwLock::default(),
            others: Mutex::default(),
            views: RwLock::default(),
            ranks: Mutex::default(),
            taking: Mutex::default(),
        })
    }

    /// Where `stream` is served, asking the database only when nothing fresh is known.
    pub async fn place(&self, stream: &str) -> Result<Placement, StoreError> {
        if self.epoch(stream).is_some() {
            return Ok(Placement::Here);
        }
        if let Some(lease) = self.cached_holder(stream) {
            return Ok(Placement::There(lease.address));
        }
        let lease = self.store.holder(stream).await?;
        Ok(match lease {
            None => Placement::Nowhere,
            Some(lease) if !lease.live => Placement::Vacant,
            Some(lease) if lease.node == self.node => Placement::Vacant,
            Some(lease) => {
                let address = lease.address.clone();
                self.remember_holder(stream, lease);
                Placement::There(address)
            }
        })
    }

    fn cached_holder(&self, stream: &str) -> Option<Lease> {
        let others = self.others.lock().expect("holders");
        let (lease, at) = others.get(stream)?;
        (at.elapsed() < HOLDER_CACHE).then(|| lease.clone())
    }

    fn remember_holder(&self, stream: &str, lease: Lease) {
        let mut others = self.others.lock().expect("holders");
        if others.len() > 100_000 {
            others.retain(|_, (_, at)| at.elapsed() < HOLDER_CACHE);
        }
        others.insert(stream.to_owned(), (lease, Instant::now()));
    }

    /// Forgets who was thought to hold `stream` (it answered that it does not).
    pub fn forget_holder(&self, stream: &str) {
        self.others.lock().expect("holders").remove(stream);
    }

    /// The lock a takeover of `stream` holds, so two requests do not take it twice.
    pub fn taking(&self, stream: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut taking = self.taking.lock().expect("takeovers");
        taking.entry(stream.to_owned()).or_default().clone()
    }

    /// Takes `stream` if nobody else holds it live, and reads back what is stored of it.
    /// `Ok(Err(address))` when another node holds it.
    pub async fn take(
        &self,
        stream: &str,
    ) -> Result<Result<(u64, StreamRecovery), String>, StoreError> {
        let asked_at = Instant::now();
        match self
            .store
            .acquire(stream, &self.node, &self.address, self.ttl)
            .await?
        {
            Err(lease) => {
                let address = lease.address.clone();
                self.remember_holder(stream, lease);
                Ok(Err(address))
            }
            Ok(epoch) => {
                let recovery = self.store.load_stream(stream).await?;
                self.forget_holder(stream);
                self.views.write().expect("views").remove(stream);
                let until = asked_at + self.ttl;
                let held = Held { epoch, until };
                self.held
                    .write()
                    .expect("leases")
                    .insert(stream.to_owned(), held);
                Ok(Ok((epoch, recovery)))
            }
        }
    }

    /// Lets go of a stream this node took but could not serve.
    pub async fn let_go(&self, stream: &str) {
        let held = self.held.write().expect("leases").remove(stream);
        if let Some(held) = held {
            let leases = [(stream.to_owned(), held.epoch)];
            if let Err(error) = self.store.release(&self.node, &leases).await {
                tracing::warn!(%error, stream, "a lease could not be released; it will run out");
            }
        }
    }

    /// Renews every lease this node holds. Answers the streams it no longer holds (taken over
    /// while this node was stalled or cut off), which it must stop serving.
    pub async fn renew(&self) -> Vec<String> {
        let held: Vec<(String, u64)> = {
            let held = self.held.read().expect("leases");
            held.iter().map(|(s, h)| (s.clone(), h.epoch)).collect()
        };
        if held.is_empty() {
            return Vec::new();
        }
        let asked_at = Instant::now();
        let kept = match self.store.renew(&self.node, &held, self.ttl).await {
            Ok(kept) => kept,
            Err(error) => {
                // Nothing is known: the leases run out locally when their time is up.
                tracing::warn!(%error, "leases could not be renewed");
                return Vec::new();
            }
        };
        let kept: std::collections::HashSet<String> = kept.into_iter().collect();
        let mut leases = self.held.write().expect("leases");
        let mut lost = Vec::new();
        for (stream, epoch) in held {
            match leases.get_mut(&stream) {
                Some(lease) if lease.epoch == epoch && kept.contains(&stream) => {
                    lease.until = asked_at + self.ttl;
                }
                Some(lease) if lease.epoch == epoch => {
                    leases.remove(&stream);
                    lost.push(stream);
                }
                // Taken again meanwhile, under a newer epoch: that lease is renewed next time.
                _ => {}
            }
        }
        lost
    }

    /// Streams whose holders' time ran out (their nodes died or stalled): candidates to take.
    pub async fn vacant(&self) -> Result<Vec<String>, StoreError> {
        self.store.vacant_streams(&self.node).await
    }

    /// Lets every lease go at once (a clean shutdown), so the others need not wait them out.
    pub async fn release_all(&self) {
        let held: Vec<(String, u64)> = {
            let mut held = self.held.write().expect("leases");
            held.drain().map(|(s, h)| (s, h.epoch)).collect()
        };
        if let Err(error) = self.store.release(&self.node, &held).await {
            tracing::warn!(%error, "leases could not be released; they will run out");
        }
    }

    /// The streams this node holds now.
    pub fn held_streams(&self) -> Vec<String> {
        self.held.read().expect("leases").keys().cloned().collect()
    }

    /// How many other nodes' sale views this node keeps.
    pub fn views_followed(&self) -> usize {
        self.views.read().expect("views").len()
    }

    /// The latest view another node published of a sale it serves.
    pub fn view(&self, sale: &str) -> Option<Arc<SaleView>> {
        self.views.read().expect("views").get(sale).cloned()
    }

    /// Takes in views published since the last look (the poller runs a few times a second).
    /// A drawn lottery's view is usable only once its ranks have arrived too.
    pub async fn refresh_views(&self, since: i64) -> Result<i64, StoreError> {
        let (published, newest) = self.store.published_views_since(since).await?;
        let mut ranks = self.ranks.lock().expect("ranks");
        let mut views = Vec::new();
        for (stream, payload) in published {
            if let Some(sale) = stream.strip_suffix("#ranks") {
                match view::decode_ranks(&payload) {
                    Ok(decoded) => {
                        ranks.insert(sale.to_owned(), Arc::new(decoded));
                    }
                    Err(error) => tracing::warn!(%error, sale, "published ranks are unreadable"),
                }
            } else {
                match PublishedView::decode(&payload) {
                    Ok(view) => views.push((stream, view)),
                    Err(error) => tracing::warn!(%error, stream, "a published view is unreadable"),
                }
            }
        }
        let mut cache = self.views.write().expect("views");
        for (stream, view) in views {
            let sale_ranks = ranks.get(&stream).cloned();
            if self.epoch(&stream).is_some() || (view.needs_ranks() && sale_ranks.is_none()) {
                // Served here (its own view is fresher), or not usable yet.
                cache.remove(&stream);
                continue;
            }
            let view = view.into_view(sale_ranks.unwrap_or_default());
            cache.insert(stream, Arc::new(view));
        }
        Ok(newest)
    }
}

impl Leases for Cluster {
    fn epoch(&self, stream: &str) -> Option<u64> {
        let held = self.held.read().expect("leases");
        let lease = held.get(stream)?;
        (lease.until > Instant::now()).then_some(lease.epoch)
    }
}

/// A name for this node's process, unique among every node that ever ran: a restarted node is
/// a new one, and takes its old streams over like any other would.
pub fn node_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        hex::encode(crate::auth::random_secret().get(..4).unwrap_or_default())
    )
}
