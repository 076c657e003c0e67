//! The model folder's `manifest.json`: the contract between exporter and runtime.
//!
//! It records where the weights came from, the detected architecture, the sampler
//! defaults and every graph's interface, so the runtime never guesses.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use crate::error::FormatError;
use crate::error::Result;
use crate::io::SymbolicDim;

/// Manifest format this build reads and writes. Any other one is refused with what to do.
pub const FORMAT_VERSION: u32 = 2;
/// The manifest's file name inside a model folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Largest latent grid side a manifest may declare (2048-pixel images with kl16; the
/// released models use 16), so a hostile manifest cannot make the runtime allocate
/// per-scale tables of any size.
pub const MAX_GRID: usize = 128;
/// Largest RoPE head size a manifest may declare.
pub const MAX_HEAD_DIM: usize = 512;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    pub exporter_version: String,
    pub name: String,
    /// Hash identifying the model: sha256 over the checkpoint hashes and latent scale.
    pub model_hash: String,
    pub sources: Vec<SourceFile>,
    pub architecture: Architecture,
    /// Side lengths of the latent grids, coarse to fine, e.g. `[1, 2, 4, 8, 16]`.
    pub scales: Vec<usize>,
    pub latent_channels: usize,
    pub image_size: usize,
    /// Latents are divided by this before decoding; the division is inside the VAE graph.
    pub latent_scale: f64,
    /// Added after the division (`latent = tokens / latent_scale + latent_shift`, the
    /// diffusers rule; SD3 and FLUX VAEs have one), also inside the VAE graph. 0 for kl16.
    #[serde(default)]
    pub latent_shift: f64,
    pub num_classes: usize,
    pub null_class: usize,
    /// Names of the first classes (a model may name only the classes it was trained on).
    #[serde(default)]
    pub class_names: Vec<String>,
    pub sampler: SamplerDefaults,
    pub rope: RopeSpec,
    pub graphs: Graphs,
    /// Storage and compute dtype of the graphs ("float32", "float16" or "bfloat16": weight
    /// products in bfloat16, the rest float32); inputs and outputs are float32 either way.
    pub dtype: String,
    /// Bounds `flowar verify` applies by default to this model's graphs.
    #[serde(default)]
    pub verify: VerifyBounds,
    /// The quantization scheme of an opt-in fast model (`flowar convert --quantize`),
    /// whose outputs are no longer the reference's; `None` for exact models. Which
    /// linears it covers is each graph's `int8_linears`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
}

/// Max abs error per kind of graph output against a float32 reference.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct VerifyBounds {
    /// Flow head and AR step outputs.
    pub graph: f32,
    /// The VAE image in [-1, 1].
    pub vae: f32,
    /// Whether the end-to-end `pipe.*` cases are compared. Off for float16 graphs: over
    /// 100+ guided solver steps their rounding grows past any bound that would still catch
    /// a real bug, so float16 models are held to the per-graph bounds.
    #[serde(default = "compare_pipeline")]
    pub pipeline: bool,
}

fn compare_pipeline() -> bool {
    true
}

impl VerifyBounds {
    /// Largest u8 difference the VAE float bound allows: pixels are `(x + 1) * 127.5`
    /// rounded, and two values `d` levels apart round at most `floor(d) + 1` apart.
    pub fn vae_u8_levels(&self) -> u8 {
        ((self.vae as f64 * 127.5).floor() as u8).saturating_add(1)
    }
}

impl VerifyBounds {
    /// The loosest bounds flowar writes for a folder of `dtype` (`int8` linears when
    /// `quantized`), pinned here: `flowar verify` refuses a manifest whose bounds are
    /// looser, so editing `verify.graph` to 1e9 cannot make anything verify. `None` for a
    /// dtype this format does not define.
    pub fn loosest(dtype: &str, quantized: bool) -> Option<VerifyBounds> {
        let (graph, vae, pipeline) = match (dtype, quantized) {
            ("float32", false) => (1e-4, 1e-3, true),
            ("float32", true) => (0.5, 1e-3, false),
            ("float16", false) => (2e-2, 1e-2, false),
            ("bfloat16", false) => (0.15, 0.12, false),
            _ => return None,
        };
        Some(VerifyBounds {
            graph,
            vae,
            pipeline,
        })
    }

