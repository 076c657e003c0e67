//! Helpers shared by the end-to-end tests: fixture paths, conversion, providers.

use std::path::{Path, PathBuf};

use flowar_exporter::checkpoint::Checkpoint;
use flowar_exporter::convert::{convert_as, ConvertRequest, ModelMeta, Precision};
use flowar_exporter::quantize::Quantize;
use flowar_exporter::vae_checkpoint::VaeCheckpoint;
use flowar_runtime::backend::BackendOptions;
use flowar_runtime::{Pipeline, PipelineOptions, Provider, ProviderChoice};

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// `models/<name>`.
pub fn model_source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(name)
}

/// Converts `flowar` + `vae` checkpoints into a fresh temporary model folder.
pub fn convert_files(
    flowar: &Path,
    vae: &Path,
    meta: ModelMeta,
    latent_scale: Option<f64>,
) -> (tempfile::TempDir, PathBuf) {
    convert_files_with(
        flowar,
        vae,
        meta,
        latent_scale,
        flowar_exporter::convert::EXTERNAL_DATA_THRESHOLD,
        Precision::F32,
        None,
    )
}

/// As [`convert_files`], with weights moved to external data above `threshold` bytes and
/// graphs of the given precision.
pub fn convert_files_with(
    flowar: &Path,
    vae: &Path,
    meta: ModelMeta,
    latent_scale: Option<f64>,
    threshold: usize,
    precision: Precision,
    quantize: Option<Quantize>,
) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("model");
    let f = Checkpoint::open(flowar).expect("open flowar checkpoint");
    let v = Checkpoint::open(vae).expect("open vae checkpoint");
    convert_as(
        &ConvertRequest::from_checkpoints(&f, flowar, &v, vae, &out)
            .latent_scale(latent_scale)
            .meta(meta)
            .external_data_threshold(threshold)
            .quantize(quantize),
        precision,
    )
    .expect("convert");
    (tmp, out)
}

/// Converts a fixture from its `.pth` / `.ckpt` files.
pub fn convert_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    convert_fixture_as(name, Precision::F32)
}

/// Converts a fixture with graphs of the given precision.
pub fn convert_fixture_as(name: &str, precision: Precision) -> (tempfile::TempDir, PathBuf) {
    convert_fixture_with(name, precision, None)
}

/// Converts a fixture with the transformers' block linears quantized to int8.
pub fn convert_fixture_quantized(name: &str) -> (tempfile::TempDir, PathBuf) {
    convert_fixture_with(name, Precision::F32, Some(Quantize::Int8))
}

fn convert_fixture_with(
    name: &str,
    precision: Precision,
    quantize: Option<Quantize>,
) -> (tempfile::TempDir, PathBuf) {
    let d = fixture(name);
    convert_files_with(
        &d.join("flowar.pth"),
        &d.join("vae.ckpt"),
        ModelMeta::default(),
        None,
        flowar_exporter::convert::EXTERNAL_DATA_THRESHOLD,
        precision,
        quantize,
    )
}

/// Converts a fixture whose VAE is a diffusers folder (`<name>/vae`), the way `flowar
/// convert --vae DIR` does.
pub fn convert_vae_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let d = fixture(name);
    convert_with_vae(&d.join("flowar.pth"), &d.join("vae"), |r| r)
}

/// Converts `flowar` with the VAE at `vae` (a folder or file in any layout) into a fresh
/// temporary folder, after `edit` adjusts the request.
pub fn convert_with_vae(
    flowar: &Path,
    vae: &Path,
    edit: impl for<'a> FnOnce(ConvertRequest<'a>) -> ConvertRequest<'a>,
) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("model");
    let f = Checkpoint::open(flowar).expect("open flowar checkpoint");
    let v = VaeCheckpoint::open(vae).expect("open the VAE");
    convert_as(
        &edit(ConvertRequest::from_files(&f, flowar, &v, &out)),
        Precision::F32,
    )
    .expect("convert");
    (tmp, out)
}

/// Every per-graph case of fixture `name` against the model folder `dir` on each CPU
/// backend that runs such a model ([`providers_for`]), within the bounds the folder's
/// manifest records (float16 and int8 folders record wider ones), printing each case as
/// `{what} {name} {provider} {case}`.
pub fn verify_with_manifest_bounds(
    name: &str,
    dir: &Path,
    what: &str,
) -> Vec<(Provider, Vec<flowar_runtime::verify::CaseResult>)> {
    let m = flowar_runtime::manifest::Manifest::load(dir).unwrap();
    providers_for(&m)
        .into_iter()
        .map(|p| (p, verify_on_with_manifest_bounds(name, dir, p, what)))
        .collect()
}

