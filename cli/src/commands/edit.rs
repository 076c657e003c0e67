//! `flowar edit`: in-painting, out-painting, class-conditional editing and variations of
//! input images, by teacher-forcing their tokens into the sampler (the rule is in
//! `flowar_runtime::sampler::edit`).

use std::path::PathBuf;
use std::time::Instant;

use flowar_runtime::edit_input::{self, EditInput};
use flowar_runtime::image::{labelled_grid, save_png, write_atomic, RgbImage};
use flowar_runtime::sample_set;
use flowar_runtime::sampler::noise;
use flowar_runtime::{EditPlan, Mask, Request, StageTimes};
use indicatif::{ProgressBar, ProgressStyle};

use super::generate::{grid_path, model_dir, prepare_outputs, secs};
use super::{BackendArgs, CliError, CliResult, SamplerArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model folder from `flowar convert` with a VAE encoder (default: the bundled demo).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Source images (PNG). Other sizes are fitted to the model's: halved with a box filter
    /// while at least twice its size, resized (bicubic) so the short side fits, centre-cropped
    /// (ADM's center_crop_arr, as the reference's data pipeline).
    #[arg(long = "image", num_args = 1.., required = true)]
    pub images: Vec<PathBuf>,
    /// Masks (PNG, grey; white = regenerate, any value above 0 counts): one for all images
    /// or one per image. Without one, an RGBA image's alpha is its mask (transparent =
    /// regenerate).
    #[arg(long = "mask", num_args = 1..)]
    pub masks: Vec<PathBuf>,
    /// Regenerate outside the mask instead (out-painting).
    #[arg(long)]
    pub invert_mask: bool,
    /// Keep the first K scales whole (a variation); with a mask, the mask applies from
    /// scale K on.
    #[arg(long, default_value_t = 0)]
    pub keep_scales: usize,
    /// Class ids or names: one per image, or one for all.
    #[arg(long = "class", num_args = 1.., conflicts_with = "unconditional")]
    pub classes: Vec<String>,
    /// Edit without a class (the null class, guidance off).
    #[arg(long)]
    pub unconditional: bool,
    /// Paste the source's pixels back outside the mask, exactly.
    #[arg(long)]
    pub composite: bool,
    /// Edits per image (image i's edit j is output index i * count + j, the same whatever
    /// the batch size).
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Replay recorded starting noise (`noise.s{k}` tensors of shape [rows, N_k, C], every
    /// edit in one batch).
    #[arg(long)]
    pub noise_file: Option<PathBuf>,
    /// Write one PNG per edit (`NNNNNN.png`) and `run.json` here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write a grid of each source and its edits here (default when --out is not given:
    /// flowar-edit-grid.png).
    #[arg(long)]
    pub grid: Option<PathBuf>,
}

/// The images and masks of the command line, read and checked before any work.
fn read_inputs(a: &Args, size: usize) -> CliResult<Vec<EditInput>> {
    if !(a.masks.is_empty() || a.masks.len() == 1 || a.masks.len() == a.images.len()) {
        return Err(CliError::Usage(format!(
            "{} masks for {} images: give one mask for all images, or one per image",
            a.masks.len(),
            a.images.len()
        )));
    }
    let mut out = Vec::with_capacity(a.images.len());
    for (i, path) in a.images.iter().enumerate() {
        let mask = a.masks.get(if a.masks.len() == 1 { 0 } else { i });
        let input = edit_input::from_files(path, mask.map(PathBuf::as_path), a.invert_mask, size)?;
        if let Some((w, h)) = input.source.fitted_from {
            eprintln!(
                "{}: {w}x{h} fitted to the model's {size}x{size} (box-halved while at least \
                 twice the size, bicubic resize of the short side, centre crop: \
                 center_crop_arr)",
                path.display()
            );
        }
        if mask.is_none() && input.mask.is_some() {
            eprintln!(
                "{}: no --mask, so its alpha channel is the mask (transparent = regenerate)",
                path.display()
            );
        }
        out.push(input);
    }
    edit_input::check(&out, a.invert_mask, a.composite)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(out)
}

pub fn run(a: Args) -> CliResult {
    if a.sampler.batch_size == 0 || a.count == 0 {
        return Err(CliError::Usage(
            "--batch-size and --count must be at least 1".into(),
        ));
    }
    let options = a.backend.options_for(Some(a.sampler.batch_size))?;
    let model_path = model_dir(a.model.as_deref(), true)?;
    let grid_path = grid_path(a.grid.as_deref(), a.out.as_deref(), "flowar-edit-grid.png");
    let mut pipe = super::load_pipeline(&model_path, &options)?;
    let m = pipe.manifest().clone();
    // Before reading any image: a folder without an encoder says how to get one.
    pipe.model_mut().require_encoder()?;
    if a.keep_scales > m.scales.len() {
        return Err(CliError::Usage(format!(
            "--keep-scales {} exceeds the model's {} scales {:?}",
            a.keep_scales,
            m.scales.len(),
            m.scales
        )));
    }
    let inputs = read_inputs(&a, m.image_size)?;
    let classes: Vec<usize> = if a.unconditional {
        vec![m.null_class; inputs.len()]
    } else {
        let ids: Vec<usize> = a
            .classes
            .iter()
            .map(|c| m.class_id(c))
            .collect::<Result<_, _>>()?;
        match ids.len() {
            0 => {
                return Err(CliError::Usage(
                    "give --class (one per image, or one for all) or --unconditional".into(),
                ))
            }
            1 => vec![ids[0]; inputs.len()],
            n if n == inputs.len() => ids,
            n => {
                return Err(CliError::Usage(format!(
                    "{n} classes for {} images: give one per image, or one for all",
                    inputs.len()
                )))
            }
        }
    };
    let cfg = if a.unconditional {
        if a.sampler.cfg.is_some_and(|c| c != 1.0) {
            return Err(CliError::Usage(
                "--unconditional edits without a class: guidance has no class to steer to, so \
                 --cfg must be 1 or left out"
                    .into(),
            ));
        }
        Some(1.0)
    } else {
        a.sampler.cfg
    };
    let base = Request::with_defaults(&m)
        .with_sampler(cfg, a.sampler.guidance, None)
        .with_seed(a.sampler.seed);
    let base = match &a.sampler.steps {
        Some(s) => base.with_steps(s),
        None => base,
    };
    let any_mask = inputs.iter().any(|i| i.mask.is_some());
    let task = edit_input::task(any_mask, a.keep_scales, a.invert_mask);
    let n_scales = m.scales.len();
    for i in &inputs {
        let none_regenerated =
            a.keep_scales == n_scales || i.mask.as_ref().is_some_and(|mk| !mk.any());
        if none_regenerated {
            eprintln!(
                "{}: nothing to regenerate, so the output is the VAE round trip of the image",
                i.name
            );
        } else if i.mask.is_none() && a.keep_scales == 0 {
            eprintln!(
                "{}: no mask and --keep-scales 0: every token is regenerated, so the output \
                 does not depend on the image (give a mask, or --keep-scales K for a variation)",
                i.name
            );
        }
    }

    let created = prepare_outputs(a.out.as_deref(), grid_path.as_deref())?;

    // Row k edits image k / count; its noise is image k's stream.
    let total = inputs.len() * a.count;
    let indices: Vec<u64> = (0..total as u64).collect();
    let source_of = |k: u64| k as usize / a.count;
    let recorded = match &a.noise_file {
        Some(p) => {
            let rows = if base.cfg > 1.0 { 2 * total } else { total };
            Some(noise::load_recorded(
                p,
                "noise.",
                rows,
                &m.scales,
                m.latent_channels,
            )?)
        }
        None => None,
    };
    let batch_size = if recorded.is_some() {
        total
    } else {
        a.sampler.batch_size
    };

    let started = Instant::now();
    // Each source is encoded once, in batches (at FlowAR-S size about 0.7 s an image on two
    // cores: a bar, and Ctrl-C between batches).
    let images: Vec<RgbImage> = inputs.iter().map(|i| i.source.image.clone()).collect();
    let encode_bar = ProgressBar::new(images.len() as u64);
    encode_bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} source image(s) encoded",
        )
        .expect("valid template"),
    );
    let mut tokens = Vec::new();
    for chunk in images.chunks(a.sampler.batch_size) {
        if crate::interrupted() {
            return Err(flowar_runtime::Error::Cancelled.into());
        }
        tokens.extend(pipe.encode(chunk)?);
        encode_bar.inc(chunk.len() as u64);
    }
    encode_bar.finish_and_clear();
    let encode_time = started.elapsed();
    let masks: Vec<Option<Mask>> = inputs.iter().map(|i| i.mask.clone()).collect();
    let plan_for = |ix: &[u64]| -> CliResult<EditPlan> {
        let rows: Vec<usize> = ix.iter().map(|&k| source_of(k)).collect();
        Ok(EditPlan::for_rows(
            &tokens,
            &masks,
            a.keep_scales,
            &rows,
            &m,
        )?)
    };
    let mk = |ix: &[u64], noise: Option<Vec<Vec<f32>>>| -> CliResult<Request> {
        Ok(base
            .clone()
            .with_indices(ix, |k| classes[source_of(k)])
            .with_noise(noise)
            .with_edit(Some(plan_for(ix)?)))
    };
    let first = mk(&indices[..batch_size.min(total)], recorded.clone())?;
    pipe.validate(&first)?;
    let plan = first.edit.as_deref().expect("an edit");
    let skipped: Vec<usize> = (0..m.scales.len())
        .filter(|&k| plan.scale(k).all_known())
        .collect();
    if !skipped.is_empty() {
        eprintln!(
            "scales with nothing to regenerate in the first batch (flow head skipped): {skipped:?}"
        );
    }

    let grid_steps: usize = (0..m.scales.len())
        .map(|i| flowar_runtime::sampler::schedule::time_grid(base.steps_at(i)).len() - 1)
        .sum();
    let bar = ProgressBar::new((total.div_ceil(batch_size) * grid_steps) as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    let mut times = StageTimes::default();
    let mut outputs: Vec<(u64, RgbImage)> = Vec::new();
    for (bi, chunk) in indices.chunks(batch_size).enumerate() {
        let req = mk(chunk, recorded.clone())?;
        let out = pipe.generate(&req, &mut |p| {
            bar.inc(1);
            bar.set_message(format!(
                "batch {} scale {}/{} step {}/{}",
                bi + 1,
                p.scale + 1,
                p.scales,
                p.step,
                p.steps
            ));
            !crate::interrupted()
        })?;
        times.add(&out.times);
        let mut edited = out.images;
        if a.composite {
            for (&k, img) in chunk.iter().zip(edited.iter_mut()) {
                let input = &inputs[source_of(k)];
                let mask = input.mask.as_ref().expect("checked: --composite has masks");
                edit_input::composite(img, &input.source.image, mask)?;
            }
        }
        if let Some(dir) = &a.out {
            for (&k, img) in chunk.iter().zip(&edited) {
                let input = &inputs[source_of(k)];
                let mut text = sample_set::png_text(&m, &req, k, classes[source_of(k)]);
                text.extend(edit_input::png_text(
                    input,
                    task,
                    a.invert_mask,
                    a.keep_scales,
                    a.composite,
                ));
                save_png(&dir.join(sample_set::file_name(k)), img, &text)?;
            }
        }
        outputs.extend(chunk.iter().copied().zip(edited));
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    eprintln!(
        "edited {total} image(s) in {:.2}s on {}: encoder {:.2}s, AR {:.2}s, flow head {:.2}s ({} calls), VAE {:.2}s",
        secs(elapsed),
        pipe.provider().provider.name(),
        secs(encode_time),
        secs(times.ar),
        secs(times.flow),
        times.flow_calls,
        secs(times.vae)
    );
    if let Some(g) = &grid_path {
        let (mut cells, mut labels) = (Vec::new(), Vec::new());
        for (i, input) in inputs.iter().enumerate() {
            cells.push(input.source.image.clone());
            labels.push("source".to_string());
            for (k, img) in outputs.iter().filter(|(k, _)| source_of(*k) == i) {
                cells.push(img.clone());
                let c = classes[source_of(*k)];
                labels.push(
                    m.class_names
                        .get(c)
                        .cloned()
                        .unwrap_or_else(|| format!("class {c}")),
                );
            }
        }
        let zoom = (96 / m.image_size).max(1);
        save_png(
            g,
            &labelled_grid(&cells, &labels, 1 + a.count, zoom),
            &[
                ("flowar:model".into(), m.name.clone()),
                ("flowar:edit".into(), task.to_string()),
            ],
        )?;
        println!("wrote grid {}", g.display());
    }
    if let Some(dir) = &a.out {
        let run = serde_json::json!({
            "model": model_path.display().to_string(),
            "model_name": m.name,
            "model_hash": m.model_hash,
            "dtype": m.dtype,
            "provider": pipe.provider().provider.name(),
            "edit": task,
            "rule": edit_input::RULE,
            "images": inputs.iter().map(|i| serde_json::json!({
                "path": i.name,
                "sha256": i.source.sha256,
                "fitted_from": i.source.fitted_from,
                "mask_sha256": i.mask_hash,
            })).collect::<Vec<_>>(),
            "invert_mask": a.invert_mask,
            "keep_scales": a.keep_scales,
            "composite": a.composite,
            "classes": indices.iter().map(|&k| classes[source_of(k)]).collect::<Vec<_>>(),
            "indices": indices,
            "count": a.count,
            "seed": a.sampler.seed,
            "cfg": base.cfg,
            "guidance": base.guidance,
            "steps": base.scale_steps.as_ref().map_or(serde_json::json!(base.steps), |v| serde_json::json!(v)),
            "batch_size": batch_size,
            "noise_file": a.noise_file,
            "timings_s": {
                "load": secs(pipe.load_time()),
                "total": secs(elapsed),
                "encoder": secs(encode_time),
                "ar": secs(times.ar),
                "flow_head": secs(times.flow),
                "flow_head_calls": times.flow_calls,
                "vae": secs(times.vae),
            },
        });
        write_atomic(
            &dir.join("run.json"),
            serde_json::to_string_pretty(&run).expect("json").as_bytes(),
        )?;
        println!("wrote {total} edit(s) and run.json to {}", dir.display());
    }
    created.keep();
    Ok(())
}
