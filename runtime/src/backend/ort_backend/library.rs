//! Finding and loading `libonnxruntime.so`, once per process (see the module docs of
//! [`super`] for the search order).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::super::{BackendOptions, Unavailable};

const ENV_VAR: &str = "ORT_DYLIB_PATH";
const INSTALL_HINT: &str =
    "install it with `pip install onnxruntime` (or `onnxruntime-gpu`), or point ORT_DYLIB_PATH / --ort-lib at libonnxruntime.so";

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
        return check_same_lib(rt, options).map(|()| rt);
    }
    let _guard = LOAD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return check_same_lib(rt, options).map(|()| rt);
    }
    let lib = locate_library(options)?;
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

/// The library is process-global: an explicit request for a different one cannot be honoured.
fn check_same_lib(rt: &OrtRuntime, options: &BackendOptions) -> Result<(), Unavailable> {
    let Some(wanted) = &options.ort_lib else {
        return Ok(());
    };
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    // A folder names the library inside it.
    let wanted_lib = explicit_library(wanted, "--ort-lib").unwrap_or_else(|_| wanted.clone());
    if canon(&wanted_lib) == canon(&rt.lib) {
        Ok(())
    } else {
        Err(Unavailable::new(format!(
            "ONNX Runtime is already loaded from {} in this process and cannot be replaced by {}",
            rt.lib.display(),
            wanted.display()
        )))
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// An explicitly named library: a file is used as is, a folder is searched.
fn explicit_library(p: &Path, source: &str) -> Result<PathBuf, Unavailable> {
    let p = absolute(p);
    if p.is_file() {
        Ok(p)
    } else if p.is_dir() {
        library_in_dir(&p).ok_or_else(|| {
            Unavailable::new(format!(
                "{source} names the folder {}, which holds no libonnxruntime.so*; {INSTALL_HINT}",
                p.display()
            ))
        })
    } else {
        Err(Unavailable::new(format!(
            "{source} names {}, which does not exist; {INSTALL_HINT}",
            p.display()
        )))
    }
}

/// Finds the library following the documented search order (see the module docs).
fn locate_library(options: &BackendOptions) -> Result<PathBuf, Unavailable> {
    if let Some(p) = &options.ort_lib {
        return explicit_library(p, "--ort-lib (BackendOptions::ort_lib)");
    }
    if let Some(p) = std::env::var_os(ENV_VAR).filter(|v| !v.is_empty()) {
        return explicit_library(Path::new(&p), ENV_VAR);
    }
    let mut tried: Vec<String> = vec![
        "--ort-lib (not given)".to_string(),
        format!("{ENV_VAR} (not set)"),
    ];

    match python_onnxruntime_dir() {
        Ok(dir) => {
            let capi = dir.join("capi");
            if let Some(lib) = library_in_dir(&capi) {
                return Ok(lib);
            }
            tried.push(format!(
                "{} (python3's onnxruntime package; no libonnxruntime.so* there)",
                capi.display()
            ));
        }
        Err(why) => tried.push(format!("python3's onnxruntime package ({why})")),
    }

    let venv_lib = absolute(Path::new(".venv/lib"));
    let mut venv_dirs: Vec<PathBuf> = std::fs::read_dir(&venv_lib)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
                .map(|e| e.path().join("site-packages/onnxruntime/capi"))
                .collect()
        })
        .unwrap_or_default();
    venv_dirs.sort();
    for dir in venv_dirs.iter().rev() {
        if let Some(lib) = library_in_dir(dir) {
            return Ok(lib);
        }
    }
    tried.push(format!(
        "{}/python3*/site-packages/onnxruntime/capi/",
        venv_lib.display()
    ));

    Err(Unavailable::new(format!(
        "no ONNX Runtime library found; tried: {}; {INSTALL_HINT}",
        tried.join("; ")
    )))
}

/// Why `python3` could not say where its `onnxruntime` package is.
#[derive(Debug, thiserror::Error)]
enum PythonLookup {
    #[error("could not run python3: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("python3 cannot import onnxruntime")]
    NoPackage,
    #[error("python3 printed nothing")]
    NoOutput,
}

/// Asks `python3` where its `onnxruntime` package lives. Any failure is a reason, never a panic.
fn python_onnxruntime_dir() -> Result<PathBuf, PythonLookup> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(PythonLookup::Spawn)?;
    if !out.status.success() {
        return Err(PythonLookup::NoPackage);
    }
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or(PythonLookup::NoOutput)?;
    Ok(PathBuf::from(line))
}

/// `libonnxruntime.so.<version>` (highest version) or else `libonnxruntime.so` in `dir`.
fn library_in_dir(dir: &Path) -> Option<PathBuf> {
    let mut versioned: Vec<(Vec<u64>, PathBuf)> = Vec::new();
    let mut plain = None;
    for entry in std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        if name == "libonnxruntime.so" {
            plain = Some(path);
        } else if let Some(ver) = name.strip_prefix("libonnxruntime.so.") {
            let key = ver
                .split('.')
                .map(|p| p.parse::<u64>().unwrap_or(0))
                .collect();
            versioned.push((key, path));
        }
    }
    versioned.sort();
    versioned.pop().map(|(_, p)| p).or(plain)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_in_dir_prefers_highest_version() {
        let dir = std::env::temp_dir().join(format!("flowar-ortlib-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in [
            "libonnxruntime.so",
            "libonnxruntime.so.1.9.0",
            "libonnxruntime.so.1.31.1",
            "libonnxruntime_providers_shared.so",
        ] {
            std::fs::write(dir.join(n), b"").unwrap();
        }
        assert_eq!(
            library_in_dir(&dir).unwrap(),
            dir.join("libonnxruntime.so.1.31.1")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
