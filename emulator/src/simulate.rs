//! The device simulator behind `hubroute simulate`: a fleet of devices sending realistic telemetry
//! into any Event Hubs endpoint over AMQP, or into the emulator's HTTP device ingress.
//!
//! It is a load generator first, so sends are pipelined: up to `max_in_flight` messages are on the
//! wire before the oldest acknowledgement is awaited (AMQP unsettled transfers, or concurrent HTTP
//! requests). Pacing is by schedule, not by sleep-per-message: message `i` is due at `start + i / rate`,
//! so short stalls are caught up and the long-run rate is exact. Every message body and property is
//! derived from `seed` and the message index alone, so two runs with one seed send the same bytes.
//!
//! Over AMQP the simulator behaves like a device-side producer, not like IoT Hub: it authenticates
//! with SASL ANONYMOUS plus a CBS `put-token` (as the official SDKs do), puts the device id in the
//! `deviceId` application property and the `x-opt-partition-key` annotation, and stamps no
//! `iothub-*` annotations.

use std::{
    collections::VecDeque,
    fmt::Write as _,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use fe2o3_amqp::{Connection, Sender, Session, sasl_profile::SaslProfile};
use fe2o3_amqp_cbs::{client::CbsClient, token::CbsToken};
use fe2o3_amqp_types::{
    messaging::{
        ApplicationProperties, Data, Message, MessageAnnotations, MessageId, Outcome, Properties,
    },
    primitives::{Binary, Symbol, Timestamp},
};
use futures::{StreamExt, stream::FuturesUnordered};
use hubroute_protocol::{ConnectionString, IotHubConnectionString, annotations, cbs, iothub};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use tokio::time::Instant;

use crate::{Error, Result};

/// Lifetime of the SAS token the simulator signs from a connection string's key.
const TOKEN_LIFETIME_SECS: i64 = 3600;
/// Timestamps in bodies start here (2026-01-01T00:00:00Z) and advance 10 ms per message, so bodies
/// stay deterministic yet look like a real stream.
const BODY_EPOCH_MS: i64 = 1_767_225_600_000;

/// Where the simulated devices send.
#[derive(Debug, Clone)]
pub enum SimulationTarget {
    /// An Event Hubs endpoint (the emulator or Azure) over AMQP.
    Amqp {
        /// Must carry `EntityPath` and either a key or a shared access signature.
        connection_string: ConnectionString,
        /// Send to this partition (`<hub>/Partitions/<id>`) instead of partitioning by device id.
        partition: Option<String>,
    },
    /// An IoT hub's device endpoint over HTTP(S) (`hubroute emulator`): devices are registered with
    /// twin tags, authenticate with their own keys, and report properties.
    IotHub {
        /// A service connection string whose policy may write the registry (`iothubowner`, as the
        /// emulator prints).
        service: IotHubConnectionString,
        /// PEM CA certificates to trust besides the web roots (the emulator's `--tls-cert`).
        tls_ca_file: Option<std::path::PathBuf>,
        /// Each device reports properties every this many of its messages (0: only at start).
        report_every: u32,
    },
}

/// How fast to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// A target rate in events per second across all devices.
    PerSecond(NonZeroU32),
    /// As fast as the target acknowledges.
    Max,
}

/// When to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAfter {
    /// After this many send attempts (successful or not).
    Events(u64),
    /// After this much time.
    Duration(Duration),
}

/// A simulation run's settings.
#[derive(Debug, Clone)]
pub struct SimulationConfig {
    /// Where to send.
    pub target: SimulationTarget,
    /// Number of devices; message `i` comes from device `i % devices`.
    pub devices: NonZeroU32,
    /// Send rate.
    pub rate: Rate,
    /// When to stop.
    pub stop: StopAfter,
    /// Seed of every generated value.
    pub seed: u64,
    /// Messages sent but not yet acknowledged before the simulator waits: the pipelining depth that
    /// makes throughput independent of round-trip time.
    pub max_in_flight: usize,
    /// Shares of unusual bodies (none by default).
    pub mix: BodyMix,
}

impl SimulationConfig {
    /// 100 devices as fast as possible, 1000 events, seed 0, 256 in flight, ordinary bodies.
    pub fn new(target: SimulationTarget) -> Self {
        Self {
            target,
            devices: NonZeroU32::new(100).expect("100 is not zero"),
            rate: Rate::Max,
            stop: StopAfter::Events(1000),
            seed: 0,
            max_in_flight: 256,
            mix: BodyMix::default(),
        }
    }
}

/// Shares of unusual bodies among the telemetry, for load tests of what real fleets send besides
/// well-formed JSON: bodies that are not JSON, 200 KB bodies and empty bodies. Each message still
/// declares `application/json`, as a misbehaving device would.
///
/// Text form: `non-json=5%,large=1%,empty=0.1%` (any subset; `%` optional on fractions below 1).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BodyMix {
    /// Share of bodies that are not JSON.
    pub non_json: f64,
    /// Share of 200 KB JSON bodies.
    pub large: f64,
    /// Share of empty bodies.
    pub empty: f64,
}

