//! The card network, behind a trait shaped like an acquirer's API: authorise an amount, then
//! capture it, or void it; refund after capture. Every call carries an idempotency key so a
//! retry never charges twice. No card network is reachable here, so the server ships
//! [`SimulatedAcquirer`]; a real acquirer's adapter implements the same trait.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use thiserror::Error;

pub type PaymentFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, PaymentError>> + Send + 'a>>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizeRequest {
    /// A token standing for the card, issued by the acquirer's own card form: the server never
    /// sees card numbers.
    pub card_token: String,
    pub amount: u64,
    pub currency: &'static str,
    pub idempotency_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    pub id: String,
    pub amount: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PaymentError {
    #[error("the card was declined: {reason}")]
    Declined { reason: String },
    #[error("the payment network is unavailable")]
    Unavailable,
    #[error("no such authorization")]
    UnknownAuthorization,
}

pub trait PaymentProvider: Send + Sync + 'static {
    fn authorize(&self, request: AuthorizeRequest) -> PaymentFuture<'_, Authorization>;
    fn capture(&self, authorization_id: &str, idempotency_key: &str) -> PaymentFuture<'_, ()>;
    fn void(&self, authorization_id: &str, idempotency_key: &str) -> PaymentFuture<'_, ()>;
    fn refund(
        &self,
        authorization_id: &str,
        amount: u64,
        idempotency_key: &str,
    ) -> PaymentFuture<'_, ()>;
}

/// Test card tokens, in the style acquirers publish for their sandboxes.
pub const CARD_APPROVED: &str = "tok_visa";
pub const CARD_DECLINED: &str = "tok_declined";
pub const CARD_NETWORK_DOWN: &str = "tok_network_down";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthState {
    Authorized,
    Captured,
    Voided,
    Refunded,
}

/// An in-process acquirer: approves every token except the declining test tokens, and
/// remembers idempotency keys so a repeated authorisation returns the first answer.
#[derive(Default)]
pub struct SimulatedAcquirer {
    state: Mutex<SimulatedState>,
}

#[derive(Default)]
struct SimulatedState {
    by_key: HashMap<String, Result<Authorization, PaymentError>>,
    authorizations: HashMap<String, (u64, AuthState)>,
}

impl SimulatedAcquirer {
    /// How many authorisations were captured (for tests).
    pub fn captured(&self) -> usize {
        let state = self.state.lock().expect("acquirer state");
        state
            .authorizations
            .values()
            .filter(|(_, s)| *s == AuthState::Captured)
            .count()
    }

    fn transition(&self, id: &str, from: AuthState, to: AuthState) -> Result<(), PaymentError> {
        let mut state = self.state.lock().expect("acquirer state");
        match state.authorizations.get_mut(id) {
            Some((_, current)) if *current == from || *current == to => {
                *current = to;
                Ok(())
            }
            _ => Err(PaymentError::UnknownAuthorization),
        }
    }
}

impl PaymentProvider for SimulatedAcquirer {
    fn authorize(&self, request: AuthorizeRequest) -> PaymentFuture<'_, Authorization> {
        let answer = {
            let mut state = self.state.lock().expect("acquirer state");
            if let Some(first) = state.by_key.get(&request.idempotency_key) {
                first.clone()
            } else {
                let answer = match request.card_token.as_str() {
                    CARD_DECLINED => Err(PaymentError::Declined {
                        reason: "insufficient funds".into(),
                    }),
                    CARD_NETWORK_DOWN => Err(PaymentError::Unavailable),
                    _ => {
                        let id = format!("auth_{}", state.authorizations.len() + 1);
                        state
                            .authorizations
                            .insert(id.clone(), (request.amount, AuthState::Authorized));
                        Ok(Authorization {
                            id,
                            amount: request.amount,
                        })
                    }
                };
                // An outage is not an answer about the card: a retry must be tried afresh.
                if answer != Err(PaymentError::Unavailable) {
                    state.by_key.insert(request.idempotency_key, answer.clone());
                }
                answer
            }
        };
        Box::pin(async move { answer })
    }

    fn capture(&self, authorization_id: &str, _idempotency_key: &str) -> PaymentFuture<'_, ()> {
        let result = self.transition(authorization_id, AuthState::Authorized, AuthState::Captured);
        Box::pin(async move { result })
    }

    fn void(&self, authorization_id: &str, _idempotency_key: &str) -> PaymentFuture<'_, ()> {
        let result = self.transition(authorization_id, AuthState::Authorized, AuthState::Voided);
        Box::pin(async move { result })
    }

    fn refund(
        &self,
        authorization_id: &str,
        _amount: u64,
        _idempotency_key: &str,
    ) -> PaymentFuture<'_, ()> {
        let result = self.transition(authorization_id, AuthState::Captured, AuthState::Refunded);
        Box::pin(async move { result })
    }
}
