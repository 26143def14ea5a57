//! Handing requests to the node that holds their stream, in batches.
//!
//! Requests for one peer queue up while a batch to it is in flight and go together in the next:
//! one HTTP call (`POST /internal/v1/batch`, postcard-encoded) carries many requests, and the
//! peer runs them concurrently through its own router, so they also land in the same actor
//! batch there. A batch is signed with the secret every node reads from the database
//! (HMAC-SHA256 over the sender, the time and the body), and refused when older than a minute.
//!
//! A peer that does not hold a request's stream any more answers it with the `NOT_HERE` header
//! having done nothing, so the sender may look again and resend. A peer that does not answer
//! (dead, stopped) leaves the request's fate unknown: the client is told to retry, and its
//! idempotency key makes the retry safe.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Where peers take batches.
pub const BATCH_PATH: &str = "/internal/v1/batch";
/// Set on an answer whose request was not run because this node does not hold its stream.
pub const NOT_HERE: &str = "x-holdfast-not-here";
/// Carries a batch's signature: `<node> <unix millis> <hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "x-holdfast-node";

/// Requests one batch carries at most.
const BATCH_REQUESTS_MAX: usize = 256;
/// Batches to one peer in flight at once: a slow one does not hold up the rest.
const BATCHES_IN_FLIGHT_MAX: usize = 8;
/// Requests waiting for one peer; beyond it callers are told to retry.
const QUEUE_REQUESTS_MAX: usize = 16_384;
/// A peer that has not answered a batch in this long is taken for dead or stopped.
const BATCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How old a signed batch may be.
const SIGNATURE_AGE_MAX_MS: i64 = 60_000;

/// A request as it travels to the node that holds its stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardedRequest {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// Its answer, as it travels back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardedAnswer {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl ForwardedAnswer {
    pub fn not_here(&self) -> bool {
        self.headers.iter().any(|(name, _)| name == NOT_HERE)
    }
}

/// Marks a request that came from another node (a request extension): it is served here or
/// answered `NOT_HERE`, never forwarded again.
#[derive(Clone, Copy, Debug)]
pub struct Forwarded;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the node at {0} did not answer")]
    Unreachable(String),
    #[error("too many requests are waiting for the node at {0}")]
    Busy(String),
}

struct Job {
    request: ForwardedRequest,
    answer: oneshot::Sender<Result<ForwardedAnswer, ForwardError>>,
}

pub struct Forwarder {
    node: String,
    handed_over: std::sync::atomic::AtomicU64,
    secret: Vec<u8>,
    client: reqwest::Client,
    peers: Mutex<HashMap<String, mpsc::Sender<Job>>>,
}

impl Forwarder {
    pub fn new(node: String, secret: Vec<u8>) -> Forwarder {
        let client = reqwest::Client::builder()
            .timeout(BATCH_TIMEOUT)
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .build()
            .expect("an HTTP client with these settings builds");
        Forwarder {
            node,
            handed_over: Default::default(),
            secret,
            client,
            peers: Mutex::default(),
        }
    }

    /// Sends `request` to the node at `address` with the next batch to it.
    pub async fn send(
        &self,
        address: &str,
        request: ForwardedRequest,
    ) -> Result<ForwardedAnswer, ForwardError> {
        self.handed_over
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        let queue = self.queue(address);
        queue
            .try_send(Job { request, answer })
            .map_err(|_| ForwardError::Busy(address.to_owned()))?;
        answered
            .await
            .unwrap_or_else(|_| Err(ForwardError::Unreachable(address.to_owned())))
    }

    fn queue(&self, address: &str) -> mpsc::Sender<Job> {
        let mut peers = self.peers.lock().expect("peers");
        if let Some(queue) = peers.get(address).filter(|q| !q.is_closed()) {
            return queue.clone();
        }
        let (queue, jobs) = mpsc::channel(QUEUE_REQUESTS_MAX);
        let peer = Peer {
            url: format!("{}{BATCH_PATH}", address.trim_end_matches('/')),
            address: address.to_owned(),
            client: self.client.clone(),
            signer: Signer {
                node: self.node.clone(),
                secret: self.secret.clone(),
            },
        };
        tokio::spawn(peer.run(jobs));
        peers.insert(address.to_owned(), queue.clone());
        queue
    }

