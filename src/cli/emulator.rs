//! `hubroute emulator`: serves a local Event Hubs-compatible endpoint (AMQP, and AMQP over
//! WebSockets on the same port) in front of which it is an IoT hub, and on its HTTP port the IoT
//! hub's device registry, twins, service REST API and device telemetry ingress. Several event hubs (`--hub`, repeated, or a `Config.json`) let one emulator be both the
//! source and the target of an `eventhubs` endpoint. It prints one
//! connection string per event hub and two IoT Hub service connection strings on stdout (see
//! below), and runs until Ctrl-C or SIGTERM.
//!
//! The connection strings go to stdout, each on a line of its own, so scripts and tests can read
//! them (`grep ^Endpoint=`, `grep ^HostName=`); logs go to stderr.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use hubroute_emulator::{
    Emulator, EmulatorConfig, EventPublisher, HubConfig, IotHub, IotHubConfig, IotHubIdentity,
    OWNER_POLICY, TlsFiles, load_config_file, serve_http,
};

/// Arguments of `hubroute emulator`.
#[derive(Debug, clap::Args)]
pub(crate) struct EmulatorArgs {
    /// Address of the AMQP 1.0 listener (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:5673")]
    listen: SocketAddr,
    /// Address of the IoT hub's plain-HTTP API: device telemetry (`POST
    /// /devices/{id}/messages/events`), reported properties and the service API.
    #[arg(long, default_value = "127.0.0.1:8088")]
    http: SocketAddr,
    /// Address of the same API over HTTPS, served with `--tls-cert` (the official IoT Hub service
    /// SDKs speak only HTTPS).
    #[arg(long, default_value = "127.0.0.1:8443")]
    https: SocketAddr,
    /// An Azure Event Hubs emulator `Config.json` declaring the event hubs and consumer groups.
    #[arg(long, conflicts_with = "partitions")]
    config: Option<PathBuf>,
    /// Partitions of the single event hub `hub` served when neither `--config` nor `--hub` is given.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    partitions: u32,
    /// An event hub to serve, `NAME` or `NAME:PARTITIONS` (4 by default); repeat it to serve
    /// several, e.g. `--hub hub --hub target:2` to route from `hub` into `target`. The first one
    /// receives the HTTP device ingress.
    #[arg(long = "hub", value_name = "NAME[:PARTITIONS]", conflicts_with_all = ["config", "partitions"], value_parser = parse_hub)]
    hubs: Vec<HubConfig>,
    /// Keep partitions on disk here (append-only segments) so events survive a restart.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// PEM certificate chain: serve AMQP over TLS (amqps) and the HTTP API over HTTPS too.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Do not put `twinChangeEvents` into the hub (as a hub without a TwinChangeEvents route).
    #[arg(long)]
    no_twin_change_events: bool,
    /// Do not put `deviceLifecycleEvents` into the hub (as a hub without a DeviceLifecycleEvents
    /// route).
    #[arg(long)]
    no_lifecycle_events: bool,
}

/// `NAME` or `NAME:PARTITIONS`.
fn parse_hub(text: &str) -> Result<HubConfig, String> {
    let (name, partitions) = match text.split_once(':') {
        Some((name, partitions)) => {
            let partitions = partitions
                .parse::<u32>()
                .ok()
                .filter(|p| (1..=1024).contains(p))
                .ok_or_else(|| format!("`{partitions}` is not a partition count from 1 to 1024"))?;
            (name, partitions)
        }
        None => (text, 4),
    };
    if name.is_empty() {
        return Err("the event hub name is empty".to_owned());
    }
    Ok(HubConfig::new(name, partitions))
}

