//! The hubroute engine: reads an Event Hubs-compatible endpoint, evaluates IoT Hub routes on Arrow
//! batches and fans messages out to sinks with end-to-end backpressure and at-least-once checkpoints.
//!
//! Only this crate knows AMQP (besides the emulator) and only it wires queries to sinks.
//!
//! Its public face is what the binary, the end-to-end tests, the benchmarks and the fuzz targets
//! use; everything else is `pub(crate)`. `unreachable_pub` keeps it so, and `unnameable_types`
//! makes every public type that a public item returns nameable.
#![warn(unreachable_pub, unnameable_types)]

pub mod checkpoint;
pub mod config;
pub mod dead_letters;
mod error;
pub mod health;
mod ownership;
pub mod pipeline;
pub mod progress;
pub mod routing;
pub mod source;
pub mod twins;

pub use error::{Error, Result};
