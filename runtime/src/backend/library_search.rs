//! Finding an engine's shared library the way both dynamically loaded engines do
//! (onnxruntime's `libonnxruntime.so`, OpenVINO's `libopenvino_c.so`): a named file or
//! folder, a pip-installed package of the project's `.venv`, or that of `python3` on PATH.

use std::path::{Path, PathBuf};

use super::Unavailable;

/// Where to look once neither the flag nor the variable names the library.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fallback {
    /// The package in the project's `.venv`.
    Venv,
    /// The package of `python3` on PATH.
    Python3,
}

/// One engine library: where it is looked for, in which order, and how to install it.
pub(crate) struct LibrarySpec {
    /// The engine's name in messages (`ONNX Runtime`, `OpenVINO`).
    pub engine: &'static str,
    /// The CLI flag that names the library (`--ort-lib`) and the option behind it.
    pub flag: &'static str,
    pub option: &'static str,
    /// The environment variable that names it (`ORT_DYLIB_PATH`).
    pub env_var: &'static str,
    /// The engine's documented order for the two package locations.
    pub fallbacks: [Fallback; 2],
    /// `libonnxruntime.so`: the plain name; `<stem>.<version>` files are preferred.
    pub stem: &'static str,
    /// The Python package that ships it (`onnxruntime`, `openvino`).
    pub package: &'static str,
    /// The library's folder inside that package (`capi`, `libs`).
    pub subdir: &'static str,
    /// How to get it, appended to every "not found".
    pub install_hint: &'static str,
}

pub(crate) fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

impl LibrarySpec {
    /// An explicitly named library (`source` says who named it): a file is used as is, a
    /// folder is searched.
    pub fn explicit(&self, p: &Path, source: &str) -> Result<PathBuf, Unavailable> {
        let p = absolute(p);
        if p.is_file() {
            Ok(p)
        } else if p.is_dir() {
            self.in_dir(&p).ok_or_else(|| {
                Unavailable::new(format!(
                    "{source} names the folder {}, which holds no {}*; {}",
                    p.display(),
                    self.stem,
                    self.install_hint
                ))
            })
        } else {
            Err(Unavailable::new(format!(
                "{source} names {}, which does not exist; {}",
                p.display(),
                self.install_hint
            )))
        }
    }

    /// The library to load: the one `given` (the flag's option) names, else the variable's,
    /// else the first of the fallbacks that has it; `Err` lists everything tried.
    pub fn locate(&self, given: Option<&Path>) -> Result<PathBuf, Unavailable> {
        if let Some(p) = given {
            return self.explicit(p, &format!("{} ({})", self.flag, self.option));
        }
        if let Some(p) = std::env::var_os(self.env_var).filter(|v| !v.is_empty()) {
            return self.explicit(Path::new(&p), self.env_var);
        }
        let mut tried: Vec<String> = vec![
            format!("{} (not given)", self.flag),
            format!("{} (not set)", self.env_var),
        ];
        for place in self.fallbacks {
            let found = match place {
                Fallback::Venv => self.in_venv(),
                Fallback::Python3 => self.in_python3(),
            };
            match found {
                Ok(lib) => return Ok(lib),
                Err(why) => tried.push(why.to_string()),
            }
        }
        Err(Unavailable::new(format!(
            "no {} library found; tried: {}; {}",
            self.engine,
            tried.join("; "),
            self.install_hint
        )))
    }

    /// The library is process-global: an explicit request (`wanted`, a file or a folder
    /// holding it) for another than the `loaded` one cannot be honoured.
    pub fn check_same(&self, loaded: &Path, wanted: Option<&Path>) -> Result<(), Unavailable> {
        let Some(wanted) = wanted else {
            return Ok(());
        };
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        // A folder names the library inside it.
        let wanted_lib = self
            .explicit(wanted, self.flag)
            .unwrap_or_else(|_| wanted.to_path_buf());
        if canon(&wanted_lib) == canon(loaded) {
            Ok(())
        } else {
            Err(Unavailable::new(format!(
                "{} is already loaded from {} in this process and cannot be replaced by {}",
                self.engine,
                loaded.display(),
                wanted.display()
            )))
        }
    }

