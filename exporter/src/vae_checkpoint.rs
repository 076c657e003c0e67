//! A VAE's weights wherever a user has them: a diffusers `AutoencoderKL` folder
//! (`config.json` + `diffusion_pytorch_model.safetensors`, as SD, SDXL, SD3 and FLUX VAEs are
//! published), that weights file with its `config.json` beside it, or an LDM-layout
//! checkpoint (MAR's `kl16.ckpt`, a VAE `.ckpt` / `.safetensors`, or a full SD checkpoint
//! whose VAE sits under `first_stage_model.`).

use std::path::{Path, PathBuf};

use flowar_format::manifest::VaeLayout;
use serde::Deserialize;

use crate::arch::vae_layout;
use crate::checkpoint::Checkpoint;
use crate::error::{ExportError, Result};
use crate::weights::WeightSource;

/// The weights file of a diffusers model folder, and the fallbacks read when it is absent
/// (a half-precision variant, then the older pickle that `torch.save` wrote).
pub const DIFFUSERS_WEIGHTS: [&str; 3] = [
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
];
/// The config file of a diffusers model folder.
pub const DIFFUSERS_CONFIG: &str = "config.json";
/// The prefix of the VAE's keys inside a full Stable Diffusion checkpoint.
pub const SD_VAE_PREFIX: &str = "first_stage_model.";
/// diffusers' `AutoencoderKL` default `scaling_factor` (SD 1.x), used when a config omits it.
pub const DIFFUSERS_DEFAULT_SCALE: f64 = 0.18215;

/// The fields of a diffusers `AutoencoderKL` `config.json` that decoding depends on, with
/// diffusers' own defaults for the ones a config may omit.
#[derive(Debug, Clone, Deserialize)]
pub struct DiffusersVaeConfig {
    /// The file it was read from.
    #[serde(skip)]
    pub path: PathBuf,
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "sixty_four")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default)]
    pub up_block_types: Vec<String>,
    /// `None` (absent or null): [`DIFFUSERS_DEFAULT_SCALE`].
    #[serde(default)]
    pub scaling_factor: Option<f64>,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default)]
    pub latents_mean: Option<serde_json::Value>,
    #[serde(default)]
    pub latents_std: Option<serde_json::Value>,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    /// Whether the encoder ends in a 1x1 `quant_conv`.
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default)]
    pub down_block_types: Vec<String>,
    /// diffusers' mark for a VAE that overflows in float16 (SDXL's): decode in float32.
    /// Absent means true, diffusers' default.
    #[serde(default = "yes")]
    pub force_upcast: bool,
}

fn silu() -> String {
    "silu".into()
}
fn four() -> usize {
    4
}
fn sixty_four() -> Vec<usize> {
    vec![64]
}
fn one() -> usize {
    1
}
fn three() -> usize {
    3
}
fn thirty_two() -> usize {
    32
}
fn yes() -> bool {
    true
}

