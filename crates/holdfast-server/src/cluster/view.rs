//! A sale's view as its holder publishes it for the other nodes: what a waiting-room poll needs.

use std::sync::Arc;

use holdfast_core::{QueueView, SaleSpec, Timestamp};
use serde::{Deserialize, Serialize};

use crate::actor::SaleView;

/// `SaleView` on the wire, without the lottery's ranks: they are published once, beside it
/// (`ranks_stream`), when the draw makes them, and never change after.
#[derive(Debug, Serialize, Deserialize)]
pub struct PublishedView {
    spec: SaleSpec,
    total: u32,
    available: u32,
    held: u32,
    sold: u32,
    allotted: u32,
    shares_left: [u32; 4],
    closed: bool,
    paused: holdfast_core::Paused,
    orders: usize,
    holds_placed: u64,
    promising: Option<holdfast_core::Day>,
    lottery: bool,
    entries: u32,
    drawn: Option<u32>,
    admitted_through: u32,
    expired_through: u32,
    outstanding: u32,
    admissions: Vec<(u32, Timestamp)>,
    pass_ttl_millis: u64,
}

impl PublishedView {
    pub fn of(view: &SaleView) -> PublishedView {
        let queue = &view.queue;
        PublishedView {
            spec: (*view.spec).clone(),
            total: view.total,
            available: view.available,
            held: view.held,
            sold: view.sold,
            allotted: view.allotted,
            shares_left: view.shares_left,
            closed: view.closed,
            paused: view.paused,
            orders: view.orders,
            holds_placed: view.holds_placed,
            promising: view.promising,
            lottery: queue.lottery,
            entries: queue.entries,
            drawn: queue.drawn,
            admitted_through: queue.admitted_through,
            expired_through: queue.expired_through,
            outstanding: queue.outstanding,
            admissions: queue.admissions.clone(),
            pass_ttl_millis: queue.pass_ttl_millis,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("views serialise")
    }

    pub fn decode(bytes: &[u8]) -> Result<PublishedView, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// Whether the view needs the lottery's ranks to answer a poll.
    pub fn needs_ranks(&self) -> bool {
        self.lottery && self.drawn.is_some()
    }

    pub fn into_view(self, ranks: Arc<Vec<u32>>) -> SaleView {
        SaleView {
            spec: Arc::new(self.spec),
            total: self.total,
            available: self.available,
            held: self.held,
            sold: self.sold,
            allotted: self.allotted,
            shares_left: self.shares_left,
            closed: self.closed,
            paused: self.paused,
            orders: self.orders,
            holds_placed: self.holds_placed,
            promising: self.promising,
            queue: QueueView {
                lottery: self.lottery,
                entries: self.entries,
                drawn: self.drawn,
                ranks,
                admitted_through: self.admitted_through,
                expired_through: self.expired_through,
                outstanding: self.outstanding,
                admissions: self.admissions,
                pass_ttl_millis: self.pass_ttl_millis,
            },
        }
    }
}

/// Where a sale's lottery ranks are published, beside its view.
pub fn ranks_stream(sale: &str) -> String {
    format!("{sale}#ranks")
}

pub fn encode_ranks(ranks: &[u32]) -> Vec<u8> {
    postcard::to_stdvec(ranks).expect("ranks serialise")
}

pub fn decode_ranks(bytes: &[u8]) -> Result<Vec<u32>, postcard::Error> {
    postcard::from_bytes(bytes)
}
