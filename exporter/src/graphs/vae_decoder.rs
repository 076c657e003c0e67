//! The KL-VAE decoder (LDM AutoencoderKL layout): latents to an image in about [-1, 1].
//!
//! Input: `latent [batch, C, G, G]` exactly as sampled (the division by the latent scale
//! happens inside this graph). Output: `image [batch, 3, G*stride, G*stride]`, unclamped.

use super::{BuiltGraph, Io, BATCH};
use crate::arch::VaeDims;
use crate::error::Result;
use crate::nn;
use crate::onnx::{Dim, Elem, Graph, Val};
use crate::weights::Vb;
use flowar_format::io::vae_decoder as io;

/// `x + conv2(swish(GN(conv1(swish(GN(x))))))`, with a 1x1 `nin_shortcut` when channels change.
fn resnet_block(
    g: &mut Graph,
    vb: &Vb,
    x: &str,
    cin: usize,
    cout: usize,
    hw: usize,
) -> Result<Val> {
    let h = nn::group_norm(g, &vb.pp("norm1"), x, cin, hw, hw)?;
    let h = g.scoped(vb.prefix(), |g| g.silu(&h));
    let h = nn::conv2d(g, &vb.pp("conv1"), &h, cin, cout, 3)?;
    let h = nn::group_norm(g, &vb.pp("norm2"), &h, cout, hw, hw)?;
    let h = g.scoped(vb.prefix(), |g| g.silu(&h));
    let h = nn::conv2d(g, &vb.pp("conv2"), &h, cout, cout, 3)?;
    let skip = if cin != cout {
        nn::conv2d(g, &vb.pp("nin_shortcut"), x, cin, cout, 1)?
    } else {
        x.to_string()
    };
    Ok(g.scoped(vb.prefix(), |g| g.add(&skip, &h)))
}

/// Single-head spatial self-attention over the `hw*hw` positions, with a residual.
fn attn_block(g: &mut Graph, vb: &Vb, x: &str, ch: usize, hw: usize) -> Result<Val> {
    let h = nn::group_norm(g, &vb.pp("norm"), x, ch, hw, hw)?;
    let q = nn::conv2d(g, &vb.pp("q"), &h, ch, ch, 1)?;
    let k = nn::conv2d(g, &vb.pp("k"), &h, ch, ch, 1)?;
    let v = nn::conv2d(g, &vb.pp("v"), &h, ch, ch, 1)?;
    let o = g.scoped(vb.prefix(), |g| {
        let n = (hw * hw) as i64;
        let q = g.reshape(&q, &[0, ch as i64, n]);
        let q = g.transpose(&q, &[0, 2, 1]);
        let k = g.reshape(&k, &[0, ch as i64, n]);
        let s = g.matmul(&q, &k);
        let s = g.to_f32(&s);
        let scale = g.scalar_f32((ch as f32).powf(-0.5));
        let s = g.mul(&s, &scale);
        let p = g.softmax(&s, 2);
        let p = g.to_act(&p);
        let v = g.reshape(&v, &[0, ch as i64, n]);
        let pt = g.transpose(&p, &[0, 2, 1]);
        let o = g.matmul(&v, &pt);
        g.reshape(&o, &[0, ch as i64, hw as i64, hw as i64])
    });
    let o = nn::conv2d(g, &vb.pp("proj_out"), &o, ch, ch, 1)?;
    Ok(g.scoped(vb.prefix(), |g| g.add(x, &o)))
}

pub fn build(
    vb: &Vb,
    dims: &VaeDims,
    grid: usize,
    latent_scale: f64,
    precision: crate::precision::Precision,
    version: &str,
) -> Result<BuiltGraph> {
    let a = &dims.arch;
    let c = dims.latent_channels;
    let levels = dims.level_channels.len();
    let image = grid * a.stride;
    let mut g = Graph::with_precision("flowar_vae_decoder", precision.elem());
    let inputs = vec![Io::new(
        io::LATENT,
        Elem::F32,
        vec![
            Dim::Sym(BATCH),
            Dim::Fixed(c),
            Dim::Fixed(grid),
            Dim::Fixed(grid),
        ],
    )];
    let outputs = vec![Io::new(
        io::IMAGE,
        Elem::F32,
        vec![
            Dim::Sym(BATCH),
            Dim::Fixed(3),
            Dim::Fixed(image),
            Dim::Fixed(image),
        ],
    )];
    for io in &inputs {
        g.input(&io.name, io.elem, &io.dims);
    }
    let x = g.scoped("latent_scale", |g| {
        let s = g.scalar_f32(latent_scale as f32);
        let x = g.div(io::LATENT, &s);
        g.to_act(&x)
    });
    let x = nn::conv2d(&mut g, &vb.pp("post_quant_conv"), &x, c, a.z_channels, 1)?;
    let dvb = vb.pp("decoder");
    let mut ch = dims.level_channels[levels - 1];
    let mut hw = grid;
    let mut h = nn::conv2d(&mut g, &dvb.pp("conv_in"), &x, a.z_channels, ch, 3)?;
    let mid = dvb.pp("mid");
    h = resnet_block(&mut g, &mid.pp("block_1"), &h, ch, ch, hw)?;
    h = attn_block(&mut g, &mid.pp("attn_1"), &h, ch, hw)?;
    h = resnet_block(&mut g, &mid.pp("block_2"), &h, ch, ch, hw)?;
    for l in (0..levels).rev() {
        let up = dvb.pp("up").pp(l);
        let cout = dims.level_channels[l];
        for b in 0..=a.num_res_blocks {
            h = resnet_block(&mut g, &up.pp("block").pp(b), &h, ch, cout, hw)?;
            ch = cout;
            if a.attn_levels.contains(&l) {
                h = attn_block(&mut g, &up.pp("attn").pp(b), &h, ch, hw)?;
            }
        }
        if l != 0 {
            let uvb = up.pp("upsample");
            h = g.scoped(uvb.prefix(), |g| nn::upsample_nearest2x(g, &h));
            hw *= 2;
            h = nn::conv2d(&mut g, &uvb.pp("conv"), &h, ch, ch, 3)?;
        }
    }
    h = nn::group_norm(&mut g, &dvb.pp("norm_out"), &h, ch, hw, hw)?;
    h = g.scoped("decoder.norm_out", |g| g.silu(&h));
    let img = nn::conv2d(&mut g, &dvb.pp("conv_out"), &h, ch, 3, 3)?;
    let img = g.to_f32(&img);
    g.output(&img, io::IMAGE, Elem::F32, &outputs[0].dims);
    let parameters = g.param_count();
    Ok(BuiltGraph {
        model: g.finish(
            "KL-VAE decoder (LDM layout); divides by the latent scale first",
            version,
        ),
        inputs,
        outputs,
        parameters,
        int8_linears: Vec::new(),
        inference_precision: precision.vae_inference_precision(),
    })
}
