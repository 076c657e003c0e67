//! CI smoke of every fuzz target: `FLOWAR_FUZZ_SECONDS` (default 10) of mutated inputs
//! each. Any panic fails the test and prints the input (also written to
//! `FLOWAR_FUZZ_CRASH_DIR`, default the test's temporary target folder).

use flowar_fuzz::{Config, TargetKind};

#[global_allocator]
static ALLOC: flowar_fuzz::TrackingAlloc = flowar_fuzz::TrackingAlloc;

/// No input may make a reader allocate more than this at once: sizes a file declares are
/// checked against the data actually there before anything is allocated.
const MAX_ALLOCATION: usize = 256 << 20;

fn smoke(kind: TargetKind) {
    let mut cfg = Config::from_env(10.0);
    cfg.crash_dir.get_or_insert_with(|| {
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes")
    });
    let report = flowar_fuzz::fuzz(kind, &cfg);
    println!("{report}");
    if let Some(c) = report.crashes.first() {
        let shown: String = c
            .input
            .iter()
            .take(256)
            .map(|b| format!("{b:02x}"))
            .collect();
        panic!(
            "{}: {} input(s) panicked; first (input #{}, {} bytes{}):\n{}\ninput starts: {shown}",
            kind.name(),
            report.crashes.len(),
            c.iteration,
            c.input.len(),
            c.saved
                .as_ref()
                .map(|p| format!(", saved to {}", p.display()))
                .unwrap_or_default(),
            c.message
        );
    }
    // The seeds are valid inputs: the target must accept them, and the mutations must reach
    // its error paths, or the run exercised nothing.
    assert!(report.accepted >= 1, "no input was accepted: {report}");
    assert!(
        report.refused >= 1 && report.distinct_errors >= 1,
        "no mutation was refused: {report}"
    );
    assert!(
        report.largest_alloc <= MAX_ALLOCATION,
        "an input made a single allocation of {} bytes: {report}",
        report.largest_alloc
    );
    // How long the slowest input took is in the report above: a benchmark figure, not a
    // pass/fail criterion.
}

#[test]
fn fuzz_pth() {
    smoke(TargetKind::Pth);
}

#[test]
fn fuzz_pickle() {
    smoke(TargetKind::Pickle);
}

#[test]
fn fuzz_safetensors() {
    smoke(TargetKind::SafeTensors);
}

#[test]
fn fuzz_manifest() {
    smoke(TargetKind::Manifest);
}

#[test]
fn fuzz_noise() {
    smoke(TargetKind::Noise);
}

#[test]
fn fuzz_onnx_tract() {
    smoke(TargetKind::OnnxTract);
}

#[test]
fn fuzz_vae_config() {
    smoke(TargetKind::VaeConfig);
}

#[test]
fn seeds_are_accepted() {
    // Every committed seed (except the deliberately broken ones) is a valid input, so
    // mutations start from files the readers accept.
    for kind in TargetKind::ALL {
        let mut t = flowar_fuzz::targets::Target::new(kind);
        for (name, bytes) in flowar_fuzz::load_corpus(kind) {
            let r = flowar_fuzz::run_one(&mut t, &bytes);
            match r {
                Err(p) => panic!("{}/{name} panicked: {p}", kind.name()),
                Ok(Err(e)) if !name.starts_with("no-") => {
                    panic!("{}/{name} refused: {e}", kind.name())
                }
                _ => {}
            }
        }
    }
}
