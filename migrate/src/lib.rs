//! Moving off IoT Hub message routing, or running beside it, from what a user has.
//!
//! - [`import`] reads the routing of a `Microsoft.Devices/IotHubs` resource (an ARM template,
//!   `az bicep build` output, `az iot hub show` output: `properties.routing` with endpoints,
//!   routes, fallback route and enrichments) and writes a commented configuration that `hubroute
//!   check` accepts once its environment variables are set. It works on JSON values only: no I/O,
//!   no network, no Azure credentials.
//! - [`backtest`] replays archived messages (IoT Hub storage Avro and JSON, hubroute Parquet,
//!   `az iot hub monitor-events` captures) through a configuration's compiled routes with the
//!   batch engine and reports what each route would have matched.
//!
//! The crate sits beside the binary: it uses the engine's routing table and the sinks' file
//! readers, and nothing but the binary depends on it.

mod arm;
mod backtest;
mod import;

pub use backtest::{Outcome, Report, RouteOutcome, TwinSet, backtest, single_message};
pub use import::{Counts, EnvironmentVariable, Import, Warning, import};

/// Errors of the migration tools.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input holds no `Microsoft.Devices/IotHubs` resource.
    #[error(
        "{file}: no IoT hub found: expected an ARM template (or `az bicep build` output) with a \
         `Microsoft.Devices/IotHubs` resource, or the output of `az iot hub show`"
    )]
    NoIotHub {
        /// The input file.
        file: String,
    },
    /// The input holds several hubs and none was chosen.
    #[error("{file}: it holds several IoT hubs ({}); choose one with --hub", found.join(", "))]
    SeveralIotHubs {
        /// The input file.
        file: String,
        /// The hubs' names (or name expressions).
        found: Vec<String>,
    },
    /// The hub asked for is not in the input.
    #[error("{file}: no IoT hub named `{wanted}` (found: {})", found.join(", "))]
    HubNotFound {
        /// The input file.
        file: String,
        /// The name asked for.
        wanted: String,
        /// The hubs' names (or name expressions).
        found: Vec<String>,
    },
    /// An input file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A record of an input is not what its format requires.
    #[error("{file}: record {record}: {problem}")]
    Input {
        /// The file.
        file: String,
        /// The record (1-based; 0 for the file as a whole).
        record: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// Reading an archive file failed (IoT Hub storage, Parquet); the error names the file and
    /// record.
    #[error(transparent)]
    Archive(#[from] hubroute_sinks::Error),
    /// Building a batch failed (a bug if it ever happens).
    #[error(transparent)]
    Batch(#[from] hubroute_message::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
