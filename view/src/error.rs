//! The view's one error type: what could not be read, from where, and what to do about it.

/// Everything that can go wrong while reading a running engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `/metrics` line is not Prometheus text.
    #[error("line {line} of the metrics text: {problem}")]
    Exposition {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// `/routes` is not the JSON summary the engine serves.
    #[error("the /routes summary is not what hubroute serves: {problem}")]
    Routes {
        /// What is wrong with it.
        problem: String,
    },
    /// The service could not be reached or answered with an error.
    #[error("{url}: {problem} (is `hubroute run` listening there? see [service] listen)")]
    Fetch {
        /// The URL asked.
        url: String,
        /// What happened.
        problem: String,
    },
    /// The terminal could not be set up or drawn on.
    #[error("the terminal: {problem}")]
    Terminal {
        /// What happened.
        problem: String,
    },
}

/// The view's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
