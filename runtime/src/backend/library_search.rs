//! Finding an engine's shared library the way both dynamically loaded engines do
//! (onnxruntime's `libonnxruntime.so`, OpenVINO's `libopenvino_c.so`): a named file or
//! folder, a pip-installed package of the project's `.venv`, or that of `python3` on PATH.

use std::path::{Path, PathBuf};

use super::Unavailable;

/// One engine library: its file name stem and how to install it, for messages.
pub(crate) struct LibrarySpec {
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
    pub fn in_python3(&self) -> Result<PathBuf, String> {
        let dir = python_package_dir(self.package)
            .map_err(|why| format!("python3's {} package ({why})", self.package))?;
        let libs = dir.join(self.subdir);
        self.in_dir(&libs).ok_or_else(|| {
            format!(
                "{} (python3's {} package; no {}* there)",
                libs.display(),
                self.package,
                self.stem
            )
        })
    }

    /// The library in the package's folder of `.venv` (relative to the current directory);
    /// `Err` names the pattern searched.
    pub fn in_venv(&self) -> Result<PathBuf, String> {
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
            .ok_or_else(|| {
                format!(
                    "{}/python3*/site-packages/{}/{}/",
                    venv_lib.display(),
                    self.package,
                    self.subdir
                )
            })
    }
}

/// Why `python3` could not say where a package is.
#[derive(Debug, thiserror::Error)]
enum PythonLookup {
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
