//! The card network, behind a trait shaped like an acquirer's API: authorise an amount, then
//! capture it, or void it; refund after capture. Every call carries an idempotency key so a
//! retry never charges twice. No card network is reachable here, so the server ships
//! [`SimulatedAcquirer`]; a real acquirer's adapter implements the same trait.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_core::Timestamp;
use sha2::{Digest, Sha256};

use thiserror::Error;

use crate::clock::{Clock, SystemClock};

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
    #[error("the idempotency key was already used for a different payment")]
    KeyReused,
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

/// The currency every amount is in. Won has no minor unit.
pub const CURRENCY: &str = "KRW";

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

/// How the simulated card network behaves.
#[derive(Clone, Debug, Default)]
pub struct NetworkConditions {
    /// Added to every call, as a real network round trip would be.
    pub latency: Duration,
    /// Of every 1,000 fresh authorisations, how many are declined. Which ones is decided by
    /// a hash of the idempotency key, so a run can be repeated exactly.
    pub declines_per_mille: u32,
    /// Windows (by the server's clock, start inclusive, end exclusive) in which the network is
    /// down: every call answers `Unavailable`, and nothing is remembered.
    pub outages: Vec<(Timestamp, Timestamp)>,
}

/// An in-process acquirer: approves every token except the declining test tokens (and the
/// share `conditions` declines), and remembers idempotency keys so a repeated authorisation
/// returns the first answer.
pub struct SimulatedAcquirer {
    state: Mutex<SimulatedState>,
    conditions: NetworkConditions,
    clock: Arc<dyn Clock>,
}

impl Default for SimulatedAcquirer {
    fn default() -> Self {
        SimulatedAcquirer::new(NetworkConditions::default(), Arc::new(SystemClock))
    }
}

/// Idempotency keys the simulator remembers, oldest forgotten first (acquirers keep theirs for
/// a day or so; a long load run must not grow the process without bound).
const KEYS_REMEMBERED_MAX: usize = 100_000;
/// Authorisations it tracks, oldest forgotten first (uncaptured ones lapse at real acquirers).
const AUTHORIZATIONS_REMEMBERED_MAX: usize = 100_000;

/// What an authorisation asked for: a key reused with anything else is refused, as acquirers do.
#[derive(Clone, PartialEq, Eq)]
struct Asked {
    card_token: String,
    amount: u64,
    currency: &'static str,
}

#[derive(Default)]
struct SimulatedState {
    by_key: HashMap<String, (Asked, Result<Authorization, PaymentError>)>,
    keys_in_order: VecDeque<String>,
    authorizations: HashMap<String, (u64, AuthState)>,
    authorizations_in_order: VecDeque<String>,
    issued: u64,
    captured: usize,
}

impl SimulatedState {
    fn remember_key(
        &mut self,
        key: String,
        asked: Asked,
        answer: Result<Authorization, PaymentError>,
    ) {
        if self.keys_in_order.len() >= KEYS_REMEMBERED_MAX
            && let Some(oldest) = self.keys_in_order.pop_front()
        {
            self.by_key.remove(&oldest);
        }
        self.keys_in_order.push_back(key.clone());
        self.by_key.insert(key, (asked, answer));
    }

    fn authorize(&mut self, amount: u64) -> Authorization {
        if self.authorizations_in_order.len() >= AUTHORIZATIONS_REMEMBERED_MAX
            && let Some(oldest) = self.authorizations_in_order.pop_front()
        {
            self.authorizations.remove(&oldest);
        }
        self.issued += 1;
        let id = format!("auth_{}", self.issued);
        self.authorizations_in_order.push_back(id.clone());
        self.authorizations
            .insert(id.clone(), (amount, AuthState::Authorized));
        Authorization { id, amount }
    }
}

impl SimulatedAcquirer {
    pub fn new(conditions: NetworkConditions, clock: Arc<dyn Clock>) -> SimulatedAcquirer {
        SimulatedAcquirer {
            state: Mutex::new(SimulatedState::default()),
            conditions,
            clock,
        }
    }

