//! Wiring: recover the ledger, build the router, bind the listener.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rand::RngCore;
use thiserror::Error;
use tokio::net::TcpListener;

use crate::auth::TokenKeys;
use crate::cluster::{BATCH_PATH, Cluster, ClusterConfig};
use crate::config::{Config, Limits};
use crate::idempotency::Idempotency;
use crate::ledger::{Ledger, RecoveryError};
use crate::settlement::Settlements;
use crate::snapshots::{SnapshotStore, Snapshotter};
use crate::state::{AppInner, AppState};
use crate::streams::{Leases, Streams};
use crate::terminals::Terminals;
use holdfast_store::{GroupCommit, GroupCommitConfig};

/// Why the server does not start. Each names what to fix: the path or the address, and why.
/// A message leaves its cause out: the cause is the error's `source`, and whoever prints the
/// chain prints it once.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot listen on {address}{}", listen_hint(.source))]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot use the data directory {}{}", path.display(), data_dir_hint(.source))]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another holdfast server is using the data directory {}; stop it, or give this one \
         another --data",
        .0.display()
    )]
    DataDirInUse(PathBuf),
    #[error("cannot open the log in {}", path.display())]
    Store {
        path: PathBuf,
        source: holdfast_store::StoreError,
    },
    #[error("cannot recover the ledger")]
    Recovery(#[from] RecoveryError),
    #[error("cannot use the database: {0}")]
    Database(holdfast_store::StoreError),
    #[error(
        "several nodes share one operator token: give it to each (HOLDFAST_OPERATOR_TOKEN, or \
         --operator-token-file)"
    )]
    OperatorTokenNeeded,
    #[error(transparent)]
    Idempotency(#[from] crate::idempotency::UnreadableAnswer),
    #[error(transparent)]
    Terminals(#[from] crate::terminals::TerminalsUnreadable),
}

fn data_dir_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotADirectory => {
            " (it is not a directory: give --data a directory, or a path that does not exist yet)"
        }
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            " (this user cannot write there: give --data a directory it can write)"
        }
        _ => "",
    }
}

fn listen_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another program, perhaps another holdfast, is using that port: stop it, or \
             choose another with --listen)"
        }
        std::io::ErrorKind::PermissionDenied => {
            " (ports below 1024 need privileges: choose a higher one with --listen)"
        }
        _ => "",
    }
}

/// Where the operator token came from, so `serve` can say so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperatorTokenSource {
    /// Given in the configuration (the environment, or a file named on the command line).
    Configured,
    /// Made up now, and kept in this file for the next start.
    Created(PathBuf),
    /// Made up at an earlier start, and read back from this file.
    Kept(PathBuf),
}

const OPERATOR_TOKEN_FILE: &str = "operator-token";

/// What the two ways of starting hand to `assemble`.
struct Parts {
    ledger: Ledger,
    values: Vec<(String, Vec<u8>)>,
    terminal_snapshots: Vec<holdfast_store::StoredSnapshot>,
    tokens: TokenKeys,
    operator_token: (String, OperatorTokenSource),
    cluster: Option<Arc<Cluster>>,
    data_lock: Option<File>,
}

/// The address other nodes reach this one at, when none is given: the listening one, with
/// "any address" read as this machine.
fn advertised(listening: SocketAddr) -> String {
    let mut address = listening;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{address}")
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    operator_token: String,
    operator_token_source: OperatorTokenSource,
    limits: Limits,
    /// Tells background workers (payment settlement, leases, views) to stop when serving ends.
    stop_workers: tokio::sync::watch::Sender<bool>,
    /// Held open for the server's lifetime: its lock keeps a second server off the same data.
    /// Several nodes keep no data of their own.
    _data_lock: Option<File>,
}

