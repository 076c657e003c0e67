//! `--dtype bf16`, the way autocast computes: the transformers' linears as bfloat16
//! products with bfloat16 weights, everything else float32, the VAE marked for OpenVINO's
//! bfloat16. Recorded in the manifest; verified against the fixtures within the recorded
//! bounds on OpenVINO where the CPU computes bfloat16, and refused, with what is missing,
//! everywhere else.

use flowar_exporter::convert::Precision;
use flowar_runtime::backend::{openvino_backend, BackendOptions};
use flowar_runtime::manifest::Manifest;
use flowar_runtime::{Pipeline, PipelineOptions, Provider, ProviderChoice};
use flowar_tests::*;

/// What OpenVINO's CPU plugin says of this CPU; `None` where OpenVINO is missing (a
/// failure under FLOWAR_REQUIRE_OPENVINO).
fn capabilities() -> Option<openvino_backend::CpuCapabilities> {
    match openvino_backend::cpu_capabilities(&BackendOptions::default()) {
        Ok(c) => {
            eprintln!("OpenVINO CPU: {} [{}]", c.device, c.capabilities.join(" "));
            Some(c)
        }
        Err(why) => {
            assert!(
                std::env::var("FLOWAR_REQUIRE_OPENVINO").as_deref() != Ok("1"),
                "OpenVINO is required here: {why}"
            );
            flowar_runtime::test_support::note_skip(
                module_path!(),
                &format!("the OpenVINO runs: {why}"),
            );
            None
        }
    }
}

#[test]
fn bf16_folders_record_their_precision_and_store_products_in_bf16() {
    for name in ["spatial", "cross"] {
        let (_t32, exact) = convert_fixture(name);
        let (_tb, dir) = convert_fixture_as(name, Precision::Bf16);
        let m = Manifest::load(&dir).unwrap();
        let m32 = Manifest::load(&exact).unwrap();
        assert_eq!(m.dtype, "bfloat16");
        assert_ne!(
            m.model_hash, m32.model_hash,
            "bf16 graphs are another model"
        );
        // Pinned here, independently of the exporter's constants.
        assert_eq!((m.verify.graph, m.verify.vae), (0.15, 0.12));
        assert!(!m.verify.pipeline);
        assert_eq!(
            m.graphs.vae_decoder.inference_precision.as_deref(),
            Some("bf16")
        );
        for g in [
            &m.graphs.ar_step,
            &m.graphs.flow_head,
            &m.graphs.solver_step,
        ] {
            assert_eq!(g.inference_precision, None, "{}", g.file);
        }
        // Graph inputs and outputs stay float32.
        assert_eq!(m.graphs.flow_head.inputs, m32.graphs.flow_head.inputs);
        // The linears' weights halve; what stays float32 (the fixture AR's 1001-class
        // embedding table, norms, positions) keeps the AR file above half.
        for (file, most) in [("flow_head.onnx", 0.6), ("ar_step.onnx", 0.75)] {
            let size = |d: &std::path::Path| std::fs::metadata(d.join(file)).unwrap().len();
            assert!(
                (size(&dir) as f64) < most * size(&exact) as f64,
                "{name}/{file}: bf16 {} bytes vs f32 {}",
                size(&dir),
                size(&exact)
            );
        }
    }
}

#[test]
fn bf16_fixtures_verify_on_openvino_where_the_cpu_computes_bf16() {
    let Some(caps) = capabilities() else { return };
    for name in ["spatial", "cross"] {
        let (_t, dir) = convert_fixture_as(name, Precision::Bf16);
        if !caps.has_bf16() {
            let err = load_refused(&dir, ProviderChoice::Named(Provider::OpenVino));
            assert!(err.contains("neither AMX nor AVX512-BF16"), "{err}");
            bf16_missing(&format!("bf16 {name} fixture verified as a refusal"), &err);
            continue;
        }
        let results = verify_on_with_manifest_bounds(name, &dir, Provider::OpenVino, "bf16");
        assert_eq!(results.len(), 16, "{name}");
        for r in &results {
            assert!(r.pass, "bf16 {name}: {r:?}");
            if r.name.starts_with("flow.") || r.name.ends_with(".z") {
                // Really computed in bfloat16: far past float32 rounding.
                assert!(r.max_abs > 1e-4, "{name}: {r:?}");
            }
        }
    }
}

#[test]
fn bf16_folders_are_refused_where_bf16_is_not_native() {
    let (_t, dir) = convert_fixture_as("spatial", Precision::Bf16);
    let err = load_refused(&dir, ProviderChoice::Named(Provider::Tract));
    assert!(err.contains("tract has no native bfloat16"), "{err}");
    assert!(err.contains("--provider openvino"), "{err}");
    if cpu_providers().contains(&Provider::OrtCpu) {
        let err = load_refused(&dir, ProviderChoice::Named(Provider::OrtCpu));
        assert!(
            err.contains("onnxruntime's CPU provider has no bfloat16"),
            "{err}"
        );
    }
    // `auto` picks OpenVINO where it runs the folder, and says why it cannot elsewhere.
    match capabilities() {
        Some(c) if c.has_bf16() => {
            let pipe = load(&dir, Provider::OpenVino);
            assert_eq!(pipe.provider().provider, Provider::OpenVino);
            let auto = Pipeline::load(&dir, &PipelineOptions::default()).unwrap();
            assert_eq!(auto.provider().provider, Provider::OpenVino);
        }
        _ => {
            let err = load_refused(&dir, ProviderChoice::Auto);
            assert!(
                err.contains("no provider here runs this bfloat16 model"),
                "{err}"
            );
            bf16_missing("bf16 `auto` provider choice checked as a refusal", &err);
        }
    }
}

