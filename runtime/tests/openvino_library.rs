//! OpenVINO's C library is process-global, so the library-search checks live in their own
//! test binary, where nothing has loaded it yet: a bogus path and a folder without the
//! library are clear errors (never panics), and the documented search then finds the
//! project's `.venv` with no flag, no `OPENVINO_LIB_PATH` and no `python3` on PATH.

mod common;

use std::path::PathBuf;

use flowar_runtime::backend::openvino_backend::{self, OpenVinoSession};
use flowar_runtime::backend::BackendOptions;
use flowar_runtime::error::Error;

const PROBE: &str = "FLOWAR_OPENVINO_PROBE";
const TEST: &str = "library_search_refuses_bad_paths_then_finds_the_venv";

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_kv.onnx")
}

fn expect_unavailable(opts: &BackendOptions, needles: &[&str]) {
    let e = OpenVinoSession::open(&tiny(), opts).unwrap_err();
    match &e {
        Error::ProviderUnavailable {
            provider, reason, ..
        } => {
            assert_eq!(provider, "openvino");
            for needle in needles {
                assert!(reason.contains(needle), "reason lacks `{needle}`: {reason}");
            }
        }
        other => panic!("expected ProviderUnavailable, got {other:?}"),
    }
    eprintln!("{e}");
}

/// The child process: bad paths first (nothing loaded yet), then the default search.
fn probe() {
    let bogus = PathBuf::from("/nonexistent/flowar/libopenvino_c.so.2641");
    expect_unavailable(
        &BackendOptions {
            openvino_lib: Some(bogus.clone()),
            ..Default::default()
        },
        &[
            &bogus.display().to_string(),
            "does not exist",
            "pip install openvino",
        ],
    );
    let empty = tempfile::tempdir().unwrap();
    expect_unavailable(
        &BackendOptions {
            openvino_lib: Some(empty.path().to_path_buf()),
            ..Default::default()
        },
        &["holds no libopenvino_c.so", "pip install openvino"],
    );
    match openvino_backend::cpu_capabilities(&BackendOptions::default()) {
        Ok(caps) => println!("LOADED {}", caps.capabilities.join(" ")),
        Err(why) => println!("UNAVAILABLE {why}"),
    }
}

#[test]
fn library_search_refuses_bad_paths_then_finds_the_venv() {
    if std::env::var_os(PROBE).is_some() {
        probe();
        return;
    }
    if !common::venv_has("openvino/libs", "FLOWAR_REQUIRE_OPENVINO") {
        return;
    }
    // No python3 on PATH, no OPENVINO_LIB_PATH, run from the repository root.
    let line = common::run_probe(TEST, PROBE, "OPENVINO_LIB_PATH");
    assert!(
        line.starts_with("LOADED ") && line.contains("FP32"),
        "{line}"
    );
}