fn generate_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The configured token, or the one kept in the data directory (made now if there is none),
/// so a server without a configured token keeps the same one across restarts.
fn operator_token(
    configured: Option<String>,
    data_dir: &Path,
) -> std::io::Result<(String, OperatorTokenSource)> {
    if let Some(token) = configured.filter(|t| !t.is_empty()) {
        return Ok((token, OperatorTokenSource::Configured));
    }
    let path = data_dir.join(OPERATOR_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => {
            Ok((token.trim().to_owned(), OperatorTokenSource::Kept(path)))
        }
        Ok(_) => Err(std::io::Error::other(format!(
            "{} is empty; delete it to have a new token made",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = generate_token();
            crate::auth::write_private(&path, token.as_bytes())?;
            Ok((token, OperatorTokenSource::Created(path)))
        }
        Err(e) => Err(e),
    }
}

impl Application {
    /// Recovers state from `config.data_dir` and binds `config.listen` (port 0 picks a free
    /// port; read it back with `local_addr`).
    pub async fn build(config: Config) -> Result<Application, StartError> {
        // The address first: a port in use is reported before any recovery work is spent.
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    address: config.listen,
                    source,
                })?;
        match config.cluster.clone() {
            None => Application::alone(listener, config).await,
            Some(cluster) => Application::one_of_several(listener, config, cluster).await,
        }
    }

    /// One process on the embedded log in its data directory.
    async fn alone(listener: TcpListener, config: Config) -> Result<Application, StartError> {
        let data = &config.data_dir;
        let data_error = |source| StartError::DataDir {
            path: data.clone(),
            source,
        };
        std::fs::create_dir_all(data).map_err(data_error)?;
        let data_lock = File::create(data.join("LOCK")).map_err(data_error)?;
        data_lock
            .try_lock()
            .map_err(|_| StartError::DataDirInUse(data.clone()))?;
        let backend =
            holdfast_store::SqliteLog::open(data).map_err(|source| StartError::Store {
                path: data.clone(),
                source,
            })?;
        let snapshots = SnapshotStore::embedded(data).map_err(|source| StartError::Store {
            path: data.clone(),
            source,
        })?;
        let (ledger, rest) = Ledger::recover(
            backend,
            Snapshotter::spawn(snapshots),
            config.clock.clone(),
            config.limits,
        )?;
        let tokens = TokenKeys::load_or_create(data).map_err(data_error)?;
        let (operator_token, source) =
            operator_token(config.operator_token.clone(), data).map_err(data_error)?;
        let parts = Parts {
            ledger,
            values: rest.values,
            terminal_snapshots: rest.terminal_snapshots,
            tokens,
            operator_token: (operator_token, source),
            cluster: None,
            data_lock: Some(data_lock),
        };
        Application::assemble(listener, config, parts)
    }

    /// One node of several on PostgreSQL: nothing is read at start-up; the node takes sales,
    /// terminals and stores over as requests for them arrive or their holders' time runs out.
    async fn one_of_several(
        listener: TcpListener,
        config: Config,
        mut cluster_config: ClusterConfig,
    ) -> Result<Application, StartError> {
        let operator_token = config
            .operator_token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or(StartError::OperatorTokenNeeded)?;
        if cluster_config.advertise.is_empty() {
            cluster_config.advertise =
                advertised(listener.local_addr().map_err(|source| StartError::Listen {
                    address: config.listen,
                    source,
                })?);
        }
        let node = crate::cluster::node_name();
        let cluster = Cluster::join(&cluster_config, node.clone())
            .await
            .map_err(StartError::Database)?;
        let cluster = Arc::new(cluster);
        let url = cluster_config.database_url.clone();
        let writer =
            tokio::task::spawn_blocking(move || holdfast_store::PgLog::connect(&url, &node))
                .await
                .expect("connecting the log writer does not panic")
                .map_err(StartError::Database)?;
        let log = GroupCommit::spawn(writer, GroupCommitConfig::default());
        let leases: Arc<dyn Leases> = cluster.clone();
        let streams = Streams::shared(log, leases);
        let snapshotter = Snapshotter::spawn(SnapshotStore::Shared(cluster.store.clone()));
        let ledger = Ledger::empty(streams, snapshotter, config.clock.clone(), config.limits);
        let secret = cluster
            .store
            .shared_secret("token-secret", &crate::auth::random_secret())
            .await
            .map_err(StartError::Database)?;
        let values = cluster
            .store
            .global_values()
            .await
            .map_err(StartError::Database)?;
        let parts = Parts {
            ledger,
            values,
            terminal_snapshots: Vec::new(),
            tokens: TokenKeys::from_secret(&secret),
            operator_token: (operator_token, OperatorTokenSource::Configured),
            cluster: Some(cluster),
            data_lock: None,
        };
        Application::assemble(listener, config, parts)
    }

    /// The state every handler shares, its background workers, and the router.
    fn assemble(
        listener: TcpListener,
        config: Config,
        parts: Parts,
    ) -> Result<Application, StartError> {
        let now = config.clock.now();
        let streams = parts.ledger.streams().clone();
        let idempotency = Idempotency::recover(&parts.values, now)?;
        let terminals = Terminals::recover(
            streams.clone(),
            &parts.values,
            &parts.terminal_snapshots,
            now,
        )?;
        let ledger = Arc::new(parts.ledger);
        let settlements = Arc::new(Settlements::recover(
            &parts.values,
            config.payments.clone(),
            streams,
            config.clock.clone(),
        ));
        let (operator_token, operator_token_source) = parts.operator_token;
        let state = AppState(Arc::new(AppInner {
            ledger: ledger.clone(),
            settlements: settlements.clone(),
            terminals,
            tokens: parts.tokens,
            operator_token: operator_token.clone(),
            clock: config.clock,
            payments: config.payments,
            idempotency,
            limits: config.limits,
            metrics: crate::telemetry::install(),
            latencies: Default::default(),
            refused_from_view: Default::default(),
            bodies_in_progress: Default::default(),
            requests_shed: Default::default(),
            pressure: Default::default(),
            feed: Default::default(),
            data_dir: parts.data_lock.is_some().then(|| config.data_dir.clone()),
            write_permits: Arc::new(tokio::sync::Semaphore::new(
                config.limits.writes_in_flight_max,
            )),
            sync_permits: Arc::new(tokio::sync::Semaphore::new(
                config.limits.syncs_in_flight_max,
            )),
            cluster: parts.cluster,
        }));
        let (stop_workers, workers_stop) = tokio::sync::watch::channel(false);
        tokio::spawn(settlements.clone().run(
            ledger,
            config.limits.settlement_retry_every,
            workers_stop.clone(),
        ));
        tokio::spawn(crate::compaction::run(
            state.ledger.streams().clone(),
            settlements.clone(),
            state.clock.clone(),
            config.limits.compact_values_every,
            workers_stop.clone(),
        ));
        tokio::spawn(crate::feed::run(
            state.clone(),
            config.limits.feed_every,
            workers_stop.clone(),
        ));
        if let Some(cluster) = state.cluster.clone() {
            tokio::spawn(crate::workers::keep_leases(
                state.clone(),
                cluster.clone(),
                workers_stop.clone(),
            ));
            tokio::spawn(crate::workers::follow_views(cluster, workers_stop));
        }
        let router = crate::api::router(state.clone());
        Ok(Application {
            listener,
            router,
            state,
            limits: config.limits,
            stop_workers,
            operator_token,
            operator_token_source,
            _data_lock: parts.data_lock,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn operator_token(&self) -> &str {
        &self.operator_token
    }

    /// Whether the token was configured, made up now, or kept from an earlier start.
    pub fn operator_token_source(&self) -> &OperatorTokenSource {
        &self.operator_token_source
    }

    /// Serves until `shutdown` resolves, then lets requests in flight finish.
    ///
    /// The connection loop is hyper's own rather than `axum::serve`, to bound what one client
    /// can hold: at most `connections_max` connections, each given `header_read_timeout` to
    /// send a request's headers (and no longer to sit idle between requests).
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Application {
            listener,
            router,
            state,
            limits,
            stop_workers,
            _data_lock,
            ..
        } = self;
        let connections = Arc::new(tokio::sync::Semaphore::new(limits.connections_max));
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = accept(&listener, &connections) => accepted,
            };
            let Some((stream, permit)) = accepted else {
                continue;
            };
            let service = TowerToHyperService::new(node_service(router.clone(), state.clone()));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            let watched = graceful.watch(connection);
            tokio::spawn(async move {
                // A client that goes away mid-request is not the server's failure.
                let _ = watched.await;
                drop(permit);
            });
        }
        drop(listener);
        // Event-feed streams never end by themselves: end them, or the wait below never would.
        state.feed.end();
        graceful.shutdown().await;
        let _ = stop_workers.send(true);
        if let Some(cluster) = &state.cluster {
            // The others need not wait for this node's leases to run out.
            cluster.release_all().await;
        }
        Ok(())
    }
}

/// The router, and on several nodes the batches other nodes hand over (served outside the
/// router, since they run requests through it).
fn node_service(
    router: Router,
    state: AppState,
) -> impl tower::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let (router, state) = (router.clone(), state.clone());
        async move {
            let request = request.map(Body::new);
            if state.cluster.is_some() && request.uri().path() == BATCH_PATH {
                return Ok(crate::api::internal::serve_batch(router, state, request).await);
            }
            tower::ServiceExt::oneshot(router, request).await
        }
    })
}

/// The next connection, once there is room for it. Errors accepting (a client that reset
/// before being accepted, descriptors running out) pause briefly and skip, never end serving.
async fn accept(
    listener: &TcpListener,
    connections: &Arc<tokio::sync::Semaphore>,
) -> Option<(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    let permit = connections
        .clone()
        .acquire_owned()
        .await
        .expect("the connection semaphore is never closed");
    match listener.accept().await {
        Ok((stream, _peer)) => {
            let _ = stream.set_nodelay(true);
            Some((stream, permit))
        }
        Err(error) => {
            tracing::warn!(%error, "accepting a connection failed");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            None
        }
    }
}
