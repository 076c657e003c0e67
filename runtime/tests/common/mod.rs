//! The child-probe pattern of the library-search tests: an engine's library is
//! process-global, so the search runs in a child process of the test (this same test
//! binary, with a probe variable set) under the environment the test chooses.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Whether the repository's `.venv` holds `package_dir` (e.g. `onnxruntime/capi`) in its
/// site-packages. When it does not, `require` set to 1 fails the test (as scripts/test.sh
/// sets it); otherwise the test skips, saying so.
pub fn venv_has(package_dir: &str, require: &str) -> bool {
    let repo = repo();
    let found = std::fs::read_dir(repo.join(".venv/lib"))
        .map(|rd| {
            rd.flatten()
                .any(|e| e.path().join("site-packages").join(package_dir).is_dir())
        })
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var(require).as_deref() != Ok("1"),
            "{package_dir} is required in {}/.venv (scripts/test.sh installs it)",
            repo.display()
        );
        flowar_runtime::test_support::note_skip(
            module_path!(),
            &format!("no {package_dir} in {}/.venv", repo.display()),
        );
    }
    found
}

/// Runs test `test` of this binary again as a child with `probe` set, `cleared` unset, no
/// `python3` on PATH, from the repository root; returns the line the child printed that
/// starts with `LOADED ` or `UNAVAILABLE `.
pub fn run_probe(test: &str, probe: &str, cleared: &str) -> String {
    let no_path = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(probe, "1")
        .env_remove(cleared)
        .env("PATH", no_path.path())
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    // libtest prints the test's name first on the same line.
    ["LOADED ", "UNAVAILABLE "]
        .iter()
        .find_map(|tag| {
            stdout
                .find(tag)
                .map(|at| stdout[at..].lines().next().unwrap().to_string())
        })
        .unwrap_or_else(|| panic!("the probe reported nothing: {stdout}{stderr}"))
}