/// The size of a large body in a [`BodyMix`].
pub const LARGE_BODY_BYTES: usize = 200 * 1024;

impl std::str::FromStr for BodyMix {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let mut mix = BodyMix::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, share) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not `name=share`"))?;
            let share = match share.trim().strip_suffix('%') {
                Some(percent) => percent.trim().parse::<f64>().map(|p| p / 100.0),
                None => share.trim().parse::<f64>(),
            }
            .map_err(|_| format!("`{share}` is not a share such as 5% or 0.05"))?;
            if !(0.0..=1.0).contains(&share) {
                return Err(format!("the share of `{name}` must be between 0% and 100%"));
            }
            match name.trim() {
                "non-json" => mix.non_json = share,
                "large" => mix.large = share,
                "empty" => mix.empty = share,
                other => {
                    return Err(format!(
                        "unknown body kind `{other}`; use non-json, large or empty"
                    ));
                }
            }
        }
        if mix.non_json + mix.large + mix.empty > 1.0 {
            return Err("the shares add up to more than 100%".to_owned());
        }
        Ok(mix)
    }
}

/// Live counters of a running simulation, readable from another task (for a progress line).
#[derive(Debug, Default)]
pub struct SimulationProgress {
    /// Counted before an event leaves, so it is never behind what a consumer has read.
    submitted: AtomicU64,
    sent: AtomicU64,
    errors: AtomicU64,
}

impl SimulationProgress {
    /// Events handed to the target so far: acknowledged, refused or still in flight. Read after
    /// a consumer's count, it is never below it (acknowledgements come later, pipelined).
    pub fn submitted(&self) -> u64 {
        self.submitted.load(Ordering::Relaxed)
    }

    fn submit(&self) {
        self.submitted.fetch_add(1, Ordering::Relaxed);
    }

    /// Events acknowledged by the target so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Events the target refused or that failed in transit so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn record(&self, ok: bool) {
        let counter = if ok { &self.sent } else { &self.errors };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The outcome of a finished simulation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimulationReport {
    /// Events acknowledged by the target.
    pub sent: u64,
    /// Events refused or lost in transit.
    pub errors: u64,
    /// Wall time from the first send to the last acknowledgement.
    pub elapsed: Duration,
}

impl SimulationReport {
    /// Acknowledged events per second.
    pub fn events_per_second(&self) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
        let sent = self.sent as f64;
        sent / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// One simulated device message.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceMessage {
    /// Sending device's number, `42`.
    pub device: u32,
    /// Sending device, `device-00042`.
    pub device_id: String,
    /// Unique message id, `<device>-<per-device sequence>`.
    pub message_id: String,
    /// Telemetry JSON (UTF-8, about 500 bytes).
    pub body: Bytes,
    /// Application properties (`severity`, `processingPath`, `messageType`, ...).
    pub properties: Vec<(&'static str, String)>,
}

/// Deterministic telemetry for a fleet: the same seed and device count give the same messages.
#[derive(Debug)]
pub struct TelemetryGenerator {
    rng: StdRng,
    devices: u32,
    index: u64,
    mix: BodyMix,
}

impl TelemetryGenerator {
    /// A generator for `devices` devices seeded with `seed`.
    pub fn new(seed: u64, devices: NonZeroU32) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            devices: devices.get(),
            index: 0,
            mix: BodyMix::default(),
        }
    }

    /// The same stream with unusual bodies mixed in. Without a mix the stream draws nothing
    /// extra, so one seed still gives the same bytes as before.
    pub fn with_mix(mut self, mix: BodyMix) -> Self {
        self.mix = mix;
        self
    }

    /// Replaces `body` with an unusual one as the mix says.
    fn mixed(&mut self, body: String, device_id: &str, index: u64) -> String {
        if self.mix == BodyMix::default() {
            return body;
        }
        let draw: f64 = self.rng.random();
        let BodyMix {
            non_json,
            large,
            empty,
        } = self.mix;
        if draw < non_json {
            format!("{device_id} reading #{index}: not JSON")
        } else if draw < non_json + large {
            let pad = LARGE_BODY_BYTES.saturating_sub(body.len() + 12);
            format!(
                r#"{},"pad":"{}"}}"#,
                &body[..body.len() - 1],
                "x".repeat(pad)
            )
        } else if draw < non_json + large + empty {
            String::new()
        } else {
            body
        }
    }