    /// Refuses bounds looser than [`VerifyBounds::loosest`] for the folder's kind, naming
    /// the field and both values.
    pub fn check(&self, dtype: &str, quantized: bool) -> std::result::Result<(), BoundsError> {
        let kind = if quantized {
            format!("{dtype} int8")
        } else {
            dtype.to_string()
        };
        let Some(max) = VerifyBounds::loosest(dtype, quantized) else {
            return Err(BoundsError::Undefined { kind });
        };
        for (field, got, max) in [("graph", self.graph, max.graph), ("vae", self.vae, max.vae)] {
            if got.is_nan() || got > max {
                return Err(BoundsError::Looser {
                    field,
                    got,
                    max,
                    kind,
                });
            }
        }
        if max.pipeline && !self.pipeline {
            return Err(BoundsError::PipelineOff { kind });
        }
        Ok(())
    }
}

/// Why a manifest's `verify` bounds are refused (see [`VerifyBounds::check`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BoundsError {
    #[error("no verification bounds are defined for a {kind} folder")]
    Undefined { kind: String },
    #[error(
        "the manifest's `verify.{field}` is {got:e}, looser than the {max:e} flowar writes \
         for a {kind} folder (edited by hand?); re-run `flowar convert`"
    )]
    Looser {
        field: &'static str,
        got: f32,
        max: f32,
        kind: String,
    },
    #[error(
        "the manifest's `verify.pipeline` is false, but a {kind} folder's end-to-end cases \
         are always compared (edited by hand?); re-run `flowar convert`"
    )]
    PipelineOff { kind: String },
}

