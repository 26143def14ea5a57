//! Talking to the server: every request signed with the terminal's key, several server
//! addresses tried in turn (the shop's line, a mobile backup), jittered exponential back-off.

use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::Rng;
use serde_json::Value;
use sha2::Sha256;

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("no server address answered")]
    Unreachable,
    #[error("the server asked to come back in {0:?}")]
    RetryAfter(Duration),
}

pub struct Uplink {
    urls: Vec<String>,
    terminal: String,
    secret: Vec<u8>,
    client: reqwest::Client,
    /// The address that answered last, tried first next time.
    preferred: std::sync::atomic::AtomicUsize,
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
            preferred: std::sync::atomic::AtomicUsize::new(0),
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
        for (index, url) in self.urls.iter().enumerate() {
            let probe = self
                .client
                .get(format!("{}/health", url.trim_end_matches('/')))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if probe.is_ok_and(|r| r.status().is_success()) {
                self.preferred
                    .store(index, std::sync::atomic::Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// The address tried first next time (index into the addresses given).
    pub fn preferred(&self) -> usize {
        self.preferred.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// POSTs a signed JSON body, trying each address from the last good one. Any HTTP answer
    /// counts as reached; only connection failures move on to the next address.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), UplinkError> {
        let bytes = serde_json::to_vec(body).expect("JSON serialises");
        let mut input = format!("POST\n{path}\n").into_bytes();
        input.extend_from_slice(&bytes);
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(&input);
        let signature = hex::encode(mac.finalize().into_bytes());
        let first = self.preferred.load(std::sync::atomic::Ordering::Relaxed);
        for offset in 0..self.urls.len() {
            let index = (first + offset) % self.urls.len();
            let url = format!("{}{path}", self.urls[index].trim_end_matches('/'));
            let sent = self
                .client
                .post(url)
                .header(
                    "Authorization",
                    format!("Terminal {}:{signature}", self.terminal),
                )
                .header("Content-Type", "application/json")
                .body(bytes.clone())
                .send()
                .await;
            let Ok(response) = sent else { continue };
            self.preferred
                .store(index, std::sync::atomic::Ordering::Relaxed);
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
            let value = response.json().await.unwrap_or(Value::Null);
            return Ok((status, value));
        }
        Err(UplinkError::Unreachable)
    }
}

/// The pause before retry `attempt` (0-based): doubling from 1 s up to 5 minutes, drawn at
/// random from the upper half so thousands of terminals that lost the network together do not
/// return together.
pub fn back_off(attempt: u32) -> Duration {
    let ceiling_ms = 1_000u64.saturating_mul(1 << attempt.min(9)).min(300_000);
    Duration::from_millis(rand::rng().random_range(ceiling_ms / 2..=ceiling_ms))
}
