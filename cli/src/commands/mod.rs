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

/// The sampler flags `generate` and `edit` share: batch, seed, guidance and steps.
#[derive(clap::Args, Debug)]
pub struct SamplerArgs {
    /// Images per batch (rows of the graphs; twice that with guidance).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Seed of the starting noise; an image's noise depends on its index, not the batch.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Classifier-free guidance scale at the last scale (1 = off). Default: the manifest's.
    #[arg(long)]
    pub cfg: Option<f64>,
    /// Guidance window: steps with t <= this are guided. Default: the manifest's.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Solver steps per scale: one count for every scale, or one per scale coarse to fine
    /// (e.g. 25,25,20,12,8; fewer at the fine scales is faster and no longer the
    /// reference's output). Default: the manifest's.
    #[arg(long)]
    pub steps: Option<flowar_runtime::sampler::schedule::Steps>,
}

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
