//! `flowar._flowar.class_ids`: classes as Python callers give them (a class or a sequence
//! of them; each an id, numpy integers included, or a name) resolved by the runtime's one
//! rule, [`resolve_class`], which the CLI's `--class` also follows. `flowar.Pipeline` and
//! `flowar.ray.class_list` both resolve through here.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyString};

use flowar_runtime::manifest::{resolve_class, ClassRef};

use crate::errors;

fn not_a_class(c: &Bound<'_, PyAny>) -> PyErr {
    let shown = c
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "?".into());
    PyTypeError::new_err(format!(
        "a class is an id (int) or a name (str), got {shown}"
    ))
}

/// An integer id: an `int` or anything else with `__index__` (numpy integers), not a bool.
fn is_id(c: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(!c.is_instance_of::<PyBool>() && c.hasattr("__index__")?)
}

/// One class: a `str` is an id or a name, an integer an id; anything else a `TypeError`.
fn one(c: &Bound<'_, PyAny>, num_classes: usize, class_names: &[String]) -> PyResult<usize> {
    let resolve = |class| {
        resolve_class(class, num_classes, class_names).map_err(|e| errors::runtime(e.into()))
    };
    if c.is_instance_of::<PyString>() {
        return resolve(ClassRef::Text(&c.extract::<String>()?));
    }
    if !is_id(c)? {
        return Err(not_a_class(c));
    }
    match c.extract::<i64>() {
        Ok(id) => resolve(ClassRef::Id(id)),
        // Past i64: as text it is still a whole number, out of range.
        Err(_) => resolve(ClassRef::Text(&c.str()?.to_string())),
    }
}

/// The class ids of `classes` (one class, or a sequence of them) for a model with
/// `num_classes` classes named `class_names`. An unknown name or an id out of range raises
/// `ValueError`, anything but an id or a name (a bool, a float, bytes) `TypeError`.
#[pyfunction]
pub fn class_ids(
    classes: &Bound<'_, PyAny>,
    num_classes: usize,
    class_names: Vec<String>,
) -> PyResult<Vec<usize>> {
    if classes.is_instance_of::<PyString>() || is_id(classes)? {
        return Ok(vec![one(classes, num_classes, &class_names)?]);
    }
    if classes.is_instance_of::<PyBytes>() || classes.is_instance_of::<PyBool>() {
        return Err(not_a_class(classes));
    }
    let items = classes.try_iter().map_err(|_| not_a_class(classes))?;
    items.map(|c| one(&c?, num_classes, &class_names)).collect()
}
