//! The building blocks the KL-VAE's encoder and decoder share (ResNet block, single-head
//! attention block, the middle block), and the names each key layout gives their parts.

use crate::error::Result;
use crate::nn;
use crate::onnx::{Graph, Val};
use crate::weights::Vb;

/// The names one layout gives a ResNet block's 1x1 shortcut and an attention block's parts.
pub(crate) struct PartNames {
    pub shortcut: &'static str,
    pub attn_norm: &'static str,
    /// Query, key, value and output projections.
    pub attn_proj: [&'static str; 4],
}

/// `x + conv2(swish(GN(conv1(swish(GN(x))))))`, with a 1x1 shortcut when channels change.
pub(crate) fn resnet_block(
    g: &mut Graph,
    vb: &Vb,
    names: &PartNames,
    x: &str,
    (cin, cout): (usize, usize),
    groups: usize,
    hw: usize,
) -> Result<Val> {
    let h = nn::group_norm(g, &vb.pp("norm1"), x, cin, groups, (hw, hw))?;
    let h = g.scoped(vb.prefix(), |g| g.silu(&h));
    let h = nn::conv2d(g, &vb.pp("conv1"), &h, cin, cout, 3)?;
    let h = nn::group_norm(g, &vb.pp("norm2"), &h, cout, groups, (hw, hw))?;
    let h = g.scoped(vb.prefix(), |g| g.silu(&h));
    let h = nn::conv2d(g, &vb.pp("conv2"), &h, cout, cout, 3)?;
    let skip = if cin != cout {
        nn::conv2d(g, &vb.pp(names.shortcut), x, cin, cout, 1)?
    } else {
        x.to_string()
    };
    let out = g.scoped(vb.prefix(), |g| g.add(&skip, &h));
    g.scoped(vb.prefix(), |g| g.probe(&out));
    Ok(out)
}

/// Single-head self-attention over the `hw*hw` positions (scale `ch^-0.5`), with a residual.
pub(crate) fn attn_block(
    g: &mut Graph,
    vb: &Vb,
    names: &PartNames,
    x: &str,
    ch: usize,
    groups: usize,
    hw: usize,
) -> Result<Val> {
    let h = nn::group_norm(g, &vb.pp(names.attn_norm), x, ch, groups, (hw, hw))?;
    let [q, k, v, out] = names.attn_proj;
    let q = nn::conv1x1_or_linear(g, &vb.pp(q), &h, ch, ch)?;
    let k = nn::conv1x1_or_linear(g, &vb.pp(k), &h, ch, ch)?;
    let v = nn::conv1x1_or_linear(g, &vb.pp(v), &h, ch, ch)?;
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
    let o = nn::conv1x1_or_linear(g, &vb.pp(out), &o, ch, ch)?;
    Ok(g.scoped(vb.prefix(), |g| g.add(x, &o)))
}

/// The latent-diffusion layout: `nin_shortcut`, attention `norm` / `q` / `k` / `v` / `proj_out`.
pub(crate) const LDM_NAMES: PartNames = PartNames {
    shortcut: "nin_shortcut",
    attn_norm: "norm",
    attn_proj: ["q", "k", "v", "proj_out"],
};

/// diffusers' layout: `conv_shortcut`, attention `group_norm` / `to_q` / `to_k` / `to_v` /
/// `to_out.0` as linears.
pub(crate) const DIFFUSERS_NAMES: PartNames = PartNames {
    shortcut: "conv_shortcut",
    attn_norm: "group_norm",
    attn_proj: ["to_q", "to_k", "to_v", "to_out.0"],
};

/// The attention names of diffusers checkpoints saved before diffusers 0.14.
const DIFFUSERS_LEGACY_NAMES: PartNames = PartNames {
    shortcut: "conv_shortcut",
    attn_norm: "group_norm",
    attn_proj: ["query", "key", "value", "proj_attn"],
};

/// The names a diffusers attention block at `attn` was saved with.
pub(crate) fn diffusers_attn_names(attn: &Vb) -> &'static PartNames {
    if attn.has("query.weight") && !attn.has("to_q.weight") {
        &DIFFUSERS_LEGACY_NAMES
    } else {
        &DIFFUSERS_NAMES
    }
}

/// The middle block at `ch` channels: ResNet, attention when the VAE has it, ResNet. The
/// layout names the three parts (`block_1` / `attn_1` / `block_2`, or `resnets.0` /
/// `attentions.0` / `resnets.1`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn mid_block(
    g: &mut Graph,
    parts: [Vb; 3],
    names: &PartNames,
    attn_names: &PartNames,
    attention: bool,
    x: &str,
    ch: usize,
    groups: usize,
    hw: usize,
) -> Result<Val> {
    let [first, attn, second] = parts;
    let mut h = resnet_block(g, &first, names, x, (ch, ch), groups, hw)?;
    if attention {
        h = attn_block(g, &attn, attn_names, &h, ch, groups, hw)?;
    }
    resnet_block(g, &second, names, &h, (ch, ch), groups, hw)
}
