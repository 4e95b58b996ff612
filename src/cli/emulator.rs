//! `hubroute emulator`: serves a local Event Hubs-compatible endpoint (AMQP, and AMQP over
//! WebSockets on the same port) in front of which it is an IoT hub, plus the IoT Hub-style HTTP
//! device ingress; prints one connection string per event hub and the IoT hub's service connection
//! string on stdout, and runs until Ctrl-C or SIGTERM.
//!
//! The connection strings go to stdout, each on a line of its own, so scripts and tests can read
//! them (`grep ^Endpoint=`, `grep ^HostName=`); logs go to stderr.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use hubroute_emulator::{
    Emulator, EmulatorConfig, EventPublisher, HubConfig, IotHubIdentity, OWNER_POLICY, TlsFiles,
    load_config_file, serve_ingress,
};

/// Arguments of `hubroute emulator`.
#[derive(Debug, clap::Args)]
pub(crate) struct EmulatorArgs {
    /// Address of the AMQP 1.0 listener (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:5673")]
    listen: SocketAddr,
    /// Address of the HTTP device ingress (`POST /devices/{id}/messages/events`).
    #[arg(long, default_value = "127.0.0.1:8088")]
    http: SocketAddr,
    /// An Azure Event Hubs emulator `Config.json` declaring the event hubs and consumer groups.
    #[arg(long, conflicts_with = "partitions")]
    config: Option<PathBuf>,
    /// Partitions of the single event hub `hub` served when no `--config` is given.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    partitions: u32,
    /// Keep partitions on disk here (append-only segments) so events survive a restart.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// PEM certificate chain: serve AMQP over TLS (amqps).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

pub(crate) fn run(args: EmulatorArgs) -> anyhow::Result<ExitCode> {
    let hubs = match &args.config {
        Some(path) => load_config_file(path)?,
        None => vec![HubConfig {
            name: "hub".to_owned(),
            partition_count: args.partitions,
            consumer_groups: Vec::new(),
        }],
    };
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert_pem), Some(key_pem)) => Some(TlsFiles { cert_pem, key_pem }),
        _ => None,
    };
    let iot_hub = IotHubIdentity::new(hubs[0].name.clone());
    let config = EmulatorConfig {
        amqp_listen: args.listen,
        iot_hub: Some(iot_hub),
        hubs,
        data_dir: args.data_dir,
        tls,
        ..EmulatorConfig::default()
    };
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(serve(config, args.http))
}

async fn serve(config: EmulatorConfig, http: SocketAddr) -> anyhow::Result<ExitCode> {
    let hub_names: Vec<String> = config.hubs.iter().map(|hub| hub.name.clone()).collect();
    let emulator = Emulator::start(config)
        .await
        .context("starting the emulator")?;
    let listener = tokio::net::TcpListener::bind(http)
        .await
        .with_context(|| format!("binding the HTTP device ingress to {http}"))?;
    let http_addr = listener.local_addr()?;
    for hub in &hub_names {
        println!("{}", emulator.connection_string(hub));
    }
    // The IoT hub's own service connection string (policy `iothubowner`), for `[source]
    // connection_string`: hubroute follows the hub's redirect to the event hub above.
    if let Some(iot_hub) = emulator.iot_hub_connection_string(OWNER_POLICY) {
        println!("{iot_hub}");
    }
    println!(
        "Device ingress: http://{http_addr}/devices/{{deviceId}}/messages/events (event hub `{}`)",
        hub_names[0]
    );
    tracing::info!(amqp = %emulator.amqp_addr(), http = %http_addr, "emulator ready; Ctrl-C to stop");

    let emulator = Arc::new(emulator);
    let publisher: Arc<dyn EventPublisher> = Arc::clone(&emulator) as Arc<dyn EventPublisher>;
    let ingress = serve_ingress(
        listener,
        publisher,
        hub_names[0].clone(),
        super::shutdown_signal(),
    );
    ingress.await.context("serving the HTTP device ingress")?;
    tracing::info!("stopping");
    let emulator = Arc::try_unwrap(emulator)
        .map_err(|_| anyhow::anyhow!("the HTTP device ingress still holds the emulator"))?;
    emulator.shutdown().await.context("stopping the emulator")?;
    Ok(ExitCode::SUCCESS)
}
