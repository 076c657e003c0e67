//! `flowar-fuzz`: run the mutation fuzzer for longer than the CI smoke, replay an input,
//! or regenerate the seed corpus.
//!
//! ```text
//! cargo run -p flowar-fuzz --release -- run [TARGET|all] [--seconds N] [--seed S]
//! cargo run -p flowar-fuzz --release -- replay TARGET FILE
//! cargo run -p flowar-fuzz --release -- gen-corpus
//! ```
//! Inputs that panic are written to `FLOWAR_FUZZ_CRASH_DIR` (default `fuzz-crashes/`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use flowar_fuzz::{Config, TargetKind};

#[global_allocator]
static ALLOC: flowar_fuzz::TrackingAlloc = flowar_fuzz::TrackingAlloc;

fn usage() -> ExitCode {
    let names: Vec<&str> = TargetKind::ALL.iter().map(|t| t.name()).collect();
    eprintln!(
        "usage: flowar-fuzz run [TARGET|all] [--seconds N] [--seed S]\n       \
         flowar-fuzz replay TARGET FILE\n       flowar-fuzz gen-corpus\ntargets: {}",
        names.join(", ")
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("gen-corpus") => match flowar_fuzz::seeds::write_corpus(&flowar_fuzz::corpus_root()) {
            Ok(files) => {
                for (f, n) in files {
                    println!("{f}: {n} bytes");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Some("replay") => {
            let (Some(t), Some(f)) = (
                args.get(1).and_then(|s| TargetKind::from_name(s)),
                args.get(2),
            ) else {
                return usage();
            };
            let bytes = match std::fs::read(f) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("error: {f}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let mut target = flowar_fuzz::targets::Target::new(t);
            match flowar_fuzz::run_one(&mut target, &bytes) {
                Ok(Ok(())) => println!("accepted"),
                Ok(Err(e)) => println!("refused: {e}"),
                Err(p) => {
                    println!("PANIC: {p}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Some("run") => {
            let mut cfg = Config::from_env(60.0);
            cfg.crash_dir
                .get_or_insert_with(|| PathBuf::from("fuzz-crashes"));
            let mut targets = TargetKind::ALL.to_vec();
            let mut it = args.iter().skip(1);
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--seconds" => match it.next().and_then(|s| s.parse::<f64>().ok()) {
                        Some(s) if s.is_finite() && s >= 0.0 => {
                            cfg.duration = Duration::from_secs_f64(s)
                        }
                        _ => return usage(),
                    },
                    "--seed" => match it.next().and_then(|s| s.parse().ok()) {
                        Some(s) => cfg.seed = s,
                        None => return usage(),
                    },
                    "all" => targets = TargetKind::ALL.to_vec(),
                    name => match TargetKind::from_name(name) {
                        Some(t) => targets = vec![t],
                        None => return usage(),
                    },
                }
            }
            let mut failed = false;
            for t in targets {
                let r = flowar_fuzz::fuzz(t, &cfg);
                println!("{r}");
                for c in &r.crashes {
                    failed = true;
                    println!(
                        "  PANIC at input #{} ({} bytes{}): {}",
                        c.iteration,
                        c.input.len(),
                        c.saved
                            .as_ref()
                            .map(|p| format!(", saved to {}", p.display()))
                            .unwrap_or_default(),
                        c.message
                    );
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => usage(),
    }
}
