//! AMQP 1.0 as hubroute's data plane moves it: frames, performatives and messages read in place, and
//! a lean client connection.
//!
//! fe2o3-amqp is a complete, general AMQP implementation, and hubroute keeps it where generality
//! matters and volume does not (`$management` requests, producers). On the data path it costs a
//! message three task hops, an owned decode of every section and a system call per frame, which
//! capped the engine near 100 k events/s per core pair. This crate is the narrow alternative for
//! that path: [`codec`] reads the type system without allocating, [`frame`] cuts frames out of a
//! read buffer without copying, [`performative`] hand-decodes transfers and writes transfers and
//! flows, [`message`] finds a message's sections and stamps annotations, and [`client`] is a
//! single-session connection its owner drives from one task. Control performatives and SASL frames
//! reuse `fe2o3-amqp-types`, so their encodings stay the well-tested ones.
//!
//! Invariant: no knowledge of Event Hubs, Arrow or the engine; it moves AMQP bytes.

pub mod client;
pub mod codec;
pub mod frame;
pub mod message;
pub mod performative;
pub mod redirect;
pub mod transport;
pub mod websocket;

pub use client::{ClientConfig, ClientConnection, Delivery, Event, SaslCredentials};
pub use redirect::Redirect;
pub use transport::Stream;

/// Errors of the wire layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Encoded data that breaks the AMQP type system or message format.
    #[error("malformed AMQP data: {0}")]
    Malformed(String),
    /// A frame header that cannot be right; the connection cannot continue.
    #[error("AMQP framing error: {0}")]
    Framing(String),
    /// The peer broke the protocol (an unexpected performative, an unknown handle).
    #[error("AMQP protocol error: {0}")]
    Protocol(String),
    /// The peer refused or ended something, with its error condition.
    #[error("{what} was refused by the peer{}{}", condition.as_ref().map(|c| format!(": {c}")).unwrap_or_default(), description.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        /// What was refused: a link, the connection, SASL authentication.
        what: String,
        /// The AMQP error condition, e.g. `amqp:link:stolen`.
        condition: Option<String>,
        /// The peer's description.
        description: Option<String>,
    },
    /// The peer ended a link or the connection with a redirect: what was asked for is elsewhere.
    #[error("{what} was redirected by the peer to {redirect}")]
    Redirected {
        /// What was redirected: a link, the connection.
        what: String,
        /// Where to go instead.
        redirect: Redirect,
    },
    /// The transport failed or the peer went away.
    #[error("connection I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
