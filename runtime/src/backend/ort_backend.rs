//! ONNX Runtime backend (through the `ort` crate, loaded dynamically).
//!
//! The ONNX Runtime shared library is loaded once per process and can never be swapped
//! afterwards (the `ort` crate keeps it in a process-global). The first call that needs it
//! ([`OrtSession::open`], [`ort_available`], [`provider_available`]) picks it with this search
//! order:
//!
//! 1. [`BackendOptions::ort_lib`] (`--ort-lib`): authoritative, no fallback when it fails;
//! 2. the `ORT_DYLIB_PATH` environment variable: authoritative as well;
//! 3. the `onnxruntime/capi/` folder of the Python package reported by
//!    `python3 -c "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))"`;
//! 4. `.venv/lib/python3*/site-packages/onnxruntime/capi/` relative to the current directory.
//!
//! In a folder, `libonnxruntime.so.<version>` is preferred (highest version), then
//! `libonnxruntime.so`. Nothing here panics when the library is missing or unusable: every
//! failure becomes [`Error::ProviderUnavailable`].

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::ep::ExecutionProvider;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{Session as OrtRawSession, SessionInputValue};
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::gpu::ConvSearch;
use super::{BackendOptions, Provider, Resident, Session, TrtSetup};
use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorData};

const BACKEND: &str = "onnxruntime";
const ENV_VAR: &str = "ORT_DYLIB_PATH";
const INSTALL_HINT: &str =
    "install it with `pip install onnxruntime` (or `onnxruntime-gpu`), or point ORT_DYLIB_PATH / --ort-lib at libonnxruntime.so";

/// The process-wide ONNX Runtime: the library it came from and the one `ort` environment.
struct OrtRuntime {
    lib: PathBuf,
    env: ort::environment::Environment,
}

static RUNTIME: OnceLock<OrtRuntime> = OnceLock::new();
/// Serialises the first load so two threads never race on the `ort` globals.
static LOAD_LOCK: Mutex<()> = Mutex::new(());

/// Loads (once) and returns the process-wide runtime, or a human-readable reason.
fn runtime(options: &BackendOptions) -> std::result::Result<&'static OrtRuntime, String> {
    if let Some(rt) = RUNTIME.get() {
        return check_same_lib(rt, options).map(|()| rt);
    }
    let _guard = LOAD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return check_same_lib(rt, options).map(|()| rt);
    }
    let lib = locate_library(options)?;
    let env = std::panic::catch_unwind(
        || -> std::result::Result<ort::environment::Environment, String> {
            let builder = ort::init_from(&lib)
                .map_err(|e| format!("could not load ONNX Runtime from {}: {e}", lib.display()))?;
            builder
                .with_name("flowar")
                .with_telemetry(false)
                .build()
                .map_err(|e| {
                    format!(
                        "ONNX Runtime at {} failed to create its environment: {e}",
                        lib.display()
                    )
                })
        },
    )
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(format!(
            "loading ONNX Runtime from {} panicked: {what}",
            lib.display()
        ))
    })?;
    let _ = RUNTIME.set(OrtRuntime { lib, env });
    Ok(RUNTIME.get().expect("just set"))
}

