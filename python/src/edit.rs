//! Editing's inputs for `flowar._flowar.Pipeline.edit` / `edit_to`: source images and
//! masks from pixel buffers (numpy, PIL) or PNG files, read as `flowar edit` reads them,
//! and the text its outputs carry.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use flowar_runtime::Error;

use crate::errors;

// The inputs' rules (reading, fitting, alpha masks, inversion, the checks, the task name
// and the output text) are the runtime's, shared with `flowar edit` and the C ABI.
pub use flowar_runtime::edit_input::{
    check, from_files, from_pixels, png_text as text, task, EditInput as Input, RULE,
};

/// Reads and checks the source images (PNG files) and masks of an edit set for a model of
/// `image_size` before any work, as `flowar edit` does; returns per image
/// `{"sha256", "mask_sha256", "fitted_from", "has_mask"}` and the set's task
/// (`flowar:edit`). Bad inputs raise `ValueError` naming the file.
#[pyfunction]
#[pyo3(signature = (images, masks, image_size, keep_scales, invert_mask, composite))]
pub fn edit_inputs<'py>(
    py: Python<'py>,
    images: Vec<PathBuf>,
    masks: Vec<Option<PathBuf>>,
    image_size: usize,
    keep_scales: usize,
    invert_mask: bool,
    composite: bool,
) -> PyResult<(Vec<Bound<'py, PyDict>>, String)> {
    if masks.len() != images.len() {
        return Err(errors::runtime(Error::BadArgument(format!(
            "{} masks for {} images",
            masks.len(),
            images.len()
        ))));
    }
    let inputs = py
        .detach(|| -> Result<Vec<Input>, Error> {
            let inputs = images
                .iter()
                .zip(&masks)
                .map(|(p, m)| from_files(p, m.as_deref(), invert_mask, image_size))
                .collect::<Result<Vec<_>, _>>()?;
            check(&inputs, invert_mask, composite)?;
            Ok(inputs)
        })
        .map_err(errors::runtime)?;
    let task = task(
        inputs.iter().any(|i| i.mask.is_some()),
        keep_scales,
        invert_mask,
    );
    let rows = inputs
        .iter()
        .map(|i| {
            let d = PyDict::new(py);
            d.set_item("sha256", &i.source.sha256)?;
            d.set_item("mask_sha256", &i.mask_hash)?;
            d.set_item("fitted_from", i.source.fitted_from)?;
            d.set_item("has_mask", i.mask.is_some())?;
            Ok(d)
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok((rows, task.to_string()))
}
