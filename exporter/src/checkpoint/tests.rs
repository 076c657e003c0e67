use super::*;
use std::io::Write;

macro_rules! fixture {
    ($rel:literal) => {
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/",
            $rel
        ))
    };
}

// ---------------------------------------------------------------- helpers

/// Hand-assembles protocol-2 pickles.
struct P(Vec<u8>);

impl P {
    fn new() -> Self {
        P(vec![0x80, 2])
    }
    fn op(&mut self, b: u8) -> &mut Self {
        self.0.push(b);
        self
    }
    fn s(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
        self
    }
    fn int(&mut self, i: i64) -> &mut Self {
        if let Ok(v) = i32::try_from(i) {
            self.0.push(b'J');
            self.0.extend(v.to_le_bytes());
        } else {
            self.0.extend([0x8a, 8]);
            self.0.extend(i.to_le_bytes());
        }
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0.extend(format!("{module}\n{name}\n").as_bytes());
        self
    }
    fn ints(&mut self, v: &[i64]) -> &mut Self {
        self.op(b'(');
        for &i in v {
            self.int(i);
        }
        self.op(b't')
    }
    #[allow(clippy::too_many_arguments)]
    fn tensor(
        &mut self,
        cls: &str,
        key: &str,
        numel: i64,
        offset: i64,
        shape: &[i64],
        stride: &[i64],
    ) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b'(');
        self.op(b'(')
            .s("storage")
            .global("torch", cls)
            .s(key)
            .s("cpu")
            .int(numel)
            .op(b't')
            .op(b'Q');
        self.int(offset).ints(shape).ints(stride).op(0x89);
        self.global("collections", "OrderedDict").op(b')').op(b'R');
        self.op(b't').op(b'R')
    }
    fn bytes(&self) -> Vec<u8> {
        self.0.clone()
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes a torch-style zip archive with `archive/data.pkl` and storages.
fn torch_zip(pkl: &[u8], storages: &[(&str, &[u8])], deflate: bool) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".pth").tempfile().unwrap();
    {
        let mut w = zip::ZipWriter::new(f.as_file_mut());
        let opts = zip::write::SimpleFileOptions::default().compression_method(if deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        });
        w.start_file("archive/data.pkl", opts).unwrap();
        w.write_all(pkl).unwrap();
        w.start_file("archive/byteorder", opts).unwrap();
        w.write_all(b"little").unwrap();
        for (k, data) in storages {
            w.start_file(format!("archive/data/{k}"), opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
    }
    f
}

fn write_tmp(bytes: &[u8], suffix: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(suffix).tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

/// `{key: tensor}` for one float storage.
fn single_tensor_pickle(
    cls: &str,
    numel: i64,
    offset: i64,
    shape: &[i64],
    stride: &[i64],
) -> Vec<u8> {
    let mut p = P::new();
    p.op(b'}')
        .op(b'(')
        .s("w")
        .tensor(cls, "0", numel, offset, shape, stride)
        .op(b'u')
        .op(b'.');
    p.bytes()
}

// ---------------------------------------------------------------- fixtures

fn assert_same_tensors(a: &Checkpoint, b: &Checkpoint) {
    assert_eq!(a.keys(), b.keys());
    assert!(!a.keys().is_empty());
    for k in a.keys() {
        assert_eq!(a.info(k), b.info(k), "{k}");
        let (x, y) = (a.load_f32(k).unwrap(), b.load_f32(k).unwrap());
        assert_eq!(x.len(), a.info(k).unwrap().numel(), "{k}");
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{k} differs"
        );
    }
    assert_eq!(a.total_params(), b.total_params());
}

#[test]
fn spatial_pth_matches_safetensors() {
    let pth = Checkpoint::open(fixture!("spatial/flowar.pth")).unwrap();
    let st = Checkpoint::open(fixture!("spatial/flowar.safetensors")).unwrap();
    assert_eq!(pth.format(), "pytorch-zip");
    assert_eq!(st.format(), "safetensors");
    assert!(pth.skipped().is_empty() && st.skipped().is_empty());
    assert_same_tensors(&pth, &st);
}

