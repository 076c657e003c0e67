//! Analytic FLOP counts of one generation, computed from a model's manifest.
//!
//! Counts the multiply-adds (2 FLOPs each) of every matrix product, attention product and
//! convolution the exported graphs perform, with the rows the sampler actually runs: AR
//! steps on `2b` rows when CFG is on; each flow-head call on `2b` rows when that step is
//! guided (`w > 1` and `t <= guidance`) and on `b` rows otherwise; two calls per step for
//! Heun. Element-wise ops, norms and softmax are left out (a few percent at most), so the
//! figure is a lower bound of the work done: the achieved GFLOP/s derived from it is
//! conservative.

use flowar_runtime::manifest::{FlowKind, Manifest};
use flowar_runtime::sampler::schedule::{cfg_at_scale, guided, time_grid};
use flowar_runtime::Solver;

/// FLOPs of one generation of `batch` images, per stage.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct FlopCount {
    /// AR transformer, per scale (coarse to fine).
    pub ar_per_scale: Vec<f64>,
    /// Flow head, all calls of a scale, per scale.
    pub flow_per_scale: Vec<f64>,
    /// Flow-head calls per scale.
    pub flow_calls_per_scale: Vec<usize>,
    /// Of those, the calls on guided (doubled) rows.
    pub guided_calls_per_scale: Vec<usize>,
    pub vae: f64,
}

impl FlopCount {
    pub fn ar(&self) -> f64 {
        self.ar_per_scale.iter().sum()
    }
    pub fn flow(&self) -> f64 {
        self.flow_per_scale.iter().sum()
    }
    pub fn total(&self) -> f64 {
        self.ar() + self.flow() + self.vae
    }

    /// The same generation with the flow head skipped at `scales` (an edit's scales with
    /// nothing to regenerate: the sampler runs their AR step but no flow-head call).
    pub fn without_flow_at(mut self, scales: &[usize]) -> FlopCount {
        for &k in scales {
            self.flow_per_scale[k] = 0.0;
            self.flow_calls_per_scale[k] = 0;
            self.guided_calls_per_scale[k] = 0;
        }
        self
    }
}

/// One AR step at a scale of `n` tokens after `past` cached tokens, on `rows` rows.
pub fn ar_step_flops(m: &Manifest, rows: usize, n: usize, past: usize) -> f64 {
    let a = &m.architecture.ar;
    let (r, n, d, h, c) = (
        rows as f64,
        n as f64,
        a.width as f64,
        a.mlp_hidden as f64,
        m.latent_channels as f64,
    );
    let keys = past as f64 + n;
    let block = 2.0 * r * d * 6.0 * d // adaLN from the class condition, per row
        + 2.0 * r * n * d * 3.0 * d // qkv
        + 4.0 * r * n * keys * d // q k^T and attn v over the cache
        + 2.0 * r * n * d * d // proj
        + 6.0 * r * n * d * h; // SwiGLU: fc1_g, fc1_x, fc2
    let blocks = (a.encoder_depth + a.decoder_depth) as f64;
    2.0 * r * n * c * d // z_proj
        + 2.0 * r * n * d * d // decoder_embed
        + blocks * block
}

/// One flow-head call on `rows` rows of `n` tokens.
pub fn flow_call_flops(m: &Manifest, rows: usize, n: usize) -> f64 {
    let f = &m.architecture.flow;
    let (r, n, w, hm, d, c) = (
        rows as f64,
        n as f64,
        f.width as f64,
        f.mlp_hidden as f64,
        m.architecture.ar.width as f64,
        m.latent_channels as f64,
    );
    let self_attn = 2.0 * r * n * w * 3.0 * w + 4.0 * r * n * n * w + 2.0 * r * n * w * w;
    let mlp = 6.0 * r * n * w * hm;
    let block = match f.kind {
        FlowKind::Spatial => 2.0 * r * n * w * 6.0 * w + self_attn + mlp,
        FlowKind::Cross => {
            2.0 * r * w * 3.0 * w // adaLN (attention) from time, per row
                + 2.0 * r * n * w * 3.0 * w // adaLN (MLP) from time + condition, per token
                + self_attn
                + 2.0 * r * n * w * w // cross q
                + 2.0 * r * n * d * 2.0 * w // cross kv from z
                + 4.0 * r * n * n * w // attention over the condition tokens
                + 2.0 * r * n * w * w // cross proj
                + mlp
        }
    };
    2.0 * r * (256.0 * w + w * w) // time embedding
        + 2.0 * r * n * c * w // input_proj
        + 2.0 * r * n * d * w // cond_embed
        + f.depth as f64 * block
        + 2.0 * r * n * w * 2.0 * w // final adaLN
        + 2.0 * r * n * w * c // final linear
}

