//! Checkpoints in, model folder out: four ONNX graphs and `manifest.json`, written to a
//! temporary folder and renamed into place only when everything succeeded.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::onnx::proto::{ModelProto, StringStringEntryProto};
use flowar_format::manifest::{
    Architecture, FlowKind, GraphSpec, Graphs, Manifest, RopeSpec, SamplerDefaults, SourceFile,
    VaeEncoderArch, VerifyBounds, FORMAT_VERSION, MANIFEST_FILE,
};
use flowar_format::{atomic_file, io};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::arch::{self, FlowArDims, VaeDims};
use crate::error::{ExportError, Result};
use crate::graphs::vae_decoder::LatentNorm;
use crate::graphs::{ar_step, flow_head, solver_step, vae_decoder, vae_encoder, BuiltGraph};
pub use crate::precision::{Precision, F16_GRAPH_BOUND, F16_VAE_BOUND, INT8_GRAPH_BOUND};
use crate::quantize::Quantize;
use crate::vae_checkpoint::{DiffusersVaeConfig, VaeCheckpoint};
use crate::weights::{check_unused, NonFinitePolicy, Vb, WeightSource};

pub const EXPORTER_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The latent scale of MAR's kl16, used by every released FlowAR.
pub const DEFAULT_LATENT_SCALE: f64 = 0.2325;

/// Optional facts a checkpoint cannot carry (a model card's `meta.json` supplies them).
/// Unknown fields are ignored; the ones that describe the architecture are checked
/// against the checkpoints.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct ModelMeta {
    pub name: Option<String>,
    pub latent_scale: Option<f64>,
    /// Added after the division by the scale (diffusers' `shift_factor`).
    pub latent_shift: Option<f64>,
    /// Class names, from class 0 (a model may name only its first classes).
    #[serde(default)]
    pub classes: Vec<String>,
    /// The number of classes the model was trained with.
    pub num_classes: Option<usize>,
    /// Generated image side in pixels.
    pub image_size: Option<usize>,
    pub sampler: Option<MetaSampler>,
    /// The training run's FlowAR settings (only the latent width is checked).
    pub flowar: Option<MetaFlowar>,
    /// The training run's VAE settings (only `z_channels` is checked).
    pub vae: Option<MetaVae>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct MetaFlowar {
    /// Latent channels the FlowAR model works on.
    pub vae_embed_dim: Option<usize>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct MetaVae {
    /// Channels the VAE decoder's `conv_in` takes (after `post_quant_conv`, if any).
    pub z_channels: Option<usize>,
}

/// The file name a model card has beside its checkpoint.
pub const META_FILE: &str = "meta.json";

#[derive(Debug, Clone, serde::Deserialize)]
pub struct MetaSampler {
    pub cfg: f64,
    pub guidance: f64,
    pub num_steps: usize,
}

impl ModelMeta {
    pub fn load(path: &Path) -> Result<ModelMeta> {
        let text = std::fs::read_to_string(path).map_err(|e| ExportError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| {
            ExportError::BadArgument(format!("{}: invalid model metadata: {e}", path.display()))
        })
    }

    /// The model card beside a checkpoint (`meta.json` in its folder), if there is one.
    pub fn beside(checkpoint: &Path) -> Option<PathBuf> {
        let dir = checkpoint
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Some(dir.join(META_FILE)).filter(|p| p.is_file())
    }

    /// The card to use: `meta` when given, else the one beside the FlowAR checkpoint unless
    /// `ignore_beside`; with a line saying which, for the user.
    pub fn choose(
        flowar: Option<&Path>,
        meta: Option<&Path>,
        ignore_beside: bool,
    ) -> Result<(ModelMeta, Option<String>)> {
        if let Some(p) = meta {
            return Ok((ModelMeta::load(p)?, None));
        }
        match flowar.and_then(ModelMeta::beside) {
            Some(p) if !ignore_beside => Ok((
                ModelMeta::load(&p)?,
                Some(format!(
                    "using the model card {} beside the checkpoint (--no-meta ignores it)",
                    p.display()
                )),
            )),
            Some(p) => Ok((
                ModelMeta::default(),
                Some(format!("ignoring {} (--no-meta)", p.display())),
            )),
            None => Ok((ModelMeta::default(), None)),
        }
    }

    /// Checks what the card says about the architecture against what the checkpoints hold.
    fn check(&self, f: &FlowArDims, v: &VaeDims, image_size: usize) -> Result<()> {
        let mismatch = |what: &str, card: usize, ckpt: usize, key: &str| {
            Err(ExportError::Mismatch(format!(
                "the model metadata gives {what} {card} but the checkpoint has {ckpt} ({key}); \
                 is this meta.json for another model? (--no-meta ignores it)"
            )))
        };
        if self.classes.len() > f.num_classes {
            return Err(ExportError::BadArgument(format!(
                "model metadata names {} classes but the checkpoint has only {}",
                self.classes.len(),
                f.num_classes
            )));
        }
        if let Some(n) = self.num_classes.filter(|&n| n != f.num_classes) {
            return mismatch("num_classes", n, f.num_classes, "class_emb.weight");
        }
        let latent = self.flowar.as_ref().and_then(|m| m.vae_embed_dim);
        if let Some(c) = latent.filter(|&c| c != f.latent_channels) {
            return mismatch(
                "flowar.vae_embed_dim",
                c,
                f.latent_channels,
                "z_proj.weight",
            );
        }
        let z = self.vae.as_ref().and_then(|m| m.z_channels);
        if let Some(z) = z.filter(|&z| z != v.arch.z_channels) {
            return mismatch(
                "vae.z_channels",
                z,
                v.arch.z_channels,
                "decoder.conv_in.weight",
            );
        }
        if let Some(s) = self.image_size.filter(|&s| s != image_size) {
            return mismatch("image_size", s, image_size, "scales × VAE stride");
        }
        Ok(())
    }
}

/// Where the latent scale (or shift) of a conversion came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentScaleSource {
    /// `--latent-scale` / `--latent-shift` ([`ConvertRequest::latent_scale`]).
    Given,
    /// The model card.
    Meta,
    /// The diffusers VAE's `config.json` (`scaling_factor`, `shift_factor`).
    VaeConfig,
    /// The default: for the scale [`DEFAULT_LATENT_SCALE`], MAR's kl16 value that every
    /// released FlowAR uses; for the shift 0.
    Default,
}

