//! Writers for `torch.save`-style zip archives and the pickles inside them, to build
//! seed corpora and hostile inputs (foreign globals, wrong dtypes, missing entries).

use std::io::{Cursor, Write};

/// A hand-assembled pickle (protocol 2 opcodes unless written otherwise).
#[derive(Debug, Clone, Default)]
pub struct Pickle(pub Vec<u8>);

impl Pickle {
    /// Starts with `PROTO proto`.
    pub fn new(proto: u8) -> Pickle {
        Pickle(vec![0x80, proto])
    }
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }
    pub fn op(&mut self, op: u8) -> &mut Self {
        self.0.push(op);
        self
    }
    /// A `str` (BINUNICODE).
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
        self
    }
    /// An int (BININT, or LONG1 when it does not fit in 32 bits).
    pub fn int(&mut self, v: i64) -> &mut Self {
        match i32::try_from(v) {
            Ok(small) => {
                self.0.push(b'J');
                self.0.extend(small.to_le_bytes());
            }
            Err(_) => {
                self.0.extend([0x8a, 8]);
                self.0.extend(v.to_le_bytes());
            }
        }
        self
    }
    /// `GLOBAL module name`.
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0.extend(module.as_bytes());
        self.0.push(b'\n');
        self.0.extend(name.as_bytes());
        self.0.push(b'\n');
        self
    }
    /// A tuple of ints.
    pub fn int_tuple(&mut self, v: &[i64]) -> &mut Self {
        self.op(b'(');
        for &x in v {
            self.int(x);
        }
        self.op(b't')
    }
    /// What `torch.save` writes for a tensor: `_rebuild_tensor_v2(storage, offset,
    /// shape, stride, requires_grad, OrderedDict())`, the storage being the persistent id
    /// `('storage', torch.<class>, key, 'cpu', numel)`.
    pub fn tensor(
        &mut self,
        class: &str,
        key: &str,
        numel: i64,
        offset: i64,
        shape: &[i64],
        stride: &[i64],
    ) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b'(');
        self.op(b'(')
            .str("storage")
            .global("torch", class)
            .str(key)
            .str("cpu")
            .int(numel)
            .op(b't')
            .op(b'Q');
        self.int(offset).int_tuple(shape).int_tuple(stride).op(0x89);
        self.global("collections", "OrderedDict").op(b')').op(b'R');
        self.op(b't').op(b'R')
    }
    /// Appends STOP and returns the bytes.
    pub fn finish(&mut self) -> Vec<u8> {
        self.op(b'.');
        self.0.clone()
    }
}

/// One tensor of a state dict to write.
#[derive(Debug, Clone)]
pub struct TensorDef {
    pub name: String,
    /// `FloatStorage`, `HalfStorage`, `BFloat16Storage`, `LongStorage`, ...
    pub class: String,
    pub shape: Vec<usize>,
    /// Little-endian element bytes.
    pub data: Vec<u8>,
}

impl TensorDef {
    pub fn f32(name: &str, shape: &[usize], values: &[f32]) -> TensorDef {
        TensorDef {
            name: name.into(),
            class: "FloatStorage".into(),
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
    pub fn i64(name: &str, shape: &[usize], values: &[i64]) -> TensorDef {
        TensorDef {
            name: name.into(),
            class: "LongStorage".into(),
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
    fn elem_size(&self) -> usize {
        match self.class.as_str() {
            "DoubleStorage" | "LongStorage" => 8,
            "FloatStorage" | "IntStorage" => 4,
            "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
            _ => 1,
        }
    }
}

fn contiguous_strides(shape: &[usize]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1] as i64;
    }
    strides
}

/// The pickle of a state dict `{name: tensor}` whose storages are keys "0", "1", ...,
/// optionally nested one level (`{wrap: {...}}`, as Lightning/MAR checkpoints do).
pub fn state_dict_pickle(tensors: &[TensorDef], wrap: Option<&str>) -> Vec<u8> {
    let mut p = Pickle::new(2);
    if let Some(w) = wrap {
        p.op(b'}').str(w);
    }
    p.op(b'}').op(b'(');
    for (i, t) in tensors.iter().enumerate() {
        let numel = (t.data.len() / t.elem_size()) as i64;
        let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        p.str(&t.name).tensor(
            &t.class,
            &i.to_string(),
            numel,
            0,
            &shape,
            &contiguous_strides(&t.shape),
        );
    }
    p.op(b'u');
    if wrap.is_some() {
        p.op(b's');
    }
    p.finish()
}

/// A torch zip archive: `<root>/data.pkl` (unless `pkl` is None), `<root>/byteorder`
/// and `<root>/data/<key>` storages, stored uncompressed.
pub fn torch_zip(root: &str, pkl: Option<&[u8]>, storages: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    if let Some(pkl) = pkl {
        w.start_file(format!("{root}/data.pkl"), opts)
            .expect("zip entry");
        w.write_all(pkl).expect("in-memory write");
    }
    w.start_file(format!("{root}/byteorder"), opts)
        .expect("zip entry");
    w.write_all(b"little").expect("in-memory write");
    for (key, data) in storages {
        w.start_file(format!("{root}/data/{key}"), opts)
            .expect("zip entry");
        w.write_all(data).expect("in-memory write");
    }
    w.finish().expect("in-memory zip").into_inner()
}

/// A complete `.pth` holding `tensors` (optionally nested under `wrap`).
pub fn torch_checkpoint(tensors: &[TensorDef], wrap: Option<&str>) -> Vec<u8> {
    let pkl = state_dict_pickle(tensors, wrap);
    let storages: Vec<(String, Vec<u8>)> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (i.to_string(), t.data.clone()))
        .collect();
    torch_zip("archive", Some(&pkl), &storages)
}

/// A `.pth` whose pickle calls a foreign global, the way a malicious pickle runs code:
/// `{ "w": module.name("echo pwned") }`.
pub fn foreign_global_checkpoint(module: &str, name: &str) -> Vec<u8> {
    let mut p = Pickle::new(2);
    p.op(b'}')
        .str("w")
        .global(module, name)
        .op(b'(')
        .str("echo pwned")
        .op(b't')
        .op(b'R')
        .op(b's');
    let pkl = p.finish();
    torch_zip("archive", Some(&pkl), &[])
}

/// Writes a safetensors file of f32/other tensors: `(name, dtype, shape, bytes)`.
pub fn safetensors_bytes(tensors: &[(String, safetensors::Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("consistent view"),
            )
        })
        .collect();
    safetensors::serialize(views, None).expect("serialise")
}
