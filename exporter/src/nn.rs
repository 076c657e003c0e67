//! Building blocks shared by the three weighted graphs. Each takes the [`Vb`] of its module, so
//! the ONNX node names and initializer names are the module's checkpoint key path.

use crate::error::Result;
use crate::onnx::builder::{attr_ints, attr_str};
use crate::onnx::{Graph, Val};
use crate::weights::Vb;

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
    let mut wt = vec![0f32; w.len()];
    for o in 0..out_dim {
        for i in 0..in_dim {
            wt[i * out_dim + o] = w[o * in_dim + i];
        }
    }
    drop(w);
    if g.quantizes(vb.prefix()) {
        return linear_int8(g, vb, x, &wt, in_dim, out_dim, bias);
    }
    let wname = g.weight(
        &vb.path("weight"),
        &[in_dim, out_dim],
        &wt,
        "stored transposed as [in, out]",
    );
    drop(wt);
    let b = if bias {
        Some(vb.get("bias", &[out_dim])?)
    } else {
        None
    };
    Ok(g.scoped(vb.prefix(), |g| {
        let y = g.matmul(x, &wname);
        match b {
            Some(b) => {
                let bname = g.weight(&vb.path("bias"), &[out_dim], &b, "");
                g.add(&y, &bname)
            }
            None => y,
        }
    }))
}

/// [`linear`] with int8 weights, per output channel (see [`crate::quantize`]):
/// `(MatMulInteger(DynamicQuantizeLinear(x), W_q) as f32) * (x_scale * W_scale) + b`,
/// the pattern onnxruntime fuses into one kernel. Float32 activations only.
fn linear_int8(
    g: &mut Graph,
    vb: &Vb,
    x: &str,
    wt: &[f32],
    in_dim: usize,
    out_dim: usize,
    bias: bool,
) -> Result<Val> {
    let (q, scale) = crate::quantize::per_channel(wt, in_dim, out_dim);
    let wq = g.weight_i8(&vb.path("weight"), &[in_dim, out_dim], &q);
    let ws = g.aux_f32(
        &vb.path("weight_scale"),
        &[out_dim],
        &scale,
        "int8 weight scale per output channel",
    );
    let b = if bias {
        Some(vb.get("bias", &[out_dim])?)
    } else {
        None
    };
    g.mark_quantized(vb.prefix());
    Ok(g.scoped(vb.prefix(), |g| {
        let xq = g.node_n("DynamicQuantizeLinear", &[x], vec![], 3);
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
        match b {
            Some(b) => {
                let bname = g.weight(&vb.path("bias"), &[out_dim], &b, "");
                g.add(&y, &bname)
            }
            None => y,
        }
    }))
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

/// `norm(x) * (1 + scale) + shift`.
pub fn modulate(g: &mut Graph, normed: &str, scale: &str, shift: &str) -> Val {
    let one = g.scalar(1.0);
    let s1 = g.add(scale, &one);
    let y = g.mul(normed, &s1);
    g.add(&y, shift)
}

/// SwiGLU-shaped MLP with GELU: `fc2(gelu(fc1_g(x)) * fc1_x(x))`.
pub fn mlp(g: &mut Graph, vb: &Vb, x: &str, dim: usize, hidden: usize) -> Result<Val> {
    let gate = linear(g, &vb.pp("fc1_g"), x, dim, hidden, true)?;
    let lin = linear(g, &vb.pp("fc1_x"), x, dim, hidden, true)?;
    let h = g.scoped(vb.prefix(), |g| {
        let a = g.gelu(&gate);
        g.mul(&a, &lin)
    });
    linear(g, &vb.pp("fc2"), &h, hidden, dim, true)
}

/// RoPE tables fed to a graph: `cos [tokens, hd]` and `sin [tokens, hd]` with the
/// `rotate_half` sign folded into `sin` once per graph.
pub struct RopeTables {
    pub cos: Val,
    pub sin_signed: Val,
    pub head_dim: usize,
}

impl RopeTables {
    /// Adds the sign fold for tables given as graph inputs `cos`, `sin`.
    pub fn new(g: &mut Graph, cos: Val, sin: Val, head_dim: usize) -> RopeTables {
        let sign: Vec<f32> = (0..head_dim)
            .map(|i| if i % 2 == 0 { -1.0 } else { 1.0 })
            .collect();
        let sign = g.const_f32(&[head_dim], &sign);
        let (cos, sin_signed) = g.scoped("rope", |g| {
            let s = g.mul(&sin, &sign);
            (g.to_act(&cos), g.to_act(&s))
        });
        RopeTables {
            cos,
            sin_signed,
            head_dim,
        }
    }

    /// `x*cos + rotate_half(x)*sin`, where `rotate_half` maps each pair `(a, b)` to `(-b, a)`.
    /// `x` is `[rows, heads, tokens, hd]`.
    pub fn apply(&self, g: &mut Graph, x: &str) -> Val {
        let swap: Vec<i64> = (0..self.head_dim as i64).map(|i| i ^ 1).collect();
        let swapped = g.gather_const(x, &swap, false, 3);
        let a = g.mul(x, &self.cos);
        let b = g.mul(&swapped, &self.sin_signed);
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

/// GroupNorm (32 groups, eps 1e-6, affine) on `[batch, ch, h, w]`, decomposed into
/// ReduceMean so every engine and opset agrees on its semantics; float32 throughout.
pub fn group_norm(g: &mut Graph, vb: &Vb, x: &str, ch: usize, h: usize, w: usize) -> Result<Val> {
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
        let grouped = g.reshape(&x, &[0, 32, -1]);
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