impl LatentScaleSource {
    /// Picks the first of: given, model card, VAE config, default.
    fn pick(
        given: Option<f64>,
        meta: Option<f64>,
        config: Option<f64>,
        default: f64,
    ) -> (f64, Self) {
        match (given, meta, config) {
            (Some(v), _, _) => (v, LatentScaleSource::Given),
            (None, Some(v), _) => (v, LatentScaleSource::Meta),
            (None, None, Some(v)) => (v, LatentScaleSource::VaeConfig),
            (None, None, None) => (default, LatentScaleSource::Default),
        }
    }
}

/// What to convert and how.
pub struct ConvertRequest<'a> {
    pub flowar: &'a dyn WeightSource,
    pub vae: &'a dyn WeightSource,
    /// The config of a diffusers-layout VAE (required for one, refused for LDM weights).
    pub vae_config: Option<&'a DiffusersVaeConfig>,
    /// Files the sources were read from, hashed into the manifest (empty for presets).
    pub source_files: Vec<(String, PathBuf, String)>,
    pub out: PathBuf,
    pub latent_scale: Option<f64>,
    pub latent_shift: Option<f64>,
    pub meta: ModelMeta,
    pub force: bool,
    pub allow_nonfinite: bool,
    /// See [`EXTERNAL_DATA_THRESHOLD`].
    pub external_data_threshold: usize,
    /// int8 block linears in the flow head and AR: the opt-in fast mode (see [`crate::quantize`]).
    pub quantize: Option<Quantize>,
}

