//! Holdfast's server: the imperative shell around the core.
//!
//! HTTP (axum) → handlers (`api`) → one actor per sale (`actor`) → durable log
//! (`holdfast-store`). Only this crate knows HTTP and JSON.

mod actor;
mod answer;
pub mod api;
mod app;
mod auth;
pub mod clock;
mod cluster;
mod compaction;
mod config;
mod error;
mod feed;
pub mod fuzz_targets;
mod idempotency;
mod ledger;
mod ledger_error;
pub mod log_entry;
pub mod payments;
mod settlement;
mod snapshots;
mod state;
mod streams;
mod telemetry;
pub mod terminals;
mod text;
mod workers;

pub use app::{Application, OperatorTokenSource, StartError};
pub use cluster::ClusterConfig;
pub use config::{Config, Limits};
pub use error::ApiError;
