//! What a terminal asks of a sale, wherever the sale is served. Alone, the sale's actor is in
//! this process; on several nodes it may be on another, and the call travels there whole (one
//! call for all of a sync's entries on that sale).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use holdfast_core::terminal::wire::SaleTerms;
use holdfast_core::{Channel, Command, HolderId, Rejection, Reply};
use serde::{Deserialize, Serialize};

use super::terms;
use crate::actor::SaleView;
use crate::ledger::Ledger;
use crate::ledger_error::LedgerError;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SaleCall {
    /// Units sold at a till out of its allotment: one command per journal entry, in order.
    TillSales(Vec<Command>),
    /// Sets a holder's allotment to `target` units, claiming or returning the difference.
    SetAllotment { holder: HolderId, target: u32 },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum SaleCallAnswer {
    NoSale,
    TillSales(Vec<TillSaleOutcome>),
    /// The allotment held afterwards and the sale's terms, or why it was refused.
    Allotment(Result<(u32, SaleTerms), Rejection>),
}

/// What became of one till sale.
#[derive(Debug, Serialize, Deserialize)]
pub enum TillSaleOutcome {
    Recorded {
        over_limit: bool,
        limit: u32,
    },
    Refused(Rejection),
    /// The sale could not take it now (busy, stopped): a later sync retries it.
    NotYet(String),
}

pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How terminals reach sales (`AppInner` is one).
pub trait SaleDesk: Send + Sync {
    /// The sale's view, here or as its holder last published it.
    fn view(&self, sale: &str) -> Option<Arc<SaleView>>;

    /// Runs `call` on the sale, wherever it is served.
    fn call<'a>(
        &'a self,
        sale: &'a str,
        call: SaleCall,
    ) -> Pending<'a, Result<SaleCallAnswer, LedgerError>>;
}

/// Runs `call` on a sale served here.
pub async fn serve_sale_call(
    ledger: &Ledger,
    sale_id: &str,
    call: SaleCall,
) -> Result<SaleCallAnswer, LedgerError> {
    let Some(sale) = ledger.sale(sale_id) else {
        return Ok(SaleCallAnswer::NoSale);
    };
    match call {
        SaleCall::TillSales(commands) => {
            let limit = sale.view().spec.per_customer_limit;
            let outcomes = sale
                .execute_many(commands)
                .await
                .into_iter()
                .map(|result| match result.map(|executed| executed.outcome) {
                    Err(error) => TillSaleOutcome::NotYet(error.to_string()),
                    Ok(Err(rejection)) => TillSaleOutcome::Refused(rejection),
                    Ok(Ok(Reply::AllottedSaleRecorded { over_limit })) => {
                        TillSaleOutcome::Recorded { over_limit, limit }
                    }
                    Ok(Ok(_)) => TillSaleOutcome::Recorded {
                        over_limit: false,
                        limit,
                    },
                })
                .collect();
            Ok(SaleCallAnswer::TillSales(outcomes))
        }
        SaleCall::SetAllotment { holder, target } => {
            let terms = terms(&sale.view().spec);
            let current = {
                let holder = holder.clone();
                sale.read(move |s| s.allotment(&holder)).await?
            };
            let command = match target.cmp(&current) {
                std::cmp::Ordering::Equal => {
                    return Ok(SaleCallAnswer::Allotment(Ok((current, terms))));
                }
                std::cmp::Ordering::Greater => Command::ClaimAllotment {
                    holder,
                    channel: Channel::Store,
                    quantity: target - current,
                },
                std::cmp::Ordering::Less => Command::ReturnAllotment {
                    holder,
                    quantity: current - target,
                },
            };
            let held = match sale.execute(command, None).await?.outcome {
                Ok(Reply::Granted { quantity }) => Ok((current + quantity, terms)),
                Ok(_) => Ok((target, terms)),
                Err(rejection) => Err(rejection),
            };
            Ok(SaleCallAnswer::Allotment(held))
        }
    }
}
