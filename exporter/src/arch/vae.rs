//! The KL-VAE decoder's architecture, from its weights in either key layout: the original
//! latent-diffusion one (`decoder.up.{l}.block.{b}`, levels indexed from the finest) and
//! diffusers' `AutoencoderKL` (`decoder.up_blocks.{i}.resnets.{b}`, blocks indexed from the
//! coarsest, so up block `i` is level `levels - 1 - i`). Both describe one network; the
//! dims below use the level numbering of the LDM layout.

use flowar_format::manifest::{VaeArch, VaeLayout};

use super::{layout, need_rank, vae_levels};
use crate::error::{ExportError, Result};
use crate::vae_checkpoint::DiffusersVaeConfig;
use crate::weights::{IgnoreRule, WeightSource};

/// Everything the VAE checkpoint says about its decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeDims {
    pub arch: VaeArch,
    /// Channels after each up level's ResNet blocks, by level index (0 = finest).
    pub level_channels: Vec<usize>,
    /// Channels of the latents the decoder takes (the FlowAR token width).
    pub latent_channels: usize,
}

/// VAE keys that decoding does not read.
pub const VAE_IGNORED: &[IgnoreRule] = &[
    IgnoreRule {
        matches: |k| k.starts_with("encoder."),
        reason: "VAE encoder key the encoder graph does not read",
    },
    IgnoreRule {
        matches: |k| k.starts_with("quant_conv."),
        reason: "encoder-side quantisation conv the encoder graph does not read",
    },
    IgnoreRule {
        matches: |k| k.starts_with("loss."),
        reason: "training loss (LPIPS / discriminator) weights",
    },
];

/// Where one layout keeps the parts detection looks at.
struct Keys {
    layout: VaeLayout,
    /// The ResNet blocks of up level `l` (of `levels`).
    up_block: fn(l: usize, levels: usize) -> String,
    /// The first attention of up level `l`, when the level has attention.
    up_attn: fn(l: usize, levels: usize) -> String,
    /// A weight only the middle block's attention has.
    mid_attn: &'static str,
}

const LDM: Keys = Keys {
    layout: VaeLayout::Ldm,
    up_block: |l, _| format!("decoder.up.{l}.block"),
    up_attn: |l, _| format!("decoder.up.{l}.attn.0.norm.weight"),
    mid_attn: "decoder.mid.attn_1.norm.weight",
};

const DIFFUSERS: Keys = Keys {
    layout: VaeLayout::Diffusers,
    up_block: |l, n| format!("decoder.up_blocks.{}.resnets", n - 1 - l),
    up_attn: |l, n| {
        format!(
            "decoder.up_blocks.{}.attentions.0.group_norm.weight",
            n - 1 - l
        )
    },
    mid_attn: "decoder.mid_block.attentions.0.group_norm.weight",
};

