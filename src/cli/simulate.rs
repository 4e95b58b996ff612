//! `hubroute simulate`: drives `hubroute_emulator::simulate` from the command line, printing a
//! progress line on stderr once per second and a summary on stdout.

use std::{num::NonZeroU32, process::ExitCode, time::Duration};

use anyhow::Context as _;
use hubroute_emulator::simulate::{
    BodyMix, Rate, Simulation, SimulationConfig, SimulationTarget, StopAfter,
};
use hubroute_protocol::{ConnectionString, IotHubConnectionString};

/// Arguments of `hubroute simulate`.
#[derive(Debug, clap::Args)]
pub(crate) struct SimulateArgs {
    /// Event Hubs connection string with `EntityPath`, e.g. the one `hubroute emulator` prints.
    #[arg(
        long,
        env = "HUBROUTE_SIMULATE_CONNECTION_STRING",
        hide_env_values = true,
        required_unless_present = "iothub",
        conflicts_with = "iothub"
    )]
    connection_string: Option<String>,
    /// Act as devices of an IoT hub instead: the IoT Hub service connection string `hubroute
    /// emulator` prints (`HostName=…;SharedAccessKeyName=iothubowner;…`). Devices are registered
    /// with twin tags, send with their own keys and report properties.
    #[arg(
        long,
        env = "HUBROUTE_SIMULATE_IOTHUB_CONNECTION_STRING",
        hide_env_values = true
    )]
    iothub: Option<String>,
    /// PEM CA certificates to trust for the hub's HTTPS (e.g. the emulator's `--tls-cert`).
    #[arg(long, requires = "iothub")]
    tls_ca_file: Option<std::path::PathBuf>,
    /// With `--iothub`: each device reports properties every this many of its messages (0: only
    /// once at start).
    #[arg(long, default_value_t = 100, requires = "iothub")]
    report_every: u32,
    /// Send every event to this partition instead of partitioning by device id (AMQP only).
    #[arg(long, conflicts_with = "iothub")]
    partition: Option<String>,
    /// Number of simulated devices.
    #[arg(long, default_value = "100")]
    devices: NonZeroU32,
    /// Target rate in events per second across all devices.
    #[arg(long, default_value = "1000", conflicts_with = "max")]
    rate: NonZeroU32,
    /// Send as fast as the target acknowledges.
    #[arg(long)]
    max: bool,
    /// Stop after this many events (default 10000 unless `--duration` is given).
    #[arg(long, conflicts_with = "duration")]
    events: Option<u64>,
    /// Stop after this long, e.g. `30s` or `2m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Seed of all generated values: one seed, one byte-identical stream.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Events sent but not yet acknowledged before waiting (pipelining depth).
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Mix unusual bodies into the telemetry, e.g. `non-json=5%,large=1%,empty=0.1%` (large bodies
    /// are 200 KB of JSON; every body still claims `application/json`).
    #[arg(long)]
    mix: Option<BodyMix>,
}

pub(crate) fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let target = match (args.connection_string, args.iothub) {
        (Some(text), None) => SimulationTarget::Amqp {
            connection_string: ConnectionString::parse(&text)?,
            partition: args.partition,
        },
        (None, Some(text)) => SimulationTarget::IotHub {
            service: IotHubConnectionString::parse(&text)?,
            tls_ca_file: args.tls_ca_file,
            report_every: args.report_every,
        },
        _ => anyhow::bail!("give exactly one of --connection-string and --iothub"),
    };
    let config = SimulationConfig {
        target,
        devices: args.devices,
        rate: if args.max {
            Rate::Max
        } else {
            Rate::PerSecond(args.rate)
        },
        stop: match (args.events, args.duration) {
            (_, Some(duration)) => StopAfter::Duration(duration),
            (events, None) => StopAfter::Events(events.unwrap_or(10_000)),
        },
        seed: args.seed,
        max_in_flight: args.max_in_flight,
        mix: args.mix.unwrap_or_default(),
    };
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(simulate(config))
}

async fn simulate(config: SimulationConfig) -> anyhow::Result<ExitCode> {
    let simulation = Simulation::new(config);
    let progress = simulation.progress();
    let reporter = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        let mut last = 0;
        loop {
            ticker.tick().await;
            let sent = progress.sent();
            eprintln!(
                "simulate: {} events/s, {sent} sent, {} errors",
                sent - last,
                progress.errors()
            );
            last = sent;
        }
    });
    let report = simulation.run().await;
    reporter.abort();
    let report = report?;
    println!(
        "sent {} events in {:.2} s ({:.0} events/s), {} errors",
        report.sent,
        report.elapsed.as_secs_f64(),
        report.events_per_second(),
        report.errors
    );
    Ok(if report.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
