//! The decoder in the latent-diffusion key layout (`decoder.mid.block_1`, `decoder.up.{l}`
//! numbered from the finest level, `nin_shortcut`, attention `q`/`k`/`v`/`proj_out`).

use super::{attn_block, output, resnet_block, upsample, PartNames};
use crate::arch::VaeDims;
use crate::error::Result;
use crate::onnx::{Graph, Val};
use crate::weights::Vb;

const NAMES: PartNames = PartNames {
    shortcut: "nin_shortcut",
    attn_norm: "norm",
    attn_proj: ["q", "k", "v", "proj_out"],
};

/// `decoder.*` after `decoder.conv_in` (`x`, at the coarsest level's width) to the image.
pub fn decoder(g: &mut Graph, dvb: &Vb, dims: &VaeDims, x: &str, grid: usize) -> Result<Val> {
    let a = &dims.arch;
    let groups = a.norm_groups;
    let levels = dims.level_channels.len();
    let mut ch = dims.level_channels[levels - 1];
    let mut hw = grid;
    let mid = dvb.pp("mid");
    let mut h = resnet_block(g, &mid.pp("block_1"), &NAMES, x, (ch, ch), groups, hw)?;
    if a.mid_attention {
        h = attn_block(g, &mid.pp("attn_1"), &NAMES, &h, ch, groups, hw)?;
    }
    h = resnet_block(g, &mid.pp("block_2"), &NAMES, &h, (ch, ch), groups, hw)?;
    for l in (0..levels).rev() {
        let up = dvb.pp("up").pp(l);
        let cout = dims.level_channels[l];
        for b in 0..=a.num_res_blocks {
            h = resnet_block(g, &up.pp("block").pp(b), &NAMES, &h, (ch, cout), groups, hw)?;
            ch = cout;
            if a.attn_levels.contains(&l) {
                h = attn_block(g, &up.pp("attn").pp(b), &NAMES, &h, ch, groups, hw)?;
            }
        }
        if l != 0 {
            h = upsample(g, &up.pp("upsample"), &h, ch)?;
            hw *= 2;
        }
    }
    output(g, dvb, "norm_out", &h, ch, groups, hw)
}