/// [`verify_with_manifest_bounds`] on provider `p` alone.
pub fn verify_on_with_manifest_bounds(
    name: &str,
    dir: &Path,
    p: Provider,
    what: &str,
) -> Vec<flowar_runtime::verify::CaseResult> {
    use flowar_runtime::verify::Tolerances;
    let m = flowar_runtime::manifest::Manifest::load(dir).unwrap();
    m.verify
        .check(&m.dtype, m.quantization.is_some())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let tol = Tolerances {
        graph: m.verify.graph,
        vae: m.verify.vae,
        vae_u8_levels: m.verify.vae_u8_levels(),
        pipeline: m.verify.pipeline,
        ..Tolerances::default()
    };
    let results = verify_on(name, dir, p, &tol, None);
    for r in &results {
        eprintln!(
            "{what} {name} {} {}: max_abs {:.3e} (bound {:.1e})",
            p.name(),
            r.name,
            r.max_abs,
            r.bound
        );
    }
    results
}

/// Runs fixture `name`'s reference cases against model folder `dir` on every CPU provider.
fn run_verify(
    name: &str,
    dir: &Path,
    tol: &flowar_runtime::verify::Tolerances,
    settings: Option<&flowar_runtime::verify::PipeSettings>,
) -> Vec<(Provider, Vec<flowar_runtime::verify::CaseResult>)> {
    cpu_providers()
        .into_iter()
        .map(|p| (p, verify_on(name, dir, p, tol, settings)))
        .collect()
}

/// Runs fixture `name`'s reference cases against model folder `dir` on provider `p`.
fn verify_on(
    name: &str,
    dir: &Path,
    p: Provider,
    tol: &flowar_runtime::verify::Tolerances,
    settings: Option<&flowar_runtime::verify::PipeSettings>,
) -> Vec<flowar_runtime::verify::CaseResult> {
    use flowar_runtime::verify::{self, Reference};
    let reference = Reference::load(&fixture(name).join("expected.safetensors")).unwrap();
    let mut pipe = load(dir, p);
    verify::run(&mut pipe, &reference, tol, settings).unwrap()
}

/// Runs the one-input graph file `graph` on provider `p`; its first output as float32.
pub fn run_graph(
    p: Provider,
    graph: &Path,
    input: &str,
    x: &flowar_runtime::tensor::Tensor,
) -> Vec<f32> {
    let opts = BackendOptions::default();
    let mut s = flowar_runtime::backend::open_session(p, graph, &opts).unwrap();
    s.run(&[(input, x)]).unwrap().remove(0).into_f32().unwrap()
}

/// Largest element-wise absolute difference of two equally long slices. A NaN on either
/// side panics, naming where: folding with `f32::max` drops NaN, which would call an
/// all-NaN output identical to anything.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "max_abs_diff of unequal lengths");
    let mut max = 0f32;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs();
        assert!(
            !d.is_nan(),
            "max_abs_diff: element {i} is {x} against {y} (NaN)"
        );
        max = max.max(d);
    }
    max
}

/// The CPU providers every fixture must pass on. onnxruntime and OpenVINO are required
/// when `FLOWAR_REQUIRE_ORT` / `FLOWAR_REQUIRE_OPENVINO` are set (CI); elsewhere a missing
/// one is skipped, loudly.
pub fn cpu_providers() -> Vec<Provider> {
    let opts = BackendOptions::default();
    let mut v = Vec::new();
    for (p, var) in [
        (Provider::OrtCpu, "FLOWAR_REQUIRE_ORT"),
        (Provider::OpenVino, "FLOWAR_REQUIRE_OPENVINO"),
    ] {
        match flowar_runtime::backend::available(p, &opts) {
            Ok(()) => v.push(p),
            Err(why) => {
                assert!(
                    std::env::var(var).as_deref() != Ok("1"),
                    "{} is required here ({var}): {why}",
                    p.name()
                );
                flowar_runtime::test_support::note_skip(
                    module_path!(),
                    &format!("{}: {why}", p.name()),
                );
            }
        }
    }
    v.push(Provider::Tract);
    v
}

