//! onnxruntime is found in the repository's `.venv` (what scripts/test.sh installs) with
//! neither `--ort-lib`, `ORT_DYLIB_PATH` nor a `python3` that knows onnxruntime: the last
//! step of the documented search. The library is process-global, so the search runs in a
//! child process of this test with that environment.

use std::path::Path;
use std::process::Command;

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
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let has_venv_ort = std::fs::read_dir(repo.join(".venv/lib"))
        .map(|rd| {
            rd.flatten()
                .any(|e| e.path().join("site-packages/onnxruntime/capi").is_dir())
        })
        .unwrap_or(false);
    if !has_venv_ort {
        assert!(
            std::env::var("FLOWAR_REQUIRE_ORT").as_deref() != Ok("1"),
            "onnxruntime is required in {}/.venv (scripts/test.sh installs it)",
            repo.display()
        );
        eprintln!("SKIPPING: no onnxruntime in {}/.venv", repo.display());
        return;
    }
    // No python3 on PATH, no ORT_DYLIB_PATH, run from the repository root.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads", "1"])
        .env(PROBE, "1")
        .env_remove("ORT_DYLIB_PATH")
        .env("PATH", empty.path())
        .current_dir(repo)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // libtest prints the test's name first on the same line.
    let line = ["LOADED ", "UNAVAILABLE "]
        .iter()
        .find_map(|tag| {
            stdout
                .find(tag)
                .map(|at| stdout[at..].lines().next().unwrap())
        })
        .unwrap_or_else(|| panic!("the probe reported nothing: {stdout}"));
    let venv = repo.join(".venv/lib").display().to_string();
    assert!(
        line.starts_with(&format!("LOADED {venv}/python3"))
            && line.contains("/site-packages/onnxruntime/capi/libonnxruntime.so"),
        "{line}"
    );
}
