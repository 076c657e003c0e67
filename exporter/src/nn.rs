//! Building blocks shared by the three weighted graphs. Each takes the [`Vb`] of its module, so
//! the ONNX node names and initializer names are the module's checkpoint key path.

use crate::error::Result;
use crate::onnx::builder::{attr_ints, attr_str};
use crate::onnx::{Graph, Val};
use crate::weights::Vb;

/// One output block of a linear, built as its own MatMul: its initializer names, its
/// weight stored transposed (`[in, out]`) and its bias.
struct Part {
    weight: String,
    bias_name: String,
    wt: Vec<f32>,
    out: usize,
    bias: Option<Vec<f32>>,
}

impl Part {
    /// Rows `rows` of `{vb}`'s `[out, in]` weight `w` and bias `b` (plus `bias_plus`), named
    /// after the checkpoint keys with the span: `{key}.weight[a:b]`.
    fn rows(
        vb: &Vb,
        w: &[f32],
        b: &[f32],
        in_dim: usize,
        rows: std::ops::Range<usize>,
        bias_plus: f32,
    ) -> Part {
        let span = format!("[{}:{}]", rows.start, rows.end);
        Part {
            weight: format!("{}{span}", vb.path("weight")),
            bias_name: format!("{}{span}", vb.path("bias")),
            wt: transposed(w, in_dim, rows.clone()),
            out: rows.len(),
            bias: Some(b[rows].iter().map(|v| v + bias_plus).collect()),
        }
    }

    /// `y + b` when the part has a bias.
    fn add_bias(&self, g: &mut Graph, y: Val) -> Val {
        match &self.bias {
            Some(b) => {
                let bname = g.weight(&self.bias_name, &[self.out], b, "");
                g.add(&y, &bname)
            }
            None => y,
        }
    }
}

/// Rows `rows` of the checkpoint's `[out, in]` weight, transposed to `[in, rows.len()]`.
fn transposed(w: &[f32], in_dim: usize, rows: std::ops::Range<usize>) -> Vec<f32> {
    let out = rows.len();
    let mut wt = vec![0f32; in_dim * out];
    for (o, row) in rows.enumerate() {
        for i in 0..in_dim {
            wt[i * out + o] = w[row * in_dim + i];
        }
    }
    wt
}

/// `y = x W^T + b`; the weight is stored transposed (`[in, out]`) so the graph is one MatMul.
pub fn linear(
    g: &mut Graph,
    vb: &Vb,
    x: &str,
    in_dim: usize,
    out_dim: usize,
    bias: bool,
) -> Result<Val> {
    let w = vb.get("weight", &[out_dim, in_dim])?;
    let wt = transposed(&w, in_dim, 0..out_dim);
    drop(w);
    let bias = if bias {
        Some(vb.get("bias", &[out_dim])?)
    } else {
        None
    };
    let part = Part {
        weight: vb.path("weight"),
        bias_name: vb.path("bias"),
        wt,
        out: out_dim,
        bias,
    };
    Ok(linear_parts(g, vb, x, in_dim, vec![part]).remove(0))
}

/// What one chunk of an adaLN modulation linear's output is (checkpoint order is the
/// caller's `chunks` order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mod {
    Gate,
    Scale,
    Shift,
}

/// An adaLN modulation linear `{vb}` (`[in] -> [chunks.len() * width]`, with bias) built as
/// one MatMul per chunk, so no Split copies its output. A [`Mod::Scale`] chunk's bias carries
/// the `1 +` of `norm * (1 + scale) + shift`: its output is `1 + scale`, which
/// [`modulate`] takes.
pub fn modulation(
    g: &mut Graph,
    vb: &Vb,
    x: &str,
    in_dim: usize,
    width: usize,
    chunks: &[Mod],
) -> Result<Vec<Val>> {
    let out_dim = chunks.len() * width;
    let w = vb.get("weight", &[out_dim, in_dim])?;
    let b = vb.get("bias", &[out_dim])?;
    let parts = chunks
        .iter()
        .enumerate()
        .map(|(k, m)| {
            let one = if *m == Mod::Scale { 1.0 } else { 0.0 };
            Part::rows(vb, &w, &b, in_dim, k * width..(k + 1) * width, one)
        })
        .collect();
    Ok(linear_parts(g, vb, x, in_dim, parts))
}

