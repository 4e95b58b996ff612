//! `hubroute top`: a live terminal view of a running service, from its `/metrics` and `/routes`.
//!
//! On a terminal it is a full-screen table of routes, endpoints and partitions refreshed every
//! interval (`q` quits); on a pipe it prints one summary line per interval. A service that goes
//! away shows "disconnected, retrying" until it is back.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

/// Arguments of `hubroute top`.
#[derive(Debug, clap::Args)]
pub(crate) struct TopArgs {
    /// The service's `[service] listen` address.
    #[arg(long, default_value = "http://127.0.0.1:9464")]
    url: String,
    /// How often to refresh (e.g. `1s`, `500ms`).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
}

pub(crate) fn run(args: &TopArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.interval >= Duration::from_millis(100),
        "--interval must be at least 100ms, got {}",
        humantime::format_duration(args.interval)
    );
    let url = if args.url.contains("://") {
        args.url.clone()
    } else {
        format!("http://{}", args.url)
    };
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(hubroute_view::terminal::top(&url, args.interval))?;
    Ok(ExitCode::SUCCESS)
}
