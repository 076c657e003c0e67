//! The calibration behind "efficiency": the best matrix-product rate a provider reaches on
//! this machine at the model's own shapes, measured with one-MatMul ONNX graphs built with
//! the exporter's graph builder and run through the same backend as the model. A bfloat16
//! model is calibrated with bfloat16 products (as its linears compute), so its efficiency
//! is against the rate bfloat16 reaches, not float32's.

use std::path::Path;
use std::time::{Duration, Instant};

use flowar_exporter::onnx::{Dim, Elem, Graph};
use flowar_runtime::backend::{open_session, BackendOptions, Provider};
use flowar_runtime::manifest::Manifest;
use flowar_runtime::tensor::Tensor;
use prost::Message;

/// One measured product `[m, k] x [k, n]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MatmulShape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// Best rate over the timed runs.
    pub gflops: f64,
}

/// The calibration of one provider for one batch size.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    /// The products' precision: `float32`, or `bfloat16` for a bfloat16 model.
    #[serde(default = "float32")]
    pub dtype: String,
    /// The best of `shapes`: the denominator of the efficiency.
    pub best_gflops: f64,
    pub shapes: Vec<MatmulShape>,
}

/// The shapes the model's hottest matrix products have for `batch` images: the flow head
/// at the final scale on guided rows (`rows * N` tokens), width to width, width to MLP
/// hidden and back.
pub fn model_shapes(m: &Manifest, batch: usize, cfg: f64) -> Vec<(usize, usize, usize)> {
    let rows = if cfg > 1.0 { 2 * batch } else { batch };
    let side = m.final_grid();
    let tokens = rows * side * side;
    let f = &m.architecture.flow;
    vec![
        (tokens, f.width, f.width),
        (tokens, f.width, f.mlp_hidden),
        (tokens, f.mlp_hidden, f.width),
    ]
}

fn float32() -> String {
    "float32".into()
}

/// Writes a graph `y = a @ b` with `a [m, k]` a float32 input and `b [k, n]` a constant;
/// with `bf16`, the product is a bfloat16 one as in a bfloat16 model's linears
/// (`Cast(MatMul(Cast(a, bf16), b_bf16), f32)`).
pub fn write_matmul_graph(
    path: &Path,
    (m, k, n): (usize, usize, usize),
    bf16: bool,
) -> std::io::Result<()> {
    let mut g = Graph::new("calibration_matmul");
    g.input("a", Elem::F32, &[Dim::Fixed(m), Dim::Fixed(k)]);
    // Deterministic, well-scaled values (the rate does not depend on them).
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i % 17) as f32 - 8.0) / (8.0 * (k as f32).sqrt()))
        .collect();
    let y = if bf16 {
        let w = g.weight_bf16("b", &[k, n], &b, "calibration weight");
        let a = g.cast("a", Elem::Bf16);
        let y = g.matmul(&a, &w);
        g.cast(&y, Elem::F32)
    } else {
        let w = g.weight("b", &[k, n], &b, "calibration weight");
        g.matmul("a", &w)
    };
    g.output(&y, "y", Elem::F32, &[Dim::Fixed(m), Dim::Fixed(n)]);
    let model = g.finish("flowar-bench matmul calibration", env!("CARGO_PKG_VERSION"));
    std::fs::write(path, model.encode_to_vec())
}

/// Times `[m, k] x [k, n]` (in bfloat16 with `bf16`) on `provider`: a warm-up call, then
/// calls until `budget` is spent (at least 3, at most 50); returns the best rate in GFLOP/s.
pub fn time_matmul(
    provider: Provider,
    opts: &BackendOptions,
    dir: &Path,
    (m, k, n): (usize, usize, usize),
    bf16: bool,
    budget: Duration,
) -> flowar_runtime::Result<f64> {
    let path = dir.join(format!("matmul-{m}x{k}x{n}.onnx"));
    write_matmul_graph(&path, (m, k, n), bf16).map_err(|e| flowar_runtime::Error::io(&path, e))?;
    let mut session = open_session(provider, &path, opts)?;
    let a = Tensor::f32(
        vec![m, k],
        (0..m * k).map(|i| ((i % 13) as f32 - 6.0) / 6.0).collect(),
    );
    session.run(&[("a", &a)])?;
    let flops = 2.0 * (m * k * n) as f64;
    let mut best = f64::INFINITY;
    let start = Instant::now();
    let mut calls = 0;
    while calls < 3 || (calls < 50 && start.elapsed() < budget) {
        let t = Instant::now();
        session.run(&[("a", &a)])?;
        best = best.min(t.elapsed().as_secs_f64());
        calls += 1;
    }
    Ok(flops / best / 1e9)
}

/// Calibrates `provider` at `shapes`, with bfloat16 products for a `dtype` of `bfloat16`.
pub fn calibrate(
    provider: Provider,
    opts: &BackendOptions,
    shapes: &[(usize, usize, usize)],
    dtype: &str,
    budget_per_shape: Duration,
) -> flowar_runtime::Result<Calibration> {
    let bf16 = dtype == flowar_runtime::provider::BF16_DTYPE;
    let dir = tempfile::tempdir().map_err(|e| flowar_runtime::Error::io(Path::new("tmp"), e))?;
    let mut out = Vec::new();
    for &s in shapes {
        let gflops = time_matmul(provider, opts, dir.path(), s, bf16, budget_per_shape)?;
        out.push(MatmulShape {
            m: s.0,
            k: s.1,
            n: s.2,
            gflops,
        });
    }
    let best_gflops = out.iter().map(|s| s.gflops).fold(0.0, f64::max);
    Ok(Calibration {
        dtype: if bf16 { "bfloat16" } else { "float32" }.into(),
        best_gflops,
        shapes: out,
    })
}