/// `x W_k^T + b_k` for each part, float or (when the graph quantizes `vb`) int8 with one
/// shared activation quantization.
fn linear_parts(g: &mut Graph, vb: &Vb, x: &str, in_dim: usize, parts: Vec<Part>) -> Vec<Val> {
    if g.quantizes(vb.prefix()) {
        return linear_int8(g, vb, x, in_dim, parts);
    }
    if g.bf16_products() {
        return linear_bf16(g, vb, x, in_dim, parts);
    }
    parts
        .into_iter()
        .map(|p| {
            let wname = g.weight(
                &p.weight,
                &[in_dim, p.out],
                &p.wt,
                "stored transposed as [in, out]",
            );
            g.scoped(vb.prefix(), |g| {
                let y = g.matmul(x, &wname);
                p.add_bias(g, y)
            })
        })
        .collect()
}

/// [`linear_parts`] as bfloat16 products, the way autocast computes a linear:
/// `Cast(MatMul(Cast(x, bf16), W_bf16), f32) + b`, the weight stored as bfloat16 and the
/// bias added in float32. One cast of `x` serves every part.
fn linear_bf16(g: &mut Graph, vb: &Vb, x: &str, in_dim: usize, parts: Vec<Part>) -> Vec<Val> {
    use crate::onnx::Elem;
    let xb = g.scoped(vb.prefix(), |g| g.cast(x, Elem::Bf16));
    parts
        .into_iter()
        .map(|p| {
            let wname = g.weight_bf16(
                &p.weight,
                &[in_dim, p.out],
                &p.wt,
                "bfloat16, stored transposed as [in, out]",
            );
            g.scoped(vb.prefix(), |g| {
                let y = g.matmul(&xb, &wname);
                let y = g.cast(&y, Elem::F32);
                p.add_bias(g, y)
            })
        })
        .collect()
}

/// [`linear_parts`] with int8 weights, per output channel (see [`crate::quantize`]):
/// `(MatMulInteger(DynamicQuantizeLinear(x), W_q) as f32) * (x_scale * W_scale) + b`,
/// the pattern onnxruntime fuses into one kernel. Float32 activations only.
fn linear_int8(g: &mut Graph, vb: &Vb, x: &str, in_dim: usize, parts: Vec<Part>) -> Vec<Val> {
    g.mark_quantized(vb.prefix());
    let xq = g.scoped(vb.prefix(), |g| {
        g.node_n("DynamicQuantizeLinear", &[x], vec![], 3)
    });
    parts
        .into_iter()
        .map(|p| {
            let (q, scale) = crate::quantize::per_channel(&p.wt, in_dim, p.out);
            let wq = g.weight_i8(&p.weight, &[in_dim, p.out], &q);
            let ws = g.aux_f32(
                &format!("{}_scale", p.weight),
                &[p.out],
                &scale,
                "int8 weight scale per output channel",
            );
            g.scoped(vb.prefix(), |g| {
                let yi = g.node("MatMulInteger", &[&xq[0], &wq, &xq[2]], vec![]);
                let yf = g.node(
                    "Cast",
                    &[&yi],
                    vec![crate::onnx::builder::attr_int(
                        "to",
                        crate::onnx::Elem::F32.onnx() as i64,
                    )],
                );
                let s = g.mul(&xq[1], &ws);
                let y = g.mul(&yf, &s);
                p.add_bias(g, y)
            })
        })
        .collect()
}

/// `x * rsqrt(mean(x^2, -1) + 1e-6)`, times `weight` (float32) when the module has one.
/// Computed in float32 whatever the activation type.
pub fn rms_norm(g: &mut Graph, x: &str, weight: Option<&str>) -> Val {
    let x = &g.to_f32(x);
    let eps = g.scalar_f32(1e-6);
    let sq = g.mul(x, x);
    let ms = g.reduce_mean(&sq, &[-1]);
    let ms = g.add(&ms, &eps);
    let rms = g.unary("Sqrt", &ms);
    let inv = g.unary("Reciprocal", &rms);
    let y = g.mul(x, &inv);
    let y = match weight {
        Some(w) => g.mul(&y, w),
        None => y,
    };
    g.to_act(&y)
}

