//! Runs the tiny KV-cache graph (tests/data/tiny_kv.onnx, made by make_tiny.py) on every
//! CPU backend (tract, onnxruntime, OpenVINO) and checks their error reporting.

use std::path::PathBuf;

use flowar_runtime::backend::openvino_backend::{self, OpenVinoSession};
use flowar_runtime::backend::ort_backend::{self, OrtSession};
use flowar_runtime::backend::tract_backend::TractSession;
use flowar_runtime::backend::{open_session, BackendOptions, Provider, Session};
use flowar_runtime::error::Error;
use flowar_runtime::tensor::Tensor;

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_kv.onnx")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowar-backend-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Whether onnxruntime can be found with the normal search; if not, ort tests are skipped.
fn ort_ok() -> bool {
    match ort_backend::ort_available(&BackendOptions::default()) {
        Ok(_) => true,
        Err(why) => {
            // CI sets FLOWAR_REQUIRE_ORT=1: there a missing onnxruntime is a failure.
            assert!(
                std::env::var("FLOWAR_REQUIRE_ORT").as_deref() != Ok("1"),
                "onnxruntime is required: {why}"
            );
            flowar_runtime::test_support::note_skip(
                module_path!(),
                &format!("onnxruntime checks: {why}"),
            );
            false
        }
    }
}

/// Whether OpenVINO can be found with the normal search; `FLOWAR_REQUIRE_OPENVINO` (CI)
/// makes its absence a failure.
fn openvino_ok() -> bool {
    match openvino_backend::available(&BackendOptions::default()) {
        Ok(()) => true,
        Err(why) => {
            assert!(
                std::env::var("FLOWAR_REQUIRE_OPENVINO").as_deref() != Ok("1"),
                "OpenVINO is required: {why}"
            );
            flowar_runtime::test_support::note_skip(
                module_path!(),
                &format!("OpenVINO checks: {why}"),
            );
            false
        }
    }
}

/// A session on each engine that loads here, by backend name.
fn sessions(opts: &BackendOptions) -> Vec<(&'static str, Box<dyn Session>)> {
    let mut v: Vec<(&'static str, Box<dyn Session>)> = vec![(
        "tract",
        Box::new(TractSession::open(&tiny(), opts).unwrap()),
    )];
    if ort_ok() {
        v.push((
            "onnxruntime",
            Box::new(OrtSession::open(Provider::OrtCpu, &tiny(), opts).unwrap()),
        ));
    }
    if openvino_ok() {
        v.push((
            "openvino",
            Box::new(OpenVinoSession::open(&tiny(), opts).unwrap()),
        ));
    }
    v
}

struct Case {
    x: Tensor,
    past: Tensor,
    flag: Tensor,
}

fn case(b: usize, n: usize, p: usize, flag: bool) -> Case {
    let x: Vec<f32> = (0..b * n * 4).map(|i| i as f32 * 0.5 - 3.0).collect();
    let past: Vec<f32> = (0..b * 2 * p * 4).map(|i| 100.0 + i as f32).collect();
    Case {
        x: Tensor::f32(vec![b, n, 4], x),
        past: Tensor::f32(vec![b, 2, p, 4], past),
        flag: Tensor::bool_scalar(flag),
    }
}

/// What the graph computes, written out by hand.
fn expected(c: &Case, flag: bool) -> (Tensor, Tensor) {
    let (b, n, p) = (c.x.shape[0], c.x.shape[1], c.past.shape[2]);
    let x = c.x.as_f32().unwrap();
    let past = c.past.as_f32().unwrap();
    let y: Vec<f32> = x
        .iter()
        .map(|&v| if flag { v * 2.0 } else { v + 1.0 })
        .collect();
    let t = p + n;
    let mut present = Vec::with_capacity(b * 2 * t * 4);
    for bi in 0..b {
        for h in 0..2 {
            let start = ((bi * 2 + h) * p) * 4;
            present.extend_from_slice(&past[start..start + p * 4]);
            present.extend_from_slice(&x[bi * n * 4..(bi + 1) * n * 4]);
        }
    }
    (
        Tensor::f32(vec![b, n, 4], y),
        Tensor::f32(vec![b, 2, t, 4], present),
    )
}