/// The key layout of a VAE's weights, from the key that names its first middle ResNet.
pub fn vae_layout(src: &dyn WeightSource) -> Result<VaeLayout> {
    let diffusers = src
        .shape("decoder.mid_block.resnets.0.conv1.weight")
        .is_some();
    let ldm = src.shape("decoder.mid.block_1.conv1.weight").is_some();
    match (
        src.shape("decoder.conv_in.weight").is_some(),
        ldm,
        diffusers,
    ) {
        (false, ..) => Err(layout(
            src,
            "not a KL-VAE checkpoint: no `decoder.conv_in.weight` (expected an AutoencoderKL \
             decoder in the LDM layout, e.g. MAR's kl16.ckpt, or a diffusers AutoencoderKL \
             folder)"
                .into(),
        )),
        (true, true, false) => Ok(VaeLayout::Ldm),
        (true, false, true) => Ok(VaeLayout::Diffusers),
        (true, true, true) => Err(layout(
            src,
            "holds both `decoder.mid.block_1` (LDM layout) and `decoder.mid_block.resnets.0` \
             (diffusers layout): two decoders in one file"
                .into(),
        )),
        (true, false, false) => Err(ExportError::MissingKey {
            origin: src.origin(),
            key: "decoder.mid.block_1.conv1.weight".into(),
            expected: "the middle ResNet block (or `decoder.mid_block.resnets.0.conv1.weight` \
                       in the diffusers layout)"
                .into(),
        }),
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The decoder's architecture from the weights alone (32 GroupNorm groups, the value of
/// every released KL-VAE, until a diffusers config says otherwise: see [`apply_config`]).
pub fn detect_vae(src: &dyn WeightSource) -> Result<VaeDims> {
    let keys = match vae_layout(src)? {
        VaeLayout::Ldm => &LDM,
        VaeLayout::Diffusers => &DIFFUSERS,
    };
    let conv_in = need_rank(
        src,
        "decoder.conv_in.weight",
        4,
        "[channels of the coarsest level, z_channels, 3, 3]",
    )?;
    let z_channels = conv_in[1];
    let (post_quant_conv, latent_channels) = match src.shape("post_quant_conv.weight") {
        None => (false, z_channels),
        Some(_) => {
            let pq = need_rank(src, "post_quant_conv.weight", 4, "[z_channels, C, 1, 1]")?;
            if pq[0] != z_channels {
                return Err(layout(
                    src,
                    format!(
                        "`decoder.conv_in.weight` takes {z_channels} channels but `post_quant_conv` gives {}",
                        pq[0]
                    ),
                ));
            }
            (true, pq[1])
        }
    };
    let levels = (0..)
        .take_while(|&l| {
            // Count levels in the layout's own order (LDM from the finest, diffusers from the
            // coarsest): both number their keys 0, 1, ...
            let i = match keys.layout {
                VaeLayout::Ldm => format!("decoder.up.{l}.block.0.conv1.weight"),
                VaeLayout::Diffusers => format!("decoder.up_blocks.{l}.resnets.0.conv1.weight"),
            };
            src.shape(&i).is_some()
        })
        .count();
    if levels == 0 {
        return Err(ExportError::MissingKey {
            origin: src.origin(),
            key: format!("{}.0.conv1.weight", (keys.up_block)(0, 1)),
            expected: "[channels of the level, in, 3, 3]".into(),
        });
    }
    let (blocks, level_channels, attn_levels) = vae_levels(
        src,
        "decoder",
        levels,
        |l| (keys.up_block)(l, levels),
        |l| (keys.up_attn)(l, levels),
    )?;
    let ch = match src.shape("encoder.conv_in.weight") {
        Some(s) if s.len() == 4 => s[0],
        _ => level_channels.iter().copied().fold(0, gcd),
    };
    let dims = VaeDims {
        arch: VaeArch {
            kind: "AutoencoderKL".into(),
            layout: keys.layout,
            ch,
            ch_mult: level_channels.iter().map(|c| c / ch.max(1)).collect(),
            num_res_blocks: blocks - 1,
            z_channels,
            attn_levels,
            stride: 1 << (levels - 1),
            norm_groups: 32,
            mid_attention: src.shape(keys.mid_attn).is_some(),
            post_quant_conv,
            encoder: None,
        },
        level_channels,
        latent_channels,
    };
    check_groups(&dims, &src.origin())?;
    Ok(dims)
}

/// The decoder's architecture from the weights and, for the diffusers layout, its config
/// (required there, checked against the weights; refused beside LDM-layout weights).
pub fn detect_vae_with(
    src: &dyn WeightSource,
    config: Option<&DiffusersVaeConfig>,
) -> Result<VaeDims> {
    let mut v = detect_vae(src)?;
    match (v.arch.layout, config) {
        (VaeLayout::Diffusers, Some(c)) => apply_config(&mut v, c, &src.origin())?,
        (VaeLayout::Diffusers, None) => {
            return Err(ExportError::Config {
                origin: src.origin(),
                reason: "diffusers-layout VAE weights need their config.json (scaling_factor, \
                         shift_factor, norm_num_groups): give the VAE's folder"
                    .into(),
            })
        }
        (VaeLayout::Ldm, Some(c)) => {
            return Err(ExportError::Config {
                origin: c.path.display().to_string(),
                reason: format!(
                    "describes a diffusers AutoencoderKL, but {} is in the LDM layout",
                    src.origin()
                ),
            })
        }
        (VaeLayout::Ldm, None) => {}
    }
    Ok(v)
}

/// Every GroupNorm's channels must split into the groups.
fn check_groups(d: &VaeDims, origin: &str) -> Result<()> {
    let groups = d.arch.norm_groups;
    match d
        .level_channels
        .iter()
        .find(|&&c| groups == 0 || c % groups != 0)
    {
        Some(bad) => Err(ExportError::UnknownLayout {
            origin: origin.to_string(),
            reason: format!(
                "decoder channel count {bad} is not divisible by the {groups} GroupNorm groups"
            ),
        }),
        None => Ok(()),
    }
}

/// Checks a diffusers `config.json` against what the weights show, and takes from it what
/// the weights cannot show (the GroupNorm groups). Every disagreement names the config
/// field, both values and the weight that shows the truth.
fn apply_config(d: &mut VaeDims, cfg: &DiffusersVaeConfig, weights: &str) -> Result<()> {
    let bad = |reason: String| {
        Err(ExportError::Config {
            origin: cfg.path.display().to_string(),
            reason,
        })
    };
    let disagree = |field: &str, said: String, found: String, key: &str| {
        bad(format!(
            "`{field}` is {said} but the weights in {weights} have {found} ({key}); is this \
             config.json for another VAE?"
        ))
    };
    if let Some(class) = cfg.class_name.as_deref().filter(|c| *c != "AutoencoderKL") {
        return bad(format!(
            "`_class_name` is {class}; flowar reads AutoencoderKL (a KL VAE's decoder) only"
        ));
    }
    if cfg.act_fn != "silu" {
        return bad(format!(
            "`act_fn` is {:?}; every AutoencoderKL decoder flowar builds uses silu",
            cfg.act_fn
        ));
    }
    if cfg.latents_mean.is_some() || cfg.latents_std.is_some() {
        return bad(
            "`latents_mean` / `latents_std` normalise per channel, which the FlowAR decode rule \
             (tokens / scaling_factor + shift_factor) does not do"
                .into(),
        );
    }
    if let Some(t) = cfg
        .up_block_types
        .iter()
        .find(|t| !matches!(t.as_str(), "UpDecoderBlock2D" | "AttnUpDecoderBlock2D"))
    {
        return bad(format!(
            "`up_block_types` holds {t}; flowar builds UpDecoderBlock2D and AttnUpDecoderBlock2D"
        ));
    }
    if cfg.out_channels != 3 {
        return bad(format!(
            "`out_channels` is {}; flowar writes RGB images (3)",
            cfg.out_channels
        ));
    }
    let pq = "post_quant_conv.weight";
    if cfg.latent_channels != d.latent_channels {
        let key = if d.arch.post_quant_conv {
            pq
        } else {
            "decoder.conv_in.weight"
        };
        return disagree(
            "latent_channels",
            cfg.latent_channels.to_string(),
            format!("{} latent channels", d.latent_channels),
            key,
        );
    }
    if cfg.use_post_quant_conv != d.arch.post_quant_conv {
        let found = if d.arch.post_quant_conv {
            "a post_quant_conv"
        } else {
            "no post_quant_conv"
        };
        return disagree(
            "use_post_quant_conv",
            cfg.use_post_quant_conv.to_string(),
            found.into(),
            pq,
        );
    }
    if cfg.block_out_channels != d.level_channels {
        return disagree(
            "block_out_channels",
            format!("{:?}", cfg.block_out_channels),
            format!("{:?}", d.level_channels),
            "decoder.up_blocks.*.resnets.0.conv1.weight",
        );
    }
    if cfg.layers_per_block != d.arch.num_res_blocks {
        return disagree(
            "layers_per_block",
            cfg.layers_per_block.to_string(),
            format!("{} ResNet blocks per up block", d.arch.num_res_blocks + 1),
            "decoder.up_blocks.0.resnets.*",
        );
    }
    if cfg.mid_block_add_attention != d.arch.mid_attention {
        let found = if d.arch.mid_attention {
            "a middle attention"
        } else {
            "no middle attention"
        };
        return disagree(
            "mid_block_add_attention",
            cfg.mid_block_add_attention.to_string(),
            found.into(),
            "decoder.mid_block.attentions.0",
        );
    }
    d.arch.norm_groups = cfg.norm_num_groups;
    check_groups(d, &cfg.path.display().to_string())
}