impl<'a> ConvertRequest<'a> {
    /// Converts `flowar` and `vae` into the folder `out` with the defaults: no source
    /// files to hash (add them with [`ConvertRequest::source_file`]), no model card, the
    /// latent scale from the model card or else [`DEFAULT_LATENT_SCALE`], an existing
    /// `out` refused, non-finite weights refused, and external data past
    /// [`EXTERNAL_DATA_THRESHOLD`].
    pub fn new(
        flowar: &'a dyn WeightSource,
        vae: &'a dyn WeightSource,
        out: impl Into<PathBuf>,
    ) -> ConvertRequest<'a> {
        ConvertRequest {
            flowar,
            vae,
            vae_config: None,
            source_files: Vec::new(),
            out: out.into(),
            latent_scale: None,
            latent_shift: None,
            meta: ModelMeta::default(),
            force: false,
            allow_nonfinite: false,
            external_data_threshold: EXTERNAL_DATA_THRESHOLD,
            quantize: None,
        }
    }

    /// Quantizes the transformers' block linears to int8 (`None`: exact float graphs).
    pub fn quantize(mut self, quantize: Option<Quantize>) -> Self {
        self.quantize = quantize;
        self
    }

    /// Converts two checkpoint files read from `flowar_path` and `vae_path`, recording
    /// both as sources (their sha256 makes the model hash).
    pub fn from_checkpoints(
        flowar: &'a crate::checkpoint::Checkpoint,
        flowar_path: &Path,
        vae: &'a crate::checkpoint::Checkpoint,
        vae_path: &Path,
        out: impl Into<PathBuf>,
    ) -> ConvertRequest<'a> {
        ConvertRequest::new(flowar, vae, out)
            .source_file("flowar", flowar_path, flowar.format())
            .source_file("vae", vae_path, vae.format())
    }

    /// Converts a FlowAR checkpoint and a VAE opened in any layout ([`VaeCheckpoint`]),
    /// recording the files read (the VAE's config too) as sources.
    pub fn from_files(
        flowar: &'a crate::checkpoint::Checkpoint,
        flowar_path: &Path,
        vae: &'a VaeCheckpoint,
        out: impl Into<PathBuf>,
    ) -> ConvertRequest<'a> {
        let mut req = ConvertRequest::new(flowar, vae, out)
            .vae_config(vae.config())
            .source_file("flowar", flowar_path, flowar.format());
        for (role, path, format) in vae.source_files() {
            req = req.source_file(&role, path, &format);
        }
        req
    }

    /// The config of a diffusers-layout VAE (see [`VaeCheckpoint::config`]).
    pub fn vae_config(mut self, config: Option<&'a DiffusersVaeConfig>) -> Self {
        self.vae_config = config;
        self
    }

    /// Records a checkpoint file the weights came from (`role` is `flowar` or `vae`,
    /// `format` the reader's name); its sha256 goes into the manifest and the model hash.
    pub fn source_file(mut self, role: &str, path: impl Into<PathBuf>, format: &str) -> Self {
        self.source_files
            .push((role.to_string(), path.into(), format.to_string()));
        self
    }

    pub fn meta(mut self, meta: ModelMeta) -> Self {
        self.meta = meta;
        self
    }

    /// Overrides the latent scale (`None` keeps the model card's, the VAE config's or the
    /// default).
    pub fn latent_scale(mut self, scale: Option<f64>) -> Self {
        self.latent_scale = scale;
        self
    }

    /// Overrides the latent shift (`None` keeps the model card's, the VAE config's or 0).
    pub fn latent_shift(mut self, shift: Option<f64>) -> Self {
        self.latent_shift = shift;
        self
    }

    /// Replace an existing output folder.
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Convert weights holding NaN or infinity instead of refusing them.
    pub fn allow_nonfinite(mut self, allow: bool) -> Self {
        self.allow_nonfinite = allow;
        self
    }

    pub fn external_data_threshold(mut self, bytes: usize) -> Self {
        self.external_data_threshold = bytes;
        self
    }
}

/// Lines telling the user which state dict of a checkpoint was read and whether DDP's key
/// prefix was stripped (`role` is `flowar` or `vae`).
pub fn checkpoint_notes(role: &str, ck: &crate::checkpoint::Checkpoint) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(name) = ck.selected_state_dict() {
        let others: Vec<&str> = ck
            .state_dicts()
            .iter()
            .filter(|s| !s.selected)
            .map(|s| s.name.as_str())
            .collect();
        let also = if others.is_empty() {
            String::new()
        } else {
            format!(" (also holds: {})", others.join(", "))
        };
        notes.push(format!(
            "{role}: converting the state dict `{name}` of {}{also}",
            ck.path().display()
        ));
    }
    if let Some(prefix) = ck.stripped_prefix() {
        notes.push(format!(
            "{role}: stripped the `{prefix}` prefix (DistributedDataParallel) from every key of {}",
            ck.path().display()
        ));
    }
    notes
}

