//! The KL-VAE encoder's architecture, from its weights in the layout the decoder was found
//! in: LDM (`encoder.down.{l}.block.{b}`, `encoder.mid.block_1`, `nin_shortcut`) or
//! diffusers (`encoder.down_blocks.{l}.resnets.{b}`, `encoder.mid_block.resnets.{0,1}`,
//! `conv_shortcut`). Both number their down levels from the finest, so one walk serves.
//! A checkpoint without `encoder.conv_in.weight` has no encoder: `Ok(None)`.

use flowar_format::manifest::{VaeEncoderArch, VaeLayout};

use super::{layout, need_rank, vae_levels};
use crate::error::{ExportError, Result};
use crate::vae_checkpoint::DiffusersVaeConfig;
use crate::weights::WeightSource;

/// Where one layout keeps the encoder's parts.
struct Keys {
    /// ResNet blocks of down level `l`.
    down_block: fn(usize) -> String,
    /// The first attention's norm weight of down level `l`.
    down_attn: fn(usize) -> String,
    /// The downsampler conv weight of down level `l`.
    downsample: fn(usize) -> String,
    mid_block_1: &'static str,
    mid_attn: &'static str,
    norm_out: &'static str,
}

const LDM: Keys = Keys {
    down_block: |l| format!("encoder.down.{l}.block"),
    down_attn: |l| format!("encoder.down.{l}.attn.0.norm.weight"),
    downsample: |l| format!("encoder.down.{l}.downsample.conv.weight"),
    mid_block_1: "encoder.mid.block_1.conv1.weight",
    mid_attn: "encoder.mid.attn_1.norm.weight",
    norm_out: "encoder.norm_out.weight",
};

const DIFFUSERS: Keys = Keys {
    down_block: |l| format!("encoder.down_blocks.{l}.resnets"),
    down_attn: |l| format!("encoder.down_blocks.{l}.attentions.0.group_norm.weight"),
    downsample: |l| format!("encoder.down_blocks.{l}.downsamplers.0.conv.weight"),
    mid_block_1: "encoder.mid_block.resnets.0.conv1.weight",
    mid_attn: "encoder.mid_block.attentions.0.group_norm.weight",
    norm_out: "encoder.conv_norm_out.weight",
};

/// What the weights say about the encoder, plus the widths the graph builder walks.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderDims {
    pub arch: VaeEncoderArch,
    /// `encoder.conv_in`'s output width.
    pub ch: usize,
    /// `encoder.conv_out`'s output channels (`2 z` with `double_z`).
    pub conv_out: usize,
    /// The latent (token) channels the encoder's mean has.
    pub latent_channels: usize,
}

