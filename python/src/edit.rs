//! Editing's inputs for `flowar._flowar.Pipeline.edit` / `edit_to`: source images and
//! masks from pixel buffers (numpy, PIL) or PNG files, read as `flowar edit` reads them,
//! and the text its outputs carry.

use std::path::{Path, PathBuf};

use pyo3::prelude::*;
use pyo3::types::PyDict;

use flowar_runtime::edit_input::{self, Source};
use flowar_runtime::{Error, Mask};

use crate::errors;

/// The rule, as every output records it (`flowar:edit_rule`): the text of `flowar edit`'s
/// `RULE` (cli/src/commands/edit.rs), which the runtime does not export.
pub const RULE: &str = "teacher forcing: tokens = (encoder mean - shift) * scale; G_k = \
area_downsample(tokens, s_k); regenerate where area_downsample(mask, s_k) > 0 (scales < \
keep_scales known whole); after every step known tokens = (1 - t_next) G_k + t_next noise_k";

/// One source image, fitted to the model's size, with its mask (inverted already when the
/// edit out-paints) and what the output's text records of them.
pub struct Input {
    pub source: Source,
    pub mask: Option<Mask>,
    /// The mask file's sha256, `alpha:<sha256 of the image>`, or `none` (as `flowar edit`).
    pub mask_hash: String,
    /// How errors name it: `image 3` or its path.
    pub name: String,
}

/// Source `i` from an 8-bit buffer `[height, width, channels]` (3 or 4; RGBA's alpha is
/// the mask where no mask is given) and its optional grey mask `[mask_h, mask_w]`.
pub fn from_pixels(
    i: usize,
    image: (&[u8], usize, usize, usize),
    mask: Option<(&[u8], usize, usize)>,
    invert: bool,
    size: usize,
) -> Result<Input, Error> {
    let (pixels, h, w, c) = image;
    let name = format!("image {i}");
    let source =
        edit_input::source_from_pixels(pixels, w, h, c, size).map_err(|e| named(&name, e))?;
    let (mask, mask_hash) = match mask {
        Some((values, mh, mw)) => {
            let m = edit_input::mask_from_grey(values, mw, mh, (w, h), size)
                .map_err(|e| named(&format!("the mask of {name}"), e))?;
            (Some(m), edit_input::sha256_hex(values))
        }
        None => alpha(&source),
    };
    Ok(Input {
        mask: orient(mask, invert),
        source,
        mask_hash,
        name,
    })
}

/// A source image from a PNG file and its optional mask file, as `flowar edit --image
/// --mask` reads them.
pub fn from_files(
    path: &Path,
    mask_path: Option<&Path>,
    invert: bool,
    size: usize,
) -> Result<Input, Error> {
    let source = edit_input::load_source(path, size)?;
    let from = source.fitted_from.unwrap_or((size as u32, size as u32));
    let (mask, mask_hash) = match mask_path {
        Some(mp) => {
            let bytes = std::fs::read(mp).map_err(|e| Error::io(mp, e))?;
            let m = edit_input::mask_from_png(&bytes, &mp.display().to_string(), from, size)?;
            (Some(m), edit_input::sha256_hex(&bytes))
        }
        None => alpha(&source),
    };
    Ok(Input {
        mask: orient(mask, invert),
        source,
        mask_hash,
        name: path.display().to_string(),
    })
}

/// A `BadArgument` prefixed with what it is about.
fn named(what: &str, e: Error) -> Error {
    match e {
        Error::BadArgument(m) => Error::BadArgument(format!("{what}: {m}")),
        other => other,
    }
}

fn alpha(source: &Source) -> (Option<Mask>, String) {
    match &source.alpha_mask {
        Some(m) => (Some(m.clone()), format!("alpha:{}", source.sha256)),
        None => (None, "none".to_string()),
    }
}

fn orient(mask: Option<Mask>, invert: bool) -> Option<Mask> {
    match (mask, invert) {
        (Some(m), true) => Some(m.inverted()),
        (m, _) => m,
    }
}

/// `flowar edit`'s checks of a set of inputs: out-painting needs a mask, compositing one per
/// image.
pub fn check(inputs: &[Input], invert: bool, composite: bool) -> Result<(), Error> {
    if invert && inputs.iter().all(|i| i.mask.is_none()) {
        return Err(Error::BadArgument(
            "invert_mask needs a mask (give one, or an RGBA image whose alpha is the mask)".into(),
        ));
    }
    if composite {
        if let Some(i) = inputs.iter().find(|i| i.mask.is_none()) {
            return Err(Error::BadArgument(format!(
                "composite pastes the source back outside the mask, but {} has no mask \
                 (give one, or an RGBA image whose alpha is the mask)",
                i.name
            )));
        }
    }
    Ok(())
}

/// What kind of edit a run is (`flowar:edit`), as `flowar edit` names it.
pub fn task(any_mask: bool, keep_scales: usize, invert: bool) -> &'static str {
    match (any_mask, keep_scales > 0) {
        (false, _) => "variation",
        (true, _) if invert => "outpaint",
        (true, false) => "inpaint",
        (true, true) => "inpaint+keep_scales",
    }
}

/// The edit's PNG text keys after the generation's (`flowar edit --out`'s).
pub fn text(
    input: &Input,
    task: &str,
    invert: bool,
    keep_scales: usize,
    composite: bool,
) -> [(String, String); 7] {
    [
        ("flowar:edit".into(), task.to_string()),
        ("flowar:source_sha256".into(), input.source.sha256.clone()),
        ("flowar:mask_sha256".into(), input.mask_hash.clone()),
        ("flowar:invert_mask".into(), invert.to_string()),
        ("flowar:keep_scales".into(), keep_scales.to_string()),
        ("flowar:composite".into(), composite.to_string()),
        ("flowar:edit_rule".into(), RULE.to_string()),
    ]
}

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
