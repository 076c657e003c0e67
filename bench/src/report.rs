//! The benchmark's results: the JSON layout, statistics and the Markdown table.

use serde::{Deserialize, Serialize};

use crate::calibrate::Calibration;

/// Minimum, median and maximum of a measurement over the timed runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Stat {
    /// Statistics of `xs` (at least one value).
    pub fn of(xs: &[f64]) -> Stat {
        assert!(!xs.is_empty(), "no measurements");
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        };
        Stat {
            min: v[0],
            median,
            max: v[n - 1],
        }
    }

    pub fn scaled(self, k: f64) -> Stat {
        Stat {
            min: self.min * k,
            median: self.median * k,
            max: self.max * k,
        }
    }
}

/// Everything one `flowar bench` run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    /// UTC date of the run, `YYYY-MM-DD`.
    pub date: String,
    pub machine: Machine,
    pub model: ModelInfo,
    pub settings: Settings,
    /// One entry per provider asked for, in the order asked, available or not.
    pub providers: Vec<ProviderReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub os: String,
    /// The CPU's vector and matrix extensions that decide the kernels (`/proc/cpuinfo`:
    /// avx2, fma, avx512f/bw/vl, avx512_vnni, avx_vnni, avx512_bf16, avx512_fp16, amx_*).
    /// Absent from reports made before it was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_flags: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    /// The model folder, or `preset X (random weights)`.
    pub source: String,
    pub model_hash: String,
    pub parameters: usize,
    pub scales: Vec<usize>,
    pub ar_width: usize,
    pub ar_depth: usize,
    pub flow_kind: String,
    pub flow_width: usize,
    pub flow_depth: usize,
    pub image_size: usize,
    /// Graph precision from the manifest ("float32" or "float16").
    #[serde(default = "float32")]
    pub dtype: String,
    /// The manifest's quantization scheme (`--quantize int8`), absent for exact models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
}

fn float32() -> String {
    "float32".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub steps: usize,
    /// Steps per scale when a schedule was given (`--steps 25,25,20,12,8`), else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_steps: Option<Vec<usize>>,
    pub cfg: f64,
    pub guidance: f64,
    pub solver: String,
    pub seed: u64,
    pub warmup: usize,
    pub runs: usize,
    pub batches: Vec<usize>,
    /// Threads asked for (`null`: every core).
    pub threads: Option<usize>,
    /// `generate`, or `edit` (`--mode edit`: each batch is generated, then its images are
    /// edited; see [`EditSettings`]). Absent from reports made before the edit mode.
    #[serde(default = "generate")]
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edit: Option<EditSettings>,
}

fn generate() -> String {
    "generate".into()
}

/// What `--mode edit` edits: the generate runs' own images are the sources, so no files
/// are needed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EditSettings {
    /// One edit case per value (`--keep-scales`), times each mask.
    pub keep_scales: Vec<usize>,
    /// `none`, `center` or `left` (`--mask`), one edit case per value.
    pub masks: Vec<String>,
    pub invert_mask: bool,
    /// The edits' noise seed (the sources are generated with `seed`).
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderReport {
    pub provider: String,
    pub available: bool,
    /// Why it is not available (or why its run failed); `null` when it ran.
    pub reason: Option<String>,
    /// Seconds to open the four graphs (sessions created, optimized).
    pub load_s: Option<f64>,
    /// `--mode edit`: the provider that ran the VAE encoder (the runtime runs it where
    /// float64 runs: tract under openvino, cuda under tensorrt). Its graph is opened on the
    /// first encode, in the warm-up, so `load_s` leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_provider: Option<String>,
    pub batches: Vec<BatchReport>,
}

/// FLOPs of one generation of the batch, from [`crate::flops`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flops {
    pub ar: f64,
    pub ar_per_scale: Vec<f64>,
    pub flow: f64,
    pub flow_per_scale: Vec<f64>,
    pub flow_calls: usize,
    pub guided_flow_calls: usize,
    pub vae: f64,
    /// The VAE encoder (edits only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<f64>,
    pub total: f64,
    pub per_image: f64,
}

