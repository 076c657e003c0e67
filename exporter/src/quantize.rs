//! int8 weights for the transformers' block linears and the flow head's final adaLN
//! (`flowar convert --quantize int8`):
//! the opt-in fast mode. Each chosen linear becomes
//! `DynamicQuantizeLinear(x) -> MatMulInteger(x_u8, W_i8) -> Cast -> Mul(x_scale * W_scale)`,
//! which onnxruntime fuses into one integer-matmul kernel and tract runs as written.
//!
//! - Weights: per output channel, symmetric, 7 bits (`[-63, 63]`). The 8th bit is left
//!   out on purpose: on AVX2 CPUs without VNNI, onnxruntime multiplies uint8 activations
//!   by int8 weights with `vpmaddubsw`, whose pairwise int16 sums saturate past
//!   `255 * 64 * 2`; 7-bit weights never reach it, so the output is the same on AVX2 and
//!   AVX-512 machines.
//! - Activations: quantized per call to uint8 over their own range (DynamicQuantizeLinear).
//! - Quantized: inside every block of the flow head and of the AR transformer, the
//!   attention and MLP linears; the flow head's per-token adaLN modulation, in its blocks
//!   and its final layer. Float32: the VAE, the embeddings (class, time, condition,
//!   `z_proj`), the AR blocks' adaLN (one token per row), the final linears. Chosen by
//!   measurement (`bench/README.md`): on FlowAR-S, adding the blocks' adaLN and the AR
//!   linears to the attention/MLP-only set took 7.40 to 5.93 s/image and the finest
//!   scale's token change from 7.4% to 8.8% (relative RMS); the final adaLN then added
//!   9.6% -> 10.4% for 1.13x more flow-head speed, while the condition embedding would
//!   have cost 9.6% -> 13.0% for less speed and stays float. The demo kept every class's
//!   shape throughout.

use crate::error::{ExportError, Result};

/// Largest weight magnitude after quantization (7 bits; see the module docs).
pub const WEIGHT_LEVELS: f32 = 63.0;

/// A quantization scheme `flowar convert --quantize` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantize {
    /// int8 weights per channel, activations quantized dynamically.
    Int8,
}

impl Quantize {
    /// The name the manifest records.
    pub fn scheme(self) -> &'static str {
        match self {
            Quantize::Int8 => "int8-dynamic: weights int8 per output channel (7-bit symmetric), activations uint8 per call",
        }
    }

    /// Whether the linear at `key_path` (its checkpoint prefix, e.g.
    /// `flownet.res_blocks.3.attn.qkv` or `decoder_blocks.1.mlp.fc2`) is quantized.
    pub fn quantizes(self, key_path: &str) -> bool {
        // The AR transformer's blocks: `{encoder|decoder}_blocks.{k}.{attn|mlp}.{linear}`
        // (their `ada_lin.1` acts on one token per row and stays float).
        if let Some(rest) = key_path
            .strip_prefix("encoder_blocks.")
            .or_else(|| key_path.strip_prefix("decoder_blocks."))
        {
            return matches!(rest.split('.').nth(1), Some("attn" | "mlp"));
        }
        // The flow head's final adaLN (per token, 2W wide); its final linear stays float.
        if key_path == "flownet.final_layer.adaLN_modulation.1" {
            return true;
        }
        let Some(rest) = key_path.split(".res_blocks.").nth(1) else {
            return false;
        };
        // The flow head's blocks: `{block}.{attn|mlp|crossattn}.{linear}` and the per-token
        // adaLN modulation `{block}.ada_lin*`.
        let mut parts = rest.split('.');
        let _block = parts.next();
        matches!(
            parts.next(),
            Some("attn" | "mlp" | "crossattn" | "ada_lin" | "ada_lin_attn" | "ada_lin_mlp")
        )
    }
}

impl std::str::FromStr for Quantize {
    type Err = ExportError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "int8" => Ok(Quantize::Int8),
            _ => Err(ExportError::BadArgument(format!(
                "unknown quantization `{s}` (expected int8)"
            ))),
        }
    }
}

/// A `[in, out]` weight as int8 values and one float scale per output column:
/// `w[i, o] ~= q[i, o] * scale[o]`.
pub fn per_channel(wt: &[f32], in_dim: usize, out_dim: usize) -> (Vec<i8>, Vec<f32>) {
    let mut scale = vec![0f32; out_dim];
    for row in wt.chunks_exact(out_dim) {
        for (s, &w) in scale.iter_mut().zip(row) {
            *s = s.max(w.abs());
        }
    }
    for s in &mut scale {
        // An all-zero column keeps scale 1 (its values quantize to 0 either way).
        *s = if *s > 0.0 { *s / WEIGHT_LEVELS } else { 1.0 };
    }
    let mut q = vec![0i8; in_dim * out_dim];
    for (qrow, row) in q.chunks_exact_mut(out_dim).zip(wt.chunks_exact(out_dim)) {
        for ((qv, &w), &s) in qrow.iter_mut().zip(row).zip(&scale) {
            *qv = (w / s).round().clamp(-WEIGHT_LEVELS, WEIGHT_LEVELS) as i8;
        }
    }
    (q, scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_scales_each_column_by_its_own_range() {
        // [in=2, out=3]: columns (1, -0.25), (0, 0), (0.012, 0.02)
        let wt = [1.0, 0.0, 0.012, -0.25, 0.0, 0.02];
        let (q, s) = per_channel(&wt, 2, 3);
        assert_eq!(s, vec![1.0 / 63.0, 1.0, 0.02 / 63.0]);
        assert_eq!(q, vec![63, 0, 38, -16, 0, 63]);
        for (i, &w) in wt.iter().enumerate() {
            let back = q[i] as f32 * s[i % 3];
            assert!(
                (back - w).abs() <= s[i % 3] / 2.0 + 1e-9,
                "{i}: {back} vs {w}"
            );
        }
    }

    #[test]
    fn only_block_linears_are_chosen() {
        let q = Quantize::Int8;
        assert!(q.quantizes("flownet.res_blocks.0.attn.qkv"));
        assert!(q.quantizes("flownet.res_blocks.11.mlp.fc2"));
        assert!(q.quantizes("flownet.res_blocks.2.crossattn.kv"));
        assert!(q.quantizes("flownet.res_blocks.0.ada_lin"));
        assert!(q.quantizes("flownet.res_blocks.1.ada_lin_mlp"));
        assert!(q.quantizes("encoder_blocks.0.attn.qkv"));
        assert!(q.quantizes("decoder_blocks.3.mlp.fc1_g"));
        assert!(!q.quantizes("decoder_blocks.3.ada_lin.1"));
        assert!(!q.quantizes("z_proj"));
        assert!(!q.quantizes("decoder_embed"));
        assert!(q.quantizes("flownet.final_layer.adaLN_modulation.1"));
        assert!(!q.quantizes("flownet.final_layer.linear"));
        assert!(!q.quantizes("flownet.cond_embed"));
        assert!(!q.quantizes("flownet.input_proj"));
        assert!(!q.quantizes("flownet.time_embed.mlp.0"));
        assert!("int4".parse::<Quantize>().is_err());
    }
}
