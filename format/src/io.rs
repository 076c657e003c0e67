//! Each graph's file name, its input and output names, and the symbolic dimensions its
//! inputs are declared with. The exporter declares the graphs with these names and the
//! runtime feeds them by these names; the manifest records both.

/// A symbolic (run-time sized) dimension of a graph input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SymbolicDim {
    /// Rows of a batch: the images' conditional rows, then their null-class rows when
    /// classifier-free guidance is on.
    Rows,
    /// Images in a batch (conditional rows only).
    Batch,
    /// Tokens of one scale (`side * side`).
    Tokens,
    /// Tokens already in the KV cache before a scale.
    PastTokens,
    /// Tokens in the KV cache after a scale.
    TotalTokens,
    /// Rows of a velocity: `batch` (unguided) or `2 * batch` (conditional then null rows).
    VelocityRows,
}

impl SymbolicDim {
    pub const ALL: [SymbolicDim; 6] = [
        SymbolicDim::Rows,
        SymbolicDim::Batch,
        SymbolicDim::Tokens,
        SymbolicDim::PastTokens,
        SymbolicDim::TotalTokens,
        SymbolicDim::VelocityRows,
    ];

    /// The name the graphs declare (`dim_param`) and the manifest records.
    pub const fn as_str(self) -> &'static str {
        match self {
            SymbolicDim::Rows => "rows",
            SymbolicDim::Batch => "batch",
            SymbolicDim::Tokens => "tokens",
            SymbolicDim::PastTokens => "past_tokens",
            SymbolicDim::TotalTokens => "total_tokens",
            SymbolicDim::VelocityRows => "velocity_rows",
        }
    }

    /// The dimension a manifest names; `None` for a name this format does not define.
    pub fn from_name(name: &str) -> Option<SymbolicDim> {
        SymbolicDim::ALL.into_iter().find(|d| d.as_str() == name)
    }
}

impl std::fmt::Display for SymbolicDim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The VAE graphs' second output: the sum of the means of the input and of every ResNet
/// block's output. A NaN or infinity anywhere in them makes it non-finite, even where an
/// engine's kernels (tract's min/max) would turn the NaN into finite pixels further on.
pub const NONFINITE_PROBE: &str = "nonfinite_probe";

/// `ar_step.onnx`: the AR transformer, one scale per call, with an explicit KV cache.
pub mod ar_step {
    pub const FILE: &str = "ar_step.onnx";
    /// `[rows]` int64 class ids (the null class for the null rows).
    pub const LABELS: &str = "labels";
    /// `[rows, tokens, C]` the previous scale's tokens, upsampled (ignored at scale 0).
    pub const TOKENS: &str = "tokens";
    /// `[]` bool: whether this is the first scale (the class token starts the sequence).
    pub const FIRST_SCALE: &str = "first_scale";
    /// `[tokens]` int64 positions of this scale's tokens in the whole sequence.
    pub const POSITIONS: &str = "positions";
    pub const ROPE_COS: &str = "rope_cos";
    pub const ROPE_SIN: &str = "rope_sin";
    /// `[rows, tokens, D]` the condition for the flow head.
    pub const Z: &str = "z";

    /// KV-cache input of the layer with checkpoint key prefix `layer`.
    pub fn past_key(layer: &str) -> String {
        format!("past_key.{layer}")
    }
    pub fn past_value(layer: &str) -> String {
        format!("past_value.{layer}")
    }
    /// KV-cache output (the past with this scale's keys appended).
    pub fn present_key(layer: &str) -> String {
        format!("present_key.{layer}")
    }
    pub fn present_value(layer: &str) -> String {
        format!("present_value.{layer}")
    }
}

/// `flow_head.onnx`: the velocity `v = F(x, t, z)`.
pub mod flow_head {
    pub const FILE: &str = "flow_head.onnx";
    pub const X: &str = "x";
    pub const T: &str = "t";
    pub const Z: &str = "z";
    pub const ROPE_COS: &str = "rope_cos";
    pub const ROPE_SIN: &str = "rope_sin";
    pub const V: &str = "v";
}

/// `vae_decoder.onnx`: latents to pixels in about [-1, 1].
pub mod vae_decoder {
    pub const FILE: &str = "vae_decoder.onnx";
    pub const LATENT: &str = "latent";
    pub const IMAGE: &str = "image";
    /// `[1]` float32, finite exactly when every probed activation was (see
    /// [`NONFINITE_PROBE`](super::NONFINITE_PROBE)).
    pub const NONFINITE: &str = super::NONFINITE_PROBE;
}

/// `vae_encoder.onnx` (optional: exported when the VAE checkpoint holds an encoder):
/// pixels to the sampler's tokens, the inverse of the decode rule, for editing.
pub mod vae_encoder {
    pub const FILE: &str = "vae_encoder.onnx";
    /// `[batch, 3, H, W]` float32 in [-1, 1] (`u8 / 127.5 - 1`).
    pub const IMAGE: &str = "image";
    /// `[batch, C, G, G]` float32: `(posterior mean - latent_shift) * latent_scale`.
    pub const TOKENS: &str = "tokens";
    pub const NONFINITE: &str = super::NONFINITE_PROBE;
}

/// `solver_step.onnx`: the CFG combination and the float64 state update (no weights).
pub mod solver_step {
    pub const FILE: &str = "solver_step.onnx";
    pub const X: &str = "x";
    pub const V: &str = "v";
    pub const W: &str = "w";
    pub const DT: &str = "dt";
    pub const X_NEXT: &str = "x_next";
    pub const X_IN: &str = "x_in";
    pub const X_IN_PAIR: &str = "x_in_pair";
    pub const NONFINITE: &str = "nonfinite";
}

#[cfg(test)]
mod tests {
    use super::SymbolicDim;

    #[test]
    fn every_dimension_round_trips_by_name() {
        for d in SymbolicDim::ALL {
            assert_eq!(SymbolicDim::from_name(d.as_str()), Some(d));
        }
        assert_eq!(SymbolicDim::from_name("frames"), None);
    }
}
