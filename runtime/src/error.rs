//! Runtime errors. Each variant says what was wrong and where; the C ABI maps them to codes.
//! Errors that an engine (onnxruntime, tract, the dynamic loader) reported keep that error
//! as their [`std::error::Error::source`].

use std::path::{Path, PathBuf};

use flowar_format::FormatError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An engine's own error, kept as the source of ours.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The message of a caught panic (`panic!` with a literal or a formatted string), if it has one.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller-supplied value is invalid (class id, steps, cfg, ...).
    #[error("{0}")]
    BadArgument(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The model folder, manifest or a graph file is missing, corrupt or inconsistent.
    #[error("{path}: {reason}")]
    Model { path: PathBuf, reason: String },
    /// An execution provider or backend library cannot be used.
    #[error("provider `{provider}` is unavailable: {}", with_cause(reason, source))]
    ProviderUnavailable {
        provider: String,
        reason: String,
        #[source]
        source: Option<Cause>,
    },
    /// A backend failed while running a graph.
    #[error("{backend} failed running {graph}: {}", with_cause(reason, source))]
    Backend {
        backend: String,
        graph: String,
        reason: String,
        #[source]
        source: Option<Cause>,
    },
    /// The model produced NaN or infinity.
    #[error("the model produced non-finite values at scale {scale}, step {step} ({what})")]
    NonFinite {
        scale: usize,
        step: usize,
        what: String,
    },
    /// A progress callback (or Ctrl-C) asked to stop.
    #[error("cancelled")]
    Cancelled,
    /// An object shared between threads was left unusable by a panic in another call.
    #[error("{what} is unusable after an earlier internal error; destroy it and create a new one")]
    Poisoned { what: String },
}

/// `reason`, then the engine's message when there is one.
fn with_cause(reason: &str, source: &Option<Cause>) -> String {
    match source {
        Some(cause) if reason.is_empty() => cause.to_string(),
        Some(cause) => format!("{reason}: {cause}"),
        None => reason.to_string(),
    }
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A provider that cannot be used, with the reason a backend gave.
    pub fn unavailable(provider: &str, why: Unavailable) -> Error {
        Error::ProviderUnavailable {
            provider: provider.to_string(),
            reason: why.reason,
            source: why.source,
        }
    }
}

impl From<FormatError> for Error {
    fn from(e: FormatError) -> Error {
        match e {
            FormatError::Io { path, source } => Error::Io { path, source },
            FormatError::Invalid { path, reason } => Error::Model { path, reason },
            FormatError::UnknownClass(msg) => Error::BadArgument(msg),
        }
    }
}

/// Why a provider or the engine library cannot be used: what is missing, and the loader's
/// or engine's own error when there is one.
#[derive(Debug, thiserror::Error)]
#[error("{}", with_cause(reason, source))]
pub struct Unavailable {
    pub reason: String,
    #[source]
    pub source: Option<Cause>,
}

impl Unavailable {
    pub fn new(reason: impl Into<String>) -> Unavailable {
        Unavailable {
            reason: reason.into(),
            source: None,
        }
    }

    pub fn caused_by(reason: impl Into<String>, source: impl Into<Cause>) -> Unavailable {
        Unavailable {
            reason: reason.into(),
            source: Some(source.into()),
        }
    }
}
