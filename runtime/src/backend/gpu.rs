//! Settings of the CUDA and TensorRT execution providers (what TensorRT builds and caches
//! is in [`super::tensorrt`]).
//!
//! Options are set by name (`GpuOptions::set`), so the CLI (`--gpu NAME=VALUE`) and the C
//! ABI (`flowar_options_set`) share one parser and one list of names.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// How cuDNN picks convolution algorithms (the VAE decoder is all convolutions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvSearch {
    /// Benchmark every algorithm once per shape: slowest first call, fastest after. Our
    /// shapes are fixed per model, so the search is paid once per session.
    #[default]
    Exhaustive,
    /// cuDNN's heuristics, no benchmarking.
    Heuristic,
    /// The default algorithm.
    Default,
}

/// CUDA and TensorRT settings. The device ordinal is [`super::BackendOptions::device_id`].
#[derive(Debug, Clone, PartialEq)]
pub struct GpuOptions {
    /// `mem_limit`: cap of onnxruntime's CUDA memory arena in bytes (`None`: no cap).
    pub memory_limit: Option<u64>,
    /// `cudnn_conv_algo_search`.
    pub conv_search: ConvSearch,
    /// `tf32`: TF32 tensor cores for float32 matmuls and convolutions on CUDA. Off by
    /// default: TF32 has a 10-bit mantissa and breaks the float32 verify bounds.
    pub tf32: bool,
    /// `trt_fp16`: let TensorRT pick float16 kernels (on by default; `false` opts out).
    pub trt_fp16: bool,
    /// `trt_cache_dir`: root of the engine and timing caches (default: see
    /// [`super::tensorrt::cache_root`]).
    pub trt_cache_dir: Option<PathBuf>,
    /// `trt_max_batch`: largest batch (images per call) the TensorRT profiles cover. The
    /// CLI sets it from `--batch-size`; a larger batch is refused before any work.
    pub trt_max_batch: usize,
    /// `trt_workspace`: TensorRT builder workspace in bytes (`None`: TensorRT's default).
    pub trt_workspace: Option<u64>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            memory_limit: None,
            conv_search: ConvSearch::default(),
            tf32: false,
            trt_fp16: true,
            trt_cache_dir: None,
            trt_max_batch: 1,
            trt_workspace: None,
        }
    }
}

/// Every option name [`GpuOptions::set`] accepts.
pub const GPU_OPTION_NAMES: &[&str] = &[
    "mem_limit",
    "cudnn_conv_algo_search",
    "tf32",
    "trt_fp16",
    "trt_cache_dir",
    "trt_max_batch",
    "trt_workspace",
];

fn bad(msg: String) -> Error {
    Error::BadArgument(msg)
}

/// `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`.
fn parse_bool(name: &str, v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(bad(format!(
            "GPU option `{name}`: `{v}` is not a boolean (true/false, 1/0, on/off)"
        ))),
    }
}

/// A byte count: a plain number or one with a unit (`512MiB`, `8GiB`, `2GB`, `64k`).
pub fn parse_bytes(name: &str, v: &str) -> Result<u64> {
    let s = v.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        u => {
            return Err(bad(format!(
            "GPU option `{name}`: unknown unit `{u}` in `{v}` (use B, KiB, MiB, GiB, KB, MB, GB)"
        )))
        }
    };
    let x: f64 = num
        .parse()
        .map_err(|_| bad(format!("GPU option `{name}`: `{v}` is not a size")))?;
    let bytes = x * mult as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(bad(format!(
            "GPU option `{name}`: `{v}` must be a positive size"
        )));
    }
    Ok(bytes as u64)
}

