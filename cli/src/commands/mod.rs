//! One module per subcommand, plus the CLI's error type.
pub mod bench;
pub mod compare;
pub mod convert;
pub mod edit;
pub mod generate;
pub mod inspect;
pub mod pack;
pub mod verify;

use std::path::PathBuf;

/// Anything a command can fail with; every message names the file or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Export(#[from] flowar_exporter::ExportError),
    #[error(transparent)]
    Runtime(#[from] flowar_runtime::Error),
    #[error(transparent)]
    Checkpoint(#[from] flowar_exporter::checkpoint::CheckpointError),
    #[error("{0}")]
    Usage(String),
    /// Verification ran and found differences beyond the bounds.
    #[error("{0}")]
    Failed(String),
}

/// A model folder's manifest problem is the runtime's (an unknown class is bad usage).
impl From<flowar_runtime::manifest::FormatError> for CliError {
    fn from(e: flowar_runtime::manifest::FormatError) -> CliError {
        CliError::Runtime(e.into())
    }
}

impl CliError {
    /// 2 for bad usage, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Runtime(flowar_runtime::Error::BadArgument(_)) => 2,
            CliError::Export(flowar_exporter::ExportError::BadArgument(_)) => 2,
            _ => 1,
        }
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

/// The repository's bundled demo model: sources and its converted folder.
pub struct DemoModel {
    pub dir: PathBuf,
    pub converted: PathBuf,
}

/// Finds `models/shapes10` from the current directory or the executable's location.
pub fn demo_model() -> Option<DemoModel> {
    let mut candidates = vec![PathBuf::from("models/shapes10")];
    if let Ok(exe) = std::env::current_exe() {
        for a in exe.ancestors().skip(1).take(4) {
            candidates.push(a.join("models/shapes10"));
        }
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/shapes10"));
    candidates
        .into_iter()
        .find(|d| d.join("flowar.pth").is_file())
        .map(|dir| DemoModel {
            converted: dir.join("converted"),
            dir,
        })
}

/// Provider and engine options shared by generate and verify.
#[derive(clap::Args, Debug, Clone)]
pub struct BackendArgs {
    /// auto, ort-cpu, cuda, tensorrt, openvino or tract.
    #[arg(long, default_value = "auto")]
    pub provider: String,
    #[command(flatten)]
    pub engine: flowar_runtime::cli_args::EngineArgs,
}

impl BackendArgs {
    pub fn options(&self) -> CliResult<flowar_runtime::PipelineOptions> {
        self.options_for(None)
    }

    /// Options for runs of `batch` images per call (sizes the TensorRT profiles).
    pub fn options_for(&self, batch: Option<usize>) -> CliResult<flowar_runtime::PipelineOptions> {
        Ok(flowar_runtime::PipelineOptions {
            provider: self.provider.parse()?,
            backend: self.engine.backend_options(batch)?,
        })
    }
}
