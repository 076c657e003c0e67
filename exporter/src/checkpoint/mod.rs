//! Safe reading of model checkpoints: PyTorch `torch.save` zip archives
//! (`.pth`, `.ckpt`) and `.safetensors` files.
//!
//! Pickles are interpreted by a small restricted interpreter ([`pickle`]) that
//! only understands plain data plus the few torch globals a state dict needs;
//! nothing from the file is ever executed. Tensor data is read on demand, one
//! tensor at a time, and every size declared by the file is checked against
//! the real size of the data before anything is allocated.

mod pickle;
mod pth;
mod safetensors;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Storage dtype of a loadable tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

/// Dtype and shape of a loadable tensor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Which state dict to convert from a checkpoint that holds several: a training
/// checkpoint keeps the trained weights (`model`) and their exponential moving average
/// (`model_ema`), which is what the reference evaluates and reports its FID with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Weights {
    /// The EMA weights when the checkpoint has them, else the trained ones.
    #[default]
    Auto,
    /// The EMA weights; an error when there are none.
    Ema,
    /// The trained (non-EMA) weights; an error when there are none.
    Model,
}

impl std::str::FromStr for Weights {
    type Err = crate::ExportError;
    fn from_str(s: &str) -> crate::Result<Weights> {
        match s {
            "auto" => Ok(Weights::Auto),
            "ema" => Ok(Weights::Ema),
            "model" => Ok(Weights::Model),
            _ => Err(crate::ExportError::BadArgument(format!(
                "unknown weights `{s}` (expected ema or model)"
            ))),
        }
    }
}

/// The name [`StateDictSummary::name`] gives a checkpoint that is a state dict itself.
pub const TOP_LEVEL: &str = "(top level)";

/// One state dict found in a checkpoint, for `flowar inspect`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StateDictSummary {
    /// The top-level key it sits under (`model`, `model_ema`), or [`TOP_LEVEL`].
    pub name: String,
    pub tensors: usize,
    pub parameters: u64,
    /// Tensor count per dtype (`float32`, `float16`, ...).
    pub dtypes: BTreeMap<String, usize>,
    /// Whether this is the one the checkpoint was opened with.
    pub selected: bool,
}

/// The prefix `torch.nn.parallel.DistributedDataParallel` puts on every key of a model it
/// wraps; stripped when every key has it.
pub const DDP_PREFIX: &str = "module.";

/// Errors from opening or reading a checkpoint. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: I/O error: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a readable checkpoint: {reason}", .path.display())]
    NotACheckpoint { path: PathBuf, reason: String },
    #[error("{}: invalid or truncated zip archive: {source}", .path.display())]
    Zip {
        path: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },
    #[error("{}: file is truncated: {detail}", .path.display())]
    Truncated { path: PathBuf, detail: String },
    #[error(
        "{}: pickle references global `{module}.{name}` at byte offset {offset}, which is not \
         on the allow-list (refusing to run code from a checkpoint)",
        .path.display()
    )]
    ForeignGlobal {
        path: PathBuf,
        module: String,
        name: String,
        offset: usize,
    },
    #[error(
        "{}: entry `{key}` of the state dict is built by global `{global}` (named at byte \
         offset {offset}), which is not on the allow-list (refusing to run code from a checkpoint)",
        .path.display()
    )]
    ForeignValue {
        path: PathBuf,
        key: String,
        global: String,
        offset: usize,
    },
    #[error(
        "{}: unsupported pickle opcode 0x{opcode:02x} ({}) at byte offset {offset}",
        .path.display(),
        pickle::opcode_name(.opcode)
    )]
    UnsupportedOpcode {
        path: PathBuf,
        opcode: u8,
        offset: usize,
    },
    #[error("{}: malformed pickle at byte offset {offset}: {reason}", .path.display())]
    BadPickle {
        path: PathBuf,
        offset: usize,
        reason: String,
    },
    #[error("{}: pickle nesting deeper than {limit} at byte offset {offset}", .path.display())]
    NestingTooDeep {
        path: PathBuf,
        offset: usize,
        limit: usize,
    },
    #[error("{}: {what} too large ({size} > limit {limit})", .path.display())]
    TooLarge {
        path: PathBuf,
        what: String,
        size: u64,
        limit: u64,
    },
    #[error("{}: bad storage for tensor `{key}`: {reason}", .path.display())]
    BadStorage {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{}: no tensor named `{key}`", .path.display())]
    MissingKey { path: PathBuf, key: String },
    #[error(
        "{}: tensor `{key}` has unsupported dtype {dtype} (only float32, float16 and bfloat16 can be loaded)",
        .path.display()
    )]
    UnsupportedDType {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    #[error("{}: entry `{key}` is not a loadable tensor: {reason}", .path.display())]
    NotATensor {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{}: invalid safetensors file: {reason}", .path.display())]
    SafeTensors { path: PathBuf, reason: String },
}

/// Where a loadable tensor's bytes live.
#[derive(Debug, Clone)]
enum Location {
    /// A (possibly strided) view into a zip entry of a torch archive.
    Zip {
        entry: usize,
        /// Element offset of the view into the storage.
        offset: u64,
        /// Element strides.
        strides: Vec<u64>,
    },
    /// A contiguous byte range of a safetensors file (absolute file offsets).
    Range { start: u64, len: u64 },
}

#[derive(Debug, Clone)]
struct Entry {
    info: TensorInfo,
    loc: Location,
}

enum Backend {
    Zip(Mutex<zip::ZipArchive<File>>),
    File(Mutex<File>),
}

/// What the format readers hand back to [`Checkpoint::open`].
struct Contents {
    backend: Backend,
    tensors: BTreeMap<String, Entry>,
    /// key -> (reason, Some(dtype name) when the entry is a tensor of another dtype)
    skipped: BTreeMap<String, (String, Option<String>)>,
    /// Every state dict found (empty: the file is one state dict).
    state_dicts: Vec<StateDictSummary>,
    /// The top-level key of the state dict read, when it was nested.
    selected: Option<String>,
}

/// An opened checkpoint: named float tensors, loaded on demand.
pub struct Checkpoint {
    path: PathBuf,
    format: &'static str,
    backend: Backend,
    tensors: BTreeMap<String, Entry>,
    skipped: Vec<(String, String)>,
    unsupported: BTreeMap<String, Option<String>>,
    state_dicts: Vec<StateDictSummary>,
    selected: Option<String>,
    stripped_prefix: Option<&'static str>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("tensors", &self.tensors.len())
            .field("skipped", &self.skipped.len())
            .finish()
    }
}

