//! CI smoke of every fuzz target: `FLOWAR_FUZZ_SECONDS` (default 10) of mutated inputs
//! each. Any panic fails the test and prints the input (also written to
//! `FLOWAR_FUZZ_CRASH_DIR`, default the test's temporary target folder). Each target must
//! get through a floor of inputs per second of its budget ([`min_rate`]).

use flowar_fuzz::{Config, TargetKind};

#[global_allocator]
static ALLOC: flowar_fuzz::TrackingAlloc = flowar_fuzz::TrackingAlloc;

/// No input may make a reader allocate more than this at once: sizes a file declares are
/// checked against the data actually there before anything is allocated.
const MAX_ALLOCATION: usize = 256 << 20;

/// The fewest inputs per second of its budget each target must get through, so that a
/// target that stops early, hangs on many inputs or silently turned slow fails instead of
/// passing on a handful of inputs. Measured with this smoke (optimised test profile, the
/// targets two at a time on a 2-core machine that other builds kept at load average 3.5
/// to 5.2), slowest to fastest of six runs (four for vae-config): pth 645 to 4,750/s,
/// pickle 590 to 5,000/s, safetensors 720 to 4,650/s, manifest 31,000 to 40,000/s, noise
/// 1,050 to 3,800/s, onnx-tract 370 to 1,400/s, vae-config 117,000 to 130,000/s. The
/// targets that write each input to a scratch file swing with the disk (up to 7x); each
/// floor is about a tenth of the slowest run, a wide margin for a slower or busier CI
/// machine that still fails a loop cut to a few hundred inputs.
fn min_rate(kind: TargetKind) -> f64 {
    match kind {
        TargetKind::Pth => 60.0,
        TargetKind::Pickle => 50.0,
        TargetKind::SafeTensors => 70.0,
        TargetKind::Manifest => 3_000.0,
        TargetKind::Noise => 100.0,
        TargetKind::OnnxTract => 35.0,
        TargetKind::VaeConfig => 10_000.0,
    }
}

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
    // Every seed runs unmutated first, then mutations for the whole budget: at least the
    // seeds and the floor rate over the budget (FLOWAR_FUZZ_SECONDS scales both).
    let floor = ((min_rate(kind) * cfg.duration.as_secs_f64()) as u64).max(report.seeds as u64);
    assert!(
        report.iterations >= floor,
        "{}: {} inputs, fewer than the {floor} ({} per second of the {:.1} s budget, or the \
         seeds) a working target gets through: {report}",
        kind.name(),
        report.iterations,
        min_rate(kind),
        cfg.duration.as_secs_f64()
    );
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
