//! One graph compiled by OpenVINO's CPU plugin, run on host tensors.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use openvino::{CompiledModel, DeviceType, ElementType, InferRequest, RwPropertyKey};

use super::super::inputs::check_host;
use super::super::{check_graph_file, graph_name, host_inputs, BackendOptions, Resident, Session};
use super::library::with_core;
use super::value::{element_type, fill, from_host, to_host, ValueError};
use super::BACKEND;
use crate::cache::{cache_root, evict_after_write, max_bytes, Lease};
use crate::error::{Cause, Error, Result};
use crate::tensor::Tensor;

/// One graph loaded in OpenVINO.
pub struct OpenVinoSession {
    request: InferRequest,
    /// Kept alive for the request's sake.
    _compiled: CompiledModel,
    graph: String,
    input_names: Vec<String>,
    input_types: Vec<ElementType>,
    output_names: Vec<String>,
    /// The model's cache entry, held so the cache's size cap never evicts it meanwhile.
    _cache: Option<Lease>,
}

impl std::fmt::Debug for OpenVinoSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenVinoSession")
            .field("graph", &self.graph)
            .field("inputs", &self.input_names)
            .field("outputs", &self.output_names)
            .finish()
    }
}

/// How OpenVINO's CPU plugin is told to compute: precision, threads, one stream for latency,
/// and where compiled graphs are cached (`cache`, the graph's [`cache_entry`]; none: not
/// cached).
///
/// Shapes stay dynamic: one compiled graph serves every scale and batch. Compiling one per
/// input shape (what a static-shape plan needs) was measured 2-7% faster per call on the S
/// graphs, but each compiled copy repacks the weights: the S AR step at its five scales
/// took 3.3 GB against 1.5 GB, and 3.5 s of compiling. OpenVINO 2026.4's CPU plugin gets
/// dynamic shapes wrong, though: a graph whose first call has one token returns wrong
/// values (max error 6 on the S flow head) at 16 tokens and more, unless its runtime cache
/// of shape-specific kernels is off (`CPU_RUNTIME_CACHE_CAPACITY` 0, measured within 3%
/// of the default's speed). The fixture tests run the scales in that order and catch it.
fn cpu_properties(options: &BackendOptions, cache: Option<&Path>) -> Vec<(RwPropertyKey, String)> {
    let mut props = vec![
        (
            RwPropertyKey::HintInferencePrecision,
            options.inference_precision.openvino_name().to_string(),
        ),
        (
            RwPropertyKey::InferenceNumThreads,
            options.threads_or_cores().to_string(),
        ),
        (RwPropertyKey::NumStreams, "1".to_string()),
        (RwPropertyKey::HintPerformanceMode, "LATENCY".to_string()),
        (
            RwPropertyKey::Other("CPU_RUNTIME_CACHE_CAPACITY".into()),
            "0".to_string(),
        ),
    ];
    // Core state like the rest: set on every compile, so a graph without a cache entry
    // never writes into another model's.
    props.push((
        RwPropertyKey::CacheDir,
        cache.map(|d| d.display().to_string()).unwrap_or_default(),
    ));
    props
}

/// The cache entry of `graph`'s model folder, where OpenVINO keeps its compiled graphs so
/// that a second load skips compiling: `<root>/openvino/<folder name>-<key>` under the
/// cache root ([`cache_root`]). The key hashes the folder's absolute path and its
/// `manifest.json`'s size and modification time, so a re-exported folder gets a fresh
/// entry and the stale one ages out under the size cap ([`crate::cache`]). Within the
/// entry, OpenVINO keys each blob by the graph, its properties and its own version.
pub fn cache_entry(root: &Path, graph: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let folder = graph
        .parent()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()))
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(folder.as_os_str().as_encoded_bytes());
    if let Ok(meta) = std::fs::metadata(folder.join("manifest.json")) {
        h.update(meta.len().to_le_bytes());
        if let Ok(t) = meta.modified() {
            let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            h.update(since.as_nanos().to_le_bytes());
        }
    }
    let key: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let name: String = folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    root.join("openvino").join(format!("{name}-{key}"))
}

/// How this process's OpenVINO graphs were loaded: from the compiled-graph cache, or
/// compiled (and written to it, when caching).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounts {
    /// Graphs OpenVINO loaded from a cached blob (its `LOADED_FROM_CACHE`).
    pub from_cache: usize,
    /// Graphs compiled from the ONNX file.
    pub compiled: usize,
}

