//! GPU-facing behaviour that a CPU machine can check: float16 export verified on
//! ort-cpu, GPU option parsing, clear errors for a missing CUDA / TensorRT, and `auto`
//! falling back with a log line. The CUDA / TensorRT runs themselves are in
//! `bench/gpu/check.sh` and need a GPU.

mod common;
use common::*;

#[test]
fn f16_export_passes_verify_on_ort_cpu_within_its_manifest_bound() {
    if !ort_here("f16 verify on ort-cpu") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial_with(tmp.path(), "f16", &["--dtype", "f16"]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["dtype"], "float16");
    assert_eq!(manifest["verify"]["graph"].as_f64().unwrap() as f32, 2e-2);
    assert_eq!(manifest["verify"]["vae"].as_f64().unwrap() as f32, 1e-2);
    assert_eq!(manifest["verify"]["pipeline"], false);
    let reference = fixture("spatial").join("expected.safetensors");
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "verify".to_string(),
            "--model".into(),
            model.display().to_string(),
            "--reference".into(),
            reference.display().to_string(),
            "--provider".into(),
            "ort-cpu".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&'static str]| {
        let a = args(extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        flowar(&a, tmp.path())
    };
    let ok = run(&[]);
    let t = text(&ok);
    assert!(ok.status.success(), "{t}");
    assert!(t.contains("all 16 case(s) within bounds"), "{t}");
    assert!(t.contains("bound 2.0e-2"), "{t}");
    assert!(t.contains("skip  pipe.*"), "{t}");
    // The float32 bound is far too tight for float16 graphs: the bound in use matters.
    let strict = run(&["--tol", "1e-4"]);
    assert!(!strict.status.success(), "{}", text(&strict));
    assert!(text(&strict).contains("FAIL"));
}

#[test]
fn gpu_options_are_parsed_and_bad_ones_refused_before_work() {
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial(tmp.path());
    let m = model.to_str().unwrap();
    for (gpu, needle) in [
        ("trt_fp16=maybe", "not a boolean"),
        ("fp16=1", "unknown GPU option `fp16`"),
        ("mem_limit=lots", "mem_limit"),
        ("mem_limit", "NAME=VALUE"),
        ("trt_max_batch=0", "1..=4096"),
    ] {
        let out = tmp.path().join("out");
        let o = flowar(
            &[
                "generate",
                "--model",
                m,
                "--provider",
                "tract",
                "--gpu",
                gpu,
                "--out",
                out.to_str().unwrap(),
            ],
            tmp.path(),
        );
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{gpu}: {t}");
        assert!(t.contains(needle), "{gpu}: {t}");
        assert!(!out.exists(), "{gpu} left an output folder");
    }
    // Valid GPU options are accepted (and ignored) by a CPU provider.
    let o = flowar(
        &[
            "generate",
            "--model",
            m,
            "--provider",
            "tract",
            "--steps",
            "2",
            "--gpu",
            "mem_limit=2GiB",
            "--gpu",
            "trt_fp16=false",
            "--gpu",
            "cudnn_conv_algo_search=heuristic",
            "--grid",
            tmp.path().join("g.png").to_str().unwrap(),
            "--class",
            "1",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn missing_gpu_providers_are_clear_errors_and_auto_falls_back_with_a_log_line() {
    if !ort_here("GPU provider errors") {
        return;
    }
    if ort_is_gpu_build() {
        flowar_runtime::test_support::note_skip(
            module_path!(),
            "the loaded onnxruntime is a GPU build; bench/gpu/check.sh covers it",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial(tmp.path());
    let m = model.to_str().unwrap();
    for (provider, what) in [("cuda", "CUDA"), ("tensorrt", "TensorRT")] {
        let out = tmp.path().join("out");
        let o = flowar(
            &[
                "generate",
                "--model",
                m,
                "--provider",
                provider,
                "--out",
                out.to_str().unwrap(),
            ],
            tmp.path(),
        );
        let t = text(&o);
        assert!(!o.status.success(), "{provider}: {t}");
        assert!(
            t.contains(&format!("no {what} execution provider")),
            "{provider}: {t}"
        );
        assert!(t.contains("onnxruntime-gpu"), "{provider}: {t}");
        assert!(!t.contains("panicked"), "{t}");
        assert!(!out.exists(), "{provider} left an output folder");
    }
    let o = flowar(
        &[
            "generate",
            "--model",
            m,
            "--steps",
            "2",
            "--class",
            "3",
            "--grid",
            tmp.path().join("g.png").to_str().unwrap(),
        ],
        tmp.path(),
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("provider: ort-cpu (auto: ort-cpu"), "{t}");
    assert!(t.contains("not available: tensorrt ("), "{t}");
    assert!(t.contains("cuda ("), "{t}");
}

/// `--provider auto` without onnxruntime anywhere it searches (no --ort-lib, no
/// ORT_DYLIB_PATH, no `python3` on PATH, no `.venv` in the working directory) runs on
/// tract and says so and why: on stderr, and in run.json.
#[test]
fn auto_falls_back_to_tract_when_onnxruntime_is_nowhere() {
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial(tmp.path());
    // A working directory without .venv, and a PATH of one empty folder.
    let cwd = tmp.path().join("work");
    let empty = tmp.path().join("empty-bin");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(&empty).unwrap();
    let generate = |provider: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_flowar"))
            .args([
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--provider",
                provider,
                "--steps",
                "2",
                "--class",
                "3",
                "--out",
                "images",
            ])
            .env_remove("ORT_DYLIB_PATH")
            .env("PATH", &empty)
            .current_dir(&cwd)
            .output()
            .unwrap()
    };
    // The premise: asked for by name, onnxruntime is an error naming each place searched.
    let named = generate("ort-cpu");
    let t = text(&named);
    assert_eq!(named.status.code(), Some(1), "{t}");
    for searched in [
        "--ort-lib (not given)",
        "ORT_DYLIB_PATH (not set)",
        "python3's onnxruntime package (could not run python3",
        ".venv/lib/python3*/site-packages/onnxruntime/capi/",
    ] {
        assert!(t.contains(searched), "`{searched}` not in {t}");
    }
    assert!(!cwd.join("images").exists(), "{t}");

    let o = generate("auto");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("provider: "))
        .unwrap_or_else(|| panic!("no provider line: {t}"));
    assert!(
        line.starts_with(
            "provider: tract (auto: tract, the pure-Rust CPU engine, because onnxruntime is not usable ("
        ),
        "{line}"
    );
    // The log line gives each skipped provider's first reason.
    for why in [
        "ort-cpu (no ONNX Runtime library found",
        "tensorrt (",
        "cuda (",
    ] {
        assert!(line.contains(why), "`{why}` not in {line}");
    }
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cwd.join("images/run.json")).unwrap())
            .unwrap();
    assert_eq!(run["provider"], "tract");
    let reason = run["provider_reason"].as_str().unwrap();
    assert!(
        line.contains(reason),
        "run.json's reason `{reason}` vs {line}"
    );
}