/// The VAE decoder on `batch` latents.
pub fn vae_flops(m: &Manifest, batch: usize) -> f64 {
    let v = &m.architecture.vae;
    let conv = |side: usize, cin: usize, cout: usize, k: usize| {
        2.0 * (side * side) as f64 * (cin * cout * k * k) as f64
    };
    let resnet = |side: usize, cin: usize, cout: usize| {
        conv(side, cin, cout, 3)
            + conv(side, cout, cout, 3)
            + if cin != cout {
                conv(side, cin, cout, 1)
            } else {
                0.0
            }
    };
    let attn = |side: usize, ch: usize| {
        let hw = (side * side) as f64;
        4.0 * conv(side, ch, ch, 1) + 4.0 * hw * hw * ch as f64
    };
    let levels = v.ch_mult.len();
    let mut side = m.final_grid();
    let mut ch = v.ch * v.ch_mult[levels - 1];
    let post_quant_conv = match v.post_quant_conv {
        true => conv(side, m.latent_channels, v.z_channels, 1),
        false => 0.0,
    };
    let mid_attn = match v.mid_attention {
        true => attn(side, ch),
        false => 0.0,
    };
    let mut total = post_quant_conv
        + conv(side, v.z_channels, ch, 3) // conv_in
        + 2.0 * resnet(side, ch, ch)
        + mid_attn;
    for l in (0..levels).rev() {
        let cout = v.ch * v.ch_mult[l];
        for _ in 0..=v.num_res_blocks {
            total += resnet(side, ch, cout);
            ch = cout;
            if v.attn_levels.contains(&l) {
                total += attn(side, ch);
            }
        }
        if l != 0 {
            side *= 2;
            total += conv(side, ch, ch, 3);
        }
    }
    total += conv(side, ch, 3, 3); // conv_out
    batch as f64 * total
}

/// The VAE encoder on `batch` images of the model's size (editing), when the folder has
/// one: `conv_in`, per down level its ResNet blocks (and attention where the manifest
/// says) and the stride-2 downsampling convolution, the middle block, `conv_out` and
/// `quant_conv`. Like the rest of this count: products and convolutions only.
pub fn vae_encoder_flops(m: &Manifest, batch: usize) -> Option<f64> {
    let v = &m.architecture.vae;
    let e = v.encoder.as_ref()?;
    let conv = |side: usize, cin: usize, cout: usize, k: usize| {
        2.0 * (side * side) as f64 * (cin * cout * k * k) as f64
    };
    let resnet = |side: usize, cin: usize, cout: usize| {
        conv(side, cin, cout, 3)
            + conv(side, cout, cout, 3)
            + if cin != cout {
                conv(side, cin, cout, 1)
            } else {
                0.0
            }
    };
    let attn = |side: usize, ch: usize| {
        let hw = (side * side) as f64;
        4.0 * conv(side, ch, ch, 1) + 4.0 * hw * hw * ch as f64
    };
    let levels = e.level_channels.len();
    let mut side = m.image_size;
    let mut ch = v.ch;
    let mut total = conv(side, 3, ch, 3); // conv_in
    for (l, &cout) in e.level_channels.iter().enumerate() {
        for _ in 0..e.num_res_blocks {
            total += resnet(side, ch, cout);
            ch = cout;
            if e.attn_levels.contains(&l) {
                total += attn(side, ch);
            }
        }
        if l + 1 != levels {
            side /= 2;
            total += conv(side, ch, ch, 3); // stride 2: one output per 2x2 input cells
        }
    }
    total += 2.0 * resnet(side, ch, ch);
    if e.mid_attention {
        total += attn(side, ch);
    }
    let moments = if e.double_z { 2 } else { 1 };
    total += conv(side, ch, moments * v.z_channels, 3); // conv_out
    if e.quant_conv {
        total += conv(side, moments * v.z_channels, moments * m.latent_channels, 1);
    }
    Some(batch as f64 * total)
}

/// Every FLOP of one generation of `batch` images with these sampler settings;
/// `steps_at(i)` is scale `i`'s solver step count.
pub fn generation_flops(
    m: &Manifest,
    batch: usize,
    cfg: f64,
    guidance: f64,
    steps_at: &dyn Fn(usize) -> usize,
    solver: Solver,
) -> FlopCount {
    let cfg_on = cfg > 1.0;
    let rows = if cfg_on { 2 * batch } else { batch };
    let n_scales = m.scales.len();
    let mut out = FlopCount::default();
    let mut past = 0;
    for (i, &side) in m.scales.iter().enumerate() {
        let n = side * side;
        out.ar_per_scale.push(ar_step_flops(m, rows, n, past));
        past += n;
        let w = cfg_at_scale(cfg, i, n_scales);
        let times = time_grid(steps_at(i));
        let (mut flops, mut calls, mut guided_calls) = (0.0, 0, 0);
        for win in times.windows(2) {
            let evals: &[f64] = match solver {
                Solver::Euler => &win[..1],
                Solver::Heun => win,
            };
            for &t in evals {
                let g = cfg_on && guided(w, t, guidance);
                flops += flow_call_flops(m, if g { rows } else { batch }, n);
                calls += 1;
                guided_calls += g as usize;
            }
        }
        out.flow_per_scale.push(flops);
        out.flow_calls_per_scale.push(calls);
        out.guided_calls_per_scale.push(guided_calls);
    }
    out.vae = vae_flops(m, batch);
    out
}
