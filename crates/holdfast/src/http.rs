//! The HTTP client the tools share (bench, load, verify-draw), and an in-process server for
//! tools that bring their own.

use std::net::SocketAddr;
use std::path::Path;

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
    let response = client.request(request.body(Full::new(body))?).await?;
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
    let authorization = token.map(|t| format!("Bearer {t}"));
    let body = match body {
        Some(value) => Bytes::from(serde_json::to_vec(value)?),
        None => Bytes::new(),
    };
    let (status, bytes) =
        send_raw(client, method, url, authorization.as_deref(), None, body).await?;
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)?
    };
    Ok((status, value))
}

/// A Holdfast server running on its own runtime in this process, on a fresh data directory.
pub struct InProcessServer {
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl InProcessServer {
    pub fn start(
        runtime: &tokio::runtime::Runtime,
        data: &Path,
        operator_token: &str,
    ) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(data);
        let config = holdfast_server::Config::new(
            "127.0.0.1:0".parse()?,
            data.to_path_buf(),
            Some(operator_token.into()),
        );
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
