//! A card paid online at the counter. The attempt — its reference, amount, the sale it pays for
//! and the sealed card — is journaled *before* the card network is asked, so an answer lost on
//! the way back is never a mystery: trying again resumes the same attempt under the same
//! reference (the server answers a repeat with its first answer, so nothing is charged twice),
//! and an attempt nobody came back for is settled by the next sync: declined, or approved with
//! no sale behind it, which is listed as money owed back.
//!
//! The line is checked first, fast, so a customer is not kept waiting for a dead network; the
//! cashier takes another tender instead.

use std::time::Duration;

use chacha20poly1305::Key;
use holdfast_core::terminal::wire::{PaymentAnswer, PaymentRequest};
use serde::{Deserialize, Serialize};

use crate::counter::{self, Basket, Refusal, Sold, Tender};
use crate::journal::{AttemptState, CardAttempt, Journal};
use crate::uplink::{Uplink, UplinkError};

/// How long the line check before a card payment may take, per address.
const LINE_CHECK_TIMEOUT: Duration = Duration::from_millis(800);
/// An attempt with no answer is left to the cashier this long before the background settles it.
pub const UNANSWERED_ATTEMPT_GRACE_MILLIS: i64 = 120_000;

#[derive(Debug)]
pub enum CardOutcome {
    Sold(Sold),
    Refused(Refusal),
    Declined,
    /// The line is down: nothing was asked, nothing journaled. Take another tender.
    LineDown,
    /// Asked, but the answer was lost. Trying again with the same basket and card resumes it.
    AnswerLost {
        reference: String,
    },
}

/// The sale an attempt pays for, journaled with it.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
struct AttemptSale {
    lines: Vec<(String, u32)>,
    buyer_phone: Option<String>,
}

impl AttemptSale {
    fn of(basket: &Basket) -> AttemptSale {
        AttemptSale {
            lines: basket
                .lines
                .iter()
                .map(|l| (l.sku.clone(), l.quantity))
                .collect(),
            buyer_phone: basket.buyer_phone.clone(),
        }
    }
}

enum Asked {
    Approved(String),
    Declined,
    Lost,
    Unreachable,
}

/// Pays `basket` by card online and, once approved, journals the sale.
pub async fn pay(
    journal: &mut Journal,
    key: &Key,
    uplink: &Uplink,
    basket: &Basket,
    card_token: &str,
    now_millis: i64,
) -> anyhow::Result<CardOutcome> {
    let amount = match counter::quote(journal, basket, now_millis)? {
        Ok(amount) => amount,
        Err(refusal) => return Ok(CardOutcome::Refused(refusal)),
    };
    if !uplink.check_health_within(LINE_CHECK_TIMEOUT).await {
        return Ok(CardOutcome::LineDown);
    }
    let attempt = resume_or_begin(journal, key, basket, card_token, amount, now_millis)?;
    match ask(uplink, &attempt.reference, amount, card_token).await {
        Asked::Approved(authorization) => {
            let tender = Tender::Card {
                authorization: authorization.clone(),
                reference: attempt.reference.clone(),
            };
            match counter::sell(journal, key, basket, tender, now_millis)? {
                Ok(sold) => Ok(CardOutcome::Sold(sold)),
                Err(refusal) => {
                    // Approved, but the sale can no longer be made: the money is owed back.
                    let reference = &attempt.reference;
                    journal.end_card_attempt(
                        reference,
                        AttemptState::RefundDue,
                        Some(&authorization),
                    )?;
                    Ok(CardOutcome::Refused(refusal))
                }
            }
        }
        Asked::Declined => {
            journal.end_card_attempt(&attempt.reference, AttemptState::Declined, None)?;
            Ok(CardOutcome::Declined)
        }
        Asked::Lost => Ok(CardOutcome::AnswerLost {
            reference: attempt.reference,
        }),
        Asked::Unreachable => {
            // Not one byte reached a server: the attempt never happened.
            journal.end_card_attempt(&attempt.reference, AttemptState::Unsent, None)?;
            Ok(CardOutcome::LineDown)
        }
    }
}

/// The pending attempt for this very sale and card, or a new one journaled now.
fn resume_or_begin(
    journal: &mut Journal,
    key: &Key,
    basket: &Basket,
    card_token: &str,
    amount: u64,
    now_millis: i64,
) -> anyhow::Result<CardAttempt> {
    let sale = serde_json::to_string(&AttemptSale::of(basket))?;
    let same = journal
        .card_attempts(AttemptState::Pending)?
        .into_iter()
        .find(|a| {
            a.sale == sale
                && a.amount == amount
                && counter::open(key, &a.sealed).as_deref() == Some(card_token.as_bytes())
        });
    if let Some(attempt) = same {
        return Ok(attempt);
    }
    let attempt = CardAttempt {
        reference: format!("card-{}", hex::encode(rand::random::<[u8; 12]>())),
        amount,
        sale,
        sealed: counter::seal(key, card_token.as_bytes()),
        created_at: now_millis,
        state: AttemptState::Pending,
        authorization: None,
    };
    journal.begin_card_attempt(&attempt)?;
    Ok(attempt)
}

async fn ask(uplink: &Uplink, reference: &str, amount: u64, card_token: &str) -> Asked {
    let path = format!("/v1/terminals/{}/payments", uplink.terminal());
    let request = PaymentRequest {
        reference: reference.to_owned(),
        amount: i64::try_from(amount).unwrap_or(i64::MAX),
        card_token: card_token.to_owned(),
    };
    let body = serde_json::to_value(&request).expect("payments serialise");
    match uplink.post(&path, &body).await {
        Ok((200, answer)) => match serde_json::from_value::<PaymentAnswer>(answer) {
            Ok(approved) => Asked::Approved(approved.authorization_id),
            Err(_) => Asked::Lost,
        },
        Ok((402, _)) => Asked::Declined,
        Ok(_) | Err(UplinkError::AnswerLost) | Err(UplinkError::RetryAfter(_)) => Asked::Lost,
        Err(UplinkError::Unreachable(_)) => Asked::Unreachable,
    }
}

/// Attempts still waiting for an answer, for the cashier: the references, oldest first.
pub fn unanswered(journal: &Journal) -> anyhow::Result<Vec<String>> {
    Ok(journal
        .card_attempts(AttemptState::Pending)?
        .into_iter()
        .map(|a| a.reference)
        .collect())
}

/// Settles attempts left unanswered for longer than the cashier would wait: asks again under
/// the same reference. Approved ones had no sale journaled, so the money is owed back (listed
/// for the owner); declined ones close. Returns how many were settled.
pub async fn settle_unanswered(
    journal: &mut Journal,
    key: &Key,
    uplink: &Uplink,
    now_millis: i64,
) -> anyhow::Result<u32> {
    let mut settled = 0;
    for attempt in journal.card_attempts(AttemptState::Pending)? {
        if now_millis - attempt.created_at < UNANSWERED_ATTEMPT_GRACE_MILLIS {
            continue;
        }
        let Some(card) = counter::open(key, &attempt.sealed) else {
            anyhow::bail!("card attempt {} does not open", attempt.reference);
        };
        let card = String::from_utf8_lossy(&card).into_owned();
        let (state, authorization) =
            match ask(uplink, &attempt.reference, attempt.amount, &card).await {
                Asked::Approved(authorization) => (AttemptState::RefundDue, Some(authorization)),
                Asked::Declined => (AttemptState::Declined, None),
                Asked::Lost | Asked::Unreachable => continue,
            };
        if journal.end_card_attempt(&attempt.reference, state, authorization.as_deref())? {
            settled += 1;
        }
    }
    Ok(settled)
}
