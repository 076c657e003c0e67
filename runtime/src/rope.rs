//! 2-D rotary position tables, computed here and fed to the graphs per scale.
//!
//! For `n = r*r` tokens and head size `hd`: `f_k = theta^(-2k/(hd/2))` for `k < hd/4`,
//! grid coordinate `p = idx * grid_constant / r`, one axis's angles are
//! `[p f_0, p f_0, p f_1, p f_1, ...]`, and token `(row, col)` uses
//! `[angles(row), angles(col)]`. Arithmetic is float32, as in the reference.

/// `(cos, sin)`, each `[side*side, head_dim]` row-major.
pub fn tables(
    side: usize,
    head_dim: usize,
    theta: f64,
    grid_constant: f64,
) -> (Vec<f32>, Vec<f32>) {
    let quarter = head_dim / 4;
    let half = (head_dim / 2) as f32;
    let freqs: Vec<f32> = (0..quarter)
        .map(|k| 1.0 / (theta as f32).powf((2 * k) as f32 / half))
        .collect();
    let step = grid_constant as f32 / side as f32;
    let axis = |idx: usize| -> Vec<f32> {
        let p = idx as f32 * step;
        freqs.iter().flat_map(|f| [p * f, p * f]).collect()
    };
    let n = side * side;
    let mut cos = Vec::with_capacity(n * head_dim);
    let mut sin = Vec::with_capacity(n * head_dim);
    for row in 0..side {
        let ar = axis(row);
        for col in 0..side {
            let ac = axis(col);
            for a in ar.iter().chain(ac.iter()) {
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    #[test]
    fn first_token_has_zero_angle_and_pairs_repeat() {
        let (cos, sin) = super::tables(4, 16, 10000.0, 16.0);
        assert_eq!(cos.len(), 16 * 16);
        assert!(cos[..16].iter().all(|&c| c == 1.0) && sin[..16].iter().all(|&s| s == 0.0));
        // token (0, 1): row half is zero angle, column half starts at p*f_0 = 4.
        let t = &sin[16..32];
        assert_eq!(t[0], 0.0);
        assert_eq!(t[8], 4f32.sin());
        assert_eq!(t[8], t[9]);
    }
}
