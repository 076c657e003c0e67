//! tract backend: pure Rust, CPU only, no shared library to find.
//!
//! The graph is loaded with its own declared input facts (symbolic dims stay symbolic),
//! optimized once, and the resulting plan serves every symbolic size: tract re-resolves the
//! symbols from the input shapes on each run.
//!
//! Convolution graphs (the VAE decoder) are the exception: tract picks its convolution
//! kernels only for concrete shapes, and its lazy (in-matmul, multithreaded) im2col only for
//! one image; a symbolic batch leaves it on a single-threaded eager im2col that was 5x
//! onnxruntime's time. So a graph with Conv nodes whose inputs all lead with the `batch`
//! symbol is planned for batch 1 and runs one image at a time (its images are independent).
//!
//! Threads: `tract-linalg` is built with its `multithread-mm` feature, and every plan gets
//! its own rayon pool of [`BackendOptions::threads`] threads (default: the number of cores)
//! that splits the matrix products of `THREADING_PANELS` output panels or more.
//! `threads = 1` keeps tract single-threaded.
//!
//! After optimization, tract's constant `Pad` nodes (one before each padded convolution) are
//! swapped for `tract_pad::RowCopyPad`, which writes the same output by row copies.

use std::path::Path;
use std::sync::Arc;

use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::floats::FloatPrecisionTranslator;
use tract_onnx::tract_core::ops::cnn::Conv;
use tract_onnx::tract_core::runtime::RunOptions;
use tract_onnx::tract_hir::infer::Factoid;

use super::inputs::check_host;
use super::{check_graph_file, graph_name, host_inputs, BackendOptions, Resident, Session};
use crate::error::{panic_message, Cause, Error, Result};
use crate::tensor::{Tensor as HostTensor, TensorData};

const BACKEND: &str = "tract";

/// One graph, optimized and ready to run in tract.
pub struct TractSession {
    plan: Arc<TypedRunnableModel>,
    /// Planned for one image; a batch runs image by image (see the module docs).
    per_image: bool,
    graph: String,
    input_names: Vec<String>,
    input_types: Vec<DatumType>,
    output_names: Vec<String>,
}

impl std::fmt::Debug for TractSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractSession")
            .field("graph", &self.graph)
            .field("inputs", &self.input_names)
            .field("outputs", &self.output_names)
            .finish()
    }
}

impl TractSession {
    /// Loads, types and optimizes `graph`, planned to run on `options.threads` threads.
    ///
    /// tract's ONNX reader panics on some malformed graphs (a graph output no node
    /// produces, found by `fuzz/`); such a panic becomes a model error naming the file.
    pub fn open(graph: &Path, options: &BackendOptions) -> Result<TractSession> {
        check_graph_file(graph)?;
        std::panic::catch_unwind(|| Self::load(graph, options)).unwrap_or_else(|payload| {
            let what = panic_message(&*payload).unwrap_or_else(|| "no message".into());
            Err(Error::Model {
                path: graph.to_path_buf(),
                reason: format!("tract failed on this graph (it panicked: {what}); the file is not a well-formed ONNX graph"),
            })
        })
    }

    fn load(graph: &Path, options: &BackendOptions) -> Result<TractSession> {
        let model_err = |what: &str, e: TractError| Error::Model {
            path: graph.to_path_buf(),
            reason: format!("tract could not {what}: {e:?}"),
        };
        let mut model = tract_onnx::onnx()
            .model_for_path(graph)
            .map_err(|e| model_err("parse the graph", e))?;

        // The ONNX front end already took each input's fact from the graph's declared type;
        // restate them explicitly (a no-op today) and insist that each one names a type.
        let input_names: Vec<String> = model
            .input_outlets()
            .map_err(|e| model_err("list the inputs", e))?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        for (ix, name) in input_names.iter().enumerate() {
            let fact = model
                .input_fact(ix)
                .map_err(|e| model_err("read an input fact", e))?
                .clone();
            if fact.datum_type.concretize().is_none() {
                return Err(Error::Model {
                    path: graph.to_path_buf(),
                    reason: format!("graph input `{name}` does not declare an element type"),
                });
            }
            model
                .set_input_fact(ix, fact)
                .map_err(|e| model_err("set an input fact", e))?;
        }

        let mut typed = model
            .into_typed()
            .map_err(|e| model_err("type the graph", e))?;
        // float16 graphs run in float32 on tract, with the weights' float16 values: tract's
        // float16 kernels accumulate in float16 (x86 has no f16 arithmetic, so they are
        // emulated, slow, and measured 17x less accurate on the fixture VAE than
        // onnxruntime). onnxruntime's CPU provider likewise computes most f16 ops in f32.
        let has_f16 = typed.nodes().iter().any(|n| {
            n.outputs
                .iter()
                .any(|o| o.fact.datum_type == f16::datum_type())
        });
        if has_f16 {
            typed
                .transform(&FloatPrecisionTranslator::new(
                    f16::datum_type(),
                    f32::datum_type(),
                ))
                .map_err(|e| model_err("translate float16 to float32", e))?;
        }
        let per_image = leads_with_batch(&typed)
            .map_err(|e| model_err("read the input facts", e))?
            && typed.nodes().iter().any(|n| n.op_is::<Conv>());
        if per_image {
            let subs = [(typed.symbols.sym(BATCH), TDim::Val(1))]
                .into_iter()
                .collect();
            typed = typed
                .set_symbols(&subs)
                .map_err(|e| model_err("plan the graph for one image", e))?;
        }
        let mut typed = typed
            .into_optimized()
            .map_err(|e| model_err("optimize the graph", e))?;
        super::tract_pad::replace_pads(&mut typed)
            .map_err(|e| model_err("swap in the row-copy pad", e))?;
        let input_types = (0..input_names.len())
            .map(|ix| typed.input_fact(ix).map(|f| f.datum_type))
            .collect::<TractResult<Vec<_>>>()
            .map_err(|e| model_err("read the typed input facts", e))?;
        let output_names = typed
            .output_outlets()
            .map_err(|e| model_err("list the outputs", e))?
            .iter()
            .map(|o| {
                typed
                    .outlet_label(*o)
                    .map(str::to_string)
                    .unwrap_or_else(|| typed.node(o.node).name.clone())
            })
            .collect();
        let threads = options.threads_or_cores();
        let run_options = RunOptions {
            executor: (threads > 1).then(|| executor(threads)),
            ..RunOptions::default()
        };
        let plan = typed
            .into_runnable_with_options(&run_options)
            .map_err(|e| model_err("plan the graph", e))?;
        Ok(TractSession {
            plan,
            per_image,
            graph: graph_name(graph),
            input_names,
            input_types,
            output_names,
        })
    }

