//! A terminal's sync: new journal entries applied exactly once, every sale's in one batch on its
//! actor, then the terminal's progress made durable and acknowledged with a signed receipt.

use std::collections::BTreeMap;

use holdfast_core::terminal::auth;
use holdfast_core::terminal::entry::{EntryBody, EntryEffects};
use holdfast_core::terminal::wire::TillReport;
use holdfast_core::terminal::{ChainHash, JournalEntry, Progress};
use holdfast_core::{Command, Timestamp};
use holdfast_store::{Batch, Record};

use super::desk::{SaleCall, SaleCallAnswer, SaleDesk, TillSaleOutcome};
use super::{Noted, PendingTransfer, Receivable, SyncState, Terminal, holder};
use crate::ledger_error::LedgerError;
use crate::text::rejection_message;

/// Units a till keeps of a sale whose pool has run dry; the rest it is asked to give back, so
/// web shoppers are not told "sold out" while units sit in a drawer.
pub const GIVE_BACK_FLOOR: u32 = 1;

/// What a sync came to.
pub struct SyncOutcome {
    pub acked_through: u64,
    pub head: ChainHash,
    pub receipt: String,
    pub stopped: Option<String>,
    pub quarantined: Vec<u64>,
    pub flagged: Vec<u64>,
    /// Receivables customers have paid by link, so the till can close them.
    pub settled: Vec<String>,
    /// Sales to give units back to: keep at most this many.
    pub give_back: Vec<(String, u32)>,
}

/// What one synced entry came to.
#[derive(Debug, Default)]
struct EntryOutcome {
    /// It can never apply (the first reason found).
    quarantine: Option<String>,
    /// Applied, but for a person to look at.
    flags: Vec<String>,
    /// The ledger could not take it now (why); a later sync retries it.
    not_yet: Option<String>,
}

impl EntryOutcome {
    fn quarantine(&mut self, reason: String) {
        self.quarantine.get_or_insert(reason);
    }
}

impl Terminal {
    /// Applies the new entries of `batch` exactly once, then makes the progress durable.
    pub async fn sync(
        &self,
        sales: &dyn SaleDesk,
        batch: &[JournalEntry],
        report: Option<TillReport>,
        now: Timestamp,
    ) -> Result<SyncOutcome, LedgerError> {
        let mut state = self.state.lock().await;
        let accepted = state.progress().accept(batch);
        let mut progress = state.progress();
        let mut stopped = accepted.stopped.map(|b| b.to_string());
        let entries: Vec<(&JournalEntry, Result<EntryEffects, String>)> = accepted
            .new
            .iter()
            .map(|&index| {
                let entry = &batch[index];
                let effects = EntryBody::read(&entry.body).and_then(|body| body.effects());
                (entry, effects)
            })
            .collect();
        let outcomes = self.apply_all(sales, &entries).await;
        let mut next = state.clone();
        let (mut applied, mut quarantined, mut flagged) = (Vec::new(), Vec::new(), Vec::new());
        for ((entry, effects), outcome) in entries.iter().zip(outcomes) {
            if let Some(error) = outcome.not_yet {
                // The ledger could not take it now: acknowledge up to the entry before.
                stopped = Some(format!(
                    "entry {} could not be applied yet: {error}",
                    entry.seq
                ));
                break;
            }
            let note = |reason| Noted {
                seq: entry.seq,
                reason,
            };
            let refused = outcome.quarantine.is_some();
            quarantined.extend(outcome.quarantine.map(note));
            flagged.extend(outcome.flags.into_iter().map(note));
            progress = Progress {
                applied_through: entry.seq,
                head: entry.hash(),
            };
            if let Ok(effects) = effects {
                learn(&mut next, entry.seq, effects, refused);
            }
            applied.push(*entry);
        }
        next.applied_through = progress.applied_through;
        next.head = progress.head.to_hex();
        next.quarantine.extend(quarantined.iter().cloned());
        next.flagged.extend(flagged.iter().cloned());
        next.last_sync_at = Some(now);
        let give_back = give_back(sales, report.as_ref());
        let report_changed = report.is_some() && report != next.report;
        if report_changed {
            next.report = report;
        }
        if applied.is_empty() && !report_changed {
            // Nothing worth a durable write: only the time of the sync moved.
            state.last_sync_at = next.last_sync_at;
            return Ok(self.outcome(&state, progress, stopped, quarantined, flagged, give_back));
        }
        let trail: Vec<serde_json::Value> = applied
            .iter()
            .map(|e| serde_json::json!({"seq": e.seq, "body": String::from_utf8_lossy(&e.body)}))
            .collect();
        let records = if trail.is_empty() {
            Vec::new()
        } else {
            vec![Record {
                stream: self.writer.stream().to_owned(),
                payload: serde_json::to_vec(&trail).expect("entries serialise"),
            }]
        };
        let batch = Batch {
            records,
            snapshots: vec![self.progress_snapshot(&next)],
            ..Batch::default()
        };
        self.writer.append(batch).await?;
        *state = next;
        Ok(self.outcome(&state, progress, stopped, quarantined, flagged, give_back))
    }