#[test]
fn spatial_vae_ckpt_matches_safetensors() {
    let ckpt = Checkpoint::open(fixture!("spatial/vae.ckpt")).unwrap();
    let st = Checkpoint::open(fixture!("spatial/vae.safetensors")).unwrap();
    assert_same_tensors(&ckpt, &st);
}

#[test]
fn vae_ckpt_model_is_unwrapped() {
    let c = Checkpoint::open(fixture!("cross/vae.ckpt")).unwrap();
    assert!(c.contains("decoder.conv_in.weight"));
    assert!(c.contains("post_quant_conv.weight"));
    assert!(c.keys().iter().all(|k| !k.starts_with("model")));
    let info = c.info("decoder.conv_in.weight").unwrap();
    assert_eq!(info.dtype, DType::F32);
    assert_eq!(info.shape, vec![128, 16, 3, 3]);
    assert_eq!(
        c.load_f32("decoder.conv_in.weight").unwrap().len(),
        128 * 16 * 9
    );
    let sum: usize = c.keys().iter().map(|k| c.info(k).unwrap().numel()).sum();
    assert_eq!(c.total_params(), sum);
    assert!(matches!(
        c.load_f32("nope"),
        Err(CheckpointError::MissingKey { .. })
    ));
}

#[test]
fn cross_flowar_loads_every_tensor() {
    let c = Checkpoint::open(fixture!("cross/flowar.pth")).unwrap();
    assert!(c.keys().len() > 50);
    for k in c.keys() {
        let v = c.load_f32(k).unwrap();
        assert_eq!(v.len(), c.info(k).unwrap().numel());
        // Attention-mask buffers legitimately hold -inf; NaN would mean a decoding bug.
        assert!(v.iter().all(|x| !x.is_nan()));
    }
}

#[test]
fn format_detected_from_magic_not_extension() {
    let bytes = std::fs::read(fixture!("spatial/vae.safetensors")).unwrap();
    let f = write_tmp(&bytes, ".pth");
    assert_eq!(Checkpoint::open(f.path()).unwrap().format(), "safetensors");
}

// ---------------------------------------------------------------- safetensors

#[test]
fn half_and_bfloat_safetensors_round_trip() {
    use ::safetensors::tensor::TensorView;
    let vals = [0.0f32, 1.0, -2.5, 65504.0, 1e-3, -0.0, 3.140625];
    let h: Vec<u8> = vals
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let b: Vec<u8> = vals
        .iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect();
    let ints: Vec<u8> = [1i64, 2].iter().flat_map(|x| x.to_le_bytes()).collect();
    let views = vec![
        (
            "h",
            TensorView::new(::safetensors::Dtype::F16, vec![7], &h).unwrap(),
        ),
        (
            "b",
            TensorView::new(::safetensors::Dtype::BF16, vec![1, 7], &b).unwrap(),
        ),
        (
            "i",
            TensorView::new(::safetensors::Dtype::I64, vec![2], &ints).unwrap(),
        ),
    ];
    let bytes = ::safetensors::serialize(views, None).unwrap();
    let f = write_tmp(&bytes, ".safetensors");
    let c = Checkpoint::open(f.path()).unwrap();
    assert_eq!(c.keys(), vec!["b", "h"]);
    assert_eq!(c.info("h").unwrap().dtype, DType::F16);
    assert_eq!(
        c.info("b").unwrap(),
        &TensorInfo {
            dtype: DType::BF16,
            shape: vec![1, 7]
        }
    );
    let exp_h: Vec<f32> = vals
        .iter()
        .map(|&x| half::f16::from_f32(x).to_f32())
        .collect();
    let exp_b: Vec<f32> = vals
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect();
    assert_eq!(c.load_f32("h").unwrap(), exp_h);
    assert_eq!(c.load_f32("b").unwrap(), exp_b);
    assert_eq!(c.skipped().len(), 1);
    assert_eq!(c.skipped()[0].0, "i");
    assert!(
        matches!(c.load_f32("i"), Err(CheckpointError::UnsupportedDType { ref dtype, .. }) if dtype == "I64")
    );
    assert_eq!(c.total_params(), 14);
}