    /// Whether this graph was planned for one image and runs a batch image by image.
    pub fn per_image(&self) -> bool {
        self.per_image
    }

    /// The graph's input names, in declaration order.
    pub fn input_names(&self) -> &[String] {
        &self.input_names
    }

    /// The graph's output names (labels), in the order [`Session::run`] returns them.
    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    /// Runs the batch-1 plan on each image of `inputs` (axis 0) and stacks the outputs.
    fn run_per_image(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let images = inputs.first().map_or(0, |t| t.shape()[0]);
        match images {
            0 => return Err(TractError::msg("the batch holds no images")),
            1 => return self.plan.run(inputs),
            _ => {}
        }
        let mut per_output: Vec<Vec<tract_onnx::prelude::Tensor>> = Vec::new();
        for i in 0..images {
            let one = inputs
                .iter()
                .map(|t| Ok(t.slice(0, i, i + 1)?.into_tvalue()))
                .collect::<TractResult<TVec<TValue>>>()?;
            let outs = self.plan.run(one)?;
            per_output.resize_with(outs.len(), Vec::new);
            for (acc, o) in per_output.iter_mut().zip(outs) {
                acc.push(o.into_tensor());
            }
        }
        per_output
            .iter()
            .map(|parts| Ok(tract_onnx::prelude::Tensor::stack_tensors(0, parts)?.into_tvalue()))
            .collect()
    }

    fn err(&self, reason: impl Into<String>, source: Option<Cause>) -> Error {
        Error::Backend {
            backend: BACKEND.into(),
            graph: self.graph.clone(),
            reason: reason.into(),
            source,
        }
    }
}

/// The symbol of the images axis in the exported graphs.
const BATCH: &str = flowar_format::SymbolicDim::Batch.as_str();

/// Whether every input's first axis is the `batch` symbol.
fn leads_with_batch(typed: &TypedModel) -> TractResult<bool> {
    let batch = TDim::Sym(typed.symbols.sym(BATCH));
    let n = typed.input_outlets()?.len();
    for ix in 0..n {
        if typed.input_fact(ix)?.shape.iter().next() != Some(&batch) {
            return Ok(false);
        }
    }
    Ok(n > 0)
}

/// Fewest output panels a tract matrix product needs before it is split across threads.
///
/// tract's default (64) keeps every product with fewer panels on the calling thread. Its
/// matrix-vector kernels have 64-row panels, so the flow head's and the AR's products at one
/// to a few tokens (1024 or 768 outputs: 12 to 48 panels) ran on one core while onnxruntime
/// used both. At 8, in-process A/B on FlowAR-S (Intel Xeon, 2 threads): flow-head calls at 1
/// and 4 tokens 1.3–1.55× faster, AR steps at 1 to 16 tokens 1.14–1.39× faster, the larger
/// calls and the VAE unchanged; 2 and 16 were slower than 8. The split is over output tiles,
/// so results are bit-identical. The setting is process-wide in `tract-linalg`.
const THREADING_PANELS: usize = 8;

/// One rayon pool per thread count, shared by every plan of the process.
fn executor(threads: usize) -> Executor {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    tract_linalg::multithread::set_threading_panel_threshold(THREADING_PANELS);
    static POOLS: OnceLock<Mutex<HashMap<usize, Executor>>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    pools
        .entry(threads)
        .or_insert_with(|| Executor::multithread_with_name(threads, "flowar-tract"))
        .clone()
}

