//! One module per subcommand, plus the CLI's error type.
pub mod bench;
pub mod convert;
pub mod generate;
pub mod inspect;
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

/// Provider and thread options shared by generate, verify and bench.
#[derive(clap::Args, Debug, Clone)]
pub struct BackendArgs {
    /// auto, ort-cpu, cuda, tensorrt or tract.
    #[arg(long, default_value = "auto")]
    pub provider: String,
    /// Intra-op threads (default: the number of cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Path to libonnxruntime.so (else ORT_DYLIB_PATH, else the pip-installed onnxruntime).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// GPU ordinal for cuda / tensorrt.
    #[arg(long, default_value_t = 0)]
    pub device_id: i32,
    /// CUDA / TensorRT option NAME=VALUE, repeatable: mem_limit=8GiB,
    /// cudnn_conv_algo_search=exhaustive|heuristic|default, tf32=false, trt_fp16=true,
    /// trt_cache_dir=DIR, trt_max_batch=N (default: the batch size), trt_workspace=4GiB.
    #[arg(long = "gpu", value_name = "NAME=VALUE")]
    pub gpu: Vec<String>,
}

impl BackendArgs {
    /// The `--gpu` options; `batch` (the run's batch size) is the default `trt_max_batch`.
    pub fn gpu_options(
        &self,
        batch: Option<usize>,
    ) -> CliResult<flowar_runtime::backend::gpu::GpuOptions> {
        let mut g = flowar_runtime::backend::gpu::GpuOptions::default();
        if let Some(b) = batch {
            g.trt_max_batch = b.max(1);
        }
        g.apply_pairs(&self.gpu)?;
        Ok(g)
    }

    pub fn options(&self) -> CliResult<flowar_runtime::PipelineOptions> {
        self.options_for(None)
    }

    /// Options for runs of `batch` images per call (sizes the TensorRT profiles).
    pub fn options_for(&self, batch: Option<usize>) -> CliResult<flowar_runtime::PipelineOptions> {
        if self.threads == Some(0) {
            return Err(CliError::Usage("--threads must be at least 1".into()));
        }
        Ok(flowar_runtime::PipelineOptions {
            provider: self.provider.parse()?,
            backend: flowar_runtime::backend::BackendOptions {
                threads: self.threads,
                ort_lib: self.ort_lib.clone(),
                device_id: self.device_id,
                gpu: self.gpu_options(batch)?,
            },
        })
    }
}
