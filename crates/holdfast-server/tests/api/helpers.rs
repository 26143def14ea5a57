use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use holdfast_core::Timestamp;
use holdfast_server::clock::ManualClock;
use holdfast_server::payments::{
    Authorization, AuthorizeRequest, PaymentError, PaymentFuture, PaymentProvider,
    SimulatedAcquirer,
};
use holdfast_server::{Application, ClusterConfig, Config, Limits};
use holdfast_testkit::TestPostgres;
use reqwest::{Method, StatusCode};
pub use rstest::rstest;
pub use rstest_reuse::{self, apply, template};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const OPERATOR: &str = "test-operator-token";
/// 2026-01-01T00:00:00Z: the moment every test app starts at.
pub const START: Timestamp = Timestamp(1_767_225_600_000);

/// What the server under test keeps its ledger in. The whole suite runs against each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// One process, the embedded SQLite log (the default).
    Embedded,
    /// One node on PostgreSQL.
    Postgres,
    /// Two nodes on one PostgreSQL, the test's requests taking turns between them: any node
    /// must answer any request.
    TwoNodes,
}

/// Runs a test once per backend: `#[apply(backends)]` on an `async fn name(backend: Backend)`.
#[template]
#[rstest]
#[case::embedded(Backend::Embedded)]
#[case::postgres(Backend::Postgres)]
#[case::two_nodes(Backend::TwoNodes)]
#[tokio::test]
pub fn backends(#[case] backend: Backend) {}

pub struct TestApp {
    /// The first node's address (for raw connections).
    pub base: String,
    /// Every node's address.
    pub bases: Vec<String>,
    turn: AtomicUsize,
    pub backend: Backend,
    pub client: reqwest::Client,
    pub clock: ManualClock,
    pub acquirer: Arc<SimulatedAcquirer>,
    /// What the server talks to: the acquirer, or a wrapper around it.
    payments: Arc<dyn PaymentProvider>,
    pub dir: Arc<tempfile::TempDir>,
    /// The PostgreSQL database, for the backends that use one.
    pub database: Option<String>,
    limits: Limits,
    servers: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
}

pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, Limits::default()).await
}

pub async fn spawn_app_with(backend: Backend, limits: Limits) -> TestApp {
    let acquirer = Arc::new(SimulatedAcquirer::default());
    Setup::new(backend, acquirer.clone(), acquirer, limits)
        .start()
        .await
}

/// An app whose card network stops inside `authorize` until the test opens the gate.
pub async fn spawn_app_gated(backend: Backend, limits: Limits) -> (TestApp, Gate) {
    spawn_app_gated_at(backend, limits, Down::Authorizations).await
}

/// An app whose card network stops inside `which` calls until the test opens the gate.
pub async fn spawn_app_gated_at(backend: Backend, limits: Limits, which: Down) -> (TestApp, Gate) {
    let acquirer = Arc::new(SimulatedAcquirer::default());
    let (entered_tx, entered) = tokio::sync::mpsc::unbounded_channel();
    let (release, gate) = tokio::sync::watch::channel(false);
    let gated = Arc::new(GatedAcquirer {
        inner: acquirer.clone(),
        entered: entered_tx,
        gate,
        which,
    });
    let app = Setup::new(backend, gated, acquirer, limits).start().await;
    (app, Gate { entered, release })
}

/// Which calls a card network that is down refuses (or a gated one holds up).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Down {
    Captures,
    Authorizations,
}

/// An app whose card network refuses `which` calls (`Unavailable`) while the flag is set.
pub async fn spawn_app_with_network_down(
    backend: Backend,
    limits: Limits,
    which: Down,
) -> (TestApp, Arc<AtomicBool>) {
    let acquirer = Arc::new(SimulatedAcquirer::default());
    let down = Arc::new(AtomicBool::new(true));
    let flaky = Arc::new(NetworkDown {
        inner: acquirer.clone(),
        down: down.clone(),
        which,
    });
    let app = Setup::new(backend, flaky, acquirer, limits).start().await;
    (app, down)
}

