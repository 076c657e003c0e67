//! `flowar._flowar`, the native half of the `flowar` Python package: the runtime crate
//! (pipelines, sample-set files) and the exporter (convert) called directly, with their
//! errors as Python exceptions. `flowar/__init__.py` builds the public API on it (numpy
//! arrays, the manifest as a dict); `flowar/_flowar.pyi` types it.

mod classes;
mod convert;
mod edit;
mod errors;
mod pipeline;

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyDict};

/// Reads an image of a sample set back (fully decoded, so a truncated file raises):
/// returns (RGB8 bytes, height, width, its PNG text as a dict).
#[pyfunction]
fn read_image<'py>(
    py: Python<'py>,
    path: PathBuf,
) -> PyResult<(Bound<'py, PyByteArray>, usize, usize, Bound<'py, PyDict>)> {
    let f = flowar_runtime::sample_set::read_image(&path).map_err(errors::runtime)?;
    let text = PyDict::new(py);
    for (k, v) in &f.text {
        text.set_item(k, v)?;
    }
    Ok((
        PyByteArray::new(py, &f.image.pixels),
        f.image.height,
        f.image.width,
        text,
    ))
}

/// Reads and checks a model folder's manifest without loading its graphs (JSON text).
#[pyfunction]
fn read_manifest(dir: PathBuf) -> PyResult<String> {
    let m =
        flowar_runtime::manifest::Manifest::load(&dir).map_err(|e| errors::runtime(e.into()))?;
    serde_json::to_string(&m).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
}

/// The sampler settings these arguments resolve to for the model in `dir` (its manifest
/// only, no graphs loaded), as the PNG text records them, plus `steps_json` (a number, or
/// one per scale) as run.json does. Bad settings raise `ValueError`.
#[pyfunction]
#[pyo3(signature = (dir, seed, cfg, guidance, steps, solver))]
fn settings<'py>(
    py: Python<'py>,
    dir: PathBuf,
    seed: u64,
    cfg: Option<f64>,
    guidance: Option<f64>,
    steps: Option<pipeline::StepsArg>,
    solver: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let m =
        flowar_runtime::manifest::Manifest::load(&dir).map_err(|e| errors::runtime(e.into()))?;
    let req = pipeline::request(
        &m,
        vec![pipeline::ClassArg::Id(0)],
        vec![0],
        seed,
        cfg,
        guidance,
        steps,
        solver,
    )
    .map_err(errors::runtime)?;
    req.validate(&m, None).map_err(errors::runtime)?;
    let d = PyDict::new(py);
    for (k, v) in flowar_runtime::sample_set::png_text(&m, &req, 0, 0) {
        if let Some(key) = k
            .strip_prefix("flowar:")
            .filter(|k| *k != "index" && *k != "class")
        {
            d.set_item(key, v)?;
        }
    }
    let steps_json = req
        .scale_steps
        .as_ref()
        .map_or(serde_json::json!(req.steps), |v| serde_json::json!(v));
    d.set_item("steps_json", steps_json.to_string())?;
    Ok(d)
}

/// The temporary this process writes `path` through, `.NAME.tmp-HOST-PID`, as the runtime
/// names its own: [`sweep_stale`] removes it once this process is gone.
#[pyfunction]
fn temp_path(path: PathBuf) -> PathBuf {
    flowar_runtime::atomic_file::temp_path(&path)
}

/// Removes the temporaries of images and `run.json` that this host's killed writers (a
/// worker, a driver, `flowar generate`) left in a sample set's folder; those of live
/// processes and of other hosts stay. Returns the paths removed.
#[pyfunction]
fn sweep_stale(dir: PathBuf) -> PyResult<Vec<PathBuf>> {
    flowar_runtime::sample_set::sweep_stale(&dir).map_err(errors::runtime)
}

#[pymodule]
fn _flowar(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("Error", py.get_type::<errors::FlowarError>())?;
    m.add("ModelError", py.get_type::<errors::ModelError>())?;
    m.add(
        "ProviderUnavailable",
        py.get_type::<errors::ProviderUnavailable>(),
    )?;
    m.add("Cancelled", py.get_type::<errors::Cancelled>())?;
    m.add_class::<pipeline::Pipeline>()?;
    m.add_class::<pipeline::Progress>()?;
    m.add_function(wrap_pyfunction!(classes::class_ids, m)?)?;
    m.add_function(wrap_pyfunction!(convert::convert, m)?)?;
    m.add_function(wrap_pyfunction!(edit::edit_inputs, m)?)?;
    m.add("EDIT_RULE", edit::RULE)?;
    m.add_function(wrap_pyfunction!(read_image, m)?)?;
    m.add_function(wrap_pyfunction!(read_manifest, m)?)?;
    m.add_function(wrap_pyfunction!(settings, m)?)?;
    m.add_function(wrap_pyfunction!(sweep_stale, m)?)?;
    m.add_function(wrap_pyfunction!(temp_path, m)?)?;
    Ok(())
}
