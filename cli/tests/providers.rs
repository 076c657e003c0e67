//! GPU-facing behaviour that a CPU machine can check: float16 export verified on
//! ort-cpu, GPU option parsing, clear errors for a missing CUDA / TensorRT, and `auto`
//! falling back with a log line. The CUDA / TensorRT runs themselves are in
//! `bench/gpu/check.sh` and need a GPU.

mod common;
use common::*;
use std::path::Path;
use std::process::Output;

#[test]
fn f16_export_passes_verify_on_ort_cpu_within_its_manifest_bound() {
    if !ort_here("f16 verify on ort-cpu") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial_with(tmp.path(), "f16", &["--dtype", "f16"]);
    let manifest: serde_json::Value = manifest_json(&model);
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
        let o = generate_on(tmp.path(), m, provider, &out);
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

/// The folder holding OpenVINO's C library, from `OPENVINO_LIB_PATH` (a file's folder or
/// the folder itself), else the project's `.venv` wheel; `None` when OpenVINO cannot be
/// loaded here (a failure under `FLOWAR_REQUIRE_OPENVINO`, a recorded skip elsewhere).
fn openvino_libs(test: &str) -> Option<std::path::PathBuf> {
    use flowar_runtime::backend::openvino_backend;
    let skip = |why: String| {
        assert!(
            !flowar_runtime::test_support::required("FLOWAR_REQUIRE_OPENVINO"),
            "{test}: OpenVINO is required here: {why}"
        );
        flowar_runtime::test_support::note_skip(module_path!(), &format!("{test}: {why}"));
        None
    };
    if let Err(why) = openvino_backend::available(&Default::default()) {
        return skip(why.to_string());
    }
    let from_env = std::env::var_os("OPENVINO_LIB_PATH")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .map(|p| {
            if p.is_file() {
                p.parent().unwrap().to_path_buf()
            } else {
                p
            }
        });
    let from_venv = || {
        let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
        std::fs::read_dir(&lib).ok()?.find_map(|e| {
            let d = e.ok()?.path().join("site-packages/openvino/libs");
            d.is_dir().then_some(d)
        })
    };
    match from_env.or_else(from_venv) {
        Some(d) => Some(d),
        None => {
            skip("OpenVINO loads, but neither OPENVINO_LIB_PATH nor .venv names its folder".into())
        }
    }
}

/// `flowar generate` run in `cwd` with `args`, the environment changed by `env`
/// (`Some(v)`: set, `None`: removed).
fn flowar_env(args: &[&str], cwd: &Path, env: &[(&str, Option<&std::ffi::OsStr>)]) -> Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_flowar"));
    c.args(args).current_dir(cwd);
    for (k, v) in env {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.output().expect("run flowar")
}

/// `convert --dtype bf16`, then `generate --provider openvino` with OpenVINO found through
/// `--openvino-lib` alone: no OPENVINO_LIB_PATH, no `.venv` below the working folder, no
/// `python3` on PATH. A wrong `--openvino-lib` is refused even with OPENVINO_LIB_PATH
/// pointing at a good library: the flag is what is used. Where the CPU has no bf16, the
/// run must be refused saying so (a failure under FLOWAR_REQUIRE_BF16).
#[test]
fn bf16_round_trip_on_openvino_found_through_the_openvino_lib_flag() {
    let test = "bf16 round trip on openvino";
    let Some(libs) = openvino_libs(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial_with(tmp.path(), "bf16", &["--dtype", "bf16"]);
    let manifest: serde_json::Value = manifest_json(&model);
    assert_eq!(manifest["dtype"], "bfloat16");
    let cwd = tmp.path().join("work");
    let empty = tmp.path().join("empty-bin");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(&empty).unwrap();
    let cache = tmp.path().join("cache");
    let generate = |lib: &Path, out: &str, env_lib: Option<&std::ffi::OsStr>| {
        flowar_env(
            &[
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--provider",
                "openvino",
                "--openvino-lib",
                lib.to_str().unwrap(),
                "--steps",
                "2",
                "--class",
                "3",
                "--out",
                out,
            ],
            &cwd,
            &[
                ("OPENVINO_LIB_PATH", env_lib),
                ("PATH", Some(empty.as_os_str())),
                ("FLOWAR_CACHE_DIR", Some(cache.as_os_str())),
            ],
        )
    };
    let o = generate(&libs, "images", None);
    let t = text(&o);
    let caps =
        flowar_runtime::backend::openvino_backend::cpu_capabilities(&Default::default()).unwrap();
    if !caps.has_bf16() {
        assert_eq!(o.status.code(), Some(1), "{t}");
        assert!(t.contains("neither AMX nor AVX512-BF16"), "{t}");
        assert!(
            !flowar_runtime::test_support::required("FLOWAR_REQUIRE_BF16"),
            "{test}: this CPU has bf16 (FLOWAR_REQUIRE_BF16=1) but OpenVINO refused: {t}"
        );
        flowar_runtime::test_support::note_skip(test, &format!("no bf16 on this CPU: {t}"));
        return;
    }
    assert!(o.status.success(), "{t}");
    assert!(t.contains("provider: openvino (asked for by name"), "{t}");
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cwd.join("images/run.json")).unwrap())
            .unwrap();
    assert_eq!(run["provider"], "openvino");
    assert_eq!(run["dtype"], "bfloat16");
    let png = std::fs::read(cwd.join("images/000000.png")).unwrap();
    let mut reader = png::Decoder::new(std::io::Cursor::new(png))
        .read_info()
        .unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut pixels).unwrap();
    assert!(
        pixels.iter().any(|&p| p != pixels[0]),
        "a flat image from the bf16 model"
    );

    // The flag is authoritative: a folder without the library is refused by name, although
    // OPENVINO_LIB_PATH names a good one.
    let nowhere = tmp.path().join("no-openvino-here");
    std::fs::create_dir_all(&nowhere).unwrap();
    let o = generate(&nowhere, "images2", Some(libs.as_os_str()));
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("--openvino-lib"), "{t}");
    assert!(t.contains(nowhere.to_str().unwrap()), "{t}");
    assert!(!cwd.join("images2").exists(), "{t}");
}

