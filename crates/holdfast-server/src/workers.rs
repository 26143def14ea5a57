//! What a node of several does in the background: keeping its leases (and taking over those
//! whose holders died), and following the views other nodes publish of their sales.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::Cluster;
use crate::state::AppState;

/// How often published views are fetched: a poll answered from a view is at most about this
/// much (plus the publisher's own pace) behind the sale.
const VIEWS_EVERY: Duration = Duration::from_millis(200);

/// Renews this node's leases a few times per lease time, lets go of what was taken over, and
/// takes over streams whose holders' time ran out — so a dead node's sales carry on by
/// themselves, holds expiring and waiting rooms admitting, without waiting for a request.
pub async fn keep_leases(state: AppState, cluster: Arc<Cluster>, mut stop: watch::Receiver<bool>) {
    let every = cluster.ttl / 3;
    loop {
        for stream in cluster.renew().await {
            state.lost(&stream);
        }
        match cluster.vacant().await {
            Ok(streams) => {
                for stream in streams {
                    if let Err(error) = state.place(&stream, false).await {
                        tracing::warn!(%error, stream, "a vacant stream could not be taken over");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "vacant leases could not be looked up"),
        }
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Keeps this node's copies of other nodes' sale views fresh.
pub async fn follow_views(cluster: Arc<Cluster>, mut stop: watch::Receiver<bool>) {
    let mut since = 0;
    loop {
        match cluster.refresh_views(since).await {
            Ok(newest) => since = newest,
            Err(error) => tracing::warn!(%error, "published views could not be read"),
        }
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            () = tokio::time::sleep(VIEWS_EVERY) => {}
        }
    }
}