/// One provider at one batch size. Times are seconds for the whole batch unless named
/// otherwise; every [`Stat`] is over the timed runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchReport {
    pub batch: usize,
    /// `generate`, or `edit` (then [`BatchReport::edit`] says which).
    #[serde(default = "generate")]
    pub task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edit: Option<EditCase>,
    pub runs: usize,
    /// The VAE encoder (edits only): the batch's source images to tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_s: Option<Stat>,
    pub ar_s: Stat,
    pub ar_per_scale_s: Vec<Stat>,
    /// Wall time per scale, coarse to fine, from the sampler's progress reports: scale
    /// `i`'s AR step, its ODE (flow head, solver step, an edit's forcing) and the
    /// upsampling of scale `i - 1`'s tokens. Absent from reports made before it was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scale_s: Vec<Stat>,
    pub flow_s: Stat,
    pub flow_calls: usize,
    pub flow_per_call_ms: Stat,
    /// The solver-step graph (CFG combination and state update); absent from reports made
    /// before it existed, when that work was host code inside "other".
    #[serde(default)]
    pub solver_s: Stat,
    pub upsample_s: Stat,
    pub vae_s: Stat,
    /// End to end minus the stages: noise, labels, the latent transpose, pixel conversion.
    pub other_s: Stat,
    pub total_s: Stat,
    pub seconds_per_image: Stat,
    pub images_per_second: Stat,
    /// Peak resident memory of the process while this batch ran (model included).
    pub peak_rss_bytes: Option<u64>,
    /// GPU memory in use after the runs (GPU providers with `nvidia-smi` only).
    pub gpu_memory_bytes: Option<u64>,
    pub flops: Flops,
    pub gflops: Stat,
    pub calibration: Calibration,
    /// `gflops / calibration.best_gflops`.
    pub efficiency: Stat,
    /// An edit against the generate entry of the same provider, batch and sampler settings,
    /// measured in the same runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_generate: Option<VsGenerate>,
}

/// One edit case of `--mode edit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EditCase {
    /// E.g. `variation k=2`, `inpaint center`, `outpaint left k=1`.
    pub label: String,
    pub keep_scales: usize,
    /// `none`, `center` or `left`.
    pub mask: String,
    pub invert_mask: bool,
    /// Scales with nothing to regenerate (every token known): no flow-head call there.
    pub skipped_scales: Vec<usize>,
    /// Tokens regenerated per scale, over the batch (coarse to fine).
    pub regenerated_tokens: Vec<usize>,
}

/// An edit measured against generation: the same batch, steps, CFG and solver, the runs
/// interleaved (generate, then each edit, run after run), so that drift of the machine
/// touches both alike. Ratios are edit / generate, paired run by run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VsGenerate {
    pub generate_flow_calls: usize,
    pub flow_calls: usize,
    /// Flow-head seconds per image, generate and edit.
    pub generate_flow_s_per_image: Stat,
    pub flow_s_per_image: Stat,
    /// Flow-head time, edit / generate.
    pub flow_ratio: Stat,
    /// Flow-head FLOPs, edit / generate (`src/flops.rs`): what skipping the scales saves
    /// in work.
    pub flow_flops_ratio: f64,
    /// End-to-end seconds per image, generate and edit (the edit's with its encoder).
    pub generate_seconds_per_image: Stat,
    pub seconds_per_image: Stat,
    /// End to end, edit / generate.
    pub total_ratio: Stat,
    /// Seconds per image the generation spent at the scales this edit skips, past their AR
    /// steps (which an edit runs too): its ODEs there and the upsampling into them, from
    /// [`BatchReport::scale_s`]. What skipping saves, measured inside the generate runs.
    #[serde(default)]
    pub generate_s_per_image_at_skipped: Stat,
    /// The same as a share of the generation's end-to-end time.
    #[serde(default)]
    pub generate_share_at_skipped: Stat,
}

