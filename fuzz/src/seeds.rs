//! Builds the committed seed corpus (`flowar-fuzz gen-corpus`): small valid inputs of
//! every format, so mutations start from files the readers accept.

use std::path::Path;

use flowar_exporter::convert::{convert, ConvertRequest};
use flowar_exporter::preset::{flowar_keys, vae_keys, FlowArSpec, RandomWeights, VaeSpec};
use flowar_exporter::weights::WeightSource;
use safetensors::Dtype;

use crate::torch::{safetensors_bytes, torch_checkpoint, torch_zip, Pickle, TensorDef};

/// The smallest FlowAR the exporter accepts: AR width 16 (head size 8), one block each,
/// a 64-wide flow head (its RoPE buffer fixes head size 64), scales [1, 2].
pub fn tiny_flowar_spec(latent_channels: usize) -> FlowArSpec {
    FlowArSpec {
        width: 16,
        encoder_depth: 1,
        decoder_depth: 1,
        head_dim: 8,
        flow_width: 64,
        flow_depth: 1,
        cross: false,
        num_classes: 4,
        latent_channels,
        scales: vec![1, 2],
    }
}

/// A one-level KL-VAE decoder (32 channels: GroupNorm needs 32 groups).
pub fn tiny_vae_spec(latent_channels: usize) -> VaeSpec {
    VaeSpec {
        ch: 32,
        ch_mult: vec![1],
        num_res_blocks: 0,
        z_channels: latent_channels,
        embed_dim: latent_channels,
        attn_levels: vec![],
    }
}

/// Seeded random weights of the tiny FlowAR.
pub fn tiny_flowar(latent_channels: usize) -> RandomWeights {
    RandomWeights::new(
        "tiny flowar".into(),
        7,
        flowar_keys(&tiny_flowar_spec(latent_channels)),
    )
}

/// Seeded random weights of the tiny VAE.
pub fn tiny_vae(latent_channels: usize) -> RandomWeights {
    RandomWeights::new(
        "tiny vae".into(),
        7,
        vae_keys(&tiny_vae_spec(latent_channels)),
    )
}

/// All tensors of a weight source as float32 `TensorDef`s, optionally only keys passing
/// `keep`.
pub fn tensor_defs(src: &dyn WeightSource, keep: impl Fn(&str) -> bool) -> Vec<TensorDef> {
    src.keys()
        .into_iter()
        .filter(|k| keep(k))
        .map(|k| {
            let shape = src.shape(&k).expect("listed key");
            let v = src.load_f32(&k).expect("random weights");
            TensorDef::f32(&k, &shape, &v)
        })
        .collect()
}

/// A weight source as safetensors bytes (float32).
pub fn to_safetensors(src: &dyn WeightSource) -> Vec<u8> {
    let t: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensor_defs(src, |_| true)
        .into_iter()
        .map(|d| (d.name, Dtype::F32, d.shape, d.data))
        .collect();
    safetensors_bytes(&t)
}

/// A weight source as a `.pth` (float32), optionally nested under `wrap`.
pub fn to_pth(src: &dyn WeightSource, wrap: Option<&str>) -> Vec<u8> {
    torch_checkpoint(&tensor_defs(src, |_| true), wrap)
}

/// Converts the tiny FlowAR + VAE into `out` (random weights, no source files).
pub fn convert_tiny(out: &Path, latent_channels: usize) -> flowar_exporter::Result<()> {
    let f = tiny_flowar(latent_channels);
    let v = tiny_vae(latent_channels);
    convert(&ConvertRequest::new(&f, &v, out).force(true)).map(|_| ())
}

fn small_defs() -> Vec<TensorDef> {
    let half: Vec<u8> = [1.0f32, -2.0, 0.5, 65504.0]
        .iter()
        .flat_map(|&x| f16_bits(x).to_le_bytes())
        .collect();
    let bf: Vec<u8> = [1.0f32, -2.0, 0.5, 3.0e38]
        .iter()
        .flat_map(|&x| ((x.to_bits() >> 16) as u16).to_le_bytes())
        .collect();
    vec![
        TensorDef::f32("w", &[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]),
        TensorDef::f32("b", &[3], &[-1.0, 0.5, 7.0]),
        TensorDef {
            name: "h".into(),
            class: "HalfStorage".into(),
            shape: vec![4],
            data: half,
        },
        TensorDef {
            name: "bf".into(),
            class: "BFloat16Storage".into(),
            shape: vec![2, 2],
            data: bf,
        },
        TensorDef::i64("steps", &[2], &[1, 2]),
    ]
}

/// float32 to IEEE half bits for the handful of exactly representable values above.
fn f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    let mant = ((b >> 13) & 0x3ff) as u16;
    if x == 0.0 {
        sign
    } else {
        sign | ((exp as u16) << 10) | mant
    }
}

