//! `hubroute quickstart`: the whole product on one machine with nothing installed.
//!
//! It starts the embedded emulator as an IoT hub (Event Hubs-compatible endpoint, device registry,
//! twins and service API), a built-in webhook receiver and a simulated device fleet registered with
//! twin tags (`site`, `line`) that sends IoT Hub-stamped telemetry with device keys. It writes an
//! example configuration (everything to Parquet on local disk, hot temperatures to SQLite,
//! high-severity messages and one device's messages to the webhook, plant 3's messages by twin tag
//! to a second SQLite database, twin change events to the lake) with the engine's `[twins]` store
//! pointed at the emulator, and runs the real engine on it, showing `hubroute top`'s view of it live (one block redrawn in
//! place on a terminal, a plain line every five seconds on a pipe). After
//! `--events N` device messages are committed by every endpoint, or on Ctrl-C, it prints where the
//! data landed and how to query it.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hubroute_emulator::simulate::{
    Rate, Simulation, SimulationConfig, SimulationTarget, StopAfter,
};
use hubroute_emulator::{
    Emulator, EmulatorConfig, EventPublisher, IotHub, IotHubConfig, WebhookReceiver, serve_http,
};
use hubroute_engine::config::LoadedConfig;
use hubroute_engine::pipeline::RunningEngine;
use hubroute_protocol::IotHubConnectionString;
use hubroute_view::terminal::LiveView;

/// The example's route that takes every device message.
const ARCHIVE_ROUTE: &str = "archive";
/// The SQLite table of hot-temperature alerts.
const ALERTS_TABLE: &str = "hot_temperature";
/// The SQLite table of plant 3's messages (routed by twin tag).
const PLANT_TABLE: &str = "plant_3";

/// Arguments of `hubroute quickstart`.
#[derive(Debug, clap::Args)]
pub(crate) struct QuickstartArgs {
    /// Stop after this many events are committed by every endpoint (default: run until Ctrl-C).
    #[arg(long)]
    events: Option<u64>,
    /// Simulated events per second across the fleet; 0 sends as fast as the emulator accepts.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Simulated devices.
    #[arg(long, default_value = "100")]
    devices: NonZeroU32,
    /// Where the configuration, checkpoints and routed data are written.
    #[arg(long, default_value = "hubroute-quickstart")]
    dir: PathBuf,
}

pub(crate) fn run(args: QuickstartArgs) -> anyhow::Result<ExitCode> {
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(quickstart(args))
}

