//! What the TensorRT provider is given, derived from a converted model: optimization
//! profiles for every symbolic dimension, and an engine-cache folder that changes with
//! anything that invalidates an engine. No GPU needed; `bench/gpu/check.sh` runs them.

use flowar_exporter::convert::Precision;
use flowar_runtime::backend::gpu::GpuOptions;
use flowar_runtime::backend::tensorrt::{self, TrtProfile};
use flowar_runtime::manifest::GraphSpec;
use flowar_runtime::manifest::Manifest;
use flowar_runtime::model::tensorrt::{graphs_key, shape_ranges};
use flowar_tests::*;

/// The profile onnxruntime's TensorRT provider is given for `graph`.
fn profile(
    m: &Manifest,
    graph: &GraphSpec,
    max_batch: usize,
) -> flowar_runtime::Result<TrtProfile> {
    shape_ranges(m, graph, max_batch).map(|r| TrtProfile::new(&r))
}

/// The engine-cache folder for `m`'s graphs.
fn cache_dir(
    root: &std::path::Path,
    m: &Manifest,
    version: &str,
    o: &GpuOptions,
) -> std::path::PathBuf {
    tensorrt::engine_cache_dir(root, &graphs_key(m), version, o)
}

#[test]
fn profiles_cover_every_scale_and_the_batch() {
    let (_t, dir) = convert_fixture("spatial");
    let m = Manifest::load(&dir).unwrap();
    let side = m.final_grid();
    let total: usize = m.scales.iter().map(|s| s * s).sum();
    let (last, c) = (side * side, m.latent_channels);
    let flow = profile(&m, &m.graphs.flow_head, 4).unwrap();
    eprintln!("flow head: {flow:#?}");
    // x [rows, tokens, C]: one token and one row at least, the last scale's tokens for 4
    // images with their null rows at most, tuned for the most expensive case.
    assert!(
        flow.min.starts_with(&format!("x:1x1x{c},t:1,")),
        "{}",
        flow.min
    );
    assert!(
        flow.max.starts_with(&format!("x:8x{last}x{c},t:8,")),
        "{}",
        flow.max
    );
    assert_eq!(flow.opt, flow.max);
    let ar = profile(&m, &m.graphs.ar_step, 4).unwrap();
    eprintln!("AR step: {ar:#?}");
    // The KV cache is empty before the first scale and holds all but the last scale's
    // tokens before the last one.
    let past_max = format!("x{}x", total - last);
    assert!(ar.min.contains("x0x"), "{}", ar.min);
    assert!(ar.max.contains(&past_max), "{}", ar.max);
    // Every input with a symbolic dimension is listed, and only those (the scalar
    // `first_scale` is not).
    use flowar_runtime::manifest::DimSpec;
    let dynamic: Vec<&str> = m
        .graphs
        .ar_step
        .inputs
        .iter()
        .filter(|i| i.shape.iter().any(|d| matches!(d, DimSpec::Symbolic(_))))
        .map(|i| i.name.as_str())
        .collect();
    assert!(dynamic.len() < m.graphs.ar_step.inputs.len());
    for p in [&ar.min, &ar.opt, &ar.max] {
        let names: Vec<&str> = p.split(',').map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(names, dynamic);
    }
    let vae = profile(&m, &m.graphs.vae_decoder, 4).unwrap();
    let z = &m.graphs.vae_decoder.inputs[0].name;
    assert_eq!(vae.min, format!("{z}:1x{c}x{side}x{side}"));
    assert_eq!(vae.max, format!("{z}:4x{c}x{side}x{side}"));
}

#[test]
fn an_unknown_symbolic_dimension_is_a_clear_error() {
    let (_t, dir) = convert_fixture("spatial");
    let mut m = Manifest::load(&dir).unwrap();
    m.graphs.flow_head.inputs[0].shape[1] =
        flowar_runtime::manifest::DimSpec::Symbolic("frames".into());
    let e = profile(&m, &m.graphs.flow_head, 1).unwrap_err().to_string();
    assert!(
        e.contains("`frames`") && e.contains("flow_head.onnx"),
        "{e}"
    );
}

#[test]
fn the_engine_cache_is_keyed_by_model_version_precision_and_batch() {
    let (_a, d32) = convert_fixture("spatial");
    let (_b, d16) = convert_fixture_as("spatial", Precision::F16);
    let (m32, m16) = (Manifest::load(&d32).unwrap(), Manifest::load(&d16).unwrap());
    let root = std::path::Path::new("/cache");
    let o = GpuOptions::default();
    let base = cache_dir(root, &m32, "10.3.0", &o);
    assert!(base.starts_with("/cache/tensorrt"), "{}", base.display());
    assert_eq!(base, cache_dir(root, &m32, "10.3.0", &o), "stable");
    let no_fp16 = GpuOptions {
        trt_fp16: false,
        ..GpuOptions::default()
    };
    let batch16 = GpuOptions {
        trt_max_batch: 16,
        ..GpuOptions::default()
    };
    let others = [
        cache_dir(root, &m32, "10.4.0", &o),
        cache_dir(root, &m16, "10.3.0", &o),
        cache_dir(root, &m32, "10.3.0", &no_fp16),
        cache_dir(root, &m32, "10.3.0", &batch16),
    ];
    for (i, d) in others.iter().enumerate() {
        assert_ne!(&base, d, "case {i}");
        for (j, e) in others.iter().enumerate().skip(i + 1) {
            assert_ne!(d, e, "cases {i} and {j}");
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    assert!(!tensorrt::has_engines(tmp.path()));
    std::fs::write(tmp.path().join("x.profile"), b"").unwrap();
    assert!(!tensorrt::has_engines(tmp.path()));
    std::fs::write(tmp.path().join("TensorrtExecutionProvider_x.engine"), b"").unwrap();
    assert!(tensorrt::has_engines(tmp.path()));
}

#[test]
fn a_missing_tensorrt_is_reported_with_what_was_tried() {
    match tensorrt::library_version(&[]) {
        Ok(v) => flowar_runtime::test_support::note_skip(
            module_path!(),
            &format!("TensorRT {v} is installed here"),
        ),
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains("libnvinfer.so.10") && e.contains("pip install tensorrt"),
                "{e}"
            );
        }
    }
}
