//! Finding and loading `libonnxruntime.so`, once per process (see the module docs of
//! [`super`] for the search order).

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use super::super::library_search::{Fallback, LibrarySpec};
use super::super::{BackendOptions, Unavailable};

const ENV_VAR: &str = "ORT_DYLIB_PATH";
const INSTALL_HINT: &str =
    "install it with `pip install onnxruntime` (or `onnxruntime-gpu`), or point ORT_DYLIB_PATH / --ort-lib at libonnxruntime.so";
const LIBRARY: LibrarySpec = LibrarySpec {
    engine: "ONNX Runtime",
    flag: "--ort-lib",
    option: "BackendOptions::ort_lib",
    env_var: ENV_VAR,
    fallbacks: [Fallback::Python3, Fallback::Venv],
    stem: "libonnxruntime.so",
    package: "onnxruntime",
    subdir: "capi",
    install_hint: INSTALL_HINT,
};

/// The process-wide ONNX Runtime: the library it came from and the one `ort` environment.
pub(super) struct OrtRuntime {
    pub lib: PathBuf,
    pub env: ort::environment::Environment,
}

static RUNTIME: OnceLock<OrtRuntime> = OnceLock::new();
/// Serialises the first load so two threads never race on the `ort` globals.
static LOAD_LOCK: Mutex<()> = Mutex::new(());

/// Loads (once) and returns the process-wide runtime.
pub(super) fn runtime(options: &BackendOptions) -> Result<&'static OrtRuntime, Unavailable> {
    if let Some(rt) = RUNTIME.get() {
        return LIBRARY
            .check_same(&rt.lib, options.ort_lib.as_deref())
            .map(|()| rt);
    }
    let _guard = LOAD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return LIBRARY
            .check_same(&rt.lib, options.ort_lib.as_deref())
            .map(|()| rt);
    }
    let lib = LIBRARY.locate(options.ort_lib.as_deref())?;
    let env = std::panic::catch_unwind(|| -> Result<ort::environment::Environment, Unavailable> {
        let builder = ort::init_from(&lib).map_err(|e| {
            Unavailable::caused_by(
                format!("could not load ONNX Runtime from {}", lib.display()),
                e,
            )
        })?;
        builder
            .with_name("flowar")
            .with_telemetry(false)
            .build()
            .map_err(|e| {
                Unavailable::caused_by(
                    format!(
                        "ONNX Runtime at {} failed to create its environment",
                        lib.display()
                    ),
                    e,
                )
            })
    })
    .unwrap_or_else(|panic| {
        let what = crate::error::panic_message(&*panic).unwrap_or_else(|| "unknown panic".into());
        Err(Unavailable::new(format!(
            "loading ONNX Runtime from {} panicked: {what}",
            lib.display()
        )))
    })?;
    let _ = RUNTIME.set(OrtRuntime { lib, env });
    Ok(RUNTIME.get().expect("just set"))
}

/// Loads ONNX Runtime if needed and returns the path it was loaded from, or why it cannot be.
/// The `auto` provider logic uses this.
pub fn ort_available(options: &BackendOptions) -> Result<PathBuf, Unavailable> {
    runtime(options).map(|rt| rt.lib.clone())
}

/// The folder of the pip `tensorrt` wheel's libraries, when it sits beside the loaded
/// onnxruntime package (`site-packages/tensorrt_libs`).
pub fn tensorrt_libs_dir(options: &BackendOptions) -> Option<PathBuf> {
    let lib = runtime(options).ok()?.lib.clone();
    // .../site-packages/onnxruntime/capi/libonnxruntime.so.X
    let site = lib.parent()?.parent()?.parent()?;
    Some(site.join("tensorrt_libs")).filter(|d| d.is_dir())
}