    /// The next message of the stream.
    pub fn next_message(&mut self) -> DeviceMessage {
        let index = self.index;
        self.index += 1;
        let device = index % u64::from(self.devices);
        let device_sequence = index / u64::from(self.devices);
        let device_id = device_id(u32::try_from(device).unwrap_or(u32::MAX));
        let rng = &mut self.rng;
        let status = match rng.random_range(0..100) {
            0..=89 => "ok",
            90..=97 => "warning",
            _ => "alarm",
        };
        let (severity, processing_path) = match status {
            "ok" => ("low", "cold"),
            "warning" => ("medium", "warm"),
            _ => ("high", "hot"),
        };
        let timestamp = chrono::DateTime::from_timestamp_millis(
            BODY_EPOCH_MS + i64::try_from(index).unwrap_or(i64::MAX / 20) * 10,
        )
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let mut body = String::with_capacity(640);
        let _ = write!(
            body,
            r#"{{"deviceId":"{device_id}","sequence":{device_sequence},"timestamp":"{timestamp}","#
        );
        let _ = write!(
            body,
            r#""temperature":{:.2},"humidity":{:.1},"pressure":{:.1},"vibration":{:.4},"status":"{status}","#,
            rng.random_range(15.0..35.0_f64),
            rng.random_range(20.0..80.0_f64),
            rng.random_range(980.0..1040.0_f64),
            rng.random_range(0.0..0.05_f64),
        );
        let _ = write!(
            body,
            r#""location":{{"site":"plant-{}","line":"line-{}","lat":{:.5},"lon":{:.5}}},"#,
            device % 7 + 1,
            device % 3 + 1,
            rng.random_range(47.0..48.0_f64),
            rng.random_range(-123.0..-122.0_f64),
        );
        let _ = write!(
            body,
            r#""firmware":{{"version":"1.{}.{}","channel":"{}"}},"battery":{{"level":{},"charging":{}}},"#,
            device % 5,
            device % 11,
            if device.is_multiple_of(10) {
                "beta"
            } else {
                "stable"
            },
            rng.random_range(5..=100),
            rng.random_bool(0.2),
        );
        let readings: Vec<String> = (0..8)
            .map(|_| format!("{:.3}", rng.random_range(0.0..10.0_f64)))
            .collect();
        let _ = write!(
            body,
            r#""readings":[{}],"tags":["{processing_path}","line-{}"]}}"#,
            readings.join(","),
            device % 3 + 1,
        );
        let body = self.mixed(body, &device_id, index);
        DeviceMessage {
            device: u32::try_from(device).unwrap_or(u32::MAX),
            message_id: format!("{device_id}-{device_sequence}"),
            properties: vec![
                ("severity", severity.to_owned()),
                ("processingPath", processing_path.to_owned()),
                ("messageType", "telemetry".to_owned()),
                ("schemaVersion", "1.0".to_owned()),
            ],
            device_id,
            body: Bytes::from(body),
        }
    }
}

/// A device fleet run against one target.
#[derive(Debug)]
pub struct Simulation {
    config: SimulationConfig,
    progress: Arc<SimulationProgress>,
}

impl Simulation {
    /// Prepares a run; nothing connects until [`Simulation::run`].
    pub fn new(config: SimulationConfig) -> Self {
        Self {
            config,
            progress: Arc::default(),
        }
    }

    /// Counters to poll while [`Simulation::run`] is in progress.
    pub fn progress(&self) -> Arc<SimulationProgress> {
        Arc::clone(&self.progress)
    }

    /// Connects, sends until the stop condition, waits for every acknowledgement and closes.
    ///
    /// Refused messages (an AMQP `rejected` outcome, an HTTP error status or failed request) are
    /// counted as errors and the run goes on; losing the AMQP connection or link ends it with an error.
    pub async fn run(&self) -> Result<SimulationReport> {
        let mut schedule = Schedule::new(self.config.rate, self.config.stop);
        let mut generator = TelemetryGenerator::new(self.config.seed, self.config.devices)
            .with_mix(self.config.mix);
        let max_in_flight = self.config.max_in_flight.max(1);
        match &self.config.target {
            SimulationTarget::Amqp {
                connection_string,
                partition,
            } => {
                let mut producer =
                    AmqpProducer::connect(connection_string, partition.clone()).await?;
                schedule.start();
                let result = producer
                    .send_all(&mut schedule, &mut generator, max_in_flight, &self.progress)
                    .await;
                producer.close().await;
                result?;
            }
            SimulationTarget::IotHub {
                service,
                tls_ca_file,
                report_every,
            } => {
                let fleet = DeviceFleet::register(
                    service,
                    tls_ca_file.as_deref(),
                    self.config.devices.get(),
                    *report_every,
                )
                .await?;
                schedule.start();
                fleet
                    .send_all(&mut schedule, &mut generator, max_in_flight, &self.progress)
                    .await;
            }
        }
        Ok(SimulationReport {
            sent: self.progress.sent(),
            errors: self.progress.errors(),
            elapsed: schedule.started.elapsed(),
        })
    }
}

/// Decides when the next message is due and when to stop.
struct Schedule {
    rate: Rate,
    stop: StopAfter,
    started: Instant,
    issued: u64,
}

impl Schedule {
    fn new(rate: Rate, stop: StopAfter) -> Self {
        Self {
            rate,
            stop,
            started: Instant::now(),
            issued: 0,
        }
    }

    fn start(&mut self) {
        self.started = Instant::now();
    }

