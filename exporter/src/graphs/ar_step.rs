//! The AR transformer, one scale per call, with an explicit KV cache.
//!
//! Inputs: `labels [rows] i64` (class ids, the null class on CFG rows), `tokens [rows,
//! tokens, C]` (the upsampled previous scale; ignored when `first_scale`), `first_scale []
//! bool`, `positions [tokens] i64` (global token indices `start_i..start_i+N_i`),
//! `rope_cos`/`rope_sin [tokens, hd]`, and `past_key.{layer}`/`past_value.{layer}`
//! `[rows, heads, past_tokens, hd]` per block. Outputs: `z [rows, tokens, D]` and
//! `present_key.{layer}`/`present_value.{layer}` with this scale's keys appended.

use super::{BuiltGraph, Io, PAST, ROWS, TOKENS, TOTAL};
use crate::arch::FlowArDims;
use crate::error::Result;
use crate::nn::{self, Mod::*, RopeTables};
use crate::onnx::{Dim, Elem, Graph, Val};
use crate::weights::Vb;
use flowar_format::io::ar_step as io;

/// `h += g1*attn(rmsnorm(h)*(1+s1)+b1); h += g2*mlp(rmsnorm(h)*(1+s2)+b2)`, with this
/// block's keys and values appended to its cache.
fn block(
    g: &mut Graph,
    vb: &Vb,
    dims: &FlowArDims,
    h: &str,
    silu_c: &str,
    rope: &RopeTables,
    past: (&str, &str),
) -> Result<(Val, Val, Val)> {
    let a = &dims.ar;
    let d = a.width;
    let chunks = [Gate, Gate, Scale, Scale, Shift, Shift];
    let mods = nn::modulation(g, &vb.pp("ada_lin.1"), silu_c, d, d, &chunks)?;
    let mods: Vec<Val> = g.scoped(vb.prefix(), |g| {
        mods.iter().map(|m| g.unsqueeze(m, &[1])).collect()
    });
    let (g1, g2, s1, s2, b1, b2) = (&mods[0], &mods[1], &mods[2], &mods[3], &mods[4], &mods[5]);

    let attn_in = g.scoped(vb.prefix(), |g| {
        let n = nn::rms_norm(g, h, None);
        nn::modulate(g, &n, s1, b1)
    });
    let avb = vb.pp("attn");
    let qkv = nn::linear(g, &avb.pp("qkv"), &attn_in, d, 3 * d, true)?;
    let (attn_out, k_all, v_all) = g.scoped(avb.prefix(), |g| {
        let parts = nn::split_heads(g, &qkv, 3, a.heads, a.head_dim);
        let q = rope.apply(g, &parts[0]);
        let k = rope.apply(g, &parts[1]);
        let (pk, pv) = (g.to_act(past.0), g.to_act(past.1));
        let k_all = g.concat(&[&pk, &k], 2);
        let v_all = g.concat(&[&pv, &parts[2]], 2);
        (
            nn::attend(g, &q, &k_all, &v_all, a.head_dim, d),
            k_all,
            v_all,
        )
    });
    let proj = nn::linear(g, &avb.pp("proj"), &attn_out, d, d, true)?;
    let h = g.scoped(vb.prefix(), |g| {
        let gated = g.mul(g1, &proj);
        g.add(h, &gated)
    });
    let mlp_in = g.scoped(vb.prefix(), |g| {
        let n = nn::rms_norm(g, &h, None);
        nn::modulate(g, &n, s2, b2)
    });
    let m = nn::mlp(g, &vb.pp("mlp"), &mlp_in, d, a.mlp_hidden)?;
    let h = g.scoped(vb.prefix(), |g| {
        let gated = g.mul(g2, &m);
        g.add(&h, &gated)
    });
    Ok((h, k_all, v_all))
}

/// Adds `table[positions]` (a `[1, L, D]` position embedding) to `h`.
fn add_positions(
    g: &mut Graph,
    vb: &Vb,
    key: &str,
    h: &str,
    positions: &str,
    dims: &FlowArDims,
) -> Result<Val> {
    let (l, d) = (dims.total_tokens, dims.ar.width);
    let table = vb.get(key, &[1, l, d])?;
    Ok(g.scoped(key, |g| {
        let t = g.weight(key, &[l, d], &table, "stored as [L, D]");
        let rows = g.node(
            "Gather",
            &[&t, positions],
            vec![crate::onnx::builder::attr_int("axis", 0)],
        );
        g.add(h, &rows)
    }))
}

