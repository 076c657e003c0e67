//! Architecture detection from key names and tensor shapes alone: FlowAR here, the VAE
//! decoder (either key layout) in [`vae`].

mod vae;
mod vae_encoder;
pub use vae::{detect_vae, detect_vae_with, vae_layout, VaeDims, VAE_IGNORED};
pub use vae_encoder::{check_encoder_config, detect_encoder, EncoderDims};

use flowar_format::manifest::{ArArch, FlowArch, FlowKind};

use crate::error::{ExportError, Result};
use crate::weights::{IgnoreRule, WeightSource};

/// Everything the FlowAR checkpoint says about its architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowArDims {
    pub ar: ArArch,
    pub flow: FlowArch,
    pub scales: Vec<usize>,
    pub latent_channels: usize,
    pub num_classes: usize,
    /// Total tokens over all scales (the position-embedding length).
    pub total_tokens: usize,
}

/// FlowAR keys present in released checkpoints that inference does not read.
pub const FLOWAR_IGNORED: &[IgnoreRule] = &[
    IgnoreRule { matches: |k| k == "mask", reason: "training attention mask; inference runs unmasked" },
    IgnoreRule {
        matches: |k| k.ends_with(".attn.rope.freqs") || k.ends_with(".crossattn.rope.freqs"),
        reason: "RoPE frequency buffer; the runtime recomputes the tables (its length gave the head size)",
    },
];

pub(crate) fn layout(src: &dyn WeightSource, reason: String) -> ExportError {
    ExportError::UnknownLayout {
        origin: src.origin(),
        reason,
    }
}

pub(crate) fn need(src: &dyn WeightSource, key: &str, expected: &str) -> Result<Vec<usize>> {
    src.shape(key)
        .ok_or_else(|| crate::weights::missing_key(src, key, expected))
}

pub(crate) fn need_rank(
    src: &dyn WeightSource,
    key: &str,
    rank: usize,
    expected: &str,
) -> Result<Vec<usize>> {
    let s = need(src, key, expected)?;
    if s.len() != rank || s.contains(&0) {
        return Err(layout(
            src,
            format!("key `{key}` has shape {s:?}, expected {expected}"),
        ));
    }
    Ok(s)
}

/// Counts `prefix.{0,1,2,..}.suffix` keys present, stopping at the first gap.
pub(crate) fn count_indexed(src: &dyn WeightSource, prefix: &str, suffix: &str) -> usize {
    (0..)
        .take_while(|k| src.shape(&format!("{prefix}.{k}.{suffix}")).is_some())
        .count()
}

/// What one side of a KL-VAE (`"encoder"` or `"decoder"`) shows per level: ResNet blocks
/// per level (the same at every level, or an error naming the level), each level's width
/// (its first block's `conv1` output) and the levels with attention. `block(l)` is level
/// `l`'s ResNet block prefix, `attn(l)` a key only an attention level has.
pub(crate) fn vae_levels(
    src: &dyn WeightSource,
    side: &str,
    levels: usize,
    block: impl Fn(usize) -> String,
    attn: impl Fn(usize) -> String,
) -> Result<(usize, Vec<usize>, Vec<usize>)> {
    let blocks = count_indexed(src, &block(0), "conv1.weight");
    let mut level_channels = Vec::with_capacity(levels);
    let mut attn_levels = Vec::new();
    for l in 0..levels {
        let prefix = block(l);
        let s = need_rank(
            src,
            &format!("{prefix}.0.conv1.weight"),
            4,
            "[out, in, 3, 3]",
        )?;
        level_channels.push(s[0]);
        let n = count_indexed(src, &prefix, "conv1.weight");
        if n != blocks {
            return Err(layout(
                src,
                format!(
                    "{side} level {l} (`{prefix}`) has {n} ResNet blocks, level 0 has {blocks}"
                ),
            ));
        }
        if src.shape(&attn(l)).is_some() {
            attn_levels.push(l);
        }
    }
    Ok((blocks, level_channels, attn_levels))
}

/// Scale sides 1, 2, 4, ... whose squares sum to `total`.
pub fn scales_from_total(total: usize) -> Option<Vec<usize>> {
    let mut scales = Vec::new();
    let (mut side, mut sum) = (1usize, 0usize);
    while sum < total {
        sum += side * side;
        scales.push(side);
        side *= 2;
    }
    (sum == total).then_some(scales)
}

/// Known AR head sizes of the released models, used when no `rope.freqs` buffer is stored.
fn released_head_dim(width: usize) -> Option<usize> {
    match width {
        768 | 1024 => Some(64),
        1536 => Some(96),
        _ => None,
    }
}