    /// Waits until the next message is due; `false` when the run is over.
    async fn next(&mut self) -> bool {
        let due = match self.rate {
            Rate::Max => None,
            Rate::PerSecond(rate) => Some(
                self.started
                    + Duration::from_nanos(
                        self.issued.saturating_mul(1_000_000_000) / u64::from(rate.get()),
                    ),
            ),
        };
        match self.stop {
            StopAfter::Events(total) if self.issued >= total => return false,
            // A limit too far to represent (`Duration::MAX`: "until stopped") is no limit.
            StopAfter::Duration(limit) => {
                if let Some(deadline) = self.started.checked_add(limit)
                    && (due.unwrap_or_else(Instant::now) >= deadline || Instant::now() >= deadline)
                {
                    return false;
                }
            }
            StopAfter::Events(_) => {}
        }
        if let Some(due) = due {
            tokio::time::sleep_until(due).await;
        }
        self.issued += 1;
        true
    }
}

/// One AMQP connection, session and sender link to an event hub.
struct AmqpProducer {
    connection: fe2o3_amqp::connection::ConnectionHandle<()>,
    session: fe2o3_amqp::session::SessionHandle<()>,
    sender: Sender,
    /// Set when sending to a fixed partition: Event Hubs refuses a partition key there.
    partition_key: bool,
}

impl AmqpProducer {
    async fn connect(
        connection_string: &ConnectionString,
        partition: Option<String>,
    ) -> Result<Self> {
        let amqp = |stage: &str, error: &dyn std::fmt::Display| Error::Simulate {
            problem: format!(
                "{stage} with {}:{} failed: {error}",
                connection_string.host,
                connection_string.effective_port()
            ),
        };
        let hub = connection_string
            .entity_path
            .clone()
            .ok_or_else(|| Error::Simulate {
                problem:
                    "the connection string has no EntityPath; append `;EntityPath=<event hub>`"
                        .to_owned(),
            })?;
        let audience = connection_string.audience(&hub);
        let token = match (
            &connection_string.key,
            &connection_string.shared_access_signature,
        ) {
            (Some(key), _) => key
                .sign(
                    &audience,
                    chrono::Utc::now().timestamp() + TOKEN_LIFETIME_SECS,
                )
                .as_str()
                .to_owned(),
            (None, Some(signature)) => signature.clone(),
            (None, None) => {
                return Err(Error::Simulate {
                    problem: "the connection string has neither SharedAccessKey nor \
                              SharedAccessSignature; copy it from the emulator's output or the portal"
                        .to_owned(),
                });
            }
        };
        let scheme = if connection_string.uses_tls() {
            "amqps"
        } else {
            "amqp"
        };
        let url = format!(
            "{scheme}://{}:{}",
            connection_string.host,
            connection_string.effective_port()
        );
        let mut connection = Connection::builder()
            .container_id(format!("hubroute-simulate-{}", uuid::Uuid::new_v4()))
            .hostname(connection_string.host.as_str())
            .domain(connection_string.host.as_str())
            .sasl_profile(SaslProfile::Anonymous)
            .open(url.as_str())
            .await
            .map_err(|e| amqp("opening an AMQP connection", &e))?;
        let mut session = Session::begin(&mut connection)
            .await
            .map_err(|e| amqp("beginning a session", &e))?;
        let mut cbs_client = CbsClient::attach(&mut session)
            .await
            .map_err(|e| amqp("attaching to $cbs", &e))?;
        cbs_client
            .put_token(
                audience.as_str(),
                CbsToken::new(
                    token,
                    cbs::SAS_TOKEN_TYPE,
                    Timestamp::from_milliseconds(
                        (chrono::Utc::now().timestamp() + TOKEN_LIFETIME_SECS) * 1000,
                    ),
                ),
            )
            .await
            .map_err(|e| amqp("authorizing (CBS put-token)", &e))?;
        cbs_client
            .close()
            .await
            .map_err(|e| amqp("closing the $cbs link", &e))?;
        let address = partition
            .as_ref()
            .map_or_else(|| hub.clone(), |p| format!("{hub}/Partitions/{p}"));
        let sender = Sender::attach(
            &mut session,
            format!("hubroute-simulate-{}", uuid::Uuid::new_v4()),
            address.as_str(),
        )
        .await
        .map_err(|e| amqp(&format!("attaching a sender to `{address}`"), &e))?;
        Ok(Self {
            connection,
            session,
            sender,
            partition_key: partition.is_none(),
        })
    }

    async fn send_all(
        &mut self,
        schedule: &mut Schedule,
        generator: &mut TelemetryGenerator,
        max_in_flight: usize,
        progress: &SimulationProgress,
    ) -> Result<()> {
        let mut in_flight = VecDeque::with_capacity(max_in_flight);
        while schedule.next().await {
            if in_flight.len() >= max_in_flight
                && let Some(delivery) = in_flight.pop_front()
            {
                settle(delivery, progress).await?;
            }
            let message = amqp_message(generator.next_message(), self.partition_key);
            progress.submit();
            let delivery =
                self.sender
                    .send_batchable(message)
                    .await
                    .map_err(|e| Error::Simulate {
                        problem: format!("sending over AMQP failed: {e}"),
                    })?;
            in_flight.push_back(delivery);
        }
        for delivery in in_flight {
            settle(delivery, progress).await?;
        }
        Ok(())
    }

