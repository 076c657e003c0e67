//! A small, restricted pickle interpreter.
//!
//! It understands the plain-data opcodes of pickle protocols 2-5 plus the
//! handful of globals that `torch.save` writes for a state dict. It never
//! calls anything: `REDUCE` on an allowed callable only builds a descriptor
//! (an empty dict, a tensor descriptor).
//!
//! Globals fall in four groups ([`resolve_global`]):
//! - the torch rebuild functions, storages and dtypes a state dict needs;
//! - benign data classes a training checkpoint carries beside its weights
//!   (`argparse.Namespace`, numpy scalars and dtypes, `torch.Size`,
//!   `collections.defaultdict`, `set`/`frozenset`/`slice`): read as inert,
//!   opaque values that are never called;
//! - anything that can run code (`os.*`, `posix.*`, `subprocess.*`, `runpy.*`,
//!   `importlib.*`, `pickle.*`, the code-running builtins, ...): refused by name
//!   and byte offset as soon as the pickle names it;
//! - any other global: kept as an inert placeholder, and refused by name if a
//!   value built from it ends up where a tensor is expected (see
//!   [`Parsed::foreign_origin`]).
//!
//! Objects live in an arena (`Vec<Obj>`) and values refer to them by index,
//! so memoised objects are shared without reference counting, cycles cannot
//! leak, and nothing here recurses over the object graph.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use super::CheckpointError;

/// Maximum depth of the MARK stack and of object nesting.
pub(crate) const MAX_NESTING: usize = 1000;
/// Maximum number of memo entries.
pub(crate) const MAX_MEMO: usize = 4 << 20;
/// Maximum number of container objects created.
pub(crate) const MAX_OBJECTS: usize = 4 << 20;
/// Maximum number of opcodes executed. Every opcode pushes at most one value
/// and creates at most one object, so this bounds all interpreter memory
/// (a deflate-compressed data.pkl can be far larger than the file).
pub(crate) const MAX_OPS: u64 = 8 << 20;
/// Maximum number of tensor dimensions accepted.
pub(crate) const MAX_DIMS: usize = 64;

/// The typed-storage classes `torch.save` pickles in persistent ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StorageKind {
    Float,
    Half,
    BFloat16,
    Double,
    Long,
    Int,
    Short,
    Char,
    Byte,
    Bool,
}

impl StorageKind {
    fn from_class_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::Float,
            "HalfStorage" => Self::Half,
            "BFloat16Storage" => Self::BFloat16,
            "DoubleStorage" => Self::Double,
            "LongStorage" => Self::Long,
            "IntStorage" => Self::Int,
            "ShortStorage" => Self::Short,
            "CharStorage" => Self::Char,
            "ByteStorage" => Self::Byte,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    /// Size of one element in bytes.
    pub(crate) fn elem_size(self) -> u64 {
        match self {
            Self::Double | Self::Long => 8,
            Self::Float | Self::Int => 4,
            Self::Half | Self::BFloat16 | Self::Short => 2,
            Self::Char | Self::Byte | Self::Bool => 1,
        }
    }

    /// The torch dtype name of the elements.
    pub(crate) fn dtype_name(self) -> &'static str {
        match self {
            Self::Float => "float32",
            Self::Half => "float16",
            Self::BFloat16 => "bfloat16",
            Self::Double => "float64",
            Self::Long => "int64",
            Self::Int => "int32",
            Self::Short => "int16",
            Self::Char => "int8",
            Self::Byte => "uint8",
            Self::Bool => "bool",
        }
    }
}

/// Globals a pickle may name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    Storage(StorageKind),
    /// Recognised only to give a clear error when used as a storage type.
    UntypedStorage,
    /// A `torch.<dtype>` object; inert data.
    DType,
    /// A benign data class or function (`module.name`); calling it only builds an opaque value.
    Inert(&'static str),
    /// `collections.defaultdict`: builds a dict (its factory is never called).
    DefaultDict,
    /// `_codecs.encode`, which protocol 2 uses to pickle `bytes`: builds bytes.
    CodecsEncode,
    /// A global this reader does not know (`module.name`) and the byte offset naming it;
    /// inert unless a value built from it is used as a tensor.
    Unknown(Rc<str>, usize),
}

