//! The KL-VAE encoder: an image in [-1, 1] to the sampler's tokens, for editing. One walk
//! for both key layouts, which differ only in names (the table below):
//!
//! | part | LDM | diffusers |
//! |---|---|---|
//! | level `l`, ResNet `b` | `encoder.down.{l}.block.{b}` | `encoder.down_blocks.{l}.resnets.{b}` |
//! | level `l`, attention `b` | `encoder.down.{l}.attn.{b}` | `encoder.down_blocks.{l}.attentions.{b}` |
//! | downsampler | `encoder.down.{l}.downsample.conv` | `encoder.down_blocks.{l}.downsamplers.0.conv` |
//! | middle | `encoder.mid.{block_1,attn_1,block_2}` | `encoder.mid_block.{resnets.0,attentions.0,resnets.1}` |
//! | final norm | `encoder.norm_out` | `encoder.conv_norm_out` |
//!
//! then `encoder.conv_out` and `quant_conv` (where the VAE has one) in both. Of the
//! posterior's mean and log-variance the graph keeps the mean (the first `C` channels),
//! and computes the encode rule `tokens = (mean - latent_shift) * latent_scale` inside,
//! the inverse of the decoder's. It computes in float32 whatever the folder's dtype: the
//! editing fixtures hold its tokens to 2e-4 (docs/editing.md says why not 1e-4), which
//! float16 weights cannot meet.

use super::vae_blocks::{
    attn_block, diffusers_attn_names, mid_block, resnet_block, PartNames, DIFFUSERS_NAMES,
    LDM_NAMES,
};
use super::vae_decoder::LatentNorm;
use super::{BuiltGraph, Io};
use crate::arch::EncoderDims;
use crate::error::Result;
use crate::nn;
use crate::onnx::{Dim, Elem, Graph};
use crate::weights::Vb;
use flowar_format::io::vae_encoder as io;
use flowar_format::manifest::VaeLayout;

/// The encode rule in words, as the manifest and `convert` state it.
pub fn rule_text(norm: LatentNorm) -> String {
    format!(
        "tokens = (posterior mean - {}) * {}",
        norm.shift, norm.scale
    )
}

/// The encoder graph for `image [batch, 3, H, W]` with `H = grid * stride`.
#[allow(clippy::too_many_arguments)]
pub fn build(
    vb: &Vb,
    dims: &EncoderDims,
    vae_layout: VaeLayout,
    norm_groups: usize,
    grid: usize,
    stride: usize,
    norm: LatentNorm,
    version: &str,
) -> Result<BuiltGraph> {
    let a = &dims.arch;
    let c = dims.latent_channels;
    let size = grid * stride;
    let groups = norm_groups;
    let mut g = Graph::with_precision("flowar_vae_encoder", Elem::F32);
    let inputs = vec![Io::nchw(io::IMAGE, 3, size)];
    let outputs = vec![Io::nchw(io::TOKENS, c, grid), Io::nonfinite_probe()];
    for i in &inputs {
        g.input(&i.name, i.elem, &i.dims);
    }
    let evb = vb.pp("encoder");
    let (names, down, mid_parts, norm_out): (&PartNames, &str, [Vb; 3], &str) = match vae_layout {
        VaeLayout::Ldm => {
            let mid = evb.pp("mid");
            (
                &LDM_NAMES,
                "down",
                [mid.pp("block_1"), mid.pp("attn_1"), mid.pp("block_2")],
                "norm_out",
            )
        }
        VaeLayout::Diffusers => {
            let mid = evb.pp("mid_block");
            (
                &DIFFUSERS_NAMES,
                "down_blocks",
                [
                    mid.pp("resnets").pp(0),
                    mid.pp("attentions").pp(0),
                    mid.pp("resnets").pp(1),
                ],
                "conv_norm_out",
            )
        }
    };
    let attn_names = |attn: &Vb| match vae_layout {
        VaeLayout::Ldm => &LDM_NAMES,
        VaeLayout::Diffusers => diffusers_attn_names(attn),
    };
    let mut ch = dims.ch;
    let mut hw = size;
    let mut h = nn::conv2d(&mut g, &evb.pp("conv_in"), io::IMAGE, 3, ch, 3)?;
    let levels = a.level_channels.len();
    for (l, &cout) in a.level_channels.iter().enumerate() {
        let level = evb.pp(down).pp(l);
        let (blocks, attns) = match vae_layout {
            VaeLayout::Ldm => (level.pp("block"), level.pp("attn")),
            VaeLayout::Diffusers => (level.pp("resnets"), level.pp("attentions")),
        };
        for b in 0..a.num_res_blocks {
            h = resnet_block(&mut g, &blocks.pp(b), names, &h, (ch, cout), groups, hw)?;
            ch = cout;
            if a.attn_levels.contains(&l) {
                let attn = attns.pp(b);
                h = attn_block(&mut g, &attn, attn_names(&attn), &h, ch, groups, hw)?;
            }
        }
        if l + 1 < levels {
            let conv = match vae_layout {
                VaeLayout::Ldm => level.pp("downsample").pp("conv"),
                VaeLayout::Diffusers => level.pp("downsamplers").pp(0).pp("conv"),
            };
            h = nn::conv2d_down(&mut g, &conv, &h, ch)?;
            hw /= 2;
        }
    }
    let mid_attn_names = attn_names(&mid_parts[1]);
    h = mid_block(
        &mut g,
        mid_parts,
        names,
        mid_attn_names,
        a.mid_attention,
        &h,
        ch,
        groups,
        hw,
    )?;
    let nvb = evb.pp(norm_out);
    h = nn::group_norm(&mut g, &nvb, &h, ch, groups, (hw, hw))?;
    h = g.scoped(nvb.prefix(), |g| g.silu(&h));
    let mut moments = nn::conv2d(&mut g, &evb.pp("conv_out"), &h, ch, dims.conv_out, 3)?;
    if a.quant_conv {
        let qc = dims.conv_out;
        moments = nn::conv2d(&mut g, &vb.pp("quant_conv"), &moments, qc, qc, 1)?;
    }
    let tokens = g.scoped("latent_scale", |g| {
        let mean = if a.double_z {
            let c = c as i64;
            g.split(&moments, &[c, c], 1).swap_remove(0)
        } else {
            moments
        };
        let mean = if norm.shift != 0.0 {
            let shift = g.scalar_f32(norm.shift as f32);
            g.sub(&mean, &shift)
        } else {
            mean
        };
        let s = g.scalar_f32(norm.scale as f32);
        g.mul(&mean, &s)
    });
    g.output(&tokens, io::TOKENS, Elem::F32, &outputs[0].dims);
    let probe = g
        .scoped("nonfinite_probe", |g| g.probe_sum())
        .expect("the encoder's ResNet blocks probe");
    g.output(&probe, io::NONFINITE, Elem::F32, &[Dim::Fixed(1)]);
    let parameters = g.param_count();
    let doc = format!(
        "KL-VAE encoder ({} layout); {}",
        vae_layout.name(),
        rule_text(norm)
    );
    Ok(BuiltGraph {
        model: g.finish(&doc, version),
        inputs,
        outputs,
        parameters,
        int8_linears: Vec::new(),
        // Named, so an engine asked for bfloat16 elsewhere keeps this graph in float32.
        inference_precision: Some("f32"),
    })
}