/// The CPU providers that must run the model `m`, pinned per kind of folder (not taken
/// from the code under test, so a provider that wrongly refused a folder would fail here
/// instead of dropping out of every test): float32 and float16 folders on ort-cpu, tract
/// and OpenVINO; int8 folders on ort-cpu and tract (OpenVINO refuses int8, tested
/// beside them); bfloat16 folders on OpenVINO alone, where the CPU has bfloat16. Engines
/// missing here were already skipped or failed by [`cpu_providers`].
pub fn providers_for(m: &flowar_runtime::manifest::Manifest) -> Vec<Provider> {
    let pinned: &[Provider] = match (m.quantization.is_some(), m.dtype.as_str()) {
        (true, _) => &[Provider::OrtCpu, Provider::Tract],
        (false, "bfloat16") => &[Provider::OpenVino],
        (false, "float32" | "float16") => &[Provider::OrtCpu, Provider::Tract, Provider::OpenVino],
        (false, other) => panic!("no pinned providers for a {other} folder"),
    };
    let here = cpu_providers();
    let opts = BackendOptions::default();
    let mut v = Vec::new();
    for &p in pinned.iter().filter(|p| here.contains(p)) {
        match flowar_runtime::provider::runs_model(p, m.into(), &opts) {
            Ok(()) => v.push(p),
            // The one refusal a pinned provider may give: bfloat16 without CPU support.
            Err(e) if m.dtype == "bfloat16" => bf16_missing("a bf16 folder's runs", &e.to_string()),
            Err(e) => panic!(
                "{} refuses a {}{} folder it must run: {e}",
                p.name(),
                m.dtype,
                if m.quantization.is_some() {
                    " int8"
                } else {
                    ""
                }
            ),
        }
    }
    v
}

pub fn load(dir: &Path, p: Provider) -> Pipeline {
    Pipeline::load(
        dir,
        &PipelineOptions {
            provider: ProviderChoice::Named(p),
            backend: BackendOptions::default(),
        },
    )
    .unwrap_or_else(|e| panic!("loading {} on {}: {e}", dir.display(), p.name()))
}

/// Prints each verify result of fixture `name` on provider `p`, one line each.
pub fn print_results(name: &str, p: Provider, results: &[flowar_runtime::verify::CaseResult]) {
    for r in results {
        eprintln!(
            "{name} {} {}: max_abs {:.3e} (bound {:.1e}){}",
            p.name(),
            r.name,
            r.max_abs,
            r.bound,
            r.identical
                .map(|s| format!(", {:.3}% identical", s * 100.0))
                .unwrap_or_default()
        );
    }
}

/// Reads a fixture's `config.json`.
pub fn fixture_config(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("config.json")).expect("config.json");
    serde_json::from_str(&text).expect("config json")
}

/// Every case of fixture `name`'s reference run on the model folder `dir`, on every CPU
/// provider, within the suite's bounds: `(provider, results)` per provider.
///
/// `verify`'s defaults (99% identical, 2 levels) leave room for other machines and
/// engines; here the bounds are what the suite measures on every fixture and CPU backend:
/// every image byte within one level, and 99.90% (spatial, ort-cpu) to 99.97% of them
/// identical. A byte moves only where float32 rounding differs from PyTorch's in the last
/// bit and the pixel sits on a rounding edge; the 0.1-point margin below the least
/// measured share is for CPUs whose kernels round differently (AVX2 vs AVX-512 matmul
/// blocking). Pipeline tokens get 4x the fixture's measured float64-vs-float32 drift.
pub fn verify_fixture(
    name: &str,
    dir: &Path,
) -> Vec<(Provider, Vec<flowar_runtime::verify::CaseResult>)> {
    use flowar_runtime::verify::{PipeSettings, Tolerances};
    let cfg = fixture_config(name);
    let settings = PipeSettings {
        cfg: cfg["cfg"].as_f64().unwrap(),
        guidance: cfg["guidance"].as_f64().unwrap(),
        steps: cfg["num_steps"].as_u64().unwrap() as usize,
        labels: serde_json::from_value(cfg["labels"].clone()).unwrap(),
        keep_scales: cfg["keep_scales"].as_u64().map(|k| k as usize),
    };
    // The fixtures on diffusers VAEs record no float64 run: the README's floor applies.
    let drift = cfg["float64_vs_float32_tokens_max_abs_diff"]
        .as_f64()
        .unwrap_or(0.0) as f32;
    let per_graph =
        flowar_runtime::verify::Reference::load(&fixture(name).join("expected.safetensors"))
            .unwrap()
            .has("flow.s0.v");
    let tol = Tolerances {
        pipe_tokens: (4.0 * drift).max(1e-3),
        pipe_identical: 0.998,
        pipe_u8_levels: 1,
        ..Tolerances::default()
    };
    run_verify(name, dir, &tol, Some(&settings))
        .into_iter()
        .map(|(p, results)| {
            // The bound (4x the recorded drift, at least 1e-3) is up to 9000x what a
            // correct implementation reaches on `cross`: pinned to the measured error.
            let pin = measured_pipe_tokens(name);
            // (A failing case is the caller's to judge: some tests expect failures.)
            if let Some(r) = results.iter().find(|r| r.name == "pipe.tokens" && r.pass) {
                assert!(
                    r.max_abs <= PIPE_TOKENS_MARGIN * pin,
                    "{name} on {}: pipe.tokens {:.3e} is past {PIPE_TOKENS_MARGIN} x the measured {pin:.1e}",
                    p.name(),
                    r.max_abs
                );
            }
            // 5 flow cases, 5 AR steps, 4 upsamplings (where the fixture has per-graph
            // cases), 2 VAE, 2 pipeline.
            assert_eq!(
                results.len(),
                if per_graph { 18 } else { 4 },
                "{name} on {}: cases {:?}",
                p.name(),
                results.iter().map(|r| &r.name).collect::<Vec<_>>()
            );
            (p, results)
        })
        .collect()
}

