//! onnxruntime is found in the repository's `.venv` (what scripts/test.sh installs) with
//! neither `--ort-lib`, `ORT_DYLIB_PATH` nor a `python3` that knows onnxruntime: the last
//! step of the documented search. The library is process-global, so the search runs in a
//! child process of this test with that environment.

mod common;

use flowar_runtime::backend::{ort_backend, BackendOptions};

const PROBE: &str = "FLOWAR_VENV_PROBE";
const TEST: &str = "onnxruntime_is_found_in_the_venv_without_ort_dylib_path";

#[test]
fn onnxruntime_is_found_in_the_venv_without_ort_dylib_path() {
    if std::env::var_os(PROBE).is_some() {
        // The child: report what the search found.
        match ort_backend::ort_available(&BackendOptions::default()) {
            Ok(lib) => println!("LOADED {}", lib.display()),
            Err(why) => println!("UNAVAILABLE {why}"),
        }
        return;
    }
    if !common::venv_has("onnxruntime/capi", "FLOWAR_REQUIRE_ORT") {
        return;
    }
    // No python3 on PATH, no ORT_DYLIB_PATH, run from the repository root.
    let line = common::run_probe(TEST, PROBE, "ORT_DYLIB_PATH");
    let repo = common::repo();
    let venv = repo.join(".venv/lib").display().to_string();
    assert!(
        line.starts_with(&format!("LOADED {venv}/python3"))
            && line.contains("/site-packages/onnxruntime/capi/libonnxruntime.so"),
        "{line}"
    );
}
