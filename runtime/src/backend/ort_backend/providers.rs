//! onnxruntime's execution providers: whether one can be used here, and registering CUDA
//! and TensorRT (with their options, profiles and caches) on a session builder.

use std::path::PathBuf;
use std::sync::OnceLock;

use ort::ep::ExecutionProvider;
use ort::session::builder::SessionBuilder;
use ort::session::Session as OrtRawSession;

use super::super::gpu::ConvSearch;
use super::super::{tensorrt, BackendOptions, Provider, TrtSetup, Unavailable};
use super::library::{runtime, tensorrt_libs_dir, OrtRuntime};

/// Whether `provider` can be used with the ONNX Runtime already loaded (or, if none is
/// loaded yet, the one the default search finds). See [`provider_available_with`].
pub fn provider_available(provider: Provider) -> Result<(), Unavailable> {
    provider_available_with(provider, &BackendOptions::default())
}

/// Whether `provider` can be used: the library loads, the execution provider is compiled
/// into it, and registering it on a throwaway session configuration succeeds (which loads
/// the provider's own library and its CUDA / TensorRT dependencies).
pub fn provider_available_with(
    provider: Provider,
    options: &BackendOptions,
) -> Result<(), Unavailable> {
    match provider {
        Provider::Tract => Ok(()),
        Provider::OpenVino => super::super::openvino_backend::available(options),
        Provider::OrtCpu => runtime(options).map(|_| ()),
        Provider::Cuda | Provider::TensorRt => {
            let rt = runtime(options)?;
            let mut builder = OrtRawSession::builder(&rt.env).map_err(|e| {
                Unavailable::caused_by("could not configure an onnxruntime session", e)
            })?;
            register_gpu(provider, &mut builder, rt, options, None)
        }
    }
}

/// The TensorRT version onnxruntime's TensorRT provider will load
/// ([`tensorrt::library_version`], also searching the pip wheel's `tensorrt_libs` folder
/// beside onnxruntime). A version found is kept for the process: like the onnxruntime
/// library it sits beside, it cannot change while the process runs, and `libnvinfer` is
/// loaded once. A failed lookup loaded nothing and is simply repeated.
pub fn tensorrt_version(options: &BackendOptions) -> Result<String, Unavailable> {
    static VERSION: OnceLock<String> = OnceLock::new();
    if let Some(v) = VERSION.get() {
        return Ok(v.clone());
    }
    let extra: Vec<PathBuf> = tensorrt_libs_dir(options).into_iter().collect();
    let v = tensorrt::library_version(&extra)?;
    Ok(VERSION.get_or_init(|| v).clone())
}

/// Registers the GPU execution provider(s) for `provider`; any failure is an error.
/// `trt` adds the optimization profile and the engine / timing caches.
pub(super) fn register_gpu(
    provider: Provider,
    builder: &mut SessionBuilder,
    rt: &OrtRuntime,
    options: &BackendOptions,
    trt: Option<&TrtSetup>,
) -> Result<(), Unavailable> {
    let device_id = options.device_id;
    let g = &options.gpu;
    let missing = |ep: &str, what: &str| {
        Unavailable::new(format!(
            "the loaded onnxruntime ({}) has no {what} execution provider ({ep}); pip install onnxruntime-gpu \
             (and point ORT_DYLIB_PATH / --ort-lib at its libonnxruntime.so)",
            rt.lib.display()
        ))
    };
    let check = |available: ort::Result<bool>, ep: &str, what: &str| match available {
        Ok(true) => Ok(()),
        Ok(false) => Err(missing(ep, what)),
        Err(e) => Err(Unavailable::caused_by(
            format!("could not query the {what} execution provider"),
            e,
        )),
    };
    let registering = |what: &'static str| {
        move |e: ort::Error| {
            Unavailable::caused_by(
                format!("registering the {what} execution provider (device {device_id}) failed"),
                e,
            )
        }
    };
    let cuda = || {
        let mut c = ort::ep::CUDA::default()
            .with_device_id(device_id)
            .with_tf32(g.tf32)
            .with_conv_algorithm_search(match g.conv_search {
                ConvSearch::Exhaustive => ort::ep::cuda::ConvAlgorithmSearch::Exhaustive,
                ConvSearch::Heuristic => ort::ep::cuda::ConvAlgorithmSearch::Heuristic,
                ConvSearch::Default => ort::ep::cuda::ConvAlgorithmSearch::Default,
            });
        if let Some(limit) = g.memory_limit {
            c = c.with_memory_limit(limit as usize);
        }
        c
    };
    match provider {
        Provider::Cuda => {
            check(ort::ep::CUDA::is_available(), ort::ep::CUDA::NAME, "CUDA")?;
            cuda().register(builder).map_err(registering("CUDA"))
        }
        Provider::TensorRt => {
            check(
                ort::ep::TensorRT::is_available(),
                ort::ep::TensorRT::NAME,
                "TensorRT",
            )?;
            check(ort::ep::CUDA::is_available(), ort::ep::CUDA::NAME, "CUDA")?;
            let mut t = ort::ep::TensorRT::default()
                .with_device_id(device_id)
                .with_fp16(g.trt_fp16);
            if let Some(w) = g.trt_workspace {
                t = t.with_max_workspace_size(w as usize);
            }
            if let Some(s) = trt {
                let dir = s.cache_dir.display().to_string();
                let profile = tensorrt::TrtProfile::new(&s.shapes);
                t = t
                    .with_engine_cache(true)
                    .with_engine_cache_path(&dir)
                    .with_timing_cache(true)
                    .with_timing_cache_path(&dir)
                    .with_profile_min_shapes(&profile.min)
                    .with_profile_opt_shapes(&profile.opt)
                    .with_profile_max_shapes(&profile.max);
            }
            t.register(builder).map_err(registering("TensorRT"))?;
            // CUDA after TensorRT: it runs the nodes TensorRT does not support.
            cuda().register(builder).map_err(registering("CUDA"))
        }
        Provider::OrtCpu | Provider::OpenVino | Provider::Tract => Ok(()),
    }
}