fn to_tract(t: &HostTensor) -> TractResult<TValue> {
    let tensor = match &t.data {
        TensorData::F32(v) => tract_onnx::prelude::Tensor::from_shape(&t.shape, v)?,
        TensorData::F64(v) => tract_onnx::prelude::Tensor::from_shape(&t.shape, v)?,
        TensorData::I64(v) => tract_onnx::prelude::Tensor::from_shape(&t.shape, v)?,
        TensorData::Bool(v) => tract_onnx::prelude::Tensor::from_shape(&t.shape, v)?,
    };
    Ok(tensor.into_tvalue())
}

/// A tract error, shown with its whole chain of causes on one line.
#[derive(Debug)]
pub struct TractFailure(TractError);

impl std::fmt::Display for TractFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for TractFailure {}

fn failure(e: TractError) -> Option<Cause> {
    Some(Box::new(TractFailure(e)))
}

/// Why a tract output could not be read into a host tensor.
#[derive(Debug, thiserror::Error)]
enum OutputError {
    #[error("element type {0} is not supported (only float32, float64, int64 and bool)")]
    ElementType(String),
    #[error(transparent)]
    Engine(#[from] TractFailure),
}

impl From<TractError> for OutputError {
    fn from(e: TractError) -> OutputError {
        OutputError::Engine(TractFailure(e))
    }
}

fn from_tract(t: &tract_onnx::prelude::Tensor) -> std::result::Result<HostTensor, OutputError> {
    fn copy<T: Datum + Clone>(t: &tract_onnx::prelude::Tensor) -> TractResult<Vec<T>> {
        Ok(t.try_as_plain_ram()?.as_slice::<T>()?.to_vec())
    }
    let shape = t.shape().to_vec();
    let data = match t.datum_type() {
        DatumType::F32 => TensorData::F32(copy(t)?),
        DatumType::F64 => TensorData::F64(copy(t)?),
        DatumType::I64 => TensorData::I64(copy(t)?),
        DatumType::Bool => TensorData::Bool(copy(t)?),
        DatumType::TDim => TensorData::I64(copy(&*t.cast_to::<i64>()?)?),
        other => return Err(OutputError::ElementType(format!("{other:?}"))),
    };
    Ok(HostTensor { shape, data })
}

fn datum_of(t: &HostTensor) -> DatumType {
    match t.data {
        TensorData::F32(_) => DatumType::F32,
        TensorData::F64(_) => DatumType::F64,
        TensorData::I64(_) => DatumType::I64,
        TensorData::Bool(_) => DatumType::Bool,
    }
}

impl Session for TractSession {
    fn run(&mut self, inputs: &[(&str, &HostTensor)]) -> Result<Vec<HostTensor>> {
        check_host(&self.input_names, inputs).map_err(|e| self.err("", Some(e.into())))?;
        // tract takes its inputs by position: order them as the graph declares them.
        let mut ordered: TVec<TValue> = TVec::with_capacity(self.input_names.len());
        for (ix, name) in self.input_names.iter().enumerate() {
            let (_, t) = inputs
                .iter()
                .find(|(n, _)| n == name)
                .expect("checked above");
            let want = self.input_types[ix];
            let got = datum_of(t);
            // ONNX int64 inputs may be typed as TDim inside tract; the i64 value is accepted.
            if want != got && !(want == DatumType::TDim && got == DatumType::I64) {
                return Err(self.err(
                    format!(
                        "input `{name}` is {}, but the graph expects {want:?}",
                        t.dtype_name()
                    ),
                    None,
                ));
            }
            let value = to_tract(t)
                .map_err(|e| self.err(format!("input `{name}` {:?}", t.shape), failure(e)))?;
            ordered.push(value);
        }
        let outputs = if self.per_image {
            self.run_per_image(ordered)
        } else {
            self.plan.run(ordered)
        }
        .map_err(|e| self.err("", failure(e)))?;
        outputs
            .iter()
            .enumerate()
            .map(|(ix, t)| {
                from_tract(t).map_err(|e| {
                    let name = self.output_names.get(ix).map(String::as_str).unwrap_or("?");
                    self.err(format!("output `{name}`"), Some(e.into()))
                })
            })
            .collect()
    }

    /// tract computes in host memory: nothing to copy.
    fn upload(&self, t: &HostTensor) -> Result<Resident> {
        Ok(Resident::Host(t.clone()))
    }

    fn run_resident(&mut self, inputs: &[(&str, &Resident)]) -> Result<Vec<Resident>> {
        let host = host_inputs(inputs, "tract").map_err(|why| self.err(why.to_string(), None))?;
        Ok(self.run(&host)?.into_iter().map(Resident::Host).collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn session_is_send() {
        fn send<T: Send>() {}
        send::<super::TractSession>();
    }
}