/// The library is process-global: an explicit request for a different one cannot be honoured.
fn check_same_lib(rt: &OrtRuntime, options: &BackendOptions) -> std::result::Result<(), String> {
    let Some(wanted) = &options.ort_lib else {
        return Ok(());
    };
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    // A folder names the library inside it.
    let wanted_lib = explicit_library(wanted, "--ort-lib").unwrap_or_else(|_| wanted.clone());
    if canon(&wanted_lib) == canon(&rt.lib) {
        Ok(())
    } else {
        Err(format!(
            "ONNX Runtime is already loaded from {} in this process and cannot be replaced by {}",
            rt.lib.display(),
            wanted.display()
        ))
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// An explicitly named library: a file is used as is, a folder is searched.
fn explicit_library(p: &Path, source: &str) -> std::result::Result<PathBuf, String> {
    let p = absolute(p);
    if p.is_file() {
        Ok(p)
    } else if p.is_dir() {
        library_in_dir(&p).ok_or_else(|| {
            format!(
                "{source} names the folder {}, which holds no libonnxruntime.so*; {INSTALL_HINT}",
                p.display()
            )
        })
    } else {
        Err(format!(
            "{source} names {}, which does not exist; {INSTALL_HINT}",
            p.display()
        ))
    }
}

/// Finds the library following the documented search order (see the module docs).
fn locate_library(options: &BackendOptions) -> std::result::Result<PathBuf, String> {
    if let Some(p) = &options.ort_lib {
        return explicit_library(p, "--ort-lib (BackendOptions::ort_lib)");
    }
    if let Some(p) = std::env::var_os(ENV_VAR).filter(|v| !v.is_empty()) {
        return explicit_library(Path::new(&p), ENV_VAR);
    }
    let mut tried: Vec<String> = vec![
        "--ort-lib (not given)".to_string(),
        format!("{ENV_VAR} (not set)"),
    ];

    match python_onnxruntime_dir() {
        Ok(dir) => {
            let capi = dir.join("capi");
            if let Some(lib) = library_in_dir(&capi) {
                return Ok(lib);
            }
            tried.push(format!(
                "{} (python3's onnxruntime package; no libonnxruntime.so* there)",
                capi.display()
            ));
        }
        Err(why) => tried.push(format!("python3's onnxruntime package ({why})")),
    }

    let venv_lib = absolute(Path::new(".venv/lib"));
    let mut venv_dirs: Vec<PathBuf> = std::fs::read_dir(&venv_lib)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
                .map(|e| e.path().join("site-packages/onnxruntime/capi"))
                .collect()
        })
        .unwrap_or_default();
    venv_dirs.sort();
    for dir in venv_dirs.iter().rev() {
        if let Some(lib) = library_in_dir(dir) {
            return Ok(lib);
        }
    }
    tried.push(format!(
        "{}/python3*/site-packages/onnxruntime/capi/",
        venv_lib.display()
    ));

    Err(format!(
        "no ONNX Runtime library found; tried: {}; {INSTALL_HINT}",
        tried.join("; ")
    ))
}

/// Asks `python3` where its `onnxruntime` package lives. Any failure is a reason, never a panic.
fn python_onnxruntime_dir() -> std::result::Result<PathBuf, String> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("could not run python3: {e}"))?;
    if !out.status.success() {
        return Err("python3 cannot import onnxruntime".into());
    }
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or("python3 printed nothing")?;
    Ok(PathBuf::from(line))
}

/// `libonnxruntime.so.<version>` (highest version) or else `libonnxruntime.so` in `dir`.
fn library_in_dir(dir: &Path) -> Option<PathBuf> {
    let mut versioned: Vec<(Vec<u64>, PathBuf)> = Vec::new();
    let mut plain = None;
    for entry in std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        if name == "libonnxruntime.so" {
            plain = Some(path);
        } else if let Some(ver) = name.strip_prefix("libonnxruntime.so.") {
            let key = ver
                .split('.')
                .map(|p| p.parse::<u64>().unwrap_or(0))
                .collect();
            versioned.push((key, path));
        }
    }
    versioned.sort();
    versioned.pop().map(|(_, p)| p).or(plain)
}

/// Loads ONNX Runtime if needed and returns the path it was loaded from, or why it cannot be.
/// The `auto` provider logic uses this.
pub fn ort_available(options: &BackendOptions) -> std::result::Result<PathBuf, String> {
    runtime(options).map(|rt| rt.lib.clone())
}

/// Whether `provider` can be used with the ONNX Runtime already loaded (or, if none is
/// loaded yet, the one the default search finds). See [`provider_available_with`].
pub fn provider_available(provider: Provider) -> std::result::Result<(), String> {
    provider_available_with(provider, &BackendOptions::default())
}

