//! Choosing an execution provider: by name (an error if it cannot be had, never a silent
//! CPU fallback) or `auto` (the best available, with the reason logged).

use crate::backend::{ort_backend, BackendOptions, Provider};
use crate::error::{Error, Result};

/// What the user asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProviderChoice {
    #[default]
    Auto,
    Named(Provider),
}

impl std::str::FromStr for ProviderChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "auto" {
            Ok(ProviderChoice::Auto)
        } else {
            s.parse().map(ProviderChoice::Named)
        }
    }
}

/// The provider in use and why.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub provider: Provider,
    pub reason: String,
}

/// Whether `p` can run here; `Err` says what is missing.
pub fn check(p: Provider, opts: &BackendOptions) -> std::result::Result<(), String> {
    match p {
        Provider::Tract => Ok(()),
        Provider::OrtCpu => ort_backend::ort_available(opts).map(|_| ()),
        Provider::Cuda => ort_backend::provider_available_with(p, opts),
        // Registration succeeds without TensorRT's own library; the engine cache needs its
        // version anyway, so a missing libnvinfer is found here and `auto` moves on.
        Provider::TensorRt => {
            ort_backend::provider_available_with(p, opts)?;
            ort_backend::tensorrt_version(opts).map(|_| ())
        }
    }
}

pub fn resolve(choice: ProviderChoice, opts: &BackendOptions) -> Result<Resolved> {
    match choice {
        ProviderChoice::Named(p) => match check(p, opts) {
            Ok(()) => Ok(Resolved {
                provider: p,
                reason: "asked for by name".into(),
            }),
            Err(reason) => Err(Error::ProviderUnavailable {
                provider: p.name().into(),
                reason,
            }),
        },
        ProviderChoice::Auto => {
            let mut skipped = Vec::new();
            for p in [Provider::TensorRt, Provider::Cuda, Provider::OrtCpu] {
                match check(p, opts) {
                    Ok(()) => {
                        let why = if skipped.is_empty() {
                            format!("auto: {} is the fastest provider available", p.name())
                        } else {
                            format!(
                                "auto: {}, the fastest available; not available: {}",
                                p.name(),
                                skipped.join(", ")
                            )
                        };
                        return Ok(Resolved {
                            provider: p,
                            reason: why,
                        });
                    }
                    // The first clause of the reason is enough for a log line.
                    Err(e) => skipped.push(format!(
                        "{} ({})",
                        p.name(),
                        e.split(';').next().unwrap_or(&e).trim()
                    )),
                }
            }
            Ok(Resolved {
                provider: Provider::Tract,
                reason: format!(
                    "auto: tract, the pure-Rust CPU engine, because onnxruntime is not usable ({})",
                    skipped.join("; ")
                ),
            })
        }
    }
}