/// Benign data classes of training checkpoints, read as inert values: `(module, name)`.
/// Calling one would only build data; here it builds an opaque value.
const INERT: &[(&str, &str)] = &[
    ("argparse", "Namespace"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("torch", "Size"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "bool"),
    ("builtins", "str"),
    ("builtins", "bytes"),
    ("builtins", "complex"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
    ("__builtin__", "slice"),
    ("__builtin__", "list"),
    ("__builtin__", "dict"),
];

/// Whether naming this global is refused outright: it can run code or reach the system.
fn runs_code(module: &str, name: &str) -> bool {
    let root = module.split('.').next().unwrap_or(module);
    let code_modules = [
        "os",
        "posix",
        "nt",
        "subprocess",
        "runpy",
        "importlib",
        "pickle",
        "_pickle",
        "sys",
        "shutil",
        "socket",
        "ctypes",
        "code",
        "codeop",
        "pty",
        "multiprocessing",
        "webbrowser",
        "marshal",
        "types",
        "functools",
        "operator",
        "inspect",
        "pdb",
        "timeit",
        "asyncio",
        "threading",
        "signal",
    ];
    if code_modules.contains(&root) {
        return true;
    }
    // Every builtin but the inert data classes above can call, import, open or read.
    matches!(root, "builtins" | "__builtin__")
        && !INERT.iter().any(|&(m, n)| m == module && n == name)
}

fn resolve_global(
    path: &Path,
    module: &str,
    name: &str,
    offset: usize,
) -> Result<Global, CheckpointError> {
    if runs_code(module, name) {
        return Err(CheckpointError::ForeignGlobal {
            path: path.to_path_buf(),
            module: module.to_string(),
            name: name.to_string(),
            offset,
        });
    }
    if let Some(&(m, n)) = INERT.iter().find(|&&(m, n)| m == module && n == name) {
        return Ok(Global::Inert(if m.starts_with("numpy") {
            "numpy scalar"
        } else {
            n
        }));
    }
    if module == "numpy.dtypes" && name.ends_with("DType") {
        return Ok(Global::Inert("numpy.dtypes"));
    }
    match (module, name) {
        ("collections", "defaultdict") => return Ok(Global::DefaultDict),
        ("_codecs", "encode") => return Ok(Global::CodecsEncode),
        _ => {}
    }
    let g = match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => {
            Some(Global::RebuildParameterWithState)
        }
        ("torch", "UntypedStorage") | ("torch.storage", "UntypedStorage") => {
            Some(Global::UntypedStorage)
        }
        ("torch", n) => StorageKind::from_class_name(n)
            .map(Global::Storage)
            .or(match n {
                "float32" | "float" | "float16" | "half" | "bfloat16" | "float64" | "double"
                | "int64" | "long" | "int32" | "int" | "int16" | "short" | "int8" | "uint8"
                | "bool" => Some(Global::DType),
                _ => None,
            }),
        _ => None,
    };
    // `torch.*` names outside the allow-list (torch.load, torch.jit...) stay refused.
    if module == "torch" || module.starts_with("torch.") {
        return g.ok_or_else(|| CheckpointError::ForeignGlobal {
            path: path.to_path_buf(),
            module: module.to_string(),
            name: name.to_string(),
            offset,
        });
    }
    Ok(g.unwrap_or_else(|| Global::Unknown(Rc::from(format!("{module}.{name}")), offset)))
}

/// A pickle value. Containers and descriptors live in the arena.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    None,
    Bool,
    Int(i64),
    /// An integer that does not fit in i64 (kept opaque).
    BigInt,
    Float,
    Str(Rc<str>),
    Bytes,
    Global(Global),
    Obj(usize),
}

/// A storage referenced through a persistent id.
#[derive(Clone, Debug)]
pub(crate) struct StorageRef {
    pub kind: StorageKind,
    pub key: String,
    pub numel: u64,
}