/// Whether `provider` can be used: the library loads, the execution provider is compiled
/// into it, and registering it on a throwaway session configuration succeeds (which loads
/// the provider's own library and its CUDA / TensorRT dependencies).
pub fn provider_available_with(
    provider: Provider,
    options: &BackendOptions,
) -> std::result::Result<(), String> {
    match provider {
        Provider::Tract => Ok(()),
        Provider::OrtCpu => runtime(options).map(|_| ()),
        Provider::Cuda | Provider::TensorRt => {
            let rt = runtime(options)?;
            let mut builder = OrtRawSession::builder(&rt.env).map_err(|e| e.to_string())?;
            register_gpu(provider, &mut builder, rt, options, None)
        }
    }
}

/// The folder of the pip `tensorrt` wheel's libraries, when it sits beside the loaded
/// onnxruntime package (`site-packages/tensorrt_libs`).
pub fn tensorrt_libs_dir(options: &BackendOptions) -> Option<PathBuf> {
    let lib = runtime(options).ok()?.lib.clone();
    // .../site-packages/onnxruntime/capi/libonnxruntime.so.X
    let site = lib.parent()?.parent()?.parent()?;
    Some(site.join("tensorrt_libs")).filter(|d| d.is_dir())
}

/// The TensorRT version onnxruntime's TensorRT provider will load ([`gpu::tensorrt_version`],
/// also searching [`tensorrt_libs_dir`]). Looked up once per process: like the onnxruntime
/// library it sits beside, it cannot change while the process runs.
pub fn tensorrt_version(options: &BackendOptions) -> std::result::Result<String, String> {
    static VERSION: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    VERSION
        .get_or_init(|| {
            let extra: Vec<PathBuf> = tensorrt_libs_dir(options).into_iter().collect();
            super::gpu::tensorrt_version(&extra)
        })
        .clone()
}

/// Registers the GPU execution provider(s) for `provider`; any failure is an error.
/// `trt` adds the optimization profile and the engine / timing caches.
fn register_gpu(
    provider: Provider,
    builder: &mut SessionBuilder,
    rt: &OrtRuntime,
    options: &BackendOptions,
    trt: Option<&TrtSetup>,
) -> std::result::Result<(), String> {
    let device_id = options.device_id;
    let g = &options.gpu;
    let missing = |ep: &str, what: &str| {
        format!(
            "the loaded onnxruntime ({}) has no {what} execution provider ({ep}); pip install onnxruntime-gpu \
             (and point ORT_DYLIB_PATH / --ort-lib at its libonnxruntime.so)",
            rt.lib.display()
        )
    };
    let check = |available: ort::Result<bool>, ep: &str, what: &str| match available {
        Ok(true) => Ok(()),
        Ok(false) => Err(missing(ep, what)),
        Err(e) => Err(format!(
            "could not query the {what} execution provider: {e}"
        )),
    };
    let cuda = || {
        let mut c = ort::ep::CUDA::default()
            .with_device_id(device_id)
            .with_tf32(g.tf32)
            .with_conv_algorithm_search(match g.conv_search {
                ConvSearch::Exhaustive => ort::ep::cuda::ConvAlgorithmSearch::Exhaustive,
                ConvSearch::Heuristic => ort::ep::cuda::ConvAlgorithmSearch::Heuristic,
                ConvSearch::Default => ort::ep::cuda::ConvAlgorithmSearch::Default,
            });
        if let Some(limit) = g.memory_limit {
            c = c.with_memory_limit(limit as usize);
        }
        c
    };
    match provider {
        Provider::Cuda => {
            check(ort::ep::CUDA::is_available(), ort::ep::CUDA::NAME, "CUDA")?;
            cuda().register(builder).map_err(|e| {
                format!("registering the CUDA execution provider (device {device_id}) failed: {e}")
            })
        }
        Provider::TensorRt => {
            check(
                ort::ep::TensorRT::is_available(),
                ort::ep::TensorRT::NAME,
                "TensorRT",
            )?;
            check(ort::ep::CUDA::is_available(), ort::ep::CUDA::NAME, "CUDA")?;
            let mut t = ort::ep::TensorRT::default()
                .with_device_id(device_id)
                .with_fp16(g.trt_fp16);
            if let Some(w) = g.trt_workspace {
                t = t.with_max_workspace_size(w as usize);
            }
            if let Some(s) = trt {
                let dir = s.cache_dir.display().to_string();
                t = t
                    .with_engine_cache(true)
                    .with_engine_cache_path(&dir)
                    .with_timing_cache(true)
                    .with_timing_cache_path(&dir)
                    .with_profile_min_shapes(&s.profile.min)
                    .with_profile_opt_shapes(&s.profile.opt)
                    .with_profile_max_shapes(&s.profile.max);
            }
            t.register(builder).map_err(|e| {
                format!(
                    "registering the TensorRT execution provider (device {device_id}) failed: {e}"
                )
            })?;
            // CUDA after TensorRT: it runs the nodes TensorRT does not support.
            cuda().register(builder).map_err(|e| {
                format!("registering the CUDA execution provider (device {device_id}) failed: {e}")
            })
        }
        Provider::OrtCpu | Provider::Tract => Ok(()),
    }
}