/// What the user should know about the two inputs of [`ConvertRequest::from_files`]: the
/// state dicts read, prefixes stripped, where the VAE's weights and config were found.
pub fn source_notes(flowar: &crate::checkpoint::Checkpoint, vae: &VaeCheckpoint) -> Vec<String> {
    let mut notes = checkpoint_notes("flowar", flowar);
    notes.extend(checkpoint_notes("vae", vae.checkpoint()));
    notes.extend(vae.notes().iter().cloned());
    if let Some(c) = vae.config() {
        notes.push(format!(
            "vae: diffusers AutoencoderKL ({} latent channels) with its config {}",
            c.latent_channels,
            c.path.display()
        ));
    }
    notes
}

impl ConvertReport {
    /// The decode rule the model folder applies, and where its numbers came from; with a
    /// warning when the scale is the kl16 default that nothing confirmed.
    pub fn latent_norm_note(&self) -> String {
        let m = &self.manifest;
        let from = |s: LatentScaleSource| match s {
            LatentScaleSource::Given => "given",
            LatentScaleSource::Meta => "from the model card",
            LatentScaleSource::VaeConfig => "from the VAE's config.json",
            LatentScaleSource::Default => "default",
        };
        let mut line = format!(
            "decode rule: latent = tokens / {} ({}) + {} ({})",
            m.latent_scale,
            from(self.latent_scale_source),
            m.latent_shift,
            from(self.latent_shift_source)
        );
        if self.latent_scale_source == LatentScaleSource::Default {
            line.push_str(&format!(
                "; {DEFAULT_LATENT_SCALE} is the released FlowAR's kl16 scale (no --latent-scale, \
                 no {META_FILE} and no VAE config giving one): a model trained with another VAE \
                 scale generates wrong images with it"
            ));
        }
        line
    }
}

