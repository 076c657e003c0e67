//! The decoder in diffusers' `AutoencoderKL` key layout (`decoder.mid_block.resnets.{0,1}`,
//! `decoder.up_blocks.{i}` numbered from the coarsest level, `conv_shortcut`, attention
//! `group_norm` / `to_q` / `to_k` / `to_v` / `to_out.0` as linears, or the older
//! `query` / `key` / `value` / `proj_attn` names that diffusers still loads).

use super::{attn_block, output, resnet_block, upsample, PartNames};
use crate::arch::VaeDims;
use crate::error::Result;
use crate::onnx::{Graph, Val};
use crate::weights::Vb;

const NAMES: PartNames = PartNames {
    shortcut: "conv_shortcut",
    attn_norm: "group_norm",
    attn_proj: ["to_q", "to_k", "to_v", "to_out.0"],
};

/// The attention names of checkpoints saved before diffusers 0.14.
const LEGACY_NAMES: PartNames = PartNames {
    shortcut: "conv_shortcut",
    attn_norm: "group_norm",
    attn_proj: ["query", "key", "value", "proj_attn"],
};

fn names_of(attn: &Vb) -> &'static PartNames {
    if attn.has("query.weight") && !attn.has("to_q.weight") {
        &LEGACY_NAMES
    } else {
        &NAMES
    }
}

/// `decoder.*` after `decoder.conv_in` (`x`, at the coarsest level's width) to the image.
pub fn decoder(g: &mut Graph, dvb: &Vb, dims: &VaeDims, x: &str, grid: usize) -> Result<Val> {
    let a = &dims.arch;
    let groups = a.norm_groups;
    let levels = dims.level_channels.len();
    let mut ch = dims.level_channels[levels - 1];
    let mut hw = grid;
    let mid = dvb.pp("mid_block");
    let resnets = mid.pp("resnets");
    let mut h = resnet_block(g, &resnets.pp(0), &NAMES, x, (ch, ch), groups, hw)?;
    if a.mid_attention {
        let attn = mid.pp("attentions").pp(0);
        h = attn_block(g, &attn, names_of(&attn), &h, ch, groups, hw)?;
    }
    h = resnet_block(g, &resnets.pp(1), &NAMES, &h, (ch, ch), groups, hw)?;
    for i in 0..levels {
        // Up block i is level `levels - 1 - i` of the LDM numbering the dims use.
        let l = levels - 1 - i;
        let up = dvb.pp("up_blocks").pp(i);
        let cout = dims.level_channels[l];
        for b in 0..=a.num_res_blocks {
            h = resnet_block(
                g,
                &up.pp("resnets").pp(b),
                &NAMES,
                &h,
                (ch, cout),
                groups,
                hw,
            )?;
            ch = cout;
            if a.attn_levels.contains(&l) {
                let attn = up.pp("attentions").pp(b);
                h = attn_block(g, &attn, names_of(&attn), &h, ch, groups, hw)?;
            }
        }
        if i + 1 != levels {
            h = upsample(g, &up.pp("upsamplers").pp(0), &h, ch)?;
            hw *= 2;
        }
    }
    output(g, dvb, "conv_norm_out", &h, ch, groups, hw)
}
