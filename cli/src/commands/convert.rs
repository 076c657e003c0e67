//! `flowar convert`.

use std::path::PathBuf;

use flowar_exporter::checkpoint::{Checkpoint, Weights};
use flowar_exporter::convert::{
    convert_as, source_notes, ConvertReport, ConvertRequest, ModelMeta, Precision,
};
use flowar_exporter::preset::{flowar_keys, vae_full_keys, Preset, RandomWeights};
use flowar_exporter::vae_checkpoint::VaeCheckpoint;
use flowar_exporter::weights::{Cancellable, WeightSource};

use super::{CliError, CliResult};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// FlowAR checkpoint (FlowAR-{S,L,H}.pth or .safetensors).
    #[arg(long, required_unless_present = "preset", conflicts_with = "preset")]
    pub flowar: Option<PathBuf>,
    /// The VAE: MAR's kl16.ckpt or another LDM-layout KL-VAE checkpoint (.ckpt or
    /// .safetensors, also a full SD checkpoint's `first_stage_model.*`), or a diffusers
    /// AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors).
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
    /// Latent scale factor the VAE latents were multiplied by (default: meta.json's, else a
    /// diffusers VAE config's scaling_factor, else kl16's 0.2325).
    #[arg(long)]
    pub latent_scale: Option<f64>,
    /// Latent shift subtracted before scaling in training: decoding computes
    /// tokens / scale + shift (default: meta.json's, else a diffusers VAE config's
    /// shift_factor, else 0).
    #[arg(long, allow_hyphen_values = true)]
    pub latent_shift: Option<f64>,
    /// A model card's meta.json: name, class names, latent scale and sampler defaults
    /// (default: the meta.json beside the FlowAR checkpoint, when there is one).
    #[arg(long)]
    pub meta: Option<PathBuf>,
    /// Ignore a meta.json beside the FlowAR checkpoint.
    #[arg(long, conflicts_with = "meta")]
    pub no_meta: bool,
    /// Which weights of a training checkpoint to convert: ema (the exponential moving
    /// average the reference evaluates with) or model (the trained weights). Default: ema
    /// when the checkpoint has it, else model.
    #[arg(long, value_parser = ["ema", "model"], conflicts_with = "preset")]
    pub weights: Option<String>,
    /// Replace an existing output folder.
    #[arg(long)]
    pub force: bool,
    /// Convert even if weights hold NaN or Inf.
    #[arg(long)]
    pub allow_nonfinite: bool,
    /// Graph precision: f32; f16 (weights and activations in float16; norm statistics,
    /// softmax and the time embedding stay float32); or bf16, the way autocast computes
    /// (the transformers' linears in bfloat16 with bfloat16 weights, everything else
    /// float32; the VAE in OpenVINO's bfloat16). bf16 runs on --provider openvino on a CPU
    /// with AMX or AVX512-BF16 only.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    pub dtype: String,
    /// Opt-in fast mode: int8 weights for the transformers' block linears (flow head and AR)
    /// and the flow head's final adaLN (activations quantized per call). Faster on CPUs; the outputs are no longer the
    /// reference's (see bench/README.md for the measured cost). Not with --dtype f16 or bf16.
    #[arg(long, value_parser = ["int8"])]
    pub quantize: Option<String>,
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
    match (&g.vae_encoder, &m.architecture.vae.encoder) {
        (Some(spec), Some(e)) => println!(
            "vae_encoder {:.1}M ({}, for `flowar edit`): {}",
            mp(spec.parameters),
            e.precision,
            e.rule
        ),
        _ => println!(
            "no VAE encoder in the VAE checkpoint: this folder generates but cannot edit images \
             (`flowar edit` needs a VAE with its `encoder.*` weights)"
        ),
    }
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