async fn quickstart(args: QuickstartArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", args.dir.display()))?;

    let emulator = Arc::new(
        Emulator::start(EmulatorConfig {
            amqp_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..EmulatorConfig::default()
        })
        .await
        .context("starting the embedded emulator")?,
    );
    let connection_string = emulator.connection_string("hub");
    let publisher: Arc<dyn EventPublisher> = Arc::clone(&emulator) as Arc<dyn EventPublisher>;
    let iot_hub = IotHub::new(IotHubConfig::new("hub"), publisher);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("binding the embedded IoT hub's HTTP API")?;
    let http_addr = listener.local_addr()?;
    let stop_http = tokio_util::sync::CancellationToken::new();
    let http = tokio::spawn(serve_http(
        listener,
        Arc::clone(&iot_hub),
        None,
        stop_http.clone().cancelled_owned(),
    ));
    while iot_hub.host_count() == 0 {
        tokio::task::yield_now().await;
    }
    let owner = iot_hub
        .service_connection_string()
        .context("the embedded IoT hub has no service connection string")?;
    let service = iot_hub
        .connection_string("service")
        .context("the embedded IoT hub has no `service` policy")?;
    let receiver = WebhookReceiver::start(dir.join("webhook.jsonl"))
        .await
        .context("starting the built-in webhook receiver")?;
    let config_path = dir.join("hubroute.toml");
    std::fs::write(
        &config_path,
        example_config(&dir, &connection_string, &service, receiver.addr()),
    )
    .with_context(|| format!("writing {}", config_path.display()))?;
    let loaded = LoadedConfig::load(&config_path)?;
    let engine = RunningEngine::start(loaded).await?;

    let simulation = Simulation::new(SimulationConfig {
        target: SimulationTarget::IotHub {
            service: IotHubConnectionString::parse(&owner)?,
            tls_ca_file: None,
            report_every: 50,
        },
        devices: args.devices,
        rate: NonZeroU32::new(args.rate).map_or(Rate::Max, Rate::PerSecond),
        stop: args
            .events
            .map_or(StopAfter::Duration(Duration::MAX), StopAfter::Events),
        seed: 0,
        max_in_flight: 256,
        mix: Default::default(),
    });
    let sent = simulation.progress();
    let fleet = tokio::spawn(async move { simulation.run().await });
    eprintln!(
        "hubroute quickstart: emulator at {} (IoT hub API http://{http_addr}), config {}; status \
         page http://{2}/ (or `hubroute top --url http://{2}`); Ctrl-C to stop",
        emulator.amqp_addr(),
        config_path.display(),
        engine.http_addr()
    );

    let mut live = LiveView::new(&format!("http://{}", engine.http_addr()), "quickstart")?;
    // `sent` (device messages plus the hub's own twin change and lifecycle events) is read after
    // the engine's counters, so it is never behind what was routed.
    let facts = || {
        let sent = sent.submitted() + iot_hub.events_published();
        vec![
            ("sent".to_owned(), sent.to_string()),
            ("webhook got".to_owned(), receiver.received().to_string()),
        ]
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let stop = super::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = tick.tick() => {}
        }
        live.refresh(&facts).await?;
        if engine.is_finished() {
            break;
        }
        // Done when every device message was routed (the archive route takes them all) and
        // nothing routed waits for a commit any more.
        let device_messages = engine.metrics().route_matched(ARCHIVE_ROUTE);
        if args.events.is_some_and(|n| {
            device_messages >= n && committed_events(&engine) >= engine.metrics().events_routed()
        }) {
            break;
        }
    }
    live.finish(&facts).await?;
    fleet.abort();
    let engine_device_messages = engine.metrics().route_matched(ARCHIVE_ROUTE);
    let summary = engine.shutdown().await?;
    stop_http.cancel();
    http.await
        .context("the embedded IoT hub's HTTP API task")?
        .context("serving the embedded IoT hub's HTTP API")?;
    drop(iot_hub);
    let emulator = Arc::try_unwrap(emulator)
        .map_err(|_| anyhow::anyhow!("the embedded IoT hub still holds the emulator"))?;
    emulator.shutdown().await.context("stopping the emulator")?;
    let delivered_to_hook = receiver.received();
    let device_messages = engine_device_messages;
    print_summary(
        &dir,
        &config_path,
        device_messages,
        summary.events_routed.saturating_sub(device_messages),
        delivered_to_hook,
    );
    Ok(ExitCode::SUCCESS)
}

/// Events below every partition's committed position (sequence numbers start at 0): device
/// messages and the hub's twin change and lifecycle events alike.
fn committed_events(engine: &RunningEngine) -> u64 {
    engine
        .committed_positions()
        .iter()
        .filter_map(|(_, committed)| *committed)
        .map(|sequence_number| u64::try_from(sequence_number + 1).unwrap_or(0))
        .sum()
}