struct NetworkDown {
    inner: Arc<SimulatedAcquirer>,
    down: Arc<AtomicBool>,
    which: Down,
}

impl NetworkDown {
    fn refuses(&self, call: Down) -> bool {
        self.down.load(Ordering::SeqCst)
            && std::mem::discriminant(&call) == std::mem::discriminant(&self.which)
    }
}

fn unavailable<T: Send + 'static>() -> PaymentFuture<'static, T> {
    Box::pin(async { Err(PaymentError::Unavailable) })
}

impl PaymentProvider for NetworkDown {
    fn authorize(&self, request: AuthorizeRequest) -> PaymentFuture<'_, Authorization> {
        if self.refuses(Down::Authorizations) {
            return unavailable();
        }
        self.inner.authorize(request)
    }
    fn capture(&self, id: &str, key: &str) -> PaymentFuture<'_, ()> {
        if self.refuses(Down::Captures) {
            return unavailable();
        }
        self.inner.capture(id, key)
    }
    fn void(&self, id: &str, key: &str) -> PaymentFuture<'_, ()> {
        self.inner.void(id, key)
    }
    fn refund(&self, id: &str, amount: u64, key: &str) -> PaymentFuture<'_, ()> {
        self.inner.refund(id, amount, key)
    }
}

pub struct Gate {
    pub entered: tokio::sync::mpsc::UnboundedReceiver<()>,
    pub release: tokio::sync::watch::Sender<bool>,
}

struct GatedAcquirer {
    inner: Arc<SimulatedAcquirer>,
    entered: tokio::sync::mpsc::UnboundedSender<()>,
    gate: tokio::sync::watch::Receiver<bool>,
    which: Down,
}

impl GatedAcquirer {
    /// Waits at the gate if `call` is the gated kind.
    async fn pass(&self, call: Down) {
        if call != self.which {
            return;
        }
        let _ = self.entered.send(());
        let mut gate = self.gate.clone();
        gate.wait_for(|open| *open).await.unwrap();
    }
}

impl PaymentProvider for GatedAcquirer {
    fn authorize(&self, request: AuthorizeRequest) -> PaymentFuture<'_, Authorization> {
        Box::pin(async move {
            self.pass(Down::Authorizations).await;
            self.inner.authorize(request).await
        })
    }
    fn capture(&self, id: &str, key: &str) -> PaymentFuture<'_, ()> {
        let (id, key) = (id.to_owned(), key.to_owned());
        Box::pin(async move {
            self.pass(Down::Captures).await;
            self.inner.capture(&id, &key).await
        })
    }
    fn void(&self, id: &str, key: &str) -> PaymentFuture<'_, ()> {
        self.inner.void(id, key)
    }
    fn refund(&self, id: &str, amount: u64, key: &str) -> PaymentFuture<'_, ()> {
        self.inner.refund(id, amount, key)
    }
}

/// Everything a test app is started (and restarted) from.
#[derive(Clone)]
struct Setup {
    backend: Backend,
    dir: Arc<tempfile::TempDir>,
    database: Option<String>,
    clock: ManualClock,
    payments: Arc<dyn PaymentProvider>,
    acquirer: Arc<SimulatedAcquirer>,
    limits: Limits,
}

impl Setup {
    fn new(
        backend: Backend,
        payments: Arc<dyn PaymentProvider>,
        acquirer: Arc<SimulatedAcquirer>,
        limits: Limits,
    ) -> Setup {
        let database =
            (backend != Backend::Embedded).then(|| TestPostgres::shared().fresh_database());
        Setup {
            backend,
            dir: Arc::new(tempfile::tempdir().unwrap()),
            database,
            clock: ManualClock::new(START),
            payments,
            acquirer,
            limits,
        }
    }

