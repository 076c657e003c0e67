//! Benchmarks of the FlowAR exporter and runtime: the engine behind `flowar bench`
//! ([`engine`]), the demo model's shape-and-colour check ([`demo_check`]), the analytic FLOP count it reports against ([`flops`]), the matmul
//! calibration behind its efficiency figure ([`calibrate`]), its JSON / Markdown results
//! ([`report`]) and chart ([`plot`]), and shared helpers for the criterion benchmarks in
//! `benches/`.

pub mod calibrate;
pub mod demo_check;
pub mod engine;
pub mod flops;
pub mod plot;
pub mod quality;
pub mod report;

/// Peak resident memory of this process so far, in bytes (Linux `VmHWM`), if known.
/// [`engine::reset_peak_rss`] restarts the count.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Converts the test fixture `tests/fixtures/<name>` (e.g. `spatial`, a tiny FlowAR-S
/// shaped model; `edit-sd-f8c4`, whose VAE is a diffusers folder `vae/` with its encoder)
/// into a fresh temporary model folder: `(guard, folder)`.
pub fn fixture_model(
    name: &str,
) -> Result<(tempfile::TempDir, std::path::PathBuf), flowar_exporter::ExportError> {
    use flowar_exporter::checkpoint::Checkpoint;
    use flowar_exporter::convert::{convert, ConvertRequest};
    use flowar_exporter::vae_checkpoint::VaeCheckpoint;
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name);
    let tmp = tempfile::tempdir().map_err(|e| flowar_exporter::ExportError::io(&src, e))?;
    let out = tmp.path().join("model");
    let f = Checkpoint::open(&src.join("flowar.pth"))?;
    if src.join("vae").is_dir() {
        // As `flowar convert --vae DIR` reads it: the weights and the config's scale.
        let v = VaeCheckpoint::open(&src.join("vae"))?;
        convert(&ConvertRequest::new(&f, &v, &out).vae_config(v.config()))?;
    } else {
        let v = Checkpoint::open(&src.join("vae.ckpt"))?;
        convert(&ConvertRequest::new(&f, &v, &out))?;
    }
    Ok((tmp, out))
}
