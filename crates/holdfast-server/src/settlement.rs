//! Settling authorised payments: capture what paid for an order, void what did not, and keep
//! trying until the card network has taken each one — exactly once.
//!
//! The queue is durable without costing the confirm a write of its own: a confirmed order's
//! `payment_ref` in the sale's log *is* the intent to capture it. What has been settled is
//! recorded per sale as a watermark (`settled-through/<sale>`: every order up to it is
//! settled), advanced and written by the background worker in batches. At start-up every order
//! above its sale's watermark is captured again — harmless, since a capture carries the same
//! idempotency key every time and the acquirer answers a repeat with the first answer. The
//! rarer settlements with no order behind them (a void after a failed confirm, a till's
//! one-step charge) are written as `settle/<authorization>` when the network does not take them
//! at once, and closed with `settled/<authorization>`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_core::Order;
use holdfast_store::{Batch, Fate};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::clock::Clock;
use crate::ledger::Ledger;
use crate::ledger_error::LedgerError;
use crate::payments::{Authorization, AuthorizeRequest, CURRENCY, PaymentError, PaymentProvider};
use crate::streams::Streams;
use crate::text::hold_id;

const WATERMARK_KEY: &str = "settled-through/";
const PENDING_KEY: &str = "settle/";
const DONE_KEY: &str = "settled/";
/// An order younger than this is left to the request that confirmed it, which captures it at
/// once; the worker picks up only what that request did not finish.
const ORDER_GRACE_MILLIS: i64 = 10_000;
/// Orders above a sale's watermark looked at in one round of the worker.
const ORDERS_LOOKED_AT_MAX: usize = 4_096;
/// Retries of one settlement back off up to this.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Capture,
    Void,
}

/// One settlement the card network has not taken yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    authorization: String,
    action: Action,
    idempotency_key: String,
    /// The order it pays for, if any: settling it advances that sale's watermark.
    #[serde(default)]
    order: Option<(String, u64)>,
    /// The stream it is written into (the sale or the terminal it came from), so the node that
    /// takes that stream over finds it.
    #[serde(default)]
    stream: String,
    #[serde(skip)]
    attempts: u32,
    #[serde(skip)]
    next_try: Option<tokio::time::Instant>,
}

/// Per sale: every order up to `through` is settled, and so are those in `above`.
#[derive(Default)]
struct Watermark {
    through: u64,
    above: BTreeSet<u64>,
    written: u64,
}

impl Watermark {
    fn settle(&mut self, order: u64) {
        if order > self.through {
            self.above.insert(order);
        }
        while self.above.remove(&(self.through + 1)) {
            self.through += 1;
        }
    }

    fn is_settled(&self, order: u64) -> bool {
        order <= self.through || self.above.contains(&order)
    }
}

#[derive(Default)]
struct State {
    /// By authorization id.
    pending: BTreeMap<String, Pending>,
    watermarks: HashMap<String, Watermark>,
    /// `settled/<authorization>` markers not yet written, with their streams.
    done_unwritten: Vec<(String, String)>,
}

pub struct Settlements {
    state: Mutex<State>,
    payments: Arc<dyn PaymentProvider>,
    streams: Streams,
    clock: Arc<dyn Clock>,
    wake: Notify,
}

impl State {
    fn fate_of(&self, key: &str) -> Option<Fate> {
        let id = key
            .strip_prefix(PENDING_KEY)
            .or_else(|| key.strip_prefix(DONE_KEY))?;
        let unsettled =
            self.pending.contains_key(id) || self.done_unwritten.iter().any(|(_, done)| done == id);
        Some(if unsettled { Fate::Keep } else { Fate::Drop })
    }

    /// Takes in settlement records found among keyed values.
    fn absorb(&mut self, values: &[(String, Vec<u8>)]) {
        let mut done = BTreeSet::new();
        for (key, bytes) in values {
            if let Some(sale) = key.strip_prefix(WATERMARK_KEY) {
                let through = std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                let watermark = self.watermarks.entry(sale.to_owned()).or_default();
                watermark.through = watermark.through.max(through);
                watermark.written = watermark.written.max(through);
            } else if let Some(authorization) = key.strip_prefix(DONE_KEY) {
                done.insert(authorization.to_owned());
            } else if key.starts_with(PENDING_KEY)
                && let Ok(pending) = serde_json::from_slice::<Pending>(bytes)
            {
                self.pending.insert(pending.authorization.clone(), pending);
            }
        }
        self.pending.retain(|id, _| !done.contains(id));
    }
}

