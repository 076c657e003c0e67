//! `flowar bench`: the benchmark lives in the `flowar-bench` crate; this wires it in.

use super::{CliError, CliResult};

pub use flowar_bench::cli::Args;

pub fn run(a: Args) -> CliResult {
    match flowar_bench::cli::run(a) {
        Ok(_) => Ok(()),
        Err(flowar_bench::cli::BenchError::Runtime(e)) => Err(CliError::Runtime(e)),
        Err(flowar_bench::cli::BenchError::Export(e)) => Err(CliError::Export(e)),
        Err(e) if e.is_usage() => Err(CliError::Usage(e.to_string())),
        Err(e) => Err(CliError::Failed(e.to_string())),
    }
}
