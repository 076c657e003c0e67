//! Seeded RNG and byte-level mutations.

/// xorshift64* seeded through splitmix64: small, fast, deterministic everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`; 0 gives 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

const INTERESTING_8: &[u8] = &[0, 1, 2, 0x10, 0x20, 0x40, 0x7f, 0x80, 0x81, 0xfe, 0xff];
const INTERESTING_16: &[u16] = &[0, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xfffe, 0xffff];
const INTERESTING_32: &[u32] = &[
    0,
    0x7f,
    0x100,
    0x1_0000,
    0x100_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
];
const INTERESTING_64: &[u64] = &[
    0,
    1 << 32,
    1 << 40,
    1 << 53,
    1 << 62,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

fn interesting(rng: &mut Rng) -> Vec<u8> {
    let be = rng.below(4) == 0;
    let v: Vec<u8> = match rng.below(4) {
        0 => vec![INTERESTING_8[rng.below(INTERESTING_8.len())]],
        1 => INTERESTING_16[rng.below(INTERESTING_16.len())]
            .to_le_bytes()
            .to_vec(),
        2 => INTERESTING_32[rng.below(INTERESTING_32.len())]
            .to_le_bytes()
            .to_vec(),
        _ => INTERESTING_64[rng.below(INTERESTING_64.len())]
            .to_le_bytes()
            .to_vec(),
    };
    if be {
        v.into_iter().rev().collect()
    } else {
        v
    }
}

/// A random position, biased towards the start (headers live there).
fn pos(rng: &mut Rng, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    if rng.below(3) == 0 {
        rng.below(len.min(64))
    } else {
        rng.below(len)
    }
}

fn overwrite(out: &mut [u8], at: usize, bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        if let Some(slot) = out.get_mut(at + i) {
            *slot = *b;
        }
    }
}

/// Applies one to eight stacked mutations to `input`. `corpus` supplies splice partners
/// and `dict` format-specific tokens; the result is at most `max_len` bytes.
pub fn mutate(
    rng: &mut Rng,
    input: &[u8],
    corpus: &[Vec<u8>],
    dict: &[&[u8]],
    max_len: usize,
) -> Vec<u8> {
    let mut out = input.to_vec();
    // 1, 2, 4 or 8 mutations, mostly few.
    let rounds = 1usize << rng.below(4).min(rng.below(4));
    for _ in 0..rounds {
        let len = out.len();
        match rng.below(13) {
            0 if len > 0 => {
                let p = pos(rng, len);
                out[p] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let p = pos(rng, len);
                out[p] = rng.byte();
            }
            2 if len > 0 => {
                let v = interesting(rng);
                let p = pos(rng, len);
                overwrite(&mut out, p, &v);
            }
            3 => {
                let v = interesting(rng);
                let p = pos(rng, len + 1);
                out.splice(p..p, v);
            }
            4 if len > 0 => {
                // Truncate.
                out.truncate(rng.below(len));
            }
            5 if len > 1 => {
                // Delete a range.
                let a = rng.below(len);
                let n = 1 + rng.below((len - a).min(256));
                out.drain(a..a + n);
            }
            6 => {
                // Insert random bytes.
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
                let p = pos(rng, len + 1);
                out.splice(p..p, bytes);
            }
            7 if len > 1 => {
                // Duplicate a range somewhere else.
                let a = rng.below(len);
                let n = 1 + rng.below((len - a).min(512));
                let chunk = out[a..a + n].to_vec();
                let p = rng.below(len + 1);
                out.splice(p..p, chunk);
            }
            8 if !corpus.is_empty() => {
                // Splice: our prefix, another input's suffix.
                let other = &corpus[rng.below(corpus.len())];
                let a = rng.below(len + 1);
                let b = rng.below(other.len() + 1);
                out.truncate(a);
                out.extend_from_slice(&other[b..]);
            }
            9 | 10 if !dict.is_empty() => {
                let tok = dict[rng.below(dict.len())];
                let p = pos(rng, len + 1);
                if rng.below(2) == 0 {
                    out.splice(p..p, tok.iter().copied());
                } else {
                    overwrite(&mut out, p, tok);
                }
            }
            11 if len > 1 => {
                // Swap two bytes.
                let (a, b) = (rng.below(len), rng.below(len));
                out.swap(a, b);
            }
            _ if len > 0 => {
                // Add or subtract a small amount to a byte.
                let p = pos(rng, len);
                let d = 1 + rng.below(16) as u8;
                out[p] = if rng.below(2) == 0 {
                    out[p].wrapping_add(d)
                } else {
                    out[p].wrapping_sub(d)
                };
            }
            _ => out.push(rng.byte()),
        }
    }
    out.truncate(max_len);
    out
}

