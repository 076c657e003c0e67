//! The flow-matching head: velocity `v = F(x, t, z)` for one ODE step.
//!
//! Inputs: `x [rows, tokens, C]`, `t [rows]` (float32 time in [0, 1]), `z [rows, tokens, D]`
//! (the AR condition), `rope_cos`/`rope_sin [tokens, 64]`. Output: `v [rows, tokens, C]`.

use super::{BuiltGraph, Io, ROWS, TOKENS};
use crate::arch::FlowArDims;
use crate::error::Result;
use crate::nn::{self, Mod::*, RopeTables};
use crate::onnx::{Dim, Elem, Graph, Val};
use crate::weights::Vb;
use flowar_format::io::flow_head as io;
use flowar_format::manifest::FlowKind;

/// Sinusoidal embedding of `trunc(t * 1000)`, then `mlp.2(silu(mlp.0(e)))`: `[rows, 1, W]`.
fn time_embed(g: &mut Graph, vb: &Vb, w: usize) -> Result<Val> {
    const HALF: usize = 128;
    let e = g.scoped(vb.prefix(), |g| {
        let thousand = g.scalar_f32(1000.0);
        let t = g.mul(io::T, &thousand);
        // Truncation toward zero, spec-safe in every engine: sign(t) * floor(|t|).
        let sign = g.unary("Sign", &t);
        let abs = g.unary("Abs", &t);
        let fl = g.unary("Floor", &abs);
        let tq = g.mul(&sign, &fl);
        let tq = g.unsqueeze(&tq, &[1]);
        // f_k = exp(-ln(10000) k / 128), computed in float32 as the reference does.
        let ln = -(10000f64.ln() as f32);
        let freqs: Vec<f32> = (0..HALF)
            .map(|k| ((ln * k as f32) / HALF as f32).exp())
            .collect();
        let f = g.const_f32(&[1, HALF], &freqs);
        let args = g.mul(&tq, &f);
        let cos = g.unary("Cos", &args);
        let sin = g.unary("Sin", &args);
        g.concat(&[&cos, &sin], 1)
    });
    // The sinusoid stays float32 (its arguments reach 1000); the MLP runs in the activation type.
    let e = g.scoped(vb.prefix(), |g| g.to_act(&e));
    let h = nn::linear(g, &vb.pp("mlp.0"), &e, 2 * HALF, w, true)?;
    let h = g.scoped(vb.prefix(), |g| g.silu(&h));
    let te = nn::linear(g, &vb.pp("mlp.2"), &h, w, w, true)?;
    Ok(g.scoped(vb.prefix(), |g| g.unsqueeze(&te, &[1])))
}

/// Self-attention over this scale's tokens (qkv without bias).
fn self_attention(
    g: &mut Graph,
    vb: &Vb,
    x: &str,
    w: usize,
    heads: usize,
    rope: &RopeTables,
) -> Result<Val> {
    let qkv = nn::linear(g, &vb.pp("qkv"), x, w, 3 * w, false)?;
    let o = g.scoped(vb.prefix(), |g| {
        let p = nn::split_heads(g, &qkv, 3, heads, 64);
        let q = rope.apply(g, &p[0]);
        let k = rope.apply(g, &p[1]);
        nn::attend(g, &q, &k, &p[2], 64, w)
    });
    nn::linear(g, &vb.pp("proj"), &o, w, w, true)
}

/// Cross-attention: queries from `q_in [rows, tokens, W]`, keys and values from `kv_in
/// [rows, tokens, D]`, RoPE on both over the same grid.
fn cross_attention(
    g: &mut Graph,
    vb: &Vb,
    q_in: &str,
    kv_in: &str,
    dims: &FlowArDims,
    rope: &RopeTables,
) -> Result<Val> {
    let (w, d, heads) = (dims.flow.width, dims.ar.width, dims.flow.heads);
    let q = nn::linear(g, &vb.pp("q"), q_in, w, w, false)?;
    let kv = nn::linear(g, &vb.pp("kv"), kv_in, d, 2 * w, false)?;
    let o = g.scoped(vb.prefix(), |g| {
        let q = nn::split_heads(g, &q, 1, heads, 64).remove(0);
        let kvp = nn::split_heads(g, &kv, 2, heads, 64);
        let q = rope.apply(g, &q);
        let k = rope.apply(g, &kvp[0]);
        nn::attend(g, &q, &k, &kvp[1], 64, w)
    });
    nn::linear(g, &vb.pp("proj"), &o, w, w, true)
}

/// `h + gate * f(norm(h) * (1 + scale) + shift)` for a sub-layer `f`, given `one_plus_scale`
/// (see [`nn::modulation`]).
fn gated<F>(
    g: &mut Graph,
    scope: &str,
    h: &str,
    gate: &str,
    one_plus_scale: &str,
    shift: &str,
    f: F,
) -> Result<Val>
where
    F: FnOnce(&mut Graph, &str) -> Result<Val>,
{
    let inp = g.scoped(scope, |g| {
        let n = nn::rms_norm(g, h, None);
        nn::modulate(g, &n, one_plus_scale, shift)
    });
    let out = f(g, &inp)?;
    Ok(g.scoped(scope, |g| {
        let y = g.mul(gate, &out);
        g.add(h, &y)
    }))
}