fn run_case(s: &mut dyn Session, c: &Case) -> Vec<Tensor> {
    // Deliberately not in the graph's declaration order: inputs are matched by name.
    s.run(&[("flag", &c.flag), ("past", &c.past), ("x", &c.x)])
        .unwrap()
}

#[test]
fn every_backend_agrees_with_the_reference() {
    let opts = BackendOptions {
        threads: Some(1),
        ..Default::default()
    };
    let tract = TractSession::open(&tiny(), &opts).unwrap();
    assert_eq!(tract.input_names(), ["x", "past", "flag"]);
    assert_eq!(tract.output_names(), ["y", "present"]);
    if ort_ok() {
        let o = OrtSession::open(Provider::OrtCpu, &tiny(), &opts).unwrap();
        assert_eq!(o.input_names(), ["x", "past", "flag"]);
        assert_eq!(o.output_names(), ["y", "present"]);
    }
    if openvino_ok() {
        let o = OpenVinoSession::open(&tiny(), &opts).unwrap();
        assert_eq!(o.input_names(), ["x", "past", "flag"]);
        assert_eq!(o.output_names(), ["y", "present"]);
    }
    let mut all = sessions(&opts);
    // One session serves every symbolic size, including an empty past.
    for (b, n, p) in [(2, 3, 0), (2, 3, 2), (1, 1, 0), (1, 5, 7), (2, 0, 3)] {
        for flag in [true, false] {
            let c = case(b, n, p, flag);
            let (y, present) = expected(&c, flag);
            for (backend, s) in all.iter_mut() {
                let got = run_case(s.as_mut(), &c);
                assert_eq!(
                    got,
                    vec![y.clone(), present.clone()],
                    "{backend} b={b} n={n} p={p} flag={flag}"
                );
            }
        }
    }
}

#[test]
fn open_session_dispatches() {
    let opts = BackendOptions::default();
    let c = case(2, 3, 0, true);
    let mut providers = vec![Provider::Tract];
    if ort_ok() {
        providers.push(Provider::OrtCpu);
    }
    if openvino_ok() {
        providers.push(Provider::OpenVino);
    }
    for p in providers {
        let mut s = open_session(p, &tiny(), &opts).unwrap();
        let out = run_case(s.as_mut(), &c);
        assert_eq!(out[1].shape, vec![2, 2, 3, 4], "{p:?}");
    }
}

fn assert_model_error(e: Error, path: &std::path::Path, what: &str) {
    let msg = e.to_string();
    eprintln!("{what}: {msg}");
    match &e {
        Error::Model { path: p, .. } => assert_eq!(p, path, "{what}: {msg}"),
        other => panic!("{what}: expected Error::Model, got {other:?}"),
    }
    assert!(
        msg.contains(&path.display().to_string()),
        "{what}: message lacks the path: {msg}"
    );
}

#[test]
fn missing_graph_is_a_model_error_naming_the_path() {
    let path = scratch("does-not-exist.onnx");
    let opts = BackendOptions::default();
    let e = TractSession::open(&path, &opts).unwrap_err();
    assert!(e.to_string().contains("graph file not found"), "{e}");
    assert_model_error(e, &path, "tract missing");
    // The file check comes first: no onnxruntime needed for this error.
    let e = OrtSession::open(Provider::OrtCpu, &path, &opts).unwrap_err();
    assert!(e.to_string().contains("graph file not found"), "{e}");
    assert_model_error(e, &path, "ort missing");
    let e = OpenVinoSession::open(&path, &opts).unwrap_err();
    assert!(e.to_string().contains("graph file not found"), "{e}");
    assert_model_error(e, &path, "openvino missing");
}

