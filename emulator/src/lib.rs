//! A local Event Hubs-compatible endpoint: the peer for hubroute's source, its tests, benchmarks and
//! quick start, faithful enough that the official Azure SDKs work against it unchanged.
//!
//! * `server`: the AMQP 1.0 listener (on `hubroute-amqp` frames; AMQP over WebSockets on the same
//!   port) with SASL ANONYMOUS/PLAIN/MSSBCBS, the `$cbs` node verifying SAS tokens, `$management`
//!   reads, producer links and consumer links with Event Hubs semantics (selector-filter start
//!   positions, link credit, owner levels, the five-receiver limit), and the IoT hub's
//!   `messages/events`, answered with a redirect to its built-in endpoint.
//! * `policies`: the IoT hub's shared access policies and their rights.
//! * `store`: partitions as append-only logs with retention, optionally on disk.
//! * `config_file`: Microsoft's Event Hubs emulator `Config.json`.
//! * `iothub`: the IoT hub side: device registry, twins, IoT Hub's service REST API with SAS
//!   policies, twin change and lifecycle events into the hub, served next to the device ingress.
//! * `ingress`: IoT Hub's HTTP device telemetry endpoint, authenticating devices and stamping IoT
//!   Hub's annotations.
//! * `simulate`: the device simulator and load generator.
//! * `webhook_receiver`: an HTTP endpoint that collects what a webhook endpoint sends, for the quick
//!   start.
//!
//! The emulator shares only the vocabulary (`hubroute-protocol`) and the wire format (`hubroute-amqp`)
//! with the engine: it is a peer, not a mock of our client, and its fidelity is judged by independent
//! clients (the official Python SDK and fe2o3-amqp) in its tests.

mod config;
mod config_file;
mod error;
mod ingress;
pub mod iothub;
mod policies;
mod server;
pub mod simulate;
mod store;
mod webhook_receiver;

pub use config::{
    DEFAULT_KEY_NAME, DEFAULT_KEY_VALUE, EmulatorConfig, HubConfig, Retention, TlsFiles,
};
pub use config_file::load_config_file;
pub use error::{Error, Result};
pub use ingress::{EventPublisher, MAX_D2C_MESSAGE_BYTES};
pub use iothub::{IotHub, IotHubConfig, ServiceFault, serve_http};
pub use policies::{
    AccessRights, IotHubIdentity, OWNER_POLICY, SharedAccessPolicy, default_policies,
};
pub use server::{Emulator, EventToPublish, PublishTarget, RunningEmulator};
pub use store::PublishedPosition;
pub use webhook_receiver::WebhookReceiver;