impl Settlements {
    pub fn recover(
        values: &[(String, Vec<u8>)],
        payments: Arc<dyn PaymentProvider>,
        streams: Streams,
        clock: Arc<dyn Clock>,
    ) -> Settlements {
        let mut state = State::default();
        state.absorb(values);
        Settlements {
            state: Mutex::new(state),
            payments,
            streams,
            clock,
            wake: Notify::new(),
        }
    }

    /// Takes in the settlement records of a stream this node has just taken over.
    pub fn absorb(&self, values: &[(String, Vec<u8>)]) {
        self.state.lock().expect("settlements").absorb(values);
        self.wake.notify_one();
    }

    /// Leaves a stream another node took over to that node: its pending settlements and, for a
    /// sale, its watermark.
    pub fn forget(&self, stream: &str) {
        let mut state = self.state.lock().expect("settlements");
        state.pending.retain(|_, p| p.stream != stream);
        state.watermarks.remove(stream);
        state.done_unwritten.retain(|(s, _)| s != stream);
    }

    pub fn payments(&self) -> &dyn PaymentProvider {
        self.payments.as_ref()
    }

    /// Settlements the card network has not taken yet.
    pub fn pending(&self) -> usize {
        self.state.lock().expect("settlements").pending.len()
    }

    /// Captures the payment for a confirmed order now; if the network does not take it, the
    /// worker keeps trying. Rehearsal orders have nothing to capture.
    pub async fn capture_order(&self, sale_id: &str, order: &Order) {
        if order.rehearsal {
            self.order_settled(sale_id, order.id.0);
            return;
        }
        let pending = Pending {
            authorization: order.payment_ref.clone(),
            action: Action::Capture,
            idempotency_key: capture_key(sale_id, order),
            order: Some((sale_id.to_owned(), order.id.0)),
            stream: sale_id.to_owned(),
            attempts: 0,
            next_try: None,
        };
        if self.try_settle(&pending).await {
            self.order_settled(sale_id, order.id.0);
        } else {
            self.enqueue(pending);
        }
    }

    /// Voids an authorisation that paid for nothing. If the network does not take it now, the
    /// void is written down (into `stream`, the sale or terminal it came from) and retried
    /// until it does.
    pub async fn void(
        &self,
        stream: &str,
        authorization: &str,
        idempotency_key: &str,
    ) -> Result<(), LedgerError> {
        let pending = Pending {
            authorization: authorization.to_owned(),
            action: Action::Void,
            idempotency_key: idempotency_key.to_owned(),
            order: None,
            stream: stream.to_owned(),
            attempts: 0,
            next_try: None,
        };
        self.settle_or_keep(pending).await
    }

    /// Authorises and captures in one step (a till's card sale, a pay link). Once authorised
    /// the payment is approved: a capture the network does not take now is kept and retried.
    pub async fn charge(
        &self,
        stream: &str,
        card_token: String,
        amount: u64,
        idempotency_key: &str,
    ) -> Result<Authorization, PaymentError> {
        let request = AuthorizeRequest {
            card_token,
            amount,
            currency: CURRENCY,
            idempotency_key: idempotency_key.to_owned(),
        };
        let authorization = self.payments.authorize(request).await?;
        let pending = Pending {
            authorization: authorization.id.clone(),
            action: Action::Capture,
            idempotency_key: idempotency_key.to_owned(),
            order: None,
            stream: stream.to_owned(),
            attempts: 0,
            next_try: None,
        };
        // A capture not written down is retried by the till's own retry (same reference, same
        // key); only a failed write of the record leaves it to that.
        if let Err(error) = self.settle_or_keep(pending).await {
            tracing::error!(%error, "a capture to retry could not be written down");
        }
        Ok(authorization)
    }

