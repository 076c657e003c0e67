//! `flowar`: convert FlowAR checkpoints to ONNX, generate images, verify parity, inspect
//! models and benchmark providers.

mod commands;
mod shard;

use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

/// Set by the first Ctrl-C (SIGINT); long-running commands poll it and stop cleanly,
/// removing anything half-written. A second Ctrl-C exits at once.
pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C was pressed.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: i32 = 130;

/// Test-only, never for use (`scripts/test.sh` clears it): set to `1`, `flowar` parses its
/// command line (exit 2 with clap's message when it does not parse), says so and exits
/// with [`EXIT_PARSED_ONLY`] without running anything, so that
/// `cli/tests/docs_commands.rs` can check every command the docs show against the real
/// CLI without converting or generating anything.
const PARSE_ONLY: &str = "FLOWAR_TEST_PARSE_ONLY";

/// The exit status of a [`PARSE_ONLY`] run: not 0, so that a job which inherited the
/// variable by mistake fails loudly instead of "succeeding" without writing anything.
const EXIT_PARSED_ONLY: i32 = 3;

#[derive(Parser)]
#[command(
    name = "flowar",
    version,
    about = "FlowAR scale-wise image generators on ONNX Runtime and tract"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert FlowAR + KL-VAE checkpoints (or a random-weight preset) into a model folder.
    Convert(commands::convert::Args),
    /// Generate images (defaults: the bundled shapes10 demo, one image per class, a grid).
    Generate(commands::generate::Args),
    /// Edit images: in-paint under a mask, out-paint (--invert-mask), change the class
    /// inside a mask, or make variations (--keep-scales K), from a model with a VAE encoder.
    Edit(commands::edit::Args),
    /// Check a converted model against reference tensors (fixtures' expected.safetensors).
    Verify(commands::verify::Args),
    /// Summarise a model folder or a checkpoint.
    Inspect(commands::inspect::Args),
    /// Measure load time, per-stage latency, throughput, memory and efficiency per provider.
    Bench(commands::bench::Args),
    /// Measure what a faster configuration (int8 model, step schedule, other provider)
    /// changes: per-scale token error, per-image PSNR, time, and the demo's check.
    Compare(commands::compare::Args),
    /// Pack the folders a sample set was generated into (shards) into one .npz (arr_0:
    /// uint8 [N, H, W, 3]), checking that images 0..N-1 are there once each with one model
    /// and one set of sampler settings.
    Pack(commands::pack::Args),
}

/// First Ctrl-C: set [`INTERRUPTED`]; second: exit at once.
fn install_ctrlc() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: exiting now");
            std::process::exit(EXIT_INTERRUPTED);
        }
        eprintln!("\ninterrupted: stopping and removing partial output (Ctrl-C again to exit now)");
    });
}

fn main() {
    let cli = Cli::parse();
    if std::env::var_os(PARSE_ONLY).is_some_and(|v| v == "1") {
        eprintln!(
            "{PARSE_ONLY}=1: the command line parses; nothing was run (exit {EXIT_PARSED_ONLY})"
        );
        std::process::exit(EXIT_PARSED_ONLY);
    }
    // Only the commands that write outputs and poll the flag trade Ctrl-C's default
    // (immediate exit) for a clean stop.
    if matches!(
        cli.command,
        Command::Convert(_) | Command::Generate(_) | Command::Edit(_) | Command::Pack(_)
    ) {
        install_ctrlc();
    }
    let result = match cli.command {
        Command::Convert(a) => commands::convert::run(a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Edit(a) => commands::edit::run(a),
        Command::Verify(a) => commands::verify::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Pack(a) => commands::pack::run(a),
        Command::Compare(a) => commands::compare::run(a),
    };
    if let Err(e) = result {
        if interrupted() {
            eprintln!("error: interrupted ({e}); no partial output was kept");
            std::process::exit(EXIT_INTERRUPTED);
        }
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