static FROM_CACHE: AtomicUsize = AtomicUsize::new(0);
static COMPILED: AtomicUsize = AtomicUsize::new(0);

/// This process's [`CacheCounts`] so far (`flowar generate` reports them).
pub fn cache_counts() -> CacheCounts {
    CacheCounts {
        from_cache: FROM_CACHE.load(Ordering::Relaxed),
        compiled: COMPILED.load(Ordering::Relaxed),
    }
}

/// Leases `graph`'s cache entry under the configured root, or says on stderr why its
/// graphs will not be cached (a cache that cannot be written never stops a load).
fn lease_entry(graph: &Path) -> Option<Lease> {
    let dir = cache_entry(&cache_root(), graph);
    match Lease::acquire(&dir) {
        Ok(lease) => Some(lease),
        Err(e) => {
            eprintln!(
                "flowar: not caching OpenVINO's compiled graphs: cannot use {}: {e}",
                dir.display()
            );
            None
        }
    }
}

/// OpenVINO's `LOADED_FROM_CACHE` for `compiled`: whether it came from a cached blob;
/// `None` when OpenVINO does not answer (then the load counts as a compile, and the
/// eviction that follows a compile runs, which is harmless: it skips entries in use).
/// The crate's getter does not free the few bytes OpenVINO allocates for the answer; one
/// call per graph load keeps that negligible, and no unsafe code is needed here.
fn loaded_from_cache(compiled: &CompiledModel) -> Option<bool> {
    let key = openvino::PropertyKey::Other("LOADED_FROM_CACHE".into());
    let answer = compiled.get_property(&key).ok()?;
    match answer.to_ascii_uppercase().as_str() {
        "YES" | "TRUE" | "1" => Some(true),
        "NO" | "FALSE" | "0" => Some(false),
        _ => None,
    }
}

