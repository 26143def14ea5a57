//! Who is calling: the credentials each kind of caller presents, checked before a handler
//! runs (the operator's token, a customer's token, or either).

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use holdfast_core::Shopper;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// The token of an `Authorization: Bearer <token>` header. The scheme's name is
/// case-insensitive (RFC 9110 §11.1): `bearer` and `BEARER` are the same scheme.
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("Bearer").then(|| token.trim())
}

/// Compares digests of the two, in constant time: neither where they first differ nor how
/// long the secret is shows in the time taken.
fn same_secret(presented: &str, secret: &str) -> bool {
    let (a, b) = (Sha256::digest(presented), Sha256::digest(secret));
    a.iter()
        .zip(b.iter())
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
            .verify_customer(token, state.clock.now())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret("op-secret", "op-secret"));
        for other in ["", "op-secre", "op-secret-", "Op-secret"] {
            assert!(!same_secret(other, "op-secret"), "{other}");
        }
    }
}