    async fn settle_or_keep(&self, pending: Pending) -> Result<(), LedgerError> {
        if self.try_settle(&pending).await {
            return Ok(());
        }
        let record = serde_json::to_vec(&pending).expect("settlements serialise");
        let batch = Batch {
            values: vec![(format!("{PENDING_KEY}{}", pending.authorization), record)],
            ..Batch::default()
        };
        let writer = self.streams.writer(&pending.stream)?;
        // Kept in memory before it is in the log, so whatever the log holds that is not
        // settled is here too (what `fate_of` relies on).
        self.enqueue(pending);
        writer.append(batch).await?;
        Ok(())
    }

    /// What becomes of a settlement record when the log's values are compacted: a pending
    /// settlement, and the marker that says it was done, are needed at start-up only while
    /// the network has not taken it or that is not yet written down. `None` for other keys.
    pub fn fate_of(&self, key: &str) -> Option<Fate> {
        self.state.lock().expect("settlements").fate_of(key)
    }

    /// True once the card network has taken it (now or before).
    async fn try_settle(&self, pending: &Pending) -> bool {
        let (id, key) = (&pending.authorization, &pending.idempotency_key);
        let result = match pending.action {
            Action::Capture => self.payments.capture(id, key).await,
            Action::Void => self.payments.void(id, key).await,
        };
        match result {
            Ok(()) => true,
            Err(PaymentError::Unavailable) => {
                metrics::counter!("holdfast_payment_settle_failures_total").increment(1);
                false
            }
            Err(error) => {
                // The network will never take it (it does not know the authorisation): retrying
                // cannot help, a person must look.
                metrics::counter!("holdfast_payment_settlements_abandoned_total").increment(1);
                tracing::error!(%error, authorization = %id, action = ?pending.action,
                    "a settlement was refused for good");
                true
            }
        }
    }

    fn enqueue(&self, pending: Pending) {
        let mut state = self.state.lock().expect("settlements");
        state
            .pending
            .entry(pending.authorization.clone())
            .or_insert(pending);
        drop(state);
        self.wake.notify_one();
    }

    fn order_settled(&self, sale_id: &str, order: u64) {
        let mut state = self.state.lock().expect("settlements");
        state
            .watermarks
            .entry(sale_id.to_owned())
            .or_default()
            .settle(order);
    }