/// The encoder's architecture, or `None` when the checkpoint holds no encoder.
/// `latent_channels` is what the decoder takes; the encoder must give as many.
pub fn detect_encoder(
    src: &dyn WeightSource,
    vae_layout: VaeLayout,
    latent_channels: usize,
    norm_groups: usize,
) -> Result<Option<EncoderDims>> {
    if src.shape("encoder.conv_in.weight").is_none() {
        return Ok(None);
    }
    let keys = match vae_layout {
        VaeLayout::Ldm => &LDM,
        VaeLayout::Diffusers => &DIFFUSERS,
    };
    let conv_in = need_rank(src, "encoder.conv_in.weight", 4, "[ch, 3, 3, 3]")?;
    if conv_in[1] != 3 {
        return Err(layout(
            src,
            format!(
                "`encoder.conv_in.weight` takes {} channels; flowar encodes RGB images (3)",
                conv_in[1]
            ),
        ));
    }
    let ch = conv_in[0];
    let levels = (0..)
        .take_while(|&l| {
            src.shape(&format!("{}.0.conv1.weight", (keys.down_block)(l)))
                .is_some()
        })
        .count();
    if levels == 0 {
        return Err(ExportError::MissingKey {
            origin: src.origin(),
            key: format!("{}.0.conv1.weight", (keys.down_block)(0)),
            expected: "the encoder's first ResNet block [out, in, 3, 3]".into(),
        });
    }
    let (blocks, level_channels, attn_levels) =
        vae_levels(src, "encoder", levels, keys.down_block, keys.down_attn)?;
    for l in 0..levels {
        // Every level but the coarsest halves the resolution.
        let has_down = src.shape(&(keys.downsample)(l)).is_some();
        if has_down != (l + 1 < levels) {
            return Err(layout(
                src,
                format!(
                    "encoder level {l} of {levels} {} a downsampler (`{}`)",
                    if has_down { "has" } else { "lacks" },
                    (keys.downsample)(l)
                ),
            ));
        }
    }
    need_rank(src, keys.mid_block_1, 4, "[ch, ch, 3, 3]")?;
    need_rank(src, keys.norm_out, 1, "[ch]")?;
    let top = level_channels[levels - 1];
    let conv_out = need_rank(
        src,
        "encoder.conv_out.weight",
        4,
        "[2 z_channels, ch, 3, 3]",
    )?;
    if conv_out[1] != top {
        return Err(layout(
            src,
            format!(
                "`encoder.conv_out.weight` takes {} channels but the last down level gives {top}",
                conv_out[1]
            ),
        ));
    }
    let quant_conv = match src.shape("quant_conv.weight") {
        None => false,
        Some(_) => {
            let q = need_rank(src, "quant_conv.weight", 4, "[2 C, 2 z_channels, 1, 1]")?;
            if q[1] != conv_out[0] {
                return Err(layout(
                    src,
                    format!(
                        "`quant_conv.weight` takes {} channels but `encoder.conv_out` gives {}",
                        q[1], conv_out[0]
                    ),
                ));
            }
            true
        }
    };
    let moments = match src.shape("quant_conv.weight") {
        Some(q) if quant_conv => q[0],
        _ => conv_out[0],
    };
    // Mean and log-variance (double_z, every released KL-VAE), or the mean alone.
    let double_z = moments == 2 * latent_channels;
    if !double_z && moments != latent_channels {
        let key = if quant_conv {
            "quant_conv.weight"
        } else {
            "encoder.conv_out.weight"
        };
        return Err(layout(
            src,
            format!(
                "the encoder gives {moments} channels ({key}) but the decoder takes \
                 {latent_channels}: expected {} (mean and log-variance) or {latent_channels}",
                2 * latent_channels
            ),
        ));
    }
    if let Some(bad) = std::iter::once(ch)
        .chain(level_channels.iter().copied())
        .find(|&c| norm_groups == 0 || c % norm_groups != 0)
    {
        return Err(layout(
            src,
            format!("encoder channel count {bad} is not divisible by the {norm_groups} GroupNorm groups"),
        ));
    }
    Ok(Some(EncoderDims {
        arch: VaeEncoderArch {
            level_channels,
            num_res_blocks: blocks,
            attn_levels,
            mid_attention: src.shape(keys.mid_attn).is_some(),
            double_z,
            quant_conv,
            precision: "float32".into(),
            rule: String::new(),
        },
        ch,
        conv_out: conv_out[0],
        latent_channels,
    }))
}

/// Checks a diffusers config's encoder fields against the encoder's weights; each
/// disagreement names the field, both values and the weight.
pub fn check_encoder_config(
    e: &EncoderDims,
    cfg: &DiffusersVaeConfig,
    weights: &str,
) -> Result<()> {
    let bad = |field: &str, said: String, found: String, key: &str| {
        Err(ExportError::Config {
            origin: cfg.path.display().to_string(),
            reason: format!(
                "`{field}` is {said} but the weights in {weights} have {found} ({key}); is this \
                 config.json for another VAE?"
            ),
        })
    };
    if cfg.use_quant_conv != e.arch.quant_conv {
        let found = if e.arch.quant_conv {
            "a quant_conv"
        } else {
            "no quant_conv"
        };
        return bad(
            "use_quant_conv",
            cfg.use_quant_conv.to_string(),
            found.into(),
            "quant_conv.weight",
        );
    }
    if cfg.block_out_channels != e.arch.level_channels {
        return bad(
            "block_out_channels",
            format!("{:?}", cfg.block_out_channels),
            format!("{:?} in the encoder", e.arch.level_channels),
            "encoder.down_blocks.*.resnets.0.conv1.weight",
        );
    }
    if cfg.layers_per_block != e.arch.num_res_blocks {
        return bad(
            "layers_per_block",
            cfg.layers_per_block.to_string(),
            format!("{} ResNet blocks per down block", e.arch.num_res_blocks),
            "encoder.down_blocks.0.resnets.*",
        );
    }
    // diffusers builds both middle blocks from this one flag.
    if cfg.mid_block_add_attention != e.arch.mid_attention {
        let found = if e.arch.mid_attention {
            "a middle attention in the encoder"
        } else {
            "no middle attention in the encoder"
        };
        return bad(
            "mid_block_add_attention",
            cfg.mid_block_add_attention.to_string(),
            found.into(),
            "encoder.mid_block.attentions.0",
        );
    }
    if let Some(t) = cfg
        .down_block_types
        .iter()
        .find(|t| t.as_str() != "DownEncoderBlock2D")
    {
        return Err(ExportError::Config {
            origin: cfg.path.display().to_string(),
            reason: format!(
                "`down_block_types` holds {t}; flowar builds DownEncoderBlock2D encoders"
            ),
        });
    }
    Ok(())
}