/// What a conversion produced.
#[derive(Debug)]
pub struct ConvertReport {
    pub manifest: Manifest,
    /// Where `manifest.latent_scale` came from.
    pub latent_scale_source: LatentScaleSource,
    /// Where `manifest.latent_shift` came from.
    pub latent_shift_source: LatentScaleSource,
    /// Staging folders that killed conversions to the same output had left, now removed.
    pub removed_stale: Vec<PathBuf>,
    /// Folders that `--force` conversions to the same output, killed between moving the old
    /// folder aside and moving the new one in, had left (`.OUT.old.tmp-HOST-PID`), now
    /// removed.
    pub removed_replaced: Vec<PathBuf>,
    /// The folder a `--force` conversion killed between its two renames had moved aside,
    /// with no model left at the output: moved back there before this conversion began.
    pub restored_replaced: Option<PathBuf>,
    pub ignored_keys: Vec<(String, &'static str)>,
    /// Set when a diffusers config's `force_upcast` kept the VAE decoder in float32 under
    /// a reduced `--dtype`: what `convert` tells the user.
    pub vae_upcast: Option<String>,
}

/// Released sampler settings for the detected size; other sizes get FlowAR-S's.
fn released_sampler(f: &FlowArDims) -> (SamplerDefaults, &'static str) {
    match (f.ar.width, f.flow.kind) {
        (768, FlowKind::Spatial) => (
            SamplerDefaults {
                cfg: 4.3,
                guidance: 0.9,
                steps: 25,
            },
            "FlowAR-S",
        ),
        (1024, FlowKind::Cross) => (
            SamplerDefaults {
                cfg: 2.4,
                guidance: 0.9,
                steps: 25,
            },
            "FlowAR-L",
        ),
        (1536, FlowKind::Cross) => (
            SamplerDefaults {
                cfg: 2.4,
                guidance: 0.7,
                steps: 50,
            },
            "FlowAR-H",
        ),
        _ => (
            SamplerDefaults {
                cfg: 4.3,
                guidance: 0.9,
                steps: 25,
            },
            "flowar",
        ),
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| ExportError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| ExportError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Graphs whose weights exceed this many bytes keep them in `<graph>.onnx.data` (ONNX
/// external data): protobuf files cannot exceed 2 GiB (FlowAR-H's AR step is 5 GB in f32).
pub const EXTERNAL_DATA_THRESHOLD: usize = 1 << 30;

/// Moves every initializer of 1 KiB or more into `dir/<file>.data`, when the graph's
/// weights exceed `threshold` bytes. Returns the data file's name if one was written.
fn externalize(
    model: &mut ModelProto,
    dir: &Path,
    file: &str,
    threshold: usize,
) -> Result<Option<String>> {
    let Some(graph) = model.graph.as_mut() else {
        return Ok(None);
    };
    let total: usize = graph.initializer.iter().map(|t| t.raw_data.len()).sum();
    if total <= threshold {
        return Ok(None);
    }
    let name = format!("{file}.data");
    let path = dir.join(&name);
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&path).map_err(|e| ExportError::io(&path, e))?,
    );
    let mut offset = 0usize;
    for t in graph
        .initializer
        .iter_mut()
        .filter(|t| t.raw_data.len() >= 1024)
    {
        use std::io::Write;
        out.write_all(&t.raw_data)
            .map_err(|e| ExportError::io(&path, e))?;
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: k.into(),
            value: v,
        };
        t.external_data = vec![
            entry("location", name.clone()),
            entry("offset", offset.to_string()),
            entry("length", t.raw_data.len().to_string()),
        ];
        t.data_location = 1;
        offset += t.raw_data.len();
        t.raw_data = Vec::new();
    }
    use std::io::Write;
    out.flush().map_err(|e| ExportError::io(&path, e))?;
    Ok(Some(name))
}

/// Serialises one graph into `dir` and describes it for the manifest.
fn write_graph(dir: &Path, file: &str, mut g: BuiltGraph, threshold: usize) -> Result<GraphSpec> {
    let path = dir.join(file);
    let external_data = externalize(&mut g.model, dir, file, threshold)?;
    let bytes = g.model.encode_to_vec();
    drop(g.model);
    let sha256 = hex(&Sha256::digest(&bytes));
    std::fs::write(&path, &bytes).map_err(|e| ExportError::io(&path, e))?;
    Ok(GraphSpec {
        file: file.into(),
        opset: crate::onnx::OPSET,
        sha256,
        external_data,
        parameters: g.parameters,
        int8_linears: g.int8_linears,
        inference_precision: g.inference_precision.map(str::to_string),
        inputs: g.inputs.iter().map(|i| i.spec()).collect(),
        outputs: g.outputs.iter().map(|o| o.spec()).collect(),
    })
}

/// `out`'s folder and its name (`model` for a path without one).
fn out_parts(out: &Path) -> (PathBuf, String) {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    (parent.to_path_buf(), name)
}

/// A `convert --force` killed between its two renames moved the old model folder aside
/// (`.OUT.old.tmp-HOST-PID`) and never moved the new one in: with no `out`, that folder is
/// the only whole model there is, so it is moved back before anything else happens (a
/// failing or cancelled conversion then still leaves the user a model). Several (one
/// killed `--force` after another): the newest. Returns where it came from.
fn restore_replaced(out: &Path) -> Result<Option<PathBuf>> {
    if std::fs::symlink_metadata(out).is_ok() {
        return Ok(None);
    }
    let (parent, name) = out_parts(out);
    if !parent.is_dir() {
        // Nothing can have been moved aside there; creating the folder says what is wrong.
        return Ok(None);
    }
    let old_name = format!("{name}.old");
    let mut left: Vec<(std::time::SystemTime, PathBuf)> =
        atomic_file::stale_temporaries(&parent, |f| f == old_name)?
            .into_iter()
            .filter_map(|p| {
                let m = std::fs::symlink_metadata(&p).ok().filter(|m| m.is_dir())?;
                Some((m.modified().ok()?, p))
            })
            .collect();
    left.sort();
    let Some((_, newest)) = left.pop() else {
        return Ok(None);
    };
    std::fs::rename(&newest, out).map_err(|e| ExportError::io(out, e))?;
    Ok(Some(newest))
}

/// A temporary sibling of `out` that is removed on drop unless committed.
struct StagingDir {
    path: PathBuf,
    /// Where `commit` moves the folder it replaces (`--force`) until the new one is in
    /// place: `.OUT.old.tmp-HOST-PID`, named by its writer like every temporary, so that a
    /// convert killed between the two renames leaves something the next one can sweep.
    old: PathBuf,
    committed: bool,
    /// Staging folders of killed conversions removed on the way.
    stale: Vec<PathBuf>,
    /// Replaced folders that conversions killed between their two renames had left,
    /// removed on the way.
    stale_replaced: Vec<PathBuf>,
}

impl StagingDir {
    fn new(out: &Path) -> Result<StagingDir> {
        let (parent, name) = out_parts(out);
        let parent = parent.as_path();
        std::fs::create_dir_all(parent).map_err(|e| ExportError::io(parent, e))?;
        // A conversion killed outright (SIGKILL, the OOM killer) left its staging folder,
        // or, killed between the two renames of a `--force`, the folder it was replacing:
        // this host's dead writers' ones for this output go (see `atomic_file`).
        let old_name = format!("{name}.old");
        let swept = atomic_file::sweep_stale(parent, |f| f == name || f == old_name)?;
        let old_prefix = format!(".{old_name}.tmp-");
        let (stale_replaced, stale): (Vec<PathBuf>, Vec<PathBuf>) =
            swept.into_iter().partition(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&old_prefix))
            });
        let old = atomic_file::temp_path(&parent.join(&old_name));
        let path = atomic_file::temp_path(&parent.join(&name));
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| ExportError::io(&path, e))?;
        }
        std::fs::create_dir(&path).map_err(|e| ExportError::io(&path, e))?;
        Ok(StagingDir {
            path,
            old,
            committed: false,
            stale,
            stale_replaced,
        })
    }

    /// Moves the finished folder to `out`, replacing an old one only when `force`.
    fn commit(mut self, out: &Path, force: bool) -> Result<()> {
        if out.exists() {
            if !force {
                return Err(ExportError::OutputExists(out.to_path_buf()));
            }
            let old = &self.old;
            std::fs::rename(out, old).map_err(|e| ExportError::io(out, e))?;
            std::fs::rename(&self.path, out).map_err(|e| ExportError::io(out, e))?;
            let _ = std::fs::remove_dir_all(old);
        } else {
            std::fs::rename(&self.path, out).map_err(|e| ExportError::io(out, e))?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Detects both architectures (checking a diffusers VAE's config against its weights) and
/// checks that they fit together.
pub fn detect(
    flowar: &dyn WeightSource,
    vae: &dyn WeightSource,
    vae_config: Option<&DiffusersVaeConfig>,
) -> Result<(FlowArDims, VaeDims)> {
    let f = arch::detect_flowar(flowar)?;
    let v = arch::detect_vae_with(vae, vae_config)?;
    if f.latent_channels != v.latent_channels {
        let key = if v.arch.post_quant_conv {
            "post_quant_conv.weight"
        } else {
            "decoder.conv_in.weight"
        };
        return Err(ExportError::Mismatch(format!(
            "{} works on {} latent channels (z_proj.weight) but {} decodes {} ({key}); a FlowAR \
             trained on this VAE has {} channels",
            flowar.origin(),
            f.latent_channels,
            vae.origin(),
            v.latent_channels,
            v.latent_channels
        )));
    }
    Ok((f, v))
}

/// Converts with float32 graphs.
pub fn convert(req: &ConvertRequest) -> Result<ConvertReport> {
    convert_as(req, Precision::F32)
}

/// Converts with graphs of the given precision.
pub fn convert_as(req: &ConvertRequest, precision: Precision) -> Result<ConvertReport> {
    match (req.quantize, precision) {
        (Some(_), Precision::F16) => {
            return Err(ExportError::BadArgument(
                "--quantize int8 and --dtype f16 cannot be combined: int8 linears take float32 \
                 activations (use one or the other)"
                    .into(),
            ))
        }
        (Some(_), Precision::Bf16) => {
            return Err(ExportError::BadArgument(
                "--quantize int8 and --dtype bf16 cannot be combined: both choose how the same \
                 linears compute (use one or the other)"
                    .into(),
            ))
        }
        _ => {}
    }
    let restored_replaced = restore_replaced(&req.out)?;
    if req.out.exists() && !req.force {
        return Err(ExportError::OutputExists(req.out.clone()));
    }
    let (latent_scale, latent_scale_source) = LatentScaleSource::pick(
        req.latent_scale,
        req.meta.latent_scale,
        req.vae_config.map(DiffusersVaeConfig::scaling_factor),
        DEFAULT_LATENT_SCALE,
    );
    if !(latent_scale.is_finite() && latent_scale > 0.0) {
        return Err(ExportError::BadArgument(format!(
            "latent scale {latent_scale} must be a positive number"
        )));
    }
    let (latent_shift, latent_shift_source) = LatentScaleSource::pick(
        req.latent_shift,
        req.meta.latent_shift,
        req.vae_config.and_then(|c| c.shift_factor),
        0.0,
    );
    if !latent_shift.is_finite() {
        return Err(ExportError::BadArgument(format!(
            "latent shift {latent_shift} must be a finite number"
        )));
    }
    let (fd, mut vd) = detect(req.flowar, req.vae, req.vae_config)?;
    let encoder_dims = arch::detect_encoder(
        req.vae,
        vd.arch.layout,
        vd.latent_channels,
        vd.arch.norm_groups,
    )?;
    if let (Some(e), Some(cfg)) = (&encoder_dims, req.vae_config) {
        arch::check_encoder_config(e, cfg, &req.vae.origin())?;
    }
    let grid = *fd.scales.last().expect("detected scales are non-empty");
    req.meta.check(&fd, &vd, grid * vd.arch.stride)?;
    let policy = if req.allow_nonfinite {
        NonFinitePolicy::Allow
    } else {
        NonFinitePolicy::Refuse
    };
    let staging = StagingDir::new(&req.out)?;

    let used = RefCell::new(BTreeSet::new());
    let vb = Vb::root(req.flowar, &used, policy);
    let ar = write_graph(
        &staging.path,
        io::ar_step::FILE,
        ar_step::build(&vb, &fd, precision, req.quantize, EXPORTER_VERSION)?,
        req.external_data_threshold,
    )?;
    let flow = write_graph(
        &staging.path,
        io::flow_head::FILE,
        flow_head::build(&vb, &fd, precision, req.quantize, EXPORTER_VERSION)?,
        req.external_data_threshold,
    )?;
    let mut ignored = check_unused(req.flowar, &used.borrow(), arch::FLOWAR_IGNORED)?;

    let vused = RefCell::new(BTreeSet::new());
    let vvb = Vb::root(req.vae, &vused, policy);
    // Large VAEs overflow float16 (SDXL's decoder does): diffusers marks them
    // `force_upcast`, and they decode in float32 whatever the folder's dtype.
    let upcast = precision != Precision::F32 && req.vae_config.is_some_and(|c| c.force_upcast);
    let vae_precision = if upcast { Precision::F32 } else { precision };
    let vae_upcast = upcast.then(|| {
        format!(
            "the VAE's config.json sets force_upcast: its decoder stays float32 in this {} folder",
            precision.name()
        )
    });
    let vae = write_graph(
        &staging.path,
        io::vae_decoder::FILE,
        vae_decoder::build(
            &vvb,
            &vd,
            grid,
            LatentNorm {
                scale: latent_scale,
                shift: latent_shift,
            },
            vae_precision,
            EXPORTER_VERSION,
        )?,
        req.external_data_threshold,
    )?;
    // The encoder, when the VAE has one: what `flowar edit` needs.
    let norm = LatentNorm {
        scale: latent_scale,
        shift: latent_shift,
    };
    let encoder = match &encoder_dims {
        None => None,
        Some(e) => Some(write_graph(
            &staging.path,
            io::vae_encoder::FILE,
            vae_encoder::build(
                &vvb,
                e,
                vd.arch.layout,
                vd.arch.norm_groups,
                grid,
                vd.arch.stride,
                norm,
                EXPORTER_VERSION,
            )?,
            req.external_data_threshold,
        )?),
    };
    vd.arch.encoder = encoder_dims.map(|e| VaeEncoderArch {
        rule: vae_encoder::rule_text(norm),
        ..e.arch
    });
    ignored.extend(check_unused(req.vae, &vused.borrow(), arch::VAE_IGNORED)?);
    let step = write_graph(
        &staging.path,
        io::solver_step::FILE,
        solver_step::build(fd.latent_channels, EXPORTER_VERSION),
        req.external_data_threshold,
    )?;

    let mut sources = Vec::new();
    for (role, path, format) in &req.source_files {
        sources.push(SourceFile {
            role: role.clone(),
            file: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: sha256_file(path)?,
            format: format.clone(),
        });
    }
    let (released, size_name) = released_sampler(&fd);
    let sampler = match &req.meta.sampler {
        Some(s) => SamplerDefaults {
            cfg: s.cfg,
            guidance: s.guidance,
            steps: s.num_steps,
        },
        None => released,
    };
    let mut h = Sha256::new();
    for s in &sources {
        h.update(s.sha256.as_bytes());
    }
    if sources.is_empty() {
        // Presets: hash the graphs themselves.
        for g in [&ar, &flow, &vae, &step] {
            h.update(g.sha256.as_bytes());
        }
    }
    h.update(latent_scale.to_le_bytes());
    if latent_shift != 0.0 {
        // Only hashed when there is one, so kl16 hashes stay as they were.
        h.update(latent_shift.to_le_bytes());
    }
    if let Some(q) = req.quantize {
        // Another model's outputs: `flowar pack` must not mix its images with exact ones.
        h.update(q.scheme().as_bytes());
    }
    if precision != Precision::F32 {
        // Likewise for reduced-precision graphs (float32 hashes stay as they were).
        h.update(precision.name().as_bytes());
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        exporter_version: EXPORTER_VERSION.into(),
        name: req.meta.name.clone().unwrap_or_else(|| size_name.into()),
        model_hash: hex(&h.finalize())[..16].to_string(),
        sources,
        scales: fd.scales.clone(),
        latent_channels: fd.latent_channels,
        image_size: grid * vd.arch.stride,
        latent_scale,
        latent_shift,
        num_classes: fd.num_classes,
        null_class: fd.num_classes,
        class_names: req.meta.classes.clone(),
        sampler,
        rope: RopeSpec {
            theta: 10000.0,
            grid_constant: 16.0,
            ar_head_dim: fd.ar.head_dim,
            flow_head_dim: fd.flow.head_dim,
        },
        architecture: Architecture {
            ar: fd.ar,
            flow: fd.flow,
            vae: vd.arch,
        },
        graphs: Graphs {
            ar_step: ar,
            flow_head: flow,
            vae_decoder: vae,
            solver_step: step,
            vae_encoder: encoder,
        },
        dtype: precision.name().into(),
        verify: match req.quantize {
            Some(_) => VerifyBounds {
                graph: INT8_GRAPH_BOUND,
                pipeline: false,
                ..precision.verify_bounds()
            },
            None => precision.verify_bounds(),
        },
        quantization: req.quantize.map(|q| q.scheme().to_string()),
    };
    let mpath = staging.path.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
    std::fs::write(&mpath, text).map_err(|e| ExportError::io(&mpath, e))?;
    let removed_stale = staging.stale.clone();
    let removed_replaced = staging.stale_replaced.clone();
    staging.commit(&req.out, req.force)?;
    Ok(ConvertReport {
        removed_stale,
        removed_replaced,
        restored_replaced,
        manifest,
        latent_scale_source,
        latent_shift_source,
        ignored_keys: ignored,
        vae_upcast,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preset::{flowar_keys, FlowArSpec, Preset, RandomWeights};

    fn detected(spec: &FlowArSpec) -> FlowArDims {
        let keys = RandomWeights::new("preset".into(), 0, flowar_keys(spec));
        arch::detect_flowar(&keys).unwrap()
    }

    /// The released sampler settings land in the manifest of each released size, told
    /// apart by the architecture detected from its keys and shapes alone (no weights are
    /// read): S cfg 4.3 / guidance 0.9 / 25 steps, L 2.4 / 0.9 / 25, H 2.4 / 0.7 / 50. Any
    /// other size gets S's, under the generic name.
    #[test]
    fn released_sizes_get_their_released_sampler_defaults() {
        for (preset, cfg, guidance, steps) in [
            (Preset::S, 4.3, 0.9, 25),
            (Preset::L, 2.4, 0.9, 25),
            (Preset::H, 2.4, 0.7, 50),
        ] {
            let (s, name) = released_sampler(&detected(&preset.flowar()));
            assert_eq!(
                (s.cfg, s.guidance, s.steps),
                (cfg, guidance, steps),
                "{}",
                preset.name()
            );
            assert_eq!(name, preset.name());
        }
        let other = FlowArSpec {
            width: 512,
            ..Preset::L.flowar()
        };
        let (s, name) = released_sampler(&detected(&other));
        assert_eq!((s.cfg, s.guidance, s.steps, name), (4.3, 0.9, 25, "flowar"));
    }
}
