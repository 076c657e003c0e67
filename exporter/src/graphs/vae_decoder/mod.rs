//! The KL-VAE decoder: latents to an image in about [-1, 1], from weights in either key
//! layout ([`ldm`] or [`diffusers`]: one network, two namings, each walked by its own module
//! so a checkpoint key leads to the code that reads it).
//!
//! Input: `latent [batch, C, G, G]` exactly as sampled; the decode rule
//! `latent / latent_scale + latent_shift` runs inside this graph, then `post_quant_conv`
//! where the VAE has one. Outputs: `image [batch, 3, G*stride, G*stride]`, unclamped, and
//! `nonfinite_probe` (see `flowar_format::io::NONFINITE_PROBE`).

mod diffusers;
mod ldm;

use super::{BuiltGraph, Io};
use crate::arch::VaeDims;
use crate::error::Result;
use crate::nn;
use crate::onnx::{Dim, Elem, Graph, Val};
use crate::weights::Vb;
use flowar_format::io::vae_decoder as io;
use flowar_format::manifest::VaeLayout;

/// How the latents are brought back to the VAE's own scale before decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatentNorm {
    /// Tokens are divided by this (kl16: 0.2325; SD: 0.18215; FLUX: 0.3611).
    pub scale: f64,
    /// Then this is added (FLUX: 0.1159; 0 for kl16 and SD).
    pub shift: f64,
}

/// Nearest 2x upsampling, then the upsampler's 3x3 `conv`.
pub(crate) fn upsample(g: &mut Graph, vb: &Vb, x: &str, ch: usize) -> Result<Val> {
    let h = g.scoped(vb.prefix(), |g| nn::upsample_nearest2x(g, x));
    nn::conv2d(g, &vb.pp("conv"), &h, ch, ch, 3)
}

/// `conv_out(swish(GN(x)))` with the layout's name of the final norm.
pub(crate) fn output(
    g: &mut Graph,
    dvb: &Vb,
    norm_out: &str,
    x: &str,
    ch: usize,
    groups: usize,
    hw: usize,
) -> Result<Val> {
    let norm = dvb.pp(norm_out);
    let h = nn::group_norm(g, &norm, x, ch, groups, (hw, hw))?;
    let h = g.scoped(norm.prefix(), |g| g.silu(&h));
    nn::conv2d(g, &dvb.pp("conv_out"), &h, ch, 3, 3)
}

pub fn build(
    vb: &Vb,
    dims: &VaeDims,
    grid: usize,
    norm: LatentNorm,
    precision: crate::precision::Precision,
    version: &str,
) -> Result<BuiltGraph> {
    let a = &dims.arch;
    let c = dims.latent_channels;
    let image = grid * a.stride;
    let mut g = Graph::with_precision("flowar_vae_decoder", precision.elem());
    let inputs = vec![Io::nchw(io::LATENT, c, grid)];
    let outputs = vec![Io::nchw(io::IMAGE, 3, image), Io::nonfinite_probe()];
    for io in &inputs {
        g.input(&io.name, io.elem, &io.dims);
    }
    let x = g.scoped("latent_scale", |g| {
        let s = g.scalar_f32(norm.scale as f32);
        let x = g.div(io::LATENT, &s);
        let x = if norm.shift != 0.0 {
            let shift = g.scalar_f32(norm.shift as f32);
            g.add(&x, &shift)
        } else {
            x
        };
        g.to_act(&x)
    });
    let x = if a.post_quant_conv {
        nn::conv2d(&mut g, &vb.pp("post_quant_conv"), &x, c, a.z_channels, 1)?
    } else {
        x
    };
    let dvb = vb.pp("decoder");
    // `decoder.conv_in` has the same key in both layouts.
    let top = dims.level_channels[dims.level_channels.len() - 1];
    let h = nn::conv2d(&mut g, &dvb.pp("conv_in"), &x, a.z_channels, top, 3)?;
    g.scoped("decoder.conv_in", |g| g.probe(&h));
    let img = match a.layout {
        VaeLayout::Ldm => ldm::decoder(&mut g, &dvb, dims, &h, grid)?,
        VaeLayout::Diffusers => diffusers::decoder(&mut g, &dvb, dims, &h, grid)?,
    };
    let img = g.to_f32(&img);
    g.output(&img, io::IMAGE, Elem::F32, &outputs[0].dims);
    let probe = g
        .scoped("nonfinite_probe", |g| g.probe_sum())
        .expect("the decoder's ResNet blocks probe");
    g.output(&probe, io::NONFINITE, Elem::F32, &[Dim::Fixed(1)]);
    let parameters = g.param_count();
    let doc = format!(
        "KL-VAE decoder ({} layout); computes latent / {} + {} first",
        a.layout.name(),
        norm.scale,
        norm.shift
    );
    Ok(BuiltGraph {
        model: g.finish(&doc, version),
        inputs,
        outputs,
        parameters,
        int8_linears: Vec::new(),
        inference_precision: precision.vae_inference_precision(),
    })
}
