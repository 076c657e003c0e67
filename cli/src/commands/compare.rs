//! `flowar compare`: what a faster configuration costs in output, measured on the same
//! seeds against a reference configuration (see `flowar_bench::quality`).

use std::path::PathBuf;

use flowar_bench::demo_check::Meta;
use flowar_bench::quality::{compare, Side};
use flowar_runtime::sampler::schedule::Steps;
use flowar_runtime::Pipeline;

use super::{demo_model, BackendArgs, CliError, CliResult};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The reference configuration's model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// The candidate's model folder (default: --model), e.g. a `--quantize int8` conversion.
    #[arg(long)]
    pub against: Option<PathBuf>,
    /// The reference's steps: one count or one per scale (default: the manifest's).
    #[arg(long)]
    pub steps: Option<Steps>,
    /// The candidate's steps (default: --steps), e.g. 25,25,20,12,8.
    #[arg(long)]
    pub against_steps: Option<Steps>,
    /// The candidate's provider (default: --provider).
    #[arg(long)]
    pub against_provider: Option<String>,
    /// Seeds, comma-separated; every seed runs every class once.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    pub seeds: Vec<u64>,
    /// Class ids or names (default: every named class, else the first 10).
    #[arg(long = "class", num_args = 1..)]
    pub classes: Vec<String>,
    /// The shapes demo's meta.json, to report its shape-and-colour check (default: the
    /// bundled demo's, when the model is the shapes10 demo).
    #[arg(long)]
    pub demo_meta: Option<PathBuf>,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn label(dir: &std::path::Path, pipe: &Pipeline, steps: &Option<Steps>) -> String {
    let m = pipe.manifest();
    format!(
        "{} ({}{}) on {}, steps {}",
        dir.display(),
        m.dtype,
        m.quantization
            .as_deref()
            .map(|q| format!(", {}", q.split(':').next().unwrap_or(q)))
            .unwrap_or_default(),
        pipe.provider().provider.name(),
        steps
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_else(|| m.sampler.steps.to_string())
    )
}

pub fn run(a: Args) -> CliResult {
    if a.seeds.is_empty() {
        return Err(CliError::Usage("--seeds needs at least one seed".into()));
    }
    let options = a.backend.options()?;
    let pa = super::load_pipeline(&a.model, &options)?;
    let against = a.against.clone().unwrap_or_else(|| a.model.clone());
    let mut ob = options.clone();
    if let Some(p) = &a.against_provider {
        ob.provider = p.parse()?;
    }
    let pb = super::load_pipeline(&against, &ob)?;
    let m = pa.manifest().clone();
    let classes: Vec<usize> = if a.classes.is_empty() {
        (0..if m.class_names.is_empty() {
            m.num_classes.min(10)
        } else {
            m.class_names.len()
        })
            .collect()
    } else {
        a.classes
            .iter()
            .map(|c| m.class_id(c))
            .collect::<Result<_, _>>()?
    };
    let demo_meta = match &a.demo_meta {
        Some(p) => Some(Meta::load(p).map_err(|e| CliError::Usage(e.to_string()))?),
        None if m.name == "shapes10" => {
            demo_model().and_then(|d| Meta::load(&d.dir.join("meta.json")).ok())
        }
        None => None,
    };
    let against_steps = a.against_steps.clone().or_else(|| a.steps.clone());
    let mut sa = Side {
        label: label(&a.model, &pa, &a.steps),
        pipe: pa,
        steps: a.steps.clone(),
    };
    let mut sb = Side {
        label: label(&against, &pb, &against_steps),
        pipe: pb,
        steps: against_steps,
    };
    let report = compare(
        &mut sa,
        &mut sb,
        &classes,
        &a.seeds,
        demo_meta.as_ref(),
        &mut |what| eprintln!("running {what}"),
    )?;
    print!("{}", report.markdown());
    if let Some(p) = &a.json {
        flowar_runtime::image::write_atomic(
            p,
            serde_json::to_string_pretty(&report)
                .expect("json")
                .as_bytes(),
        )?;
        println!("wrote {}", p.display());
    }
    if let Some(s) = report
        .scales
        .iter()
        .find(|s| !s.max_abs.is_finite() || !s.rel_rms.is_finite())
    {
        return Err(CliError::Failed(format!(
            "the two sides' tokens at scale {0}x{0} hold NaN or infinite values (max abs {1}, \
             relative RMS {2}); nothing can be compared there",
            s.side, s.max_abs, s.rel_rms
        )));
    }
    Ok(())
}
