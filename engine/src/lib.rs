//! The hubroute engine: reads an Event Hubs-compatible endpoint, evaluates IoT Hub routes on Arrow
//! batches and fans messages out to sinks with end-to-end backpressure and at-least-once checkpoints.
//!
//! Only this crate knows AMQP (besides the emulator) and only it wires queries to sinks.

pub mod checkpoint;
pub mod config;
mod error;
pub mod health;
pub mod ownership;
pub mod pipeline;
pub mod progress;
pub mod routing;
pub mod source;
pub mod twins;

pub use error::{Error, Result};
