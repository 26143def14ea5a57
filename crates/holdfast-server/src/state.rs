//! What every handler shares (`AppState`), and where a stream is served: here, on another node
//! (which the request is handed to), or nowhere. Alone, everything is here.
//!
//! On several nodes this is also where a node takes a stream over (rebuilding the sale, the
//! terminal or the store from what is stored of it) and lets one go when another node took it.

use std::sync::Arc;

use holdfast_store::StreamRecovery;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::actor::SaleView;
use crate::auth::TokenKeys;
use crate::clock::Clock;
use crate::cluster::{Cluster, ForwardedAnswer, ForwardedRequest, Placement, PublishedView};
use crate::config::Limits;
use crate::idempotency::Idempotency;
use crate::ledger::Ledger;
use crate::ledger_error::LedgerError;
use crate::payments::PaymentProvider;
use crate::settlement::Settlements;
use crate::streams::{Leases, StreamKind, store_stream};
use crate::terminals::{
    SaleCall, SaleCallAnswer, SaleDesk, StoreSettings, Terminals, serve_sale_call,
};

pub struct AppInner {
    pub ledger: Arc<Ledger>,
    pub terminals: Terminals,
    pub tokens: TokenKeys,
    pub operator_token: String,
    pub clock: Arc<dyn Clock>,
    pub payments: Arc<dyn PaymentProvider>,
    pub settlements: Arc<Settlements>,
    pub idempotency: Idempotency,
    pub limits: Limits,
    pub metrics: PrometheusHandle,
    /// Request latencies since the event feed last looked.
    pub latencies: crate::telemetry::RecentLatencies,
    /// Holds refused from a sale's published counters, without its actor.
    pub refused_from_view: crate::telemetry::RefusedFromView,
    /// Request bodies being read right now (slow ones pile up here).
    pub bodies_in_progress: std::sync::atomic::AtomicU64,
    /// Requests refused for load (`429`) since start.
    pub requests_shed: std::sync::atomic::AtomicU64,
    /// Writes admitted and shed per second: how long a shed caller is asked to wait.
    pub pressure: crate::api::overload::Pressure,
    /// What the operator watches, sampled once a second (`GET /v1/events`).
    pub feed: crate::feed::Feed,
    /// The embedded log's directory (alone; on several nodes there is none).
    pub data_dir: Option<std::path::PathBuf>,
    /// One permit per write request in flight (see `api::overload`).
    pub write_permits: Arc<tokio::sync::Semaphore>,
    /// One permit per terminal sync in flight: a reconnect storm gets a slice, not everything.
    pub sync_permits: Arc<tokio::sync::Semaphore>,
    /// The other nodes, when this is one of several.
    pub cluster: Option<Arc<Cluster>>,
}

/// The one state struct every handler gets.
#[derive(Clone)]
pub struct AppState(pub Arc<AppInner>);

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// What became of a request for a stream.
pub enum Routed {
    /// This node serves the stream: run the request here.
    Here,
    /// The stream does not exist: run it here, to be told so.
    Nowhere,
    /// The node serving it answered.
    There(ForwardedAnswer),
}

/// How often a node hands a request on before telling its client to retry: each handover
/// looks the holder up again, so this only runs out while the stream keeps moving.
const HANDOVERS_MAX: usize = 3;
/// How often a sale's holder publishes its view, at most.
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

impl AppInner {
    /// A sale's view: its own if it is served here, else the one its holder last published.
    pub fn sale_view(&self, id: &str) -> Option<Arc<SaleView>> {
        if let Some(sale) = self.ledger.sale(id) {
            return Some(sale.view());
        }
        self.cluster.as_ref()?.view(id)
    }

    /// Where `stream` is served. A stream whose holder's time ran out is taken over here, and
    /// so, when `create`, is one nobody ever held (a new sale, terminal or store).
    pub async fn place(&self, stream: &str, create: bool) -> Result<Placement, LedgerError> {
        let Some(cluster) = &self.cluster else {
            return Ok(Placement::Here);
        };
        match cluster.place(stream).await? {
            Placement::Here if self.serves(stream) => Ok(Placement::Here),
            Placement::There(address) => Ok(Placement::There(address)),
            Placement::Nowhere if !create => Ok(Placement::Nowhere),
            // Vacant, new, or held here by a part that stopped (after a failed write): take it
            // (again, under a new epoch) and read back what is durable.
            _ => self.take_over(cluster, stream).await,
        }
    }

    /// Serves `request` for `stream` here, or hands it to the node that serves it.
    pub async fn route(
        &self,
        stream: &str,
        request: &ForwardedRequest,
    ) -> Result<Routed, LedgerError> {
        let Some(cluster) = &self.cluster else {
            return Ok(Routed::Here);
        };
        for _ in 0..HANDOVERS_MAX {
            let address = match self.place(stream, false).await? {
                Placement::Here => return Ok(Routed::Here),
                Placement::Nowhere | Placement::Vacant => return Ok(Routed::Nowhere),
                Placement::There(address) => address,
            };
            match cluster.forwarder.send(&address, request.clone()).await {
                Ok(answer) if answer.not_here() => cluster.forget_holder(stream),
                Ok(answer) => return Ok(Routed::There(answer)),
                Err(error) => {
                    cluster.forget_holder(stream);
                    tracing::warn!(%error, stream, "a request's fate at its node is unknown");
                    return Err(LedgerError::NodeUnreachable);
                }
            }
        }
        Err(LedgerError::Moved)
    }

