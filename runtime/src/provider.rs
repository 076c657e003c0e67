//! Choosing an execution provider: by name (an error if it cannot be had, never a silent
//! CPU fallback) or `auto` (the best available, with the reason logged). A bfloat16 model
//! folder runs only where bfloat16 is computed natively: OpenVINO on a CPU with AMX or
//! AVX512-BF16; anywhere else it is refused with what is missing, never run in float32.

use crate::backend::{available, openvino_backend, BackendOptions, Provider, Unavailable};
use crate::error::{Error, Result};
use crate::manifest::Manifest;

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

/// The manifest `dtype` of a folder whose products compute in bfloat16.
pub const BF16_DTYPE: &str = "bfloat16";

/// What of a model folder decides where it may run: its manifest `dtype` and whether its
/// linears are int8.
#[derive(Debug, Clone, Copy)]
pub struct ModelNeeds<'a> {
    pub dtype: &'a str,
    pub int8: bool,
}

impl<'a> From<&'a Manifest> for ModelNeeds<'a> {
    fn from(m: &'a Manifest) -> Self {
        ModelNeeds {
            dtype: &m.dtype,
            int8: m.quantization.is_some(),
        }
    }
}

/// Why `provider` can never run such a model as it is meant to run, whatever the machine:
/// a bfloat16 folder needs native bfloat16 products, which only OpenVINO's CPU plugin has;
/// int8 folders are refused on OpenVINO, which runs them but no faster than float32
/// (measured: one S flow-head call 159 ms there, 38 ms on onnxruntime's CPU provider).
/// `None` when it may (whether this machine can is [`runs_model`]'s question).
pub fn never_runs(provider: Provider, needs: ModelNeeds<'_>) -> Option<String> {
    if needs.int8 && provider == Provider::OpenVino {
        return Some(
            "this model's linears are int8 (convert --quantize int8), which OpenVINO runs no \
             faster than float32; run it with --provider ort-cpu, or use --dtype bf16 for \
             OpenVINO's fast mode"
                .into(),
        );
    }
    if needs.dtype != BF16_DTYPE {
        return None;
    }
    let elsewhere = "run it with --provider openvino on a CPU with AMX or AVX512-BF16, or convert without --dtype bf16";
    match provider {
        Provider::OpenVino => None,
        Provider::OrtCpu => Some(format!(
            "this model computes its products in bfloat16, and onnxruntime's CPU provider has no bfloat16 kernels on x86; {elsewhere}"
        )),
        Provider::Tract => Some(format!(
            "this model computes its products in bfloat16, and tract has no native bfloat16 kernels; {elsewhere}"
        )),
        Provider::Cuda | Provider::TensorRt => Some(format!(
            "bfloat16 models are built and verified for OpenVINO's CPU plugin only; {elsewhere}"
        )),
    }
}

/// Whether `provider` runs such a model as it is meant to run, beyond having the graphs'
/// ops: never where [`never_runs`] says so, and a bfloat16 folder on OpenVINO only where
/// this CPU computes bfloat16 natively.
pub fn runs_model(
    provider: Provider,
    needs: ModelNeeds<'_>,
    opts: &BackendOptions,
) -> Result<(), Unavailable> {
    if let Some(why) = never_runs(provider, needs) {
        return Err(Unavailable::new(why));
    }
    if needs.dtype == BF16_DTYPE && provider == Provider::OpenVino {
        return openvino_backend::cpu_capabilities(opts)?.require_bf16();
    }
    Ok(())
}

/// The provider for a model folder that needs `needs`.
pub fn resolve(
    choice: ProviderChoice,
    opts: &BackendOptions,
    needs: ModelNeeds<'_>,
) -> Result<Resolved> {
    let bf16 = needs.dtype == BF16_DTYPE;
    let usable = |p: Provider| available(p, opts).and_then(|()| runs_model(p, needs, opts));
    match choice {
        ProviderChoice::Named(p) => match usable(p) {
            Ok(()) => Ok(Resolved {
                provider: p,
                reason: format!("asked for by name{}", bf16_note(p, bf16, opts)),
            }),
            Err(why) => Err(Error::unavailable(p.name(), why)),
        },
        ProviderChoice::Auto => {
            let candidates: &[Provider] = if bf16 {
                &[Provider::OpenVino]
            } else {
                &[Provider::TensorRt, Provider::Cuda, Provider::OrtCpu]
            };
            let mut skipped = Vec::new();
            for &p in candidates {
                match usable(p) {
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
                            reason: format!("{why}{}", bf16_note(p, bf16, opts)),
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
            if bf16 {
                return Err(Error::ProviderUnavailable {
                    provider: "auto".into(),
                    reason: format!(
                        "no provider here runs this bfloat16 model: {}",
                        skipped.join("; ")
                    ),
                    source: None,
                });
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

/// What a user running bfloat16 without AMX should know: it runs, natively, but slower
/// than float32 would (see [`openvino_backend::CpuCapabilities::has_amx`]).
fn bf16_note(p: Provider, bf16: bool, opts: &BackendOptions) -> &'static str {
    let without_amx = bf16
        && p == Provider::OpenVino
        && openvino_backend::cpu_capabilities(opts).is_ok_and(|c| !c.has_amx());
    if without_amx {
        "; note: this CPU computes bfloat16 with AVX512-BF16 but has no AMX, where bfloat16 \
         measured slower than the float32 model"
    } else {
        ""
    }
}

/// [`resolve`] for the model folder whose manifest is `m`.
pub fn resolve_for(
    choice: ProviderChoice,
    opts: &BackendOptions,
    m: &Manifest,
) -> Result<Resolved> {
    resolve(choice, opts, m.into())
}
