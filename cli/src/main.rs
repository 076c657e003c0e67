//! `flowar`: convert FlowAR checkpoints to ONNX, generate images, verify parity, inspect
//! models and benchmark providers.

mod commands;

use clap::{Parser, Subcommand};

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
    /// Check a converted model against reference tensors (fixtures' expected.safetensors).
    Verify(commands::verify::Args),
    /// Summarise a model folder or a checkpoint.
    Inspect(commands::inspect::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Convert(a) => commands::convert::run(a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Verify(a) => commands::verify::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
