//! The decoder in the latent-diffusion key layout (`decoder.mid.block_1`, `decoder.up.{l}`
//! numbered from the finest level, `nin_shortcut`, attention `q`/`k`/`v`/`proj_out`).

use super::{output, upsample};
use crate::arch::VaeDims;
use crate::error::Result;
use crate::graphs::vae_blocks::{attn_block, mid_block, resnet_block, LDM_NAMES as NAMES};
use crate::onnx::{Graph, Val};
use crate::weights::Vb;

/// `decoder.*` after `decoder.conv_in` (`x`, at the coarsest level's width) to the image.
pub fn decoder(g: &mut Graph, dvb: &Vb, dims: &VaeDims, x: &str, grid: usize) -> Result<Val> {
    let a = &dims.arch;
    let groups = a.norm_groups;
    let levels = dims.level_channels.len();
    let mut ch = dims.level_channels[levels - 1];
    let mut hw = grid;
    let mid = dvb.pp("mid");
    let parts = [mid.pp("block_1"), mid.pp("attn_1"), mid.pp("block_2")];
    let mut h = mid_block(g, parts, &NAMES, &NAMES, a.mid_attention, x, ch, groups, hw)?;
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