fn ms(s: f64) -> String {
    if s >= 10.0 {
        format!("{:.0}", s * 1e3)
    } else {
        format!("{:.1}", s * 1e3)
    }
}

fn secs(s: f64) -> String {
    if s >= 100.0 {
        format!("{s:.0}")
    } else if s >= 1.0 {
        format!("{s:.2}")
    } else {
        format!("{s:.3}")
    }
}

/// One Markdown table row; an empty cell is written `| |`.
fn table_row<S: AsRef<str>>(out: &mut String, cells: &[S]) {
    out.push('|');
    for c in cells {
        let c = c.as_ref();
        if c.is_empty() {
            out.push_str(" |");
        } else {
            out.push_str(&format!(" {c} |"));
        }
    }
    out.push('\n');
}

/// Share of the end-to-end median, as a percentage.
fn pct(part: f64, total: f64) -> String {
    format!("{:.0}%", 100.0 * part / total.max(f64::MIN_POSITIVE))
}

impl Report {
    /// The results as Markdown: settings, the main table, stage shares and AR per scale.
    pub fn markdown(&self) -> String {
        if self.settings.mode == "edit" {
            return self.markdown_edit();
        }
        let mut out = self.header();
        out.push_str("Medians over the timed runs; s/image and img/s give min–max too. \"efficiency\" is the achieved GFLOP/s (analytic FLOPs / end-to-end time) over the best matmul GFLOP/s the same provider reached at the model's shapes in this run.\n\n");
        self.generate_tables(&mut out);
        out
    }

