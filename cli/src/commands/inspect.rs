//! `flowar inspect`.

use std::path::PathBuf;

use flowar_exporter::checkpoint::Checkpoint;
use flowar_runtime::manifest::Manifest;

use super::CliResult;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model folder or a checkpoint file.
    pub path: PathBuf,
}

pub fn run(a: Args) -> CliResult {
    if a.path.is_dir() {
        let m = Manifest::load(&a.path)?;
        println!("{}", serde_json::to_string_pretty(&m).expect("json"));
        return Ok(());
    }
    let ck = Checkpoint::open(&a.path)?;
    println!(
        "{} ({}), {} tensors, {:.2}M parameters",
        a.path.display(),
        ck.format(),
        ck.keys().len(),
        ck.total_params() as f64 / 1e6
    );
    if ck.selected_state_dict().is_some() {
        println!("state dicts (* = what `flowar convert` uses; --weights ema|model picks):");
        for s in ck.state_dicts() {
            let dtypes: Vec<String> = s.dtypes.iter().map(|(d, n)| format!("{d} ×{n}")).collect();
            println!(
                "  {} {:<12} {:>5} tensors {:>9.2}M parameters  {}",
                if s.selected { "*" } else { " " },
                s.name,
                s.tensors,
                s.parameters as f64 / 1e6,
                dtypes.join(", ")
            );
        }
    }
    if let Some(prefix) = ck.stripped_prefix() {
        println!("every key had the `{prefix}` prefix (DistributedDataParallel); it is stripped");
    }
    let mut dtypes: std::collections::BTreeMap<String, usize> = Default::default();
    for k in ck.keys() {
        if let Some(i) = ck.info(k) {
            *dtypes.entry(format!("{:?}", i.dtype)).or_default() += 1;
        }
    }
    println!("dtypes: {dtypes:?}");
    if let Ok(f) = flowar_exporter::arch::detect_flowar(&ck) {
        println!(
            "FlowAR: {}",
            serde_json::json!({"ar": f.ar, "flow": f.flow, "scales": f.scales, "latent_channels": f.latent_channels, "classes": f.num_classes})
        );
    } else if let Ok(v) = flowar_exporter::arch::detect_vae(&ck) {
        println!(
            "KL-VAE decoder: {}",
            serde_json::json!({"vae": v.arch, "latent_channels": v.latent_channels})
        );
    } else {
        let f = flowar_exporter::arch::detect_flowar(&ck)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        println!("not a FlowAR or KL-VAE checkpoint: {f}");
    }
    for (k, why) in ck.skipped() {
        println!("skipped {k}: {why}");
    }
    Ok(())
}
