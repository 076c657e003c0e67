//! What the exported graphs compute in (`flowar convert --dtype`), and the verification
//! bounds each choice meets against the float32 reference.
//!
//! - float32: exact, the fixtures' own bounds.
//! - float16: weights and activations in float16; norm statistics, softmax and the time
//!   embedding stay float32.
//! - bfloat16, the way PyTorch's autocast does it: only the transformers' weight products
//!   (every linear of the AR step and the flow head) compute in bfloat16, with their weights
//!   stored as bfloat16; activations, norms, softmax, RoPE, the adaLN arithmetic, attention
//!   and the solver stay float32. The VAE graph stays float32 (ONNX Conv takes bfloat16 only
//!   from opset 22) and is marked for an engine's own bfloat16 precision
//!   ([`VAE_INFERENCE_PRECISION`]), which measures as close to float32 there as autocast.
//!   Every linear is included: on the reference's own random S weights, keeping the adaLN
//!   modulations and the final linear in float32 moved the final tokens' drift only from
//!   1.71% to 1.60% (relative RMS against float32; the reference's autocast: 1.51%), for a
//!   flow head a third larger.

use flowar_format::manifest::VerifyBounds;

use crate::error::{ExportError, Result};
use crate::onnx::Elem;

/// Storage and compute type of the exported graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    /// Weights and activations in float16; RMSNorm/GroupNorm statistics, softmax and the
    /// time-embedding sinusoid stay float32. Graph inputs and outputs stay float32.
    F16,
    /// Weight products in bfloat16, everything else float32 (see the module docs).
    Bf16,
}

impl Precision {
    /// The name the manifest records as its `dtype`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "float32",
            Precision::F16 => "float16",
            Precision::Bf16 => "bfloat16",
        }
    }

    /// The ONNX element type of activations and (non-product) weights.
    pub fn elem(self) -> Elem {
        match self {
            Precision::F32 | Precision::Bf16 => Elem::F32,
            Precision::F16 => Elem::F16,
        }
    }

    /// Whether the transformers' linears compute in bfloat16.
    pub fn bf16_products(self) -> bool {
        self == Precision::Bf16
    }

    /// The precision an engine that picks its own (OpenVINO) is asked to run the VAE in.
    pub fn vae_inference_precision(self) -> Option<&'static str> {
        (self == Precision::Bf16).then_some(VAE_INFERENCE_PRECISION)
    }

    /// Verification bounds: the fixture README's for float32; float16 and bfloat16
    /// rounding need wider ones, measured on the fixtures.
    pub fn verify_bounds(self) -> VerifyBounds {
        match self {
            Precision::F32 => VerifyBounds::default(),
            Precision::F16 => VerifyBounds {
                graph: F16_GRAPH_BOUND,
                vae: F16_VAE_BOUND,
                pipeline: false,
            },
            Precision::Bf16 => VerifyBounds {
                graph: BF16_GRAPH_BOUND,
                vae: BF16_VAE_BOUND,
                pipeline: false,
            },
        }
    }
}

/// The VAE's precision hint in a bfloat16 folder (see the module docs).
pub const VAE_INFERENCE_PRECISION: &str = "bf16";

/// Max abs error of int8 flow-head and AR outputs against the float32 reference, measured
/// on the fixtures (largest 0.44, spatial `flow.s4.v` on ort-cpu and tract; the AR's
/// `ar.s4.z` 0.36;
/// see `tests/quantize.rs`). The VAE stays float32 and meets the exact bound. As for
/// float16, the end-to-end `pipe.*` cases are not compared.
pub const INT8_GRAPH_BOUND: f32 = 0.5;

/// Max abs error of float16 flow-head and AR outputs against the float32 reference.
pub const F16_GRAPH_BOUND: f32 = 2e-2;
/// Max abs error of a float16 VAE image (in [-1, 1]) against the float32 reference.
pub const F16_VAE_BOUND: f32 = 1e-2;

/// Max abs error of bfloat16-product flow-head and AR outputs against the float32
/// reference, on OpenVINO: 1.5x the largest measured on the fixtures (0.103, spatial
/// `flow.s4.v`; the AR's `ar.s4.z` 0.093; see `tests/bf16.rs`).
pub const BF16_GRAPH_BOUND: f32 = 0.15;
/// Max abs error of the VAE image (in [-1, 1]) run with OpenVINO's bfloat16 precision:
/// 1.5x the largest measured (0.078, spatial).
pub const BF16_VAE_BOUND: f32 = 0.12;

impl std::str::FromStr for Precision {
    type Err = ExportError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(Precision::F32),
            "f16" | "float16" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(ExportError::BadArgument(format!(
                "unknown dtype `{s}` (expected f32, f16 or bf16)"
            ))),
        }
    }
}

#[cfg(test)]
mod bounds_tests {
    use super::*;

    /// The bounds each precision writes are the ones `flowar verify` accepts as loosest.
    #[test]
    fn written_bounds_are_the_pinned_loosest() {
        for p in [Precision::F32, Precision::F16, Precision::Bf16] {
            assert_eq!(
                VerifyBounds::loosest(p.name(), false),
                Some(p.verify_bounds()),
                "{}",
                p.name()
            );
        }
        let int8 = VerifyBounds {
            graph: INT8_GRAPH_BOUND,
            pipeline: false,
            ..Precision::F32.verify_bounds()
        };
        assert_eq!(VerifyBounds::loosest("float32", true), Some(int8));
    }
}