    /// Requests this node has handed to others since it started.
    pub fn handed_over(&self) -> u64 {
        self.handed_over.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checks a batch's signature header against its body.
    pub fn verify(&self, header: &str, body: &[u8]) -> bool {
        Signer::verify(&self.secret, header, body, now_ms())
    }
}

struct Peer {
    url: String,
    address: String,
    client: reqwest::Client,
    signer: Signer,
}

impl Peer {
    async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        let peer = Arc::new(self);
        let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
        while let Some(first) = jobs.recv().await {
            let permit = in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            // Whatever queued while waiting for a slot goes in this batch.
            let mut batch = vec![first];
            while batch.len() < BATCH_REQUESTS_MAX {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let peer = peer.clone();
            tokio::spawn(async move {
                peer.deliver(batch).await;
                drop(permit);
            });
        }
    }

    async fn deliver(&self, batch: Vec<Job>) {
        metrics::histogram!("holdfast_forwarded_requests_per_batch").record(batch.len() as f64);
        let (requests, answers): (Vec<ForwardedRequest>, Vec<_>) = batch
            .into_iter()
            .map(|job| (job.request, job.answer))
            .unzip();
        match self.call(&requests).await {
            Some(answered) if answered.len() == answers.len() => {
                for (answer, answered) in answers.into_iter().zip(answered) {
                    let _ = answer.send(Ok(answered));
                }
            }
            _ => {
                for answer in answers {
                    let _ = answer.send(Err(ForwardError::Unreachable(self.address.clone())));
                }
            }
        }
    }

    async fn call(&self, requests: &[ForwardedRequest]) -> Option<Vec<ForwardedAnswer>> {
        let body = postcard::to_stdvec(requests).expect("requests serialise");
        let signature = self.signer.sign(&body, now_ms());
        let sent = self
            .client
            .post(&self.url)
            .header(SIGNATURE_HEADER, signature)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) if response.status().is_success() => response,
            Ok(response) => {
                tracing::warn!(peer = %self.address, status = %response.status(), "a peer refused a batch");
                return None;
            }
            Err(error) => {
                tracing::warn!(peer = %self.address, %error, "a peer did not take a batch");
                return None;
            }
        };
        let bytes = response.bytes().await.ok()?;
        postcard::from_bytes(&bytes).ok()
    }
}

struct Signer {
    node: String,
    secret: Vec<u8>,
}

impl Signer {
    fn mac(secret: &[u8], node: &str, at_ms: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
        mac.update(node.as_bytes());
        mac.update(format!(" {at_ms} ").as_bytes());
        mac.update(body);
        mac
    }

    fn sign(&self, body: &[u8], at_ms: i64) -> String {
        let mac = Signer::mac(&self.secret, &self.node, at_ms, body);
        let signature = hex::encode(mac.finalize().into_bytes());
        format!("{} {at_ms} {signature}", self.node)
    }

    fn verify(secret: &[u8], header: &str, body: &[u8], now_ms: i64) -> bool {
        let mut fields = header.split(' ');
        let (Some(node), Some(at), Some(signature), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        let (Ok(at_ms), Ok(signature)) = (at.parse::<i64>(), hex::decode(signature)) else {
            return false;
        };
        (now_ms - at_ms).abs() <= SIGNATURE_AGE_MAX_MS
            && Signer::mac(secret, node, at_ms, body)
                .verify_slice(&signature)
                .is_ok()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_signature_binds_sender_time_and_body() {
        let signer = Signer {
            node: "node-a".into(),
            secret: b"secret".to_vec(),
        };
        let header = signer.sign(b"body", 1_000_000);
        assert!(Signer::verify(b"secret", &header, b"body", 1_000_000));
        assert!(!Signer::verify(
            b"secret",
            &header,
            b"other body",
            1_000_000
        ));
        assert!(!Signer::verify(
            b"other secret",
            &header,
            b"body",
            1_000_000
        ));
        let other_sender = header.replacen("node-a", "node-b", 1);
        assert!(!Signer::verify(
            b"secret",
            &other_sender,
            b"body",
            1_000_000
        ));
        assert!(!Signer::verify(
            b"secret",
            &header,
            b"body",
            1_000_000 + 61_000
        ));
        assert!(!Signer::verify(b"secret", "garbage", b"body", 1_000_000));
    }
}