/// What `_rebuild_tensor_v2` would have built.
#[derive(Clone, Debug)]
pub(crate) struct TensorDesc {
    pub storage: StorageRef,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

#[derive(Debug)]
pub(crate) enum ObjKind {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict {
        ordered: bool,
        items: Vec<(Value, Value)>,
    },
    Set(Vec<Value>),
    Storage(StorageRef),
    Tensor(TensorDesc),
    /// What calling an inert or unknown global would have built; never built for real.
    Opaque(Global),
}

#[derive(Debug)]
pub(crate) struct Obj {
    pub kind: ObjKind,
    depth: usize,
}

/// Result of interpreting a pickle.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub objs: Vec<Obj>,
    pub root: Value,
}

impl Parsed {
    pub(crate) fn obj(&self, v: &Value) -> Option<&ObjKind> {
        match v {
            Value::Obj(i) => self.objs.get(*i).map(|o| &o.kind),
            _ => None,
        }
    }

    /// The dict items of `v`, if it is a dict.
    pub(crate) fn dict_items(&self, v: &Value) -> Option<&[(Value, Value)]> {
        match self.obj(v) {
            Some(ObjKind::Dict { items, .. }) => Some(items),
            _ => None,
        }
    }

    /// The unknown global `v` was built from or is, with the byte offset naming it: what
    /// is refused when such a value sits where a tensor is expected.
    pub(crate) fn foreign_origin<'a>(&'a self, v: &'a Value) -> Option<(&'a str, usize)> {
        match v {
            Value::Global(Global::Unknown(name, offset)) => Some((name, *offset)),
            Value::Obj(_) => match self.obj(v) {
                Some(ObjKind::Opaque(Global::Unknown(name, offset))) => Some((name, *offset)),
                _ => None,
            },
            _ => None,
        }
    }

    pub(crate) fn tensor(&self, v: &Value) -> Option<&TensorDesc> {
        match self.obj(v) {
            Some(ObjKind::Tensor(t)) => Some(t),
            _ => None,
        }
    }

    /// A short description of a value's type, for messages.
    pub(crate) fn type_name(&self, v: &Value) -> &'static str {
        match v {
            Value::None => "None",
            Value::Bool => "bool",
            Value::Int(_) | Value::BigInt => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Bytes => "bytes",
            Value::Global(_) => "global",
            Value::Obj(_) => match self.obj(v) {
                Some(ObjKind::Tuple(_)) => "tuple",
                Some(ObjKind::List(_)) => "list",
                Some(ObjKind::Dict { .. }) => "dict",
                Some(ObjKind::Set(_)) => "set",
                Some(ObjKind::Storage(_)) => "storage",
                Some(ObjKind::Tensor(_)) => "tensor",
                Some(ObjKind::Opaque(Global::Inert(label))) => label,
                Some(ObjKind::Opaque(_)) => "object",
                None => "invalid",
            },
        }
    }
}

/// Human-readable name of a pickle opcode, for error messages.
pub(crate) fn opcode_name(op: &u8) -> &'static str {
    match *op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

/// Interprets `data` as a pickle and returns the object graph.
pub(crate) fn parse(path: &Path, data: &[u8]) -> Result<Parsed, CheckpointError> {
    let mut u = Unpickler {
        path,
        data,
        pos: 0,
        op_pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objs: Vec::new(),
    };
    let root = u.run()?;
    Ok(Parsed { objs: u.objs, root })
}

struct Unpickler<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
    op_pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    objs: Vec<Obj>,
}

