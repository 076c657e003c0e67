//! The exported graphs (four always; the VAE encoder when the VAE has one). Their file, input and output names and symbolic dimensions
//! come from `flowar_format::io`, the contract with the runtime, and are recorded in the
//! manifest.
pub mod ar_step;
pub mod flow_head;
pub mod solver_step;
pub(crate) mod vae_blocks;
pub mod vae_decoder;
pub mod vae_encoder;

use crate::onnx::builder::{Dim, Elem};
use flowar_format::manifest::{DimSpec, TensorSpec};

/// Symbolic dimension names shared by all graphs.
pub const ROWS: &str = "rows";
pub const TOKENS: &str = "tokens";
pub const PAST: &str = "past_tokens";
pub const TOTAL: &str = "total_tokens";
pub const BATCH: &str = "batch";
/// Rows of a velocity: `batch` (unguided) or `2 * batch` (conditional then null rows).
pub const VELOCITY_ROWS: &str = "velocity_rows";

/// A graph input or output: its name, element type and dims, for both the ONNX
/// declaration and the manifest.
pub struct Io {
    pub name: String,
    pub elem: Elem,
    pub dims: Vec<Dim>,
}

impl Io {
    pub fn new(name: impl Into<String>, elem: Elem, dims: Vec<Dim>) -> Io {
        Io {
            name: name.into(),
            elem,
            dims,
        }
    }
    /// A float32 `[batch, channels, side, side]` tensor: a VAE graph's image or latent.
    pub fn nchw(name: impl Into<String>, channels: usize, side: usize) -> Io {
        Io::new(
            name,
            Elem::F32,
            vec![
                Dim::Sym(BATCH),
                Dim::Fixed(channels),
                Dim::Fixed(side),
                Dim::Fixed(side),
            ],
        )
    }

    /// The VAE graphs' `nonfinite_probe` output: one float32, non-finite when anything
    /// inside the graph was.
    pub fn nonfinite_probe() -> Io {
        Io::new(
            flowar_format::io::NONFINITE_PROBE,
            Elem::F32,
            vec![Dim::Fixed(1)],
        )
    }

    pub fn spec(&self) -> TensorSpec {
        TensorSpec {
            name: self.name.clone(),
            dtype: match self.elem {
                Elem::F32 => "float32",
                Elem::F16 => "float16",
                Elem::Bf16 => "bfloat16",
                Elem::F64 => "float64",
                Elem::I64 => "int64",
                Elem::Bool => "bool",
            }
            .into(),
            shape: self
                .dims
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => DimSpec::Fixed(*n),
                    Dim::Sym(s) => DimSpec::Symbolic((*s).to_string()),
                })
                .collect(),
        }
    }
}

/// A built graph with its interface.
pub struct BuiltGraph {
    pub model: crate::onnx::proto::ModelProto,
    pub inputs: Vec<Io>,
    pub outputs: Vec<Io>,
    pub parameters: usize,
    /// Key paths of the linears built with int8 weights (`--quantize int8`).
    pub int8_linears: Vec<String>,
    /// The precision an engine that picks its own should run this graph in (the VAE of a
    /// bfloat16 folder); `None`: what the graph says.
    pub inference_precision: Option<&'static str>,
}