    /// Whether the parts of this node that serve `stream` are running.
    fn serves(&self, stream: &str) -> bool {
        match StreamKind::of(stream) {
            StreamKind::Sale(id) => self.ledger.sale(id).is_some(),
            StreamKind::Terminal(id) => self.terminals.get(id).is_some(),
            StreamKind::Store(_) => true,
        }
    }

    async fn take_over(&self, cluster: &Cluster, stream: &str) -> Result<Placement, LedgerError> {
        let taking = cluster.taking(stream);
        let _one_at_a_time = taking.lock().await;
        if cluster.epoch(stream).is_some() && self.serves(stream) {
            return Ok(Placement::Here); // Another request took it meanwhile.
        }
        let (epoch, recovery) = match cluster.take(stream).await? {
            Err(address) => return Ok(Placement::There(address)),
            Ok(taken) => taken,
        };
        if let Err(error) = self.adopt(stream, recovery) {
            tracing::error!(%error, stream, "a stream taken over cannot be served");
            cluster.let_go(stream).await;
            return Err(LedgerError::Unreadable(error));
        }
        tracing::info!(stream, epoch, node = %cluster.node, "stream taken over");
        if let StreamKind::Sale(id) = StreamKind::of(stream) {
            self.publish_views(id);
        }
        Ok(Placement::Here)
    }

    /// Rebuilds what serves `stream` from what is stored of it.
    fn adopt(&self, stream: &str, recovery: StreamRecovery) -> Result<(), String> {
        let StreamRecovery {
            snapshot,
            records,
            values,
        } = recovery;
        match StreamKind::of(stream) {
            StreamKind::Sale(id) => {
                self.ledger.drop_sale(id);
                self.ledger
                    .adopt(stream, snapshot, records)
                    .map_err(|e| e.to_string())?;
            }
            StreamKind::Terminal(id) => {
                self.terminals.drop_terminal(id);
                self.terminals
                    .adopt(id, &values, snapshot.as_ref())
                    .map_err(|e| e.to_string())?;
            }
            StreamKind::Store(_) => {
                self.terminals
                    .stores
                    .absorb(&values)
                    .map_err(|e| e.to_string())?;
            }
        }
        self.idempotency
            .absorb(&values, self.clock.now())
            .map_err(|e| e.to_string())?;
        self.settlements.absorb(&values);
        Ok(())
    }

    /// Stops serving a stream another node has taken over.
    pub fn lost(&self, stream: &str) {
        tracing::warn!(stream, "stream taken over by another node");
        match StreamKind::of(stream) {
            StreamKind::Sale(id) => self.ledger.drop_sale(id),
            StreamKind::Terminal(id) => self.terminals.drop_terminal(id),
            StreamKind::Store(_) => {}
        }
        self.settlements.forget(stream);
    }

    /// A store's settings as stored: on several nodes, read back from the store's stream, since
    /// another node may have changed them.
    pub async fn store_settings(&self, store: &str) -> Result<StoreSettings, LedgerError> {
        if let Some(cluster) = &self.cluster {
            let values = cluster.store.values_of(&store_stream(store)).await?;
            let stores = &self.terminals.stores;
            stores
                .absorb(&values)
                .map_err(|e| LedgerError::Unreadable(e.to_string()))?;
        }
        Ok(self.terminals.stores.get(store))
    }

    /// Publishes a sale's view for the other nodes whenever it changes (at most every
    /// `PUBLISH_EVERY`), for as long as this node serves the sale.
    pub fn publish_views(&self, id: &str) {
        let (Some(cluster), Some(sale)) = (self.cluster.clone(), self.ledger.sale(id)) else {
            return;
        };
        let id = id.to_owned();
        let mut changes = sale.view_changes();
        drop(sale);
        tokio::spawn(async move {
            let mut ranks_published = false;
            while cluster.epoch(&id).is_some() {
                let view = changes.borrow_and_update().clone();
                let published = PublishedView::of(&view);
                if published.needs_ranks() && !ranks_published {
                    let ranks = crate::cluster::encode_ranks(&view.queue.ranks);
                    let stream = crate::cluster::ranks_stream(&id);
                    ranks_published = cluster.store.publish_view(&stream, &ranks).await.is_ok();
                }
                if let Err(error) = cluster.store.publish_view(&id, &published.encode()).await {
                    tracing::warn!(%error, sale = %id, "a view could not be published");
                }
                tokio::time::sleep(PUBLISH_EVERY).await;
                if changes.changed().await.is_err() {
                    return; // The sale's actor has ended.
                }
            }
        });
    }
}

impl SaleDesk for AppInner {
    fn view(&self, sale: &str) -> Option<Arc<SaleView>> {
        self.sale_view(sale)
    }

    fn call<'a>(
        &'a self,
        sale: &'a str,
        call: SaleCall,
    ) -> crate::terminals::Pending<'a, Result<SaleCallAnswer, LedgerError>> {
        Box::pin(async move {
            let request = ForwardedRequest {
                method: "POST".into(),
                uri: format!("/internal/v1/sales/{sale}/call"),
                headers: Vec::new(),
                body: postcard::to_stdvec(&call).expect("calls serialise"),
            };
            match self.route(sale, &request).await? {
                Routed::Here => serve_sale_call(&self.ledger, sale, call).await,
                Routed::Nowhere => Ok(SaleCallAnswer::NoSale),
                Routed::There(answer) if answer.status == 200 => {
                    postcard::from_bytes(&answer.body).map_err(|_| LedgerError::NodeUnreachable)
                }
                Routed::There(_) => Err(LedgerError::Moved),
            }
        })
    }
}
