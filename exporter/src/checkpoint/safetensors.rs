//! `.safetensors` files: an 8-byte header length, a JSON header, then data.
//! Only the header is read at open; tensor bytes are read on demand.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;

use ::safetensors::tensor::Metadata;
use ::safetensors::Dtype;

use super::{Backend, CheckpointError, Contents, DType, Entry, Location, TensorInfo};

/// Same limit as the safetensors crate.
const MAX_HEADER_BYTES: u64 = 100_000_000;

fn st_err(path: &Path, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::SafeTensors {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io_err(path: &Path, e: std::io::Error) -> CheckpointError {
    CheckpointError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

pub(super) fn open(path: &Path, mut file: File) -> Result<Contents, CheckpointError> {
    let file_len = file.metadata().map_err(|e| io_err(path, e))?.len();
    file.seek(SeekFrom::Start(0)).map_err(|e| io_err(path, e))?;
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|e| io_err(path, e))?;
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER_BYTES {
        return Err(CheckpointError::TooLarge {
            path: path.to_path_buf(),
            what: "safetensors header".into(),
            size: n,
            limit: MAX_HEADER_BYTES,
        });
    }
    let data_start = 8 + n;
    if data_start > file_len {
        return Err(CheckpointError::Truncated {
            path: path.to_path_buf(),
            detail: format!(
                "safetensors header declares {n} bytes but the file has {file_len} bytes in total"
            ),
        });
    }
    let mut header = Vec::new();
    (&mut file)
        .take(n)
        .read_to_end(&mut header)
        .map_err(|e| io_err(path, e))?;
    if header.len() as u64 != n {
        return Err(CheckpointError::Truncated {
            path: path.to_path_buf(),
            detail: "safetensors header is incomplete".into(),
        });
    }
    // Deserialising `Metadata` validates offsets, ordering and sizes.
    let metadata: Metadata =
        serde_json::from_slice(&header).map_err(|e| st_err(path, format!("bad header: {e}")))?;
    drop(header);
    let data_len = metadata.data_len() as u64;
    let expected = data_start
        .checked_add(data_len)
        .ok_or_else(|| st_err(path, "data length overflows"))?;
    if expected > file_len {
        return Err(CheckpointError::Truncated {
            path: path.to_path_buf(),
            detail: format!(
                "header describes {data_len} data bytes but only {} follow it",
                file_len - data_start
            ),
        });
    }
    if expected != file_len {
        return Err(st_err(
            path,
            format!(
                "file has {} bytes after the tensor data",
                file_len - expected
            ),
        ));
    }

    let mut tensors = BTreeMap::new();
    let mut skipped = BTreeMap::new();
    for (name, info) in metadata.tensors() {
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => {
                let d = format!("{other:?}");
                skipped.insert(name, (format!("unsupported dtype {d}"), Some(d)));
                continue;
            }
        };
        let (s, e) = info.data_offsets;
        let start = data_start
            .checked_add(s as u64)
            .ok_or_else(|| st_err(path, format!("offset of `{name}` overflows")))?;
        let len = (e as u64)
            .checked_sub(s as u64)
            .ok_or_else(|| st_err(path, format!("offsets of `{name}` are reversed")))?;
        tensors.insert(
            name,
            Entry {
                info: TensorInfo {
                    dtype,
                    shape: info.shape.clone(),
                },
                loc: Location::Range { start, len },
            },
        );
    }
    Ok(Contents {
        backend: Backend::File(Mutex::new(file)),
        tensors,
        skipped,
        state_dicts: Vec::new(),
        selected: None,
    })
}

/// Reads `len` bytes at absolute offset `start`.
pub(super) fn read_range(
    path: &Path,
    key: &str,
    file: &mut File,
    start: u64,
    len: u64,
) -> Result<Vec<u8>, CheckpointError> {
    file.seek(SeekFrom::Start(start))
        .map_err(|e| io_err(path, e))?;
    let mut buf = Vec::with_capacity(usize::try_from(len.min(64 << 20)).unwrap_or(0));
    (&mut *file)
        .take(len)
        .read_to_end(&mut buf)
        .map_err(|e| io_err(path, e))?;
    if buf.len() as u64 != len {
        return Err(CheckpointError::Truncated {
            path: path.to_path_buf(),
            detail: format!(
                "tensor `{key}` has {} of its {len} bytes (file changed since open?)",
                buf.len()
            ),
        });
    }
    Ok(buf)
}