pub(crate) fn run(args: EmulatorArgs) -> anyhow::Result<ExitCode> {
    let hubs = match &args.config {
        Some(path) => load_config_file(path)?,
        None if !args.hubs.is_empty() => args.hubs.clone(),
        None => vec![HubConfig {
            name: "hub".to_owned(),
            partition_count: args.partitions,
            consumer_groups: Vec::new(),
        }],
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert_pem), Some(key_pem)) => Some(TlsFiles {
            cert_pem: cert_pem.clone(),
            key_pem: key_pem.clone(),
        }),
        _ => None,
    };
    let iot_hub = IotHubIdentity::new(hubs[0].name.clone());
    let config = EmulatorConfig {
        amqp_listen: args.listen,
        iot_hub: Some(iot_hub),
        hubs,
        data_dir: args.data_dir.clone(),
        tls: tls.clone(),
        ..EmulatorConfig::default()
    };
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(serve(config, args, tls))
}

async fn serve(
    config: EmulatorConfig,
    args: EmulatorArgs,
    tls: Option<TlsFiles>,
) -> anyhow::Result<ExitCode> {
    let hub_names: Vec<String> = config.hubs.iter().map(|hub| hub.name.clone()).collect();
    let emulator = Emulator::start(config)
        .await
        .context("starting the emulator")?;
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("binding the IoT hub's HTTP API to {}", args.http))?;
    let http_addr = listener.local_addr()?;
    let secure = match &tls {
        Some(_) => Some(
            tokio::net::TcpListener::bind(args.https)
                .await
                .with_context(|| format!("binding the IoT hub's HTTPS API to {}", args.https))?,
        ),
        None => None,
    };
    let emulator = Arc::new(emulator);
    let publisher: Arc<dyn EventPublisher> = Arc::clone(&emulator) as Arc<dyn EventPublisher>;
    let iot_hub = IotHub::new(
        IotHubConfig {
            twin_change_events: !args.no_twin_change_events,
            lifecycle_events: !args.no_lifecycle_events,
            ..IotHubConfig::new(hub_names[0].clone())
        },
        publisher,
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let mut servers = Vec::new();
    let (plain_stop, secure_stop) = (stop.clone(), stop.clone());
    servers.push(tokio::spawn(serve_http(
        listener,
        Arc::clone(&iot_hub),
        None,
        async move { plain_stop.cancelled().await },
    )));
    if let (Some(listener), Some(tls)) = (secure, tls) {
        servers.push(tokio::spawn(serve_http(
            listener,
            Arc::clone(&iot_hub),
            Some(tls),
            async move { secure_stop.cancelled().await },
        )));
    }
    // The servers register their host names as they start; wait for every one.
    let expected_hosts = servers.len();
    while iot_hub.host_count() < expected_hosts {
        tokio::task::yield_now().await;
    }
    for hub in &hub_names {
        println!("{}", emulator.connection_string(hub));
    }
    // The IoT hub's service connection string twice (policy `iothubowner`): IoT Hub serves AMQP and
    // HTTPS on one host name, the emulator on two ports. The first names the AMQP port, for
    // `[source] connection_string` (hubroute follows the hub's redirect to the event hub above);
    // the last names the HTTP API, for `[twins] service_connection_string` and the service SDKs.
    if let Some(amqp) = emulator.iot_hub_connection_string(OWNER_POLICY) {
        println!("{amqp}");
    }
    if let Some(service) = iot_hub.service_connection_string() {
        println!("{service}");
    }
    println!(
        "Device ingress: http://{http_addr}/devices/{{deviceId}}/messages/events (event hub `{}`)",
        hub_names[0]
    );
    tracing::info!(amqp = %emulator.amqp_addr(), http = %http_addr, "emulator ready; Ctrl-C to stop");

    super::shutdown_signal().await;
    stop.cancel();
    for server in servers {
        server
            .await
            .context("the IoT hub's HTTP API task")?
            .context("serving the IoT hub's HTTP API")?;
    }
    tracing::info!("stopping");
    drop(iot_hub);
    let emulator = Arc::try_unwrap(emulator)
        .map_err(|_| anyhow::anyhow!("the IoT hub still holds the emulator"))?;
    emulator.shutdown().await.context("stopping the emulator")?;
    Ok(ExitCode::SUCCESS)
}
