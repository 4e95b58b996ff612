//! `hubroute run --config FILE`: the long-running routing service.
//!
//! Ctrl-C or SIGTERM drains in-flight batches and writes the final checkpoints; SIGHUP, or a change
//! of the file's modification time, reloads the routes (an invalid file leaves the running routes in
//! place and says why).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use hubroute_engine::config::LoadedConfig;
use hubroute_engine::pipeline::{Reloader, RunningEngine};

/// How often the configuration file's modification time is checked.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

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
    tokio::spawn(watch_config(engine.reloader()));
    let summary = engine.wait().await?;
    tracing::info!(
        events_routed = summary.events_routed,
        checkpoints = ?summary.checkpoints,
        "hubroute stopped"
    );
    Ok(ExitCode::SUCCESS)
}

fn modified(reloader: &Reloader) -> Option<SystemTime> {
    std::fs::metadata(reloader.path())
        .and_then(|m| m.modified())
        .ok()
}

/// Reloads on SIGHUP and whenever the file's modification time changes.
async fn watch_config(reloader: Reloader) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut last = modified(&reloader);
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        #[cfg(unix)]
        let hangup_signal = async {
            match hangup.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup_signal = std::future::pending::<()>();
        let reason = tokio::select! {
            () = hangup_signal => "SIGHUP",
            _ = tick.tick() => {
                let now = modified(&reloader);
                if now == last {
                    continue;
                }
                last = now;
                "file changed"
            }
        };
        match reloader.reload() {
            Ok(()) => tracing::info!(reason, "routes reloaded"),
            Err(error) => {
                tracing::error!(reason, %error, "the new configuration was rejected; the running routes stay");
            }
        }
    }
}