pub fn detect_flowar(src: &dyn WeightSource) -> Result<FlowArDims> {
    if src.shape("class_emb.weight").is_none() && src.shape("flownet.input_proj.weight").is_none() {
        return Err(layout(
            src,
            "not a FlowAR checkpoint: it has neither `class_emb.weight` nor `flownet.input_proj.weight`".into(),
        ));
    }
    let ce = need_rank(src, "class_emb.weight", 2, "[classes + 1, D]")?;
    let (rows, d) = (ce[0], ce[1]);
    if rows < 2 {
        return Err(layout(
            src,
            format!("`class_emb.weight` has {rows} rows; need classes plus a null row"),
        ));
    }
    let zp = need_rank(src, "z_proj.weight", 2, "[D, C]")?;
    if zp[0] != d {
        return Err(ExportError::Shape {
            origin: src.origin(),
            key: "z_proj.weight".into(),
            expected: vec![d, zp[1]],
            found: zp.clone(),
        });
    }
    let c = zp[1];
    let pos = need_rank(src, "encoder_pos_embed_learned", 3, "[1, L, D]")?;
    let total = pos[1];
    let scales = scales_from_total(total).ok_or_else(|| {
        layout(src, format!("position-embedding length {total} is not a sum of squares of 1, 2, 4, ... (e.g. 341 = 1+4+16+64+256)"))
    })?;
    let enc = count_indexed(src, "encoder_blocks", "attn.qkv.weight");
    let dec = count_indexed(src, "decoder_blocks", "attn.qkv.weight");
    if enc == 0 || dec == 0 {
        return Err(layout(
            src,
            format!("found {enc} encoder and {dec} decoder blocks; need at least one of each"),
        ));
    }
    let head_dim = match src.shape("encoder_blocks.0.attn.rope.freqs") {
        Some(f) if f.len() == 1 && f[0] > 0 => f[0] * 4,
        Some(f) => return Err(layout(src, format!("`encoder_blocks.0.attn.rope.freqs` has shape {f:?}, expected [head_dim/4]"))),
        None => released_head_dim(d).ok_or_else(|| ExportError::MissingKey {
            origin: src.origin(),
            key: "encoder_blocks.0.attn.rope.freqs".into(),
            expected: format!("[head_dim/4] (needed to find the head count of an AR width {d} that no released model has)"),
        })?,
    };
    if d % head_dim != 0 || head_dim % 4 != 0 {
        return Err(layout(
            src,
            format!("AR width {d} is not a multiple of head size {head_dim} (from rope.freqs)"),
        ));
    }
    let mlp = need_rank(src, "encoder_blocks.0.mlp.fc1_g.weight", 2, "[Hm, D]")?;
    let cache_layers = (0..enc)
        .map(|k| format!("encoder_blocks.{k}"))
        .chain((0..dec).map(|k| format!("decoder_blocks.{k}")))
        .collect();
    let ar = ArArch {
        width: d,
        encoder_depth: enc,
        decoder_depth: dec,
        heads: d / head_dim,
        head_dim,
        mlp_hidden: mlp[0],
        cache_layers,
    };

    let ip = need_rank(src, "flownet.input_proj.weight", 2, "[W, C]")?;
    let w = ip[0];
    if ip[1] != c {
        return Err(layout(
            src,
            format!(
                "`flownet.input_proj.weight` takes {} channels but `z_proj.weight` {c}",
                ip[1]
            ),
        ));
    }
    let depth = count_indexed(src, "flownet.res_blocks", "attn.qkv.weight");
    if depth == 0 {
        return Err(ExportError::MissingKey {
            origin: src.origin(),
            key: "flownet.res_blocks.0.attn.qkv.weight".into(),
            expected: format!("[{}, {w}]", 3 * w),
        });
    }
    let kind = if src.shape("flownet.res_blocks.0.ada_lin.weight").is_some() {
        FlowKind::Spatial
    } else if src
        .shape("flownet.res_blocks.0.crossattn.q.weight")
        .is_some()
    {
        FlowKind::Cross
    } else {
        return Err(layout(
            src,
            "flow head is neither spatial (`flownet.res_blocks.0.ada_lin.weight`) nor cross-attention (`flownet.res_blocks.0.crossattn.q.weight`)".into(),
        ));
    };
    if w % 64 != 0 {
        return Err(layout(
            src,
            format!("flow-head width {w} is not a multiple of its head size 64"),
        ));
    }
    let fmlp = need_rank(src, "flownet.res_blocks.0.mlp.fc1_g.weight", 2, "[Hm, W]")?;
    let flow = FlowArch {
        kind,
        width: w,
        depth,
        heads: w / 64,
        head_dim: 64,
        mlp_hidden: fmlp[0],
    };
    Ok(FlowArDims {
        ar,
        flow,
        scales,
        latent_channels: c,
        num_classes: rows - 1,
        total_tokens: total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_follow_powers_of_two() {
        assert_eq!(scales_from_total(341), Some(vec![1, 2, 4, 8, 16]));
        assert_eq!(scales_from_total(85), Some(vec![1, 2, 4, 8]));
        assert_eq!(scales_from_total(1), Some(vec![1]));
        assert_eq!(scales_from_total(340), None);
        assert_eq!(scales_from_total(0), Some(vec![]));
    }
}