    fn config(&self) -> Config {
        let mut config = Config::new(
            "127.0.0.1:0".parse().unwrap(),
            self.dir.path().to_path_buf(),
            Some(OPERATOR.into()),
        );
        config.clock = Arc::new(self.clock.clone());
        config.limits = self.limits;
        config.payments = self.payments.clone();
        config.cluster = self.database.as_ref().map(|url| ClusterConfig {
            database_url: url.clone(),
            advertise: String::new(),
            lease_ttl: Duration::from_secs(3),
        });
        config
    }

    async fn start(self) -> TestApp {
        let nodes = if self.backend == Backend::TwoNodes {
            2
        } else {
            1
        };
        let mut servers = Vec::new();
        let mut bases = Vec::new();
        for _ in 0..nodes {
            let app = Application::build(self.config()).await.expect("app starts");
            bases.push(format!("http://{}", app.local_addr()));
            let (shutdown, stop) = oneshot::channel::<()>();
            let server = tokio::spawn(async move {
                app.run_until(async {
                    let _ = stop.await;
                })
                .await
                .unwrap();
            });
            servers.push((shutdown, server));
        }
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        TestApp {
            base: bases[0].clone(),
            bases,
            turn: AtomicUsize::new(0),
            backend: self.backend,
            client,
            clock: self.clock,
            acquirer: self.acquirer,
            payments: self.payments,
            dir: self.dir,
            database: self.database,
            limits: self.limits,
            servers,
        }
    }
}