    fn outcome(
        &self,
        state: &SyncState,
        progress: Progress,
        stopped: Option<String>,
        quarantined: Vec<Noted>,
        flagged: Vec<Noted>,
        give_back: Vec<(String, u32)>,
    ) -> SyncOutcome {
        SyncOutcome {
            acked_through: progress.applied_through,
            head: progress.head,
            receipt: auth::receipt(&self.secret, &progress),
            stopped,
            quarantined: quarantined.iter().map(|q| q.seq).collect(),
            flagged: flagged.iter().map(|f| f.seq).collect(),
            settled: state
                .receivables
                .iter()
                .filter(|(_, r)| r.settled_by.is_some())
                .map(|(id, _)| id.clone())
                .collect(),
            give_back,
        }
    }

    /// Applies the entries' effects on sales: every sale's commands in one call on its actor
    /// (one durable write per sale, wherever the sale is served), in journal order.
    async fn apply_all(
        &self,
        sales: &dyn SaleDesk,
        entries: &[(&JournalEntry, Result<EntryEffects, String>)],
    ) -> Vec<EntryOutcome> {
        let mut outcomes: Vec<EntryOutcome> = entries
            .iter()
            .map(|(_, effects)| EntryOutcome {
                quarantine: effects.as_ref().err().cloned(),
                ..EntryOutcome::default()
            })
            .collect();
        let mut per_sale: BTreeMap<&str, Vec<(usize, Command)>> = BTreeMap::new();
        for (index, (entry, effects)) in entries.iter().enumerate() {
            let Ok(effects) = effects else { continue };
            for (sale_id, sold) in &effects.sold {
                let command = Command::RecordAllottedSale {
                    holder: holder(&self.id),
                    quantity: sold.quantity,
                    journal_seq: Some(entry.seq),
                    sold_at: effects.sold_at,
                    unit_price: sold.unit_price,
                    buyer: effects.buyer.clone(),
                };
                per_sale.entry(sale_id).or_default().push((index, command));
            }
        }
        for (sale_id, commands) in per_sale {
            let (indexes, commands): (Vec<usize>, Vec<Command>) = commands.into_iter().unzip();
            let answers = match sales.call(sale_id, SaleCall::TillSales(commands)).await {
                Ok(SaleCallAnswer::TillSales(answers)) if answers.len() == indexes.len() => answers,
                Ok(_) => {
                    for index in indexes {
                        outcomes[index].quarantine(format!("no sale '{sale_id}'"));
                    }
                    continue;
                }
                Err(error) => {
                    for index in indexes {
                        outcomes[index].not_yet = Some(error.to_string());
                    }
                    continue;
                }
            };
            for (index, answer) in indexes.into_iter().zip(answers) {
                let outcome = &mut outcomes[index];
                match answer {
                    TillSaleOutcome::NotYet(error) => outcome.not_yet = Some(error),
                    TillSaleOutcome::Refused(rejection) => {
                        outcome.quarantine(format!("{sale_id}: {}", rejection_message(&rejection)))
                    }
                    TillSaleOutcome::Recorded {
                        over_limit: true,
                        limit,
                    } => {
                        outcome.flags.push(format!(
                            "{sale_id}: the buyer now has more than the limit of {limit} per person"
                        ));
                    }
                    TillSaleOutcome::Recorded { .. } => {}
                }
            }
        }
        outcomes
    }
}

/// What the server learns of an entry that was accepted: receivables, bank transfers, takings.
fn learn(state: &mut SyncState, seq: u64, effects: &EntryEffects, refused: bool) {
    if let Some(opened) = &effects.receivable {
        state
            .receivables
            .entry(opened.id.clone())
            .or_insert(Receivable {
                seq,
                phone: opened.phone.clone(),
                amount: opened.amount,
                at: effects.sold_at.0,
                settled_by: None,
            });
    }
    if effects.transfer_pending {
        let transfer = PendingTransfer {
            amount: effects.total,
            at: effects.sold_at.0,
        };
        state.transfers.insert(seq, transfer);
    }
    if let Some(confirmed) = effects.transfer_confirmed {
        state.transfers.remove(&confirmed);
    }
    if refused {
        return;
    }
    state.takings = state.takings.saturating_add(effects.total);
    for (sale_id, sold) in &effects.sold {
        let units = state.units_sold.entry(sale_id.clone()).or_default();
        *units = units.saturating_add(u64::from(sold.quantity));
    }
}

/// Scarce sales whose pool is empty while this till, which is online right now, still holds
/// more than the floor of them.
fn give_back(sales: &dyn SaleDesk, report: Option<&TillReport>) -> Vec<(String, u32)> {
    let Some(report) = report else {
        return Vec::new();
    };
    report
        .allotments
        .iter()
        .filter(|(_, held)| *held > GIVE_BACK_FLOOR)
        .filter(|(sale_id, _)| sales.view(sale_id).is_some_and(|s| s.available == 0))
        .map(|(sale_id, _)| (sale_id.clone(), GIVE_BACK_FLOOR))
        .collect()
}
