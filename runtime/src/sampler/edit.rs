//! Editing by teacher forcing (`tests/fixtures/README.md`, "Editing"): FlowAR's scales are
//! the VAE latent area-downsampled to each grid, so a source image's tokens are known at
//! every scale. Per scale `k` an [`EditPlan`] holds the source's tokens `G_k` and which
//! tokens are known; the scale loop regenerates only the others and, after every solver
//! step, sets the known ones on the straight flow-matching path
//! `(1 - t_next) * G_k + t_next * noise_k` (see [`EditPlan::force`]), so at `t = 0` they
//! equal `G_k` exactly.
//!
//! One rule covers in-painting (regenerate under a mask), out-painting (the mask inverted),
//! class-conditional editing (in-painting with another class) and variations (scales
//! `0..keep_scales` known whole, the finer ones regenerated).

use crate::error::{Error, Result};

use super::upsample::area_plane;

/// Which pixels of one source image are regenerated: `[H, W]` grey values, any value above
/// 0 counts (white = regenerate), as the rule says.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    pub size: usize,
    pub values: Vec<u8>,
}

impl Mask {
    /// The mask the other way round (`255 - v`): in-painting becomes out-painting.
    pub fn inverted(&self) -> Mask {
        Mask {
            size: self.size,
            values: self.values.iter().map(|v| 255 - v).collect(),
        }
    }

    /// Whether any pixel is to be regenerated.
    pub fn any(&self) -> bool {
        self.values.iter().any(|&v| v > 0)
    }

    /// `area_downsample(mask / 255, side) > 0`: a cell is regenerated when any of its pixels
    /// is, which is what the area average of non-negative values says, without rounding.
    pub fn regenerated_cells(&self, side: usize) -> Vec<bool> {
        let n = self.size;
        let window = |o: usize| (o * n / side, ((o + 1) * n).div_ceil(side));
        let mut out = vec![false; side * side];
        for oy in 0..side {
            let (y0, y1) = window(oy);
            for ox in 0..side {
                let (x0, x1) = window(ox);
                out[oy * side + ox] =
                    (y0..y1).any(|y| self.values[y * n + x0..y * n + x1].iter().any(|&v| v > 0));
            }
        }
        out
    }
}

/// One scale's known tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownScale {
    /// `G_k`, `[batch, N_k, C]`: the source tokens area-downsampled to this scale.
    pub tokens: Vec<f32>,
    /// `[batch, N_k]`, true where the token is known (kept), false where regenerated.
    pub known: Vec<bool>,
}

impl KnownScale {
    /// Whether every token of every image is known: the flow head has nothing to do.
    pub fn all_known(&self) -> bool {
        self.known.iter().all(|&k| k)
    }

    /// Whether any token is known: the state needs forcing after each step.
    pub fn any_known(&self) -> bool {
        self.known.iter().any(|&k| k)
    }
}

/// What an edit keeps of its source images, per scale, coarse to fine.
#[derive(Debug, Clone, PartialEq)]
pub struct EditPlan {
    pub scales: Vec<KnownScale>,
    /// Images in the batch.
    pub batch: usize,
    pub channels: usize,
}

impl EditPlan {
    /// The plan for `tokens [batch, C, G, G]` (the encoder's, as the sampler's tokens): per
    /// image an optional mask (`None`: no mask, every token regenerated from scale
    /// `keep_scales` on), and scales `0..keep_scales` known whole.
    pub fn new(
        tokens: &[f32],
        batch: usize,
        channels: usize,
        grid: usize,
        scales: &[usize],
        masks: &[Option<Mask>],
        keep_scales: usize,
    ) -> Result<EditPlan> {
        let nn = grid * grid;
        if tokens.len() != batch * channels * nn {
            return Err(Error::BadArgument(format!(
                "source tokens hold {} values, expected [{batch}, {channels}, {grid}, {grid}]",
                tokens.len()
            )));
        }
        if masks.len() != batch {
            return Err(Error::BadArgument(format!(
                "{} masks for {batch} images",
                masks.len()
            )));
        }
        if keep_scales > scales.len() {
            return Err(Error::BadArgument(format!(
                "keep_scales {keep_scales} exceeds the model's {} scales {scales:?}",
                scales.len()
            )));
        }
        let mut out = Vec::with_capacity(scales.len());
        let mut small = Vec::new();
        for (k, &side) in scales.iter().enumerate() {
            let n = side * side;
            let mut g = vec![0f32; batch * n * channels];
            let mut known = vec![true; batch * n];
            small.resize(n, 0.0);
            for b in 0..batch {
                for c in 0..channels {
                    let plane = &tokens[(b * channels + c) * nn..(b * channels + c + 1) * nn];
                    area_plane(plane, grid, side, &mut small);
                    for (p, &v) in small.iter().enumerate() {
                        g[(b * n + p) * channels + c] = v;
                    }
                }
                if k >= keep_scales {
                    let row = &mut known[b * n..(b + 1) * n];
                    match &masks[b] {
                        None => row.fill(false),
                        Some(m) => {
                            for (slot, regen) in row.iter_mut().zip(m.regenerated_cells(side)) {
                                *slot = !regen;
                            }
                        }
                    }
                }
            }
            out.push(KnownScale { tokens: g, known });
        }
        Ok(EditPlan {
            scales: out,
            batch,
            channels,
        })
    }

