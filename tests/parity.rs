//! Every fixture, converted from its released-format checkpoints, matches the reference
//! implementation's tensors on every CPU backend, within the fixture README's bounds.

use flowar_exporter::convert::Precision;
use flowar_runtime::manifest::{Manifest, VerifyBounds};
use flowar_tests::*;

fn check_fixture(name: &str) {
    let (_tmp, dir) = convert_fixture(name);
    let v = Manifest::load(&dir).unwrap().verify;
    assert_eq!((v.graph, v.vae, v.pipeline), (1e-4, 1e-3, true));
    check_model(name, &dir);
}

/// The largest error of each kind of per-graph case measured on both fixtures over every
/// CPU provider (README "Tests"; the VAE's on OpenVINO), for [`MEASURED_MARGIN`]: the
/// bounds (1e-4, 1e-3) are 8-80x looser, room in which a real regression (a dropped
/// epsilon, a float16 cast, a wrong kernel on one provider) would pass unseen.
fn measured_error(case: &str) -> Option<f64> {
    if case.starts_with("flow.") {
        Some(1.3e-5)
    } else if case.starts_with("ar.") && case.ends_with(".z") {
        Some(8.6e-6)
    } else if case.ends_with(".upsampled") {
        Some(1.2e-6)
    } else if case == "vae.image" {
        Some(1.35e-5)
    } else {
        None
    }
}

/// Room above [`measured_error`] for other CPUs' kernels (AVX2 vs AVX-512 blocking).
const MEASURED_MARGIN: f64 = 2.0;

/// Runs every case of fixture `name` against the model folder `dir`.
fn check_model(name: &str, dir: &std::path::Path) {
    for (p, results) in verify_fixture(name, dir) {
        print_results(name, p, &results);
        let failed: Vec<_> = results.iter().filter(|r| !r.pass).collect();
        assert!(failed.is_empty(), "{name} on {}: {failed:#?}", p.name());
        // 5 flow cases, 5 AR steps, 4 upsamplings and the VAE image.
        let measured: Vec<_> = results
            .iter()
            .filter_map(|r| measured_error(&r.name).map(|m| (r, m)))
            .collect();
        assert_eq!(measured.len(), 15, "{name} on {}", p.name());
        let past: Vec<_> = measured
            .iter()
            .filter(|(r, m)| r.max_abs.is_nan() || r.max_abs > MEASURED_MARGIN * m)
            .map(|(r, m)| format!("{} {:.3e} > {MEASURED_MARGIN} x {m:.1e}", r.name, r.max_abs))
            .collect();
        assert!(
            past.is_empty(),
            "{name} on {}: past the measured errors: {past:#?}",
            p.name()
        );
    }
}

/// The float32 bounds as numbers, apart from the code that states them: loosening
/// `VerifyBounds::default()` (what a float32 manifest records) or `Tolerances::default()`
/// (what `verify` and this suite apply) must fail here.
#[test]
fn float32_bounds_are_pinned() {
    let b = VerifyBounds::default();
    assert_eq!(
        (b.graph, b.vae, b.pipeline, b.vae_u8_levels()),
        (1e-4, 1e-3, true, 1)
    );
    let t = flowar_runtime::verify::Tolerances::default();
    assert_eq!(
        (t.graph, t.vae, t.vae_u8_levels, t.pipeline),
        (1e-4, 1e-3, 1, true)
    );
    assert_eq!(
        (t.pipe_tokens, t.pipe_identical, t.pipe_u8_levels),
        (1e-3, 0.99, 2)
    );
    // Editing: the encoder's bound (see docs/editing.md for why 2e-4), edited pixels.
    assert_eq!(
        (t.encoder, t.edit_identical, t.edit_u8_levels),
        (2e-4, 0.998, 1)
    );
    assert!(t.edit_tokens.is_empty());
}

#[test]
fn spatial_fixture_matches_reference() {
    check_fixture("spatial");
}

