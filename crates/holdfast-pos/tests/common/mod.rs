//! What the till's tests share: a real server on loopback, operator calls, and a registered till.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::net::SocketAddr;
use std::path::Path;

use holdfast_pos::counter;
use holdfast_pos::journal::{Item, Journal};
use holdfast_pos::uplink::Uplink;
use holdfast_server::{Application, Config};
use serde_json::{Value, json};

pub const OPERATOR: &str = "till-test-operator";

/// A Holdfast server on loopback that can be stopped and started again on the same data.
pub struct Server {
    pub address: SocketAddr,
    pub base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub async fn start(data: &Path, listen: SocketAddr) -> Server {
        Server::start_with(Config::new(
            listen,
            data.to_path_buf(),
            Some(OPERATOR.into()),
        ))
        .await
    }

    pub async fn start_with(config: Config) -> Server {
        let app = Application::build(config).await.expect("server starts");
        let address = app.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Server {
            address,
            base: format!("http://{address}"),
            stop,
            task,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

pub async fn operator(
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let mut request = client()
        .request(method, format!("{base}{path}"))
        .bearer_auth(OPERATOR);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap().json().await.unwrap()
}

pub struct Till {
    pub journal: Journal,
    pub uplink: Uplink,
    pub key: chacha20poly1305::Key,
    secret: String,
    terminal: String,
    store: String,
    base: String,
}

impl Till {
    pub fn registration_secret(&self) -> &str {
        &self.secret
    }

    /// Another uplink for the same till, for a second process or a concurrent sync.
    pub fn uplink_clone(&self) -> Uplink {
        Uplink::new(
            vec![self.base.clone()],
            self.terminal.clone(),
            hex::decode(&self.secret).unwrap(),
        )
    }

    pub fn header(&self) -> holdfast_pos::receipt::Header {
        holdfast_pos::receipt::Header {
            store: self.store.clone(),
            terminal: self.terminal.clone(),
            pay_base: self.base.clone(),
            business_number: self.journal.setting("business_number").unwrap().flatten(),
            bank_account: self.journal.setting("bank_account").unwrap().flatten(),
        }
    }
}

/// A sale "masks" of `stock` units, a till registered for `store` and saved in its journal the
/// way `holdfast-pos init` does, holding `allot` units, with KF94 (from the allotment) on sale.
pub async fn masks_till(
    base: &str,
    dir: &Path,
    terminal: &str,
    store: &str,
    stock: u32,
    allot: u32,
) -> Till {
    let sale = json!({"id": "masks", "sku": "KF94", "name": "KF94 masks", "price": 39900, "stock": stock,
        "per_customer_limit": 1, "opens_at": "2020-01-01T00:00:00Z"});
    operator(base, reqwest::Method::POST, "/v1/sales", Some(sale)).await;
    second_till(base, dir, terminal, store, allot).await
}

/// Another till of the same server, holding `allot` units of the existing sale "masks".
pub async fn second_till(base: &str, dir: &Path, terminal: &str, store: &str, allot: u32) -> Till {
    let registered = operator(
        base,
        reqwest::Method::POST,
        "/v1/terminals",
        Some(json!({"terminal_id": terminal, "store": store})),
    )
    .await;
    let secret = registered["secret"].as_str().unwrap().to_owned();
    let journal = Journal::open(dir).unwrap();
    let registration =
        json!({"terminal_id": terminal, "store": store, "servers": [base], "secret": secret});
    journal.set_setting("registration", &registration).unwrap();
    let uplink = Uplink::new(
        vec![base.to_owned()],
        terminal.into(),
        hex::decode(&secret).unwrap(),
    );
    let granted = holdfast_pos::sync::set_allotment(&uplink, "masks", allot)
        .await
        .unwrap();
    assert_eq!(granted.granted, allot);
    journal
        .set_allotment("masks", allot, Some(&granted.terms))
        .unwrap();
    let item = Item {
        sku: "KF94".into(),
        name: "KF94 masks".into(),
        price: 39_900,
        sale_id: Some("masks".into()),
    };
    journal.put_item(&item).unwrap();
    Till {
        key: counter::card_key(dir).unwrap(),
        journal,
        uplink,
        secret,
        terminal: terminal.to_owned(),
        store: store.to_owned(),
        base: base.to_owned(),
    }
}

/// What the proxy does, from now on, to every connection (open ones included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forwards both ways.
    Pass,
    /// Closes a connection as soon as a request arrives on it: the server never sees it.
    DropRequests,
    /// Forwards a POST, swallows its answer and closes: the server acted, the client never
    /// hears. Other requests (health probes) pass.
    DropAnswers,
}

/// A TCP proxy on loopback in front of a server, injecting real network faults.
pub struct FaultProxy {
    pub base: String,
    fault: std::sync::Arc<std::sync::Mutex<Fault>>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let fault = std::sync::Arc::new(std::sync::Mutex::new(Fault::Pass));
        let shared = fault.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let fault = shared.clone();
                tokio::spawn(async move {
                    if let Ok(server) = tokio::net::TcpStream::connect(upstream).await {
                        relay(client, server, fault).await;
                    }
                });
            }
        });
        FaultProxy { base, fault }
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }
}

/// Relays one connection, judging every chunk from the client against the fault in force.
async fn relay(
    mut client: tokio::net::TcpStream,
    mut server: tokio::net::TcpStream,
    fault: std::sync::Arc<std::sync::Mutex<Fault>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut up, mut down) = ([0u8; 65536], [0u8; 65536]);
    // Set while a POST is being forwarded whose answer will be swallowed.
    let mut swallowing = false;
    loop {
        tokio::select! {
            read = client.read(&mut up) => {
                let Ok(n) = read else { return };
                if n == 0 {
                    return;
                }
                let current = *fault.lock().unwrap();
                match current {
                    Fault::DropRequests => return,
                    Fault::DropAnswers if up[..n].starts_with(b"POST ") => swallowing = true,
                    _ => {}
                }
                if server.write_all(&up[..n]).await.is_err() {
                    return;
                }
            }
            read = server.read(&mut down) => {
                let Ok(n) = read else { return };
                // The first byte of a swallowed answer means the server has acted: cut here.
                if n == 0 || swallowing || client.write_all(&down[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The time the server sees now, as a till would journal it.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A basket of one line.
pub fn basket(sku: &str, quantity: u32) -> holdfast_pos::counter::Basket {
    holdfast_pos::counter::Basket::of(vec![holdfast_pos::counter::Line {
        sku: sku.into(),
        quantity,
    }])
}

/// The operator sets the store "Mapo"'s catalogue: tea, and the masks of sale "masks" (listed
/// at `masks_price`, which the server replaces with the sale's), with the receipt settings.
pub async fn set_mapo_catalogue(base: &str, masks_price: u64) {
    let catalogue = json!({"items": [
        {"sku": "TEA", "name": "Barley tea", "price": 3000},
        {"sku": "KF94", "name": "KF94 masks", "price": masks_price, "sale_id": "masks"}
    ], "business_number": "123-45-67890", "bank_account": "Shinhan 110-123-456789"});
    let stored = client()
        .put(format!("{base}/v1/stores/Mapo/catalogue"))
        .bearer_auth(OPERATOR)
        .json(&catalogue)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);
}
