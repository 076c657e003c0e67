//! `flowar inspect`.

use std::path::PathBuf;

use flowar_exporter::checkpoint::Checkpoint;
use flowar_exporter::vae_checkpoint::VaeCheckpoint;
use flowar_runtime::manifest::{Manifest, MANIFEST_FILE};

use super::CliResult;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model folder, a checkpoint file, or a diffusers VAE folder.
    pub path: PathBuf,
}

pub fn run(a: Args) -> CliResult {
    // A folder is a model folder, else a diffusers VAE folder.
    let vae_folder = match a.path.is_dir() && !a.path.join(MANIFEST_FILE).exists() {
        true => VaeCheckpoint::open(&a.path).ok(),
        false => None,
    };
    if a.path.is_dir() && vae_folder.is_none() {
        let m = Manifest::load(&a.path)?;
        println!("{}", serde_json::to_string_pretty(&m).expect("json"));
        return Ok(());
    }
    let opened;
    let ck = match &vae_folder {
        Some(v) => v.checkpoint(),
        None => {
            opened = Checkpoint::open(&a.path)?;
            &opened
        }
    };
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
    match flowar_exporter::arch::detect_flowar(ck) {
        Ok(f) => println!(
            "FlowAR: {}",
            serde_json::json!({"ar": f.ar, "flow": f.flow, "scales": f.scales, "latent_channels": f.latent_channels, "classes": f.num_classes})
        ),
        Err(not_flowar) => match &vae_folder {
            Some(v) => describe_vae(v)?,
            None => match VaeCheckpoint::open(&a.path) {
                Ok(v) => describe_vae(&v)?,
                Err(_) => println!("not a FlowAR or KL-VAE checkpoint: {not_flowar}"),
            },
        },
    }
    for (k, why) in ck.skipped() {
        println!("skipped {k}: {why}");
    }
    Ok(())
}

/// The decoder's architecture (checked against a diffusers config) and its decode rule.
fn describe_vae(v: &VaeCheckpoint) -> CliResult {
    let d = flowar_exporter::arch::detect_vae_with(v, v.config())?;
    for line in v.notes() {
        println!("{line}");
    }
    println!(
        "KL-VAE decoder: {}",
        serde_json::json!({"vae": d.arch, "latent_channels": d.latent_channels})
    );
    match v.config() {
        Some(c) => println!(
            "decode rule (from {}): latent = tokens / {} + {}",
            c.path.display(),
            c.scaling_factor(),
            c.shift()
        ),
        None => println!(
            "decode rule: latent = tokens / scale + shift; an LDM-layout checkpoint does not \
             record them (convert takes --latent-scale / --latent-shift or a model card; kl16's \
             scale is 0.2325)"
        ),
    }
    Ok(())
}