    /// The first line: model, settings, machine, date.
    fn header(&self) -> String {
        let mut out = String::new();
        let m = &self.model;
        let s = &self.settings;
        out.push_str(&format!(
            "{} ({:.1}M parameters, scales {:?}), {}; batch {:?}, {} steps ({}), cfg {}, guidance {}; {} warm-up + {} timed runs; {} ({} cores), {}.\n\n",
            m.name,
            m.parameters as f64 / 1e6,
            m.scales,
            m.source,
            s.batches,
            s.scale_steps.as_ref().map_or(s.steps.to_string(), |v| {
                v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",")
            }),
            s.solver,
            s.cfg,
            s.guidance,
            s.warmup,
            s.runs,
            self.machine.cpu,
            self.machine.cores,
            self.date
        ));
        out
    }

    fn generate_tables(&self, out: &mut String) {
        self.main_table(out, false);
        out.push_str("\nShare of end-to-end time (medians):\n\n| provider | batch | AR | flow | solver | upsample | VAE | other | AR per scale ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for p in self.providers.iter().filter(|p| p.available) {
            for b in &p.batches {
                let t = b.total_s.median;
                let per_scale: Vec<String> = b
                    .ar_per_scale_s
                    .iter()
                    .zip(&self.model.scales)
                    .map(|(x, side)| format!("{side}²: {}", ms(x.median)))
                    .collect();
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    p.provider,
                    b.batch,
                    pct(b.ar_s.median, t),
                    pct(b.flow_s.median, t),
                    pct(b.solver_s.median, t),
                    pct(b.upsample_s.median, t),
                    pct(b.vae_s.median, t),
                    pct(b.other_s.median, t),
                    per_scale.join(", ")
                ));
            }
        }
    }

    /// The main table, one row per provider and batch: with `edit`, a task column (generate
    /// or the edit case) and the encoder's seconds too.
    fn main_table(&self, out: &mut String, edit: bool) {
        let mut head = vec!["provider", "batch"];
        if edit {
            head.push("task");
        }
        head.push("load s");
        if edit {
            head.push("encoder s");
        }
        head.extend([
            "AR s",
            "flow s (calls × ms)",
            "solver ms",
            "upsample ms",
            "VAE s",
            "other ms",
            "s/image",
            "img/s",
            "peak RSS MiB",
            "GFLOP/s",
            "matmul GFLOP/s",
            "efficiency",
        ]);
        let rule: Vec<&str> = head
            .iter()
            .map(|h| {
                if matches!(*h, "provider" | "task") {
                    "---"
                } else {
                    "---:"
                }
            })
            .collect();
        table_row(out, &head);
        out.push_str(&format!("|{}|\n", rule.join("|")));
        for p in &self.providers {
            if !p.available {
                let reason = p
                    .reason
                    .as_deref()
                    .unwrap_or("unknown")
                    .replace('|', "/")
                    .replace('\n', " ");
                let mut cells = vec![
                    p.provider.clone(),
                    "–".to_string(),
                    format!("not available: {reason}"),
                ];
                cells.resize(head.len(), String::new());
                table_row(out, &cells);
                continue;
            }
            for b in &p.batches {
                let mut cells = vec![p.provider.clone(), b.batch.to_string()];
                if edit {
                    cells.push(b.task_label().to_string());
                }
                cells.push(p.load_s.map(secs).unwrap_or_else(|| "–".into()));
                if edit {
                    cells.push(
                        b.encoder_s
                            .map(|e| secs(e.median))
                            .unwrap_or_else(|| "–".into()),
                    );
                }
                cells.extend([
                    secs(b.ar_s.median),
                    format!(
                        "{} ({} × {})",
                        secs(b.flow_s.median),
                        b.flow_calls,
                        ms(b.flow_per_call_ms.median / 1e3)
                    ),
                    ms(b.solver_s.median),
                    ms(b.upsample_s.median),
                    secs(b.vae_s.median),
                    ms(b.other_s.median),
                    format!(
                        "{} ({}–{})",
                        secs(b.seconds_per_image.median),
                        secs(b.seconds_per_image.min),
                        secs(b.seconds_per_image.max)
                    ),
                    format!(
                        "{:.3} ({:.3}–{:.3})",
                        b.images_per_second.median,
                        b.images_per_second.min,
                        b.images_per_second.max
                    ),
                    b.peak_rss_bytes
                        .map(|x| format!("{:.0}", x as f64 / (1 << 20) as f64))
                        .unwrap_or_else(|| "–".into()),
                    format!("{:.1}", b.gflops.median),
                    format!("{:.1}", b.calibration.best_gflops),
                    format!("{:.0}%", 100.0 * b.efficiency.median),
                ]);
                table_row(out, &cells);
            }
        }
    }

    /// `--mode edit`: every case's stages (the encoder its own), what each edit saves
    /// against the generation of the same batch, and the stage shares.
    fn markdown_edit(&self) -> String {
        let mut out = self.header();
        let s = &self.settings;
        if !self.machine.cpu_flags.is_empty() {
            out.push_str(&format!(
                "CPU flags: {}.\n\n",
                self.machine.cpu_flags.join(", ")
            ));
        }
        if let Some(e) = &s.edit {
            out.push_str(&format!(
                "Edit mode: each batch is generated (seed {}), and its images are the sources of the edits (seed {}; keep_scales {:?}, masks {:?}{}). Per timed run the generation and then every edit run in turn, so ratios are paired run by run. An edit's time runs from its source images to its edited images: the VAE encoder, then the teacher-forced sampler; a scale with nothing to regenerate runs its AR step but no flow-head call.\n\n",
                s.seed,
                e.seed,
                e.keep_scales,
                e.masks,
                if e.invert_mask { ", inverted" } else { "" }
            ));
        }
        out.push_str("Medians over the timed runs; s/image and img/s give min–max too. \"efficiency\" is the achieved GFLOP/s (analytic FLOPs, the encoder's included, / end-to-end time) over the best matmul GFLOP/s the same provider reached at the model's shapes in this run.\n\n");
        self.main_table(&mut out, true);
        let moved: Vec<String> = self
            .providers
            .iter()
            .filter_map(|p| {
                p.encoder_provider
                    .as_ref()
                    .filter(|e| **e != p.provider)
                    .map(|e| format!("{} on {e}", p.provider))
            })
            .collect();
        if !moved.is_empty() {
            out.push_str(&format!(
                "\nThe VAE encoder runs where float64 runs: {}.\n",
                moved.join(", ")
            ));
        }
        out.push_str("\nEach edit against the generation of the same batch (edit / generate, medians of the per-run ratios, min–max). \"generate's ODE at skipped scales\": what the generate runs spent at the scales the edit skips, past their AR steps (per-scale wall time from the progress reports), per image and as a share of their end-to-end time: what skipping saves, measured inside the generate runs.\n\n| provider | batch | task | skipped scales | flow calls | flow ms / image | flow time ratio | flow FLOP ratio | generate's ODE at skipped scales, ms / image (share) | s / image | end-to-end ratio |\n|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for p in self.providers.iter().filter(|p| p.available) {
            for b in &p.batches {
                let (Some(e), Some(v)) = (&b.edit, &b.vs_generate) else {
                    continue;
                };
                let ratio = |r: &Stat| format!("{:.3} ({:.3}–{:.3})", r.median, r.min, r.max);
                out.push_str(&format!(
                    "| {} | {} | {} | {:?} | {} → {} | {} → {} | {} | {:.3} | {} ({:.1}%) | {} → {} | {} |\n",
                    p.provider,
                    b.batch,
                    e.label,
                    e.skipped_scales,
                    v.generate_flow_calls,
                    v.flow_calls,
                    ms(v.generate_flow_s_per_image.median),
                    ms(v.flow_s_per_image.median),
                    ratio(&v.flow_ratio),
                    v.flow_flops_ratio,
                    ms(v.generate_s_per_image_at_skipped.median),
                    100.0 * v.generate_share_at_skipped.median,
                    secs(v.generate_seconds_per_image.median),
                    secs(v.seconds_per_image.median),
                    ratio(&v.total_ratio),
                ));
            }
        }
        out.push_str("\nWall time per scale (medians, ms for the batch; a scale's AR step, its ODE, and the upsampling into it):\n\n| provider | batch | task | per scale ms |\n|---|---:|---|---|\n");
        for p in self.providers.iter().filter(|p| p.available) {
            for b in &p.batches {
                let per_scale: Vec<String> = b
                    .scale_s
                    .iter()
                    .zip(&self.model.scales)
                    .map(|(x, side)| format!("{side}²: {}", ms(x.median)))
                    .collect();
                out.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    p.provider,
                    b.batch,
                    b.task_label(),
                    per_scale.join(", ")
                ));
            }
        }
        out.push_str("\nShare of end-to-end time (medians):\n\n| provider | batch | task | encoder | AR | flow | solver | upsample | VAE | other | AR per scale ms |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for p in self.providers.iter().filter(|p| p.available) {
            for b in &p.batches {
                let t = b.total_s.median;
                let per_scale: Vec<String> = b
                    .ar_per_scale_s
                    .iter()
                    .zip(&self.model.scales)
                    .map(|(x, side)| format!("{side}²: {}", ms(x.median)))
                    .collect();
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    p.provider,
                    b.batch,
                    b.task_label(),
                    b.encoder_s
                        .map(|e| pct(e.median, t))
                        .unwrap_or_else(|| "–".into()),
                    pct(b.ar_s.median, t),
                    pct(b.flow_s.median, t),
                    pct(b.solver_s.median, t),
                    pct(b.upsample_s.median, t),
                    pct(b.vae_s.median, t),
                    pct(b.other_s.median, t),
                    per_scale.join(", ")
                ));
            }
        }
        out
    }
}

impl BatchReport {
    /// `generate`, or the edit case's label.
    pub fn task_label(&self) -> &str {
        self.edit.as_ref().map_or(self.task.as_str(), |e| &e.label)
    }
}

/// `YYYY-MM-DD` (UTC) for seconds since the Unix epoch.
pub fn civil_date(unix_secs: u64) -> String {
    // Days to a proleptic Gregorian date (the era-based algorithm).
    let z = (unix_secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_dates() {
        let s = Stat::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 2.5, 10.0));
        assert_eq!(Stat::of(&[4.0]).median, 4.0);
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(951_782_400), "2000-02-29");
        assert_eq!(civil_date(1_767_225_600), "2026-01-01");
    }
}
