//! An MLP wider than `nn::MLP_CHUNK` is built in chunks of hidden units (for tract's
//! matmul speed). The fixtures' MLPs are narrower, so this checks the chunked form on its
//! own: the same MLP built whole and in three chunks gives the same output, float32 on
//! both CPU backends and int8 on onnxruntime (where each fc2 chunk quantizes its own
//! input).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use flowar_exporter::error::Result as ExportResult;
use flowar_exporter::nn;
use flowar_exporter::onnx::{Dim, Elem, Graph};
use flowar_exporter::quantize::Quantize;
use flowar_exporter::weights::{NonFinitePolicy, Vb, WeightSource};
use flowar_runtime::tensor::Tensor;
use flowar_runtime::Provider;
use flowar_tests::{cpu_providers, max_abs_diff, run_graph};
use prost::Message;

const DIM: usize = 16;
const HIDDEN: usize = 96;

struct Weights(BTreeMap<String, (Vec<usize>, Vec<f32>)>);

impl WeightSource for Weights {
    fn origin(&self) -> String {
        "test weights".into()
    }
    fn keys(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.0.get(key).map(|(s, _)| s.clone())
    }
    fn load_f32(&self, key: &str) -> ExportResult<Vec<f32>> {
        Ok(self.0[key].1.clone())
    }
}

fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect()
}

fn weights() -> Weights {
    let mut m = BTreeMap::new();
    for (i, (key, shape)) in [
        ("mlp.fc1_g.weight", vec![HIDDEN, DIM]),
        ("mlp.fc1_g.bias", vec![HIDDEN]),
        ("mlp.fc1_x.weight", vec![HIDDEN, DIM]),
        ("mlp.fc1_x.bias", vec![HIDDEN]),
        ("mlp.fc2.weight", vec![DIM, HIDDEN]),
        ("mlp.fc2.bias", vec![DIM]),
    ]
    .into_iter()
    .enumerate()
    {
        let n = shape.iter().product();
        let key = format!("flownet.res_blocks.0.{key}");
        m.insert(key, (shape, values(n, i as u64 + 1, 1.0)));
    }
    Weights(m)
}

/// The MLP as a one-graph model file, `chunk` hidden units per chunk.
fn mlp_graph(
    dir: &std::path::Path,
    chunk: usize,
    quantize: Option<Quantize>,
) -> std::path::PathBuf {
    let src = weights();
    let used = RefCell::new(BTreeSet::new());
    let vb = Vb::root(&src, &used, NonFinitePolicy::Refuse);
    // The quantization rule picks block linears by key path: build under a flow-head block.
    let vb = vb.pp("flownet.res_blocks.0");
    let mut g = Graph::with_precision("mlp", Elem::F32).with_quantize(quantize);
    let dims = [Dim::Sym("rows"), Dim::Sym("tokens"), Dim::Fixed(DIM)];
    g.input("x", Elem::F32, &dims);
    let y = nn::mlp_chunked(&mut g, &vb.pp("mlp"), "x", DIM, HIDDEN, chunk).unwrap();
    g.output(&y, "y", Elem::F32, &dims);
    let path = dir.join(format!("mlp-{chunk}-{}.onnx", quantize.is_some()));
    std::fs::write(&path, g.finish("mlp", "test").encode_to_vec()).unwrap();
    path
}

fn run(p: Provider, graph: &std::path::Path, x: &Tensor) -> Vec<f32> {
    run_graph(p, graph, "x", x)
}

#[test]
fn chunked_mlp_equals_the_whole_one() {
    let dir = tempfile::tempdir().unwrap();
    let x = Tensor::f32(vec![2, 5, DIM], values(2 * 5 * DIM, 99, 4.0));
    let whole = mlp_graph(dir.path(), HIDDEN, None);
    let chunked = mlp_graph(dir.path(), HIDDEN / 3, None);
    for p in cpu_providers() {
        let (a, b) = (run(p, &whole, &x), run(p, &chunked, &x));
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 1.0, "a test MLP with some output: {scale}");
        let d = max_abs_diff(&a, &b);
        assert!(
            d <= 1e-5 * scale,
            "{}: chunked vs whole differ by {d}",
            p.name()
        );
    }
    if cpu_providers().contains(&Provider::OrtCpu) {
        let q = Some(Quantize::Int8);
        let (wq, cq) = (
            mlp_graph(dir.path(), HIDDEN, q),
            mlp_graph(dir.path(), HIDDEN / 3, q),
        );
        let exact = run(Provider::OrtCpu, &whole, &x);
        let (a, b) = (
            run(Provider::OrtCpu, &wq, &x),
            run(Provider::OrtCpu, &cq, &x),
        );
        let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
        // Both are int8 approximations of the same MLP, each within a few percent of it.
        assert!(
            max_abs_diff(&exact, &a) <= 0.05 * scale,
            "{}",
            max_abs_diff(&exact, &a)
        );
        assert!(
            max_abs_diff(&exact, &b) <= 0.05 * scale,
            "{}",
            max_abs_diff(&exact, &b)
        );
        assert!(
            max_abs_diff(&a, &b) > 0.0,
            "int8 graphs really are quantized per chunk"
        );
    }
}

/// `max_abs_diff` (this file's and the tract-vs-onnxruntime checks' yardstick) fails on a
/// NaN on either side, and on an all-NaN output, instead of calling it no difference.
#[test]
fn max_abs_diff_fails_on_nan() {
    assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.0, 2.5]), 0.5);
    let nan = f32::NAN;
    for (a, b) in [
        ([1.0, nan], [1.0, 2.0]),
        ([1.0, 2.0], [nan, 2.0]),
        ([nan, nan], [nan, nan]),
        ([f32::INFINITY, 0.0], [f32::INFINITY, 0.0]),
    ] {
        let r = std::panic::catch_unwind(|| max_abs_diff(&a, &b));
        let msg = r.expect_err("a NaN difference must fail");
        let msg = msg.downcast_ref::<String>().expect("a formatted message");
        assert!(msg.contains("NaN"), "{a:?} vs {b:?}: {msg}");
    }
}