    fn down(&self) -> bool {
        let now = self.clock.now();
        self.conditions
            .outages
            .iter()
            .any(|(from, to)| *from <= now && now < *to)
    }

    fn declines(&self, idempotency_key: &str) -> bool {
        let digest = Sha256::digest(idempotency_key.as_bytes());
        let draw = u32::from_le_bytes(digest[..4].try_into().expect("4 bytes")) % 1000;
        draw < self.conditions.declines_per_mille
    }

    /// Wraps an answer in the network's latency.
    fn answer<T: Send + 'static>(&self, result: Result<T, PaymentError>) -> PaymentFuture<'_, T> {
        let latency = self.conditions.latency;
        Box::pin(async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            result
        })
    }
    /// How many authorisations were captured, net of refunds (for tests).
    pub fn captured(&self) -> usize {
        self.state.lock().expect("acquirer state").captured
    }

    fn transition(&self, id: &str, from: AuthState, to: AuthState) -> Result<(), PaymentError> {
        let mut state = self.state.lock().expect("acquirer state");
        let current = match state.authorizations.get_mut(id) {
            Some((_, current)) if *current == from || *current == to => current,
            _ => return Err(PaymentError::UnknownAuthorization),
        };
        let changed = *current != to;
        *current = to;
        if changed && to == AuthState::Captured {
            state.captured += 1;
        } else if changed && from == AuthState::Captured {
            state.captured -= 1;
        }
        Ok(())
    }
}

impl PaymentProvider for SimulatedAcquirer {
    fn authorize(&self, request: AuthorizeRequest) -> PaymentFuture<'_, Authorization> {
        if self.down() {
            return self.answer(Err(PaymentError::Unavailable));
        }
        let asked = Asked {
            card_token: request.card_token.clone(),
            amount: request.amount,
            currency: request.currency,
        };
        let mut state = self.state.lock().expect("acquirer state");
        if let Some((first_asked, first)) = state.by_key.get(&request.idempotency_key) {
            let answer = if *first_asked == asked {
                first.clone()
            } else {
                Err(PaymentError::KeyReused)
            };
            drop(state);
            return self.answer(answer);
        }
        let answer = match request.card_token.as_str() {
            CARD_NETWORK_DOWN => Err(PaymentError::Unavailable),
            CARD_DECLINED => Err(PaymentError::Declined {
                reason: "insufficient funds".into(),
            }),
            _ if self.declines(&request.idempotency_key) => Err(PaymentError::Declined {
                reason: "declined by the issuer".into(),
            }),
            _ => Ok(state.authorize(request.amount)),
        };
        // An outage is not an answer about the card: a retry must be tried afresh.
        if answer != Err(PaymentError::Unavailable) {
            state.remember_key(request.idempotency_key, asked, answer.clone());
        }
        drop(state);
        self.answer(answer)
    }

    fn capture(&self, authorization_id: &str, _idempotency_key: &str) -> PaymentFuture<'_, ()> {
        self.settle(authorization_id, AuthState::Authorized, AuthState::Captured)
    }

    fn void(&self, authorization_id: &str, _idempotency_key: &str) -> PaymentFuture<'_, ()> {
        self.settle(authorization_id, AuthState::Authorized, AuthState::Voided)
    }

    fn refund(
        &self,
        authorization_id: &str,
        _amount: u64,
        _idempotency_key: &str,
    ) -> PaymentFuture<'_, ()> {
        self.settle(authorization_id, AuthState::Captured, AuthState::Refunded)
    }
}

