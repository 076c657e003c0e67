//! Execution backends: onnxruntime (through `ort`), OpenVINO and tract, behind one trait.
//!
//! A backend runs ONNX graphs by file and input name. It knows nothing of FlowAR: what a
//! graph does, which inputs grow with the batch, and what a TensorRT profile should cover
//! are decided by the model layer ([`crate::model`]) and handed down as neutral
//! [`ShapeRange`]s and options.

use crate::error::Result;
pub use crate::error::Unavailable;
use crate::tensor::Tensor;
use std::path::Path;

pub mod gpu;
pub mod inputs;
mod library_search;
pub mod openvino_backend;
pub mod ort_backend;
pub mod tensorrt;
pub mod tract_backend;
mod tract_pad;

/// Which engine (and execution provider) runs the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    OrtCpu,
    Cuda,
    TensorRt,
    /// OpenVINO's CPU plugin (bfloat16 products on AMX and AVX512-BF16 CPUs).
    OpenVino,
    Tract,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::OrtCpu => "ort-cpu",
            Provider::Cuda => "cuda",
            Provider::TensorRt => "tensorrt",
            Provider::OpenVino => "openvino",
            Provider::Tract => "tract",
        }
    }
    pub fn all() -> [Provider; 5] {
        [
            Provider::OrtCpu,
            Provider::Cuda,
            Provider::TensorRt,
            Provider::OpenVino,
            Provider::Tract,
        ]
    }

    /// Whether this provider computes on a GPU.
    pub fn is_gpu(self) -> bool {
        matches!(self, Provider::Cuda | Provider::TensorRt)
    }

    /// Whether sessions on this provider need a [`TrtSetup`] (profiles and engine cache).
    pub fn builds_engines(self) -> bool {
        self == Provider::TensorRt
    }

    /// Where a model's VAE encoder runs: its own provider, but CUDA under TensorRT (one
    /// call per edit does not pay for an engine build).
    pub fn encoder_provider(self) -> Provider {
        match self {
            Provider::TensorRt => Provider::Cuda,
            p => p,
        }
    }

    /// The provider that runs float64 graphs in place of this one: TensorRT has no float64,
    /// so such graphs run on CUDA, on the same device; OpenVINO computes float64 in float32,
    /// so they run on the host, in tract.
    pub fn for_float64(self) -> Provider {
        match self {
            Provider::TensorRt => Provider::Cuda,
            Provider::OpenVino => Provider::Tract,
            p => p,
        }
    }
}

impl std::str::FromStr for Provider {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Self> {
        Provider::all()
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                crate::error::Error::BadArgument(format!(
                    "unknown provider `{s}` (expected auto, ort-cpu, cuda, tensorrt, openvino or tract)"
                ))
            })
    }
}

/// Settings shared by every session a backend opens.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// Intra-op threads; `None` means the number of cores.
    pub threads: Option<usize>,
    /// Explicit path to `libonnxruntime.so` (else `ORT_DYLIB_PATH`, else the documented search).
    pub ort_lib: Option<std::path::PathBuf>,
    /// GPU ordinal for CUDA / TensorRT.
    pub device_id: i32,
    /// CUDA and TensorRT settings (ignored by the CPU providers).
    pub gpu: gpu::GpuOptions,
    /// Explicit path to `libopenvino_c.so` or its folder (else `OPENVINO_LIB_PATH`, else
    /// the documented search).
    pub openvino_lib: Option<std::path::PathBuf>,
    /// The precision OpenVINO computes in (its `INFERENCE_PRECISION_HINT`); the other
    /// engines compute what the graph says.
    pub inference_precision: InferencePrecision,
}

/// A hint to engines that choose their own compute precision (OpenVINO). Float32 by
/// default: reduced precision belongs in the graph, where it can be kept to the products.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InferencePrecision {
    #[default]
    F32,
    /// Every op in bfloat16 where the CPU has it (AMX, AVX512-BF16).
    Bf16,
}

impl InferencePrecision {
    /// OpenVINO's name for it.
    pub fn openvino_name(self) -> &'static str {
        match self {
            InferencePrecision::F32 => "f32",
            InferencePrecision::Bf16 => "bf16",
        }
    }
}

impl BackendOptions {
    /// The intra-op thread count to use: [`BackendOptions::threads`], else the cores.
    pub fn threads_or_cores(&self) -> usize {
        self.threads.filter(|&t| t > 0).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}

/// Whether `provider` can run here; `Err` says what is missing. Loads onnxruntime for the
/// onnxruntime providers; TensorRT also needs its own library (the engine cache is keyed by
/// its version), so a missing `libnvinfer` is found here rather than at the first run.
pub fn available(provider: Provider, options: &BackendOptions) -> Result<(), Unavailable> {
    match provider {
        Provider::Tract => Ok(()),
        Provider::OpenVino => openvino_backend::available(options),
        Provider::OrtCpu | Provider::Cuda => {
            ort_backend::provider_available_with(provider, options)
        }
        Provider::TensorRt => {
            ort_backend::provider_available_with(provider, options)?;
            ort_backend::tensorrt_version(options).map(|_| ())
        }
    }
}

/// The sizes one dynamic graph input may take: per dimension, the smallest, the one to
/// tune for, and the largest. Fixed dimensions have all three equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeRange {
    pub input: String,
    pub min: Vec<usize>,
    pub opt: Vec<usize>,
    pub max: Vec<usize>,
}