/// `quantize`: build the linears it chooses with int8 weights (float32 graphs only).
pub fn build(
    vb: &Vb,
    dims: &FlowArDims,
    precision: crate::precision::Precision,
    quantize: Option<crate::quantize::Quantize>,
    version: &str,
) -> Result<BuiltGraph> {
    let f = &dims.flow;
    let (w, c, d) = (f.width, dims.latent_channels, dims.ar.width);
    let vb = vb.pp("flownet");
    let mut g = Graph::with_precision("flowar_flow_head", precision.elem())
        .with_quantize(quantize)
        .with_bf16_products(precision.bf16_products());
    let inputs = vec![
        Io::new(
            io::X,
            Elem::F32,
            vec![Dim::Sym(ROWS), Dim::Sym(TOKENS), Dim::Fixed(c)],
        ),
        Io::new(io::T, Elem::F32, vec![Dim::Sym(ROWS)]),
        Io::new(
            io::Z,
            Elem::F32,
            vec![Dim::Sym(ROWS), Dim::Sym(TOKENS), Dim::Fixed(d)],
        ),
        Io::new(
            io::ROPE_COS,
            Elem::F32,
            vec![Dim::Sym(TOKENS), Dim::Fixed(f.head_dim)],
        ),
        Io::new(
            io::ROPE_SIN,
            Elem::F32,
            vec![Dim::Sym(TOKENS), Dim::Fixed(f.head_dim)],
        ),
    ];
    let outputs = vec![Io::new(
        io::V,
        Elem::F32,
        vec![Dim::Sym(ROWS), Dim::Sym(TOKENS), Dim::Fixed(c)],
    )];
    for io in &inputs {
        g.input(&io.name, io.elem, &io.dims);
    }
    let rope = RopeTables::new(&mut g, io::ROPE_COS.into(), io::ROPE_SIN.into(), f.head_dim);

    let te = time_embed(&mut g, &vb.pp("time_embed"), w)?;
    let x_in = g.to_act(io::X);
    let z_in = g.to_act(io::Z);
    let mut h = nn::linear(&mut g, &vb.pp("input_proj"), &x_in, c, w, true)?;
    let cond = nn::linear(&mut g, &vb.pp("cond_embed"), &z_in, d, w, true)?;
    // silu(c + te) feeds every spatial adaLN, the cross head's MLP adaLN and the final layer.
    let silu_ct = g.scoped("flownet", |g| {
        let s = g.add(&cond, &te);
        g.silu(&s)
    });
    let silu_t = g.scoped("flownet.time_embed", |g| g.silu(&te));

    for j in 0..f.depth {
        let bvb = vb.pp("res_blocks").pp(j);
        let scope = bvb.prefix().to_string();
        match f.kind {
            FlowKind::Spatial => {
                let m = nn::modulation(
                    &mut g,
                    &bvb.pp("ada_lin"),
                    &silu_ct,
                    w,
                    w,
                    &[Gate, Gate, Scale, Scale, Shift, Shift],
                )?;
                let avb = bvb.pp("attn");
                h = gated(&mut g, &scope, &h, &m[0], &m[2], &m[4], |g, x| {
                    self_attention(g, &avb, x, w, f.heads, &rope)
                })?;
                let mvb = bvb.pp("mlp");
                h = gated(&mut g, &scope, &h, &m[1], &m[3], &m[5], |g, x| {
                    nn::mlp(g, &mvb, x, w, f.mlp_hidden)
                })?;
            }
            FlowKind::Cross => {
                let gss = [Gate, Scale, Shift];
                let ma = nn::modulation(&mut g, &bvb.pp("ada_lin_attn"), &silu_t, w, w, &gss)?;
                let mm = nn::modulation(&mut g, &bvb.pp("ada_lin_mlp"), &silu_ct, w, w, &gss)?;
                let avb = bvb.pp("attn");
                h = gated(&mut g, &scope, &h, &ma[0], &ma[1], &ma[2], |g, x| {
                    self_attention(g, &avb, x, w, f.heads, &rope)
                })?;
                let qn = nn::rms_norm_weighted(&mut g, &bvb.pp("norm2_1"), &h, w)?;
                let kvn = nn::rms_norm_weighted(&mut g, &bvb.pp("norm2_2"), &z_in, d)?;
                let ca = cross_attention(&mut g, &bvb.pp("crossattn"), &qn, &kvn, dims, &rope)?;
                h = g.scoped(&scope, |g| g.add(&h, &ca));
                let mvb = bvb.pp("mlp");
                h = gated(&mut g, &scope, &h, &mm[0], &mm[1], &mm[2], |g, x| {
                    nn::mlp(g, &mvb, x, w, f.mlp_hidden)
                })?;
            }
        }
    }

    let fvb = vb.pp("final_layer");
    let m = nn::modulation(
        &mut g,
        &fvb.pp("adaLN_modulation.1"),
        &silu_ct,
        w,
        w,
        &[Shift, Scale],
    )?;
    let x = g.scoped(fvb.prefix(), |g| {
        let n = nn::rms_norm(g, &h, None);
        nn::modulate(g, &n, &m[1], &m[0])
    });
    let v = nn::linear(&mut g, &fvb.pp("linear"), &x, w, c, true)?;
    let v = g.to_f32(&v);
    g.output(&v, io::V, Elem::F32, &outputs[0].dims);
    let parameters = g.param_count();
    let int8_linears = g.quantized().to_vec();
    Ok(BuiltGraph {
        model: g.finish(
            "FlowAR flow-matching head: velocity v = F(x, t, z)",
            version,
        ),
        inputs,
        outputs,
        parameters,
        int8_linears,
        inference_precision: None,
    })
}
