//! Wiring: recover the ledger, build the router, bind the listener.

use std::fs::File;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rand::RngCore;
use thiserror::Error;
use tokio::net::TcpListener;

use crate::auth::TokenKeys;
use crate::clock::Clock;
use crate::config::{Config, Limits};
use crate::idempotency::Idempotency;
use crate::ledger::{Ledger, RecoveryError};
use crate::payments::PaymentProvider;
use crate::settlement::Settlements;
use crate::terminals::Terminals;

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
    /// The `Date` header, formatted once a second.
    pub http_date: crate::api::HttpDate,
    /// One permit per write request in flight (see `api::overload`).
    pub write_permits: Arc<tokio::sync::Semaphore>,
    /// One permit per terminal sync in flight: a reconnect storm gets a slice, not everything.
    pub sync_permits: Arc<tokio::sync::Semaphore>,
}

/// The one state struct every handler gets.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// Why the server does not start. Each names what to fix: the path or the address, and why.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}{}", listen_hint(.source))]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot use the data directory {}: {source}", path.display())]
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
    #[error("cannot open the log in {}: {source}", path.display())]
    Store {
        path: PathBuf,
        source: holdfast_store::StoreError,
    },
    #[error("cannot recover the ledger: {0}")]
    Recovery(#[from] RecoveryError),
    #[error(transparent)]
    Idempotency(#[from] crate::idempotency::UnreadableAnswer),
    #[error(transparent)]
    Terminals(#[from] crate::terminals::TerminalsUnreadable),
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

pub struct Application {
    listener: TcpListener,
    router: Router,
    operator_token: String,
    operator_token_source: OperatorTokenSource,
    limits: Limits,
    /// Tells background workers (payment settlement) to stop when serving ends.
    stop_workers: tokio::sync::watch::Sender<bool>,
    /// Held open for the server's lifetime: its lock keeps a second server off the same data.
    _data_lock: File,
}

/// Prometheus allows one global recorder per process; tests build many servers in one.
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
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
        let (ledger, rest) = Ledger::recover(backend, config.clock.clone(), config.limits)?;
        let idempotency = Idempotency::recover(&rest.values, config.clock.now())?;
        let terminals = Terminals::recover(
            ledger.streams().clone(),
            &rest.values,
            &rest.terminal_snapshots,
            config.clock.now(),
        )?;
        let tokens = TokenKeys::load_or_create(data).map_err(data_error)?;
        let (operator_token, operator_token_source) =
            operator_token(config.operator_token.clone(), data).map_err(data_error)?;
        let ledger = Arc::new(ledger);
        let settlements = Arc::new(Settlements::recover(
            &rest.values,
            config.payments.clone(),
            ledger.streams().clone(),
            config.clock.clone(),
        ));
        let (stop_workers, workers_stop) = tokio::sync::watch::channel(false);
        tokio::spawn(settlements.clone().run(
            ledger.clone(),
            config.limits.settlement_retry_every,
            workers_stop,
        ));
        let state = AppState(Arc::new(AppInner {
            ledger,
            settlements,
            terminals,
            tokens,
            operator_token: operator_token.clone(),
            clock: config.clock,
            payments: config.payments,
            idempotency,
            limits: config.limits,
            metrics: prometheus(),
            http_date: crate::api::HttpDate::default(),
            write_permits: Arc::new(tokio::sync::Semaphore::new(
                config.limits.writes_in_flight_max,
            )),
            sync_permits: Arc::new(tokio::sync::Semaphore::new(
                config.limits.syncs_in_flight_max,
            )),
        }));
        let router = crate::api::router(state);
        Ok(Application {
            listener,
            router,
            limits: config.limits,
            stop_workers,
            operator_token,
            operator_token_source,
            _data_lock: data_lock,
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
            let service = TowerToHyperService::new(router.clone());
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
        graceful.shutdown().await;
        let _ = stop_workers.send(true);
        Ok(())
    }
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
