//! The crate's one public error type, and the positioned diagnostics that syntax and type errors carry.
//!
//! A diagnostic renders like a compiler message so that `hubroute route test` and the engine's config
//! loader can show it verbatim: `line L, column C: message`, the offending line with a caret under the
//! offending text, then an optional `help:` suggestion.

use std::fmt;

/// Errors from compiling or evaluating route conditions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The condition does not follow the IoT Hub route grammar.
    #[error("{0}")]
    Syntax(Diagnostic),
    /// The condition parses but mixes types IoT Hub rejects at compile time (e.g. `'a' + 1`).
    #[error("{0}")]
    Type(Diagnostic),
    /// One condition of a [`crate::RouteSet`] failed to compile.
    #[error("route condition #{index} is invalid: {source}")]
    Route {
        /// Zero-based index of the condition in the input.
        index: usize,
        /// Why it failed.
        source: Box<Error>,
    },
    /// The batch given to an evaluator does not have the message schema.
    #[error("cannot evaluate route conditions: {source}")]
    Batch {
        /// What is wrong with the batch.
        #[from]
        source: hubroute_message::Error,
    },
    /// DataFusion failed to plan or evaluate a compiled condition; conditions are type-checked
    /// before they reach DataFusion, so this is a bug in hubroute, whatever the input.
    #[error("DataFusion failed on a route condition (a hubroute bug, please report it): {source}")]
    DataFusion {
        /// DataFusion's error.
        #[from]
        source: datafusion_common::DataFusionError,
    },
}

impl Error {
    /// The positioned diagnostic of a syntax or type error (looking through [`Error::Route`]).
    pub fn diagnostic(&self) -> Option<&Diagnostic> {
        match self {
            Self::Syntax(d) | Self::Type(d) => Some(d),
            Self::Route { source, .. } => source.diagnostic(),
            Self::Batch { .. } | Self::DataFusion { .. } => None,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A message about a span of the condition text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line of the offending text.
    pub line: usize,
    /// 1-based column (in characters) of the offending text.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// The whole source line containing the offending text.
    pub source_line: String,
    /// Length in characters of the offending text (at least 1 for the caret).
    pub width: usize,
    /// How to fix it, when there is an obvious fix.
    pub suggestion: Option<String>,
}

impl Diagnostic {
    /// Builds a diagnostic for `source[start..end]` (byte offsets).
    pub(crate) fn at(source: &str, start: usize, end: usize, message: impl Into<String>) -> Self {
        let start = start.min(source.len());
        let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = source[start..]
            .find('\n')
            .map_or(source.len(), |i| start + i);
        let line = source[..start].matches('\n').count() + 1;
        let column = source[line_start..start].chars().count() + 1;
        let end = end.clamp(start, line_end);
        Self {
            line,
            column,
            message: message.into(),
            source_line: source[line_start..line_end].to_owned(),
            width: source[start..end].chars().count().max(1),
            suggestion: None,
        }
    }

    /// Adds a `help:` suggestion.
    pub(crate) fn with_suggestion(mut self, suggestion: impl Into<String>) -> Self {
        self.suggestion = Some(suggestion.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )?;
        write!(
            f,
            "\n  {}\n  {}{}",
            self.source_line,
            " ".repeat(self.column - 1),
            "^".repeat(self.width)
        )?;
        if let Some(suggestion) = &self.suggestion {
            write!(f, "\nhelp: {suggestion}")?;
        }
        Ok(())
    }
}
