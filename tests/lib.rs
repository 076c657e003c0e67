//! Helpers shared by the end-to-end tests: fixture paths, conversion, providers.

use std::path::{Path, PathBuf};

use flowar_exporter::checkpoint::Checkpoint;
use flowar_exporter::convert::{convert_as, ConvertRequest, ModelMeta, Precision};
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
) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("model");
    let f = Checkpoint::open(flowar).expect("open flowar checkpoint");
    let v = Checkpoint::open(vae).expect("open vae checkpoint");
    convert_as(
        &ConvertRequest::from_checkpoints(&f, flowar, &v, vae, &out)
            .latent_scale(latent_scale)
            .meta(meta)
            .external_data_threshold(threshold),
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
    let d = fixture(name);
    convert_files_with(
        &d.join("flowar.pth"),
        &d.join("vae.ckpt"),
        ModelMeta::default(),
        None,
        flowar_exporter::convert::EXTERNAL_DATA_THRESHOLD,
        precision,
    )
}

/// The CPU providers every fixture must pass on. onnxruntime is required when
/// `FLOWAR_REQUIRE_ORT` is set (CI); elsewhere its absence skips it, loudly.
pub fn cpu_providers() -> Vec<Provider> {
    let mut v = vec![Provider::Tract];
    match flowar_runtime::backend::ort_backend::ort_available(&BackendOptions::default()) {
        Ok(_) => v.insert(0, Provider::OrtCpu),
        Err(why) => {
            assert!(
                std::env::var("FLOWAR_REQUIRE_ORT").is_err(),
                "onnxruntime is required here: {why}"
            );
            eprintln!("SKIPPING ort-cpu: {why}");
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

/// Reads a fixture's `config.json`.
pub fn fixture_config(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("config.json")).expect("config.json");
    serde_json::from_str(&text).expect("config json")
}
