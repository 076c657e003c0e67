//! What the test suites share with `scripts/test.sh`: a check that did not run, or ran in
//! another mode, is written to the file `$FLOWAR_SKIP_LOG` names (one line each), which
//! `test.sh` prints at the end beside the CPU's name. `cargo test` hides a passing test's
//! stderr, so a skip said only there would pass unseen.

use std::io::Write;

/// The README's Rust code, compiled (not run: it needs the converted demo model) by
/// `cargo test --doc`; rustdoc leaves its `sh`, `python` and `c` blocks alone.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeRust;

/// The variable naming the skip log.
pub const SKIP_LOG: &str = "FLOWAR_SKIP_LOG";

/// Records that `what` did not run (or ran differently) and `why`: on stderr, and as one
/// line in `$FLOWAR_SKIP_LOG` when it is set.
pub fn note_skip(what: &str, why: &str) {
    let line = format!("{what}: {}", why.replace('\n', " "));
    eprintln!("SKIPPING {line}");
    if let Some(path) = std::env::var_os(SKIP_LOG) {
        // Appends of one short line from parallel tests do not interleave (O_APPEND).
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Whether the suite requires the check behind `var` (set to `1` by `scripts/test.sh`):
/// then a missing engine or CPU feature fails instead of skipping.
pub fn required(var: &str) -> bool {
    std::env::var(var).as_deref() == Ok("1")
}
