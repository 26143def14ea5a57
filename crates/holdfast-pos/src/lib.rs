//! The shop-counter agent: sells with or without a network, keeps every sale in a local
//! journal before the receipt is printed, and syncs the journal to the server exactly once.

pub mod card;
pub mod counter;
pub mod journal;
pub mod receipt;
pub mod sync;
pub mod till;
pub mod uplink;
pub mod web;
