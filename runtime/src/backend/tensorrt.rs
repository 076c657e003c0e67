//! What the TensorRT provider builds and keeps: optimization profiles in onnxruntime's
//! syntax, and the engine-cache folder, keyed by the graphs, the TensorRT version, the
//! precision and the profile so that a stale engine is never loaded.

use std::path::{Path, PathBuf};

use super::gpu::GpuOptions;
use super::{ort_backend, BackendOptions, Provider, ShapeRange, Unavailable};
use crate::cache::Lease;
use crate::error::{Error, Result};

/// Min / opt / max shapes of every dynamic input of one graph, in onnxruntime's TensorRT
/// syntax (`name:d0xd1x...,name2:...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrtProfile {
    pub min: String,
    pub opt: String,
    pub max: String,
}

impl TrtProfile {
    pub fn new(shapes: &[ShapeRange]) -> TrtProfile {
        let list = |pick: fn(&ShapeRange) -> &Vec<usize>| {
            shapes
                .iter()
                .map(|s| {
                    let dims: Vec<String> = pick(s).iter().map(|d| d.to_string()).collect();
                    format!("{}:{}", s.input, dims.join("x"))
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        TrtProfile {
            min: list(|s| &s.min),
            opt: list(|s| &s.opt),
            max: list(|s| &s.max),
        }
    }
}

pub use crate::cache::cache_root;

/// Where one set of graphs' engines and timing cache live:
/// `<root>/tensorrt/<graphs key>-trt<version>-<fp16|fp32>-b<max batch>`. `graphs_key`
/// identifies the graphs (it changes when they are re-exported); a new TensorRT version or
/// another profile gets a new folder as well.
pub fn engine_cache_dir(
    root: &Path,
    graphs_key: &str,
    trt_version: &str,
    opts: &GpuOptions,
) -> PathBuf {
    root.join("tensorrt").join(format!(
        "{graphs_key}-trt{trt_version}-{}-b{}",
        if opts.trt_fp16 { "fp16" } else { "fp32" },
        opts.trt_max_batch
    ))
}

/// Whether `dir` already holds a built engine (else the first session builds them).
pub fn has_engines(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().ends_with(".engine"))
        })
        .unwrap_or(false)
}

/// The engine-cache folder for the graphs `graphs_key` identifies, under the configured
/// root ([`GpuOptions::trt_cache_dir`], else [`cache_root`]), keyed by the TensorRT
/// version onnxruntime will load. Created, with a notice on stderr when no engine is there
/// yet (building them takes minutes), and leased ([`Lease`]): while the returned lease
/// lives, the cache's size cap ([`crate::cache`]) never evicts these engines. The sessions
/// build the engines afterwards; [`evict_after_build`] then applies the cap.
pub fn prepare_engine_cache(graphs_key: &str, opts: &BackendOptions) -> Result<Lease> {
    let version = ort_backend::tensorrt_version(opts)
        .map_err(|why| Error::unavailable(Provider::TensorRt.name(), why))?;
    crate::cache::max_bytes()?;
    let root = opts.gpu.trt_cache_dir.clone().unwrap_or_else(cache_root);
    let dir = engine_cache_dir(&root, graphs_key, &version, &opts.gpu);
    let lease = Lease::acquire(&dir).map_err(|e| Error::io(&dir, e))?;
    if !has_engines(&dir) {
        eprintln!(
            "flowar: building TensorRT {version} engines for this model (first run for this \
             model, TensorRT version, precision and max batch {}); this takes minutes and is \
             cached in {}",
            opts.gpu.trt_max_batch,
            dir.display()
        );
    }
    Ok(lease)
}

/// The cache's cap after the TensorRT sessions have built (or loaded) their engines, so
/// that engines just written count: least recently used entries first, never the model's
/// own (its [`Lease`] is held).
pub fn evict_after_build(opts: &BackendOptions) -> Result<()> {
    let cap = crate::cache::max_bytes()?;
    let root = opts.gpu.trt_cache_dir.clone().unwrap_or_else(cache_root);
    crate::cache::evict_after_write(&root, cap);
    Ok(())
}

/// The TensorRT version the dynamic loader finds (`libnvinfer.so.N`, the library
/// onnxruntime's TensorRT provider links), as `major.minor.patch`; the error says what was
/// tried. `extra_dirs` are searched as well (pip's `tensorrt_libs` folder beside
/// onnxruntime).
pub fn library_version(extra_dirs: &[PathBuf]) -> Result<String, Unavailable> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    for major in [10, 9, 8] {
        candidates.push(PathBuf::from(format!("libnvinfer.so.{major}")));
    }
    candidates.push(PathBuf::from("libnvinfer.so"));
    for d in extra_dirs {
        for major in [10, 9, 8] {
            candidates.push(d.join(format!("libnvinfer.so.{major}")));
        }
    }
    let mut tried = Vec::new();
    for c in &candidates {
        // SAFETY: loading libnvinfer runs its initialisers, as onnxruntime's TensorRT
        // provider does when it loads it; nothing else is done with the library here.
        let lib = match unsafe { libloading::Library::new(c) } {
            Ok(l) => l,
            Err(_) => {
                tried.push(c.display().to_string());
                continue;
            }
        };
        // SAFETY: `getInferLibVersion` is declared in NvInferRuntime.h as
        // `int32_t getInferLibVersion() noexcept`, which is the type given here.
        let f: libloading::Symbol<unsafe extern "C" fn() -> i32> =
            match unsafe { lib.get(b"getInferLibVersion\0") } {
                Ok(f) => f,
                Err(e) => {
                    return Err(Unavailable::caused_by(
                        format!("{} has no getInferLibVersion", c.display()),
                        e,
                    ))
                }
            };
        // SAFETY: a C function taking no arguments, called while `lib` is loaded.
        let v = unsafe { f() };
        return Ok(decode_version(v));
    }
    Err(Unavailable::new(format!(
        "TensorRT (libnvinfer) not found by the dynamic loader; tried {}; pip install tensorrt \
         and add its tensorrt_libs folder to LD_LIBRARY_PATH",
        tried.join(", ")
    )))
}

/// `getInferLibVersion()` encodes major·10000 + minor·100 + patch (TensorRT 10) or
/// major·1000 + minor·100 + patch (TensorRT 8 and earlier).
pub fn decode_version(v: i32) -> String {
    if v >= 10_000 {
        format!("{}.{}.{}", v / 10_000, (v / 100) % 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, (v / 100) % 10, v % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_decode() {
        assert_eq!(decode_version(100_300), "10.3.0");
        assert_eq!(decode_version(101_302), "10.13.2");
        assert_eq!(decode_version(8601), "8.6.1");
    }

    #[test]
    fn profiles_list_every_range_in_order() {
        let shapes = [
            ShapeRange {
                input: "x".into(),
                min: vec![1, 1, 4],
                opt: vec![8, 256, 4],
                max: vec![8, 256, 4],
            },
            ShapeRange {
                input: "t".into(),
                min: vec![1],
                opt: vec![8],
                max: vec![8],
            },
        ];
        let p = TrtProfile::new(&shapes);
        assert_eq!(p.min, "x:1x1x4,t:1");
        assert_eq!(p.opt, "x:8x256x4,t:8");
        assert_eq!(p.max, p.opt);
    }
}
