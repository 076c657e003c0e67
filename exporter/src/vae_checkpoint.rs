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
    /// Reads and checks the config at `path`.
    pub fn load(path: &Path) -> Result<DiffusersVaeConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| ExportError::io(path, e))?;
        DiffusersVaeConfig::parse(&text, path)
    }

    /// [`DiffusersVaeConfig::load`] on text already read from `path` (which errors name).
    pub fn parse(text: &str, path: &Path) -> Result<DiffusersVaeConfig> {
        let bad = |reason: String| ExportError::Config {
            origin: path.display().to_string(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
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

#[cfg(test)]
mod tests {
    //! How [`VaeCheckpoint::open`] finds a VAE's weights and config, and how
    //! [`DiffusersVaeConfig::load`] reads and refuses a config. The weights are tiny
    //! safetensors files holding only the keys the layout detection looks at.

    use std::path::{Path, PathBuf};

    use safetensors::tensor::TensorView;
    use safetensors::Dtype;

    use super::*;

    /// The keys that make a file diffusers-layout VAE weights (`vae_layout`'s test).
    const DIFFUSERS_KEYS: [&str; 2] = [
        "decoder.conv_in.weight",
        "decoder.mid_block.resnets.0.conv1.weight",
    ];
    /// The same for the LDM layout.
    const LDM_KEYS: [&str; 2] = ["decoder.conv_in.weight", "decoder.mid.block_1.conv1.weight"];

    /// A safetensors file holding `keys`, each a float32 `[1, 2]` tensor (1.5, -2).
    fn weights(path: &Path, keys: &[&str]) -> PathBuf {
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let views: Vec<(String, TensorView)> = keys
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    TensorView::new(Dtype::F32, vec![1, 2], &data).unwrap(),
                )
            })
            .collect();
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        safetensors::serialize_to_file(views, None, path).unwrap();
        path.to_path_buf()
    }

    /// A minimal diffusers config in `dir` whose `scaling_factor` tells which one was read.
    fn config(dir: &Path, scale: f64) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(DIFFUSERS_CONFIG);
        std::fs::write(
            &p,
            format!(r#"{{"_class_name": "AutoencoderKL", "scaling_factor": {scale}}}"#),
        )
        .unwrap();
        p
    }

    /// A diffusers VAE folder `dir` (config marked `scale`, weights under `weights_name`).
    fn diffusers_folder(dir: &Path, scale: f64, weights_name: &str) -> PathBuf {
        config(dir, scale);
        weights(&dir.join(weights_name), &DIFFUSERS_KEYS)
    }

    fn config_error(e: ExportError) -> (String, String) {
        match e {
            ExportError::Config { origin, reason } => (origin, reason),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    fn open_err(path: &Path) -> ExportError {
        match VaeCheckpoint::open(path) {
            Ok(_) => panic!("{} opened", path.display()),
            Err(e) => e,
        }
    }

    fn load_str(dir: &Path, text: &str) -> Result<DiffusersVaeConfig> {
        let p = dir.join(DIFFUSERS_CONFIG);
        std::fs::write(&p, text).unwrap();
        DiffusersVaeConfig::load(&p)
    }

    // ------------------------------------------------------------ the config reader

    /// A config that gives only its class gets diffusers' own `AutoencoderKL.__init__`
    /// defaults (diffusers `models/autoencoders/autoencoder_kl.py`: silu, 4 latent
    /// channels, `block_out_channels` (64,), one layer per block, 32 groups, 3 out
    /// channels, `scaling_factor` 0.18215, no shift, both quant convs, middle attention,
    /// `force_upcast`).
    #[test]
    fn a_config_without_optional_fields_gets_diffusers_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let c = load_str(tmp.path(), r#"{"_class_name": "AutoencoderKL"}"#).unwrap();
        assert_eq!(c.path, tmp.path().join(DIFFUSERS_CONFIG));
        assert_eq!(c.class_name.as_deref(), Some("AutoencoderKL"));
        assert_eq!(c.act_fn, "silu");
        assert_eq!(
            (
                c.latent_channels,
                c.block_out_channels.as_slice(),
                c.layers_per_block,
                c.norm_num_groups,
                c.out_channels
            ),
            (4, &[64][..], 1, 32, 3)
        );
        assert_eq!((c.scaling_factor(), c.shift()), (0.18215, 0.0));
        assert!(c.use_post_quant_conv && c.use_quant_conv);
        assert!(c.mid_block_add_attention && c.force_upcast);
        assert!(c.latents_mean.is_none() && c.latents_std.is_none());
        assert!(c.up_block_types.is_empty() && c.down_block_types.is_empty());
    }

    /// `null` factors (as `save_pretrained` writes an unset `shift_factor`) fall back like
    /// absent ones; given ones are read; `false` flags are read as false.
    #[test]
    fn null_factors_fall_back_and_given_values_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let c = load_str(
            tmp.path(),
            r#"{"_class_name": "AutoencoderKL", "scaling_factor": null, "shift_factor": null}"#,
        )
        .unwrap();
        assert_eq!(
            (c.scaling_factor(), c.shift()),
            (DIFFUSERS_DEFAULT_SCALE, 0.0)
        );
        let c = load_str(
            tmp.path(),
            r#"{"_class_name": "AutoencoderKL", "scaling_factor": 0.3611, "shift_factor": -0.1159,
                "mid_block_add_attention": false, "force_upcast": false, "use_quant_conv": false,
                "use_post_quant_conv": false, "latent_channels": 16, "block_out_channels": [32, 64],
                "sample_size": 1024, "_diffusers_version": "0.30.0"}"#,
        )
        .unwrap();
        assert_eq!((c.scaling_factor(), c.shift()), (0.3611, -0.1159));
        assert!(!c.mid_block_add_attention && !c.force_upcast);
        assert!(!c.use_quant_conv && !c.use_post_quant_conv);
        assert_eq!(
            (c.latent_channels, c.block_out_channels),
            (16, vec![32, 64])
        );
    }

    /// Every refusal is a typed error naming the file, and says what is wrong.
    #[test]
    fn a_bad_config_is_refused_naming_the_file_and_the_problem() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join(DIFFUSERS_CONFIG).display().to_string();
        for (text, says) in [
            ("{\"_class_name\": ", "not valid JSON"),
            ("[1, 2]", "no `_class_name`"),
            (
                r#"{"_diffusers_version": "0.30.0", "scaling_factor": 0.5}"#,
                "no `_class_name`",
            ),
            (
                r#"{"_class_name": "AutoencoderKL", "latent_channels": "four"}"#,
                "(field `latent_channels`: \"four\")",
            ),
            (
                r#"{"_class_name": "AutoencoderKL", "block_out_channels": [32, -1]}"#,
                "(field `block_out_channels`: [32,-1])",
            ),
            (
                r#"{"_class_name": "AutoencoderKL", "mid_block_add_attention": "yes"}"#,
                "field `mid_block_add_attention`",
            ),
            (
                r#"{"_class_name": "AutoencoderKL", "scaling_factor": 0}"#,
                "`scaling_factor` 0 must be a positive number",
            ),
            (
                r#"{"_class_name": "AutoencoderKL", "scaling_factor": -0.18215}"#,
                "`scaling_factor` -0.18215 must be a positive number",
            ),
        ] {
            let (origin, reason) = config_error(load_str(tmp.path(), text).unwrap_err());
            assert_eq!(origin, file, "{text}");
            assert!(reason.contains(says), "{text}: {reason:?} lacks {says:?}");
        }
        let missing = tmp.path().join("nowhere").join(DIFFUSERS_CONFIG);
        match DiffusersVaeConfig::load(&missing) {
            Err(ExportError::Io { path, .. }) => assert_eq!(path, missing),
            other => panic!("a missing config: {other:?}"),
        }
    }

    // ------------------------------------------------------------ where the VAE is found

    /// A diffusers folder: its weights file and the config beside it, recorded as the
    /// manifest's two sources, with nothing to note.
    #[test]
    fn a_diffusers_folder_reads_its_weights_and_config() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vae");
        let w = diffusers_folder(&dir, 0.25, DIFFUSERS_WEIGHTS[0]);
        let v = VaeCheckpoint::open(&dir).unwrap();
        assert_eq!(v.layout(), VaeLayout::Diffusers);
        assert_eq!(v.checkpoint().path(), w);
        let c = v.config().expect("a diffusers folder's config");
        assert_eq!(
            (c.path.clone(), c.scaling_factor()),
            (dir.join(DIFFUSERS_CONFIG), 0.25)
        );
        assert!(v.notes().is_empty(), "{:?}", v.notes());
        assert_eq!(
            v.source_files(),
            vec![
                ("vae".to_string(), w, "safetensors".to_string()),
                (
                    "vae_config".to_string(),
                    dir.join(DIFFUSERS_CONFIG),
                    "diffusers-config".to_string()
                ),
            ]
        );
    }

    /// The weights file itself, whatever it is called, reads the `config.json` beside it.
    #[test]
    fn a_weights_file_reads_the_config_beside_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vae");
        for name in [DIFFUSERS_WEIGHTS[0], "sdxl-vae-fp16-fix.safetensors"] {
            let w = diffusers_folder(&dir, 0.13025, name);
            let v = VaeCheckpoint::open(&w).unwrap();
            assert_eq!(v.layout(), VaeLayout::Diffusers, "{name}");
            assert_eq!(v.checkpoint().path(), w, "{name}");
            let c = v.config().expect("the config beside the file");
            assert_eq!(c.path, dir.join(DIFFUSERS_CONFIG), "{name}");
            assert_eq!(c.scaling_factor(), 0.13025, "{name}");
        }
    }

    /// A diffusers pipeline folder (`model_index.json`, `unet/`, `vae/`, ...) given as the
    /// VAE reads its `vae/` folder, and says so; the other components' configs are not read.
    #[test]
    fn a_pipeline_folder_reads_its_vae_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("stable-diffusion");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(
            root.join("model_index.json"),
            r#"{"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"]}"#,
        )
        .unwrap();
        config(&root.join("unet"), 7.0);
        config(&root.join("text_encoder"), 9.0);
        let w = diffusers_folder(&root.join("vae"), 0.18215, DIFFUSERS_WEIGHTS[0]);
        let v = VaeCheckpoint::open(&root).unwrap();
        assert_eq!(v.checkpoint().path(), w);
        let c = v.config().unwrap();
        assert_eq!(
            (c.path.clone(), c.scaling_factor()),
            (root.join("vae").join(DIFFUSERS_CONFIG), 0.18215)
        );
        assert_eq!(
            v.notes(),
            [format!(
                "vae: reading the `vae` folder of the pipeline folder {}",
                root.display()
            )]
        );
    }

    /// A folder with weights of its own is the VAE, even with a `vae/` inside.
    #[test]
    fn a_folders_own_weights_come_before_its_vae_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let own = diffusers_folder(tmp.path(), 0.5, DIFFUSERS_WEIGHTS[0]);
        diffusers_folder(&tmp.path().join("vae"), 0.25, DIFFUSERS_WEIGHTS[0]);
        let v = VaeCheckpoint::open(tmp.path()).unwrap();
        assert_eq!(v.checkpoint().path(), own);
        assert_eq!(v.config().unwrap().scaling_factor(), 0.5);
        assert!(v.notes().is_empty(), "{:?}", v.notes());
    }

    /// Without `diffusion_pytorch_model.safetensors` a folder's half-precision variant is
    /// read; with both, the full-precision file.
    #[test]
    fn the_weights_files_are_tried_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let fp16 = diffusers_folder(tmp.path(), 0.5, DIFFUSERS_WEIGHTS[1]);
        assert_eq!(
            VaeCheckpoint::open(tmp.path()).unwrap().checkpoint().path(),
            fp16
        );
        let full = weights(&tmp.path().join(DIFFUSERS_WEIGHTS[0]), &DIFFUSERS_KEYS);
        assert_eq!(
            VaeCheckpoint::open(tmp.path()).unwrap().checkpoint().path(),
            full
        );
        // The pipeline's `vae/` folder follows the same order.
        let root = tmp.path().join("pipeline");
        let fp16 = diffusers_folder(&root.join("vae"), 0.5, DIFFUSERS_WEIGHTS[1]);
        assert_eq!(
            VaeCheckpoint::open(&root).unwrap().checkpoint().path(),
            fp16
        );
    }

    /// A folder with no weights file (nor a `vae/` with one) is refused, listing what it
    /// holds (at most eight names).
    #[test]
    fn a_folder_without_weights_is_refused_with_what_it_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let (origin, reason) = config_error(open_err(&empty));
        assert_eq!(origin, empty.display().to_string());
        assert!(reason.contains("no VAE weights in this folder"), "{reason}");
        assert!(reason.contains(DIFFUSERS_WEIGHTS[0]), "{reason}");
        assert!(reason.ends_with("it is empty"), "{reason}");

        let some = tmp.path().join("some");
        config(&some, 0.5);
        // A `vae/` folder without weights does not count either.
        config(&some.join("vae"), 0.5);
        std::fs::write(some.join("model.ckpt.part"), b"").unwrap();
        let (_, reason) = config_error(open_err(&some));
        assert!(
            reason.ends_with("it holds config.json, model.ckpt.part, vae"),
            "{reason}"
        );

        let many = tmp.path().join("many");
        std::fs::create_dir(&many).unwrap();
        for i in 0..9 {
            std::fs::write(many.join(format!("f{i}.txt")), b"").unwrap();
        }
        let (_, reason) = config_error(open_err(&many));
        assert!(
            reason.ends_with(
                "it holds f0.txt, f1.txt, f2.txt, f3.txt, f4.txt, f5.txt, f6.txt, f7.txt, ... \
                 (9 entries)"
            ),
            "{reason}"
        );
    }

    /// Diffusers-layout weights cannot be read without their config (the decode rule's
    /// factors and the GroupNorm groups are only there): the error names the file looked
    /// for. As a file, and as a folder holding only the weights.
    #[test]
    fn diffusers_weights_without_their_config_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let w = weights(&tmp.path().join("vae.safetensors"), &DIFFUSERS_KEYS);
        let (origin, reason) = config_error(open_err(&w));
        assert_eq!(origin, w.display().to_string());
        assert!(reason.contains("diffusers-layout VAE weights"), "{reason}");
        assert!(
            reason.contains(&format!(
                "no {}",
                tmp.path().join(DIFFUSERS_CONFIG).display()
            )),
            "{reason}"
        );
        let dir = tmp.path().join("folder");
        let w = weights(&dir.join(DIFFUSERS_WEIGHTS[0]), &DIFFUSERS_KEYS);
        let (origin, reason) = config_error(open_err(&dir));
        assert_eq!(origin, w.display().to_string());
        assert!(
            reason.contains(&format!("no {}", dir.join(DIFFUSERS_CONFIG).display())),
            "{reason}"
        );
        // A config that is there but broken is that config's error, not "no config".
        std::fs::write(dir.join(DIFFUSERS_CONFIG), "{}").unwrap();
        let (origin, reason) = config_error(open_err(&dir));
        assert_eq!(origin, dir.join(DIFFUSERS_CONFIG).display().to_string());
        assert!(reason.contains("no `_class_name`"), "{reason}");
    }

    /// An LDM-layout file needs no config and ignores one beside it; in a folder (where the
    /// config says diffusers) LDM weights are refused, pointing at the file.
    #[test]
    fn ldm_weights_read_alone_and_are_refused_as_a_diffusers_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let w = weights(&tmp.path().join("kl16.safetensors"), &LDM_KEYS);
        for with_config in [false, true] {
            if with_config {
                config(tmp.path(), 0.5);
            }
            let v = VaeCheckpoint::open(&w).unwrap();
            assert_eq!(v.layout(), VaeLayout::Ldm);
            assert!(v.config().is_none(), "config beside: {with_config}");
            assert!(v.notes().is_empty());
            assert_eq!(
                v.source_files(),
                vec![("vae".to_string(), w.clone(), "safetensors".to_string())]
            );
        }
        let dir = tmp.path().join("folder");
        config(&dir, 0.5);
        let inside = weights(&dir.join(DIFFUSERS_WEIGHTS[0]), &LDM_KEYS);
        let (origin, reason) = config_error(open_err(&dir));
        assert_eq!(origin, inside.display().to_string());
        assert!(reason.contains("LDM layout"), "{reason}");
        assert!(reason.contains("give the file itself"), "{reason}");
    }

    /// A full Stable Diffusion checkpoint: the VAE is its `first_stage_model.*` keys, read
    /// without the prefix; the UNet's and text encoder's keys are not the VAE's.
    #[test]
    fn a_full_sd_checkpoint_reads_its_first_stage_model_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let mut keys: Vec<String> = LDM_KEYS
            .iter()
            .map(|k| format!("{SD_VAE_PREFIX}{k}"))
            .collect();
        keys.push("model.diffusion_model.input_blocks.0.0.weight".into());
        keys.push("cond_stage_model.transformer.text_model.embeddings.position_ids".into());
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let w = weights(&tmp.path().join("v1-5-pruned.safetensors"), &refs);
        let v = VaeCheckpoint::open(&w).unwrap();
        assert_eq!(v.layout(), VaeLayout::Ldm);
        assert_eq!(WeightSource::keys(&v), LDM_KEYS.map(String::from).to_vec());
        assert_eq!(v.shape("decoder.conv_in.weight"), Some(vec![1, 2]));
        assert_eq!(
            v.shape("model.diffusion_model.input_blocks.0.0.weight"),
            None
        );
        assert_eq!(
            v.load_f32("decoder.mid.block_1.conv1.weight").unwrap(),
            [1.5, -2.0]
        );
        assert_eq!(
            v.notes(),
            [format!(
                "vae: reading the `first_stage_model.*` keys of {} (a full Stable Diffusion \
                 checkpoint); its other keys are not the VAE's",
                w.display()
            )]
        );
    }

    /// Neither layout, or no file at all: typed errors, no panic.
    #[test]
    fn not_a_vae_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let w = weights(&tmp.path().join("unet.safetensors"), &["conv_in.weight"]);
        match open_err(&w) {
            ExportError::UnknownLayout { origin, reason } => {
                assert_eq!(origin, w.display().to_string());
                assert!(reason.contains("no `decoder.conv_in.weight`"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let w = weights(
            &tmp.path().join("half.safetensors"),
            &["decoder.conv_in.weight"],
        );
        assert!(
            matches!(open_err(&w), ExportError::MissingKey { ref key, .. } if key == "decoder.mid.block_1.conv1.weight")
        );
        let both: Vec<&str> = DIFFUSERS_KEYS
            .iter()
            .chain(&LDM_KEYS[1..])
            .copied()
            .collect();
        let w = weights(&tmp.path().join("both.safetensors"), &both);
        assert!(
            matches!(open_err(&w), ExportError::UnknownLayout { ref reason, .. } if reason.contains("two decoders")),
        );
        assert!(matches!(
            open_err(&tmp.path().join("absent.safetensors")),
            ExportError::Checkpoint(_)
        ));
    }
}
