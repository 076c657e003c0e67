//! Finding and loading `libopenvino_c.so`, once per process (see the module docs of
//! [`super`] for the search order), and asking the CPU plugin what it can compute.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use openvino::{Core, DeviceType, PropertyKey};

use super::super::library_search::{Fallback, LibrarySpec};
use super::super::{BackendOptions, Unavailable};
use crate::error::panic_message;

const ENV_VAR: &str = "OPENVINO_LIB_PATH";
const INSTALL_HINT: &str = "install it with `pip install openvino` (into the project's .venv or for python3), or point OPENVINO_LIB_PATH / --openvino-lib at libopenvino_c.so";
const LIBRARY: LibrarySpec = LibrarySpec {
    engine: "OpenVINO",
    flag: "--openvino-lib",
    option: "BackendOptions::openvino_lib",
    env_var: ENV_VAR,
    fallbacks: [Fallback::Venv, Fallback::Python3],
    stem: "libopenvino_c.so",
    package: "openvino",
    subdir: "libs",
    install_hint: INSTALL_HINT,
};

static LOADED: OnceLock<PathBuf> = OnceLock::new();
/// Serialises the first load so two threads never race on `openvino-sys`'s global.
static LOAD_LOCK: Mutex<()> = Mutex::new(());

/// Loads (once) the C library and returns where it came from.
pub(super) fn load(options: &BackendOptions) -> Result<&'static Path, Unavailable> {
    if let Some(lib) = LOADED.get() {
        return LIBRARY
            .check_same(lib, options.openvino_lib.as_deref())
            .map(|()| lib.as_path());
    }
    let _guard = LOAD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(lib) = LOADED.get() {
        return LIBRARY
            .check_same(lib, options.openvino_lib.as_deref())
            .map(|()| lib.as_path());
    }
    let lib = LIBRARY.locate(options.openvino_lib.as_deref())?;
    // `load_from` parses the library's version string with unwraps: a panic is a refusal.
    std::panic::catch_unwind(|| openvino_sys::library::load_from(&lib))
        .unwrap_or_else(|panic| {
            Err(format!(
                "it panicked: {}",
                panic_message(&*panic).unwrap_or_else(|| "no message".into())
            ))
        })
        .map_err(|why| {
            Unavailable::new(format!(
                "could not load OpenVINO from {}: {why}; {INSTALL_HINT}",
                lib.display()
            ))
        })?;
    let _ = LOADED.set(lib);
    Ok(LOADED.get().expect("just set"))
}

/// The process's one OpenVINO core, created on first use and never freed. Freeing the
/// last core unloads the CPU plugin while its worker threads still sleep in its code: the
/// next signal that wakes one (Ctrl-C) returned into unmapped memory and crashed the
/// process (seen in the Python tests). One core is also what OpenVINO advises.
static CORE: OnceLock<Mutex<Core>> = OnceLock::new();

/// Runs `f` on the process's core, one caller at a time: device properties are core state,
/// so a session sets its own and compiles under the same lock.
pub(super) fn with_core<T>(
    options: &BackendOptions,
    f: impl FnOnce(&mut Core) -> T,
) -> Result<T, Unavailable> {
    let lib = load(options)?;
    let core = match CORE.get() {
        Some(c) => c,
        None => {
            let _guard = LOAD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            match CORE.get() {
                Some(c) => c,
                None => {
                    let core = Core::new().map_err(|e| {
                        Unavailable::caused_by(
                            format!("OpenVINO from {} could not create its core", lib.display()),
                            e.to_string(),
                        )
                    })?;
                    let _ = CORE.set(Mutex::new(core));
                    CORE.get().expect("just set")
                }
            }
        }
    };
    // A panic while holding the lock leaves the core as usable as before: OpenVINO's own
    // state is not ours to poison.
    let mut core = core.lock().unwrap_or_else(|p| p.into_inner());
    Ok(f(&mut core))
}

