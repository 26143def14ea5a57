//! Talking to the server: every request signed with the terminal's key, several server
//! addresses tried in turn (the shop's line, a mobile backup), jittered exponential back-off.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use holdfast_core::Timestamp;
use holdfast_core::terminal::auth::{Authorization, SignedRequest};
use rand::Rng;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// No address could be connected to: the request reached no server.
    #[error("no server could be reached at {0} (the line is down)")]
    Unreachable(String),
    /// A request was sent but its answer never came back: the server may have acted on it.
    /// Every call is idempotent, so sending it again is safe and finds out.
    #[error("the request was sent but its answer was lost; sending it again is safe")]
    AnswerLost,
    #[error("the server asked to come back in {0:?}")]
    RetryAfter(Duration),
}

pub struct Uplink {
    urls: Vec<String>,
    terminal: String,
    secret: Vec<u8>,
    client: reqwest::Client,
    /// The address that answered last, tried first next time.
    preferred: AtomicUsize,
    /// Server time minus local time, learned from answers, so signatures carry the server's
    /// time even when the shop's clock is wrong.
    clock_offset_ms: AtomicI64,
}

impl Uplink {
    /// The server addresses, as a person reads them in a message.
    pub fn addresses(&self) -> String {
        self.urls.join(", ")
    }

    /// Server time minus this machine's time, as last learned (0 until an answer came).
    pub fn clock_offset_ms(&self) -> i64 {
        self.clock_offset_ms.load(Ordering::Relaxed)
    }

    /// Starts from an offset learned earlier (kept in the journal across restarts).
    pub fn set_clock_offset_ms(&self, offset: i64) {
        self.clock_offset_ms.store(offset, Ordering::Relaxed);
    }
}

