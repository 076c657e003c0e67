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
    /// A float (BINFLOAT, big-endian).
    pub fn float(&mut self, v: f64) -> &mut Self {
        self.0.push(b'G');
        self.0.extend(v.to_be_bytes());
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

/// Every loadable tensor of the checkpoint at `path` as float32, each value moved by
/// `shift` and each name given `prefix`: the weights of a real model, to write into other
/// containers (a training checkpoint, DDP-prefixed keys) or perturb.
pub fn checkpoint_tensors(path: &std::path::Path, shift: f32, prefix: &str) -> Vec<TensorDef> {
    let ck = flowar_exporter::checkpoint::Checkpoint::open(path).expect("readable checkpoint");
    ck.keys()
        .into_iter()
        .map(|k| {
            let v: Vec<f32> = ck
                .load_f32(k)
                .expect("tensor")
                .iter()
                .map(|x| x + shift)
                .collect();
            TensorDef::f32(
                &format!("{prefix}{k}"),
                &ck.info(k).expect("info").shape,
                &v,
            )
        })
        .collect()
}

fn contiguous_strides(shape: &[usize]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1] as i64;
    }
    strides
}

/// Writes the `SETITEMS` body of a state dict (`name: tensor` pairs, storages keyed from
/// `first_key`) into `p`, inside an OrderedDict as `torch.save` writes it.
fn ordered_state_dict(p: &mut Pickle, tensors: &[TensorDef], first_key: usize) {
    p.global("collections", "OrderedDict")
        .op(b')')
        .op(b'R')
        .op(b'(');
    for (i, t) in tensors.iter().enumerate() {
        let numel = (t.data.len() / t.elem_size()) as i64;
        let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        p.str(&t.name).tensor(
            &t.class,
            &(first_key + i).to_string(),
            numel,
            0,
            &shape,
            &contiguous_strides(&t.shape),
        );
    }
    p.op(b'u');
}

/// What [`training_checkpoint`] puts beside the weights, and what it can be made to hide.
#[derive(Debug, Clone, Default)]
pub struct TrainingExtras {
    /// A global called inside `args` (`os.system("echo pwned")`): a hostile checkpoint.
    pub call_in_args: Option<(String, String)>,
    /// Leave out `model_ema` (a checkpoint saved without EMA).
    pub no_ema: bool,
}

/// A checkpoint as FlowAR's (MAR-style) training script saves it with `torch.save`:
/// `{"model": ..., "model_ema": ..., "optimizer": {"state": {0: {"step", "exp_avg",
/// "exp_avg_sq"}}, "param_groups": [...]}, "epoch": 3, "scaler": {...}, "args":
/// argparse.Namespace(...)}`. The Namespace holds what real ones do: strings, numbers, a
/// numpy float, a `torch.Size`, a set, a slice, a `collections.defaultdict(list)` and a
/// `pathlib.PosixPath` (a class the reader does not know, harmless where it sits).
pub fn training_checkpoint(
    model: &[TensorDef],
    ema: &[TensorDef],
    extras: &TrainingExtras,
) -> Vec<u8> {
    let mut p = Pickle::new(2);
    let mut storages: Vec<(String, Vec<u8>)> = Vec::new();
    p.op(b'}').op(b'(');
    p.str("model");
    ordered_state_dict(&mut p, model, storages.len());
    storages.extend(
        model
            .iter()
            .enumerate()
            .map(|(i, t)| (i.to_string(), t.data.clone())),
    );
    if !extras.no_ema {
        p.str("model_ema");
        ordered_state_dict(&mut p, ema, storages.len());
        let first = storages.len();
        storages.extend(
            ema.iter()
                .enumerate()
                .map(|(i, t)| ((first + i).to_string(), t.data.clone())),
        );
    }
    // AdamW state for one parameter.
    let moments = TensorDef::f32("m", &[2], &[0.1, -0.2]);
    let step = TensorDef::f32("step", &[], &[1000.0]);
    p.str("optimizer").op(b'}').op(b'(');
    p.str("state").op(b'}').int(0).op(b'}').op(b'(');
    for (name, t) in [
        ("step", &step),
        ("exp_avg", &moments),
        ("exp_avg_sq", &moments),
    ] {
        let key = storages.len();
        let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        let numel = (t.data.len() / 4) as i64;
        p.str(name).tensor(
            "FloatStorage",
            &key.to_string(),
            numel,
            0,
            &shape,
            &contiguous_strides(&t.shape),
        );
        storages.push((key.to_string(), t.data.clone()));
    }
    // SETITEMS into the parameter's state, then state[0] = it; `"state": state` stays a
    // pair for the optimizer dict's SETITEMS below.
    p.op(b'u').op(b's');
    p.str("param_groups").op(b']').op(b'(').op(b'}').op(b'(');
    p.str("lr").float(1e-4).str("weight_decay").float(0.02);
    p.str("betas").float(0.9).float(0.95).op(0x86);
    p.str("params").op(b']').int(0).op(b'a');
    p.op(b'u').op(b'e');
    p.op(b'u');
    p.str("epoch").int(3);
    p.str("scaler").op(b'}').op(b'(');
    p.str("scale")
        .float(65536.0)
        .str("growth_factor")
        .float(2.0)
        .str("_growth_tracker")
        .int(17);
    p.op(b'u');
    // args: Namespace(...) as protocol 2 pickles an instance: NEWOBJ, then BUILD(__dict__).
    p.str("args")
        .global("argparse", "Namespace")
        .op(b')')
        .op(0x81);
    p.op(b'}').op(b'(');
    p.str("model")
        .str("flowar_small")
        .str("img_size")
        .int(256)
        .str("blr")
        .float(1e-4);
    // A numpy float64 scalar: scalar(dtype('f8'), _codecs.encode(bytes, 'latin1')).
    p.str("ema_rate").global("numpy.core.multiarray", "scalar");
    p.global("numpy", "dtype")
        .str("f8")
        .op(0x89)
        .op(0x88)
        .op(0x87)
        .op(b'R');
    p.op(b'(')
        .int(3)
        .str("<")
        .op(b'N')
        .op(b'N')
        .op(b'N')
        .int(-1)
        .int(-1)
        .int(0)
        .op(b't')
        .op(b'b');
    p.global("_codecs", "encode")
        .str("\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{f0}?")
        .str("latin1")
        .op(0x86)
        .op(b'R');
    p.op(0x86).op(b'R');
    p.str("latent_shape")
        .global("torch", "Size")
        .int_tuple(&[16, 16])
        .op(0x85)
        .op(b'R');
    p.str("scales")
        .global("builtins", "set")
        .op(b']')
        .op(b'(')
        .int(1)
        .int(2)
        .int(4)
        .op(b'e')
        .op(0x85)
        .op(b'R');
    p.str("crop")
        .global("builtins", "slice")
        .int(0)
        .int(256)
        .op(b'N')
        .op(0x87)
        .op(b'R');
    p.str("per_class")
        .global("collections", "defaultdict")
        .global("builtins", "list")
        .op(0x85)
        .op(b'R');
    p.op(b'(').int(0).op(b']').op(b'u');
    p.str("output_dir")
        .global("pathlib", "PosixPath")
        .str("/tmp/out")
        .op(0x85)
        .op(b'R');
    if let Some((module, name)) = &extras.call_in_args {
        p.str("cmd")
            .global(module, name)
            .str("echo pwned")
            .op(0x85)
            .op(b'R');
    }
    p.op(b'u').op(b'b');
    p.op(b'u');
    let pkl = p.finish();
    torch_zip("checkpoint-last", Some(&pkl), &storages)
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