/// Whether OpenVINO can run here: the library loads and its CPU plugin answers.
pub fn available(options: &BackendOptions) -> Result<(), Unavailable> {
    cpu_capabilities(options).map(|_| ())
}

/// What OpenVINO's CPU plugin says the CPU computes natively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuCapabilities {
    /// The CPU's name as the plugin reports it.
    pub device: String,
    /// `OPTIMIZATION_CAPABILITIES`: `FP32`, `BF16` (AMX or AVX512-BF16), `INT8`, ...
    pub capabilities: Vec<String>,
}

impl CpuCapabilities {
    /// Whether bfloat16 products run natively (AMX or AVX512-BF16); OpenVINO would
    /// otherwise compute them in float32, slowly and silently.
    pub fn has_bf16(&self) -> bool {
        self.capabilities.iter().any(|c| c == "BF16")
    }

    /// Whether the CPU has AMX tiles for bfloat16 (Linux: `amx_bf16` in /proc/cpuinfo).
    /// With AVX512-BF16 alone, bfloat16 measured slower than float32 on both OpenVINO and
    /// PyTorch's autocast (a 2-core Xeon VM: the S flow head 262 ms against 142 ms).
    pub fn has_amx(&self) -> bool {
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| s.split_whitespace().any(|f| f == "amx_bf16"))
            .unwrap_or(false)
    }

    /// `Err` naming what is missing when bfloat16 graphs cannot run natively here.
    pub fn require_bf16(&self) -> Result<(), Unavailable> {
        if self.has_bf16() {
            return Ok(());
        }
        Err(Unavailable::new(format!(
            "this CPU ({}) has neither AMX nor AVX512-BF16, so OpenVINO would compute a bfloat16 \
             model in float32 (its capabilities: {}); run the float32 model (`flowar convert` \
             without --dtype bf16) on this machine",
            self.device,
            self.capabilities.join(" ")
        )))
    }
}

/// The CPU plugin's answer, asked once per process: the library, its core and the CPU are
/// all process-wide, and choosing a provider for a bfloat16 model needs it three times.
static CAPABILITIES: OnceLock<CpuCapabilities> = OnceLock::new();

/// What the CPU plugin says of its name and capabilities (loading the library if needed).
pub fn cpu_capabilities(options: &BackendOptions) -> Result<CpuCapabilities, Unavailable> {
    if let Some(caps) = CAPABILITIES.get() {
        // An explicit request for another library is still refused.
        load(options)?;
        return Ok(caps.clone());
    }
    let caps = with_core(options, |core| ask_cpu(core))??;
    Ok(CAPABILITIES.get_or_init(|| caps).clone())
}

fn ask_cpu(core: &Core) -> Result<CpuCapabilities, Unavailable> {
    let ask = |key: PropertyKey| {
        core.get_property(&DeviceType::CPU, &key).map_err(|e| {
            Unavailable::caused_by(
                "OpenVINO's CPU plugin did not answer (is libopenvino_intel_cpu_plugin.so beside the library?)",
                e.to_string(),
            )
        })
    };
    let device = ask(PropertyKey::DeviceFullName)?;
    let capabilities = ask(PropertyKey::DeviceCapabilities)?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Ok(CpuCapabilities {
        device,
        capabilities,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_is_required_by_capability_and_the_refusal_names_the_cpu() {
        let caps = |c: &str| CpuCapabilities {
            device: "Test CPU".into(),
            capabilities: c.split_whitespace().map(str::to_string).collect(),
        };
        assert!(caps("FP32 BF16 INT8 EXPORT_IMPORT").require_bf16().is_ok());
        let err = caps("FP32 INT8 EXPORT_IMPORT").require_bf16().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("Test CPU"), "{msg}");
        assert!(msg.contains("AMX nor AVX512-BF16"), "{msg}");
        assert!(msg.contains("FP32 INT8"), "{msg}");
    }
}