impl SimulatedAcquirer {
    fn settle(
        &self,
        authorization_id: &str,
        from: AuthState,
        to: AuthState,
    ) -> PaymentFuture<'_, ()> {
        if self.down() {
            return self.answer(Err(PaymentError::Unavailable));
        }
        let result = self.transition(authorization_id, from, to);
        self.answer(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn request(key: &str, token: &str) -> AuthorizeRequest {
        AuthorizeRequest {
            card_token: token.into(),
            amount: 39_900,
            currency: "KRW",
            idempotency_key: key.into(),
        }
    }

    #[tokio::test]
    async fn the_decline_rate_is_the_configured_share_and_repeatable() {
        let conditions = NetworkConditions {
            declines_per_mille: 200,
            ..NetworkConditions::default()
        };
        let acquirer = SimulatedAcquirer::new(conditions.clone(), Arc::new(SystemClock));
        let mut declined = 0;
        for n in 0..10_000 {
            if acquirer
                .authorize(request(&format!("k{n}"), CARD_APPROVED))
                .await
                .is_err()
            {
                declined += 1;
            }
        }
        assert!(
            (1_800..=2_200).contains(&declined),
            "{declined} of 10,000 declined"
        );
        let again = SimulatedAcquirer::new(conditions, Arc::new(SystemClock));
        let mut declined_again = 0;
        for n in 0..10_000 {
            if again
                .authorize(request(&format!("k{n}"), CARD_APPROVED))
                .await
                .is_err()
            {
                declined_again += 1;
            }
        }
        assert_eq!(declined, declined_again, "the same keys, the same declines");
    }

    #[tokio::test]
    async fn during_an_outage_nothing_is_answered_or_remembered() {
        let clock = ManualClock::new(Timestamp(1_000));
        let conditions = NetworkConditions {
            outages: vec![(Timestamp(2_000), Timestamp(3_000))],
            ..NetworkConditions::default()
        };
        let acquirer = SimulatedAcquirer::new(conditions, Arc::new(clock.clone()));
        let approved = acquirer
            .authorize(request("before", CARD_APPROVED))
            .await
            .unwrap();
        clock.set(Timestamp(2_000));
        assert_eq!(
            acquirer.authorize(request("during", CARD_APPROVED)).await,
            Err(PaymentError::Unavailable)
        );
        assert_eq!(
            acquirer.capture(&approved.id, "c").await,
            Err(PaymentError::Unavailable)
        );
        clock.set(Timestamp(3_000));
        assert!(
            acquirer
                .authorize(request("during", CARD_APPROVED))
                .await
                .is_ok(),
            "the retry is tried afresh"
        );
        assert_eq!(acquirer.capture(&approved.id, "c").await, Ok(()));
        assert_eq!(acquirer.captured(), 1);
    }

    #[tokio::test]
    async fn a_key_reused_for_another_amount_or_card_is_refused() {
        let acquirer = SimulatedAcquirer::default();
        let first = acquirer
            .authorize(request("k", CARD_APPROVED))
            .await
            .unwrap();
        assert_eq!(
            acquirer.authorize(request("k", CARD_APPROVED)).await,
            Ok(first)
        );
        let mut more = request("k", CARD_APPROVED);
        more.amount = 999_000;
        assert_eq!(acquirer.authorize(more).await, Err(PaymentError::KeyReused));
        assert_eq!(
            acquirer.authorize(request("k", "tok_other_card")).await,
            Err(PaymentError::KeyReused)
        );
    }

    #[tokio::test]
    async fn remembered_keys_and_authorizations_are_bounded() {
        let acquirer = SimulatedAcquirer::default();
        for n in 0..KEYS_REMEMBERED_MAX + 10 {
            acquirer
                .authorize(request(&format!("k{n}"), CARD_APPROVED))
                .await
                .unwrap();
        }
        let state = acquirer.state.lock().unwrap();
        assert_eq!(state.by_key.len(), KEYS_REMEMBERED_MAX);
        assert_eq!(state.authorizations.len(), AUTHORIZATIONS_REMEMBERED_MAX);
        assert!(!state.by_key.contains_key("k0"), "the oldest went first");
    }

    #[tokio::test(start_paused = true)]
    async fn every_call_takes_the_configured_latency() {
        let conditions = NetworkConditions {
            latency: Duration::from_millis(250),
            ..NetworkConditions::default()
        };
        let acquirer = SimulatedAcquirer::new(conditions, Arc::new(SystemClock));
        let started = tokio::time::Instant::now();
        let authorization = acquirer
            .authorize(request("k", CARD_APPROVED))
            .await
            .unwrap();
        acquirer.capture(&authorization.id, "k").await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(500));
    }
}
