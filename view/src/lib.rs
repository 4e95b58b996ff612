//! What an operator sees of a running hubroute.
//!
//! The engine's `/metrics` (Prometheus text) and `/routes` (JSON) are read into a [`Status`]: one
//! row per route, endpoint and partition, with rates, totals, health and commit latency quantiles.
//! The same model feeds three faces: `hubroute top` and the quick start's live view (the
//! `terminal` feature, ratatui on crossterm) and the engine's status page at `GET /` (which links
//! this crate without that feature and charts a [`History`]).
//!
//! The view is built from the metrics text, not from the engine's types, for two reasons: `top`
//! watches a service over HTTP, possibly of another version; and any metric the engine adds later
//! appears in every face without a change here (see [`status`] for how unknown series are shown).

mod error;
pub mod exposition;
pub mod format;
mod history;
mod routes;
pub mod status;
#[cfg(feature = "terminal")]
pub mod terminal;

pub use error::{Error, Result};
pub use exposition::Scrape;
pub use history::{History, HistorySample};
pub use routes::RoutesInfo;
pub use status::{ScrapeWindow, Status};
