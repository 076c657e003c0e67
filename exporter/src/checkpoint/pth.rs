//! `torch.save` zip archives: `<root>/data.pkl` plus one `<root>/data/<key>`
//! entry per storage.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Mutex;

use zip::ZipArchive;

use super::pickle::{self, Parsed, TensorDesc, Value};
use super::{
    not_ckpt, Backend, CheckpointError, Contents, DType, Entry, Location, StateDictSummary,
    TensorInfo, Weights, TOP_LEVEL,
};

/// Largest `data.pkl` accepted. Real state-dict pickles are a few MB.
const MAX_PICKLE_BYTES: u64 = 64 << 20;

fn zip_err(path: &Path, source: zip::result::ZipError) -> CheckpointError {
    CheckpointError::Zip {
        path: path.to_path_buf(),
        source,
    }
}

fn bad_storage(path: &Path, key: &str, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::BadStorage {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Finds the `data.pkl` entry and returns (index, archive root with trailing `/` or empty).
fn find_data_pkl(
    path: &Path,
    archive: &ZipArchive<File>,
) -> Result<(usize, String), CheckpointError> {
    let mut best: Option<(usize, &str)> = None;
    for i in 0..archive.len() {
        let Some(name) = archive.name_for_index(i) else {
            continue;
        };
        if name == "data.pkl" || name.ends_with("/data.pkl") {
            let better = match best {
                None => true,
                Some((_, b)) => (name.matches('/').count(), name) < (b.matches('/').count(), b),
            };
            if better {
                best = Some((i, name));
            }
        }
    }
    let Some((i, name)) = best else {
        return Err(not_ckpt(
            path,
            "zip archive has no data.pkl entry (not a torch.save file)",
        ));
    };
    let root = name.strip_suffix("data.pkl").unwrap_or("").to_string();
    Ok((i, root))
}

/// Reads a whole (small) entry, refusing anything larger than `limit`.
fn read_small_entry(
    path: &Path,
    archive: &mut ZipArchive<File>,
    index: usize,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>, CheckpointError> {
    let entry = archive.by_index(index).map_err(|e| zip_err(path, e))?;
    if entry.size() > limit {
        return Err(CheckpointError::TooLarge {
            path: path.to_path_buf(),
            what: what.to_string(),
            size: entry.size(),
            limit,
        });
    }
    let mut buf = Vec::new();
    entry
        .take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| CheckpointError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
    if buf.len() as u64 > limit {
        return Err(CheckpointError::TooLarge {
            path: path.to_path_buf(),
            what: what.to_string(),
            size: buf.len() as u64,
            limit,
        });
    }
    Ok(buf)
}

/// A dict's items, in pickle order.
type Items<'a> = &'a [(Value, Value)];

/// A dict of the checkpoint that holds tensors, by the top-level key it sits under.
struct Candidate<'a> {
    name: String,
    items: &'a [(Value, Value)],
}

/// Whether a top-level key names EMA weights (`model_ema`, `ema`, `state_dict_ema`, ...).
fn is_ema(name: &str) -> bool {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w.eq_ignore_ascii_case("ema"))
}

/// The state dicts the unpickled top-level object holds: the top level itself when it
/// holds tensors, else each top-level entry that is a dict holding tensors (a training
/// checkpoint's `model` and `model_ema`).
fn candidates<'a>(
    path: &Path,
    parsed: &'a Parsed,
) -> Result<(Vec<Candidate<'a>>, Items<'a>), CheckpointError> {
    let Some(top) = parsed.dict_items(&parsed.root) else {
        return Err(not_ckpt(
            path,
            format!(
                "top-level pickle object is a {}, not a dict",
                parsed.type_name(&parsed.root)
            ),
        ));
    };
    let holds_tensors =
        |items: &[(Value, Value)]| items.iter().any(|(_, v)| parsed.tensor(v).is_some());
    if holds_tensors(top) {
        let only = Candidate {
            name: TOP_LEVEL.into(),
            items: top,
        };
        return Ok((vec![only], top));
    }
    let mut found: Vec<Candidate<'a>> = Vec::new();
    for (k, v) in top {
        let (Value::Str(name), Some(items)) = (k, parsed.dict_items(v)) else {
            continue;
        };
        if holds_tensors(items) {
            // Python dict semantics: a later assignment to the same key wins.
            found.retain(|c| c.name != **name);
            found.push(Candidate {
                name: name.to_string(),
                items,
            });
        }
    }
    Ok((found, top))
}