impl OpenVinoSession {
    /// Reads `graph` and compiles it for the CPU with `options`' threads and precision,
    /// or loads it from the compiled-graph cache ([`cache_entry`]). A compile that wrote
    /// to the cache then evicts what is beyond its size cap ([`crate::cache`]).
    pub fn open(graph: &Path, options: &BackendOptions) -> Result<OpenVinoSession> {
        check_graph_file(graph)?;
        let name = graph_name(graph);
        let cap = max_bytes()?;
        let lease = lease_entry(graph);
        let cache = lease.as_ref().map(Lease::dir);
        let (mut compiled, inputs, outputs) =
            with_core(options, |core| compile(core, graph, &name, options, cache))
                .map_err(|why| Error::unavailable(crate::Provider::OpenVino.name(), why))??;
        if loaded_from_cache(&compiled) == Some(true) {
            FROM_CACHE.fetch_add(1, Ordering::Relaxed);
        } else {
            COMPILED.fetch_add(1, Ordering::Relaxed);
            if lease.is_some() {
                evict_after_write(&cache_root(), cap);
            }
        }
        let request = compiled.create_infer_request().map_err(|e| {
            backend_error(
                &name,
                "creating an inference request failed",
                Some(e.into()),
            )
        })?;
        Ok(OpenVinoSession {
            request,
            _compiled: compiled,
            graph: name,
            input_names: inputs.iter().map(|(n, _)| n.clone()).collect(),
            input_types: inputs.iter().map(|(_, t)| *t).collect(),
            output_names: outputs.into_iter().map(|(n, _)| n).collect(),
            _cache: lease,
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

    fn err(&self, reason: impl Into<String>, source: Option<Cause>) -> Error {
        backend_error(&self.graph, reason, source)
    }
}

/// A graph's input and output names with their element types.
type Ports = Vec<(String, ElementType)>;

/// Reads `graph` and compiles it for the CPU on `core` with `options`' properties,
/// caching in `cache`.
fn compile(
    core: &mut openvino::Core,
    graph: &Path,
    name: &str,
    options: &BackendOptions,
    cache: Option<&Path>,
) -> Result<(CompiledModel, Ports, Ports)> {
    for (key, value) in cpu_properties(options, cache) {
        core.set_property(&DeviceType::CPU, &key, &value)
            .map_err(|e| {
                backend_error(
                    name,
                    format!("setting {} = {value} failed", key.as_ref()),
                    Some(e.into()),
                )
            })?;
    }
    let path = graph.to_str().ok_or_else(|| Error::Model {
        path: graph.to_path_buf(),
        reason: "OpenVINO takes UTF-8 paths only".into(),
    })?;
    let model = core
        .read_model_from_file(path, "")
        .map_err(|e| Error::Model {
            path: graph.to_path_buf(),
            reason: format!("OpenVINO could not read the graph: {e}"),
        })?;
    let compiled = core
        .compile_model(&model, DeviceType::CPU)
        .map_err(|e| Error::Model {
            path: graph.to_path_buf(),
            reason: format!("OpenVINO could not compile the graph for the CPU: {e}"),
        })?;
    // The crate never frees a port. A port of the read model's inputs holds only its
    // Parameter node, and carries the graph's own input name and type (the compiled
    // model's may be renamed by fused casts, e.g. `Cast_0` for a float16 graph's `tokens`).
    // A port of the read model's outputs would hold its whole graph, weights included
    // (measured: the S flow head's 165 MB leaked per session), so outputs, used by index,
    // are named from the compiled model's ports, which hold only small stand-in nodes.
    type NodeAt<'a> =
        &'a dyn Fn(usize) -> std::result::Result<openvino::Node, openvino::InferenceError>;
    let ports = |n: usize, get: NodeAt<'_>| {
        (0..n)
            .map(|i| {
                let node = get(i)?;
                Ok((node.get_name()?, node.get_element_type()?))
            })
            .collect::<std::result::Result<Ports, openvino::InferenceError>>()
    };
    let describe = |e: openvino::InferenceError| Error::Model {
        path: graph.to_path_buf(),
        reason: format!("OpenVINO could not list the graph's inputs and outputs: {e}"),
    };
    let inputs = model
        .get_inputs_len()
        .and_then(|n| ports(n, &|i| model.get_input_by_index(i)))
        .map_err(describe)?;
    let outputs = compiled
        .get_output_size()
        .and_then(|n| ports(n, &|i| compiled.get_output_by_index(i)))
        .map_err(describe)?;
    Ok((compiled, inputs, outputs))
}

/// A failure running `graph`, with OpenVINO's error as its source.
fn backend_error(graph: &str, reason: impl Into<String>, source: Option<Cause>) -> Error {
    Error::Backend {
        backend: BACKEND.into(),
        graph: graph.to_string(),
        reason: reason.into(),
        source,
    }
}

impl Session for OpenVinoSession {
    fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Vec<Tensor>> {
        check_host(&self.input_names, inputs).map_err(|e| self.err("", Some(e.into())))?;
        for (name, t) in inputs {
            let ix = self
                .input_names
                .iter()
                .position(|n| n == name)
                .expect("checked above");
            let want = self.input_types[ix];
            if element_type(t) != want {
                return Err(self.err(
                    format!(
                        "input `{name}` is {}, but the graph expects {want}",
                        t.dtype_name()
                    ),
                    None,
                ));
            }
            let what = |e: ValueError| {
                self.err(
                    format!("input `{name}` ({} {:?})", t.dtype_name(), t.shape),
                    Some(e.into()),
                )
            };
            if t.shape.is_empty() {
                // A scalar: written into the request's own rank-0 tensor.
                let mut own = self.request.get_tensor(name).map_err(|e| what(e.into()))?;
                fill(&mut own, t).map_err(what)?;
            } else {
                let value = from_host(t).map_err(what)?;
                self.request.set_tensor(name, &value).map_err(|e| {
                    self.err(format!("setting input `{name}` failed"), Some(e.into()))
                })?;
            }
        }
        self.request
            .infer()
            .map_err(|e| self.err("", Some(e.into())))?;
        (0..self.output_names.len())
            .map(|i| {
                let name = &self.output_names[i];
                self.request
                    .get_output_tensor_by_index(i)
                    .map_err(|e| self.err(format!("output `{name}`"), Some(e.into())))
                    .and_then(|ov| {
                        to_host(&ov)
                            .map_err(|e| self.err(format!("output `{name}`"), Some(e.into())))
                    })
            })
            .collect()
    }

    fn upload(&self, t: &Tensor) -> Result<Resident> {
        Ok(Resident::Host(t.clone()))
    }

    fn run_resident(&mut self, inputs: &[(&str, &Resident)]) -> Result<Vec<Resident>> {
        let host =
            host_inputs(inputs, "OpenVINO").map_err(|why| self.err(why.to_string(), None))?;
        Ok(self.run(&host)?.into_iter().map(Resident::Host).collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn session_is_send() {
        fn send<T: Send>() {}
        send::<super::OpenVinoSession>();
    }
}
