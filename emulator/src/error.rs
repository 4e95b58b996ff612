//! The emulator crate's one error type.

use std::path::PathBuf;

/// Errors from the emulator, its configuration file, ingress and simulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding or serving a socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. `binding the AMQP listener to 127.0.0.1:5673`.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The emulator configuration is inconsistent.
    #[error("invalid emulator configuration: {problem}")]
    Config {
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// TLS files could not be loaded.
    #[error("TLS setup failed: {problem}")]
    Tls {
        /// What is wrong with the certificate or key.
        problem: String,
    },
    /// An event hub that is not configured.
    #[error("event hub `{hub}` does not exist; configured: {configured}")]
    UnknownHub {
        /// The requested name.
        hub: String,
        /// The configured names.
        configured: String,
    },
    /// A partition that the hub does not have.
    #[error("event hub `{hub}` has no partition `{partition}` (it has {partition_count})")]
    UnknownPartition {
        /// The hub.
        hub: String,
        /// The requested partition id.
        partition: String,
        /// How many partitions the hub has.
        partition_count: u32,
    },
    /// An event larger than `max_message_bytes`.
    #[error("event of {size} bytes exceeds the {limit}-byte limit")]
    MessageTooLarge {
        /// Encoded size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Reading or writing a partition file failed.
    #[error("partition storage at {path}: {source}", path = path.display())]
    Storage {
        /// The partition file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A partition file is corrupt beyond its last complete record.
    #[error("partition storage at {path} is corrupt: {problem}", path = path.display())]
    CorruptStorage {
        /// The partition file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// An Event Hubs emulator `Config.json` could not be read.
    #[error("reading emulator config {path}: {source}", path = path.display())]
    ConfigFileRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An Event Hubs emulator `Config.json` is invalid.
    #[error("emulator config {path}: {problem}", path = path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the JSON path of the bad field.
        problem: String,
    },
    /// The HTTP device ingress could not start or serve.
    #[error("device ingress: {problem}")]
    Ingress {
        /// What went wrong.
        problem: String,
    },
    /// The device simulator failed.
    #[error("simulator: {problem}")]
    Simulate {
        /// What went wrong.
        problem: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