#[test]
fn cross_fixture_matches_reference() {
    check_fixture("cross");
}

/// Every graph file a model folder holds.
const GRAPHS: [&str; 4] = [
    "ar_step.onnx",
    "flow_head.onnx",
    "vae_decoder.onnx",
    "solver_step.onnx",
];

#[test]
fn safetensors_and_pth_give_identical_graphs() {
    let d = fixture("spatial");
    let (_a, pth) = convert_fixture("spatial");
    let (_b, st) = convert_files(
        &d.join("flowar.safetensors"),
        &d.join("vae.safetensors"),
        Default::default(),
        None,
    );
    for g in GRAPHS {
        assert!(
            std::fs::read(pth.join(g)).unwrap() == std::fs::read(st.join(g)).unwrap(),
            "{g} differs"
        );
    }
}

#[test]
fn conversion_is_deterministic() {
    let (_a, one) = convert_fixture("cross");
    let (_b, two) = convert_fixture("cross");
    for g in GRAPHS.iter().chain(&["manifest.json"]) {
        assert!(
            std::fs::read(one.join(g)).unwrap() == std::fs::read(two.join(g)).unwrap(),
            "{g} differs between runs"
        );
    }
}

/// `onnx.checker.check_model(full_check=True)` on every graph, with the Python `onnx`
/// package (installed by scripts/test.sh; required when FLOWAR_REQUIRE_ONNX_CHECKER is set).
#[test]
fn graphs_pass_the_onnx_checker() {
    let python = std::env::var("FLOWAR_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python)
        .args(["-c", "import onnx"])
        .output();
    if !probe.map(|o| o.status.success()).unwrap_or(false) {
        assert!(
            std::env::var("FLOWAR_REQUIRE_ONNX_CHECKER").as_deref() != Ok("1"),
            "the onnx Python package is required ({python})"
        );
        flowar_runtime::test_support::note_skip(
            module_path!(),
            &format!("onnx checker: `{python} -c 'import onnx'` failed"),
        );
        return;
    }
    // Exact graphs, int8 ones (DynamicQuantizeLinear, MatMulInteger), float16 ones and
    // bfloat16-product ones.
    // edit-kl16's VAE holds its encoder: the folder gains vae_encoder.onnx, float32 in
    // every dtype.
    for (name, (_t, dir)) in ["spatial", "cross", "edit-kl16"].into_iter().flat_map(|n| {
        [
            (n, convert_fixture(n)),
            (n, convert_fixture_quantized(n)),
            (n, convert_fixture_as(n, Precision::F16)),
            (n, convert_fixture_as(n, Precision::Bf16)),
        ]
    }) {
        let m = flowar_runtime::manifest::Manifest::load(&dir).unwrap();
        let files: Vec<&str> = m
            .graphs
            .all()
            .iter()
            .map(|(_, g)| g.file.as_str())
            .collect();
        let mut want = GRAPHS.to_vec();
        if name == "edit-kl16" {
            want.push("vae_encoder.onnx");
            let enc = m
                .architecture
                .vae
                .encoder
                .as_ref()
                .expect("encoder recorded");
            assert_eq!(enc.precision, "float32", "{} folder", m.dtype);
        }
        assert_eq!(files, want, "the manifest lists every graph file");
        for g in files {
            let path = dir.join(g);
            let script = format!(
                "import onnx; m = onnx.load(r'{}'); onnx.checker.check_model(m, full_check=True); assert m.opset_import[0].version == 17",
                path.display()
            );
            let out = std::process::Command::new(&python)
                .args(["-c", &script])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}/{g}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Weights moved to ONNX external data (as FlowAR-H needs) give the same results.
#[test]
fn external_data_graphs_match_too() {
    let d = fixture("spatial");
    let (_t, dir) = convert_files_with(
        &d.join("flowar.pth"),
        &d.join("vae.ckpt"),
        Default::default(),
        None,
        0,
        flowar_exporter::convert::Precision::F32,
        None,
    );
    assert!(dir.join("ar_step.onnx.data").is_file());
    check_model("spatial", &dir);
}

/// float16 graphs (`convert --dtype f16`) hold half-size weights and pass every per-graph
/// case within the bounds their manifest states, on every CPU backend. The end-to-end
/// `pipe.*` cases are not compared for them (see `VerifyBounds::pipeline`).
#[test]
fn f16_graphs_match_within_their_manifest_bounds() {
    for name in ["spatial", "cross"] {
        let (_t32, dir32) = convert_fixture(name);
        let (_t16, dir) = convert_fixture_as(name, Precision::F16);
        let m = Manifest::load(&dir).unwrap();
        assert_eq!(m.dtype, "float16");
        assert!(!m.verify.pipeline);
        // Pinned as numbers, not the exporter's own constants.
        assert_eq!((m.verify.graph, m.verify.vae), (2e-2, 1e-2));
        let size = |d: &std::path::Path| std::fs::metadata(d.join("flow_head.onnx")).unwrap().len();
        assert!(
            (size(&dir) as f64) < 0.6 * size(&dir32) as f64,
            "{name}: f16 flow head {} bytes vs f32 {}",
            size(&dir),
            size(&dir32)
        );
        for (p, results) in verify_with_manifest_bounds(name, &dir, "f16") {
            assert_eq!(results.len(), 16, "{name} on {}", p.name());
            let failed: Vec<_> = results.iter().filter(|r| !r.pass).collect();
            assert!(failed.is_empty(), "f16 {name} on {}: {failed:#?}", p.name());
            // The graphs really compute in float16: the flow head is off by far more than
            // float32 rounding (1e-5), which a silently-f32 export would not be.
            let flow_err = results
                .iter()
                .filter(|r| r.name.starts_with("flow."))
                .map(|r| r.max_abs)
                .fold(0.0, f64::max);
            assert!(flow_err > 1e-4, "f16 {name}: flow error {flow_err:.2e}");
        }
    }
}

/// tract plans the VAE for one image (its convolution kernels need a concrete batch) and
/// runs a batch image by image: a batch of 3 gives each image's own decode, bit for bit,
/// and matches onnxruntime's batched decode within the VAE bound.
#[test]
fn tract_vae_decodes_a_batch_image_by_image() {
    use flowar_runtime::backend::tract_backend::TractSession;
    use flowar_runtime::backend::BackendOptions;
    use flowar_runtime::tensor::Tensor;
    use flowar_runtime::Provider;
    let (_tmp, dir) = convert_fixture("spatial");
    let graph = dir.join("vae_decoder.onnx");
    let open =
        |file: &str| TractSession::open(&dir.join(file), &BackendOptions::default()).unwrap();
    assert!(open("vae_decoder.onnx").per_image());
    assert!(!open("flow_head.onnx").per_image() && !open("ar_step.onnx").per_image());
    let per = 16 * 16 * 16;
    let latent: Vec<f32> = (0..3 * per)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let batch = Tensor::f32(vec![3, 16, 16, 16], latent.clone());
    let all = run_graph(Provider::Tract, &graph, "latent", &batch);
    let image = all.len() / 3;
    assert_eq!(all.len(), 3 * image);
    for k in 0..3 {
        let one = Tensor::f32(vec![1, 16, 16, 16], latent[k * per..(k + 1) * per].to_vec());
        let alone = run_graph(Provider::Tract, &graph, "latent", &one);
        assert_eq!(alone, all[k * image..(k + 1) * image], "image {k}");
    }
    if cpu_providers().contains(&Provider::OrtCpu) {
        let o = run_graph(Provider::OrtCpu, &graph, "latent", &batch);
        let max = max_abs_diff(&o, &all);
        assert!(max <= 1e-3, "tract vs onnxruntime: {max}");
    }
}
