//! Command-line arguments for the engine settings, shared by every command that runs a
//! model (`flowar generate`, `verify`, `bench`), so each flag means the same everywhere.
//! Behind the `clap` feature.

use std::path::PathBuf;

use crate::backend::gpu::GpuOptions;
use crate::backend::BackendOptions;
use crate::error::{Error, Result};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct EngineArgs {
    /// Intra-op threads of onnxruntime, OpenVINO and tract (default: the number of cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Path to libonnxruntime.so (else ORT_DYLIB_PATH, else the pip-installed onnxruntime).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// Path to libopenvino_c.so or its folder (else OPENVINO_LIB_PATH, else the pip-installed
    /// openvino of ./.venv, then of python3).
    #[arg(long)]
    pub openvino_lib: Option<PathBuf>,
    /// GPU ordinal for cuda / tensorrt.
    #[arg(long, default_value_t = 0)]
    pub device_id: i32,
    /// CUDA / TensorRT option NAME=VALUE, repeatable: mem_limit=8GiB,
    /// cudnn_conv_algo_search=exhaustive|heuristic|default, tf32=false, trt_fp16=true,
    /// trt_cache_dir=DIR, trt_max_batch=N (default: the largest batch), trt_workspace=4GiB.
    #[arg(long = "gpu", value_name = "NAME=VALUE")]
    pub gpu: Vec<String>,
}

impl EngineArgs {
    /// The backend options; `max_batch` (the run's largest batch) is the default
    /// `trt_max_batch`. Bad values are [`Error::BadArgument`]s naming the flag.
    pub fn backend_options(&self, max_batch: Option<usize>) -> Result<BackendOptions> {
        if self.threads == Some(0) {
            return Err(Error::BadArgument("--threads must be at least 1".into()));
        }
        if self.device_id < 0 {
            return Err(Error::BadArgument(format!(
                "--device-id must be 0 or more, got {}",
                self.device_id
            )));
        }
        let mut gpu = GpuOptions::default();
        if let Some(b) = max_batch {
            gpu.trt_max_batch = b.max(1);
        }
        gpu.apply_pairs(&self.gpu)?;
        Ok(BackendOptions {
            threads: self.threads,
            ort_lib: self.ort_lib.clone(),
            device_id: self.device_id,
            gpu,
            openvino_lib: self.openvino_lib.clone(),
            ..BackendOptions::default()
        })
    }
}
