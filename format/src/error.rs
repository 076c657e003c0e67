//! Errors reading a model folder's manifest. Each names the file and what is wrong.

use std::path::{Path, PathBuf};

pub type Result<T, E = FormatError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The manifest could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The folder is not a model folder, or its manifest is malformed or inconsistent.
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// A class given by id or name that this model does not have.
    #[error("{0}")]
    UnknownClass(String),
}

impl FormatError {
    pub fn io(path: &Path, source: std::io::Error) -> FormatError {
        FormatError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn invalid(path: &Path, reason: impl Into<String>) -> FormatError {
        FormatError::Invalid {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}
