//! Helpers shared by the CLI test files: run the built `flowar`, fixtures, conversion.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn flowar(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowar"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run flowar")
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Converts the spatial fixture into `dir/m`, asserting success.
pub fn convert_spatial(dir: &Path) -> PathBuf {
    convert_spatial_with(dir, "m", &[])
}

/// `flowar convert --flowar F --vae V --out OUT` with `extra` arguments, run in `dir`.
pub fn convert(dir: &Path, flowar_ckpt: &Path, vae: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "convert",
        "--flowar",
        flowar_ckpt.to_str().unwrap(),
        "--vae",
        vae.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    flowar(&args, dir)
}

/// Converts the spatial fixture into `dir/<name>` with `extra` convert arguments.
pub fn convert_spatial_with(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let f = fixture("spatial");
    let model = dir.join(name);
    let o = convert(
        dir,
        &f.join("flowar.pth"),
        &f.join("vae.ckpt"),
        &model,
        extra,
    );
    assert!(o.status.success(), "{}", text(&o));
    model
}

/// `flowar verify` of `model` against the spatial fixture's reference on tract, with
/// `extra` arguments.
pub fn verify_spatial(dir: &Path, model: &Path, extra: &[&str]) -> Output {
    verify_against(dir, model, "spatial", "tract", extra)
}

/// `flowar verify` of `model` against fixture `name`'s reference on `provider`, with
/// `extra` arguments.
pub fn verify_against(
    dir: &Path,
    model: &Path,
    name: &str,
    provider: &str,
    extra: &[&str],
) -> Output {
    let reference = fixture(name).join("expected.safetensors");
    let mut args = vec![
        "verify",
        "--model",
        model.to_str().unwrap(),
        "--reference",
        reference.to_str().unwrap(),
        "--provider",
        provider,
    ];
    args.extend_from_slice(extra);
    flowar(&args, dir)
}

/// Whether onnxruntime can be loaded here; when `FLOWAR_REQUIRE_ORT` is set (CI) its
/// absence fails the test, elsewhere it skips, saying so.
pub fn ort_here(test: &str) -> bool {
    match flowar_runtime::backend::ort_backend::ort_available(&Default::default()) {
        Ok(_) => true,
        Err(why) => {
            assert!(
                std::env::var("FLOWAR_REQUIRE_ORT").as_deref() != Ok("1"),
                "onnxruntime is required: {why}"
            );
            flowar_runtime::test_support::note_skip(
                module_path!(),
                &format!("{test}: onnxruntime is not available ({why})"),
            );
            false
        }
    }
}

/// Whether the loaded onnxruntime is a GPU build (then the CPU-only checks skip).
pub fn ort_is_gpu_build() -> bool {
    flowar_runtime::backend::ort_backend::ort_available(&Default::default())
        .ok()
        .and_then(|lib| {
            lib.parent()
                .map(|d| d.join("libonnxruntime_providers_cuda.so").exists())
        })
        .unwrap_or(false)
}

/// A model folder's `manifest.json`, parsed.
pub fn manifest_json(dir: &Path) -> serde_json::Value {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