    /// The plan for a batch whose row `r` edits source `rows[r]`: `tokens` holds every
    /// source's tokens `[sources, C, G, G]` (each encoded once), `masks` one per source.
    pub fn for_rows(
        tokens: &[f32],
        masks: &[Option<Mask>],
        keep_scales: usize,
        rows: &[usize],
        m: &crate::manifest::Manifest,
    ) -> Result<EditPlan> {
        let (c, grid) = (m.latent_channels, m.final_grid());
        let per = c * grid * grid;
        let sources = masks.len();
        if tokens.len() != sources * per {
            return Err(Error::BadArgument(format!(
                "{} source token values for {sources} sources of [{c}, {grid}, {grid}]",
                tokens.len()
            )));
        }
        if let Some(&r) = rows.iter().find(|&&r| r >= sources) {
            return Err(Error::BadArgument(format!(
                "row source {r} is past the {sources} source images"
            )));
        }
        if let Some((i, mk)) = masks
            .iter()
            .enumerate()
            .find_map(|(i, mk)| mk.as_ref().map(|mk| (i, mk)))
            .filter(|(_, mk)| mk.size != m.image_size || mk.values.len() != mk.size * mk.size)
        {
            return Err(Error::BadArgument(format!(
                "mask {i} is {0}x{0}; this model edits {1}x{1} images",
                mk.size, m.image_size
            )));
        }
        let row_tokens: Vec<f32> = rows
            .iter()
            .flat_map(|&r| tokens[r * per..(r + 1) * per].iter().copied())
            .collect();
        let row_masks: Vec<Option<Mask>> = rows.iter().map(|&r| masks[r].clone()).collect();
        EditPlan::new(
            &row_tokens,
            rows.len(),
            c,
            grid,
            &m.scales,
            &row_masks,
            keep_scales,
        )
    }

    pub fn scale(&self, k: usize) -> &KnownScale {
        &self.scales[k]
    }

    /// Sets the known tokens of the state `x [batch, N_k, C]` (float64, conditional rows)
    /// at time `t` on the straight path from `noise` (this scale's starting noise, its
    /// conditional rows first) to `G_k`: `(1 - t) * G_k + t * noise`.
    pub fn force(&self, k: usize, x: &mut [f64], noise: &[f32], t: f64) {
        let s = &self.scales[k];
        let c = self.channels;
        for (tok, _) in s.known.iter().enumerate().filter(|(_, &kn)| kn) {
            for ch in tok * c..(tok + 1) * c {
                x[ch] = (1.0 - t) * s.tokens[ch] as f64 + t * noise[ch] as f64;
            }
        }
    }

    /// Checks the plan against a batch of `batch` images of a model with `scales` and
    /// `channels`.
    pub fn validate(&self, batch: usize, scales: &[usize], channels: usize) -> Result<()> {
        let fits = self.batch == batch
            && self.channels == channels
            && self.scales.len() == scales.len()
            && self.scales.iter().zip(scales).all(|(s, side)| {
                s.known.len() == batch * side * side
                    && s.tokens.len() == batch * side * side * channels
            });
        if fits {
            Ok(())
        } else {
            Err(Error::BadArgument(format!(
                "the edit plan (for {} images, {} channels, {} scales) does not fit this request \
                 ({batch} images) and model ({channels} channels, scales {scales:?})",
                self.batch,
                self.channels,
                self.scales.len()
            )))
        }
    }

    /// Tokens regenerated per scale (over the batch): where the flow head does work.
    pub fn regenerated_per_scale(&self) -> Vec<usize> {
        self.scales
            .iter()
            .map(|s| s.known.iter().filter(|&&k| !k).count())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_is_regenerated_when_any_pixel_is_masked() {
        let mut values = vec![0u8; 16 * 16];
        values[5 * 16 + 9] = 1; // one faint pixel in cell (1, 2) of a 4x4 grid
        let m = Mask { size: 16, values };
        let cells = m.regenerated_cells(4);
        assert_eq!(cells.iter().filter(|&&c| c).count(), 1);
        assert!(cells[4 + 2]);
        assert!(m.regenerated_cells(1)[0]);
        assert_eq!(
            m.inverted()
                .regenerated_cells(4)
                .iter()
                .filter(|&&c| c)
                .count(),
            16
        );
    }

    #[test]
    fn forcing_reaches_the_source_tokens_at_t0() {
        let tokens: Vec<f32> = (0..2 * 4).map(|v| v as f32).collect(); // [1, 2, 2, 2]
        let plan = EditPlan::new(&tokens, 1, 2, 2, &[1, 2], &[None], 1).unwrap();
        assert!(plan.scale(0).all_known());
        assert!(!plan.scale(1).any_known());
        // Scale 0 is the area average of each channel.
        assert_eq!(plan.scale(0).tokens, vec![1.5, 5.5]);
        let mut x = vec![9.0f64; 2];
        plan.force(0, &mut x, &[3.0, 4.0], 0.0);
        assert_eq!(x, vec![1.5, 5.5]);
        plan.force(0, &mut x, &[3.0, 4.0], 1.0);
        assert_eq!(x, vec![3.0, 4.0]);
    }
}