    /// `<stem>.<version>` (highest version) or else `<stem>` in `dir`.
    pub fn in_dir(&self, dir: &Path) -> Option<PathBuf> {
        let mut versioned: Vec<(Vec<u64>, PathBuf)> = Vec::new();
        let mut plain = None;
        let dotted = format!("{}.", self.stem);
        for entry in std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            if name == self.stem {
                plain = Some(path);
            } else if let Some(ver) = name.strip_prefix(&dotted) {
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

    /// The library in the package's folder of `python3` on PATH; `Err` says why not.
    pub fn in_python3(&self) -> Result<PathBuf, Miss> {
        let dir = python_package_dir(self.package).map_err(|why| Miss::NoPython3Package {
            package: self.package,
            why,
        })?;
        let libs = dir.join(self.subdir);
        self.in_dir(&libs).ok_or(Miss::NotInPython3Package {
            dir: libs,
            package: self.package,
            stem: self.stem,
        })
    }

    /// The library in the package's folder of `.venv` (relative to the current directory);
    /// `Err` names the pattern searched.
    pub fn in_venv(&self) -> Result<PathBuf, Miss> {
        let venv_lib = absolute(Path::new(".venv/lib"));
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&venv_lib)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
                    .map(|e| {
                        e.path()
                            .join("site-packages")
                            .join(self.package)
                            .join(self.subdir)
                    })
                    .collect()
            })
            .unwrap_or_default();
        dirs.sort();
        dirs.iter()
            .rev()
            .find_map(|d| self.in_dir(d))
            .ok_or(Miss::NotInVenv {
                venv_lib,
                package: self.package,
                subdir: self.subdir,
            })
    }
}

/// Why one fallback place does not hold the library: one entry of the "tried" list in
/// [`LibrarySpec::locate`]'s error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Miss {
    #[error("python3's {package} package ({why})")]
    NoPython3Package {
        package: &'static str,
        why: PythonLookup,
    },
    #[error("{} (python3's {package} package; no {stem}* there)", dir.display())]
    NotInPython3Package {
        dir: PathBuf,
        package: &'static str,
        stem: &'static str,
    },
    #[error("{}/python3*/site-packages/{package}/{subdir}/", venv_lib.display())]
    NotInVenv {
        venv_lib: PathBuf,
        package: &'static str,
        subdir: &'static str,
    },
}

/// Why `python3` could not say where a package is.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PythonLookup {
    #[error("could not run python3: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("python3 cannot import it")]
    NoPackage,
    #[error("python3 printed nothing")]
    NoOutput,
}

/// Asks `python3` where its `package` lives. Any failure is a reason, never a panic.
fn python_package_dir(package: &str) -> Result<PathBuf, PythonLookup> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            &format!("import {package}, os; print(os.path.dirname({package}.__file__))"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_dir_prefers_highest_version() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "libonnxruntime.so",
            "libonnxruntime.so.1.9.0",
            "libonnxruntime.so.1.31.1",
            "libonnxruntime_providers_shared.so",
        ] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let spec = LibrarySpec {
            engine: "ONNX Runtime",
            flag: "--ort-lib",
            option: "BackendOptions::ort_lib",
            env_var: "ORT_DYLIB_PATH",
            fallbacks: [Fallback::Python3, Fallback::Venv],
            stem: "libonnxruntime.so",
            package: "onnxruntime",
            subdir: "capi",
            install_hint: "",
        };
        assert_eq!(
            spec.in_dir(dir.path()).unwrap(),
            dir.path().join("libonnxruntime.so.1.31.1")
        );
    }
}
