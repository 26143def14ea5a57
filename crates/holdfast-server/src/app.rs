//! Wiring: recover the ledger, build the router, bind the listener.

use std::fs::File;
use std::net::SocketAddr;
use std::ops::Deref;
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

#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot use the data directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("another holdfast server is using this data directory")]
    DataDirInUse,
    #[error(transparent)]
    Store(#[from] holdfast_store::StoreError),
    #[error("cannot recover the ledger: {0}")]
    Recovery(#[from] RecoveryError),
    #[error(transparent)]
    Idempotency(#[from] crate::idempotency::UnreadableAnswer),
    #[error("cannot read terminal records: {0}")]
    Terminals(#[from] serde_json::Error),
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    operator_token: String,
    operator_token_generated: bool,
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

impl Application {
    /// Recovers state from `config.data_dir` and binds `config.listen` (port 0 picks a free
    /// port; read it back with `local_addr`).
    pub async fn build(config: Config) -> Result<Application, StartError> {
        std::fs::create_dir_all(&config.data_dir)?;
        let data_lock = File::create(config.data_dir.join("LOCK"))?;
        data_lock.try_lock().map_err(|_| StartError::DataDirInUse)?;
        let backend = holdfast_store::SqliteLog::open(&config.data_dir)?;
        let (ledger, rest) = Ledger::recover(backend, config.clock.clone(), config.limits)?;
        let idempotency = Idempotency::recover(&rest.values, config.clock.now())?;
        let terminals = Terminals::recover(
            ledger.log().clone(),
            &rest.values,
            &rest.terminal_snapshots,
            config.clock.now(),
        )?;
        let tokens = TokenKeys::load_or_create(&config.data_dir)?;
        let (operator_token, operator_token_generated) = match config.operator_token {
            Some(token) if !token.is_empty() => (token, false),
            _ => (generate_token(), true),
        };
        let ledger = Arc::new(ledger);
        let settlements = Arc::new(Settlements::recover(
            &rest.values,
            config.payments.clone(),
            ledger.log().clone(),
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
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Application {
            listener,
            router,
            limits: config.limits,
            stop_workers,
            operator_token,
            operator_token_generated,
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

    /// True when no token was configured and this one was made up at start-up.
    pub fn operator_token_generated(&self) -> bool {
        self.operator_token_generated
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