pub fn build(
    vb: &Vb,
    dims: &FlowArDims,
    precision: crate::precision::Precision,
    quantize: Option<crate::quantize::Quantize>,
    version: &str,
) -> Result<BuiltGraph> {
    let a = &dims.ar;
    let (d, c, hd) = (a.width, dims.latent_channels, a.head_dim);
    let mut g = Graph::with_precision("flowar_ar_step", precision.elem())
        .with_quantize(quantize)
        .with_bf16_products(precision.bf16_products());
    let cache_dims = |tok: &'static str| {
        vec![
            Dim::Sym(ROWS),
            Dim::Fixed(a.heads),
            Dim::Sym(tok),
            Dim::Fixed(hd),
        ]
    };
    let mut inputs = vec![
        Io::new(io::LABELS, Elem::I64, vec![Dim::Sym(ROWS)]),
        Io::new(
            io::TOKENS,
            Elem::F32,
            vec![Dim::Sym(ROWS), Dim::Sym(TOKENS), Dim::Fixed(c)],
        ),
        Io::new(io::FIRST_SCALE, Elem::Bool, vec![]),
        Io::new(io::POSITIONS, Elem::I64, vec![Dim::Sym(TOKENS)]),
        Io::new(
            io::ROPE_COS,
            Elem::F32,
            vec![Dim::Sym(TOKENS), Dim::Fixed(hd)],
        ),
        Io::new(
            io::ROPE_SIN,
            Elem::F32,
            vec![Dim::Sym(TOKENS), Dim::Fixed(hd)],
        ),
    ];
    let mut outputs = vec![Io::new(
        io::Z,
        Elem::F32,
        vec![Dim::Sym(ROWS), Dim::Sym(TOKENS), Dim::Fixed(d)],
    )];
    for layer in &a.cache_layers {
        inputs.push(Io::new(io::past_key(layer), Elem::F32, cache_dims(PAST)));
        inputs.push(Io::new(io::past_value(layer), Elem::F32, cache_dims(PAST)));
        outputs.push(Io::new(
            io::present_key(layer),
            Elem::F32,
            cache_dims(TOTAL),
        ));
        outputs.push(Io::new(
            io::present_value(layer),
            Elem::F32,
            cache_dims(TOTAL),
        ));
    }
    for io in &inputs {
        g.input(&io.name, io.elem, &io.dims);
    }
    let rope = RopeTables::new(&mut g, io::ROPE_COS.into(), io::ROPE_SIN.into(), hd);

    // Class condition c [rows, D] and the scale's input x [rows, tokens, D].
    let ce = vb.get("class_emb.weight", &[dims.num_classes + 1, d])?;
    let (class_c, silu_c) = g.scoped("class_emb", |g| {
        let t = g.weight("class_emb.weight", &[dims.num_classes + 1, d], &ce, "");
        let c = g.node(
            "Gather",
            &[&t, io::LABELS],
            vec![crate::onnx::builder::attr_int("axis", 0)],
        );
        let s = g.silu(&c);
        (c, s)
    });
    drop(ce);
    let projected = {
        let tokens = g.to_act(io::TOKENS);
        nn::linear(&mut g, &vb.pp("z_proj"), &tokens, c, d, true)?
    };
    let x = g.scoped("z_proj", |g| {
        let c3 = g.unsqueeze(&class_c, &[1]);
        g.node("Where", &[io::FIRST_SCALE, &c3, &projected], vec![])
    });

    // Encoder.
    let h = add_positions(
        &mut g,
        vb,
        "encoder_pos_embed_learned",
        &x,
        io::POSITIONS,
        dims,
    )?;
    let mut h = nn::rms_norm_weighted(&mut g, &vb.pp("z_proj_ln"), &h, d)?;
    let mut layer = 0;
    let mut presents = Vec::new();
    for k in 0..a.encoder_depth {
        let (pk, pv) = (
            io::past_key(&a.cache_layers[layer]),
            io::past_value(&a.cache_layers[layer]),
        );
        let (nh, ka, va) = block(
            &mut g,
            &vb.pp("encoder_blocks").pp(k),
            dims,
            &h,
            &silu_c,
            &rope,
            (&pk, &pv),
        )?;
        h = nh;
        presents.push((ka, va));
        layer += 1;
    }
    let h = nn::rms_norm_weighted(&mut g, &vb.pp("encoder_norm"), &h, d)?;
    // Decoder.
    let h = nn::linear(&mut g, &vb.pp("decoder_embed"), &h, d, d, true)?;
    let mut h = add_positions(
        &mut g,
        vb,
        "decoder_pos_embed_learned",
        &h,
        io::POSITIONS,
        dims,
    )?;
    for k in 0..a.decoder_depth {
        let (pk, pv) = (
            io::past_key(&a.cache_layers[layer]),
            io::past_value(&a.cache_layers[layer]),
        );
        let (nh, ka, va) = block(
            &mut g,
            &vb.pp("decoder_blocks").pp(k),
            dims,
            &h,
            &silu_c,
            &rope,
            (&pk, &pv),
        )?;
        h = nh;
        presents.push((ka, va));
        layer += 1;
    }
    let h = nn::rms_norm_weighted(&mut g, &vb.pp("decoder_norm"), &h, d)?;
    let z = add_positions(
        &mut g,
        vb,
        "diffusion_pos_embed_learned",
        &h,
        io::POSITIONS,
        dims,
    )?;

    let z = g.to_f32(&z);
    g.output(&z, io::Z, Elem::F32, &outputs[0].dims);
    for (i, (ka, va)) in presents.iter().enumerate() {
        let ko = &outputs[1 + 2 * i];
        let ka = g.to_f32(ka);
        g.output(&ka, &ko.name, ko.elem, &ko.dims);
        let vo = &outputs[2 + 2 * i];
        let va = g.to_f32(va);
        g.output(&va, &vo.name, vo.elem, &vo.dims);
    }
    let parameters = g.param_count();
    let int8_linears = g.quantized().to_vec();
    Ok(BuiltGraph {
        model: g.finish(
            "FlowAR AR transformer: one scale step with an explicit KV cache",
            version,
        ),
        inputs,
        outputs,
        parameters,
        int8_linears,
        inference_precision: None,
    })
}
