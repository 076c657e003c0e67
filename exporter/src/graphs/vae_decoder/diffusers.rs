//! The decoder in diffusers' `AutoencoderKL` key layout (`decoder.mid_block.resnets.{0,1}`,
//! `decoder.up_blocks.{i}` numbered from the coarsest level, `conv_shortcut`, attention
//! `group_norm` / `to_q` / `to_k` / `to_v` / `to_out.0` as linears, or the older
//! `query` / `key` / `value` / `proj_attn` names that diffusers still loads).

use super::{output, upsample};
use crate::arch::VaeDims;
use crate::error::Result;
use crate::graphs::vae_blocks::{
    attn_block, diffusers_attn_names as names_of, mid_block, resnet_block, DIFFUSERS_NAMES as NAMES,
};
use crate::onnx::{Graph, Val};
use crate::weights::Vb;

/// `decoder.*` after `decoder.conv_in` (`x`, at the coarsest level's width) to the image.
pub fn decoder(g: &mut Graph, dvb: &Vb, dims: &VaeDims, x: &str, grid: usize) -> Result<Val> {
    let a = &dims.arch;
    let groups = a.norm_groups;
    let levels = dims.level_channels.len();
    let mut ch = dims.level_channels[levels - 1];
    let mut hw = grid;
    let mid = dvb.pp("mid_block");
    let attn = mid.pp("attentions").pp(0);
    let attn_names = names_of(&attn);
    let parts = [mid.pp("resnets").pp(0), attn, mid.pp("resnets").pp(1)];
    let mut h = mid_block(
        g,
        parts,
        &NAMES,
        attn_names,
        a.mid_attention,
        x,
        ch,
        groups,
        hw,
    )?;
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
