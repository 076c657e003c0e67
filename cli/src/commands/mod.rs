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
    /// A provider named for a model folder it can never run, whatever the machine.
    #[error("provider `{provider}` cannot run the model in {}: {why}", model.display())]
    Unfit {
        provider: &'static str,
        model: PathBuf,
        why: String,
    },
}

/// A model folder's manifest problem is the runtime's (an unknown class is bad usage).
impl From<flowar_runtime::manifest::FormatError> for CliError {
    fn from(e: flowar_runtime::manifest::FormatError) -> CliError {
        CliError::Runtime(e.into())
    }
}

impl CliError {
    /// 2 for bad usage (a flag's value, or a provider named for a model it can never
    /// run), 1 otherwise (a missing library, a CPU without bf16, a corrupt model, failed
    /// verification, ...).
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) | CliError::Unfit { .. } => 2,
            CliError::Runtime(flowar_runtime::Error::BadArgument(_)) => 2,
            CliError::Export(flowar_exporter::ExportError::BadArgument(_)) => 2,
            _ => 1,
        }
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

/// Loads the model folder `dir` on `options`' provider. A provider named for a folder it
/// can never run ([`flowar_runtime::provider::never_runs`]: a bf16 folder anywhere but on
/// OpenVINO, an int8 one on OpenVINO) is bad usage, refused before any library is loaded;
/// what this machine lacks (a library, bf16 on this CPU) is left to the load, a runtime
/// failure. On OpenVINO, says on stderr how many graphs came from the compiled-graph cache.
pub fn load_pipeline(
    dir: &std::path::Path,
    options: &flowar_runtime::PipelineOptions,
) -> CliResult<flowar_runtime::Pipeline> {
    use flowar_runtime::backend::openvino_backend::session::{cache_counts, cache_entry};
    if let flowar_runtime::ProviderChoice::Named(p) = options.provider {
        let m = flowar_runtime::manifest::Manifest::load(dir)?;
        if let Some(why) = flowar_runtime::provider::never_runs(p, (&m).into()) {
            return Err(CliError::Unfit {
                provider: p.name(),
                model: dir.to_path_buf(),
                why,
            });
        }
    }
    let before = cache_counts();
    let pipe = flowar_runtime::Pipeline::load(dir, options)?;
    if pipe.provider().provider == flowar_runtime::Provider::OpenVino {
        // Where a first run's compile time went, and proof that the next skips it.
        let now = cache_counts();
        let entry = cache_entry(
            &flowar_runtime::cache::cache_root(),
            &dir.join("manifest.json"),
        );
        eprintln!(
            "openvino: {} graph(s) loaded from the compiled-graph cache, {} compiled (cache: {})",
            now.from_cache - before.from_cache,
            now.compiled - before.compiled,
            if entry.is_dir() {
                entry.display().to_string()
            } else {
                "none".into()
            }
        );
    }
    Ok(pipe)
}

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
        // The cache's cap, checked before any work whatever the provider (only OpenVINO
        // and TensorRT use the cache, but a bad value is a mistake wherever it is set).
        flowar_runtime::cache::max_bytes()?;
        Ok(flowar_runtime::PipelineOptions {
            provider: self.provider.parse()?,
            backend: self.engine.backend_options(batch)?,
        })
    }
}