/// Picks the state dict to convert: EMA weights when the checkpoint has them (the
/// reference evaluates with them) unless `weights` asks for the trained ones.
fn select<'a>(
    path: &Path,
    found: &'a [Candidate<'a>],
    top: &'a [(Value, Value)],
    weights: Weights,
) -> Result<(Option<&'a str>, Items<'a>), CheckpointError> {
    let by = |pick: &dyn Fn(&str) -> bool| found.iter().find(|c| pick(&c.name));
    let ema = by(&|n| is_ema(n));
    let model = ["model", "state_dict", "module", "net"]
        .iter()
        .find_map(|want| by(&|n| n == *want))
        .or_else(|| {
            // A single non-EMA state dict under another name.
            let rest: Vec<&Candidate> = found.iter().filter(|c| !is_ema(&c.name)).collect();
            (rest.len() == 1).then(|| rest[0])
        });
    let names = || {
        found
            .iter()
            .map(|c| format!("`{}`", c.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match weights {
        Weights::Auto => ema.or(model),
        Weights::Ema => Some(ema.ok_or_else(|| {
            not_ckpt(
                path,
                format!(
                    "no EMA weights to convert (--weights ema); the state dicts here are: {}",
                    if found.is_empty() { "none".into() } else { names() }
                ),
            )
        })?),
        Weights::Model => Some(model.ok_or_else(|| {
            not_ckpt(
                path,
                format!(
                    "no trained (non-EMA) weights to convert (--weights model); the state dicts here are: {}",
                    if found.is_empty() { "none".into() } else { names() }
                ),
            )
        })?),
    };
    Ok(match chosen {
        Some(c) if c.name == TOP_LEVEL => (None, c.items),
        Some(c) => (Some(c.name.as_str()), c.items),
        // No tensors anywhere: read the top level (its entries are reported as skipped).
        None => (None, top),
    })
}

/// Parameter count and dtypes of one candidate, for `flowar inspect`.
fn summarize(parsed: &Parsed, c: &Candidate<'_>) -> StateDictSummary {
    let mut s = StateDictSummary {
        name: c.name.clone(),
        tensors: 0,
        parameters: 0,
        dtypes: BTreeMap::new(),
        selected: false,
    };
    for (_, v) in c.items {
        if let Some(t) = parsed.tensor(v) {
            s.tensors += 1;
            s.parameters = s
                .parameters
                .saturating_add(t.shape.iter().fold(1u64, |a, &d| a.saturating_mul(d)));
            *s.dtypes
                .entry(t.storage.kind.dtype_name().to_string())
                .or_default() += 1;
        }
    }
    s
}

fn dtype_of(kind: pickle::StorageKind) -> Option<DType> {
    match kind {
        pickle::StorageKind::Float => Some(DType::F32),
        pickle::StorageKind::Half => Some(DType::F16),
        pickle::StorageKind::BFloat16 => Some(DType::BF16),
        _ => None,
    }
}

/// Checks a tensor view against its storage and the storage's zip entry.
fn validate_view(
    path: &Path,
    key: &str,
    t: &TensorDesc,
    entry_size: u64,
) -> Result<Vec<usize>, CheckpointError> {
    let es = t.storage.kind.elem_size();
    let storage_bytes = t
        .storage
        .numel
        .checked_mul(es)
        .ok_or_else(|| bad_storage(path, key, "storage size overflows"))?;
    if storage_bytes > entry_size {
        return Err(bad_storage(
            path,
            key,
            format!(
                "storage '{}' declares {} elements ({storage_bytes} bytes) but its zip entry holds {entry_size} bytes",
                t.storage.key, t.storage.numel
            ),
        ));
    }
    let numel = t
        .shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad_storage(path, key, format!("shape {:?} overflows", t.shape)))?;
    if numel == 0 {
        if t.offset > t.storage.numel {
            return Err(bad_storage(
                path,
                key,
                "storage offset is past the end of the storage",
            ));
        }
    } else {
        let mut max = t.offset;
        for (&d, &s) in t.shape.iter().zip(&t.stride) {
            max = (d - 1)
                .checked_mul(s)
                .and_then(|x| x.checked_add(max))
                .ok_or_else(|| bad_storage(path, key, "tensor extent overflows"))?;
        }
        if max >= t.storage.numel {
            return Err(bad_storage(
                path,
                key,
                format!(
                    "view (offset {}, shape {:?}, stride {:?}) reaches element {max} of a storage with {} elements",
                    t.offset, t.shape, t.stride, t.storage.numel
                ),
            ));
        }
        if numel > t.storage.numel {
            return Err(bad_storage(
                path,
                key,
                format!(
                    "tensor has {numel} elements but its storage only {}; overlapping/expanded views are not supported",
                    t.storage.numel
                ),
            ));
        }
    }
    t.shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad_storage(path, key, "shape does not fit in memory"))
}

pub(super) fn open(path: &Path, file: File, weights: Weights) -> Result<Contents, CheckpointError> {
    let mut archive = ZipArchive::new(file).map_err(|e| zip_err(path, e))?;
    let (pkl_index, root) = find_data_pkl(path, &archive)?;

    if let Some(i) = archive.index_for_name(&format!("{root}byteorder")) {
        let order = read_small_entry(path, &mut archive, i, 16, "byteorder entry")?;
        if order.trim_ascii() != b"little" {
            return Err(not_ckpt(
                path,
                format!(
                    "checkpoint byte order is '{}'; only little-endian is supported",
                    String::from_utf8_lossy(&order).trim()
                ),
            ));
        }
    }

    let pkl = read_small_entry(path, &mut archive, pkl_index, MAX_PICKLE_BYTES, "data.pkl")?;
    let parsed = pickle::parse(path, &pkl)?;
    drop(pkl);
    let (found, top) = candidates(path, &parsed)?;
    let (selected, state) = select(path, &found, top, weights)?;
    let state_dicts: Vec<StateDictSummary> = found
        .iter()
        .map(|c| {
            let mut s = summarize(&parsed, c);
            s.selected = selected.map_or(c.name == TOP_LEVEL, |n| n == c.name);
            s
        })
        .collect();
    let selected = selected.map(str::to_string);

    // Python dict semantics: later assignments to a key win.
    let mut latest: BTreeMap<String, &Value> = BTreeMap::new();
    let mut skipped: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    for (k, v) in state {
        match k {
            Value::Str(s) => {
                latest.insert(s.to_string(), v);
            }
            other => {
                let shown = match other {
                    Value::Int(i) => i.to_string(),
                    _ => format!("<{} key>", parsed.type_name(other)),
                };
                skipped.insert(shown, ("non-string key in state dict".into(), None));
            }
        }
    }

    let mut tensors = BTreeMap::new();
    let mut entry_sizes: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (key, v) in latest {
        if let Some((global, offset)) = parsed.foreign_origin(v) {
            return Err(CheckpointError::ForeignValue {
                path: path.to_path_buf(),
                key,
                global: global.to_string(),
                offset,
            });
        }
        let Some(t) = parsed.tensor(v) else {
            match v {
                Value::None
                | Value::Bool
                | Value::Int(_)
                | Value::BigInt
                | Value::Float
                | Value::Str(_)
                | Value::Bytes => {}
                _ => {
                    let reason = format!("not a tensor ({})", parsed.type_name(v));
                    skipped.insert(key, (reason, None));
                }
            }
            continue;
        };
        let Some(dtype) = dtype_of(t.storage.kind) else {
            let name = t.storage.kind.dtype_name();
            skipped.insert(
                key,
                (format!("unsupported dtype {name}"), Some(name.to_string())),
            );
            continue;
        };
        let (entry, size) = match entry_sizes.get(&t.storage.key) {
            Some(&found) => found,
            None => {
                let name = format!("{root}data/{}", t.storage.key);
                let Some(idx) = archive.index_for_name(&name) else {
                    return Err(bad_storage(
                        path,
                        &key,
                        format!("storage entry '{name}' is missing from the archive"),
                    ));
                };
                let size = archive.by_index(idx).map_err(|e| zip_err(path, e))?.size();
                entry_sizes.insert(t.storage.key.clone(), (idx, size));
                (idx, size)
            }
        };
        let shape = validate_view(path, &key, t, size)?;
        tensors.insert(
            key,
            Entry {
                info: TensorInfo { dtype, shape },
                loc: Location::Zip {
                    entry,
                    offset: t.offset,
                    strides: t.stride.clone(),
                },
            },
        );
    }
    Ok(Contents {
        backend: Backend::Zip(Mutex::new(archive)),
        tensors,
        skipped,
        state_dicts,
        selected,
    })
}

/// Reads `len` bytes starting at byte `start` of zip entry `index`.
pub(super) fn read_range(
    path: &Path,
    key: &str,
    archive: &mut ZipArchive<File>,
    index: usize,
    start: u64,
    len: u64,
) -> Result<Vec<u8>, CheckpointError> {
    let mut entry = archive.by_index(index).map_err(|e| zip_err(path, e))?;
    let end = start
        .checked_add(len)
        .ok_or_else(|| bad_storage(path, key, "byte range overflows"))?;
    if end > entry.size() {
        return Err(bad_storage(
            path,
            key,
            "byte range exceeds the storage entry",
        ));
    }
    let io_err = |e| CheckpointError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let skipped = io::copy(&mut (&mut entry).take(start), &mut io::sink()).map_err(io_err)?;
    if skipped != start {
        return Err(CheckpointError::Truncated {
            path: path.to_path_buf(),
            detail: format!("storage for tensor `{key}` ended after {skipped} bytes"),
        });
    }
    // Grow with the data actually read rather than trusting declared sizes.
    let mut buf = Vec::with_capacity(usize::try_from(len.min(64 << 20)).unwrap_or(0));
    (&mut entry)
        .take(len)
        .read_to_end(&mut buf)
        .map_err(io_err)?;
    if buf.len() as u64 != len {
        return Err(CheckpointError::Truncated {
            path: path.to_path_buf(),
            detail: format!(
                "storage for tensor `{key}` has {} of the {len} bytes needed",
                buf.len()
            ),
        });
    }
    Ok(buf)
}