/// RMSNorm whose weight is the checkpoint tensor `{vb}.weight`.
pub fn rms_norm_weighted(g: &mut Graph, vb: &Vb, x: &str, dim: usize) -> Result<Val> {
    let w = vb.get("weight", &[dim])?;
    Ok(g.scoped(vb.prefix(), |g| {
        let wn = g.weight_f32(&vb.path("weight"), &[dim], &w, "");
        rms_norm(g, x, Some(&wn))
    }))
}

/// `norm(x) * (1 + scale) + shift`, given `one_plus_scale` (a [`Mod::Scale`] chunk of
/// [`modulation`]).
pub fn modulate(g: &mut Graph, normed: &str, one_plus_scale: &str, shift: &str) -> Val {
    let y = g.mul(normed, one_plus_scale);
    g.add(&y, shift)
}

/// Most hidden units one MLP chunk contracts over. tract runs a MatMul with a symbolic row
/// count at about half its rate once the contraction passes 2048 (measured on
/// `[512, 2730] x [2730, 1024]`: 29-34 ms against 13-16 ms with concrete rows or K <= 2048;
/// `bench/README.md`), so wider MLPs are built in chunks of hidden units.
pub const MLP_CHUNK: usize = 2048;

/// SwiGLU-shaped MLP with GELU: `fc2(gelu(fc1_g(x)) * fc1_x(x))`. A hidden size above
/// [`MLP_CHUNK`] is split into equal chunks: each chunk's fc1 columns and fc2 rows are their
/// own MatMuls (no activation is sliced or concatenated), and the chunks' fc2 products are
/// summed before fc2's bias.
pub fn mlp(g: &mut Graph, vb: &Vb, x: &str, dim: usize, hidden: usize) -> Result<Val> {
    mlp_chunked(g, vb, x, dim, hidden, MLP_CHUNK)
}

/// [`mlp`] with at most `chunk` hidden units per chunk (tests choose small chunks).
pub fn mlp_chunked(
    g: &mut Graph,
    vb: &Vb,
    x: &str,
    dim: usize,
    hidden: usize,
    chunk: usize,
) -> Result<Val> {
    let chunks = hidden.div_ceil(chunk.max(1));
    if chunks == 1 {
        let gate = linear(g, &vb.pp("fc1_g"), x, dim, hidden, true)?;
        let lin = linear(g, &vb.pp("fc1_x"), x, dim, hidden, true)?;
        let h = g.scoped(vb.prefix(), |g| {
            let a = g.gelu(&gate);
            g.mul(&a, &lin)
        });
        return linear(g, &vb.pp("fc2"), &h, hidden, dim, true);
    }
    let spans: Vec<std::ops::Range<usize>> = (0..chunks)
        .map(|c| c * hidden / chunks..(c + 1) * hidden / chunks)
        .collect();
    let fc1 = |g: &mut Graph, name: &str| -> Result<Vec<Val>> {
        let fvb = vb.pp(name);
        let w = fvb.get("weight", &[hidden, dim])?;
        let b = fvb.get("bias", &[hidden])?;
        let parts = spans
            .iter()
            .map(|r| Part::rows(&fvb, &w, &b, dim, r.clone(), 0.0))
            .collect();
        Ok(linear_parts(g, &fvb, x, dim, parts))
    };
    let gates = fc1(g, "fc1_g")?;
    let lins = fc1(g, "fc1_x")?;
    let f2 = vb.pp("fc2");
    // fc2's weight as [hidden, dim]: each chunk's rows are one contiguous block of it.
    let w2t = transposed(&f2.get("weight", &[dim, hidden])?, hidden, 0..dim);
    let b2 = f2.get("bias", &[dim])?;
    let mut sum: Option<Val> = None;
    for ((r, gate), lin) in spans.iter().zip(&gates).zip(&lins) {
        let h = g.scoped(vb.prefix(), |g| {
            let a = g.gelu(gate);
            g.mul(&a, lin)
        });
        let part = Part {
            weight: format!("{}[:, {}:{}]", f2.path("weight"), r.start, r.end),
            bias_name: String::new(),
            wt: w2t[r.start * dim..r.end * dim].to_vec(),
            out: dim,
            bias: None,
        };
        let y = linear_parts(g, &f2, &h, r.len(), vec![part]).remove(0);
        sum = Some(match sum {
            None => y,
            Some(s) => g.scoped(f2.prefix(), |g| g.add(&s, &y)),
        });
    }
    let sum = sum.expect("at least two chunks");
    Ok(g.scoped(f2.prefix(), |g| {
        let bname = g.weight(&f2.path("bias"), &[dim], &b2, "");
        g.add(&sum, &bname)
    }))
}

