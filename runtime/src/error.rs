//! Runtime errors. Each variant says what was wrong and where; the C ABI maps them to codes.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    #[error("provider `{provider}` is unavailable: {reason}")]
    ProviderUnavailable { provider: String, reason: String },
    /// A backend failed while running a graph.
    #[error("{backend} failed running {graph}: {reason}")]
    Backend {
        backend: String,
        graph: String,
        reason: String,
    },
    /// The model produced NaN or infinity.
    #[error("the model produced non-finite values at scale {scale}, step {step} ({what})")]
    NonFinite {
        scale: usize,
        step: usize,
        what: String,
    },
    /// A progress callback asked to stop.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