    /// Closes link, session and connection politely; errors here cannot lose acknowledged events.
    async fn close(mut self) {
        if let Err(error) = self.sender.close().await {
            tracing::debug!(%error, "closing the simulator's sender link");
        }
        if let Err(error) = self.session.end().await {
            tracing::debug!(%error, "ending the simulator's session");
        }
        if let Err(error) = self.connection.close().await {
            tracing::debug!(%error, "closing the simulator's connection");
        }
    }
}

async fn settle(
    delivery: fe2o3_amqp::link::delivery::DeliveryFut<Result<Outcome, fe2o3_amqp::link::SendError>>,
    progress: &SimulationProgress,
) -> Result<()> {
    match delivery.await {
        Ok(Outcome::Accepted(_)) => progress.record(true),
        Ok(outcome) => {
            tracing::debug!(?outcome, "event not accepted");
            progress.record(false);
        }
        Err(fe2o3_amqp::link::SendError::MessageSizeExceeded(error)) => {
            tracing::debug!(%error, "event too large");
            progress.record(false);
        }
        Err(error) => {
            return Err(Error::Simulate {
                problem: format!("the AMQP link failed while awaiting acknowledgements: {error}"),
            });
        }
    }
    Ok(())
}

fn amqp_message(message: DeviceMessage, partition_key: bool) -> Message<Data> {
    let properties = Properties {
        message_id: Some(MessageId::String(message.message_id)),
        content_type: Some(Symbol::from("application/json")),
        content_encoding: Some(Symbol::from("utf-8")),
        ..Properties::default()
    };
    let mut application_properties =
        ApplicationProperties::builder().insert("deviceId", message.device_id.clone());
    for (name, value) in message.properties {
        application_properties = application_properties.insert(name, value);
    }
    let builder = Message::builder()
        .properties(properties)
        .application_properties(application_properties.build());
    let builder = if partition_key {
        builder.message_annotations(
            MessageAnnotations::builder()
                .insert(annotations::PARTITION_KEY, message.device_id)
                .build(),
        )
    } else {
        builder
    };
    builder.data(Binary::from(message.body.to_vec())).build()
}

/// Device id of simulated device number `device`.
pub fn device_id(device: u32) -> String {
    format!("device-{device:05}")
}

/// The twin a simulated device is registered with: tags (`site` and `line` agree with the
/// `location` of its telemetry, `fleet` is `simulated`) and desired properties
/// (`telemetryConfig.sendFrequency`, `5s` for even devices and `1m` for odd ones).
pub fn simulated_twin(device: u32) -> (serde_json::Value, serde_json::Value) {
    let tags = serde_json::json!({
        "site": format!("plant-{}", device % 7 + 1),
        "line": format!("line-{}", device % 3 + 1),
        "fleet": "simulated",
    });
    let frequency = if device.is_multiple_of(2) { "5s" } else { "1m" };
    let desired = serde_json::json!({"telemetryConfig": {"sendFrequency": frequency}});
    (tags, desired)
}

/// The properties a simulated device reports at start.
fn initial_report(device: u32) -> serde_json::Value {
    serde_json::json!({
        "firmware": {"version": format!("1.{}.{}", device % 5, device % 11)},
        "battery": {"level": 100},
    })
}

/// One registered device: its credentials and current token.
struct FleetDevice {
    credentials: IotHubConnectionString,
    token: String,
    expires: i64,
    sent: u64,
}

impl FleetDevice {
    /// The device's token, renewed at half its lifetime.
    fn token(&mut self) -> Result<&str> {
        let now = chrono::Utc::now().timestamp();
        if now >= self.expires - TOKEN_LIFETIME_SECS / 2 {
            self.expires = now + TOKEN_LIFETIME_SECS;
            self.token = self
                .credentials
                .token(self.expires)
                .map_err(|e| Error::Simulate {
                    problem: format!("signing a device token: {e}"),
                })?;
        }
        Ok(&self.token)
    }
}

/// A fleet registered on an IoT hub.
struct DeviceFleet {
    http: reqwest::Client,
    base_url: String,
    devices: Vec<FleetDevice>,
    report_every: u32,
}

/// Devices registered concurrently at start.
const REGISTRATION_CONCURRENCY: usize = 16;

