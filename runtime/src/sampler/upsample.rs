//! The step between scales: bicubic to the final grid, then area down to the next scale,
//! exactly as PyTorch's `interpolate` computes them in float32.

/// PyTorch's cubic convolution constant.
const A: f32 = -0.75;

fn cubic1(x: f32) -> f32 {
    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
}

fn cubic2(x: f32) -> f32 {
    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
}

/// Source taps and weights for one output coordinate (`align_corners=False`).
fn cubic_taps(dst: usize, in_size: usize, out_size: usize) -> ([usize; 4], [f32; 4]) {
    let scale = in_size as f32 / out_size as f32;
    let real = scale * (dst as f32 + 0.5) - 0.5;
    let base = real.floor();
    let t = real - base;
    let w = [cubic2(t + 1.0), cubic1(t), cubic1(1.0 - t), cubic2(2.0 - t)];
    let mut idx = [0usize; 4];
    for (k, slot) in idx.iter_mut().enumerate() {
        let i = base as i64 - 1 + k as i64;
        *slot = i.clamp(0, in_size as i64 - 1) as usize;
    }
    (idx, w)
}

/// Bicubic resize of one `[h_in, w_in]` plane to `[out, out]`.
fn bicubic_plane(src: &[f32], inp: usize, out: usize, dst: &mut [f32]) {
    let taps: Vec<_> = (0..out).map(|o| cubic_taps(o, inp, out)).collect();
    for (oy, (yi, yw)) in taps.iter().enumerate() {
        for (ox, (xi, xw)) in taps.iter().enumerate() {
            let mut acc = 0f32;
            for k in 0..4 {
                let row = &src[yi[k] * inp..(yi[k] + 1) * inp];
                let r = row[xi[0]] * xw[0]
                    + row[xi[1]] * xw[1]
                    + row[xi[2]] * xw[2]
                    + row[xi[3]] * xw[3];
                acc += r * yw[k];
            }
            dst[oy * out + ox] = acc;
        }
    }
}

/// Adaptive average pooling ("area") of one `[inp, inp]` plane to `[out, out]`.
pub(crate) fn area_plane(src: &[f32], inp: usize, out: usize, dst: &mut [f32]) {
    let window = |o: usize| (o * inp / out, ((o + 1) * inp).div_ceil(out));
    for oy in 0..out {
        let (y0, y1) = window(oy);
        for ox in 0..out {
            let (x0, x1) = window(ox);
            let mut acc = 0f32;
            for y in y0..y1 {
                for x in x0..x1 {
                    acc += src[y * inp + x];
                }
            }
            dst[oy * out + ox] = acc / ((y1 - y0) * (x1 - x0)) as f32;
        }
    }
}

/// `tokens [rows, s_in*s_in, C]` -> `[rows, s_out*s_out, C]`: bicubic to `grid`, then area.
pub fn next_scale_tokens(
    tokens: &[f32],
    rows: usize,
    channels: usize,
    s_in: usize,
    grid: usize,
    s_out: usize,
) -> Vec<f32> {
    let (n_in, n_out) = (s_in * s_in, s_out * s_out);
    let mut out = vec![0f32; rows * n_out * channels];
    let mut plane = vec![0f32; n_in];
    let mut big = vec![0f32; grid * grid];
    let mut small = vec![0f32; n_out];
    for r in 0..rows {
        for c in 0..channels {
            for (i, p) in plane.iter_mut().enumerate() {
                *p = tokens[(r * n_in + i) * channels + c];
            }
            bicubic_plane(&plane, s_in, grid, &mut big);
            area_plane(&big, grid, s_out, &mut small);
            for (i, v) in small.iter().enumerate() {
                out[(r * n_out + i) * channels + c] = *v;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_planes_stay_constant() {
        let t = vec![2.5f32; 4 * 3];
        let out = next_scale_tokens(&t, 1, 3, 2, 16, 4);
        assert!(out.iter().all(|v| (v - 2.5).abs() < 1e-6), "{out:?}");
    }

    #[test]
    fn cubic_weights_sum_to_one() {
        for o in 0..16 {
            let (_, w) = cubic_taps(o, 3, 16);
            assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }
}
