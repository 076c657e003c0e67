//! `flowar bench`: the benchmark lives in the `flowar-bench` crate; this wires it in.

use super::{CliError, CliResult};

pub use flowar_bench::engine::Args;

pub fn run(mut a: Args) -> CliResult {
    // No model, preset or saved report: the bundled demo, as `flowar generate` and
    // `flowar edit` default to (converted on first use; with its VAE encoder for edits).
    if a.model.is_none() && a.preset.is_none() && a.from_json.is_none() {
        a.model = Some(super::generate::model_dir(None, a.mode == "edit")?);
    }
    match flowar_bench::engine::run(a) {
        Ok(_) => Ok(()),
        Err(flowar_bench::engine::BenchError::Runtime(e)) => Err(CliError::Runtime(e)),
        Err(flowar_bench::engine::BenchError::Export(e)) => Err(CliError::Export(e)),
        Err(e) if e.is_usage() => Err(CliError::Usage(e.to_string())),
        Err(e) => Err(CliError::Failed(e.to_string())),
    }
}