/// What a TensorRT session needs beyond [`BackendOptions`]: where its engines are cached
/// ([`tensorrt::engine_cache_dir`]) and the shape ranges of every dynamic input.
#[derive(Debug, Clone)]
pub struct TrtSetup {
    pub cache_dir: std::path::PathBuf,
    pub shapes: Vec<ShapeRange>,
}

/// One loaded graph, ready to run repeatedly with inputs of any symbolic size.
pub trait Session: Send {
    /// Runs the graph on host tensors. `inputs` are matched by name; outputs come back in
    /// the graph's order.
    fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Vec<Tensor>>;

    /// Copies `t` to where this session computes, once, for inputs reused across runs.
    fn upload(&self, t: &Tensor) -> Result<Resident>;

    /// Runs the graph with outputs left where it computed them (device memory on CUDA and
    /// TensorRT), so that one graph's output feeds the next without a host round trip.
    fn run_resident(&mut self, inputs: &[(&str, &Resident)]) -> Result<Vec<Resident>>;
}

/// A tensor kept where its session computes: GPU memory on CUDA and TensorRT, onnxruntime's
/// own host buffers on its CPU provider, a plain host tensor on OpenVINO and tract. The sampler passes
/// latents, the KV cache and conditions between graphs as these.
#[derive(Debug)]
pub enum Resident {
    Host(Tensor),
    Ort(ort::value::DynValue),
}

impl From<Tensor> for Resident {
    fn from(t: Tensor) -> Resident {
        Resident::Host(t)
    }
}

impl Resident {
    /// Copies the tensor to the host (a device-to-host transfer for GPU values).
    pub fn to_host(&self) -> Result<Tensor> {
        match self {
            Resident::Host(t) => Ok(t.clone()),
            Resident::Ort(v) => ort_backend::value::to_host(v),
        }
    }

    pub fn shape(&self) -> Vec<usize> {
        match self {
            Resident::Host(t) => t.shape.clone(),
            Resident::Ort(v) => ort_backend::value::shape(v),
        }
    }

    /// How many float elements are NaN or infinite, read where the value lives when the
    /// host can see that memory, else from a host copy.
    pub fn count_nonfinite(&self) -> Result<usize> {
        match self {
            Resident::Host(t) => Ok(t.count_nonfinite()),
            Resident::Ort(v) => ort_backend::value::count_nonfinite(v),
        }
    }

    /// A copy on the same device.
    pub fn try_clone(&self) -> Result<Resident> {
        match self {
            Resident::Host(t) => Ok(Resident::Host(t.clone())),
            Resident::Ort(v) => ort_backend::value::clone(v).map(Resident::Ort),
        }
    }
}

/// Opens a session for `graph` on `provider`. Errors name the file and what is missing.
pub fn open_session(
    provider: Provider,
    graph: &Path,
    options: &BackendOptions,
) -> Result<Box<dyn Session>> {
    open_session_with(provider, graph, options, None)
}

/// [`open_session`] with the TensorRT profile and cache (used with `Provider::TensorRt`).
pub fn open_session_with(
    provider: Provider,
    graph: &Path,
    options: &BackendOptions,
    trt: Option<&TrtSetup>,
) -> Result<Box<dyn Session>> {
    match provider {
        Provider::Tract => Ok(Box::new(tract_backend::TractSession::open(graph, options)?)),
        Provider::OpenVino => Ok(Box::new(openvino_backend::OpenVinoSession::open(
            graph, options,
        )?)),
        Provider::OrtCpu | Provider::Cuda | Provider::TensorRt => Ok(Box::new(
            ort_backend::OrtSession::open_with(provider, graph, options, trt)?,
        )),
    }
}

/// The host tensors behind `inputs`, for the engines that compute on the host (tract,
/// OpenVINO); `Err` names an input that is an onnxruntime value instead.
pub(crate) fn host_inputs<'a>(
    inputs: &[(&'a str, &'a Resident)],
    engine: &'static str,
) -> std::result::Result<Vec<(&'a str, &'a Tensor)>, NotOnHost> {
    inputs
        .iter()
        .map(|(name, r)| match r {
            Resident::Host(t) => Ok((*name, t)),
            Resident::Ort(_) => Err(NotOnHost {
                input: name.to_string(),
                engine,
            }),
        })
        .collect()
}

/// An input handed to a host engine (tract, OpenVINO) that lives in onnxruntime instead.
#[derive(Debug, thiserror::Error)]
#[error("input `{input}` is an onnxruntime value; {engine} takes host tensors")]
pub(crate) struct NotOnHost {
    pub input: String,
    pub engine: &'static str,
}

/// The graph's file name, for error messages.
pub(crate) fn graph_name(graph: &Path) -> String {
    graph
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| graph.display().to_string())
}

/// That `graph` is an existing file, before an engine tries to parse it.
pub(crate) fn check_graph_file(graph: &Path) -> Result<()> {
    let reason = if !graph.exists() {
        "graph file not found"
    } else if !graph.is_file() {
        "not a file"
    } else {
        return Ok(());
    };
    Err(crate::error::Error::Model {
        path: graph.to_path_buf(),
        reason: reason.into(),
    })
}