/// One graph loaded in ONNX Runtime.
pub struct OrtSession {
    session: OrtRawSession,
    graph: String,
    input_names: Vec<String>,
    output_names: Vec<String>,
    /// Which outputs are scalars: [`Session::run_resident`] returns those in host memory,
    /// copied within the run, since they are what the host reads (the non-finite count).
    scalar_outputs: Vec<bool>,
    /// The CUDA device resident values live on (`None`: host memory).
    device: Option<i32>,
    /// Where [`Session::run_resident`] leaves outputs: [`resident_memory`] of `device`, and
    /// host memory for the scalars.
    device_memory: MemoryInfo<'static>,
    host_memory: MemoryInfo<'static>,
}

impl std::fmt::Debug for OrtSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtSession")
            .field("graph", &self.graph)
            .field("inputs", &self.input_names)
            .field("outputs", &self.output_names)
            .finish()
    }
}

fn graph_name(graph: &Path) -> String {
    graph
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| graph.display().to_string())
}

impl OrtSession {
    /// Loads `graph` for `provider` (`OrtCpu`, `Cuda` or `TensorRt`).
    pub fn open(provider: Provider, graph: &Path, options: &BackendOptions) -> Result<OrtSession> {
        Self::open_with(provider, graph, options, None)
    }

    /// [`OrtSession::open`] with TensorRT's profile and caches.
    pub fn open_with(
        provider: Provider,
        graph: &Path,
        options: &BackendOptions,
        trt: Option<&TrtSetup>,
    ) -> Result<OrtSession> {
        if provider == Provider::Tract {
            return Err(Error::BadArgument(
                "OrtSession cannot run the tract provider".into(),
            ));
        }
        if !graph.exists() {
            return Err(Error::Model {
                path: graph.to_path_buf(),
                reason: "graph file not found".into(),
            });
        }
        if !graph.is_file() {
            return Err(Error::Model {
                path: graph.to_path_buf(),
                reason: "not a file".into(),
            });
        }
        let unavailable = |reason: String| Error::ProviderUnavailable {
            provider: provider.name().into(),
            reason,
        };
        let rt = runtime(options).map_err(unavailable)?;
        let name = graph_name(graph);
        let backend_err = |reason: String| Error::Backend {
            backend: BACKEND.into(),
            graph: name.clone(),
            reason,
        };

        let threads = options.threads_or_cores();
        let mut builder = OrtRawSession::builder(&rt.env)
            .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::All)?))
            .and_then(|b| Ok(b.with_intra_threads(threads)?))
            .map_err(|e| backend_err(format!("configuring the session failed: {e}")))?;
        register_gpu(provider, &mut builder, rt, options, trt).map_err(unavailable)?;

        let session = builder.commit_from_file(graph).map_err(|e| {
            use ort::ErrorCode as C;
            let graph_problem = matches!(
                e.code(),
                C::InvalidProtobuf
                    | C::InvalidGraph
                    | C::NoSuchFile
                    | C::NoModel
                    | C::NotImplemented
                    | C::InvalidArgument
            );
            if provider == Provider::OrtCpu || graph_problem {
                Error::Model {
                    path: graph.to_path_buf(),
                    reason: e.to_string(),
                }
            } else {
                unavailable(format!(
                    "creating a {} session for {} failed: {e}",
                    provider.name(),
                    graph.display()
                ))
            }
        })?;
        let input_names = session
            .inputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let output_names = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let scalar_outputs = session
            .outputs()
            .iter()
            .map(|o| matches!(o.dtype(), ValueType::Tensor { shape, .. } if shape.is_empty()))
            .collect();
        let device = (provider != Provider::OrtCpu).then_some(options.device_id);
        let memory = |device| {
            resident_memory(device)
                .map_err(|e| backend_err(format!("describing the output memory failed: {e}")))
        };
        let (device_memory, host_memory) = (memory(device)?, memory(None)?);
        Ok(OrtSession {
            session,
            graph: name,
            input_names,
            output_names,
            scalar_outputs,
            device,
            device_memory,
            host_memory,
        })
    }

    /// The graph's input names, in declaration order.
    pub fn input_names(&self) -> &[String] {
        &self.input_names
    }

    /// The graph's output names, in the order [`Session::run`] returns them.
    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Backend {
            backend: BACKEND.into(),
            graph: self.graph.clone(),
            reason: reason.into(),
        }
    }
}

