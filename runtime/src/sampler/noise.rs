//! Starting noise for every scale: seeded per image, or replayed from a file.
//!
//! RNG: image `k` (its global index in the run) draws from ChaCha8 seeded with
//! `seed_from_u64(seed)` on stream `k`. Per scale, in order, it draws `N_i * C` standard
//! normals (rand_distr's `StandardNormal`, as f32) for its conditional row, then, when CFG
//! is on, `N_i * C` more for its null row. So image `k` is the same whatever the batch size
//! or shard, and the null rows never shift the conditional ones.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};

/// Where starting noise comes from.
pub enum NoiseSource {
    Seeded {
        seed: u64,
    },
    /// Recorded noise, `{prefix}s{i}` of shape `[rows, N_i, C]` per scale.
    Recorded(Vec<Vec<f32>>),
}

/// Draws each image's noise for every scale: `out[i]` is `[rows, N_i, C]` with conditional
/// rows first, then null rows when `cfg_rows`.
pub fn seeded(
    seed: u64,
    image_indices: &[u64],
    scales: &[usize],
    channels: usize,
    cfg_rows: bool,
) -> Vec<Vec<f32>> {
    let b = image_indices.len();
    let rows = if cfg_rows { 2 * b } else { b };
    let mut out: Vec<Vec<f32>> = scales
        .iter()
        .map(|s| vec![0f32; rows * s * s * channels])
        .collect();
    for (j, &k) in image_indices.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(k);
        for (i, s) in scales.iter().enumerate() {
            let n = s * s * channels;
            let halves: &[usize] = if cfg_rows { &[j, b + j] } else { &[j] };
            for &row in halves {
                for v in &mut out[i][row * n..(row + 1) * n] {
                    *v = StandardNormal.sample(&mut rng);
                }
            }
        }
    }
    out
}

/// Loads recorded noise from a safetensors file with tensors `{prefix}s{i}`, checking shapes.
pub fn load_recorded(
    path: &Path,
    prefix: &str,
    rows: usize,
    scales: &[usize],
    channels: usize,
) -> Result<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::BadArgument(format!(
            "{}: not a safetensors noise file: {e}",
            path.display()
        ))
    })?;
    let mut out = Vec::with_capacity(scales.len());
    for (i, s) in scales.iter().enumerate() {
        let key = format!("{prefix}s{i}");
        let t = st.tensor(&key).map_err(|_| {
            Error::BadArgument(format!(
                "{}: missing tensor `{key}` of shape [{rows}, {}, {channels}]",
                path.display(),
                s * s
            ))
        })?;
        let want = vec![rows, s * s, channels];
        if t.dtype() != safetensors::Dtype::F32 || t.shape() != want.as_slice() {
            return Err(Error::BadArgument(format!(
                "{}: tensor `{key}` is {:?} {:?}, expected F32 {want:?}",
                path.display(),
                t.dtype(),
                t.shape()
            )));
        }
        out.push(
            t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_noise_does_not_depend_on_batch() {
        let all = seeded(7, &[0, 1, 2], &[1, 2], 4, true);
        let one = seeded(7, &[2], &[1, 2], 4, true);
        // image 2 is row 2 (cond) and row 5 (null) of the batch of three.
        assert_eq!(&all[1][2 * 16..3 * 16], &one[1][..16]);
        assert_eq!(&all[1][5 * 16..6 * 16], &one[1][16..32]);
        assert_ne!(&all[1][..16], &one[1][..16]);
    }
}

#[cfg(test)]
mod pinned {
    /// The first draws for seed 42, images 0 and 7, pinned: a change to the RNG, its
    /// seeding or stream layout, or the normal sampler (a dependency bump) would silently
    /// change every image anyone generates, so it must show up here first.
    #[test]
    fn seeded_noise_is_pinned() {
        let n = super::seeded(42, &[0, 7], &[1, 2], 2, true);
        // Scale 0: image 0's conditional row, image 7's, then their null rows.
        assert_eq!(
            n[0],
            [
                0.47798124,
                1.3340706,
                -0.7210298,
                -0.71347094,
                -0.21086669,
                0.4763469,
                0.90295106,
                -0.021366028
            ]
        );
        // Scale 1: image 0's conditional row starts, and its null row (row 2) starts.
        assert_eq!(n[1][..4], [-0.5120906, -0.93397844, -1.0023779, 0.9166636]);
        assert_eq!(n[1][16..20], [2.032184, 0.3553947, 0.5732135, -0.83012974]);
    }
}