impl Default for VerifyBounds {
    /// The fixture README's bounds for float32 graphs.
    fn default() -> Self {
        VerifyBounds {
            graph: 1e-4,
            vae: 1e-3,
            pipeline: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceFile {
    pub role: String,
    pub file: String,
    pub sha256: String,
    pub format: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SamplerDefaults {
    pub cfg: f64,
    pub guidance: f64,
    pub steps: usize,
}

/// RoPE tables are not in the graphs: the runtime computes them per scale and feeds
/// them as `rope_cos` / `rope_sin` inputs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RopeSpec {
    pub theta: f64,
    /// Grid coordinate `p = idx * grid_constant / side` (16 in the reference, for every model).
    pub grid_constant: f64,
    pub ar_head_dim: usize,
    pub flow_head_dim: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Architecture {
    pub ar: ArArch,
    pub flow: FlowArch,
    pub vae: VaeArch,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArArch {
    pub width: usize,
    pub encoder_depth: usize,
    pub decoder_depth: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub mlp_hidden: usize,
    /// Checkpoint key prefix of each KV-cache layer, in graph order.
    pub cache_layers: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FlowKind {
    /// Per-token adaLN from `time + condition` (FlowAR-S).
    Spatial,
    /// adaLN from time, cross-attention to the condition (FlowAR-L/H).
    Cross,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlowArch {
    pub kind: FlowKind,
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub mlp_hidden: usize,
}

/// The key layout a VAE's weights were read in; the decoder graph follows it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VaeLayout {
    /// The original latent-diffusion layout (`decoder.mid.block_1`, `decoder.up.{l}`):
    /// MAR's kl16, SD `.ckpt` files, FLUX's `ae.safetensors`.
    #[default]
    Ldm,
    /// diffusers' `AutoencoderKL` (`decoder.mid_block.resnets.0`, `decoder.up_blocks.{i}`)
    /// with its `config.json`.
    Diffusers,
}

impl VaeLayout {
    pub fn name(self) -> &'static str {
        match self {
            VaeLayout::Ldm => "ldm",
            VaeLayout::Diffusers => "diffusers",
        }
    }
}

fn kl_kind() -> String {
    "AutoencoderKL".into()
}

fn thirty_two() -> usize {
    32
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VaeArch {
    /// The autoencoder family (`AutoencoderKL`: a KL-regularised continuous latent).
    #[serde(default = "kl_kind")]
    pub kind: String,
    #[serde(default)]
    pub layout: VaeLayout,
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub z_channels: usize,
    /// Up-path levels (by index) that carry attention blocks.
    pub attn_levels: Vec<usize>,
    /// Pixels per latent cell along each axis (the downsampling factor: 16 for kl16, 8
    /// for the SD and FLUX VAEs).
    pub stride: usize,
    /// GroupNorm groups of every norm in the decoder.
    #[serde(default = "thirty_two")]
    pub norm_groups: usize,
    /// Whether the middle block has its self-attention (diffusers' `mid_block_add_attention`).
    #[serde(default = "yes")]
    pub mid_attention: bool,
    /// Whether a 1x1 `post_quant_conv` runs before the decoder (FLUX's VAE has none).
    #[serde(default = "yes")]
    pub post_quant_conv: bool,
    /// The encoder, when the checkpoint held one (`vae_encoder.onnx`); `None`: the folder
    /// generates but cannot edit images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<VaeEncoderArch>,
}

/// The VAE encoder's architecture, read from its weights (`encoder.*`, `quant_conv`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VaeEncoderArch {
    /// Channels after each down level's ResNet blocks, finest level first.
    pub level_channels: Vec<usize>,
    /// ResNet blocks per down level.
    pub num_res_blocks: usize,
    /// Down levels (by index, 0 = finest) that carry attention blocks.
    pub attn_levels: Vec<usize>,
    pub mid_attention: bool,
    /// Whether `conv_out` gives mean and log-variance (`2 * z_channels`), of which the
    /// graph keeps the mean.
    pub double_z: bool,
    /// Whether a 1x1 `quant_conv` follows the encoder (FLUX's VAE has none).
    pub quant_conv: bool,
    /// The float precision the encoder graph computes in, whatever the folder's dtype.
    pub precision: String,
    /// The encode rule as computed inside the graph, e.g.
    /// `tokens = (mean - 0) * 0.2325`.
    pub rule: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Graphs {
    pub ar_step: GraphSpec,
    pub flow_head: GraphSpec,
    pub vae_decoder: GraphSpec,
    /// CFG combination and the float64 state update (no weights; `format_version` 2).
    pub solver_step: GraphSpec,
    /// Pixels to tokens, for editing; present when the VAE checkpoint held an encoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae_encoder: Option<GraphSpec>,
}

/// The graphs of a model folder, by what they do (the first four always present).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GraphRole {
    ArStep,
    FlowHead,
    VaeDecoder,
    SolverStep,
    VaeEncoder,
}

impl GraphRole {
    pub const ALL: [GraphRole; 5] = [
        GraphRole::ArStep,
        GraphRole::FlowHead,
        GraphRole::VaeDecoder,
        GraphRole::SolverStep,
        GraphRole::VaeEncoder,
    ];

    /// The role's name, as the manifest's `graphs` keys spell it.
    pub fn name(self) -> &'static str {
        match self {
            GraphRole::ArStep => "ar_step",
            GraphRole::FlowHead => "flow_head",
            GraphRole::VaeDecoder => "vae_decoder",
            GraphRole::SolverStep => "solver_step",
            GraphRole::VaeEncoder => "vae_encoder",
        }
    }

    /// The file the exporter writes the graph to.
    pub fn file_name(self) -> &'static str {
        match self {
            GraphRole::ArStep => crate::io::ar_step::FILE,
            GraphRole::FlowHead => crate::io::flow_head::FILE,
            GraphRole::VaeDecoder => crate::io::vae_decoder::FILE,
            GraphRole::SolverStep => crate::io::solver_step::FILE,
            GraphRole::VaeEncoder => crate::io::vae_encoder::FILE,
        }
    }
}

impl Graphs {
    /// Every graph the folder has, in manifest order.
    pub fn all(&self) -> Vec<(&'static str, &GraphSpec)> {
        GraphRole::ALL
            .into_iter()
            .filter_map(|r| self.get(r).map(|g| (r.name(), g)))
            .collect()
    }

    /// The graph of `role`; `None` only for an optional graph the folder lacks.
    pub fn get(&self, role: GraphRole) -> Option<&GraphSpec> {
        match role {
            GraphRole::ArStep => Some(&self.ar_step),
            GraphRole::FlowHead => Some(&self.flow_head),
            GraphRole::VaeDecoder => Some(&self.vae_decoder),
            GraphRole::SolverStep => Some(&self.solver_step),
            GraphRole::VaeEncoder => self.vae_encoder.as_ref(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GraphSpec {
    pub file: String,
    pub opset: i64,
    pub sha256: String,
    /// ONNX external-data file holding the weights, for graphs over 1 GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_data: Option<String>,
    pub parameters: usize,
    /// Checkpoint key paths of the linears stored as int8 (`flowar convert --quantize
    /// int8`); empty for float graphs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub int8_linears: Vec<String>,
    /// The precision an engine that chooses its own (OpenVINO's `INFERENCE_PRECISION_HINT`)
    /// runs this graph in: `"bf16"` for the VAE of a bfloat16 folder. Absent: float32, or
    /// whatever the graph's own types say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_precision: Option<String>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    /// Each dimension is a number or the name of a symbolic dimension.
    pub shape: Vec<DimSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum DimSpec {
    Fixed(usize),
    Symbolic(String),
}

impl DimSpec {
    /// A symbolic dimension of this format.
    pub fn symbolic(d: SymbolicDim) -> DimSpec {
        DimSpec::Symbolic(d.as_str().to_string())
    }
}

impl TensorSpec {
    /// Whether any dimension is sized at run time.
    pub fn is_dynamic(&self) -> bool {
        self.shape.iter().any(|d| matches!(d, DimSpec::Symbolic(_)))
    }
}

impl Manifest {
    /// Reads and validates `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        if !dir.is_dir() {
            return Err(FormatError::invalid(
                dir,
                "not a model folder (no such directory)",
            ));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| FormatError::io(&path, e))?;
        Self::parse(&text, &path)
    }

    /// Parses manifest text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| FormatError::invalid(path, format!("invalid JSON: {e}")))?;
        let version = value.get("format_version").and_then(|v| v.as_u64());
        match version {
            None => {
                return Err(FormatError::invalid(path, "missing `format_version`"))
            }
            Some(v) if v < FORMAT_VERSION as u64 => {
                return Err(FormatError::invalid(
                    path,
                    format!(
                        "format_version {v} was written by an older flowar (this one reads {FORMAT_VERSION}: it adds the solver_step graph); re-run `flowar convert` on the checkpoint"
                    ),
                ))
            }
            Some(v) if v > FORMAT_VERSION as u64 => {
                return Err(FormatError::invalid(
                    path,
                    format!(
                        "format_version {v} is newer than this flowar understands ({FORMAT_VERSION}); upgrade flowar or re-convert"
                    ),
                ))
            }
            _ => {}
        }
        let m: Manifest = serde_json::from_value(value)
            .map_err(|e| FormatError::invalid(path, format!("invalid manifest: {e}")))?;
        m.validate(path)?;
        Ok(m)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| Err(FormatError::invalid(path, reason));
        if self.scales.is_empty() || self.scales.contains(&0) {
            return bad(format!(
                "scales {:?} must be non-empty and positive",
                self.scales
            ));
        }
        if self.scales.windows(2).any(|w| w[0] >= w[1]) {
            return bad(format!("scales {:?} must increase", self.scales));
        }
        if self.final_grid() > MAX_GRID {
            return bad(format!(
                "final scale {} exceeds the largest supported latent grid ({MAX_GRID})",
                self.final_grid()
            ));
        }
        if self.num_classes == 0 || self.latent_channels == 0 || self.image_size == 0 {
            return bad(format!(
                "num_classes ({}), latent_channels ({}) and image_size ({}) must be positive",
                self.num_classes, self.latent_channels, self.image_size
            ));
        }
        if !(self.latent_scale.is_finite() && self.latent_scale > 0.0) {
            return bad(format!(
                "latent_scale {} must be a positive number",
                self.latent_scale
            ));
        }
        if !self.latent_shift.is_finite() {
            return bad(format!(
                "latent_shift {} must be a finite number",
                self.latent_shift
            ));
        }
        if self.null_class < self.num_classes {
            return bad(format!(
                "null_class {} collides with a class id (< {})",
                self.null_class, self.num_classes
            ));
        }
        if self.class_names.len() > self.num_classes {
            return bad(format!(
                "{} class names for {} classes",
                self.class_names.len(),
                self.num_classes
            ));
        }
        if !self.rope.ar_head_dim.is_multiple_of(4)
            || !self.rope.flow_head_dim.is_multiple_of(4)
            || self.rope.ar_head_dim == 0
            || self.rope.ar_head_dim > MAX_HEAD_DIM
            || self.rope.flow_head_dim > MAX_HEAD_DIM
        {
            return bad(format!(
                "RoPE head dims must be positive multiples of 4, at most {MAX_HEAD_DIM}"
            ));
        }
        Ok(())
    }

    /// The final latent grid side (the last scale).
    pub fn final_grid(&self) -> usize {
        *self.scales.last().expect("validated non-empty")
    }

    pub fn graph_path(&self, dir: &Path, spec: &GraphSpec) -> PathBuf {
        dir.join(&spec.file)
    }

    /// Resolves a class given as an id or a name (see [`resolve_class`]).
    pub fn class_id(&self, s: &str) -> Result<usize> {
        resolve_class(ClassRef::Text(s), self.num_classes, &self.class_names)
    }
}

/// A class as a caller gives it: an id, or text that is an id or a class name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassRef<'a> {
    Id(i64),
    Text(&'a str),
}

/// Resolves a class against a model's `num_classes` and `class_names`: the one rule of
/// the CLI's `--class` (through [`Manifest::class_id`]) and of the Python package's
/// `Pipeline.generate` and `flowar.ray.class_list`. Text that is a whole number is an id,
/// other text a class name; an id must be in `0..num_classes`. Either failure is a
/// [`FormatError::UnknownClass`] saying what the model has.
pub fn resolve_class(c: ClassRef<'_>, num_classes: usize, class_names: &[String]) -> Result<usize> {
    let out_of_range = |id: &dyn std::fmt::Display| {
        FormatError::UnknownClass(format!(
            "class id {id} is out of range: this model has classes 0..{}",
            num_classes.saturating_sub(1)
        ))
    };
    let s = match c {
        ClassRef::Id(id) => {
            return usize::try_from(id)
                .ok()
                .filter(|&i| i < num_classes)
                .ok_or_else(|| out_of_range(&id))
        }
        ClassRef::Text(s) => s,
    };
    // A whole number, signed or not, of any length.
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return match digits.parse::<usize>() {
            Ok(id) if !s.starts_with('-') && id < num_classes => Ok(id),
            _ => Err(out_of_range(&s)),
        };
    }
    if let Some(i) = class_names.iter().position(|n| n == s) {
        return Ok(i);
    }
    let hint = if class_names.is_empty() {
        "this model has no class names; use a number".to_string()
    } else {
        format!("known names: {}", class_names.join(", "))
    };
    Err(FormatError::UnknownClass(format!(
        "unknown class `{s}` ({hint})"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids, ids as text and names resolve by one rule; anything else says what the model
    /// has.
    #[test]
    fn classes_resolve_by_id_or_name() {
        let names: Vec<String> = ["cat", "dog", "7"].map(String::from).to_vec();
        let r = |c| resolve_class(c, 10, &names).map_err(|e| e.to_string());
        assert_eq!(r(ClassRef::Id(0)), Ok(0));
        assert_eq!(r(ClassRef::Id(9)), Ok(9));
        assert_eq!(r(ClassRef::Text("9")), Ok(9));
        assert_eq!(r(ClassRef::Text("dog")), Ok(1));
        // Text that is a number is an id, even where a class is named so.
        assert_eq!(r(ClassRef::Text("7")), Ok(7));
        let range = "is out of range: this model has classes 0..9";
        assert_eq!(r(ClassRef::Id(10)), Err(format!("class id 10 {range}")));
        assert_eq!(r(ClassRef::Id(-1)), Err(format!("class id -1 {range}")));
        assert_eq!(r(ClassRef::Text("10")), Err(format!("class id 10 {range}")));
        assert_eq!(r(ClassRef::Text("-1")), Err(format!("class id -1 {range}")));
        let huge = "123456789012345678901234567890";
        assert_eq!(
            r(ClassRef::Text(huge)),
            Err(format!("class id {huge} {range}"))
        );
        assert_eq!(r(ClassRef::Text("+3")), Ok(3));
        assert_eq!(
            r(ClassRef::Text("wolf")),
            Err("unknown class `wolf` (known names: cat, dog, 7)".into())
        );
        assert_eq!(
            resolve_class(ClassRef::Text("cat"), 10, &[]).map_err(|e| e.to_string()),
            Err("unknown class `cat` (this model has no class names; use a number)".into())
        );
    }
}