/// RoPE tables fed to a graph (`cos`, `sin [tokens, hd]`) and the `rotate_half` matrix.
pub struct RopeTables {
    pub cos: Val,
    pub sin: Val,
    /// `[hd, hd]`, `x @ rotate = rotate_half(x)`: a signed permutation, so the MatMul is
    /// exact (each output is one input times +-1) and far cheaper than a Gather on the
    /// innermost axis.
    pub rotate: Val,
    pub head_dim: usize,
}

impl RopeTables {
    pub fn new(g: &mut Graph, cos: Val, sin: Val, head_dim: usize) -> RopeTables {
        // rotate_half maps each pair (a, b) = (x[2k], x[2k+1]) to (-b, a).
        let mut m = vec![0f32; head_dim * head_dim];
        for k in 0..head_dim / 2 {
            let (a, b) = (2 * k, 2 * k + 1);
            m[b * head_dim + a] = -1.0;
            m[a * head_dim + b] = 1.0;
        }
        let (cos, sin, rotate) = g.scoped("rope", |g| {
            let r = g.const_act(&[head_dim, head_dim], &m);
            (g.to_act(&cos), g.to_act(&sin), r)
        });
        RopeTables {
            cos,
            sin,
            rotate,
            head_dim,
        }
    }

    /// `x*cos + rotate_half(x)*sin`. `x` is `[rows, heads, tokens, hd]`.
    pub fn apply(&self, g: &mut Graph, x: &str) -> Val {
        let rotated = g.matmul(x, &self.rotate);
        let a = g.mul(x, &self.cos);
        let b = g.mul(&rotated, &self.sin);
        g.add(&a, &b)
    }
}

/// `[rows, tokens, parts*heads*hd]` -> `parts` tensors `[rows, heads, tokens, hd]`.
pub fn split_heads(g: &mut Graph, x: &str, parts: usize, heads: usize, hd: usize) -> Vec<Val> {
    let r = g.reshape(x, &[0, 0, parts as i64, heads as i64, hd as i64]);
    let t = g.transpose(&r, &[2, 0, 3, 1, 4]);
    (0..parts as i64)
        .map(|i| g.gather_const(&t, &[i], true, 0))
        .collect()
}

/// `softmax(q k^T / sqrt(hd)) v`, heads merged back: `[rows, tokens, heads*hd]`.
pub fn attend(g: &mut Graph, q: &str, k: &str, v: &str, hd: usize, width: usize) -> Val {
    let kt = g.transpose(k, &[0, 1, 3, 2]);
    let scores = g.matmul(q, &kt);
    // Scaling and softmax in float32 (a no-op cast for float32 graphs).
    let scores = g.to_f32(&scores);
    let scale = g.scalar_f32(1.0 / (hd as f32).sqrt());
    let scores = g.mul(&scores, &scale);
    let p = g.softmax(&scores, -1);
    let p = g.to_act(&p);
    let o = g.matmul(&p, v);
    let o = g.transpose(&o, &[0, 2, 1, 3]);
    g.reshape(&o, &[0, 0, width as i64])
}

/// 2-D convolution with `{vb}.weight [out, in, k, k]` and `{vb}.bias [out]`, "same" padding.
pub fn conv2d(g: &mut Graph, vb: &Vb, x: &str, cin: usize, cout: usize, k: usize) -> Result<Val> {
    let w = vb.get("weight", &[cout, cin, k, k])?;
    let b = vb.get("bias", &[cout])?;
    Ok(g.scoped(vb.prefix(), |g| {
        let wn = g.weight(&vb.path("weight"), &[cout, cin, k, k], &w, "");
        let bn = g.weight(&vb.path("bias"), &[cout], &b, "");
        let p = (k / 2) as i64;
        g.node(
            "Conv",
            &[x, &wn, &bn],
            vec![
                attr_ints("kernel_shape", &[k as i64, k as i64]),
                attr_ints("pads", &[p, p, p, p]),
                attr_ints("strides", &[1, 1]),
            ],
        )
    }))
}