#[test]
fn hostile_safetensors() {
    // Header length far beyond the limit.
    let mut b = u64::MAX.to_le_bytes().to_vec();
    b.extend(b"{}");
    let f = write_tmp(&b, ".safetensors");
    assert!(matches!(
        Checkpoint::open(f.path()),
        Err(CheckpointError::TooLarge { .. })
    ));
    // Header claims more data than the file has.
    let hdr = br#"{"a":{"dtype":"F32","shape":[1000000000],"data_offsets":[0,4000000000]}}"#;
    let mut b = (hdr.len() as u64).to_le_bytes().to_vec();
    b.extend(hdr);
    b.extend([0u8; 16]);
    let f = write_tmp(&b, ".safetensors");
    assert!(matches!(
        Checkpoint::open(f.path()),
        Err(CheckpointError::Truncated { .. })
    ));
    // Truncated real file.
    let bytes = std::fs::read(fixture!("spatial/vae.safetensors")).unwrap();
    let f = write_tmp(&bytes[..bytes.len() / 2], ".safetensors");
    assert!(Checkpoint::open(f.path()).is_err());
}

// ---------------------------------------------------------------- torch zips

#[test]
fn strided_offset_and_half_tensors() {
    let data: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let halves: Vec<u8> = [1.5f32, -2.0, 0.25]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let longs: Vec<u8> = [7i64, 8].iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut p = P::new();
    // Lightning-style: {"epoch": 3, "state_dict": OrderedDict(...)} with a BUILD'd _metadata.
    p.op(b'}').op(b'(').s("epoch").int(3).s("state_dict");
    p.global("collections", "OrderedDict")
        .op(b')')
        .op(b'R')
        .op(b'(');
    // Transposed 3x2 view of storage elements 1..7: t[i][j] = 1 + i + 3j.
    p.s("t").tensor("FloatStorage", "0", 8, 1, &[3, 2], &[1, 3]);
    // Same storage, contiguous 2x2 at offset 4.
    p.s("c").tensor("FloatStorage", "0", 8, 4, &[2, 2], &[2, 1]);
    // Scalar (0-dim).
    p.s("scalar").tensor("FloatStorage", "0", 8, 7, &[], &[]);
    // Parameter wrapping a half tensor.
    p.s("h")
        .global("torch._utils", "_rebuild_parameter")
        .op(b'(');
    p.tensor("HalfStorage", "1", 3, 0, &[3], &[1])
        .op(0x88)
        .global("collections", "OrderedDict")
        .op(b')')
        .op(b'R');
    p.op(b't').op(b'R');
    p.s("steps").tensor("LongStorage", "2", 2, 0, &[2], &[1]);
    p.s("name").s("hello");
    p.s("nested").op(b'}');
    p.op(b'u');
    p.op(b'}').s("version").int(1).op(b's').op(b'b'); // BUILD state on the OrderedDict
    p.op(b'u').op(b'.');
    for deflate in [false, true] {
        let f = torch_zip(
            &p.bytes(),
            &[("0", &f32_bytes(&data)), ("1", &halves), ("2", &longs)],
            deflate,
        );
        let c = Checkpoint::open(f.path()).unwrap();
        assert_eq!(c.format(), "pytorch-zip");
        assert_eq!(c.keys(), vec!["c", "h", "scalar", "t"]);
        assert_eq!(c.load_f32("t").unwrap(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        assert_eq!(c.load_f32("c").unwrap(), vec![4.0, 5.0, 6.0, 7.0]);
        assert_eq!(c.load_f32("scalar").unwrap(), vec![7.0]);
        assert_eq!(c.info("scalar").unwrap().shape, Vec::<usize>::new());
        assert_eq!(c.load_f32("h").unwrap(), vec![1.5, -2.0, 0.25]);
        assert_eq!(c.info("h").unwrap().dtype, DType::F16);
        let skipped: Vec<&str> = c.skipped().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(skipped, vec!["nested", "steps"]);
        assert!(
            matches!(c.load_f32("steps"), Err(CheckpointError::UnsupportedDType { ref dtype, .. }) if dtype == "int64")
        );
        assert!(matches!(
            c.load_f32("nested"),
            Err(CheckpointError::NotATensor { .. })
        ));
        assert!(matches!(
            c.load_f32("epoch"),
            Err(CheckpointError::MissingKey { .. })
        ));
        assert_eq!(c.total_params(), 6 + 4 + 1 + 3);
    }
}

#[test]
fn foreign_global_is_refused() {
    let mut p = P::new();
    p.global("os", "system")
        .s("echo pwned")
        .op(0x85)
        .op(b'R')
        .op(b'.');
    let f = torch_zip(&p.bytes(), &[], false);
    let err = Checkpoint::open(f.path()).unwrap_err();
    match &err {
        CheckpointError::ForeignGlobal { module, name, .. } => {
            assert_eq!((module.as_str(), name.as_str()), ("os", "system"))
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("os.system") && msg.contains(&f.path().display().to_string()),
        "{msg}"
    );

    // Same through STACK_GLOBAL.
    let mut p = P::new();
    p.s("builtins").s("eval").op(0x93).op(b'.');
    let err = pickle::parse(Path::new("x"), &p.bytes()).unwrap_err();
    assert!(err.to_string().contains("builtins.eval"), "{err}");
}

#[test]
fn reduce_on_non_callable_and_build_on_plain_objects_are_refused() {
    let mut p = P::new();
    p.global("torch", "FloatStorage").op(b')').op(b'R').op(b'.');
    assert!(matches!(
        pickle::parse(Path::new("x"), &p.bytes()),
        Err(CheckpointError::BadPickle { .. })
    ));
    let mut p = P::new();
    p.op(b']').op(b'}').op(b'b').op(b'.');
    assert!(matches!(
        pickle::parse(Path::new("x"), &p.bytes()),
        Err(CheckpointError::BadPickle { .. })
    ));
}

#[test]
fn huge_shape_over_tiny_storage_is_rejected_before_allocating() {
    let storage = f32_bytes(&[1.0, 2.0]);
    for (shape, stride) in [
        ([1i64 << 40], [1i64]),
        ([1i64 << 40], [0i64]),
        ([i64::MAX], [1i64]),
    ] {
        let pkl = single_tensor_pickle("FloatStorage", 2, 0, &shape, &stride);
        let f = torch_zip(&pkl, &[("0", &storage)], false);
        let err = Checkpoint::open(f.path()).unwrap_err();
        assert!(
            matches!(err, CheckpointError::BadStorage { ref key, .. } if key == "w"),
            "{err:?}"
        );
    }
    // Storage numel larger than the zip entry.
    let pkl = single_tensor_pickle("FloatStorage", 1 << 40, 0, &[2], &[1]);
    let f = torch_zip(&pkl, &[("0", &storage)], false);
    assert!(matches!(
        Checkpoint::open(f.path()),
        Err(CheckpointError::BadStorage { .. })
    ));
    // Offset past the end.
    let pkl = single_tensor_pickle("FloatStorage", 2, 2, &[1], &[1]);
    let f = torch_zip(&pkl, &[("0", &storage)], false);
    assert!(matches!(
        Checkpoint::open(f.path()),
        Err(CheckpointError::BadStorage { .. })
    ));
    // Missing storage entry.
    let pkl = single_tensor_pickle("FloatStorage", 2, 0, &[2], &[1]);
    let f = torch_zip(&pkl, &[], false);
    assert!(matches!(
        Checkpoint::open(f.path()),
        Err(CheckpointError::BadStorage { .. })
    ));
}

#[test]
fn deep_nesting_is_rejected() {
    let mut p = P::new();
    for _ in 0..5000 {
        p.op(b'(');
    }
    assert!(matches!(
        pickle::parse(Path::new("x"), &p.bytes()),
        Err(CheckpointError::NestingTooDeep { .. })
    ));
    let mut p = P::new();
    p.op(b')');
    for _ in 0..5000 {
        p.op(0x85);
    }
    p.op(b'.');
    assert!(matches!(
        pickle::parse(Path::new("x"), &p.bytes()),
        Err(CheckpointError::NestingTooDeep { .. })
    ));
    // A list appended to itself repeatedly.
    let mut p = P::new();
    p.op(b']').op(b'q').op(0);
    for _ in 0..5000 {
        p.op(b'h').op(0).op(b'a');
    }
    p.op(b'.');
    assert!(matches!(
        pickle::parse(Path::new("x"), &p.bytes()),
        Err(CheckpointError::NestingTooDeep { .. })
    ));
}

#[test]
fn bad_opcodes_and_truncation() {
    // INST (protocol 0 object construction) is not supported.
    let mut p = P::new();
    p.op(b'}').op(b'i');
    match pickle::parse(Path::new("x"), &p.bytes()) {
        Err(CheckpointError::UnsupportedOpcode {
            opcode: b'i',
            offset: 3,
            ..
        }) => {}
        other => panic!("unexpected {other:?}"),
    }
    // String length beyond the data.
    let data = [0x80, 2, b'X', 0xff, 0xff, 0xff, 0xff, b'a'];
    assert!(matches!(
        pickle::parse(Path::new("x"), &data),
        Err(CheckpointError::Truncated { .. })
    ));
    let data = [
        0x80, 2, 0x8d, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    assert!(matches!(
        pickle::parse(Path::new("x"), &data),
        Err(CheckpointError::Truncated { .. })
    ));
    // No STOP.
    assert!(matches!(
        pickle::parse(Path::new("x"), &[0x80, 2, b'}']),
        Err(CheckpointError::Truncated { .. })
    ));
    // Stack underflow / missing memo.
    assert!(matches!(
        pickle::parse(Path::new("x"), &[0x80, 2, b'.']),
        Err(CheckpointError::BadPickle { .. })
    ));
    assert!(matches!(
        pickle::parse(Path::new("x"), &[0x80, 2, b'h', 9, b'.']),
        Err(CheckpointError::BadPickle { .. })
    ));
    // Top-level object that is not a dict.
    let f = torch_zip(&[0x80, 2, b'N', b'.'], &[], false);
    assert!(matches!(
        Checkpoint::open(f.path()),
        Err(CheckpointError::NotACheckpoint { .. })
    ));
}

#[test]
fn broken_files() {
    // Empty file.
    let f = write_tmp(b"", ".pth");
    assert!(matches!(
        Checkpoint::open(f.path()),
        Err(CheckpointError::NotACheckpoint { .. })
    ));
    // Missing file.
    assert!(matches!(
        Checkpoint::open(Path::new("/nonexistent/x.pth")),
        Err(CheckpointError::Io { .. })
    ));
    // Truncated zip.
    let bytes = std::fs::read(fixture!("cross/vae.ckpt")).unwrap();
    for cut in [10, 100, bytes.len() / 2, bytes.len() - 10] {
        let f = write_tmp(&bytes[..cut], ".ckpt");
        assert!(Checkpoint::open(f.path()).is_err(), "cut at {cut}");
    }
    // Zip without data.pkl.
    let mut f = tempfile::NamedTempFile::new().unwrap();
    {
        let mut w = zip::ZipWriter::new(f.as_file_mut());
        w.start_file("foo/bar.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(b"hi").unwrap();
        w.finish().unwrap();
    }
    assert!(matches!(
        Checkpoint::open(f.path()),
        Err(CheckpointError::NotACheckpoint { .. })
    ));
    // Legacy torch format (raw pickle).
    let f = write_tmp(
        &[
            0x80, 2, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8,
        ],
        ".pth",
    );
    assert!(matches!(
        Checkpoint::open(f.path()),
        Err(CheckpointError::NotACheckpoint { .. })
    ));
}

/// Tiny deterministic PRNG for fuzz-style tests.
fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

#[test]
fn random_bytes_never_panic() {
    let mut s = 42u64;
    for len in [1usize, 7, 8, 9, 64, 1000] {
        for _ in 0..20 {
            let mut b: Vec<u8> = (0..len).map(|_| lcg(&mut s) as u8).collect();
            let f = write_tmp(&b, ".bin");
            assert!(Checkpoint::open(f.path()).is_err());
            // Random data behind each magic header too.
            b.splice(0..0, *b"PK\x03\x04");
            let f = write_tmp(&b, ".bin");
            assert!(Checkpoint::open(f.path()).is_err());
            // As a pickle it starts with `P` (PERSID), which the reader refuses at once.
            match pickle::parse(Path::new("x"), &b) {
                Err(CheckpointError::UnsupportedOpcode {
                    opcode: b'P',
                    offset: 0,
                    ..
                }) => {}
                other => panic!("expected PERSID refused at offset 0, got {other:?}"),
            }
        }
    }
}

#[test]
fn mutated_real_pickles_never_panic() {
    let mut z = zip::ZipArchive::new(File::open(fixture!("cross/vae.ckpt")).unwrap()).unwrap();
    let mut pkl = Vec::new();
    z.by_name("vae/data.pkl")
        .unwrap()
        .read_to_end(&mut pkl)
        .unwrap();
    assert!(pickle::parse(Path::new("x"), &pkl).is_ok());
    let mut s = 7u64;
    let (mut parsed, mut refused) = (0, 0);
    for _ in 0..3000 {
        let mut m = pkl.clone();
        for _ in 0..1 + lcg(&mut s) % 4 {
            let i = (lcg(&mut s) as usize) % m.len();
            m[i] = lcg(&mut s) as u8;
        }
        if lcg(&mut s).is_multiple_of(4) {
            m.truncate((lcg(&mut s) as usize) % m.len());
        }
        // Either a parse, or one of the pickle reader's own refusals naming the file.
        match pickle::parse(Path::new("x"), &m) {
            Ok(_) => parsed += 1,
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        CheckpointError::BadPickle { .. }
                            | CheckpointError::UnsupportedOpcode { .. }
                            | CheckpointError::Truncated { .. }
                            | CheckpointError::NestingTooDeep { .. }
                            | CheckpointError::TooLarge { .. }
                            | CheckpointError::ForeignGlobal { .. }
                    ),
                    "{e:?}"
                );
                assert!(e.to_string().starts_with("x: "), "{e}");
                refused += 1;
            }
        }
    }
    // Mutations that leave the pickle valid (a changed float or string byte) and ones that
    // break it both happen; a run with only one kind exercised half the reader.
    assert!(
        parsed > 0 && refused > 0,
        "{parsed} parsed, {refused} refused"
    );
}

#[test]
fn protocol4_opcodes_are_understood() {
    fn short(p: &mut Vec<u8>, s: &str) {
        p.push(0x8c);
        p.push(s.len() as u8);
        p.extend(s.as_bytes());
    }
    let mut p = vec![0x80, 4, 0x95];
    p.extend(0u64.to_le_bytes());
    p.extend([b'}', 0x94, b'(']);
    short(&mut p, "w");
    p.push(0x94);
    short(&mut p, "torch._utils");
    short(&mut p, "_rebuild_tensor_v2");
    p.extend([0x93, 0x94, b'(', b'(']);
    short(&mut p, "storage");
    short(&mut p, "torch");
    short(&mut p, "FloatStorage");
    p.push(0x93);
    short(&mut p, "0");
    short(&mut p, "cpu");
    p.extend([
        b'K', 2, b't', b'Q', b'K', 0, b'K', 2, 0x85, b'K', 1, 0x85, 0x89,
    ]);
    short(&mut p, "collections");
    short(&mut p, "OrderedDict");
    p.extend([0x93, b')', b'R', b't', b'R', b'u', b'.']);
    let f = torch_zip(&p, &[("0", &f32_bytes(&[0.5, -1.0]))], true);
    let c = Checkpoint::open(f.path()).unwrap();
    assert_eq!(c.load_f32("w").unwrap(), vec![0.5, -1.0]);
}

#[test]
fn opcode_budget_bounds_interpreter_memory() {
    let mut p = vec![0x80, 2];
    p.resize(2 + (pickle::MAX_OPS as usize) + 10, b'N');
    assert!(matches!(
        pickle::parse(Path::new("x"), &p),
        Err(CheckpointError::TooLarge { .. })
    ));
}

#[test]
fn checkpoint_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Checkpoint>();
    assert_send_sync::<CheckpointError>();
}