#[test]
fn bf16_and_int8_are_refused_together() {
    let err = int8_conversion_refused_with(Precision::Bf16);
    assert!(err.contains("--quantize int8 and --dtype bf16"), "{err}");
}

/// End to end, bf16 against float32 on the same FlowAR-S-sized random model (preset `s`,
/// seed 0; 1 image, cfg 4.3, 25 steps, the same noise) on OpenVINO: the final tokens move
/// by a bounded relative RMS and the pixels by a bounded PSNR and level count (pinned at
/// 1.5x what this test measured, below), and the VAE really computes in bfloat16 there:
/// the same latent decodes to different pixels than in float32.
#[test]
fn bf16_moves_an_s_sized_model_within_pinned_bounds() {
    use flowar_exporter::convert::{convert_as, ConvertRequest};
    use flowar_exporter::preset::{flowar_keys, vae_keys, Preset, RandomWeights};
    let Some(caps) = capabilities() else { return };
    if !caps.has_bf16() {
        bf16_missing("the bf16-vs-float32 end-to-end bound", "no BF16 capability");
        return;
    }
    let preset: Preset = "s".parse().unwrap();
    let f = RandomWeights::new("preset s".into(), 0, flowar_keys(&preset.flowar()));
    let v = RandomWeights::new("preset kl16".into(), 0, vae_keys(&Preset::vae()));
    let tmp = tempfile::tempdir().unwrap();
    let folder = |p: Precision| {
        let out = tmp.path().join(p.name());
        convert_as(&ConvertRequest::new(&f, &v, &out), p).unwrap();
        out
    };
    let (f32_dir, bf16_dir) = (folder(Precision::F32), folder(Precision::Bf16));
    let run = |dir: &std::path::Path| {
        let mut pipe = load(dir, Provider::OpenVino);
        let req = pipe
            .request()
            .with_sampler(Some(4.3), Some(0.9), Some(25))
            .with_images(vec![207], 0)
            .unwrap();
        let out = pipe.generate(&req, &mut |_| true).unwrap();
        let m = pipe.manifest().clone();
        let g = m.final_grid();
        let latent = flowar_runtime::tensor::Tensor::f32(
            vec![1, m.latent_channels, g, g],
            vec![0.25; m.latent_channels * g * g],
        );
        let decoded = pipe
            .model_mut()
            .decode(&latent)
            .unwrap()
            .into_f32()
            .unwrap();
        (out, decoded)
    };
    let (exact, exact_vae) = run(&f32_dir);
    let (half, half_vae) = run(&bf16_dir);
    let rms =
        |v: &[f32]| (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    let diff: Vec<f32> = exact
        .tokens
        .iter()
        .zip(&half.tokens)
        .map(|(a, b)| a - b)
        .collect();
    let rel_rms = rms(&diff) / rms(&exact.tokens);
    let (a, b) = (&exact.images[0].pixels, &half.images[0].pixels);
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    let psnr = 10.0 * (255.0f64.powi(2) / mse).log10();
    let levels = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
    let vae_moved = exact_vae
        .iter()
        .zip(&half_vae)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "bf16 vs float32, preset s on openvino: tokens {:.2}% relative RMS, {psnr:.1} dB, {levels} levels; the VAE alone moves {vae_moved:.2e}",
        100.0 * rel_rms
    );
    assert!(
        rel_rms > 0.0 && rel_rms <= 1.5 * BF16_TOKENS_REL_RMS,
        "{rel_rms}"
    );
    assert!(psnr.is_finite() && psnr >= BF16_PSNR_DB - 3.0, "{psnr} dB");
    assert!(levels as f64 <= 1.5 * BF16_LEVELS, "{levels} levels");
    assert!(
        vae_moved > 1e-4,
        "the bf16 folder's VAE decoded like float32 ({vae_moved:e})"
    );
}

/// What `bf16_moves_an_s_sized_model_within_pinned_bounds` measured (preset s, seed 0, on
/// an AMD EPYC with AVX512-BF16 and no AMX, 2026-12-06): 4.37%, 38.0 dB, 18 levels. The
/// bounds: 1.5x the RMS and the levels, 3 dB below the PSNR. (The 1.71% / 44 dB / 11
/// levels in docs/benchmarks.md are for the reference's own random weights, which need
/// PyTorch to load.)
const BF16_TOKENS_REL_RMS: f64 = 0.0437;
const BF16_PSNR_DB: f64 = 38.0;
const BF16_LEVELS: f64 = 18.0;
