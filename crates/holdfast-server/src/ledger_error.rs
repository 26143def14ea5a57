//! What goes wrong in the server's own machinery (as opposed to a refusal of a request), as
//! every layer below the HTTP API reports it; `error.rs` turns it into answers.

use holdfast_store::StoreError;
use thiserror::Error;

/// Failures of the server's own machinery, as opposed to refusals of a request.
#[derive(Debug, Error)]
pub enum LedgerError {
    #[error("the sale is busy; try again shortly")]
    Busy,
    #[error("this server already holds as many sales as it is configured for")]
    TooManySales,
    #[error("the ledger cannot write durably: {0}")]
    Storage(#[from] StoreError),
    #[error("the sale's ledger stopped after a storage failure")]
    Stopped,
    #[error("another node holds this now")]
    Moved,
    #[error("the node serving this did not answer")]
    NodeUnreachable,
    #[error("what is stored of this cannot be read back: {0}")]
    Unreadable(String),
}
