//! Who is calling: the operator (a bearer token from the environment or generated at start-up)
//! or a shopper (a customer token signed by this server for the storefront that vouches for
//! the shopper's account, phone and address).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use holdfast_core::{Shopper, Timestamp};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::error::ApiError;

const SECRET_FILE: &str = "token-secret";
const SECRET_BYTES: usize = 32;
/// Tokens remembered as verified. Checking a signature costs more than the rest of a hold, and
/// a shopper presents the same token many times; the cache is emptied when full.
const VERIFIED_TOKENS_MAX: usize = 100_000;

#[derive(Debug, Serialize, Deserialize)]
struct CustomerClaims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    /// Expiry, seconds since the epoch.
    exp: u64,
}

/// Signs and checks customer tokens (HS256) with a secret kept in the data directory, so
/// tokens stay valid across restarts.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Token → (shopper, expiry): only tokens whose signature verified are ever inserted.
    verified: Mutex<HashMap<String, (Shopper, Timestamp)>>,
}

impl TokenKeys {
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<TokenKeys> {
        let path = data_dir.join(SECRET_FILE);
        let secret = match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == SECRET_BYTES => bytes,
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} is damaged",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = vec![0u8; SECRET_BYTES];
                rand::rng().fill_bytes(&mut bytes);
                write_private(&path, &bytes)?;
                bytes
            }
            Err(e) => return Err(e),
        };
        Ok(TokenKeys {
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
            verified: Mutex::new(HashMap::new()),
        })
    }

    pub fn issue(&self, shopper: &CustomerIdentity, expires_at: Timestamp) -> String {
        let claims = CustomerClaims {
            sub: shopper.customer_id.clone(),
            phone: shopper.phone.clone(),
            address: shopper.address.clone(),
            exp: u64::try_from(expires_at.0 / 1000).unwrap_or(0),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    fn verify(&self, token: &str, now: Timestamp) -> Option<Shopper> {
        let cached = self
            .verified
            .lock()
            .expect("token cache")
            .get(token)
            .cloned();
        let (shopper, expires_at) = match cached {
            Some(entry) => entry,
            None => {
                let entry = self.verify_signature(token)?;
                let mut verified = self.verified.lock().expect("token cache");
                if verified.len() >= VERIFIED_TOKENS_MAX {
                    verified.clear();
                }
                verified.insert(token.to_owned(), entry.clone());
                entry
            }
        };
        (now < expires_at).then_some(shopper)
    }

    fn verify_signature(&self, token: &str) -> Option<(Shopper, Timestamp)> {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked against the server's injected clock below, not the library's.
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let data =
            jsonwebtoken::decode::<CustomerClaims>(token, &self.decoding, &validation).ok()?;
        let claims = data.claims;
        let expires_at =
            Timestamp(i64::try_from(claims.exp.saturating_mul(1000)).unwrap_or(i64::MAX));
        let shopper = Shopper::new(
            &claims.sub,
            claims.phone.as_deref(),
            claims.address.as_deref(),
        );
        Some((shopper, expires_at))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// What a storefront vouches for when it asks for a customer token.
#[derive(Clone, Debug)]
pub struct CustomerIdentity {
    pub customer_id: String,
    pub phone: Option<String>,
    pub address: Option<String>,
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::trim)
}

/// Compares in time independent of where the first difference is.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Proof that the caller presented the operator token.
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match bearer(parts) {
            Some(token) if same_secret(token, &state.operator_token) => Ok(Operator),
            Some(_) => Err(ApiError::unauthorized("the operator token is not valid")),
            None => Err(ApiError::unauthorized(
                "this call needs 'Authorization: Bearer <operator token>'",
            )),
        }
    }
}

/// A shopper whose customer token verified.
pub struct Customer(pub Shopper);

impl FromRequestParts<AppState> for Customer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(|| {
            ApiError::unauthorized("this call needs 'Authorization: Bearer <customer token>'")
        })?;
        state
            .tokens
            .verify(token, state.clock.now())
            .map(Customer)
            .ok_or_else(|| ApiError::unauthorized("the customer token is invalid or expired"))
    }
}

/// Either party; used by reads that the operator and the owning shopper may both make.
pub enum Caller {
    Operator,
    Customer(Shopper),
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if bearer(parts).is_some_and(|t| same_secret(t, &state.operator_token)) {
            return Ok(Caller::Operator);
        }
        let Customer(shopper) = Customer::from_request_parts(parts, state).await?;
        Ok(Caller::Customer(shopper))
    }
}