/// A bf16 folder asked to run on a provider that never computes bfloat16 (tract,
/// onnxruntime's CPU provider) is bad usage: exit code 2, naming the provider, the
/// folder, what is missing and where it runs, before any library is loaded, leaving no
/// output.
#[test]
fn bf16_folders_on_providers_without_bf16_are_refused_as_bad_usage() {
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial_with(tmp.path(), "bf16", &["--dtype", "bf16"]);
    let m = model.to_str().unwrap();
    let out = tmp.path().join("out");
    for (provider, why) in [
        ("tract", "tract has no native bfloat16 kernels"),
        (
            "ort-cpu",
            "onnxruntime's CPU provider has no bfloat16 kernels",
        ),
    ] {
        let o = generate_on(tmp.path(), m, provider, &out);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{provider}: {t}");
        assert!(
            t.contains(&format!(
                "provider `{provider}` cannot run the model in {m}"
            )),
            "{provider}: {t}"
        );
        assert!(t.contains(why), "{provider}: {t}");
        assert!(t.contains("--provider openvino"), "{provider}: {t}");
        assert!(!t.contains("panicked"), "{t}");
        assert!(!out.exists(), "{provider} left an output folder");
    }
    // The same for every command that loads a model.
    let o = verify_against(tmp.path(), &model, "spatial", "tract", &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("tract has no native bfloat16 kernels"), "{t}");
}

