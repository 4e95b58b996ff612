//! `hubroute check --config FILE`: validates a configuration and compiles every route, exactly as
//! `hubroute run` would before starting, so a bad file is caught before deployment.

use std::path::PathBuf;
use std::process::ExitCode;

use hubroute_engine::config::LoadedConfig;
use hubroute_engine::routing::RoutingTable;

/// Arguments of `hubroute check`.
#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// The configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
}

/// Prints a summary and exits 0 when the file is valid; prints `file:line:column: problem` and
/// exits 2 otherwise.
pub(crate) fn run(args: &CheckArgs) -> ExitCode {
    let checked = LoadedConfig::load(&args.config)
        .and_then(|loaded| RoutingTable::compile(&loaded).map(|table| (loaded, table)));
    match checked {
        Ok((loaded, table)) => {
            if loaded.config.twins.is_none() {
                for reader in loaded.config.twin_readers() {
                    eprintln!(
                        "warning: {reader} reads $twin, but there is no [twins] section: $twin is \
                         undefined for every message (enrichments stamp their literal); add [twins] \
                         service_connection_string"
                    );
                }
            }
            println!(
                "{}: ok: {} endpoints, {} routes, fallback {}, {} enrichments",
                args.config.display(),
                table.endpoints().len(),
                table.route_names().count(),
                if loaded.config.fallback.as_ref().is_some_and(|f| f.enabled) {
                    "enabled"
                } else {
                    "disabled"
                },
                loaded.config.enrichments.len(),
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(2)
        }
    }
}
