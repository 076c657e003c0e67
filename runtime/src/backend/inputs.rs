//! Checks on the inputs a caller passes to a session, shared by both backends, so that a
//! wrong name or a short buffer is refused the same way before any engine sees it.

use crate::tensor::Tensor;

/// What is wrong with the inputs given to a graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("unknown input `{name}`; the graph's inputs are [{}]", declared.join(", "))]
    Unknown { name: String, declared: Vec<String> },
    #[error("input `{0}` was given twice")]
    Duplicate(String),
    #[error("missing input(s) [{}]", .0.join(", "))]
    Missing(Vec<String>),
    #[error("input `{name}` has shape {shape:?} ({elements} elements) but {stored} values")]
    Stored {
        name: String,
        shape: Vec<usize>,
        elements: usize,
        stored: usize,
    },
}

/// Checks input names against the graph's declared ones: no unknown, duplicate or missing name.
pub fn check_names(declared: &[String], names: &[&str]) -> Result<(), InputError> {
    for (i, name) in names.iter().enumerate() {
        if !declared.iter().any(|d| d == name) {
            return Err(InputError::Unknown {
                name: name.to_string(),
                declared: declared.to_vec(),
            });
        }
        if names[..i].contains(name) {
            return Err(InputError::Duplicate(name.to_string()));
        }
    }
    let missing: Vec<String> = declared
        .iter()
        .filter(|d| !names.contains(&d.as_str()))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(InputError::Missing(missing));
    }
    Ok(())
}

/// [`check_names`], plus that every host tensor holds as many values as its shape says.
pub fn check_host(declared: &[String], inputs: &[(&str, &Tensor)]) -> Result<(), InputError> {
    let names: Vec<&str> = inputs.iter().map(|(n, _)| *n).collect();
    check_names(declared, &names)?;
    inputs
        .iter()
        .try_for_each(|(name, t)| check_stored(name, t))
}

/// That a host tensor holds as many values as its shape says.
pub fn check_stored(name: &str, t: &Tensor) -> Result<(), InputError> {
    if t.stored_len() == t.len() {
        return Ok(());
    }
    Err(InputError::Stored {
        name: name.to_string(),
        shape: t.shape.clone(),
        elements: t.len(),
        stored: t.stored_len(),
    })
}
