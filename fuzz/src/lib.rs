//! A deterministic mutation fuzzer for flowar's file readers that runs on stable Rust.
//!
//! No cargo-fuzz, no nightly, no coverage instrumentation: a seeded RNG mutates the seed
//! corpus in `fuzz/corpus/<target>/` (bit flips, byte sets, interesting integers,
//! truncations, deletions, duplications, splices between seeds, insertions of format
//! tokens; for JSON targets also edits of the parsed tree, [`mutate::mutate_json`]),
//! each mutated input runs under [`std::panic::catch_unwind`], and any panic is a
//! bug. Inputs whose error message (digits stripped) has not been seen before join the
//! working corpus, a cheap stand-in for coverage feedback that lets mutations stack.
//!
//! Per input the runner records the wall time (the slowest input is reported) and, when
//! the binary installs [`TrackingAlloc`] as its global allocator, the largest single
//! allocation (to confirm that sizes declared by a file are checked before allocating).
//!
//! Targets ([`TargetKind`]): the PyTorch zip reader on whole files (`pth`), the pickle
//! interpreter inside an otherwise valid archive (`pickle`), safetensors checkpoints
//! (`safetensors`), `Manifest::parse` (`manifest`), `noise::load_recorded` (`noise`),
//! opening an ONNX graph in tract (`onnx-tract`), and a diffusers VAE `config.json`
//! read and checked against real VAE weights (`vae-config`). onnxruntime is not fuzzed in
//! process; see the README of this crate's parent project ("Hostile inputs").

pub mod alloc;
pub mod mutate;
pub mod seeds;
pub mod targets;
pub mod torch;

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

pub use alloc::TrackingAlloc;
pub use mutate::Rng;
pub use targets::TargetKind;

/// Folder of the committed seed corpus.
pub fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Reads every file of `corpus/<target>/`, sorted by name.
pub fn load_corpus(target: TargetKind) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_root().join(target.name());
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    std::fs::read(e.path()).ok().map(|b| (name, b))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// How long and how hard to fuzz.
#[derive(Debug, Clone)]
pub struct Config {
    /// Wall-clock budget.
    pub duration: Duration,
    /// Stop after this many mutated inputs even if time is left.
    pub max_iterations: Option<u64>,
    /// RNG seed; the same seed and corpus give the same input sequence.
    pub seed: u64,
    /// Where inputs that panicked are written (`<target>-<n>.bin`).
    pub crash_dir: Option<PathBuf>,
}

impl Config {
    /// `FLOWAR_FUZZ_SECONDS` (default `default_secs`) and `FLOWAR_FUZZ_SEED` (default 0).
    pub fn from_env(default_secs: f64) -> Config {
        let secs = std::env::var("FLOWAR_FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(default_secs);
        let seed = std::env::var("FLOWAR_FUZZ_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Config {
            duration: Duration::from_secs_f64(secs),
            max_iterations: None,
            seed,
            crash_dir: std::env::var_os("FLOWAR_FUZZ_CRASH_DIR").map(PathBuf::from),
        }
    }
}

/// An input that panicked.
#[derive(Debug, Clone)]
pub struct Crash {
    pub iteration: u64,
    pub message: String,
    pub input: Vec<u8>,
    pub saved: Option<PathBuf>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: &'static str,
    pub seeds: usize,
    pub iterations: u64,
    /// Inputs the target accepted.
    pub accepted: u64,
    /// Inputs refused with an error (the expected outcome for most mutations).
    pub refused: u64,
    /// Distinct error kinds seen (digits stripped).
    pub distinct_errors: usize,
    pub crashes: Vec<Crash>,
    pub slowest: Duration,
    pub slowest_len: usize,
    pub slowest_iteration: u64,
    /// Largest single allocation made while running one input (0 without [`TrackingAlloc`]).
    pub largest_alloc: usize,
    pub elapsed: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} inputs in {:.1}s from {} seeds ({} accepted, {} refused, {} distinct errors), \
             {} panics; slowest input {:.1} ms ({} bytes, #{}), largest allocation {}",
            self.target,
            self.iterations,
            self.elapsed.as_secs_f64(),
            self.seeds,
            self.accepted,
            self.refused,
            self.distinct_errors,
            self.crashes.len(),
            self.slowest.as_secs_f64() * 1e3,
            self.slowest_len,
            self.slowest_iteration,
            human_bytes(self.largest_alloc)
        )
    }
}

pub fn human_bytes(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

thread_local! {
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that records panics raised while an input runs instead
/// of printing them; panics anywhere else go to the previous hook.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CATCHING.with(Cell::get) {
                let msg = info.to_string();
                LAST_PANIC.with(|l| *l.borrow_mut() = Some(msg));
            } else {
                prev(info);
            }
        }));
    });
}