#[test]
fn corrupt_graph_is_a_model_error() {
    let path = scratch("corrupt.onnx");
    // Deterministic junk that is not a protobuf ONNX model.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let junk: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    std::fs::write(&path, junk).unwrap();
    let opts = BackendOptions::default();
    assert_model_error(
        TractSession::open(&path, &opts).unwrap_err(),
        &path,
        "tract corrupt",
    );
    if ort_ok() {
        assert_model_error(
            OrtSession::open(Provider::OrtCpu, &path, &opts).unwrap_err(),
            &path,
            "ort corrupt",
        );
    }
    if openvino_ok() {
        assert_model_error(
            OpenVinoSession::open(&path, &opts).unwrap_err(),
            &path,
            "openvino corrupt",
        );
    }
}

#[test]
fn bad_inputs_are_reported_clearly() {
    let c = case(1, 2, 0, true);
    let opts = BackendOptions::default();
    let mut all = sessions(&opts);
    assert!(!all.is_empty());
    for (backend, s) in all.iter_mut() {
        let e = s.run(&[("x", &c.x), ("past", &c.past)]).unwrap_err();
        assert!(
            matches!(&e, Error::Backend { backend: b, graph, .. } if b == backend && graph == "tiny_kv.onnx"),
            "{e:?}"
        );
        assert!(e.to_string().contains("missing input(s) [flag]"), "{e}");
        let e = s
            .run(&[
                ("x", &c.x),
                ("past", &c.past),
                ("flag", &c.flag),
                ("bogus", &c.x),
            ])
            .unwrap_err();
        assert!(e.to_string().contains("unknown input `bogus`"), "{e}");
        let e = s
            .run(&[("x", &c.x), ("past", &c.past), ("flag", &c.x)])
            .unwrap_err();
        assert!(matches!(&e, Error::Backend { .. }), "{backend}: {e:?}");
        eprintln!("{backend}, wrong dtype: {e}");
        // Still usable after errors.
        assert_eq!(run_case(s.as_mut(), &c).len(), 2);
    }
}

#[test]
fn gpu_providers_are_unavailable_on_the_cpu_wheel() {
    if !ort_ok() {
        return;
    }
    let lib = ort_backend::ort_available(&BackendOptions::default()).unwrap();
    let gpu_wheel = lib
        .parent()
        .map(|d| d.join("libonnxruntime_providers_cuda.so").exists())
        .unwrap_or(false);
    if gpu_wheel {
        flowar_runtime::test_support::note_skip(
            module_path!(),
            &format!("{} is a GPU build", lib.display()),
        );
        return;
    }
    assert!(ort_backend::provider_available(Provider::OrtCpu).is_ok());
    assert!(ort_backend::provider_available(Provider::Tract).is_ok());
    for p in [Provider::Cuda, Provider::TensorRt] {
        let why = ort_backend::provider_available(p).unwrap_err().to_string();
        assert!(why.contains("onnxruntime-gpu"), "{why}");
        assert!(why.contains(&lib.display().to_string()), "{why}");
        let e = OrtSession::open(p, &tiny(), &BackendOptions::default()).unwrap_err();
        match &e {
            Error::ProviderUnavailable {
                provider, reason, ..
            } => {
                assert_eq!(provider, p.name());
                assert!(reason.contains("execution provider"), "{reason}");
            }
            other => panic!("expected ProviderUnavailable, got {other:?}"),
        }
        eprintln!("{e}");
    }
}

/// A graph output that no node produces makes tract's ONNX reader panic (found by
/// `fuzz/`); opening such a graph must be a model error naming the file, not a panic.
#[test]
fn graph_output_without_a_producer_is_a_model_error() {
    let mut bytes = std::fs::read(tiny()).unwrap();
    // The last "present" is the graph output's name (outputs follow nodes and inputs);
    // a same-length rename keeps the protobuf valid.
    let at = bytes
        .windows(7)
        .rposition(|w| w == b"present")
        .expect("the tiny graph names an output `present`");
    bytes[at + 6] = b'z';
    let path = scratch("orphan-output.onnx");
    std::fs::write(&path, &bytes).unwrap();
    let e = TractSession::open(&path, &BackendOptions::default()).unwrap_err();
    assert!(
        e.to_string().contains("not a well-formed ONNX graph"),
        "{e}"
    );
    assert_model_error(e, &path, "tract orphan output");
}
