//! The HTTP client the tools share (bench, load, verify-draw), and an in-process server for
//! tools that bring their own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client(idle_connections_max: usize) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle_connections_max)
        .build_http()
}

/// Sends a request with a prepared body and returns the status and the unparsed answer.
pub async fn send_raw(
    client: &HttpClient,
    method: Method,
    url: &str,
    authorization: Option<&str>,
    idempotency_key: Option<&str>,
    body: Bytes,
) -> anyhow::Result<(u16, Bytes)> {
    let (status, _, answer) =
        send_raw_retry_after(client, method, url, authorization, idempotency_key, body).await?;
    Ok((status, answer))
}

/// Like `send_raw`, also returning the `Retry-After` seconds the server asked for, if any.
pub async fn send_raw_retry_after(
    client: &HttpClient,
    method: Method,
    url: &str,
    authorization: Option<&str>,
    idempotency_key: Option<&str>,
    body: Bytes,
) -> anyhow::Result<(u16, Option<u64>, Bytes)> {
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    let response = client
        .request(request.body(Full::new(body))?)
        .await
        .with_context(|| format!("cannot reach the server at {url}"))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Ok((
        status,
        retry_after,
        response.into_body().collect().await?.to_bytes(),
    ))
}

/// Sends JSON with a bearer token and parses the JSON answer.
pub async fn send_json(
    client: &HttpClient,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    let (status, _, value) = send_json_retry_after(client, method, url, token, body).await?;
    Ok((status, value))
}

/// Like `send_json`, also returning the `Retry-After` seconds the server asked for, if any.
pub async fn send_json_retry_after(
    client: &HttpClient,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Option<u64>, Value)> {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let body = match body {
        Some(value) => Bytes::from(serde_json::to_vec(value)?),
        None => Bytes::new(),
    };
    let (status, retry_after, bytes) =
        send_raw_retry_after(client, method, url, authorization.as_deref(), None, body).await?;
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)?
    };
    Ok((status, retry_after, value))
}

/// A server's address as a person types it, checked so a slip is named plainly: it must be
/// `http://host[:port]` (the tools speak plain HTTP). A trailing slash is dropped.
pub fn server_url(raw: &str) -> Result<String, String> {
    let url = raw.trim().trim_end_matches('/');
    let example = "like http://127.0.0.1:8080";
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| format!("'{raw}' is not a server address; write it {example}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(_)) if uri.path() == "/" || uri.path().is_empty() => Ok(url.to_owned()),
        (Some("https"), _) => Err(format!(
            "'{raw}': the tools speak plain HTTP to a server on this machine or network; write it {example}"
        )),
        (None, _) => Err(format!(
            "'{raw}' has no http:// in front; write it {example}"
        )),
        _ => Err(format!("'{raw}' should name only the server, {example}")),
    }
}

/// What a tool says in `--help` about `--data`.
pub const DATA_HELP: &str = "Where the tool's own servers keep their data. Left out: a fresh \
    hidden directory in the current directory (on disk, so fsync is real), removed afterwards. \
    Given: it must be empty or not exist yet, and it is kept; nothing in it is ever deleted";

/// Where a tool's own servers keep their data. A tool never deletes what it did not create: a
/// directory the user named must be empty (or absent) and is left in place; the default is a
/// temporary directory the tool made, removed when it is done.
pub struct ToolData {
    root: PathBuf,
    _temporary: Option<tempfile::TempDir>,
    servers: std::sync::atomic::AtomicUsize,
}

impl ToolData {
    pub fn new(named: Option<&Path>, tool: &str) -> anyhow::Result<ToolData> {
        let Some(dir) = named else {
            let temporary = tempfile::Builder::new()
                .prefix(&format!(".holdfast-{tool}-"))
                .tempdir_in(".")
                .context("cannot make a temporary data directory in the current directory")?;
            return Ok(ToolData {
                root: temporary.path().to_path_buf(),
                _temporary: Some(temporary),
                servers: Default::default(),
            });
        };
        match std::fs::read_dir(dir) {
            Ok(mut entries) => anyhow::ensure!(
                entries.next().is_none(),
                "{} is not empty: name an empty or new directory for --data (nothing in a \
                 directory you name is ever deleted), or leave --data out for a temporary one",
                dir.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the data directory {}", dir.display()))?,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        }
        Ok(ToolData {
            root: dir.to_path_buf(),
            _temporary: None,
            servers: Default::default(),
        })
    }

    /// A new, empty directory for one server.
    pub fn next_server_dir(&self) -> anyhow::Result<PathBuf> {
        let n = self
            .servers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.root.join(format!("server-{}", n + 1));
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// A Holdfast server running on its own runtime in this process, on a fresh data directory.
pub struct InProcessServer {
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl InProcessServer {
    /// Starts a server on a new directory of `data`.
    pub fn start(
        runtime: &tokio::runtime::Runtime,
        data: &ToolData,
        operator_token: &str,
    ) -> anyhow::Result<Self> {
        let config = holdfast_server::Config::new(
            "127.0.0.1:0".parse()?,
            data.next_server_dir()?,
            Some(operator_token.into()),
        );
        InProcessServer::start_with(runtime, config)
    }

    /// Starts a server with `config` (one node on a database, say).
    pub fn start_with(
        runtime: &tokio::runtime::Runtime,
        config: holdfast_server::Config,
    ) -> anyhow::Result<Self> {
        let app = runtime.block_on(holdfast_server::Application::build(config))?;
        let address = app.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = runtime.spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Ok(InProcessServer {
            address,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn stop(mut self, runtime: &tokio::runtime::Runtime) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = runtime.block_on(task);
        }
    }
}
