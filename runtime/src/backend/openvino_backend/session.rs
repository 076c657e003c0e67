//! One graph compiled by OpenVINO's CPU plugin, run on host tensors.

use std::path::Path;

use openvino::{CompiledModel, DeviceType, ElementType, InferRequest, RwPropertyKey};

use super::super::inputs::check_host;
use super::super::tensorrt::cache_root;
use super::super::{check_graph_file, graph_name, host_inputs, BackendOptions, Resident, Session};
use super::library::with_core;
use super::value::{element_type, fill, from_host, to_host, ValueError};
use super::BACKEND;
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
/// and where compiled graphs are cached ([`cache_dir`]).
///
/// Shapes stay dynamic: one compiled graph serves every scale and batch. Compiling one per
/// input shape (what a static-shape plan needs) was measured 2-7% faster per call on the S
/// graphs, but each compiled copy repacks the weights: the S AR step at its five scales
/// took 3.3 GB against 1.5 GB, and 3.5 s of compiling. OpenVINO 2026.4's CPU plugin gets
/// dynamic shapes wrong, though: a graph whose first call has one token returns wrong
/// values (max error 6 on the S flow head) at 16 tokens and more, unless its runtime cache
/// of shape-specific kernels is off (`CPU_RUNTIME_CACHE_CAPACITY` 0, measured within 3%
/// of the default's speed). The fixture tests run the scales in that order and catch it.
fn cpu_properties(options: &BackendOptions) -> Vec<(RwPropertyKey, String)> {
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
    if let Some(dir) = cache_dir() {
        props.push((RwPropertyKey::CacheDir, dir.display().to_string()));
    }
    props
}

/// Where OpenVINO keeps compiled graphs, so a second load skips compilation:
/// `<flowar cache>/openvino` (see [`cache_root`]). OpenVINO keys each blob by the graph,
/// its properties and its own version. `None` (compile every time) when the folder
/// cannot be made.
pub fn cache_dir() -> Option<std::path::PathBuf> {
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = cache_root().join("openvino");
        match std::fs::create_dir_all(&dir) {
            Ok(()) => Some(dir),
            Err(e) => {
                eprintln!(
                    "flowar: not caching OpenVINO's compiled graphs: cannot create {}: {e}",
                    dir.display()
                );
                None
            }
        }
    })
    .clone()
}

impl OpenVinoSession {
    /// Reads `graph` and compiles it for the CPU with `options`' threads and precision.
    pub fn open(graph: &Path, options: &BackendOptions) -> Result<OpenVinoSession> {
        check_graph_file(graph)?;
        let name = graph_name(graph);
        let (mut compiled, inputs, outputs) =
            with_core(options, |core| compile(core, graph, &name, options))
                .map_err(|why| Error::unavailable(crate::Provider::OpenVino.name(), why))??;
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

/// Reads `graph` and compiles it for the CPU on `core` with `options`' properties.
fn compile(
    core: &mut openvino::Core,
    graph: &Path,
    name: &str,
    options: &BackendOptions,
) -> Result<(CompiledModel, Ports, Ports)> {
    for (key, value) in cpu_properties(options) {
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
