//! `hubroute run --config FILE`: the long-running routing service.
//!
//! Ctrl-C or SIGTERM drains in-flight batches and writes the final checkpoints; SIGHUP, or a change
//! of the file's modification time, reloads the routes (the engine's `Reloader::watch`; an invalid
//! file leaves the running routes in place and says why).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use hubroute_engine::config::LoadedConfig;
use hubroute_engine::pipeline::RunningEngine;

/// Arguments of `hubroute run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// The configuration file (TOML); see `examples/routing.toml`.
    #[arg(long)]
    config: PathBuf,
}

pub(crate) fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let loaded = match LoadedConfig::load(&args.config) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(serve(loaded))
}

async fn serve(loaded: LoadedConfig) -> anyhow::Result<ExitCode> {
    let engine = RunningEngine::start(loaded).await?;
    tracing::info!(
        "serving http://{0}/metrics, http://{0}/healthz and http://{0}/routes",
        engine.http_addr()
    );
    let stop = engine.shutdown_token();
    tokio::spawn(async move {
        super::shutdown_signal().await;
        tracing::info!("stop requested");
        stop.cancel();
    });
    tokio::spawn(engine.reloader().watch());
    let summary = engine.wait().await?;
    tracing::info!(
        events_routed = summary.events_routed,
        committed = ?summary.committed,
        "hubroute stopped"
    );
    Ok(ExitCode::SUCCESS)
}
