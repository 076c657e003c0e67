//! The sampler's schedule: the time grid per scale and the CFG ramp over scales.

/// The reference time grid (float64): `linspace(1, 0, 51)` for 50 steps, otherwise
/// `linspace(1, 0.3, n/2) ++ linspace(0.25, 0, n/2 + 1)`, so 25 asks for 24 Euler steps.
pub fn time_grid(steps: usize) -> Vec<f64> {
    fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
        match n {
            0 => vec![],
            1 => vec![a],
            _ => {
                // numpy's formula: i * step + start, with the end point exact.
                let step = (b - a) / (n - 1) as f64;
                (0..n)
                    .map(|i| if i == n - 1 { b } else { i as f64 * step + a })
                    .collect()
            }
        }
    }
    if steps == 50 {
        return linspace(1.0, 0.0, 51);
    }
    let mut g = linspace(1.0, 0.3, steps / 2);
    g.extend(linspace(0.25, 0.0, steps / 2 + 1));
    g
}

/// Solver steps as a user writes them: one count for every scale (`25`), or one per
/// scale, coarse to fine (`25,25,20,12,8`), each scale's time grid then following
/// [`time_grid`] for its own count. Fewer steps at the fine scales, where most time goes,
/// trade a little fidelity for speed (training-free, as DiSA reports for FlowAR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Steps {
    Uniform(usize),
    PerScale(Vec<usize>),
}

impl std::str::FromStr for Steps {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> crate::error::Result<Steps> {
        let counts = s
            .split(',')
            .map(|part| {
                part.trim().parse::<usize>().map_err(|_| {
                    crate::error::Error::BadArgument(format!(
                        "steps `{s}`: `{}` is not a whole number (give one count, or one per scale separated by commas)",
                        part.trim()
                    ))
                })
            })
            .collect::<crate::error::Result<Vec<usize>>>()?;
        Ok(match counts.as_slice() {
            [one] => Steps::Uniform(*one),
            _ => Steps::PerScale(counts),
        })
    }
}

impl std::fmt::Display for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Steps::Uniform(n) => write!(f, "{n}"),
            Steps::PerScale(v) => {
                let parts: Vec<String> = v.iter().map(|n| n.to_string()).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

/// Guidance weight at scale `i` of `n`: linear from 1 at the first scale to `cfg` at the last.
pub fn cfg_at_scale(cfg: f64, i: usize, n: usize) -> f64 {
    if n <= 1 {
        return cfg;
    }
    (cfg - 1.0) * i as f64 / (n - 1) as f64 + 1.0
}

/// Whether a model evaluation at time `t` is guided.
pub fn guided(w: f64, t: f64, guidance: f64) -> bool {
    w > 1.0 && (0.0..=guidance).contains(&t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_as_one_count_or_one_per_scale() {
        assert_eq!("25".parse::<Steps>().unwrap(), Steps::Uniform(25));
        let s: Steps = "25, 25,20,12,8".parse().unwrap();
        assert_eq!(s, Steps::PerScale(vec![25, 25, 20, 12, 8]));
        assert_eq!(s.to_string(), "25,25,20,12,8");
        for bad in ["", "25,", "a", "25,-1", "2.5"] {
            let e = bad.parse::<Steps>().unwrap_err().to_string();
            assert!(e.contains("not a whole number"), "{bad}: {e}");
        }
    }

    #[test]
    fn twenty_five_steps_make_twenty_four_intervals() {
        let g = time_grid(25);
        assert_eq!(g.len(), 25);
        assert_eq!(g[0], 1.0);
        assert_eq!(*g.last().unwrap(), 0.0);
        assert!((g[11] - 0.3).abs() < 1e-15 && (g[12] - 0.25).abs() < 1e-15);
        assert_eq!(time_grid(50).len(), 51);
    }

    #[test]
    fn ramp_is_one_then_cfg() {
        assert_eq!(cfg_at_scale(4.3, 0, 5), 1.0);
        assert!((cfg_at_scale(4.3, 4, 5) - 4.3).abs() < 1e-12);
        assert!(!guided(1.0, 0.5, 0.9));
        assert!(!guided(2.0, 0.95, 0.9));
        assert!(guided(2.0, 0.9, 0.9));
    }
}