impl DeviceFleet {
    /// Registers devices `0..count` (keeping existing ones and their keys), sets their twins and
    /// sends their first reported properties.
    async fn register(
        service: &IotHubConnectionString,
        tls_ca_file: Option<&std::path::Path>,
        count: u32,
        report_every: u32,
    ) -> Result<Self> {
        let failed = |problem: String| Error::Simulate { problem };
        let mut builder = reqwest::Client::builder();
        if let Some(path) = tls_ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| failed(format!("reading {}: {e}", path.display())))?;
            for certificate in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| failed(format!("{} is not a PEM bundle: {e}", path.display())))?
            {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder
            .build()
            .map_err(|e| failed(format!("building the HTTP client: {e}")))?;
        let base_url = service.base_url();
        let service_token = service
            .token(chrono::Utc::now().timestamp() + TOKEN_LIFETIME_SECS)
            .map_err(|e| failed(format!("signing a service token: {e}")))?;
        let context = Registration {
            http: &http,
            base_url: &base_url,
            host: &service.host_name,
            service_token: &service_token,
            emulator: service.use_development_emulator,
        };
        let mut devices = Vec::with_capacity(count as usize);
        let mut pending = futures::stream::iter((0..count).map(|device| context.register(device)))
            .buffered(REGISTRATION_CONCURRENCY);
        while let Some(device) = pending.next().await {
            devices.push(device?);
        }
        drop(pending);
        tracing::info!(
            devices = devices.len(),
            "simulated devices registered with twin tags"
        );
        Ok(Self {
            http,
            base_url,
            devices,
            report_every,
        })
    }

    async fn send_all(
        mut self,
        schedule: &mut Schedule,
        generator: &mut TelemetryGenerator,
        max_in_flight: usize,
        progress: &SimulationProgress,
    ) {
        let mut in_flight = FuturesUnordered::new();
        while schedule.next().await {
            if in_flight.len() >= max_in_flight
                && let Some(ok) = in_flight.next().await
            {
                progress.record(ok);
            }
            let message = generator.next_message();
            let index = message.device as usize;
            let Some(device) = self.devices.get_mut(index) else {
                progress.record(false);
                continue;
            };
            let token = match device.token() {
                Ok(token) => token.to_owned(),
                Err(error) => {
                    tracing::debug!(%error, "cannot sign a device token");
                    progress.record(false);
                    continue;
                }
            };
            device.sent += 1;
            let report = (self.report_every > 0
                && device.sent.is_multiple_of(u64::from(self.report_every)))
            .then(|| report_from(&message.body));
            let mut request = self
                .http
                .post(format!(
                    "{}/devices/{}/messages/events?api-version={}",
                    self.base_url,
                    message.device_id,
                    iothub::API_VERSION
                ))
                .header("authorization", &token)
                .header("content-type", "application/json")
                .header("content-encoding", "utf-8")
                .header("iothub-messageid", message.message_id);
            for (name, value) in message.properties {
                request = request.header(format!("iothub-app-{name}"), value);
            }
            let telemetry = request.body(message.body);
            let reporting = report.map(|report| {
                self.http
                    .patch(format!(
                        "{}/twins/{}/properties/reported?api-version={}",
                        self.base_url,
                        message.device_id,
                        iothub::API_VERSION
                    ))
                    .header("authorization", &token)
                    .json(&report)
            });
            progress.submit();
            in_flight.push(async move {
                let ok = settle_http(telemetry.send().await, "device endpoint refused an event");
                if let Some(reporting) = reporting {
                    settle_http(reporting.send().await, "reporting properties failed");
                }
                ok
            });
        }
        while let Some(ok) = in_flight.next().await {
            progress.record(ok);
        }
    }
}

/// What a device reports every `report_every` messages: its battery level from its telemetry.
fn report_from(body: &[u8]) -> serde_json::Value {
    let level = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|b| b.pointer("/battery/level").cloned())
        .unwrap_or(serde_json::Value::Null);
    serde_json::json!({"battery": {"level": level}})
}

fn settle_http(outcome: reqwest::Result<reqwest::Response>, what: &str) -> bool {
    match outcome {
        Ok(response) if response.status().is_success() => true,
        Ok(response) => {
            tracing::debug!(status = %response.status(), "{what}");
            false
        }
        Err(error) => {
            tracing::debug!(%error, "{what}");
            false
        }
    }
}

/// What registering one device needs.
struct Registration<'a> {
    http: &'a reqwest::Client,
    base_url: &'a str,
    host: &'a str,
    service_token: &'a str,
    emulator: bool,
}

