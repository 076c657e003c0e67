//! `flowar convert`.

use std::path::PathBuf;

use flowar_exporter::checkpoint::Checkpoint;
use flowar_exporter::convert::{convert, ConvertReport, ConvertRequest, ModelMeta};
use flowar_exporter::preset::{flowar_keys, vae_keys, Preset, RandomWeights};

use super::{CliError, CliResult};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// FlowAR checkpoint (FlowAR-{S,L,H}.pth or .safetensors).
    #[arg(long, required_unless_present = "preset", conflicts_with = "preset")]
    pub flowar: Option<PathBuf>,
    /// KL-VAE checkpoint (MAR's kl16.ckpt or .safetensors).
    #[arg(long, required_unless_present = "preset")]
    pub vae: Option<PathBuf>,
    /// Build a released architecture (s, l or h) with seeded random weights instead.
    #[arg(long, value_parser = ["s", "l", "h"])]
    pub preset: Option<String>,
    /// Seed for --preset weights.
    #[arg(long, requires = "preset", default_value_t = 0)]
    pub random_init: u64,
    /// Output model folder (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Latent scale factor the VAE latents were multiplied by (default 0.2325, or meta.json's).
    #[arg(long)]
    pub latent_scale: Option<f64>,
    /// A model card's meta.json: name, class names, latent scale and sampler defaults.
    #[arg(long)]
    pub meta: Option<PathBuf>,
    /// Replace an existing output folder.
    #[arg(long)]
    pub force: bool,
    /// Convert even if weights hold NaN or Inf.
    #[arg(long)]
    pub allow_nonfinite: bool,
}

pub fn print_report(r: &ConvertReport) {
    let m = &r.manifest;
    let g = &m.graphs;
    println!(
        "{}: AR {} (width {}, {}+{} blocks, {} heads), flow head {:?} (width {}, {} blocks), scales {:?}, {} classes",
        m.name,
        m.architecture.ar.width,
        m.architecture.ar.width,
        m.architecture.ar.encoder_depth,
        m.architecture.ar.decoder_depth,
        m.architecture.ar.heads,
        m.architecture.flow.kind,
        m.architecture.flow.width,
        m.architecture.flow.depth,
        m.scales,
        m.num_classes
    );
    let mp = |n: usize| n as f64 / 1e6;
    println!(
        "parameters: ar_step {:.1}M, flow_head {:.1}M (FlowAR total {:.1}M), vae_decoder {:.1}M",
        mp(g.ar_step.parameters),
        mp(g.flow_head.parameters),
        mp(g.ar_step.parameters + g.flow_head.parameters),
        mp(g.vae_decoder.parameters)
    );
    if !r.ignored_keys.is_empty() {
        let mut reasons: std::collections::BTreeMap<&str, usize> = Default::default();
        for (_, why) in &r.ignored_keys {
            *reasons.entry(why).or_default() += 1;
        }
        for (why, n) in reasons {
            println!("ignored {n} key(s): {why}");
        }
    }
}

pub fn run(a: Args) -> CliResult {
    let meta = match &a.meta {
        Some(p) => ModelMeta::load(p)?,
        None => ModelMeta::default(),
    };
    let t = std::time::Instant::now();
    let report = if let Some(p) = &a.preset {
        let preset: Preset = p.parse()?;
        let f = RandomWeights::new(
            format!("preset {p} (seed {})", a.random_init),
            a.random_init,
            flowar_keys(&preset.flowar()),
        );
        let v = RandomWeights::new(
            format!("preset kl16 (seed {})", a.random_init),
            a.random_init,
            vae_keys(&Preset::vae()),
        );
        let mut meta = meta;
        meta.name.get_or_insert_with(|| {
            format!("{} (random weights, seed {})", preset.name(), a.random_init)
        });
        convert(&ConvertRequest {
            flowar: &f,
            vae: &v,
            source_files: vec![],
            out: a.out.clone(),
            latent_scale: a.latent_scale,
            meta,
            force: a.force,
            allow_nonfinite: a.allow_nonfinite,
            external_data_threshold: flowar_exporter::convert::EXTERNAL_DATA_THRESHOLD,
        })?
    } else {
        let (fp, vp) = match (&a.flowar, &a.vae) {
            (Some(f), Some(v)) => (f, v),
            _ => {
                return Err(CliError::Usage(
                    "give --flowar and --vae, or --preset".into(),
                ))
            }
        };
        let f = Checkpoint::open(fp)?;
        let v = Checkpoint::open(vp)?;
        convert(&ConvertRequest {
            flowar: &f,
            vae: &v,
            source_files: vec![
                ("flowar".into(), fp.clone(), f.format().into()),
                ("vae".into(), vp.clone(), v.format().into()),
            ],
            out: a.out.clone(),
            latent_scale: a.latent_scale,
            meta,
            force: a.force,
            allow_nonfinite: a.allow_nonfinite,
            external_data_threshold: flowar_exporter::convert::EXTERNAL_DATA_THRESHOLD,
        })?
    };
    print_report(&report);
    println!(
        "wrote {} in {:.1}s",
        a.out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
