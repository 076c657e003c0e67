//! `flowar._flowar.convert`: the exporter with `flowar convert`'s options. A
//! `KeyboardInterrupt` stops it at the next tensor and leaves no output folder.

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use flowar_exporter::checkpoint::{Checkpoint, Weights};
use flowar_exporter::convert::{convert_as, source_notes, ConvertRequest, ModelMeta, Precision};
use flowar_exporter::quantize::Quantize;
use flowar_exporter::vae_checkpoint::VaeCheckpoint;
use flowar_exporter::weights::Cancellable;

use crate::errors;

/// Converts a FlowAR checkpoint and a KL-VAE checkpoint into a model folder; returns a
/// summary dict (the manifest as JSON text, the state dicts used, notes for the user).
#[pyfunction]
#[pyo3(signature = (flowar, vae, out, latent_scale=None, latent_shift=None, meta=None, no_meta=false, weights=None, force=false, allow_nonfinite=false, dtype="f32", quantize=None))]
#[allow(clippy::too_many_arguments)]
pub fn convert<'py>(
    py: Python<'py>,
    flowar: PathBuf,
    vae: PathBuf,
    out: PathBuf,
    latent_scale: Option<f64>,
    latent_shift: Option<f64>,
    meta: Option<PathBuf>,
    no_meta: bool,
    weights: Option<&str>,
    force: bool,
    allow_nonfinite: bool,
    dtype: &str,
    quantize: Option<&str>,
) -> PyResult<Bound<'py, PyDict>> {
    if meta.is_some() && no_meta {
        return Err(PyValueError::new_err("give meta or no_meta, not both"));
    }
    let precision: Precision = dtype.parse().map_err(errors::export)?;
    let quantize: Option<Quantize> = quantize
        .map(str::parse)
        .transpose()
        .map_err(errors::export)?;
    let weights: Weights = match weights {
        Some(w) => w.parse().map_err(errors::export)?,
        None => Weights::Auto,
    };
    let (card, said) =
        ModelMeta::choose(Some(&flowar), meta.as_deref(), no_meta).map_err(errors::export)?;
    let mut notes: Vec<String> = said.into_iter().collect();
    let f = Checkpoint::open_with(&flowar, weights).map_err(|e| errors::export(e.into()))?;
    let v = VaeCheckpoint::open(&vae).map_err(errors::export)?;
    notes.extend(source_notes(&f, &v));
    let report = py.detach(|| {
        // Checked once per tensor read, with the GIL taken only for that check.
        let interrupted = || {
            Python::attach(|py| py.check_signals().is_err())
                .then_some("interrupted by KeyboardInterrupt")
        };
        let (fc, vc) = (
            Cancellable {
                source: &f,
                cancelled: &interrupted,
            },
            Cancellable {
                source: &v,
                cancelled: &interrupted,
            },
        );
        let mut req = ConvertRequest::new(&fc, &vc, &out)
            .vae_config(v.config())
            .latent_scale(latent_scale)
            .latent_shift(latent_shift)
            .meta(card)
            .force(force)
            .allow_nonfinite(allow_nonfinite)
            .quantize(quantize)
            .source_file("flowar", &flowar, f.format());
        for (role, path, format) in v.source_files() {
            req = req.source_file(&role, path, &format);
        }
        convert_as(&req, precision)
    });
    let report = report.map_err(|e| match e {
        flowar_exporter::ExportError::Cancelled(_) => {
            pyo3::exceptions::PyKeyboardInterrupt::new_err(e.to_string())
        }
        e => errors::export(e),
    })?;
    notes.push(report.latent_norm_note());
    let d = PyDict::new(py);
    d.set_item("out", &out)?;
    d.set_item(
        "manifest_json",
        serde_json::to_string(&report.manifest)
            .map_err(|e| PyValueError::new_err(e.to_string()))?,
    )?;
    d.set_item("ignored_keys", report.ignored_keys.len())?;
    d.set_item("notes", notes)?;
    Ok(d)
}