impl Registration<'_> {
    fn url(&self, path: &str) -> String {
        format!(
            "{}{path}?api-version={}",
            self.base_url,
            iothub::API_VERSION
        )
    }

    async fn json(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<(u16, serde_json::Value)> {
        let response = request.send().await.map_err(|e| Error::Simulate {
            problem: format!("{what}: cannot reach {}: {e}", self.base_url),
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        ))
    }

    async fn register(&self, device: u32) -> Result<FleetDevice> {
        let id = device_id(device);
        let failed = |what: &str, status: u16, body: &serde_json::Value| Error::Simulate {
            problem: format!(
                "{what} `{id}` failed ({status}): {body}; the service connection string's policy \
                 needs RegistryWrite and ServiceConnect (use iothubowner)"
            ),
        };
        let (mut status, mut body) = self
            .json(
                self.http
                    .put(self.url(&format!("/devices/{id}")))
                    .header("authorization", self.service_token)
                    .json(&serde_json::json!({"deviceId": id})),
                "registering a device",
            )
            .await?;
        if status == 409 {
            (status, body) = self
                .json(
                    self.http
                        .get(self.url(&format!("/devices/{id}")))
                        .header("authorization", self.service_token),
                    "reading a device",
                )
                .await?;
        }
        if status != 200 {
            return Err(failed("registering device", status, &body));
        }
        let key = body
            .pointer("/authentication/symmetricKey/primaryKey")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| failed("reading the key of device", status, &body))?;
        let emulator = if self.emulator {
            ";UseDevelopmentEmulator=true"
        } else {
            ""
        };
        let credentials = IotHubConnectionString::parse(&format!(
            "HostName={};DeviceId={id};SharedAccessKey={key}{emulator}",
            self.host
        ))
        .map_err(|e| Error::Simulate {
            problem: format!("device `{id}`: {e}"),
        })?;
        let (tags, desired) = simulated_twin(device);
        let (status, body) = self
            .json(
                self.http
                    .patch(self.url(&format!("/twins/{id}")))
                    .header("authorization", self.service_token)
                    .json(&serde_json::json!({"tags": tags, "properties": {"desired": desired}})),
                "setting a twin",
            )
            .await?;
        if status != 200 {
            return Err(failed("setting the twin of device", status, &body));
        }
        let mut fleet_device = FleetDevice {
            credentials,
            token: String::new(),
            expires: 0,
            sent: 0,
        };
        let token = fleet_device.token()?.to_owned();
        let (status, body) = self
            .json(
                self.http
                    .patch(self.url(&format!("/twins/{id}/properties/reported")))
                    .header("authorization", token)
                    .json(&initial_report(device)),
                "reporting properties",
            )
            .await?;
        if !(200..300).contains(&status) {
            // A disabled device cannot report; its messages will be refused and counted too.
            tracing::warn!(device = %id, status, %body, "the device could not report its properties");
        }
        Ok(fleet_device)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn body_mixes_parse_and_refuse_nonsense() {
        let mix: BodyMix = "non-json=5%,large=1%,empty=0.1%".parse().unwrap();
        assert_eq!(
            mix,
            BodyMix {
                non_json: 0.05,
                large: 0.01,
                empty: 0.001
            }
        );
        assert_eq!("large=0.5".parse::<BodyMix>().unwrap().large, 0.5);
        for bad in [
            "json=5%",
            "large",
            "large=x",
            "empty=150%",
            "large=60%,empty=60%",
        ] {
            assert!(bad.parse::<BodyMix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_mix_puts_each_kind_of_body_in_about_its_share_and_no_mix_draws_nothing() {
        let devices = NonZeroU32::new(10).unwrap();
        let mix = BodyMix {
            non_json: 0.05,
            large: 0.01,
            empty: 0.01,
        };
        let mut generator = TelemetryGenerator::new(3, devices).with_mix(mix);
        let (mut non_json, mut large, mut empty) = (0, 0, 0);
        for _ in 0..20_000 {
            let body = generator.next_message().body;
            match serde_json::from_slice::<serde_json::Value>(&body) {
                _ if body.is_empty() => empty += 1,
                Err(_) => non_json += 1,
                Ok(_) if body.len() >= LARGE_BODY_BYTES - 16 => large += 1,
                Ok(_) => {}
            }
        }
        assert!(
            (800..1200).contains(&non_json),
            "{non_json} non-JSON of 20000"
        );
        assert!((120..280).contains(&large), "{large} large of 20000");
        assert!((120..280).contains(&empty), "{empty} empty of 20000");
        let plain = TelemetryGenerator::new(3, devices).next_message();
        let with_empty_mix = TelemetryGenerator::new(3, devices)
            .with_mix(BodyMix::default())
            .next_message();
        assert_eq!(plain.body, with_empty_mix.body);
    }

    use super::*;

    fn fleet(devices: u32) -> NonZeroU32 {
        NonZeroU32::new(devices).unwrap()
    }

    #[test]
    fn telemetry_is_deterministic_per_seed_and_realistic() {
        let first: Vec<DeviceMessage> = {
            let mut generator = TelemetryGenerator::new(7, fleet(3));
            (0..6).map(|_| generator.next_message()).collect()
        };
        let again: Vec<DeviceMessage> = {
            let mut generator = TelemetryGenerator::new(7, fleet(3));
            (0..6).map(|_| generator.next_message()).collect()
        };
        let other_seed = TelemetryGenerator::new(8, fleet(3)).next_message();
        assert_eq!(first, again);
        assert_ne!(first[0].body, other_seed.body);
        let devices: Vec<&str> = first.iter().map(|m| m.device_id.as_str()).collect();
        assert_eq!(
            devices,
            [
                "device-00000",
                "device-00001",
                "device-00002",
                "device-00000",
                "device-00001",
                "device-00002"
            ]
        );
        assert_eq!(first[3].message_id, "device-00000-1");
        for message in &first {
            let json: serde_json::Value = serde_json::from_slice(&message.body).unwrap();
            for field in ["temperature", "humidity", "pressure", "vibration", "status"] {
                assert!(json.get(field).is_some(), "{field} missing in {json}");
            }
            assert!(json["location"].is_object() && json["readings"].is_array());
            assert!(
                (400..=650).contains(&message.body.len()),
                "body of {} bytes",
                message.body.len()
            );
            let names: Vec<&str> = message.properties.iter().map(|(n, _)| *n).collect();
            assert!(names.contains(&"severity") && names.contains(&"processingPath"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_schedule_paces_and_stops() {
        let cases = [
            (
                "1000 events at 100/s take ten seconds",
                Rate::PerSecond(NonZeroU32::new(100).unwrap()),
                StopAfter::Events(1000),
                1000,
                Duration::from_millis(9990),
            ),
            (
                "two seconds at 50/s",
                Rate::PerSecond(NonZeroU32::new(50).unwrap()),
                StopAfter::Duration(Duration::from_secs(2)),
                100,
                Duration::from_millis(1980),
            ),
            (
                "max rate is immediate",
                Rate::Max,
                StopAfter::Events(5000),
                5000,
                Duration::ZERO,
            ),
        ];
        for (name, rate, stop, expected_events, expected_elapsed) in cases {
            let mut schedule = Schedule::new(rate, stop);
            let mut events = 0_u64;
            while schedule.next().await {
                events += 1;
            }
            assert_eq!(events, expected_events, "{name}");
            let elapsed = schedule.started.elapsed();
            assert!(
                elapsed >= expected_elapsed
                    && elapsed <= expected_elapsed + Duration::from_millis(30),
                "{name}: {elapsed:?}"
            );
        }
    }

    /// The quick start without `--events` runs "until stopped" as `Duration::MAX`; adding that to
    /// an `Instant` panicked and the fleet sent nothing.
    #[tokio::test(start_paused = true)]
    async fn an_unbounded_duration_runs_until_stopped() {
        let rate = Rate::PerSecond(NonZeroU32::new(1000).unwrap());
        let mut schedule = Schedule::new(rate, StopAfter::Duration(Duration::MAX));
        for _ in 0..2000 {
            assert!(schedule.next().await);
        }
    }

    #[tokio::test]
    async fn an_iot_hub_fleet_registers_with_twins_reports_and_counts_refusals() {
        use crate::iothub::IotHubConfig;
        use crate::iothub::testing::TestHub;

        let hub = TestHub::start(IotHubConfig::new("hub")).await;
        // device-00001 exists already, disabled: the fleet keeps it, and the hub refuses its
        // messages, which the simulator counts as errors.
        let owner = hub.owner();
        let response = hub
            .client
            .put(format!("{}/devices/device-00001", hub.base_url))
            .header(
                "authorization",
                owner.token(chrono::Utc::now().timestamp() + 60).unwrap(),
            )
            .json(&serde_json::json!({"deviceId": "device-00001", "status": "disabled"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        hub.take_events();
        let mut config = SimulationConfig::new(SimulationTarget::IotHub {
            service: owner,
            tls_ca_file: None,
            report_every: 5,
        });
        config.devices = fleet(5);
        config.stop = StopAfter::Events(50);
        config.max_in_flight = 8;
        let simulation = Simulation::new(config);
        let progress = simulation.progress();
        let report = simulation.run().await.unwrap();
        assert_eq!(
            progress.submitted(),
            50,
            "every event is counted when submitted"
        );
        assert_eq!((report.sent, report.errors), (40, 10));
        for device in 0..5 {
            let twin = hub.hub.read(|r| r.twin(&device_id(device), None)).unwrap();
            let (tags, desired) = simulated_twin(device);
            assert_eq!(twin["tags"], tags);
            assert_eq!(
                twin["properties"]["desired"]["telemetryConfig"],
                desired["telemetryConfig"]
            );
            let reported = &twin["properties"]["reported"]["firmware"];
            if device == 1 {
                assert!(reported.is_null(), "a disabled device cannot report");
            } else {
                assert_eq!(reported, &initial_report(device)["firmware"]);
            }
        }
        let sources: Vec<String> = hub
            .take_events()
            .iter()
            .filter_map(|(_, _, event)| {
                event.message_annotations.iter().find_map(|(k, v)| match v {
                    serde_amqp::Value::String(s) if k == annotations::MESSAGE_SOURCE => {
                        Some(s.clone())
                    }
                    _ => None,
                })
            })
            .collect();
        let count = |source: &str| sources.iter().filter(|s| *s == source).count();
        assert_eq!(count("Telemetry"), 40);
        assert_eq!(count("deviceLifecycleEvents"), 4, "device-00001 existed");
        // Per device: the twin patch and the first report; then every 5th message's report (the
        // disabled device's report is refused like its messages).
        assert_eq!(count("twinChangeEvents"), 5 + 4 + 4 * 2);
    }
}