/// A pickle using the protocol-4 forms torch also writes: FRAME, SHORT_BINUNICODE,
/// MEMOIZE, STACK_GLOBAL, BINPUT/BINGET, an OrderedDict via REDUCE and a transposed view.
fn proto4_pickle() -> Vec<u8> {
    let mut p = Pickle::new(4);
    p.raw(&[0x95]).raw(&0u64.to_le_bytes());
    // OrderedDict()
    p.op(0x8c).op(11).raw(b"collections").op(0x94);
    p.op(0x8c).op(11).raw(b"OrderedDict").op(0x94);
    p.op(0x93).op(0x94).op(b')').op(b'R').op(b'q').op(9);
    p.op(b'(');
    // "wt": a transposed 3x2 view of storage "0" (strides (1, 3)).
    p.op(0x8c).op(2).raw(b"wt");
    p.tensor("FloatStorage", "0", 16, 0, &[3, 2], &[1, 3]);
    // "w2": same storage with an offset, memoised and fetched back.
    p.op(0x8c).op(2).raw(b"w2");
    p.tensor("FloatStorage", "0", 16, 4, &[4], &[1])
        .op(b'q')
        .op(1);
    p.op(0x8c).op(2).raw(b"w3").op(b'h').op(1);
    p.op(0x8c).op(1).raw(b"n").op(b'N');
    p.op(0x8c).op(1).raw(b"i").op(b'K').op(7);
    p.op(b'u');
    p.finish()
}

/// Writes every target's seeds under `root` (normally `fuzz/corpus`).
pub fn write_corpus(root: &Path) -> std::io::Result<Vec<(String, usize)>> {
    let mut written = Vec::new();
    let mut put = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
        written.push((format!("{target}/{name}"), bytes.len()));
        Ok(())
    };
    let small = small_defs();
    let ar_only = |k: &str| !k.starts_with("flownet.") && k != "mask";
    let tiny = tiny_flowar(4);
    let ar_defs = tensor_defs(&tiny, ar_only);

    // pth: whole archives.
    put("pth", "small.pth", &torch_checkpoint(&small, None))?;
    put(
        "pth",
        "nested-model.pth",
        &torch_checkpoint(&small, Some("model")),
    )?;
    put(
        "pth",
        "tiny-flowar-ar.pth",
        &torch_checkpoint(&ar_defs, None),
    )?;

    // pickle: data.pkl only; storages "0".."3" hold 16 float32 each.
    let pk = vec![
        TensorDef::f32("a.weight", &[2, 2], &[1.0, 2.0, 3.0, 4.0]),
        TensorDef::f32("a.bias", &[2], &[0.5, -0.5]),
        TensorDef {
            name: "h".into(),
            class: "HalfStorage".into(),
            shape: vec![3],
            data: vec![0; 6],
        },
        TensorDef::i64("n", &[1], &[3]),
    ];
    put(
        "pickle",
        "state-dict.pkl",
        &crate::torch::state_dict_pickle(&pk, None),
    )?;
    put(
        "pickle",
        "state-dict-in-model.pkl",
        &crate::torch::state_dict_pickle(&pk, Some("state_dict")),
    )?;
    put("pickle", "proto4-views.pkl", &proto4_pickle())?;

    // safetensors.
    let st: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = small
        .iter()
        .map(|d| {
            let dt = match d.class.as_str() {
                "HalfStorage" => Dtype::F16,
                "BFloat16Storage" => Dtype::BF16,
                "LongStorage" => Dtype::I64,
                _ => Dtype::F32,
            };
            (d.name.clone(), dt, d.shape.clone(), d.data.clone())
        })
        .collect();
    put("safetensors", "small.safetensors", &safetensors_bytes(&st))?;
    let ar_st: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = ar_defs
        .iter()
        .map(|d| (d.name.clone(), Dtype::F32, d.shape.clone(), d.data.clone()))
        .collect();
    put(
        "safetensors",
        "tiny-flowar-ar.safetensors",
        &safetensors_bytes(&ar_st),
    )?;

    // noise: rows 2, scales [1, 2], 4 channels.
    let noise: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = [1usize, 2]
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n = 2 * s * s * 4;
            let bytes = (0..n)
                .flat_map(|j| (j as f32 * 0.1).to_le_bytes())
                .collect();
            (format!("noise.s{i}"), Dtype::F32, vec![2, s * s, 4], bytes)
        })
        .collect();
    put("noise", "noise.safetensors", &safetensors_bytes(&noise))?;

    // manifest and onnx: a converted tiny model.
    let tmp = tempfile::tempdir()?;
    let model = tmp.path().join("m");
    convert_tiny(&model, 4).map_err(|e| std::io::Error::other(e.to_string()))?;
    put(
        "manifest",
        "manifest.json",
        &std::fs::read(model.join("manifest.json"))?,
    )?;
    put(
        "onnx-tract",
        "ar_step.onnx",
        &std::fs::read(model.join("ar_step.onnx"))?,
    )?;
    // An archive without data.pkl, for the pth target.
    put(
        "pth",
        "no-data-pkl.pth",
        &torch_zip("archive", None, &[("0".into(), vec![0; 16])]),
    )?;
    // vae-config: the diffusers configs of the test fixtures, as AutoencoderKL wrote them.
    for dir in crate::targets::vae_config_fixtures() {
        let name = dir
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        put(
            "vae-config",
            &format!("{name}.json"),
            &std::fs::read(dir.join("config.json"))?,
        )?;
    }
    Ok(written)
}
