//! Who is calling: the operator (a bearer token from the environment or generated at start-up)
//! or a shopper (a customer token signed by this server for the storefront that vouches for
//! the shopper's account, phone and address).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use holdfast_core::{Shopper, Timestamp};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};

const SECRET_FILE: &str = "token-secret";
const SECRET_BYTES: usize = 32;
/// Tokens remembered as verified, per generation. Checking a signature costs more than the rest
/// of a hold, and a shopper presents the same token many times.
const VERIFIED_TOKENS_PER_GENERATION_MAX: usize = 65_536;

/// What a signed token stands for. Every token carries its kind, so a ticket or a pass can
/// never be presented as a customer token, or the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
enum TokenKind {
    #[default]
    Customer,
    Ticket,
    Pass,
}

#[derive(Debug, Serialize, Deserialize)]
struct CustomerClaims {
    #[serde(default)]
    typ: TokenKind,
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
    /// Only tokens whose signature verified are ever inserted.
    verified: Mutex<VerifiedTokens>,
}

/// A bounded cache of verified tokens in two generations: new entries go to the current one;
/// when it is full it becomes the previous one and the old previous is dropped. A hit in the
/// previous generation moves to the current, so tokens in use survive and only those unused
/// for a whole generation are forgotten — never the whole cache at once.
#[derive(Default)]
struct VerifiedTokens {
    current: HashMap<String, (Shopper, Timestamp)>,
    previous: HashMap<String, (Shopper, Timestamp)>,
}

impl VerifiedTokens {
    fn get(&mut self, token: &str) -> Option<(Shopper, Timestamp)> {
        if let Some(entry) = self.current.get(token) {
            return Some(entry.clone());
        }
        let entry = self.previous.remove(token)?;
        self.insert(token.to_owned(), entry.clone());
        Some(entry)
    }

    fn insert(&mut self, token: String, entry: (Shopper, Timestamp)) {
        if self.current.len() >= VERIFIED_TOKENS_PER_GENERATION_MAX {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(token, entry);
    }
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
                let bytes = random_secret();
                write_private(&path, &bytes)?;
                bytes
            }
            Err(e) => return Err(e),
        };
        Ok(TokenKeys::from_secret(&secret))
    }

    pub fn from_secret(secret: &[u8]) -> TokenKeys {
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            verified: Mutex::new(VerifiedTokens::default()),
        }
    }

    /// Checks a customer token: the shopper it names, if genuine and live at `now`.
    pub fn verify_customer(&self, token: &str, now: Timestamp) -> Option<Shopper> {
        self.verify(token, now)
    }

    pub fn issue(&self, shopper: &CustomerIdentity, expires_at: Timestamp) -> String {
        let claims = CustomerClaims {
            typ: TokenKind::Customer,
            sub: shopper.customer_id.clone(),
            phone: shopper.phone.clone(),
            address: shopper.address.clone(),
            exp: u64::try_from(expires_at.0 / 1000).unwrap_or(0),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    fn verify(&self, token: &str, now: Timestamp) -> Option<Shopper> {
        let cached = self.verified.lock().expect("token cache").get(token);
        let (shopper, expires_at) = match cached {
            Some(entry) => entry,
            None => {
                let entry = self.verify_signature(token)?;
                let mut verified = self.verified.lock().expect("token cache");
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
        if claims.typ != TokenKind::Customer {
            return None;
        }
        let expires_at =
            Timestamp(i64::try_from(claims.exp.saturating_mul(1000)).unwrap_or(i64::MAX));
        // Issuing refuses what is not a phone; a token that still carries one is not honoured.
        let shopper = Shopper::new(
            &claims.sub,
            claims.phone.as_deref(),
            claims.address.as_deref(),
        )
        .ok()?;
        Some((shopper, expires_at))
    }
}

/// A fresh signing secret.
pub fn random_secret() -> Vec<u8> {
    let mut bytes = vec![0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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

/// A place in a sale's waiting room, signed: `entry` is the join-order index.
#[derive(Debug, Serialize, Deserialize)]
struct PlaceClaims {
    typ: TokenKind,
    sub: String,
    sale: String,
    /// Ticket: the entry index. Pass: the admitted position.
    n: u32,
    /// Ticket: the entry's pseudonymous id, as the published draw lists it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    entry: String,
    exp: u64,
}

/// What a verified ticket or pass says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub customer_id: String,
    pub sale_id: String,
    pub n: u32,
    /// A ticket's entry id (hex), so its holder can find their line in the published draw;
    /// empty in a pass.
    pub entry_id: String,
}

impl TokenKeys {
    fn sign_place(&self, kind: TokenKind, place: &Place, expires_at: Timestamp) -> String {
        let claims = PlaceClaims {
            typ: kind,
            sub: place.customer_id.clone(),
            sale: place.sale_id.clone(),
            n: place.n,
            entry: place.entry_id.clone(),
            exp: u64::try_from(expires_at.0 / 1000).unwrap_or(0),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    fn verify_place(&self, kind: TokenKind, token: &str, now: Timestamp) -> Option<Place> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<PlaceClaims>(token, &self.decoding, &validation)
            .ok()?
            .claims;
        let live = claims.exp.saturating_mul(1000) > u64::try_from(now.0).unwrap_or(0);
        (claims.typ == kind && live).then_some(Place {
            customer_id: claims.sub,
            sale_id: claims.sale,
            n: claims.n,
            entry_id: claims.entry,
        })
    }

    /// A ticket is the same string every time it is issued for the same place, so joining
    /// twice returns the same ticket.
    pub fn issue_ticket(&self, place: &Place, expires_at: Timestamp) -> String {
        self.sign_place(TokenKind::Ticket, place, expires_at)
    }

    pub fn verify_ticket(&self, token: &str, now: Timestamp) -> Option<Place> {
        self.verify_place(TokenKind::Ticket, token, now)
    }

    pub fn issue_pass(&self, place: &Place, expires_at: Timestamp) -> String {
        self.sign_place(TokenKind::Pass, place, expires_at)
    }

    pub fn verify_pass(&self, token: &str, now: Timestamp) -> Option<Place> {
        self.verify_place(TokenKind::Pass, token, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> (Shopper, Timestamp) {
        (
            Shopper::new(&format!("c{n}"), None, None).unwrap(),
            Timestamp(0),
        )
    }

    #[test]
    fn the_token_cache_is_bounded_and_keeps_what_is_in_use() {
        let mut cache = VerifiedTokens::default();
        cache.insert("hot".into(), entry(0));
        for n in 1..VERIFIED_TOKENS_PER_GENERATION_MAX * 3 {
            cache.insert(format!("t{n}"), entry(n));
            if n % 1_000 == 0 {
                assert!(
                    cache.get("hot").is_some(),
                    "a token in use is kept (at {n})"
                );
            }
        }
        assert!(
            cache.current.len() + cache.previous.len() <= 2 * VERIFIED_TOKENS_PER_GENERATION_MAX
        );
        assert!(
            cache.get("t1").is_none(),
            "a token unused for a generation is forgotten"
        );
    }
}
