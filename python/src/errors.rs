//! The runtime's and exporter's errors as Python exceptions, each keeping the message:
//! bad arguments are `ValueError`, files `FileNotFoundError`/`OSError`, and what only flowar
//! can fail at is a subclass of `flowar.Error`.

use pyo3::exceptions::{
    PyException, PyFileExistsError, PyFileNotFoundError, PyOSError, PyPermissionError, PyValueError,
};
use pyo3::PyErr;

use flowar_exporter::checkpoint::CheckpointError;
use flowar_exporter::ExportError;
use flowar_runtime::Error;

pyo3::create_exception!(
    flowar,
    FlowarError,
    PyException,
    "Base class of the errors only flowar raises (a backend failing, non-finite output, ...)."
);
pyo3::create_exception!(
    flowar,
    ModelError,
    FlowarError,
    "A model folder or checkpoint is missing parts, corrupt or inconsistent."
);
pyo3::create_exception!(
    flowar,
    ProviderUnavailable,
    FlowarError,
    "The execution provider asked for (or its library) cannot be used here."
);
pyo3::create_exception!(
    flowar,
    Cancelled,
    FlowarError,
    "A progress callback returned False, so the work stopped."
);

/// `FileNotFoundError`, `PermissionError` or `OSError` by the I/O error's kind.
fn os_error(e: &std::io::Error, message: String) -> PyErr {
    match e.kind() {
        std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(message),
        std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(message),
        _ => PyOSError::new_err(message),
    }
}

/// A runtime error as the Python exception it maps to.
pub fn runtime(e: Error) -> PyErr {
    let message = e.to_string();
    match &e {
        Error::BadArgument(_) => PyValueError::new_err(message),
        Error::Io { source, .. } => os_error(source, message),
        // A model folder that is not there at all is a missing file, not a bad model.
        Error::Model { path, .. } if !path.exists() => PyFileNotFoundError::new_err(message),
        Error::Model { .. } => ModelError::new_err(message),
        Error::ProviderUnavailable { .. } => ProviderUnavailable::new_err(message),
        Error::Cancelled => Cancelled::new_err(message),
        Error::Backend { .. } | Error::NonFinite { .. } | Error::Poisoned { .. } => {
            FlowarError::new_err(message)
        }
    }
}

/// An exporter error as the Python exception it maps to.
pub fn export(e: ExportError) -> PyErr {
    let message = e.to_string();
    match &e {
        ExportError::BadArgument(_) => PyValueError::new_err(message),
        ExportError::Io { source, .. } => os_error(source, message),
        ExportError::Checkpoint(CheckpointError::Io { source, .. }) => os_error(source, message),
        ExportError::OutputExists(_) => PyFileExistsError::new_err(message),
        ExportError::Cancelled(_) => Cancelled::new_err(message),
        ExportError::Checkpoint(_)
        | ExportError::MissingKey { .. }
        | ExportError::Shape { .. }
        | ExportError::UnknownLayout { .. }
        | ExportError::Config { .. }
        | ExportError::UnexpectedKeys { .. }
        | ExportError::NonFinite { .. }
        | ExportError::Mismatch(_)
        | ExportError::Format(_) => ModelError::new_err(message),
    }
}