impl Unpickler<'_> {
    fn bad(&self, reason: impl Into<String>) -> CheckpointError {
        CheckpointError::BadPickle {
            path: self.path.to_path_buf(),
            offset: self.op_pos,
            reason: reason.into(),
        }
    }

    fn too_deep(&self) -> CheckpointError {
        CheckpointError::NestingTooDeep {
            path: self.path.to_path_buf(),
            offset: self.op_pos,
            limit: MAX_NESTING,
        }
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&[u8], CheckpointError> {
        let remaining = self.data.len().saturating_sub(self.pos);
        let n_usize = usize::try_from(n).ok().filter(|&n| n <= remaining);
        let Some(n) = n_usize else {
            return Err(CheckpointError::Truncated {
                path: self.path.to_path_buf(),
                detail: format!(
                    "pickle needs {n} bytes for {what} at byte offset {} but only {remaining} remain",
                    self.pos
                ),
            });
        };
        let start = self.pos;
        self.pos += n;
        self.data
            .get(start..start + n)
            .ok_or_else(|| self.bad("internal bounds error"))
    }

    fn take_array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], CheckpointError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn read_u8(&mut self, what: &str) -> Result<u8, CheckpointError> {
        Ok(self.take_array::<1>(what)?[0])
    }

    fn read_line(&mut self, what: &str) -> Result<String, CheckpointError> {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return Err(CheckpointError::Truncated {
                path: self.path.to_path_buf(),
                detail: format!("pickle ended inside {what} at byte offset {}", self.pos),
            });
        };
        let line = self.take(nl as u64 + 1, what)?;
        let line = line.get(..nl).unwrap_or(&[]);
        std::str::from_utf8(line)
            .map(str::to_string)
            .map_err(|_| self.bad(format!("{what} is not valid UTF-8")))
    }

    fn read_str(&mut self, n: u64, what: &str) -> Result<Value, CheckpointError> {
        let bytes = self.take(n, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Value::Str(Rc::from(s))),
            Err(_) => Err(self.bad(format!("{what} is not valid UTF-8"))),
        }
    }

    fn read_bytes(&mut self, n: u64, what: &str) -> Result<Value, CheckpointError> {
        self.take(n, what)?;
        Ok(Value::Bytes)
    }

    /// Python 2 `str` opcodes: keep as str when UTF-8, bytes otherwise.
    fn read_py2_str(&mut self, n: u64, what: &str) -> Result<Value, CheckpointError> {
        let bytes = self.take(n, what)?;
        Ok(match std::str::from_utf8(bytes) {
            Ok(s) => Value::Str(Rc::from(s)),
            Err(_) => Value::Bytes,
        })
    }

    fn fence(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn pop(&mut self) -> Result<Value, CheckpointError> {
        if self.stack.len() <= self.fence() {
            return Err(self.bad("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.bad("stack underflow"))
    }

    fn top(&self) -> Result<&Value, CheckpointError> {
        if self.stack.len() <= self.fence() {
            return Err(self.bad("stack underflow"));
        }
        self.stack.last().ok_or_else(|| self.bad("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, CheckpointError> {
        let Some(mark) = self.marks.pop() else {
            return Err(self.bad("no MARK on the stack"));
        };
        if mark > self.stack.len() {
            return Err(self.bad("MARK beyond stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn depth_of(&self, v: &Value) -> usize {
        match v {
            Value::Obj(i) => self.objs.get(*i).map_or(0, |o| o.depth),
            _ => 0,
        }
    }

    fn new_obj(&mut self, kind: ObjKind) -> Result<Value, CheckpointError> {
        if self.objs.len() >= MAX_OBJECTS {
            return Err(CheckpointError::TooLarge {
                path: self.path.to_path_buf(),
                what: "number of pickle objects".into(),
                size: self.objs.len() as u64,
                limit: MAX_OBJECTS as u64,
            });
        }
        let child_depth = match &kind {
            ObjKind::Tuple(v) | ObjKind::List(v) | ObjKind::Set(v) => {
                v.iter().map(|x| self.depth_of(x)).max().unwrap_or(0)
            }
            ObjKind::Dict { items, .. } => items
                .iter()
                .map(|(k, v)| self.depth_of(k).max(self.depth_of(v)))
                .max()
                .unwrap_or(0),
            ObjKind::Storage(_) | ObjKind::Tensor(_) | ObjKind::Opaque(_) => 0,
        };
        let depth = child_depth + 1;
        if depth > MAX_NESTING {
            return Err(self.too_deep());
        }
        self.objs.push(Obj { kind, depth });
        Ok(Value::Obj(self.objs.len() - 1))
    }

    /// Records that `container` now holds values of depth `child_depth`.
    fn deepen(&mut self, container: usize, child_depth: usize) -> Result<(), CheckpointError> {
        let depth = child_depth + 1;
        if depth > MAX_NESTING {
            return Err(self.too_deep());
        }
        if let Some(o) = self.objs.get_mut(container) {
            o.depth = o.depth.max(depth);
        }
        Ok(())
    }

    fn memo_put(&mut self, idx: u64) -> Result<(), CheckpointError> {
        let v = self.top()?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&idx) {
            return Err(CheckpointError::TooLarge {
                path: self.path.to_path_buf(),
                what: "pickle memo".into(),
                size: self.memo.len() as u64,
                limit: MAX_MEMO as u64,
            });
        }
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u64) -> Result<(), CheckpointError> {
        let v = self
            .memo
            .get(&idx)
            .cloned()
            .ok_or_else(|| self.bad(format!("memo key {idx} is not defined")))?;
        self.push(v);
        Ok(())
    }

    fn obj_index(&self, v: &Value, what: &str) -> Result<usize, CheckpointError> {
        match v {
            Value::Obj(i) if *i < self.objs.len() => Ok(*i),
            _ => Err(self.bad(format!("{what} expects an object"))),
        }
    }

    fn extend_list(
        &mut self,
        target: &Value,
        items: Vec<Value>,
        op: &str,
    ) -> Result<(), CheckpointError> {
        let idx = self.obj_index(target, op)?;
        let d = items.iter().map(|x| self.depth_of(x)).max().unwrap_or(0);
        self.deepen(idx, d)?;
        match self.objs.get_mut(idx).map(|o| &mut o.kind) {
            Some(ObjKind::List(v)) => {
                v.extend(items);
                Ok(())
            }
            _ => Err(self.bad(format!("{op} on something that is not a list"))),
        }
    }

    fn extend_dict(
        &mut self,
        target: &Value,
        items: Vec<Value>,
        op: &str,
    ) -> Result<(), CheckpointError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.bad(format!("{op} with an odd number of items")));
        }
        let idx = self.obj_index(target, op)?;
        let d = items.iter().map(|x| self.depth_of(x)).max().unwrap_or(0);
        self.deepen(idx, d)?;
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        match self.objs.get_mut(idx).map(|o| &mut o.kind) {
            Some(ObjKind::Dict { items, .. }) => {
                items.extend(pairs);
                Ok(())
            }
            _ => Err(self.bad(format!("{op} on something that is not a dict"))),
        }
    }

    fn tuple_items(&self, v: &Value, what: &str) -> Result<&[Value], CheckpointError> {
        match v {
            Value::Obj(i) => match self.objs.get(*i).map(|o| &o.kind) {
                Some(ObjKind::Tuple(items)) => Ok(items),
                _ => Err(self.bad(format!("{what} must be a tuple"))),
            },
            _ => Err(self.bad(format!("{what} must be a tuple"))),
        }
    }

    fn int_tuple(&self, v: &Value, what: &str) -> Result<Vec<u64>, CheckpointError> {
        let items = self.tuple_items(v, what)?;
        if items.len() > MAX_DIMS {
            return Err(self.bad(format!(
                "{what} has {} dimensions (limit {MAX_DIMS})",
                items.len()
            )));
        }
        items
            .iter()
            .map(|x| match x {
                Value::Int(i) => u64::try_from(*i)
                    .map_err(|_| self.bad(format!("{what} contains a negative value {i}"))),
                _ => Err(self.bad(format!("{what} must contain only integers"))),
            })
            .collect()
    }

    fn reduce(&mut self, callable: Value, args: Value) -> Result<Value, CheckpointError> {
        let Value::Global(g) = callable else {
            return Err(self.bad("REDUCE on a value that is not an allowed callable"));
        };
        match g {
            Global::OrderedDict => {
                let items = self.tuple_items(&args, "OrderedDict arguments")?;
                if !items.is_empty() {
                    return Err(self.bad("OrderedDict() with arguments is not supported"));
                }
                self.new_obj(ObjKind::Dict {
                    ordered: true,
                    items: Vec::new(),
                })
            }
            Global::RebuildTensorV2 => {
                let items = self.tuple_items(&args, "_rebuild_tensor_v2 arguments")?;
                if !(6..=7).contains(&items.len()) {
                    return Err(self.bad(format!(
                        "_rebuild_tensor_v2 expects 6 or 7 arguments, got {}",
                        items.len()
                    )));
                }
                let (Some(storage), Some(offset), Some(size), Some(stride)) =
                    (items.first(), items.get(1), items.get(2), items.get(3))
                else {
                    return Err(self.bad("_rebuild_tensor_v2 arguments missing"));
                };
                let storage = match storage {
                    Value::Obj(i) => match self.objs.get(*i).map(|o| &o.kind) {
                        Some(ObjKind::Storage(s)) => s.clone(),
                        _ => {
                            return Err(
                                self.bad("_rebuild_tensor_v2: first argument is not a storage")
                            )
                        }
                    },
                    _ => {
                        return Err(self.bad("_rebuild_tensor_v2: first argument is not a storage"))
                    }
                };
                let offset = match offset {
                    Value::Int(i) => u64::try_from(*i)
                        .map_err(|_| self.bad("_rebuild_tensor_v2: negative storage offset"))?,
                    _ => return Err(self.bad("_rebuild_tensor_v2: storage offset is not an int")),
                };
                let shape = self.int_tuple(size, "tensor size")?;
                let stride = self.int_tuple(stride, "tensor stride")?;
                if shape.len() != stride.len() {
                    return Err(self.bad(format!(
                        "tensor size has {} dims but stride has {}",
                        shape.len(),
                        stride.len()
                    )));
                }
                self.new_obj(ObjKind::Tensor(TensorDesc {
                    storage,
                    offset,
                    shape,
                    stride,
                }))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let items = self.tuple_items(&args, "_rebuild_parameter arguments")?;
                match items.first() {
                    Some(t @ Value::Obj(i))
                        if matches!(
                            self.objs.get(*i).map(|o| &o.kind),
                            Some(ObjKind::Tensor(_))
                        ) =>
                    {
                        Ok(t.clone())
                    }
                    _ => Err(self.bad("_rebuild_parameter: first argument is not a tensor")),
                }
            }
            Global::Storage(_) | Global::UntypedStorage | Global::DType => {
                Err(self.bad("REDUCE on a torch storage/dtype class is not supported"))
            }
            Global::DefaultDict => self.new_obj(ObjKind::Dict {
                ordered: false,
                items: Vec::new(),
            }),
            Global::CodecsEncode => Ok(Value::Bytes),
            g @ (Global::Inert(_) | Global::Unknown(..)) => self.new_obj(ObjKind::Opaque(g)),
        }
    }

    fn persistent_load(&mut self, pid: Value) -> Result<Value, CheckpointError> {
        let items = self.tuple_items(&pid, "persistent id")?;
        let (Some(Value::Str(tag)), Some(ty), Some(key), Some(_location), Some(numel), 5) = (
            items.first(),
            items.get(1),
            items.get(2),
            items.get(3),
            items.get(4),
            items.len(),
        ) else {
            return Err(
                self.bad("persistent id is not ('storage', StorageType, key, location, numel)")
            );
        };
        if &**tag != "storage" {
            return Err(self.bad(format!("persistent id tag '{tag}' is not 'storage'")));
        }
        let kind = match ty {
            Value::Global(Global::Storage(k)) => *k,
            Value::Global(Global::UntypedStorage) => {
                return Err(self.bad(
                    "persistent id uses torch.UntypedStorage; only typed storages \
                     (torch.FloatStorage, torch.HalfStorage, ...) are supported",
                ))
            }
            _ => return Err(self.bad("persistent id storage type is not a torch storage class")),
        };
        let key = match key {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            _ => return Err(self.bad("persistent id storage key is not a string")),
        };
        let numel = match numel {
            Value::Int(i) => u64::try_from(*i)
                .map_err(|_| self.bad("persistent id has a negative element count"))?,
            _ => return Err(self.bad("persistent id element count is not an int")),
        };
        self.new_obj(ObjKind::Storage(StorageRef { kind, key, numel }))
    }

    fn run(&mut self) -> Result<Value, CheckpointError> {
        let mut ops: u64 = 0;
        loop {
            self.op_pos = self.pos;
            ops += 1;
            if ops > MAX_OPS {
                return Err(CheckpointError::TooLarge {
                    path: self.path.to_path_buf(),
                    what: "number of pickle opcodes".into(),
                    size: ops,
                    limit: MAX_OPS,
                });
            }
            let op = self.read_u8("opcode")?;
            match op {
                0x80 => {
                    // PROTO
                    let p = self.read_u8("protocol")?;
                    if p > 5 {
                        return Err(self.bad(format!("unsupported pickle protocol {p}")));
                    }
                }
                0x95 => {
                    // FRAME: only a buffering hint.
                    self.take_array::<8>("frame length")?;
                }
                b'.' => return self.pop(),
                b'(' => {
                    if self.marks.len() >= MAX_NESTING {
                        return Err(self.too_deep());
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v);
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool),
                0x89 => self.push(Value::Bool),
                b'J' => {
                    let v = i32::from_le_bytes(self.take_array("BININT")?);
                    self.push(Value::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.read_u8("BININT1")?;
                    self.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_array("BININT2")?);
                    self.push(Value::Int(i64::from(v)));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        u64::from(self.read_u8("LONG1 length")?)
                    } else {
                        let n = i32::from_le_bytes(self.take_array("LONG4 length")?);
                        u64::try_from(n).map_err(|_| self.bad("negative LONG4 length"))?
                    };
                    let bytes = self.take(n, "long integer")?;
                    let v = if bytes.len() <= 8 {
                        let fill = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
                            0xff
                        } else {
                            0
                        };
                        let mut a = [fill; 8];
                        if let Some(dst) = a.get_mut(..bytes.len()) {
                            dst.copy_from_slice(bytes);
                        }
                        Value::Int(i64::from_le_bytes(a))
                    } else {
                        Value::BigInt
                    };
                    self.push(v);
                }
                b'G' => {
                    self.take_array::<8>("BINFLOAT")?;
                    self.push(Value::Float);
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.take_array("BINUNICODE length")?);
                    let v = self.read_str(u64::from(n), "BINUNICODE string")?;
                    self.push(v);
                }
                0x8c => {
                    let n = self.read_u8("SHORT_BINUNICODE length")?;
                    let v = self.read_str(u64::from(n), "SHORT_BINUNICODE string")?;
                    self.push(v);
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.take_array("BINUNICODE8 length")?);
                    let v = self.read_str(n, "BINUNICODE8 string")?;
                    self.push(v);
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.take_array("BINBYTES length")?);
                    let v = self.read_bytes(u64::from(n), "BINBYTES data")?;
                    self.push(v);
                }
                b'C' => {
                    let n = self.read_u8("SHORT_BINBYTES length")?;
                    let v = self.read_bytes(u64::from(n), "SHORT_BINBYTES data")?;
                    self.push(v);
                }
                0x8e => {
                    let n = u64::from_le_bytes(self.take_array("BINBYTES8 length")?);
                    let v = self.read_bytes(n, "BINBYTES8 data")?;
                    self.push(v);
                }
                b'T' => {
                    let n = i32::from_le_bytes(self.take_array("BINSTRING length")?);
                    let n = u64::try_from(n).map_err(|_| self.bad("negative BINSTRING length"))?;
                    let v = self.read_py2_str(n, "BINSTRING data")?;
                    self.push(v);
                }
                b'U' => {
                    let n = self.read_u8("SHORT_BINSTRING length")?;
                    let v = self.read_py2_str(u64::from(n), "SHORT_BINSTRING data")?;
                    self.push(v);
                }
                b'}' => {
                    let v = self.new_obj(ObjKind::Dict {
                        ordered: false,
                        items: Vec::new(),
                    })?;
                    self.push(v);
                }
                b']' => {
                    let v = self.new_obj(ObjKind::List(Vec::new()))?;
                    self.push(v);
                }
                b')' => {
                    let v = self.new_obj(ObjKind::Tuple(Vec::new()))?;
                    self.push(v);
                }
                0x8f => {
                    let v = self.new_obj(ObjKind::Set(Vec::new()))?;
                    self.push(v);
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.new_obj(ObjKind::Tuple(items))?;
                    self.push(v);
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = self.new_obj(ObjKind::Tuple(items))?;
                    self.push(v);
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = self.new_obj(ObjKind::List(items))?;
                    self.push(v);
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    let v = self.new_obj(ObjKind::Set(items))?;
                    self.push(v);
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    if !items.len().is_multiple_of(2) {
                        return Err(self.bad("DICT with an odd number of items"));
                    }
                    let mut pairs = Vec::with_capacity(items.len() / 2);
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    let v = self.new_obj(ObjKind::Dict {
                        ordered: false,
                        items: pairs,
                    })?;
                    self.push(v);
                }
                b'a' => {
                    let item = self.pop()?;
                    let target = self.top()?.clone();
                    self.extend_list(&target, vec![item], "APPEND")?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.extend_list(&target, items, "APPENDS")?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let target = self.top()?.clone();
                    self.extend_dict(&target, vec![k, v], "SETITEM")?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.extend_dict(&target, items, "SETITEMS")?;
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    let idx = self.obj_index(&target, "ADDITEMS")?;
                    let d = items.iter().map(|x| self.depth_of(x)).max().unwrap_or(0);
                    self.deepen(idx, d)?;
                    match self.objs.get_mut(idx).map(|o| &mut o.kind) {
                        Some(ObjKind::Set(v)) => v.extend(items),
                        _ => return Err(self.bad("ADDITEMS on something that is not a set")),
                    }
                }
                b'q' => {
                    let i = self.read_u8("BINPUT index")?;
                    self.memo_put(u64::from(i))?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.take_array("LONG_BINPUT index")?);
                    self.memo_put(u64::from(i))?;
                }
                0x94 => {
                    let i = self.memo.len() as u64;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.read_u8("BINGET index")?;
                    self.memo_get(u64::from(i))?;
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.take_array("LONG_BINGET index")?);
                    self.memo_get(u64::from(i))?;
                }
                b'c' => {
                    let module = self.read_line("GLOBAL module")?;
                    let name = self.read_line("GLOBAL name")?;
                    let g = resolve_global(self.path, &module, &name, self.op_pos)?;
                    self.push(Value::Global(g));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.bad("STACK_GLOBAL needs two strings"));
                    };
                    let g = resolve_global(self.path, &module, &name, self.op_pos)?;
                    self.push(Value::Global(g));
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push(v);
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args), never run: an empty OrderedDict or
                    // defaultdict, or an opaque instance of an inert or unknown class.
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.tuple_items(&args, "NEWOBJ arguments")?;
                    let kind = match cls {
                        Value::Global(Global::OrderedDict) => ObjKind::Dict {
                            ordered: true,
                            items: Vec::new(),
                        },
                        Value::Global(Global::DefaultDict) => ObjKind::Dict {
                            ordered: false,
                            items: Vec::new(),
                        },
                        Value::Global(g @ (Global::Inert(_) | Global::Unknown(..))) => {
                            ObjKind::Opaque(g)
                        }
                        _ => return Err(self.bad(
                            "NEWOBJ on a class other than collections.OrderedDict or a data class",
                        )),
                    };
                    let v = self.new_obj(kind)?;
                    self.push(v);
                }
                b'b' => {
                    // BUILD: state is ignored, only for OrderedDicts, tensors and opaque
                    // data objects (a Namespace's attributes, a numpy dtype's layout).
                    let _state = self.pop()?;
                    let target = self.top()?;
                    let ok = match target {
                        Value::Obj(i) => matches!(
                            self.objs.get(*i).map(|o| &o.kind),
                            Some(ObjKind::Dict { ordered: true, .. })
                                | Some(ObjKind::Tensor(_))
                                | Some(ObjKind::Opaque(_))
                        ),
                        _ => false,
                    };
                    if !ok {
                        return Err(self.bad(
                            "BUILD is only accepted on an OrderedDict, a tensor or a data object",
                        ));
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v);
                }
                _ => {
                    return Err(CheckpointError::UnsupportedOpcode {
                        path: self.path.to_path_buf(),
                        opcode: op,
                        offset: self.op_pos,
                    })
                }
            }
        }
    }
}