impl TestApp {
    /// Stops the servers and starts new ones on the same data and clock.
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        let setup = Setup {
            backend: self.backend,
            dir: self.dir.clone(),
            database: self.database.clone(),
            clock: self.clock.clone(),
            payments: self.payments.clone(),
            acquirer: self.acquirer.clone(),
            limits: self.limits,
        };
        setup.start().await
    }

    pub async fn stop(&mut self) {
        for (shutdown, server) in self.servers.drain(..) {
            let _ = shutdown.send(());
            server.await.unwrap();
        }
    }

    /// The next node's address: with several nodes, requests take turns between them.
    pub fn next_base(&self) -> &str {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        &self.bases[turn % self.bases.len()]
    }

    /// Sale snapshots stored: in the embedded log's snapshot file, or PostgreSQL's table.
    pub async fn sale_snapshot_count(&self) -> i64 {
        const SQL: &str = "SELECT COUNT(*) FROM snapshot WHERE stream NOT LIKE '%:%'";
        match &self.database {
            None => {
                let db = rusqlite::Connection::open(self.dir.path().join("snapshots.db")).unwrap();
                db.query_row(SQL, [], |row| row.get(0)).unwrap()
            }
            Some(_) => self.count_rows(SQL).await,
        }
    }

    /// Polls until a sale snapshot is stored (they are written in the background).
    pub async fn wait_for_a_sale_snapshot(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.sale_snapshot_count().await == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no snapshot written within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Counts rows with `sql` in whatever the backend stores the ledger in.
    pub async fn count_rows(&self, sql: &str) -> i64 {
        match &self.database {
            None => {
                let db = rusqlite::Connection::open(self.dir.path().join("holdfast.db")).unwrap();
                db.query_row(sql, [], |row| row.get(0)).unwrap()
            }
            Some(url) => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                client.query_one(sql, &[]).await.unwrap().get(0)
            }
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        self.call_with(method, path, token, body, None).await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> Answer {
        let url = format!("{}{path}", self.next_base());
        let mut request = self.client.request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer { status, body }
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Answer {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.next_base()))
            .header("Content-Type", content_type)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    pub async fn create_sale(&self, sale: Value) -> Answer {
        self.call(Method::POST, "/v1/sales", Some(OPERATOR), Some(sale))
            .await
    }

    pub async fn sale(&self, id: &str) -> Value {
        let answer = self
            .call(
                Method::GET,
                &format!("/v1/sales/{id}"),
                Some(OPERATOR),
                None,
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body
    }

    pub async fn token(
        &self,
        customer_id: &str,
        phone: Option<&str>,
        address: Option<&str>,
    ) -> String {
        let body = json!({"customer_id": customer_id, "phone": phone, "address": address});
        let answer = self
            .call(
                Method::POST,
                "/v1/customer-tokens",
                Some(OPERATOR),
                Some(body),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        answer.body["token"].as_str().unwrap().to_owned()
    }

    pub async fn hold(&self, sale: &str, token: &str, quantity: i64) -> Answer {
        self.hold_body(sale, token, json!({"quantity": quantity, "channel": "web"}))
            .await
    }

    pub async fn hold_body(&self, sale: &str, token: &str, body: Value) -> Answer {
        self.call(
            Method::POST,
            &format!("/v1/sales/{sale}/holds"),
            Some(token),
            Some(body),
        )
        .await
    }

    pub async fn confirm(&self, hold_id: &str, token: &str) -> Answer {
        self.confirm_with_card(hold_id, token, "tok_visa").await
    }

    /// Holds and pays in one request, with `key` as its `Idempotency-Key`.
    pub async fn purchase(&self, sale: &str, token: &str, card: &str, key: &str) -> Answer {
        let body =
            json!({"quantity": 1, "channel": "web", "payment": {"method": "card", "token": card}});
        let path = format!("/v1/sales/{sale}/purchases");
        self.call_with(Method::POST, &path, Some(token), Some(body), Some(key))
            .await
    }

    pub async fn confirm_with_card(&self, hold_id: &str, token: &str, card: &str) -> Answer {
        let body = json!({"payment": {"method": "card", "token": card}});
        self.call(
            Method::POST,
            &format!("/v1/holds/{hold_id}/confirm"),
            Some(token),
            Some(body),
        )
        .await
    }

    pub fn advance_s(&self, seconds: i64) {
        self.clock.advance_millis(seconds * 1000);
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        for (shutdown, _) in self.servers.drain(..) {
            let _ = shutdown.send(());
        }
    }
}

/// A sale open since the app's start, with sensible defaults; override fields with `patch`.
pub fn sale_json(id: &str, stock: u32, limit: u32, patch: Value) -> Value {
    let mut sale = json!({
        "id": id,
        "sku": "KF94-60",
        "name": "KF94 masks, 60 pack",
        "price": 39900,
        "stock": stock,
        "per_customer_limit": limit,
        "opens_at": "2026-01-01T00:00:00Z",
        "hold_ttl_s": 600,
        "queue": "none",
    });
    for (key, value) in patch.as_object().unwrap() {
        sale[key] = value.clone();
    }
    sale
}

pub fn stock(sale: &Value) -> (u64, u64, u64, u64) {
    let s = &sale["stock"];
    (
        s["total"].as_u64().unwrap(),
        s["available"].as_u64().unwrap(),
        s["held"].as_u64().unwrap(),
        s["sold"].as_u64().unwrap(),
    )
}

/// A raw connection to the app, for what a well-behaved client would never send.
pub async fn raw_connection(app: &TestApp, bytes: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let address = app.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Reads what the server sends until it closes the connection: the status code, if an answer
/// came, and the whole text.
pub async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> (Option<u16>, String) {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_end(&mut received),
    )
    .await
    .expect("the server closes the connection");
    let _ = read; // A reset after the answer is a close too.
    let text = String::from_utf8_lossy(&received).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    (status, text)
}

/// A node's `/metrics` page.
pub async fn metrics_page(app: &TestApp, base: &str) -> String {
    let page = app.client.get(format!("{base}/metrics")).send().await;
    page.unwrap().text().await.unwrap()
}

/// The value of a metric on the app's `/metrics` page (0 when absent). Metrics are one registry
/// per process, so with several nodes in a test any node's page shows them all.
pub async fn metric(app: &TestApp, name: &str) -> f64 {
    let page = metrics_page(app, &app.base).await;
    page.lines()
        .filter_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .next()
        .unwrap_or(0.0)
}

/// Checks the acquirer captured `n` payments, polling up to a deadline: a buyer is answered
/// once the order is durable, and the capture runs on after the answer.
pub async fn assert_captured(app: &TestApp, n: usize, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.acquirer.captured() < n && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(app.acquirer.captured(), n, "{what}");
}
