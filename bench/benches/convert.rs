//! Convert time and peak memory for a released architecture with random weights.
//!
//! `cargo bench -p flowar-bench --bench convert [-- s|l|h]` (default s). Reports wall time,
//! peak resident memory and its ratio to the f32 weight bytes, measured in one run.

use flowar_exporter::convert::{convert, ConvertRequest};
use flowar_exporter::preset::{flowar_keys, vae_keys, Preset, RandomWeights};

fn main() {
    let size = std::env::args()
        .skip(1)
        .find(|a| ["s", "l", "h"].contains(&a.as_str()))
        .unwrap_or_else(|| "s".into());
    let preset: Preset = size.parse().expect("preset");
    let f = RandomWeights::new(format!("preset {size}"), 0, flowar_keys(&preset.flowar()));
    let v = RandomWeights::new("preset kl16".into(), 0, vae_keys(&Preset::vae()));
    let tmp = tempfile::tempdir().expect("tempdir");
    let before = flowar_bench::peak_rss_bytes().unwrap_or(0);
    let t = std::time::Instant::now();
    let report = convert(&ConvertRequest::new(&f, &v, tmp.path().join("model"))).expect("convert");
    let secs = t.elapsed().as_secs_f64();
    let g = &report.manifest.graphs;
    let params = g.ar_step.parameters + g.flow_head.parameters + g.vae_decoder.parameters;
    let weights = params as f64 * 4.0;
    let peak = flowar_bench::peak_rss_bytes().unwrap_or(0);
    println!(
        "convert {}: {:.1}M parameters ({:.0} MB f32)",
        preset.name(),
        params as f64 / 1e6,
        weights / 1e6
    );
    println!("  wall time      {secs:.2} s");
    println!(
        "  peak RSS       {:.0} MB ({:.2}x the weights; {:.0} MB before converting)",
        peak as f64 / 1e6,
        peak as f64 / weights,
        before as f64 / 1e6
    );
}
