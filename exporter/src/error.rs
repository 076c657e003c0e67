//! Exporter errors: each names the file, key and shapes involved.

use std::path::PathBuf;

use crate::checkpoint::CheckpointError;

pub type Result<T, E = ExportError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{origin}: missing key `{key}` (expected shape {expected})")]
    MissingKey {
        origin: String,
        key: String,
        expected: String,
    },
    #[error("{origin}: key `{key}` has shape {found:?}, expected {expected:?}")]
    Shape {
        origin: String,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{origin}: {reason}")]
    UnknownLayout { origin: String, reason: String },
    /// A VAE's `config.json` is unreadable, missing, or disagrees with its weights.
    #[error("{origin}: {reason}")]
    Config { origin: String, reason: String },
    #[error("{origin}: {count} key(s) that no FlowAR/KL-VAE inference path uses: {keys}")]
    UnexpectedKeys {
        origin: String,
        count: usize,
        keys: String,
    },
    #[error("{origin}: tensor `{key}` holds {count} non-finite value(s) (NaN or Inf); pass --allow-nonfinite to convert anyway")]
    NonFinite {
        origin: String,
        key: String,
        count: usize,
    },
    #[error("the FlowAR and VAE checkpoints do not fit together: {0}")]
    Mismatch(String),
    #[error("{0}")]
    BadArgument(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists; pass --force to replace it")]
    OutputExists(PathBuf),
    /// The caller stopped the conversion (Ctrl-C in the CLI); nothing was left behind.
    #[error("conversion {0}")]
    Cancelled(&'static str),
    #[error(transparent)]
    Format(#[from] flowar_format::FormatError),
}

impl ExportError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> ExportError {
        ExportError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