/// The error converting the spatial fixture with `precision` and int8 linears, after
/// checking that no output folder was left.
pub fn int8_conversion_refused_with(precision: Precision) -> String {
    let d = fixture("spatial");
    let f = Checkpoint::open(&d.join("flowar.pth")).unwrap();
    let v = Checkpoint::open(&d.join("vae.ckpt")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let err = convert_as(
        &ConvertRequest::from_checkpoints(&f, &d.join("flowar.pth"), &v, &d.join("vae.ckpt"), &out)
            .quantize(Some(Quantize::Int8)),
        precision,
    )
    .expect_err("int8 with a reduced precision must be refused")
    .to_string();
    assert!(!out.exists(), "a refused conversion left {}", out.display());
    err
}

/// The message loading `dir` on `choice` is refused with, which must be a provider that
/// cannot run this model (`ProviderUnavailable`), not any other failure.
pub fn load_refused(dir: &Path, choice: ProviderChoice) -> String {
    let opts = PipelineOptions {
        provider: choice,
        backend: BackendOptions::default(),
    };
    match Pipeline::load(dir, &opts) {
        Ok(_) => panic!("{choice:?} loaded {}", dir.display()),
        Err(e @ flowar_runtime::Error::ProviderUnavailable { .. }) => e.to_string(),
        Err(other) => panic!("{choice:?}: expected ProviderUnavailable, got {other}"),
    }
}

/// OpenVINO reports no bfloat16 on this CPU, so a bf16 check ran as a refusal check. Where
/// `/proc/cpuinfo` shows bf16 (`scripts/test.sh` then sets `FLOWAR_REQUIRE_BF16=1`) that
/// is a missing bf16 path and fails; elsewhere it is recorded for test.sh's summary.
pub fn bf16_missing(what: &str, refusal: &str) {
    assert!(
        !flowar_runtime::test_support::required("FLOWAR_REQUIRE_BF16"),
        "{what}: this CPU has bf16 (FLOWAR_REQUIRE_BF16=1) but OpenVINO refused: {refusal}"
    );
    flowar_runtime::test_support::note_skip(what, &format!("no bf16 on this CPU: {refusal}"));
}

/// `pipe.tokens`' largest error per fixture over ort-cpu, tract and OpenVINO (an Intel
/// Xeon with AVX-512 on 2026-12-05, an AMD EPYC with AVX-512 on 2026-12-06; neither has AMX), rounded up; [`PIPE_TOKENS_MARGIN`] above it fails.
pub fn measured_pipe_tokens(name: &str) -> f64 {
    match name {
        "spatial" => 6.2e-4,
        "cross" => 6.2e-5,
        "flux-f8c16" => 2.3e-4,
        "sd-f8c4" => 5.4e-4,
        other => panic!("no measured pipe.tokens error for fixture {other}"),
    }
}

/// Room above [`measured_pipe_tokens`] for other CPUs' kernels; below every bound.
pub const PIPE_TOKENS_MARGIN: f64 = 1.5;
