//! One graph loaded in onnxruntime: host runs with borrowed inputs, and resident runs
//! through I/O binding that leave outputs where the provider computed them.

use std::borrow::Cow;
use std::path::Path;

use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session as OrtRawSession, SessionInputValue};
use ort::value::{TensorRef, ValueType};

use super::super::inputs::{check_host, check_names, check_stored};
use super::super::{
    check_graph_file, graph_name, BackendOptions, Provider, Resident, Session, TrtSetup,
};
use super::library::runtime;
use super::providers::register_gpu;
use super::value::{extract_host, from_host};
use super::BACKEND;
use crate::error::{Cause, Error, Result};
use crate::tensor::{Tensor, TensorData};

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

/// A failure running `graph`, with the engine's error as its source.
fn backend_error(graph: &str, reason: impl Into<String>, source: impl Into<Cause>) -> Error {
    Error::Backend {
        backend: BACKEND.into(),
        graph: graph.to_string(),
        reason: reason.into(),
        source: Some(source.into()),
    }
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
        if matches!(provider, Provider::Tract | Provider::OpenVino) {
            return Err(Error::BadArgument(format!(
                "OrtSession cannot run the {} provider",
                provider.name()
            )));
        }
        check_graph_file(graph)?;
        let unavailable = |why| Error::unavailable(provider.name(), why);
        let rt = runtime(options).map_err(unavailable)?;
        let name = graph_name(graph);

        let threads = options.threads_or_cores();
        let mut builder = OrtRawSession::builder(&rt.env)
            .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::All)?))
            .and_then(|b| Ok(b.with_intra_threads(threads)?))
            .map_err(|e| backend_error(&name, "configuring the session failed", e))?;
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
                Error::ProviderUnavailable {
                    provider: provider.name().into(),
                    reason: format!(
                        "creating a {} session for {} failed",
                        provider.name(),
                        graph.display()
                    ),
                    source: Some(e.into()),
                }
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
        let device = provider.is_gpu().then_some(options.device_id);
        let memory = |device| {
            resident_memory(device)
                .map_err(|e| backend_error(&name, "describing the output memory failed", e))
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

    fn err(&self, reason: impl Into<String>, source: impl Into<Cause>) -> Error {
        backend_error(&self.graph, reason, source)
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
        check_host(&self.input_names, inputs).map_err(|e| self.err("", e))?;

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
                self.err(
                    format!(
                        "input `{name}` ({} {:?}) could not be passed",
                        t.dtype_name(),
                        t.shape
                    ),
                    e,
                )
            })?;
            values.push((Cow::Borrowed(*name), value));
        }

        let graph = self.graph.clone();
        let outputs = self
            .session
            .run(values)
            .map_err(|e| backend_error(&graph, "", e))?;
        outputs
            .iter()
            .map(|(name, value)| {
                extract_host(&value)
                    .map_err(|e| backend_error(&graph, format!("output `{name}`"), e))
            })
            .collect()
    }

    fn upload(&self, t: &Tensor) -> Result<Resident> {
        let what = |e: ort::Error| {
            self.err(
                format!("uploading a {} {:?} tensor failed", t.dtype_name(), t.shape),
                e,
            )
        };
        let value = from_host(t).map_err(what)?;
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
        check_names(&self.input_names, &names).map_err(|e| self.err("", e))?;
        let graph = self.graph.clone();
        let err = |reason: String, e: ort::Error| backend_error(&graph, reason, e);
        // A fresh binding per run: onnxruntime reuses a binding's output buffers on the next
        // run, which would overwrite values the sampler still holds.
        let mut binding = self
            .session
            .create_binding()
            .map_err(|e| err("creating an I/O binding failed".into(), e))?;
        for (name, input) in inputs {
            let bound = match input {
                Resident::Ort(v) => binding.bind_input(*name, v),
                Resident::Host(t) => {
                    check_stored(name, t).map_err(|e| backend_error(&graph, "", e))?;
                    from_host(t).and_then(|v| binding.bind_input(*name, &v))
                }
            };
            bound.map_err(|e| err(format!("binding input `{name}` failed"), e))?;
        }
        for (name, &scalar) in self.output_names.iter().zip(&self.scalar_outputs) {
            let target = if scalar {
                &self.host_memory
            } else {
                &self.device_memory
            };
            binding
                .bind_output_to_device(name.as_str(), target)
                .map_err(|e| err(format!("binding output `{name}` failed"), e))?;
        }
        let mut outputs = self
            .session
            .run_binding(&binding)
            .map_err(|e| err(String::new(), e))?;
        self.output_names
            .iter()
            .map(|name| {
                outputs
                    .remove(name.as_str())
                    .map(Resident::Ort)
                    .ok_or_else(|| Error::Backend {
                        backend: BACKEND.into(),
                        graph: graph.clone(),
                        reason: format!("output `{name}` was not produced"),
                        source: None,
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn session_is_send() {
        fn send<T: Send>() {}
        send::<super::OrtSession>();
    }
}