/// A structure-aware mutation for JSON inputs, which byte mutations mostly turn into
/// invalid JSON: `None` when `input` is not JSON; otherwise one to three changes anywhere
/// in the tree (a value replaced by one of `values`, JSON texts, or a number nudged; an
/// object member removed, or added under one of `keys`; an array element removed or
/// inserted), written back as JSON.
pub fn mutate_json(rng: &mut Rng, input: &[u8], keys: &[&str], values: &[&str]) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(input).ok()?;
    for _ in 0..1 + rng.below(3) {
        mutate_value(rng, &mut v, keys, values, 0);
    }
    serde_json::to_vec(&v).ok()
}

fn json_value(rng: &mut Rng, values: &[&str]) -> serde_json::Value {
    match values.get(rng.below(values.len())) {
        Some(text) => serde_json::from_str(text).unwrap_or(serde_json::Value::Null),
        None => serde_json::Value::Null,
    }
}

/// A number near `n` or at an edge: one off, negated, doubled, halved, zero.
fn nudge(rng: &mut Rng, n: &serde_json::Number) -> serde_json::Value {
    use serde_json::json;
    if let Some(i) = n.as_i64() {
        match rng.below(6) {
            0 => json!(i.wrapping_sub(1)),
            1 => json!(i.wrapping_add(1)),
            2 => json!(i.wrapping_neg()),
            3 => json!(i.wrapping_mul(2)),
            4 => json!(i / 2),
            _ => json!(0),
        }
    } else if let Some(u) = n.as_u64() {
        json!(u.wrapping_add(1))
    } else {
        let f = n.as_f64().unwrap_or(0.0);
        let g = match rng.below(5) {
            0 => -f,
            1 => f * 2.0,
            2 => f / 1e3,
            3 => f + 1e-9,
            _ => 0.0,
        };
        json!(g)
    }
}

fn mutate_value(
    rng: &mut Rng,
    v: &mut serde_json::Value,
    keys: &[&str],
    values: &[&str],
    depth: usize,
) {
    use serde_json::Value;
    let descend = depth < 8 && rng.below(4) != 0;
    match v {
        Value::Object(m) if descend && !m.is_empty() => {
            let key = m
                .keys()
                .nth(rng.below(m.len()))
                .cloned()
                .unwrap_or_default();
            match rng.below(8) {
                0 => {
                    m.remove(&key);
                }
                1 if !keys.is_empty() => {
                    let k = keys[rng.below(keys.len())];
                    m.insert(k.to_string(), json_value(rng, values));
                }
                _ => {
                    if let Some(child) = m.get_mut(&key) {
                        mutate_value(rng, child, keys, values, depth + 1);
                    }
                }
            }
        }
        Value::Array(a) if descend && !a.is_empty() => match rng.below(6) {
            0 => {
                a.remove(rng.below(a.len()));
            }
            1 => {
                let i = rng.below(a.len() + 1);
                a.insert(i, json_value(rng, values));
            }
            _ => {
                let i = rng.below(a.len());
                mutate_value(rng, &mut a[i], keys, values, depth + 1);
            }
        },
        Value::Number(n) if rng.below(2) == 0 => *v = nudge(rng, n),
        _ => *v = json_value(rng, values),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic() {
        let seed = b"hello, world".to_vec();
        let run = |s| {
            let mut r = Rng::new(s);
            (0..100)
                .map(|_| mutate(&mut r, &seed, std::slice::from_ref(&seed), &[b"tok"], 64))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
        assert!(run(5).iter().all(|m| m.len() <= 64));
    }

    #[test]
    fn json_mutations_stay_json_and_change_the_input() {
        let seed = br#"{"a": [1, 2.5, "x"], "b": {"c": true}, "n": 32}"#;
        let run = |s| {
            let mut r = Rng::new(s);
            (0..200)
                .map(|_| mutate_json(&mut r, seed, &["k"], &["null", "[]", "0"]).unwrap())
                .collect::<Vec<_>>()
        };
        let out = run(1);
        assert_eq!(out, run(1));
        let original: serde_json::Value = serde_json::from_slice(seed).unwrap();
        let changed = out
            .iter()
            .map(|m| serde_json::from_slice::<serde_json::Value>(m).unwrap())
            .filter(|v| *v != original)
            .count();
        assert!(changed > 150, "only {changed} of 200 changed");
        assert!(mutate_json(&mut Rng::new(1), b"{not json", &[], &[]).is_none());
    }
}