/// OpenVINO's compiled-graph cache in a fresh FLOWAR_CACHE_DIR: the first load compiles
/// and writes one blob per graph, the second loads all of them from it (OpenVINO's own
/// LOADED_FROM_CACHE, as `generate` reports it) without rewriting any, and the images are
/// the same bytes. Under FLOWAR_CACHE_MAX_BYTES, loading another model folder evicts the
/// least recently used entry and never its own; a cap that is not a size is bad usage.
#[test]
fn openvino_compiled_graphs_are_cached_cold_then_warm_under_a_size_cap() {
    if openvino_libs("openvino compiled-graph cache").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial(tmp.path());
    let cache = tmp.path().join("cache");
    let run = |model: &Path, out: &str, cap: Option<&str>| {
        let o = flowar_env(
            &[
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--provider",
                "openvino",
                "--steps",
                "2",
                "--class",
                "3",
                "--out",
                out,
            ],
            tmp.path(),
            &[
                ("FLOWAR_CACHE_DIR", Some(cache.as_os_str())),
                ("FLOWAR_CACHE_MAX_BYTES", cap.map(std::ffi::OsStr::new)),
            ],
        );
        let t = text(&o);
        (o, t)
    };
    // `openvino: H graph(s) loaded from the compiled-graph cache, C compiled (cache: DIR)`.
    let report = |t: &str| -> (String, std::path::PathBuf) {
        let line = t
            .lines()
            .find(|l| l.starts_with("openvino: "))
            .unwrap_or_else(|| panic!("no cache line in {t}"));
        let (counts, dir) = line.split_once(" (cache: ").unwrap();
        (
            counts.to_string(),
            std::path::PathBuf::from(dir.trim_end_matches(')')),
        )
    };
    let blobs = |dir: &Path| {
        let mut v: Vec<(String, u64, std::time::SystemTime)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".blob"))
            .map(|e| {
                let m = e.metadata().unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    m.len(),
                    m.modified().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };

    let (cold, t) = run(&model, "cold", None);
    assert!(cold.status.success(), "{t}");
    let (counts, entry) = report(&t);
    assert_eq!(
        counts, "openvino: 0 graph(s) loaded from the compiled-graph cache, 3 compiled",
        "{t}"
    );
    assert!(entry.starts_with(cache.join("openvino")), "{t}");
    let written = blobs(&entry);
    assert_eq!(written.len(), 3, "one blob per graph: {written:?}");

    let (warm, t) = run(&model, "warm", None);
    assert!(warm.status.success(), "{t}");
    assert_eq!(
        report(&t),
        (
            "openvino: 3 graph(s) loaded from the compiled-graph cache, 0 compiled".to_string(),
            entry.clone()
        ),
        "{t}"
    );
    assert_eq!(blobs(&entry), written, "the warm load rewrote the cache");
    let image = |out: &str| std::fs::read(tmp.path().join(out).join("000000.png")).unwrap();
    assert!(
        image("cold") == image("warm"),
        "cold and warm images differ"
    );

    // Another folder (a copy: its own entry) under a 1-byte cap: the first folder's entry,
    // the least recently used, goes; the one being loaded stays.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    for f in std::fs::read_dir(&model).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), other.join(f.file_name())).unwrap();
    }
    let (o, t) = run(&other, "other", Some("1"));
    assert!(o.status.success(), "{t}");
    let (counts, other_entry) = report(&t);
    assert!(counts.ends_with(", 3 compiled"), "{t}");
    assert_ne!(other_entry, entry);
    assert!(
        !entry.exists(),
        "the older entry was kept over the cap: {t}"
    );
    assert_eq!(blobs(&other_entry).len(), 3, "{t}");

    let (o, t) = run(&model, "bad-cap", Some("lots"));
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("FLOWAR_CACHE_MAX_BYTES=`lots` is not a positive size"),
        "{t}"
    );
}

/// `flowar generate --model MODEL --provider PROVIDER --out OUT`, run in `cwd`.
fn generate_on(cwd: &Path, model: &str, provider: &str, out: &Path) -> Output {
    flowar(
        &[
            "generate",
            "--model",
            model,
            "--provider",
            provider,
            "--out",
            out.to_str().unwrap(),
        ],
        cwd,
    )
}