fn io_err(path: &Path, source: std::io::Error) -> CheckpointError {
    CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn not_ckpt(path: &Path, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::NotACheckpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl Checkpoint {
    /// Opens a checkpoint, detecting the format from the file's magic bytes
    /// (zip `PK\x03\x04` vs safetensors header), not from the extension.
    ///
    /// A top-level dict that holds tensors is the state dict itself. A torch zip
    /// file whose top-level dict holds state dicts under keys (a training
    /// checkpoint's `model` and `model_ema`, MAR's `{"model": ...}`) is read from
    /// the one [`Weights::Auto`] picks: the EMA weights when present. See
    /// [`Checkpoint::open_with`]. Keys that all start with [`DDP_PREFIX`] lose it.
    pub fn open(path: &Path) -> Result<Checkpoint, CheckpointError> {
        Checkpoint::open_with(path, Weights::Auto)
    }

    /// [`Checkpoint::open`] reading the state dict `weights` picks.
    pub fn open_with(path: &Path, weights: Weights) -> Result<Checkpoint, CheckpointError> {
        let mut file = File::open(path).map_err(|e| io_err(path, e))?;
        let mut head = Vec::with_capacity(16);
        (&mut file)
            .take(16)
            .read_to_end(&mut head)
            .map_err(|e| io_err(path, e))?;
        let (format, contents) = if head.starts_with(b"PK\x03\x04")
            || head.starts_with(b"PK\x05\x06")
        {
            ("pytorch-zip", pth::open(path, file, weights)?)
        } else if head.len() >= 9 && head.get(8) == Some(&b'{') {
            ("safetensors", safetensors::open(path, file)?)
        } else if head.is_empty() {
            return Err(not_ckpt(path, "file is empty"));
        } else if head.first() == Some(&0x80) {
            return Err(not_ckpt(
                path,
                "this looks like a legacy (pre-1.6) torch.save file, which is not supported; \
                 re-save it with a current torch (zip format) or as .safetensors",
            ));
        } else {
            let shown: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
            return Err(not_ckpt(
                path,
                format!(
                    "unrecognised format (first bytes {}); expected a torch zip archive or safetensors",
                    shown.join(" ")
                ),
            ));
        };
        let mut contents = contents;
        let stripped_prefix = strip_ddp_prefix(&mut contents);
        if contents.state_dicts.is_empty() && !contents.tensors.is_empty() {
            contents
                .state_dicts
                .push(summarize_top_level(&contents.tensors));
        }
        let skipped = contents
            .skipped
            .iter()
            .map(|(k, (r, _))| (k.clone(), r.clone()))
            .collect();
        let unsupported = contents
            .skipped
            .into_iter()
            .map(|(k, (_, d))| (k, d))
            .collect();
        Ok(Checkpoint {
            path: path.to_path_buf(),
            format,
            backend: contents.backend,
            tensors: contents.tensors,
            skipped,
            unsupported,
            state_dicts: contents.state_dicts,
            selected: contents.selected,
            stripped_prefix,
        })
    }

    /// The file this checkpoint was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `"pytorch-zip"` or `"safetensors"`.
    pub fn format(&self) -> &'static str {
        self.format
    }

    /// Every state dict the file holds, the one read marked [`StateDictSummary::selected`].
    pub fn state_dicts(&self) -> &[StateDictSummary] {
        &self.state_dicts
    }

    /// The top-level key of the state dict read (`model_ema`, `model`), when the file
    /// nests its weights; `None` when the file is a state dict itself.
    pub fn selected_state_dict(&self) -> Option<&str> {
        self.selected.as_deref()
    }

    /// [`DDP_PREFIX`] when it was stripped from every key.
    pub fn stripped_prefix(&self) -> Option<&'static str> {
        self.stripped_prefix
    }

    /// Names of all loadable float tensors, sorted.
    pub fn keys(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    /// Dtype and shape of a loadable tensor.
    pub fn info(&self, key: &str) -> Option<&TensorInfo> {
        self.tensors.get(key).map(|e| &e.info)
    }

    /// Whether `key` names a loadable tensor.
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// Entries that are present but not loadable (key, reason), sorted by key.
    /// Plain Python scalars and strings are not listed.
    pub fn skipped(&self) -> &[(String, String)] {
        &self.skipped
    }

    /// Total number of elements over all loadable tensors.
    pub fn total_params(&self) -> usize {
        self.tensors.values().map(|e| e.info.numel()).sum()
    }

    /// Loads one tensor as contiguous row-major f32 (f16/bf16 converted
    /// exactly), reading only that tensor's bytes from the file.
    pub fn load_f32(&self, key: &str) -> Result<Vec<f32>, CheckpointError> {
        let Some(entry) = self.tensors.get(key) else {
            return Err(match self.unsupported.get(key) {
                Some(Some(dtype)) => CheckpointError::UnsupportedDType {
                    path: self.path.clone(),
                    key: key.to_string(),
                    dtype: dtype.clone(),
                },
                Some(None) => CheckpointError::NotATensor {
                    path: self.path.clone(),
                    key: key.to_string(),
                    reason: self
                        .skipped
                        .iter()
                        .find(|(k, _)| k == key)
                        .map_or_else(String::new, |(_, r)| r.clone()),
                },
                None => CheckpointError::MissingKey {
                    path: self.path.clone(),
                    key: key.to_string(),
                },
            });
        };
        let numel = entry.info.numel();
        if numel == 0 {
            return Ok(Vec::new());
        }
        let es = entry.info.dtype.size();
        match (&entry.loc, &self.backend) {
            (
                Location::Zip {
                    entry: idx,
                    offset,
                    strides,
                },
                Backend::Zip(archive),
            ) => {
                let (lo, hi) = view_extent(&entry.info.shape, strides, *offset)
                    .ok_or_else(|| self.bad_storage(key, "tensor extent overflows"))?;
                let es64 = es as u64;
                let start = lo
                    .checked_mul(es64)
                    .ok_or_else(|| self.bad_storage(key, "offset overflows"))?;
                let len = (hi - lo)
                    .checked_add(1)
                    .and_then(|n| n.checked_mul(es64))
                    .ok_or_else(|| self.bad_storage(key, "extent overflows"))?;
                let mut guard = archive.lock().unwrap_or_else(|e| e.into_inner());
                let bytes = pth::read_range(&self.path, key, &mut guard, *idx, start, len)?;
                drop(guard);
                let rel: Vec<usize> = strides
                    .iter()
                    .map(|&s| usize::try_from(s))
                    .collect::<Result<_, _>>()
                    .map_err(|_| self.bad_storage(key, "stride does not fit in memory"))?;
                gather(&bytes, entry.info.dtype, &entry.info.shape, &rel)
                    .ok_or_else(|| self.bad_storage(key, "tensor view exceeds the bytes read"))
            }
            (Location::Range { start, len }, Backend::File(file)) => {
                let mut guard = file.lock().unwrap_or_else(|e| e.into_inner());
                let bytes = safetensors::read_range(&self.path, key, &mut guard, *start, *len)?;
                drop(guard);
                if bytes.len() != numel.saturating_mul(es) {
                    return Err(self.bad_storage(key, "byte length does not match shape"));
                }
                Ok(decode(&bytes, entry.info.dtype))
            }
            _ => Err(self.bad_storage(key, "internal: location does not match file format")),
        }
    }

    fn bad_storage(&self, key: &str, reason: &str) -> CheckpointError {
        CheckpointError::BadStorage {
            path: self.path.clone(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Strips [`DDP_PREFIX`] from every key when every key (tensors and skipped entries) has it.
fn strip_ddp_prefix(c: &mut Contents) -> Option<&'static str> {
    let all = c.tensors.keys().chain(c.skipped.keys());
    let mut any = false;
    for k in all {
        if !k.starts_with(DDP_PREFIX) {
            return None;
        }
        any = true;
    }
    if !any {
        return None;
    }
    let strip = |k: String| k[DDP_PREFIX.len()..].to_string();
    c.tensors = std::mem::take(&mut c.tensors)
        .into_iter()
        .map(|(k, v)| (strip(k), v))
        .collect();
    c.skipped = std::mem::take(&mut c.skipped)
        .into_iter()
        .map(|(k, v)| (strip(k), v))
        .collect();
    Some(DDP_PREFIX)
}

/// The summary of a file that is one state dict.
fn summarize_top_level(tensors: &BTreeMap<String, Entry>) -> StateDictSummary {
    let mut dtypes = BTreeMap::new();
    for e in tensors.values() {
        let name = match e.info.dtype {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        };
        *dtypes.entry(name.to_string()).or_default() += 1;
    }
    StateDictSummary {
        name: TOP_LEVEL.into(),
        tensors: tensors.len(),
        parameters: tensors.values().map(|e| e.info.numel() as u64).sum(),
        dtypes,
        selected: true,
    }
}

/// Smallest and largest element index touched by a non-empty strided view.
fn view_extent(shape: &[usize], strides: &[u64], offset: u64) -> Option<(u64, u64)> {
    let mut hi = offset;
    for (&d, &s) in shape.iter().zip(strides) {
        let d = u64::try_from(d).ok()?;
        hi = hi.checked_add(d.checked_sub(1)?.checked_mul(s)?)?;
    }
    Some((offset, hi))
}

fn decode_one(bytes: &[u8], dtype: DType) -> f32 {
    match (dtype, bytes) {
        (DType::F32, &[a, b, c, d]) => f32::from_le_bytes([a, b, c, d]),
        (DType::F16, &[a, b]) => half::f16::from_le_bytes([a, b]).to_f32(),
        (DType::BF16, &[a, b]) => half::bf16::from_le_bytes([a, b]).to_f32(),
        _ => f32::NAN,
    }
}

/// Decodes a contiguous little-endian buffer.
fn decode(bytes: &[u8], dtype: DType) -> Vec<f32> {
    bytes
        .chunks_exact(dtype.size())
        .map(|c| decode_one(c, dtype))
        .collect()
}

/// Copies a strided view (element strides relative to `bytes[0]`) out into a
/// contiguous row-major f32 vector. Returns None if the view exceeds `bytes`.
fn gather(bytes: &[u8], dtype: DType, shape: &[usize], strides: &[usize]) -> Option<Vec<f32>> {
    let es = dtype.size();
    let numel: usize = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    if numel == 0 {
        return Some(Vec::new());
    }
    // Validate the extent once so the loops below cannot run out of bounds.
    let mut max = 0usize;
    for (&d, &s) in shape.iter().zip(strides) {
        max = max.checked_add((d - 1).checked_mul(s)?)?;
    }
    if max.checked_add(1)?.checked_mul(es)? > bytes.len() || shape.len() != strides.len() {
        return None;
    }
    // Row-major contiguous (ignoring size-1 dims)?
    let mut expect = 1usize;
    let mut contiguous = true;
    for (&d, &s) in shape.iter().zip(strides).rev() {
        if d != 1 && s != expect {
            contiguous = false;
            break;
        }
        expect = expect.checked_mul(d)?;
    }
    if contiguous {
        let n = numel.checked_mul(es)?;
        return Some(decode(bytes.get(..n)?, dtype));
    }
    let mut out = Vec::with_capacity(numel);
    let ndim = shape.len();
    let inner_d = *shape.last()?;
    let inner_s = *strides.last()?;
    let outer_shape = shape.get(..ndim - 1)?;
    let outer_strides = strides.get(..ndim - 1)?;
    let mut idx = vec![0usize; ndim - 1];
    let mut base = 0usize;
    loop {
        for i in 0..inner_d {
            let e = base + i * inner_s;
            out.push(decode_one(bytes.get(e * es..(e + 1) * es)?, dtype));
        }
        // Advance the odometer over the outer dims.
        let mut k = ndim - 1;
        loop {
            if k == 0 {
                return Some(out);
            }
            k -= 1;
            let (d, s) = (*outer_shape.get(k)?, *outer_strides.get(k)?);
            let i = idx.get_mut(k)?;
            *i += 1;
            base += s;
            if *i < d {
                break;
            }
            base -= s * d;
            *i = 0;
        }
    }
}