/// A 1x1 projection stored either as a conv (`weight [out, in, 1, 1]`, the LDM layout) or
/// as a linear (`weight [out, in]`, diffusers' attention): either way one 1x1 Conv.
pub fn conv1x1_or_linear(g: &mut Graph, vb: &Vb, x: &str, cin: usize, cout: usize) -> Result<Val> {
    let found = vb.shape(
        "weight",
        &format!("[{cout}, {cin}] or [{cout}, {cin}, 1, 1]"),
    )?;
    let stored: &[usize] = if found.len() == 2 {
        &[cout, cin]
    } else {
        &[cout, cin, 1, 1]
    };
    let w = vb.get("weight", stored)?;
    let b = vb.get("bias", &[cout])?;
    Ok(g.scoped(vb.prefix(), |g| {
        let wn = g.weight(&vb.path("weight"), &[cout, cin, 1, 1], &w, "");
        let bn = g.weight(&vb.path("bias"), &[cout], &b, "");
        g.node(
            "Conv",
            &[x, &wn, &bn],
            vec![
                attr_ints("kernel_shape", &[1, 1]),
                attr_ints("strides", &[1, 1]),
            ],
        )
    }))
}

/// GroupNorm (`groups` groups, eps 1e-6, affine) on `[batch, ch, h, w]`, decomposed into
/// ReduceMean so every engine and opset agrees on its semantics; float32 throughout.
pub fn group_norm(
    g: &mut Graph,
    vb: &Vb,
    x: &str,
    ch: usize,
    groups: usize,
    hw: (usize, usize),
) -> Result<Val> {
    let (h, w) = hw;
    let gamma = vb.get("weight", &[ch])?;
    let beta = vb.get("bias", &[ch])?;
    Ok(g.scoped(vb.prefix(), |g| {
        let gn = g.weight_f32(
            &vb.path("weight"),
            &[ch, 1, 1],
            &gamma,
            "stored as [ch, 1, 1]",
        );
        let bn = g.weight_f32(&vb.path("bias"), &[ch, 1, 1], &beta, "stored as [ch, 1, 1]");
        let x = g.to_f32(x);
        let grouped = g.reshape(&x, &[0, groups as i64, -1]);
        let mean = g.reduce_mean(&grouped, &[2]);
        let centered = g.sub(&grouped, &mean);
        let sq = g.mul(&centered, &centered);
        let var = g.reduce_mean(&sq, &[2]);
        let eps = g.scalar_f32(1e-6);
        let var = g.add(&var, &eps);
        let std = g.unary("Sqrt", &var);
        let normed = g.div(&centered, &std);
        let back = g.reshape(&normed, &[0, ch as i64, h as i64, w as i64]);
        let y = g.mul(&back, &gn);
        let y = g.add(&y, &bn);
        g.to_act(&y)
    }))
}

/// Nearest-neighbour 2x upsampling of `[batch, ch, h, w]`.
pub fn upsample_nearest2x(g: &mut Graph, x: &str) -> Val {
    let scales = g.const_f32(&[4], &[1.0, 1.0, 2.0, 2.0]);
    g.node(
        "Resize",
        &[x, "", &scales],
        vec![
            attr_str("mode", "nearest"),
            attr_str("coordinate_transformation_mode", "asymmetric"),
            attr_str("nearest_mode", "floor"),
        ],
    )
}

/// The KL-VAE encoder's downsampler: zero padding on the bottom and right only, then a
/// 3x3 convolution with stride 2 (`{vb}.weight [ch, ch, 3, 3]`), halving `[h, w]`.
pub fn conv2d_down(g: &mut Graph, vb: &Vb, x: &str, ch: usize) -> Result<Val> {
    let w = vb.get("weight", &[ch, ch, 3, 3])?;
    let b = vb.get("bias", &[ch])?;
    Ok(g.scoped(vb.prefix(), |g| {
        let wn = g.weight(&vb.path("weight"), &[ch, ch, 3, 3], &w, "");
        let bn = g.weight(&vb.path("bias"), &[ch], &b, "");
        g.node(
            "Conv",
            &[x, &wn, &bn],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("pads", &[0, 0, 1, 1]),
                attr_ints("strides", &[2, 2]),
            ],
        )
    }))
}