impl GpuOptions {
    /// Sets one option by name; an unknown name or a malformed value is an error naming
    /// both, and leaves the options unchanged.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        match name {
            "mem_limit" => self.memory_limit = Some(parse_bytes(name, value)?),
            "cudnn_conv_algo_search" => {
                self.conv_search = match value.to_ascii_lowercase().as_str() {
                    "exhaustive" => ConvSearch::Exhaustive,
                    "heuristic" => ConvSearch::Heuristic,
                    "default" => ConvSearch::Default,
                    _ => {
                        return Err(bad(format!(
                    "GPU option `{name}`: `{value}` is not one of exhaustive, heuristic, default"
                )))
                    }
                }
            }
            "tf32" => self.tf32 = parse_bool(name, value)?,
            "trt_fp16" => self.trt_fp16 = parse_bool(name, value)?,
            "trt_cache_dir" => {
                if value.is_empty() {
                    self.trt_cache_dir = None;
                } else {
                    self.trt_cache_dir = Some(PathBuf::from(value));
                }
            }
            "trt_max_batch" => {
                self.trt_max_batch = value
                    .parse::<usize>()
                    .ok()
                    .filter(|&b| (1..=4096).contains(&b))
                    .ok_or_else(|| {
                        bad(format!(
                            "GPU option `{name}`: `{value}` must be an integer in 1..=4096"
                        ))
                    })?
            }
            "trt_workspace" => self.trt_workspace = Some(parse_bytes(name, value)?),
            _ => {
                return Err(bad(format!(
                    "unknown GPU option `{name}` (known: {})",
                    GPU_OPTION_NAMES.join(", ")
                )))
            }
        }
        Ok(())
    }

    /// Applies `NAME=VALUE` pairs (the CLI's repeated `--gpu`).
    pub fn apply_pairs<S: AsRef<str>>(&mut self, pairs: &[S]) -> Result<()> {
        for p in pairs {
            let p = p.as_ref();
            let (name, value) = p.split_once('=').ok_or_else(|| {
                bad(format!(
                    "GPU option `{p}` must be NAME=VALUE (names: {})",
                    GPU_OPTION_NAMES.join(", ")
                ))
            })?;
            self.set(name.trim(), value.trim())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("x", "8GiB").unwrap(), 8 << 30);
        assert_eq!(parse_bytes("x", "512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("x", "2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_bytes("x", "1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("x", "1024").unwrap(), 1024);
        for bad in ["", "GiB", "-1GiB", "0", "8 parsecs", "1e99TiB"] {
            let e = parse_bytes("mem_limit", bad).unwrap_err().to_string();
            assert!(e.contains("mem_limit"), "{bad}: {e}");
        }
    }

    #[test]
    fn options_are_set_by_name() {
        let mut o = GpuOptions::default();
        assert!(o.trt_fp16 && !o.tf32 && o.trt_max_batch == 1);
        o.apply_pairs(&[
            "mem_limit=8GiB",
            "trt_fp16=false",
            "tf32=on",
            "cudnn_conv_algo_search=heuristic",
            "trt_cache_dir=/tmp/x",
            "trt_max_batch=16",
            "trt_workspace=4GiB",
        ])
        .unwrap();
        assert_eq!(o.memory_limit, Some(8 << 30));
        assert!(!o.trt_fp16 && o.tf32);
        assert_eq!(o.conv_search, ConvSearch::Heuristic);
        assert_eq!(
            o.trt_cache_dir.as_deref(),
            Some(std::path::Path::new("/tmp/x"))
        );
        assert_eq!(o.trt_max_batch, 16);
        assert_eq!(o.trt_workspace, Some(4 << 30));
        let before = o.clone();
        for (pair, needle) in [
            ("mem_limit", "NAME=VALUE"),
            ("fp16=1", "unknown GPU option `fp16`"),
            ("trt_fp16=maybe", "not a boolean"),
            ("trt_max_batch=0", "1..=4096"),
            ("cudnn_conv_algo_search=fast", "exhaustive"),
        ] {
            let e = o.apply_pairs(&[pair]).unwrap_err().to_string();
            assert!(e.contains(needle), "{pair}: {e}");
        }
        assert_eq!(o, before, "a failed set changes nothing");
    }
}