impl DiffusersVaeConfig {
    pub fn load(path: &Path) -> Result<DiffusersVaeConfig> {
        let bad = |reason: String| ExportError::Config {
            origin: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| ExportError::io(path, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        if value.get("_class_name").is_none() {
            return Err(bad(
                "not a diffusers model config (it has no `_class_name`); a diffusers VAE folder \
                 holds the config.json that AutoencoderKL.save_pretrained wrote"
                    .into(),
            ));
        }
        let mut cfg: DiffusersVaeConfig = serde_json::from_value(value.clone()).map_err(|e| {
            // serde names the type it expected, not the field: find the field by trying each
            // alone.
            let field = value.as_object().and_then(|o| {
                o.iter().find_map(|(k, v)| {
                    let alone = serde_json::json!({ k.as_str(): v });
                    serde_json::from_value::<DiffusersVaeConfig>(alone)
                        .is_err()
                        .then(|| format!(" (field `{k}`: {v})"))
                })
            });
            bad(format!(
                "invalid VAE config: {e}{}",
                field.unwrap_or_default()
            ))
        })?;
        cfg.path = path.to_path_buf();
        let scale = cfg.scaling_factor();
        if !(scale.is_finite() && scale > 0.0) {
            return Err(bad(format!(
                "`scaling_factor` {scale} must be a positive number"
            )));
        }
        if !cfg.shift().is_finite() {
            return Err(bad(format!(
                "`shift_factor` {} must be finite",
                cfg.shift()
            )));
        }
        Ok(cfg)
    }

    /// The latent scale: tokens are divided by it before decoding.
    pub fn scaling_factor(&self) -> f64 {
        self.scaling_factor.unwrap_or(DIFFUSERS_DEFAULT_SCALE)
    }

    /// The latent shift, added after the division (0 when the config has none).
    pub fn shift(&self) -> f64 {
        self.shift_factor.unwrap_or(0.0)
    }
}

/// An opened VAE: its weights, the key layout they are in, and (diffusers layout) its config.
pub struct VaeCheckpoint {
    checkpoint: Checkpoint,
    layout: VaeLayout,
    config: Option<DiffusersVaeConfig>,
    /// Set when the VAE's keys sit under [`SD_VAE_PREFIX`] in a full checkpoint.
    prefix: Option<&'static str>,
    /// What was read from where, for the user.
    notes: Vec<String>,
}

fn listing(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    match names.len() {
        0 => "it is empty".into(),
        n if n > 8 => format!("it holds {}, ... ({n} entries)", names[..8].join(", ")),
        _ => format!("it holds {}", names.join(", ")),
    }
}

impl VaeCheckpoint {
    /// Opens `path`: a diffusers folder, a weights file (a diffusers one needs its
    /// `config.json` beside it), or an LDM-layout checkpoint.
    pub fn open(path: &Path) -> Result<VaeCheckpoint> {
        let mut notes = Vec::new();
        let weights = if path.is_dir() {
            let found = |dir: &Path| {
                DIFFUSERS_WEIGHTS
                    .iter()
                    .map(|n| dir.join(n))
                    .find(|p| p.is_file())
            };
            match (found(path), found(&path.join("vae"))) {
                (Some(w), _) => w,
                (None, Some(w)) => {
                    notes.push(format!(
                        "vae: reading the `vae` folder of the pipeline folder {}",
                        path.display()
                    ));
                    w
                }
                (None, None) => {
                    return Err(ExportError::Config {
                        origin: path.display().to_string(),
                        reason: format!(
                        "no VAE weights in this folder: a diffusers AutoencoderKL folder holds {} \
                             beside {DIFFUSERS_CONFIG}; {}",
                        DIFFUSERS_WEIGHTS[0],
                        listing(path)
                    ),
                    })
                }
            }
        } else {
            path.to_path_buf()
        };
        let checkpoint = Checkpoint::open(&weights)?;
        let prefix = checkpoint
            .contains(&format!("{SD_VAE_PREFIX}decoder.conv_in.weight"))
            .then_some(SD_VAE_PREFIX);
        if let Some(p) = prefix {
            notes.push(format!(
                "vae: reading the `{p}*` keys of {} (a full Stable Diffusion checkpoint); its other keys are not the VAE's",
                weights.display()
            ));
        }
        let mut vae = VaeCheckpoint {
            checkpoint,
            layout: VaeLayout::Ldm,
            config: None,
            prefix,
            notes,
        };
        vae.layout = vae_layout(&vae)?;
        let config_path = weights
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join(DIFFUSERS_CONFIG);
        match vae.layout {
            VaeLayout::Diffusers if !config_path.is_file() => {
                return Err(ExportError::Config {
                    origin: weights.display().to_string(),
                    reason: format!(
                    "these are diffusers-layout VAE weights, which need their {DIFFUSERS_CONFIG} \
                         (scaling_factor, shift_factor, norm_num_groups) beside them: no {} \
                         (give the folder AutoencoderKL.save_pretrained wrote)",
                    config_path.display()
                ),
                })
            }
            VaeLayout::Diffusers => vae.config = Some(DiffusersVaeConfig::load(&config_path)?),
            VaeLayout::Ldm if path.is_dir() => {
                return Err(ExportError::Config {
                    origin: weights.display().to_string(),
                    reason: "these weights are in the LDM layout (`decoder.mid.block_1`), not the \
                             diffusers layout their folder's config.json describes; give the file \
                             itself as --vae"
                        .into(),
                })
            }
            VaeLayout::Ldm => {}
        }
        Ok(vae)
    }

    pub fn layout(&self) -> VaeLayout {
        self.layout
    }

    /// The diffusers config (diffusers layout only).
    pub fn config(&self) -> Option<&DiffusersVaeConfig> {
        self.config.as_ref()
    }

    /// The weights file's checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Lines saying what was read from where (a pipeline's `vae` folder, an SD checkpoint's
    /// `first_stage_model.` keys).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The files the VAE was read from, as `(role, path, format)` for the manifest's sources:
    /// the weights and, for a diffusers folder, its config.
    pub fn source_files(&self) -> Vec<(String, PathBuf, String)> {
        let mut files = vec![(
            "vae".to_string(),
            self.checkpoint.path().to_path_buf(),
            self.checkpoint.format().to_string(),
        )];
        if let Some(c) = &self.config {
            files.push((
                "vae_config".into(),
                c.path.clone(),
                "diffusers-config".into(),
            ));
        }
        files
    }

    fn key(&self, key: &str) -> String {
        match self.prefix {
            Some(p) => format!("{p}{key}"),
            None => key.to_string(),
        }
    }
}

impl WeightSource for VaeCheckpoint {
    fn origin(&self) -> String {
        self.checkpoint.path().display().to_string()
    }
    fn keys(&self) -> Vec<String> {
        let keys = Checkpoint::keys(&self.checkpoint);
        match self.prefix {
            Some(p) => keys
                .into_iter()
                .filter_map(|k| k.strip_prefix(p).map(String::from))
                .collect(),
            None => keys.into_iter().map(String::from).collect(),
        }
    }
    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.checkpoint
            .info(&self.key(key))
            .map(|i| i.shape.clone())
    }
    fn load_f32(&self, key: &str) -> Result<Vec<f32>> {
        Ok(self.checkpoint.load_f32(&self.key(key))?)
    }
}