impl Uplink {
    pub fn new(urls: Vec<String>, terminal: String, secret: Vec<u8>) -> Uplink {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(15))
            .build()
            .expect("an HTTP client with timeouts");
        Uplink {
            urls,
            terminal,
            secret,
            client,
            preferred: AtomicUsize::new(0),
            clock_offset_ms: AtomicI64::new(0),
        }
    }

    pub fn terminal(&self) -> &str {
        &self.terminal
    }

    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// Probes every address's `/health` and makes the first healthy one (in the order given:
    /// the shop's line before the mobile backup) the one tried first. Returns whether any
    /// address is healthy.
    pub async fn check_health(&self) -> bool {
        self.check_health_within(Duration::from_secs(2)).await
    }

    /// Like `check_health`, giving each address at most `timeout`: before asking a customer
    /// at the counter to wait for the card network, find out fast whether the line is up.
    pub async fn check_health_within(&self, timeout: Duration) -> bool {
        for (index, url) in self.urls.iter().enumerate() {
            let probe = self
                .client
                .get(format!("{}/health", url.trim_end_matches('/')))
                .timeout(timeout)
                .send()
                .await;
            if let Ok(response) = &probe {
                self.learn_clock(response);
            }
            if probe.is_ok_and(|r| r.status().is_success()) {
                self.preferred.store(index, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// The address tried first next time (index into the addresses given).
    pub fn preferred(&self) -> usize {
        self.preferred.load(Ordering::Relaxed)
    }

    /// POSTs a signed JSON body, trying each address from the last good one. Any HTTP answer
    /// counts as reached; only connection failures move on to the next address. Every attempt
    /// is signed afresh (a new time and nonce): the server accepts each signed request once.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), UplinkError> {
        let bytes = serde_json::to_vec(body).expect("JSON serialises");
        let first = self.preferred.load(Ordering::Relaxed);
        let mut sent = false;
        for offset in 0..self.urls.len() {
            let index = (first + offset) % self.urls.len();
            let url = format!("{}{path}", self.urls[index].trim_end_matches('/'));
            let (mut response, clock_corrected) = match self.send_signed(&url, path, &bytes).await {
                Ok(answered) => answered,
                Err(error) => {
                    sent |= !error.is_connect();
                    continue;
                }
            };
            self.preferred.store(index, Ordering::Relaxed);
            if response.status() == reqwest::StatusCode::UNAUTHORIZED && clock_corrected {
                // Our clock was too far off for the server; sign again on its time.
                match self.send_signed(&url, path, &bytes).await {
                    Ok((again, _)) => response = again,
                    Err(error) => {
                        sent |= !error.is_connect();
                        continue;
                    }
                }
            }
            let status = response.status().as_u16();
            if status == 429 || status == 503 {
                let seconds = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                return Err(UplinkError::RetryAfter(Duration::from_secs(seconds)));
            }
            // An answer cut off half-way is an answer lost, not an empty one.
            let Ok(text) = response.text().await else {
                sent = true;
                continue;
            };
            let value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Ok((status, value));
        }
        Err(if sent {
            UplinkError::AnswerLost
        } else {
            UplinkError::Unreachable(self.addresses())
        })
    }

    /// Sends one signed attempt; also says whether its answer corrected our clock.
    async fn send_signed(
        &self,
        url: &str,
        path: &str,
        bytes: &[u8],
    ) -> Result<(reqwest::Response, bool), reqwest::Error> {
        let mut nonce = [0u8; 16];
        rand::rng().fill(&mut nonce);
        let nonce = hex::encode(nonce);
        let request = SignedRequest {
            method: "POST",
            path,
            signed_at: self.server_time(),
            nonce: &nonce,
            body: bytes,
        };
        let auth = Authorization::sign(&self.terminal, &self.secret, &request);
        let response = self
            .client
            .post(url)
            .header("Authorization", auth.header_value())
            .header("Content-Type", "application/json")
            .body(bytes.to_vec())
            .send()
            .await?;
        let corrected = self.learn_clock(&response);
        Ok((response, corrected))
    }

    /// The server's time as best known: the local clock, corrected by the offset learned from
    /// the server's `Date` headers when the two disagree by more than the header's precision.
    fn server_time(&self) -> Timestamp {
        let local = chrono::Utc::now().timestamp_millis();
        Timestamp(local + self.clock_offset_ms.load(Ordering::Relaxed))
    }

    /// Updates the clock offset from an answer's `Date` header; true if it changed.
    fn learn_clock(&self, response: &reqwest::Response) -> bool {
        let Some(server_ms) = response
            .headers()
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
            .map(|t| t.timestamp_millis())
        else {
            return false;
        };
        // The header has whole seconds, so the server's time is within the second after it.
        // Err ahead: the server takes a request signed a little ahead, but refuses one signed
        // before it started.
        let raw = server_ms + 1_000 - chrono::Utc::now().timestamp_millis();
        let offset = if raw.abs() > CLOCK_SKEW_IGNORED_MS {
            raw
        } else {
            0
        };
        self.clock_offset_ms.swap(offset, Ordering::Relaxed) != offset
    }
}

/// Differences between the till's clock and the server's `Date` below this are rounding.
const CLOCK_SKEW_IGNORED_MS: i64 = 2_000;

/// The pause before retry `attempt` (0-based): doubling from 1 s up to 5 minutes, drawn at
/// random from the upper half so thousands of terminals that lost the network together do not
/// return together.
pub fn back_off(attempt: u32) -> Duration {
    let ceiling_ms = 1_000u64.saturating_mul(1 << attempt.min(9)).min(300_000);
    Duration::from_millis(rand::rng().random_range(ceiling_ms / 2..=ceiling_ms))
}

/// A server's address as a person types it, checked so a slip is named plainly: it must be
/// `http://host[:port]` or `https://...`. A trailing slash is dropped.
pub fn server_url(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim().trim_end_matches('/');
    if !trimmed.contains("://") {
        return Err(format!(
            "'{raw}' has no http:// in front; write it like http://192.168.0.10:8080"
        ));
    }
    let url = reqwest::Url::parse(trimmed).map_err(|_| {
        format!("'{raw}' is not a server address; write it like http://192.168.0.10:8080")
    })?;
    let named_only = url.path() == "/" || url.path().is_empty();
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || !named_only {
        return Err(format!(
            "'{raw}' should be just the server, like http://192.168.0.10:8080"
        ));
    }
    Ok(trimmed.to_owned())
}
