//! Where weights come from (a checkpoint or seeded random values) and a prefix-scoped
//! view of them, so model code reads `vb.pp("attn").get("qkv.weight", ..)` exactly as the
//! checkpoint key path `encoder_blocks.0.attn.qkv.weight` reads.

use std::cell::RefCell;
use std::collections::BTreeSet;

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::error::{ExportError, Result};

/// A named collection of float tensors.
pub trait WeightSource {
    /// File path or description, for error messages.
    fn origin(&self) -> String;
    /// All loadable tensor keys, sorted.
    fn keys(&self) -> Vec<String>;
    fn shape(&self, key: &str) -> Option<Vec<usize>>;
    fn load_f32(&self, key: &str) -> Result<Vec<f32>>;
}

/// A weight source that fails with [`ExportError::Cancelled`] once `cancelled()` says so,
/// so a conversion stops at the next tensor it reads (between and within graphs) and the
/// exporter removes its staging folder. The CLI asks about Ctrl-C, the Python package about
/// `KeyboardInterrupt`.
pub struct Cancellable<'a> {
    pub source: &'a dyn WeightSource,
    pub cancelled: &'a dyn Fn() -> Option<&'static str>,
}

impl WeightSource for Cancellable<'_> {
    fn origin(&self) -> String {
        self.source.origin()
    }
    fn keys(&self) -> Vec<String> {
        self.source.keys()
    }
    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.source.shape(key)
    }
    fn load_f32(&self, key: &str) -> Result<Vec<f32>> {
        if let Some(why) = (self.cancelled)() {
            return Err(ExportError::Cancelled(why));
        }
        self.source.load_f32(key)
    }
}

impl WeightSource for Checkpoint {
    fn origin(&self) -> String {
        self.path().display().to_string()
    }
    fn keys(&self) -> Vec<String> {
        Checkpoint::keys(self)
            .into_iter()
            .map(String::from)
            .collect()
    }
    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.info(key).map(|i| i.shape.clone())
    }
    fn load_f32(&self, key: &str) -> Result<Vec<f32>> {
        Ok(Checkpoint::load_f32(self, key)?)
    }
}

/// The error for a key that has no loadable float tensor: the checkpoint's own reason when
/// the key is there with another dtype (e.g. int64) or is not a tensor, else `MissingKey`.
pub fn missing_key(src: &dyn WeightSource, key: &str, expected: &str) -> ExportError {
    match src.load_f32(key) {
        Err(
            e @ ExportError::Checkpoint(
                CheckpointError::UnsupportedDType { .. } | CheckpointError::NotATensor { .. },
            ),
        ) => e,
        _ => ExportError::MissingKey {
            origin: src.origin(),
            key: key.to_string(),
            expected: expected.to_string(),
        },
    }
}

/// Policy for NaN/Inf found in weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonFinitePolicy {
    Refuse,
    Allow,
}

/// A prefix-scoped view of a [`WeightSource`] that records which keys were used.
pub struct Vb<'a> {
    src: &'a dyn WeightSource,
    prefix: String,
    used: &'a RefCell<BTreeSet<String>>,
    nonfinite: NonFinitePolicy,
}

impl<'a> Vb<'a> {
    pub fn root(
        src: &'a dyn WeightSource,
        used: &'a RefCell<BTreeSet<String>>,
        nonfinite: NonFinitePolicy,
    ) -> Self {
        Vb {
            src,
            prefix: String::new(),
            used,
            nonfinite,
        }
    }

    /// Descends one level: `vb.pp("attn")`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Vb<'a> {
        Vb {
            src: self.src,
            prefix: self.path(&name.to_string()),
            used: self.used,
            nonfinite: self.nonfinite,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full checkpoint key of `name` under this prefix.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn origin(&self) -> String {
        self.src.origin()
    }

    pub fn has(&self, name: &str) -> bool {
        self.src.shape(&self.path(name)).is_some()
    }

    /// The shape of a tensor that must exist; `expected` describes it for the error.
    pub fn shape(&self, name: &str, expected: &str) -> Result<Vec<usize>> {
        let key = self.path(name);
        self.src
            .shape(&key)
            .ok_or_else(|| missing_key(self.src, &key, expected))
    }

    /// Loads `name`, checking its shape, and marks it used.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let key = self.path(name);
        let found = self
            .src
            .shape(&key)
            .ok_or_else(|| missing_key(self.src, &key, &format!("{shape:?}")))?;
        if found != shape {
            return Err(ExportError::Shape {
                origin: self.src.origin(),
                key,
                expected: shape.to_vec(),
                found,
            });
        }
        let data = self.src.load_f32(&key)?;
        if self.nonfinite == NonFinitePolicy::Refuse {
            let count = data.iter().filter(|x| !x.is_finite()).count();
            if count > 0 {
                return Err(ExportError::NonFinite {
                    origin: self.src.origin(),
                    key,
                    count,
                });
            }
        }
        self.used.borrow_mut().insert(key);
        Ok(data)
    }
}

/// A key that inference does not need, with the reason it is skipped.
pub struct IgnoreRule {
    pub matches: fn(&str) -> bool,
    pub reason: &'static str,
}

/// Checks that every key was either used or matched by an ignore rule.
/// Returns the ignored keys with their reasons.
pub fn check_unused(
    src: &dyn WeightSource,
    used: &BTreeSet<String>,
    rules: &[IgnoreRule],
) -> Result<Vec<(String, &'static str)>> {
    let mut ignored = Vec::new();
    let mut unexpected = Vec::new();
    for key in src.keys() {
        if used.contains(&key) {
            continue;
        }
        match rules.iter().find(|r| (r.matches)(&key)) {
            Some(rule) => ignored.push((key, rule.reason)),
            None => unexpected.push(key),
        }
    }
    if !unexpected.is_empty() {
        let shown: Vec<_> = unexpected.iter().take(8).cloned().collect();
        let more = if unexpected.len() > 8 {
            format!(", ... ({} more)", unexpected.len() - 8)
        } else {
            String::new()
        };
        return Err(ExportError::UnexpectedKeys {
            origin: src.origin(),
            count: unexpected.len(),
            keys: format!("{}{more}", shown.join(", ")),
        });
    }
    Ok(ignored)
}