fn print_summary(dir: &Path, config: &Path, device_messages: u64, hub_events: u64, webhook: u64) {
    let lake = dir.join("lake");
    let files = count_files(&lake, "parquet");
    let db = dir.join("alerts.db");
    let plant = dir.join("plant3.db");
    println!(
        "routed {device_messages} device messages and {hub_events} twin change and lifecycle events; the data landed in:"
    );
    println!(
        "  Parquet (route archive):      {} ({files} files)",
        lake.display()
    );
    println!(
        "      query: duckdb -c \"SELECT count(*) FROM '{}/**/*.parquet'\"",
        lake.display()
    );
    println!(
        "  SQLite (route hot-temperature): {} table {ALERTS_TABLE}",
        db.display()
    );
    println!(
        "      query: sqlite3 {} \"SELECT count(*), max(body) FROM {ALERTS_TABLE}\"",
        db.display()
    );
    println!(
        "  SQLite (route plant-3, by twin tag): {} table {PLANT_TABLE}",
        plant.display()
    );
    println!(
        "      query: sqlite3 {} \"SELECT json_extract(system_properties, '$.connection_device_id'), count(*) FROM {PLANT_TABLE} GROUP BY 1\"",
        plant.display()
    );
    println!(
        "  Webhook (routes high-severity, device-00000): {webhook} messages with the twin's site, saved to {}",
        dir.join("webhook.jsonl").display()
    );
    println!(
        "  checkpoints: {}; dead letters: {}",
        dir.join("checkpoints").display(),
        dir.join("dead-letters").display()
    );
    println!(
        "run the same routes against your own hub: edit {} and `hubroute run --config {}`",
        config.display(),
        config.display()
    );
}

fn count_files(dir: &Path, extension: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                count_files(&path, extension)
            } else {
                usize::from(path.extension().is_some_and(|e| e == extension))
            }
        })
        .sum()
}

/// The example configuration, pointing at the embedded emulator and the built-in receiver.
fn example_config(
    dir: &Path,
    connection_string: &str,
    service_connection_string: &str,
    webhook: SocketAddr,
) -> String {
    let dir = dir.display();
    format!(
        r#"# Written by `hubroute quickstart`: the embedded emulator as an IoT hub, six routes, four sinks.
hub_name = "quickstart-hub"

[source]
connection_string = "{connection_string}"
start = "earliest"

[checkpoint]
dir = "{dir}/checkpoints"
interval = "1s"

# Device twins for `$twin` routes and enrichments: loaded from the hub's service API, kept current
# by the twin change and lifecycle events in the stream. Use the `service` policy's connection string.
[twins]
service_connection_string = "{service_connection_string}"

[dead_letters]
store = {{ kind = "local", root = "{dir}" }}

[service]
listen = "127.0.0.1:0"
drain_timeout = "10s"

[[endpoints]]
sink = {{ type = "parquet", name = "lake", store = {{ kind = "local", root = "{dir}/lake" }}, max_file_age = "5s" }}

[[endpoints]]
sink = {{ type = "sqlite", name = "alerts-db", path = "{dir}/alerts.db", table = {{ name = "{ALERTS_TABLE}" }} }}

[[endpoints]]
sink = {{ type = "sqlite", name = "plant-3-db", path = "{dir}/plant3.db", table = {{ name = "{PLANT_TABLE}" }} }}

[[endpoints]]
sink = {{ type = "webhook", name = "alerts-hook", url = "http://{webhook}/alerts", linger = "50ms" }}

[[routes]]
name = "archive"
condition = "true"
endpoint = "lake"

[[routes]]
name = "hot-temperature"
condition = "$body.temperature > 30"
endpoint = "alerts-db"

[[routes]]
name = "high-severity"
condition = "severity = 'high'"
endpoint = "alerts-hook"

# By twin tag: the devices the hub's registry places at plant 3.
[[routes]]
name = "plant-3"
condition = "$twin.tags.site = 'plant-3'"
endpoint = "plant-3-db"

# By the device that sent the message, as IoT Hub stamps it.
[[routes]]
name = "device-00000"
condition = "$connectionDeviceId = 'device-00000'"
endpoint = "alerts-hook"

# Non-telemetry events: every twin change, archived too.
[[routes]]
name = "twin-changes"
source = "TwinChangeEvents"
condition = "true"
endpoint = "lake"

[[enrichments]]
key = "hub"
value = "$iothubname"
endpoints = ["alerts-hook"]

[[enrichments]]
key = "site"
value = "$twin.tags.site"
endpoints = ["alerts-hook"]
"#
    )
}
