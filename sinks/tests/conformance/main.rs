//! The one conformance suite every sink passes, in the manner of object_store's shared integration
//! tests: each sink plugs a [`contract::Harness`] (how to build it, read back what it stored, and
//! make its backend fail or stall) into the same checks (`contract.rs`):
//!
//! * delivers every row exactly once when healthy;
//! * at-least-once under injected failures, no row lost, no row reported failed;
//! * duplicates after a replay are absorbed where `idempotent()` says so;
//! * `write` blocks (bounded memory) while the backend is stalled, and nothing is acked meanwhile;
//! * a shutdown flush delivers everything buffered, and acks come only after the data is stored.
//!
//! Backends are real (`backends/`, one harness per sink, faults injected through `faults.rs`):
//! Parquet and IoT Hub storage files on an object store wrapped to inject faults, a real HTTP/1.1
//! server for webhooks that can answer 200, 4xx, 5xx, 429 with `Retry-After`, hang, or close the
//! connection, PostgreSQL and SQLite, the emulator's event hubs and RabbitMQ's AMQP 1.0 queues
//! behind a TCP proxy that cuts or holds connections. Sink-specific behaviour that needs those
//! peers lives in `webhook.rs` (retries, signatures, batching) and `amqp.rs` (token renewal, forced
//! detaches).

mod amqp;
mod backends;
mod contract;
mod faults;
mod webhook;