/// Runs one input against a target: `Ok(Ok)` accepted, `Ok(Err)` refused cleanly,
/// `Err(panic message)` a crash.
pub fn run_one(target: &mut targets::Target, input: &[u8]) -> Result<Result<(), String>, String> {
    install_hook();
    CATCHING.with(|c| c.set(true));
    LAST_PANIC.with(|l| l.borrow_mut().take());
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| target.exec(input)));
    CATCHING.with(|c| c.set(false));
    match result {
        Ok(r) => Ok(r),
        Err(payload) => {
            let recorded = LAST_PANIC.with(|l| l.borrow_mut().take());
            Err(recorded.unwrap_or_else(|| {
                flowar_runtime::error::panic_message(&*payload)
                    .unwrap_or_else(|| "panic with a non-string payload".into())
            }))
        }
    }
}

/// An error message with digits and paths blurred, so "the same error at another
/// offset" counts once.
fn signature(msg: &str) -> String {
    let mut s: String = msg
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    // The scratch path differs per run.
    if let Some(i) = s.find(": ") {
        if s[..i].contains('/') {
            s = s[i..].to_string();
        }
    }
    s.chars().take(96).collect()
}

/// Fuzzes one target for the configured budget.
pub fn fuzz(kind: TargetKind, cfg: &Config) -> Report {
    let mut target = targets::Target::new(kind);
    let seeds: Vec<Vec<u8>> = load_corpus(kind).into_iter().map(|(_, b)| b).collect();
    assert!(
        !seeds.is_empty(),
        "no seed corpus for {} in {}",
        kind.name(),
        corpus_root().display()
    );
    let max_len = seeds.iter().map(Vec::len).max().unwrap_or(0) * 2 + 4096;
    let mut working: Vec<Vec<u8>> = seeds.clone();
    let mut seen: HashSet<String> = HashSet::new();
    let mut rng = Rng::new(cfg.seed ^ kind.salt());
    let mut report = Report {
        target: kind.name(),
        seeds: seeds.len(),
        iterations: 0,
        accepted: 0,
        refused: 0,
        distinct_errors: 0,
        crashes: Vec::new(),
        slowest: Duration::ZERO,
        slowest_len: 0,
        slowest_iteration: 0,
        largest_alloc: 0,
        elapsed: Duration::ZERO,
    };
    let start = Instant::now();
    // Every seed runs unmutated first: a seed that panics is a crash too.
    let mut pending: Vec<Vec<u8>> = seeds.iter().rev().cloned().collect();
    loop {
        if start.elapsed() >= cfg.duration && pending.is_empty() {
            break;
        }
        if cfg.max_iterations.is_some_and(|m| report.iterations >= m) {
            break;
        }
        let input = match pending.pop() {
            Some(s) => s,
            None => {
                let base = &working[rng.below(working.len())];
                let structured = match kind.json_mutation() {
                    Some((keys, values)) if rng.below(2) == 0 => {
                        mutate::mutate_json(&mut rng, base, keys, values)
                    }
                    _ => None,
                };
                let mut input = structured.unwrap_or_else(|| {
                    mutate::mutate(&mut rng, base, &working, kind.dictionary(), max_len)
                });
                input.truncate(max_len);
                input
            }
        };
        report.iterations += 1;
        alloc::arm();
        let t = Instant::now();
        let outcome = run_one(&mut target, &input);
        let dt = t.elapsed();
        report.largest_alloc = report.largest_alloc.max(alloc::disarm());
        if dt > report.slowest {
            report.slowest = dt;
            report.slowest_len = input.len();
            report.slowest_iteration = report.iterations;
        }
        match outcome {
            Ok(Ok(())) => {
                report.accepted += 1;
                // Accepted variants let later mutations reach deeper code.
                if working.len() < 512 && rng.below(16) == 0 {
                    working.push(input);
                }
            }
            Ok(Err(msg)) => {
                report.refused += 1;
                if seen.insert(signature(&msg)) && working.len() < 512 {
                    working.push(input);
                }
            }
            Err(msg) => {
                let saved = cfg.crash_dir.as_ref().and_then(|d| {
                    std::fs::create_dir_all(d).ok()?;
                    let p = d.join(format!("{}-{}.bin", kind.name(), report.crashes.len()));
                    std::fs::write(&p, &input).ok().map(|()| p)
                });
                report.crashes.push(Crash {
                    iteration: report.iterations,
                    message: msg,
                    input,
                    saved,
                });
                if report.crashes.len() >= 16 {
                    break;
                }
            }
        }
    }
    report.distinct_errors = seen.len();
    report.elapsed = start.elapsed();
    report
}
