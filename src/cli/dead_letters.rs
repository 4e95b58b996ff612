//! `hubroute dead-letters list|replay|purge --config FILE`: the operator's view of the dead-letter
//! store (the work is `hubroute_engine::dead_letters`).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use hubroute_engine::config::LoadedConfig;
use hubroute_engine::dead_letters::{self, ReplayRequest};

/// Subcommands of `hubroute dead-letters`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DeadLettersCommand {
    /// Count stored records by endpoint, kind (parked or failed), reason and hour.
    List {
        /// The configuration file (TOML), as for `run`.
        #[arg(long)]
        config: PathBuf,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-deliver an endpoint's records through its sink; replayed objects are moved aside.
    Replay {
        /// The configuration file (TOML), as for `run`.
        #[arg(long)]
        config: PathBuf,
        /// The endpoint whose records to replay.
        #[arg(long)]
        endpoint: String,
        /// Only records stored at or after this time (RFC 3339, or a duration ago such as `2h`).
        #[arg(long, value_parser = parse_time)]
        since: Option<SystemTime>,
        /// Only records stored before this time (RFC 3339, or a duration ago such as `30m`).
        #[arg(long, value_parser = parse_time)]
        until: Option<SystemTime>,
        /// Count what would be replayed and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replay permanently failed records (after fixing their cause) instead of parked ones.
        #[arg(long)]
        failed: bool,
    },
    /// Delete stored records for good, replayed ones included.
    Purge {
        /// The configuration file (TOML), as for `run`.
        #[arg(long)]
        config: PathBuf,
        /// Only this endpoint's records.
        #[arg(long)]
        endpoint: Option<String>,
        /// Confirms the deletion.
        #[arg(long)]
        yes: bool,
    },
}

fn parse_time(text: &str) -> Result<SystemTime, String> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("`{text}` ago is before 1970"));
    }
    humantime::parse_rfc3339_weak(text).map_err(|error| {
        format!("`{text}` is neither an RFC 3339 time (2026-11-27T10:00:00Z) nor a duration (2h): {error}")
    })
}

pub(crate) fn run(command: DeadLettersCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(execute(command))
}

async fn execute(command: DeadLettersCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeadLettersCommand::List { config, json } => {
            let groups = dead_letters::list(&LoadedConfig::load(&config)?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&groups)?);
            } else if groups.is_empty() {
                println!("the dead-letter store is empty");
            } else {
                println!(
                    "{:<20} {:<7} {:<18} {:>8}  REASON",
                    "ENDPOINT", "KIND", "HOUR", "COUNT"
                );
                for g in &groups {
                    println!(
                        "{:<20} {:<7} {:<18} {:>8}  {}",
                        g.endpoint, g.kind, g.hour, g.count, g.reason
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DeadLettersCommand::Replay {
            config,
            endpoint,
            since,
            until,
            dry_run,
            failed,
        } => {
            let request = ReplayRequest {
                endpoint,
                since,
                until,
                dry_run,
                failed,
            };
            let loaded = LoadedConfig::load(&config)?;
            let mut last_draw = std::time::Instant::now() - Duration::from_secs(1);
            let report = dead_letters::replay(&loaded, &request, |done, total| {
                if last_draw.elapsed() >= Duration::from_millis(100) || done == total {
                    last_draw = std::time::Instant::now();
                    let width = 30;
                    let filled = usize::try_from(done * width / total.max(1)).unwrap_or(0);
                    let bar = "#".repeat(filled) + &"-".repeat(30 - filled.min(30));
                    eprint!("\r[{bar}] {done}/{total} records");
                    let _ = std::io::stderr().flush();
                }
            })
            .await?;
            if report.objects > 0 {
                eprintln!();
            }
            let kind = if request.failed { "failed" } else { "parked" };
            if request.dry_run {
                println!(
                    "dry run: {} {kind} records of `{}` would be replayed",
                    report.rows, request.endpoint
                );
            } else {
                println!(
                    "replayed {} {kind} records of `{}` from {} objects ({} failed again and were dead-lettered again)",
                    report.rows, request.endpoint, report.objects, report.failed_again
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DeadLettersCommand::Purge {
            config,
            endpoint,
            yes,
        } => {
            if !yes {
                eprintln!(
                    "purge deletes dead letters for good (replayed ones included); run again with --yes"
                );
                return Ok(ExitCode::from(2));
            }
            let deleted =
                dead_letters::purge(&LoadedConfig::load(&config)?, endpoint.as_deref()).await?;
            println!("deleted {deleted} objects");
            Ok(ExitCode::SUCCESS)
        }
    }
}