/// The model card to use: `--meta`, else the one beside the FlowAR checkpoint (unless
/// `--no-meta`), saying which.
fn model_meta(a: &Args) -> CliResult<ModelMeta> {
    let (meta, said) = ModelMeta::choose(a.flowar.as_deref(), a.meta.as_deref(), a.no_meta)?;
    if let Some(line) = said {
        println!("{line}");
    }
    Ok(meta)
}

pub fn run(a: Args) -> CliResult {
    let precision: Precision = a.dtype.parse()?;
    let weights: Weights = match &a.weights {
        Some(w) => w.parse()?,
        None => Weights::Auto,
    };
    let mut meta = model_meta(&a)?;
    let t = std::time::Instant::now();
    // The weight sources and what to record of them: seeded random weights for a preset,
    // else the two checkpoint files.
    let mut vae_config = None;
    type Sources = (
        Box<dyn WeightSource>,
        Box<dyn WeightSource>,
        Vec<(String, PathBuf, String)>,
    );
    let (f, v, source_files): Sources = if let Some(p) = &a.preset {
        let preset: Preset = p.parse()?;
        let f = RandomWeights::new(
            format!("preset {p} (seed {})", a.random_init),
            a.random_init,
            flowar_keys(&preset.flowar()),
        );
        let v = RandomWeights::new(
            format!("preset kl16 (seed {})", a.random_init),
            a.random_init,
            vae_full_keys(&Preset::vae()),
        );
        meta.name.get_or_insert_with(|| {
            format!("{} (random weights, seed {})", preset.name(), a.random_init)
        });
        (Box::new(f), Box::new(v), vec![])
    } else {
        let (fp, vp) = match (&a.flowar, &a.vae) {
            (Some(f), Some(v)) => (f, v),
            _ => {
                return Err(CliError::Usage(
                    "give --flowar and --vae, or --preset".into(),
                ))
            }
        };
        let f = Checkpoint::open_with(fp, weights)?;
        let v = VaeCheckpoint::open(vp)?;
        for line in source_notes(&f, &v) {
            println!("{line}");
        }
        let mut sources = vec![("flowar".into(), fp.clone(), f.format().into())];
        sources.extend(v.source_files());
        vae_config = v.config().cloned();
        (Box::new(f), Box::new(v), sources)
    };
    let ctrl_c = || crate::interrupted().then_some("interrupted by Ctrl-C");
    let fc = Cancellable {
        source: f.as_ref(),
        cancelled: &ctrl_c,
    };
    let vc = Cancellable {
        source: v.as_ref(),
        cancelled: &ctrl_c,
    };
    let quantize = a
        .quantize
        .as_deref()
        .map(str::parse::<flowar_exporter::quantize::Quantize>)
        .transpose()?;
    let mut req = ConvertRequest::new(&fc, &vc, &a.out)
        .quantize(quantize)
        .vae_config(vae_config.as_ref())
        .latent_scale(a.latent_scale)
        .latent_shift(a.latent_shift)
        .meta(meta)
        .force(a.force)
        .allow_nonfinite(a.allow_nonfinite);
    for (role, path, format) in &source_files {
        req = req.source_file(role, path, format);
    }
    let report = convert_as(&req, precision)?;
    if !report.removed_stale.is_empty() {
        println!(
            "removed {} staging folder(s) that an interrupted convert left",
            report.removed_stale.len()
        );
    }
    if let Some(from) = &report.restored_replaced {
        println!(
            "restored {} from {}, where a `convert --force` killed between its two renames had \
             moved it (then replaced it with this conversion)",
            a.out.display(),
            from.display()
        );
    }
    if !report.removed_replaced.is_empty() {
        println!(
            "removed {} replaced model folder(s) that a `convert --force` killed between its two \
             renames left",
            report.removed_replaced.len()
        );
    }
    print_report(&report);
    if a.preset.is_none() {
        println!("{}", report.latent_norm_note());
        if let Some(note) = &report.vae_upcast {
            println!("{note}");
        }
    }
    println!(
        "wrote {} in {:.1}s",
        a.out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
