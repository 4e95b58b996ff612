//! Argument parsing and dispatch for every subcommand.

mod check;
mod dead_letters;
mod emulator;
mod import;
mod quickstart;
mod route;
mod run;
mod simulate;
mod top;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// IoT Hub message routing as an open, fast engine you run yourself.
#[derive(Debug, Parser)]
#[command(name = "hubroute", version, about)]
pub(crate) struct Cli {
    /// Log output format (level and filters come from `RUST_LOG`, default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a local Event Hubs-compatible endpoint (AMQP 1.0) with IoT Hub-style device ingress.
    Emulator(emulator::EmulatorArgs),
    /// Simulate a fleet of devices sending telemetry to an Event Hubs endpoint.
    Simulate(simulate::SimulateArgs),
    /// Write a hubroute configuration from an IoT hub's routing (ARM template or `az iot hub show`).
    Import(import::ImportArgs),
    /// Work with route conditions.
    #[command(subcommand)]
    Route(route::RouteCommand),
    /// Validate a configuration file and compile every route.
    Check(check::CheckArgs),
    /// Run the routing engine: read the source, route, deliver to every endpoint.
    Run(run::RunArgs),
    /// Try hubroute with nothing installed: emulator, simulated devices, example routes and sinks.
    Quickstart(quickstart::QuickstartArgs),
    /// Watch a running service: routes, endpoints and partitions, refreshed every second.
    Top(top::TopArgs),
    /// List, replay or purge the dead-letter store.
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLettersCommand),
}

impl Cli {
    /// The log filter when `RUST_LOG` is unset: warnings only for the quick start and `top`, whose
    /// live views would be broken up by info lines; `info` otherwise.
    pub(crate) fn default_log_filter(&self) -> &'static str {
        // fe2o3-amqp reports ordinary peer disconnects at ERROR; its logs are opt-in through RUST_LOG.
        match self.command {
            // The quick start's live view and `top`'s screen would be broken up by info lines.
            Command::Quickstart(_) | Command::Top(_) => "warn,fe2o3_amqp=off",
            _ => "info,fe2o3_amqp=off",
        }
    }
}

/// Installs the global `tracing` subscriber writing to stderr, in colour only when stderr is a
/// terminal (not a file or a pipe) and `NO_COLOR` is unset or empty.
pub(crate) fn init_tracing(format: LogFormat, default_filter: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs the parsed command and returns the process exit code.
pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Emulator(args) => emulator::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Import(args) => import::run(&args),
        Command::Route(command) => route::run(command),
        Command::Check(args) => Ok(check::run(&args)),
        Command::Run(args) => run::run(&args),
        Command::Quickstart(args) => quickstart::run(args),
        Command::Top(args) => top::run(&args),
        Command::DeadLetters(command) => dead_letters::run(command),
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; stop with Ctrl-C");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