/// Checks input names against the graph's declared ones: no unknown, duplicate or missing name.
pub(crate) fn check_input_names(
    declared: &[String],
    names: &[&str],
) -> std::result::Result<(), String> {
    for (i, name) in names.iter().enumerate() {
        if !declared.iter().any(|d| d == name) {
            return Err(format!(
                "unknown input `{name}`; the graph's inputs are [{}]",
                declared.join(", ")
            ));
        }
        if names[..i].contains(name) {
            return Err(format!("input `{name}` was given twice"));
        }
    }
    let missing: Vec<&str> = declared
        .iter()
        .filter(|d| !names.contains(&d.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(format!("missing input(s) [{}]", missing.join(", ")));
    }
    Ok(())
}

/// [`check_input_names`], plus that every host tensor holds as many values as its shape says.
pub(crate) fn check_host_inputs(
    declared: &[String],
    inputs: &[(&str, &Tensor)],
) -> std::result::Result<(), String> {
    let names: Vec<&str> = inputs.iter().map(|(n, _)| *n).collect();
    check_input_names(declared, &names)?;
    inputs
        .iter()
        .try_for_each(|(name, t)| check_stored(name, t))
}

/// That a host tensor holds as many values as its shape says.
fn check_stored(name: &str, t: &Tensor) -> std::result::Result<(), String> {
    if t.stored_len() == t.len() {
        return Ok(());
    }
    Err(format!(
        "input `{name}` has shape {:?} ({} elements) but {} values",
        t.shape,
        t.len(),
        t.stored_len()
    ))
}

/// A host tensor as an owned onnxruntime value in host memory.
fn host_to_value(t: &Tensor) -> ort::Result<ort::value::DynValue> {
    use ort::value::Tensor as OrtTensor;
    let shape = t.shape.clone();
    Ok(match &t.data {
        TensorData::F32(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::F64(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::I64(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::Bool(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
    })
}

fn resident_err(reason: String) -> Error {
    Error::Backend {
        backend: BACKEND.into(),
        graph: "(resident value)".into(),
        reason,
    }
}

/// The value as a tensor view (every value the graphs produce is one).
fn as_tensor(value: &ort::value::DynValue) -> Result<ort::value::DynTensorRef<'_>> {
    value
        .view()
        .downcast::<ort::value::DynTensorValueType>()
        .map_err(|e| resident_err(format!("not a tensor: {e}")))
}

/// Reads an onnxruntime value into a host tensor, copying it off the device first if needed.
pub(crate) fn value_to_host(value: &ort::value::DynValue) -> Result<Tensor> {
    let tensor = as_tensor(value)?;
    if tensor.memory_info().is_cpu_accessible() {
        return extract_host(value).map_err(resident_err);
    }
    let host = tensor
        .to(AllocationDevice::CPU, 0)
        .map_err(|e| resident_err(format!("copying from the device failed: {e}")))?;
    extract_host(&host.into_dyn()).map_err(resident_err)
}

pub(crate) fn value_shape(value: &ort::value::DynValue) -> Vec<usize> {
    match value.dtype() {
        ValueType::Tensor { shape, .. } => dims(shape),
        _ => vec![],
    }
}

pub(crate) fn value_clone(value: &ort::value::DynValue) -> Result<ort::value::DynValue> {
    Ok((*as_tensor(value)?).clone().into_dyn())
}

/// Copies a host-accessible value's elements into a [`Tensor`].
fn extract_host(value: &ort::value::DynValue) -> std::result::Result<Tensor, String> {
    fn copy<T: ort::value::PrimitiveTensorElementType + Clone>(
        value: &ort::value::DynValue,
        wrap: fn(Vec<T>) -> TensorData,
    ) -> std::result::Result<Tensor, String> {
        let (shape, data) = value.try_extract_tensor::<T>().map_err(|e| e.to_string())?;
        Ok(Tensor {
            shape: dims(shape),
            data: wrap(data.to_vec()),
        })
    }
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(format!("not a tensor ({})", value.dtype()));
    };
    match ty {
        TensorElementType::Float32 => copy(value, TensorData::F32),
        TensorElementType::Float64 => copy(value, TensorData::F64),
        TensorElementType::Int64 => copy(value, TensorData::I64),
        TensorElementType::Bool => copy(value, TensorData::Bool),
        other => Err(format!(
            "element type {other}; only float32, float64, int64 and bool are supported"
        )),
    }
}

/// Where outputs of [`Session::run_resident`] are left: the GPU `device` for CUDA and
/// TensorRT, else host memory.
fn resident_memory(device: Option<i32>) -> ort::Result<MemoryInfo<'static>> {
    match device {
        Some(id) => MemoryInfo::new(
            AllocationDevice::CUDA,
            id,
            AllocatorType::Device,
            MemoryType::Default,
        ),
        None => MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        ),
    }
}

impl Session for OrtSession {
    fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Vec<Tensor>> {
        check_host_inputs(&self.input_names, inputs).map_err(|r| self.err(r))?;

        // Borrowed views: no copy of the input data.
        let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(inputs.len());
        for (name, t) in inputs {
            let shape = t.shape.as_slice();
            let value: ort::Result<SessionInputValue<'_>> = match &t.data {
                TensorData::F32(v) => {
                    TensorRef::from_array_view((shape, v.as_slice())).map(Into::into)
                }
                TensorData::F64(v) => {
                    TensorRef::from_array_view((shape, v.as_slice())).map(Into::into)
                }
                TensorData::I64(v) => {
                    TensorRef::from_array_view((shape, v.as_slice())).map(Into::into)
                }
                TensorData::Bool(v) => {
                    TensorRef::from_array_view((shape, v.as_slice())).map(Into::into)
                }
            };
            let value = value.map_err(|e| {
                self.err(format!(
                    "input `{name}` ({} {:?}) could not be passed: {e}",
                    t.dtype_name(),
                    t.shape
                ))
            })?;
            values.push((Cow::Borrowed(*name), value));
        }

        let graph = self.graph.clone();
        let err = |reason: String| Error::Backend {
            backend: BACKEND.into(),
            graph: graph.clone(),
            reason,
        };
        let outputs = self.session.run(values).map_err(|e| err(e.to_string()))?;
        outputs
            .iter()
            .map(|(name, value)| {
                extract_host(&value).map_err(|e| err(format!("output `{name}`: {e}")))
            })
            .collect()
    }

    fn upload(&self, t: &Tensor) -> Result<Resident> {
        let what = |e: ort::Error| {
            self.err(format!(
                "uploading a {} {:?} tensor failed: {e}",
                t.dtype_name(),
                t.shape
            ))
        };
        let value = host_to_value(t).map_err(what)?;
        match self.device {
            // Empty tensors (the first scale's KV cache) have nothing to copy.
            Some(id) if !t.is_empty() => {
                let tensor = value
                    .downcast::<ort::value::DynTensorValueType>()
                    .map_err(what)?;
                Ok(Resident::Ort(
                    tensor
                        .to(AllocationDevice::CUDA, id)
                        .map_err(what)?
                        .into_dyn(),
                ))
            }
            _ => Ok(Resident::Ort(value)),
        }
    }

    fn run_resident(&mut self, inputs: &[(&str, &Resident)]) -> Result<Vec<Resident>> {
        let names: Vec<&str> = inputs.iter().map(|(n, _)| *n).collect();
        check_input_names(&self.input_names, &names).map_err(|r| self.err(r))?;
        let graph = self.graph.clone();
        let err = |reason: String| Error::Backend {
            backend: BACKEND.into(),
            graph: graph.clone(),
            reason,
        };
        // A fresh binding per run: onnxruntime reuses a binding's output buffers on the next
        // run, which would overwrite values the sampler still holds.
        let mut binding = self
            .session
            .create_binding()
            .map_err(|e| err(format!("creating an I/O binding failed: {e}")))?;
        for (name, input) in inputs {
            let bound = match input {
                Resident::Ort(v) => binding.bind_input(*name, v),
                Resident::Host(t) => {
                    check_stored(name, t).map_err(&err)?;
                    host_to_value(t).and_then(|v| binding.bind_input(*name, &v))
                }
            };
            bound.map_err(|e| err(format!("binding input `{name}` failed: {e}")))?;
        }
        for (name, &scalar) in self.output_names.iter().zip(&self.scalar_outputs) {
            let target = if scalar {
                &self.host_memory
            } else {
                &self.device_memory
            };
            binding
                .bind_output_to_device(name.as_str(), target)
                .map_err(|e| err(format!("binding output `{name}` failed: {e}")))?;
        }
        let mut outputs = self
            .session
            .run_binding(&binding)
            .map_err(|e| err(e.to_string()))?;
        self.output_names
            .iter()
            .map(|name| {
                outputs
                    .remove(name.as_str())
                    .map(Resident::Ort)
                    .ok_or_else(|| err(format!("output `{name}` was not produced")))
            })
            .collect()
    }
}

fn dims(shape: &ort::value::Shape) -> Vec<usize> {
    shape.iter().map(|&d| d.max(0) as usize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_in_dir_prefers_highest_version() {
        let dir = std::env::temp_dir().join(format!("flowar-ortlib-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in [
            "libonnxruntime.so",
            "libonnxruntime.so.1.9.0",
            "libonnxruntime.so.1.31.1",
            "libonnxruntime_providers_shared.so",
        ] {
            std::fs::write(dir.join(n), b"").unwrap();
        }
        assert_eq!(
            library_in_dir(&dir).unwrap(),
            dir.join("libonnxruntime.so.1.31.1")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn session_is_send() {
        fn send<T: Send>() {}
        send::<OrtSession>();
    }
}
