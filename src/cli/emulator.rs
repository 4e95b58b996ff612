//! `hubroute emulator`: serves a local Event Hubs-compatible endpoint plus the IoT Hub-style HTTP
//! device ingress, prints one connection string per event hub on stdout, and runs until Ctrl-C or
//! SIGTERM. Several event hubs (`--hub`, repeated, or a `Config.json`) let one emulator be both the
//! source and the target of an `eventhubs` endpoint.
//!
//! The connection strings go to stdout, each on a line of its own, so scripts and tests can read
//! them (`grep ^Endpoint=`); logs go to stderr.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use hubroute_emulator::{
    Emulator, EmulatorConfig, EventPublisher, HubConfig, TlsFiles, load_config_file, serve_ingress,
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
    /// PEM certificate chain: serve AMQP over TLS (amqps).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
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
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert_pem), Some(key_pem)) => Some(TlsFiles { cert_pem, key_pem }),
        _ => None,
    };
    let config = EmulatorConfig {
        amqp_listen: args.listen,
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
