//! Choosing an execution provider: by name (an error if it cannot be had, never a silent
//! CPU fallback) or `auto` (the best available, with the reason logged).

use crate::backend::{available, BackendOptions, Provider};
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

pub fn resolve(choice: ProviderChoice, opts: &BackendOptions) -> Result<Resolved> {
    match choice {
        ProviderChoice::Named(p) => match available(p, opts) {
            Ok(()) => Ok(Resolved {
                provider: p,
                reason: "asked for by name".into(),
            }),
            Err(why) => Err(Error::unavailable(p.name(), why)),
        },
        ProviderChoice::Auto => {
            let mut skipped = Vec::new();
            for p in [Provider::TensorRt, Provider::Cuda, Provider::OrtCpu] {
                match available(p, opts) {
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
                    Err(why) => {
                        let why = why.to_string();
                        skipped.push(format!(
                            "{} ({})",
                            p.name(),
                            why.split(';').next().unwrap_or(&why).trim()
                        ))
                    }
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