    /// Runs until `stop` turns true: retries what is pending, finds orders no request settled,
    /// and writes down what was settled. `every` is how often it looks without being woken.
    pub async fn run(
        self: Arc<Self>,
        ledger: Arc<Ledger>,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            self.retry_due().await;
            self.find_unsettled_orders(&ledger).await;
            if let Err(error) = self.write_down().await {
                tracing::error!(%error, "settlement records could not be written");
            }
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    async fn retry_due(&self) {
        let now = tokio::time::Instant::now();
        let due: Vec<Pending> = {
            let state = self.state.lock().expect("settlements");
            state
                .pending
                .values()
                .filter(|p| p.next_try.is_none_or(|at| at <= now))
                .cloned()
                .collect()
        };
        for pending in due {
            let settled = self.try_settle(&pending).await;
            let mut state = self.state.lock().expect("settlements");
            if settled {
                state.pending.remove(&pending.authorization);
                match &pending.order {
                    Some((sale, order)) => state
                        .watermarks
                        .entry(sale.clone())
                        .or_default()
                        .settle(*order),
                    None => state
                        .done_unwritten
                        .push((pending.stream.clone(), pending.authorization.clone())),
                }
            } else if let Some(kept) = state.pending.get_mut(&pending.authorization) {
                kept.attempts += 1;
                let backoff = Duration::from_secs(1 << kept.attempts.min(9)).min(RETRY_BACKOFF_MAX);
                kept.next_try = Some(now + backoff);
            }
        }
    }

    /// Orders above their sale's watermark that nobody is settling (the confirming request
    /// ended early, or the server restarted) are queued for capture.
    async fn find_unsettled_orders(&self, ledger: &Ledger) {
        let now = self.clock.now();
        for (sale_id, sale) in ledger.sales() {
            let through = {
                let state = self.state.lock().expect("settlements");
                state.watermarks.get(&sale_id).map_or(0, |w| w.through)
            };
            if sale.view().orders as u64 <= through {
                continue;
            }
            let Ok(orders) = sale
                .read(move |s| {
                    s.orders()
                        .iter_from(through as usize)
                        .take(ORDERS_LOOKED_AT_MAX)
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .await
            else {
                continue;
            };
            for order in orders {
                let young = order.created_at.0 > now.0 - ORDER_GRACE_MILLIS;
                let known = {
                    let state = self.state.lock().expect("settlements");
                    let settled = state
                        .watermarks
                        .get(&sale_id)
                        .is_some_and(|w| w.is_settled(order.id.0));
                    settled || state.pending.contains_key(&order.payment_ref)
                };
                if known || young {
                    continue;
                }
                if order.rehearsal {
                    self.order_settled(&sale_id, order.id.0);
                    continue;
                }
                self.enqueue(Pending {
                    authorization: order.payment_ref.clone(),
                    action: Action::Capture,
                    idempotency_key: capture_key(&sale_id, &order),
                    order: Some((sale_id.clone(), order.id.0)),
                    stream: sale_id.clone(),
                    attempts: 0,
                    next_try: None,
                });
            }
        }
    }

    /// Writes the watermarks that moved and the markers of settlements done: one batch per
    /// stream they belong to. A stream this node no longer holds is left to its new holder,
    /// which settles again what it finds unsettled (the same idempotency keys, so harmlessly).
    async fn write_down(&self) -> Result<(), LedgerError> {
        let by_stream: BTreeMap<String, Vec<(String, Vec<u8>)>> = {
            let mut state = self.state.lock().expect("settlements");
            let mut by_stream: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
            for (stream, id) in state.done_unwritten.drain(..) {
                let marker = (format!("{DONE_KEY}{id}"), Vec::new());
                by_stream.entry(stream).or_default().push(marker);
            }
            for (sale, watermark) in &mut state.watermarks {
                if watermark.through > watermark.written {
                    watermark.written = watermark.through;
                    by_stream.entry(sale.clone()).or_default().push((
                        format!("{WATERMARK_KEY}{sale}"),
                        watermark.through.to_string().into_bytes(),
                    ));
                }
            }
            by_stream
        };
        for (stream, values) in by_stream {
            let batch = Batch {
                values,
                ..Batch::default()
            };
            match self.streams.writer(&stream) {
                Ok(writer) => {
                    writer.append(batch).await?;
                }
                Err(LedgerError::Moved) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

/// The idempotency key of an order's capture: the same every time it is tried.
fn capture_key(sale_id: &str, order: &Order) -> String {
    format!("settle {}", hold_id(sale_id, order.hold))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watermark_advances_over_settled_orders_in_any_order() {
        let mut watermark = Watermark::default();
        for order in [2, 3, 5] {
            watermark.settle(order);
        }
        assert_eq!(watermark.through, 0);
        watermark.settle(1);
        assert_eq!(watermark.through, 3);
        assert!(watermark.is_settled(5) && !watermark.is_settled(4));
        watermark.settle(4);
        assert_eq!((watermark.through, watermark.above.len()), (5, 0));
    }

    #[test]
    fn recovery_keeps_what_is_pending_and_drops_what_was_done() {
        let pending = |id: &str| Pending {
            authorization: id.into(),
            action: Action::Void,
            idempotency_key: format!("void {id}"),
            order: None,
            stream: "masks".into(),
            attempts: 0,
            next_try: None,
        };
        let values = vec![
            (
                "settle/a1".to_owned(),
                serde_json::to_vec(&pending("a1")).unwrap(),
            ),
            (
                "settle/a2".to_owned(),
                serde_json::to_vec(&pending("a2")).unwrap(),
            ),
            ("settled/a1".to_owned(), Vec::new()),
            ("settled-through/masks".to_owned(), b"41".to_vec()),
        ];
        let mut state = State::default();
        state.absorb(&values);
        assert_eq!(state.pending.keys().collect::<Vec<_>>(), ["a2"]);
        assert_eq!(state.watermarks["masks"].through, 41);

        // Compaction: what is settled goes, with its marker; what is not stays.
        let fates: Vec<_> = values.iter().map(|(key, _)| state.fate_of(key)).collect();
        let (keep, drop) = (Some(Fate::Keep), Some(Fate::Drop));
        assert_eq!(fates, [drop, keep, drop, None]);
        // Settled but not yet written down: its record is still needed.
        state.pending.remove("a2");
        state.done_unwritten.push(("masks".into(), "a2".into()));
        assert_eq!(state.fate_of("settle/a2"), keep);
    }
}
