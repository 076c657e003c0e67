//! FlowAR on VAEs other than MAR's kl16 (README "Other VAEs"): the diffusers-layout
//! fixtures (`flux-f8c16`: 16 channels with a shift and no quant convs; `sd-f8c4`: 4
//! channels, SD-style) match the reference on every CPU provider; the same decoder in the
//! LDM layout (also inside a full SD checkpoint, also with diffusers' older attention
//! names) decodes identically; the decode rule's numbers land in the manifest and a model
//! card overrides them; a FlowAR on a 32x32 grid runs at 256 px.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flowar_exporter::convert::{LatentScaleSource, ModelMeta};
use flowar_runtime::manifest::{Manifest, VaeLayout};
use flowar_runtime::{Provider, Request, Solver};
use flowar_tests::*;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// `vae.image`'s largest error measured on both fixtures over every CPU provider (8.1e-6),
/// rounded up; [`MARGIN`] above it fails, well inside the 1e-3 bound (`pipe.tokens` is
/// pinned per fixture in `verify_fixture`).
const VAE_MEASURED: f64 = 1.0e-5;
const MARGIN: f64 = 2.0;

/// Converts fixture `name` from its VAE folder, checks what the manifest records of the
/// VAE, and runs every reference case on every CPU provider.
fn check_fixture(name: &str, channels: usize, scale: f64, shift: f64, post_quant_conv: bool) {
    let (_t, dir) = convert_vae_fixture(name);
    let m = Manifest::load(&dir).unwrap();
    let v = &m.architecture.vae;
    assert_eq!(
        (
            v.kind.as_str(),
            v.layout,
            v.stride,
            v.norm_groups,
            v.post_quant_conv
        ),
        (
            "AutoencoderKL",
            VaeLayout::Diffusers,
            8,
            32,
            post_quant_conv
        ),
        "{name}"
    );
    assert_eq!(
        (
            m.latent_channels,
            m.latent_scale,
            m.latent_shift,
            m.image_size
        ),
        (channels, scale, shift, 128),
        "{name}"
    );
    let roles: Vec<&str> = m.sources.iter().map(|s| s.role.as_str()).collect();
    assert_eq!(roles, ["flowar", "vae", "vae_config"], "{name}");
    for (p, results) in verify_fixture(name, &dir) {
        print_results(name, p, &results);
        for r in &results {
            assert!(r.pass, "{name} on {}: {r:?}", p.name());
            let measured = match r.name.as_str() {
                "vae.image" => VAE_MEASURED,
                _ => continue,
            };
            assert!(
                r.max_abs <= MARGIN * measured,
                "{name} on {}: {} {:.3e} is past {MARGIN} x the measured {measured:.1e}",
                p.name(),
                r.name,
                r.max_abs
            );
        }
    }
}

#[test]
fn flux_style_vae_fixture_matches_the_reference() {
    check_fixture("flux-f8c16", 16, 0.3611, 0.1159, false);
}

#[test]
fn sd_style_vae_fixture_matches_the_reference() {
    check_fixture("sd-f8c4", 4, 0.18215, 0.0, true);
}

// ------------------------------------------------------------------ layout copies

type Tensors = BTreeMap<String, (Vec<usize>, Vec<u8>)>;

fn read_tensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, t)| {
            assert_eq!(t.dtype(), Dtype::F32, "{k}");
            (k, (t.shape().to_vec(), t.data().to_vec()))
        })
        .collect()
}

fn write_tensors(t: &Tensors, path: &Path) {
    let views: Vec<(String, TensorView)> = t
        .iter()
        .map(|(k, (shape, data))| {
            (
                k.clone(),
                TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// The LDM name of a diffusers decoder key (`levels` up blocks), as the original SD
/// conversion scripts map them; attention linears become 1x1 convs. Encoder keys: `None`.
fn ldm_key(key: &str, levels: usize) -> Option<String> {
    if key.starts_with("encoder.") {
        return None;
    }
    let mut k = key
        .replace("decoder.conv_norm_out", "decoder.norm_out")
        .replace("decoder.mid_block.resnets.0", "decoder.mid.block_1")
        .replace("decoder.mid_block.resnets.1", "decoder.mid.block_2")
        .replace("decoder.mid_block.attentions.0", "decoder.mid.attn_1")
        .replace(".group_norm.", ".norm.")
        .replace(".to_q.", ".q.")
        .replace(".to_k.", ".k.")
        .replace(".to_v.", ".v.")
        .replace(".to_out.0.", ".proj_out.")
        .replace(".conv_shortcut.", ".nin_shortcut.")
        .replace(".upsamplers.0.", ".upsample.");
    if let Some(rest) = k.strip_prefix("decoder.up_blocks.") {
        let (i, tail) = rest.split_once('.').unwrap();
        let l = levels - 1 - i.parse::<usize>().unwrap();
        k = format!("decoder.up.{l}.{}", tail.replace("resnets.", "block."));
    }
    Some(k)
}

/// The sd-f8c4 VAE rewritten in the LDM layout: flat, or under `first_stage_model.` beside
/// other models' keys as in a full SD checkpoint.
fn ldm_copy(dir: &Path, full_checkpoint: bool) -> PathBuf {
    let src = read_tensors(&fixture("sd-f8c4/vae/diffusion_pytorch_model.safetensors"));
    let mut out = Tensors::new();
    for (k, (shape, data)) in src {
        let Some(mut name) = ldm_key(&k, 4) else {
            continue;
        };
        let shape = if name.contains(".attn_1.") && shape.len() == 2 {
            vec![shape[0], shape[1], 1, 1]
        } else {
            shape
        };
        if full_checkpoint {
            name = format!("first_stage_model.{name}");
        }
        out.insert(name, (shape, data));
    }
    if full_checkpoint {
        for k in [
            "model.diffusion_model.input_blocks.0.0.weight",
            "cond_stage_model.proj",
        ] {
            out.insert(k.into(), (vec![2], vec![0; 8]));
        }
    }
    let path = dir.join(if full_checkpoint {
        "sd-full.safetensors"
    } else {
        "vae-ldm.safetensors"
    });
    write_tensors(&out, &path);
    path
}

/// The sd-f8c4 VAE folder with the attention saved under diffusers' pre-0.14 names.
fn legacy_attention_copy(dir: &Path) -> PathBuf {
    let from = fixture("sd-f8c4/vae");
    let to = dir.join("legacy-vae");
    std::fs::create_dir_all(&to).unwrap();
    std::fs::copy(from.join("config.json"), to.join("config.json")).unwrap();
    let t: Tensors = read_tensors(&from.join("diffusion_pytorch_model.safetensors"))
        .into_iter()
        .map(|(k, v)| {
            let k = k
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (k, v)
        })
        .collect();
    assert!(t.keys().any(|k| k.contains(".proj_attn.")));
    write_tensors(&t, &to.join("diffusion_pytorch_model.safetensors"));
    to
}

/// Two images and the final tokens from model folder `dir` on tract (seeded, 4 steps).
fn images(dir: &Path) -> (Vec<u8>, Vec<f32>) {
    let mut pipe = load(dir, Provider::Tract);
    let req = Request {
        classes: vec![1, 998],
        image_indices: vec![0, 1],
        seed: 5,
        cfg: 4.0,
        guidance: 0.9,
        steps: 4,
        scale_steps: None,
        solver: Solver::Euler,
        noise: None,
        edit: None,
    };
    let out = pipe.generate(&req, &mut |_| true).unwrap();
    let pixels = out.images.iter().flat_map(|i| i.pixels.clone()).collect();
    (pixels, out.tokens)
}

/// The diffusers original and its LDM copies (flat; inside a full SD checkpoint) and a
/// copy with the older attention names all convert to the same decoder: identical images.
#[test]
fn the_same_decoder_in_every_layout_gives_the_same_images() {
    let tmp = tempfile::tempdir().unwrap();
    let flowar = fixture("sd-f8c4/flowar.pth");
    let (_a, original) = convert_vae_fixture("sd-f8c4");
    let want = images(&original);
    assert_eq!(want.0.len(), 2 * 128 * 128 * 3);
    let ldm = ldm_copy(tmp.path(), false);
    let full = ldm_copy(tmp.path(), true);
    let legacy = legacy_attention_copy(tmp.path());
    for (what, vae, scale) in [
        ("LDM layout", &ldm, Some(0.18215)),
        ("full SD checkpoint", &full, Some(0.18215)),
        ("older attention names", &legacy, None),
    ] {
        let (_t, dir) = convert_with_vae(&flowar, vae, |r| r.latent_scale(scale));
        let m = Manifest::load(&dir).unwrap();
        let layout = if vae == &legacy {
            VaeLayout::Diffusers
        } else {
            VaeLayout::Ldm
        };
        assert_eq!(m.architecture.vae.layout, layout, "{what}");
        assert_eq!((m.latent_channels, m.image_size), (4, 128), "{what}");
        let got = images(&dir);
        assert!(
            got.0 == want.0,
            "{what}: images differ from the diffusers original"
        );
        assert_eq!(got.1, want.1, "{what}: tokens differ");
    }
}

/// The decode rule's numbers: the VAE config's by default, a model card's over them, the
/// caller's over both; each with its source in the report.
#[test]
fn a_model_card_and_the_caller_override_the_configs_scale_and_shift() {
    let d = fixture("flux-f8c16");
    let card = ModelMeta {
        latent_scale: Some(0.5),
        latent_shift: Some(-0.25),
        ..ModelMeta::default()
    };
    let (_a, dir) = convert_with_vae(&d.join("flowar.pth"), &d.join("vae"), |r| r.meta(card));
    let m = Manifest::load(&dir).unwrap();
    assert_eq!((m.latent_scale, m.latent_shift), (0.5, -0.25));
    let (_b, dir) = convert_with_vae(&d.join("flowar.pth"), &d.join("vae"), |r| {
        r.latent_scale(Some(2.0)).latent_shift(Some(0.0))
    });
    let m = Manifest::load(&dir).unwrap();
    assert_eq!((m.latent_scale, m.latent_shift), (2.0, 0.0));
    // The sources, from the exporter's report.
    let f = flowar_exporter::checkpoint::Checkpoint::open(&d.join("flowar.pth")).unwrap();
    let v = flowar_exporter::vae_checkpoint::VaeCheckpoint::open(&d.join("vae")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    let req =
        flowar_exporter::convert::ConvertRequest::from_files(&f, &d.join("flowar.pth"), &v, &out)
            .latent_shift(Some(0.0));
    let r = flowar_exporter::convert::convert(&req).unwrap();
    assert_eq!(
        (r.latent_scale_source, r.latent_shift_source),
        (LatentScaleSource::VaeConfig, LatentScaleSource::Given)
    );
    assert!(r
        .latent_norm_note()
        .contains("0.3611 (from the VAE's config.json)"));
}

/// A 4-channel FlowAR on a 32x32 final grid (scales 1..32) with the f8 SD-style decoder
/// makes 256-pixel images: nothing assumes 16 channels or a 16x16 grid.
#[test]
fn a_32x32_grid_with_an_f8_vae_makes_256_pixel_images() {
    use flowar_exporter::preset::{flowar_keys, FlowArSpec, RandomWeights};
    let spec = FlowArSpec {
        width: 64,
        encoder_depth: 1,
        decoder_depth: 1,
        head_dim: 16,
        flow_width: 64,
        flow_depth: 1,
        cross: false,
        num_classes: 10,
        latent_channels: 4,
        scales: vec![1, 2, 4, 8, 16, 32],
    };
    let f = RandomWeights::new("flowar 32x32".into(), 3, flowar_keys(&spec));
    let v = flowar_exporter::vae_checkpoint::VaeCheckpoint::open(&fixture("sd-f8c4/vae")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    let req = flowar_exporter::convert::ConvertRequest::new(&f, &v, &out).vae_config(v.config());
    let m = flowar_exporter::convert::convert(&req).unwrap().manifest;
    assert_eq!((m.scales.last(), m.image_size), (Some(&32), 256));
    for p in cpu_providers() {
        let mut pipe = load(&out, p);
        let req = Request {
            classes: vec![3],
            image_indices: vec![0],
            seed: 1,
            cfg: 2.0,
            guidance: 0.9,
            steps: 2,
            scale_steps: None,
            solver: Solver::Euler,
            noise: None,
            edit: None,
        };
        let o = pipe.generate(&req, &mut |_| true).unwrap();
        let img = &o.images[0];
        assert_eq!((img.width, img.height), (256, 256), "{}", p.name());
        assert_eq!(o.tokens.len(), 4 * 32 * 32, "{}", p.name());
        assert!(o.tokens.iter().all(|x| x.is_finite()), "{}", p.name());
        // Not a flat image: the decoder ran on real latents.
        let (lo, hi) = img
            .pixels
            .iter()
            .fold((255u8, 0u8), |(a, b), &x| (a.min(x), b.max(x)));
        assert!(hi - lo > 20, "{}: pixels span only {lo}..{hi}", p.name());
    }
}

/// The other weights files a diffusers folder may hold instead of
/// `diffusion_pytorch_model.safetensors`: the pickle `torch.save` wrote
/// (`diffusion_pytorch_model.bin`, the same float32 values: the same images) and the
/// half-precision variant (`diffusion_pytorch_model.fp16.safetensors`: weights rounded to
/// float16, so pixels may move: by one level at most, measured).
#[test]
fn a_diffusers_folder_with_bin_or_fp16_weights_converts() {
    use flowar_fuzz::torch::{torch_checkpoint, TensorDef};
    let tmp = tempfile::tempdir().unwrap();
    let flowar = fixture("sd-f8c4/flowar.pth");
    let src = fixture("sd-f8c4/vae");
    let tensors = read_tensors(&src.join("diffusion_pytorch_model.safetensors"));
    let (_a, original) = convert_vae_fixture("sd-f8c4");
    let want = images(&original);

    let bin = tmp.path().join("bin-vae");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy(src.join("config.json"), bin.join("config.json")).unwrap();
    let defs: Vec<TensorDef> = tensors
        .iter()
        .map(|(k, (shape, data))| TensorDef {
            name: k.clone(),
            class: "FloatStorage".into(),
            shape: shape.clone(),
            data: data.clone(),
        })
        .collect();
    std::fs::write(
        bin.join("diffusion_pytorch_model.bin"),
        torch_checkpoint(&defs, None),
    )
    .unwrap();
    let (_b, dir) = convert_with_vae(&flowar, &bin, |r| r);
    assert!(images(&dir) == want, ".bin weights give other images");

    let half = tmp.path().join("fp16-vae");
    std::fs::create_dir(&half).unwrap();
    std::fs::copy(src.join("config.json"), half.join("config.json")).unwrap();
    let f16: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, (shape, data))| {
            let bytes = data
                .chunks_exact(4)
                .flat_map(|c| {
                    let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    half::f16::from_f32(x).to_le_bytes()
                })
                .collect();
            (k.clone(), shape.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView)> = f16
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                TensorView::new(Dtype::F16, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(
        views,
        None,
        &half.join("diffusion_pytorch_model.fp16.safetensors"),
    )
    .unwrap();
    let (_c, dir) = convert_with_vae(&flowar, &half, |r| r);
    let (got, _) = images(&dir);
    let worst = got
        .iter()
        .zip(&want.0)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    eprintln!("float16 VAE weights: pixels at most {worst} level(s) from float32's");
    assert!(
        worst <= 4,
        "float16 weights moved a pixel by {worst} levels"
    );
}

/// A diffusers config's `force_upcast` (true in the fixture, as in SDXL's and SD's
/// configs; absent means true) keeps the VAE decoder float32 under `--dtype f16`, and the
/// report says so; with it false the decoder is converted to float16 like the rest.
#[test]
fn force_upcast_keeps_the_vae_float32_in_a_float16_folder() {
    use flowar_exporter::checkpoint::Checkpoint;
    use flowar_exporter::convert::{convert_as, ConvertRequest, Precision};
    use flowar_exporter::vae_checkpoint::VaeCheckpoint;
    let src = fixture("sd-f8c4");
    let tmp = tempfile::tempdir().unwrap();
    let off = tmp.path().join("no-upcast");
    std::fs::create_dir(&off).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("vae/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["force_upcast"], serde_json::json!(true));
    cfg["force_upcast"] = serde_json::json!(false);
    std::fs::write(off.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        src.join("vae/diffusion_pytorch_model.safetensors"),
        off.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let f = Checkpoint::open(&src.join("flowar.pth")).unwrap();
    let vae_size = |vae: &Path, name: &str| {
        let v = VaeCheckpoint::open(vae).unwrap();
        let out = tmp.path().join(name);
        let r = convert_as(
            &ConvertRequest::from_files(&f, &src.join("flowar.pth"), &v, &out),
            Precision::F16,
        )
        .unwrap();
        let size = std::fs::metadata(out.join("vae_decoder.onnx"))
            .unwrap()
            .len();
        (size, r.vae_upcast)
    };
    let (upcast_size, note) = vae_size(&src.join("vae"), "upcast");
    assert!(
        note.as_deref().is_some_and(|n| n.contains("force_upcast")),
        "{note:?}"
    );
    let (half_size, note) = vae_size(&off, "half");
    assert_eq!(note, None);
    assert!(
        (half_size as f64) < 0.6 * upcast_size as f64,
        "float16 decoder {half_size} bytes, upcast {upcast_size}"
    );
}

// ------------------------------------------------------------------ middle attention

/// The key prefixes of a diffusers VAE's two middle attentions (decoder and encoder: one
/// `mid_block_add_attention` governs both).
const MID_ATTENTIONS: [&str; 2] = [
    "decoder.mid_block.attentions.0.",
    "encoder.mid_block.attentions.0.",
];

fn in_mid_attention(key: &str) -> bool {
    MID_ATTENTIONS.iter().any(|p| key.starts_with(p))
}

/// The sd-f8c4 VAE folder (encoder included) copied to `dir/name` with its config's
/// `mid_block_add_attention` set to `config_says` and each tensor passed through `edit`
/// (`None` drops it).
fn vae_copy(
    dir: &Path,
    name: &str,
    config_says: bool,
    edit: impl Fn(&str, (Vec<usize>, Vec<u8>)) -> Option<(Vec<usize>, Vec<u8>)>,
) -> PathBuf {
    let from = fixture("sd-f8c4/vae");
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(from.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["mid_block_add_attention"], serde_json::json!(true));
    cfg["mid_block_add_attention"] = serde_json::json!(config_says);
    std::fs::write(to.join("config.json"), cfg.to_string()).unwrap();
    let t: Tensors = read_tensors(&from.join("diffusion_pytorch_model.safetensors"))
        .into_iter()
        .filter_map(|(k, v)| edit(&k, v).map(|v| (k, v)))
        .collect();
    write_tensors(&t, &to.join("diffusion_pytorch_model.safetensors"));
    to
}

/// The sd-f8c4 VAE without its middle attentions (their keys dropped), the config saying
/// `config_says`.
fn without_mid_attention(dir: &Path, name: &str, config_says: bool) -> PathBuf {
    let to = vae_copy(dir, name, config_says, |k, v| {
        (!in_mid_attention(k)).then_some(v)
    });
    let left = read_tensors(&to.join("diffusion_pytorch_model.safetensors"));
    assert!(left.keys().all(|k| !k.contains(".mid_block.attentions.")));
    to
}

/// The sd-f8c4 VAE with both middle attentions kept but their output projections
/// (`to_out.0` weight and bias) zeroed. diffusers' mid-block attention adds its output to
/// its input (`Attention(..., residual_connection=True)`, `rescale_output_factor` 1), so
/// each is then the identity and this VAE computes exactly what the same VAE without
/// middle attention computes: an independent statement of the attention-free network,
/// built on the attention path that the fixtures check against diffusers itself.
fn identity_mid_attention(dir: &Path) -> PathBuf {
    let zeroed = std::cell::Cell::new(0);
    let to = vae_copy(dir, "identity-mid-attention", true, |k, (shape, data)| {
        if in_mid_attention(k) && k.contains(".to_out.0.") {
            zeroed.set(zeroed.get() + 1);
            Some((shape, vec![0; data.len()]))
        } else {
            Some((shape, data))
        }
    });
    assert_eq!(zeroed.get(), 4, "two attentions' to_out.0 weight and bias");
    to
}

/// The largest `|a - b|`, NaN when either holds a NaN (so a bound check fails on it).
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, |m, d| {
            if d.is_nan() || m.is_nan() {
                f32::NAN
            } else {
                m.max(d)
            }
        })
}

/// How far the attention-free decoder and encoder may be from their identity-attention
/// twin: measured 0 (bit-identical) on ort-cpu, tract and OpenVINO, since adding the
/// zero output is exact; 1e-6 (about 8 ulp at 1.0) leaves room for an engine that
/// schedules the twin's extra graph differently, far below any wiring fault (the
/// attention itself moves the image by 0.35).
const TWIN_BOUND: f32 = 1e-6;

/// A VAE without middle attention (diffusers' `mid_block_add_attention: false`; decoder and
/// encoder) converts, its manifest records no middle attention, and on every CPU provider
/// it decodes the fixture's tokens and encodes an image as its identity-attention twin
/// does ([`identity_mid_attention`]); in the LDM layout (no `decoder.mid.attn_1`) it
/// decodes the same image.
#[test]
fn a_vae_without_middle_attention_computes_what_its_identity_attention_twin_does() {
    let tmp = tempfile::tempdir().unwrap();
    let flowar = fixture("sd-f8c4/flowar.pth");
    let none = without_mid_attention(tmp.path(), "no-mid-attention", false);
    let twin = identity_mid_attention(tmp.path());
    let (_a, none_dir) = convert_with_vae(&flowar, &none, |r| r);
    let (_b, twin_dir) = convert_with_vae(&flowar, &twin, |r| r);
    for (dir, attention) in [(&none_dir, false), (&twin_dir, true)] {
        let v = Manifest::load(dir).unwrap().architecture.vae;
        let encoder = v.encoder.as_ref().expect("the folder's encoder");
        assert_eq!(
            (v.mid_attention, encoder.mid_attention),
            (attention, attention),
            "{}",
            dir.display()
        );
    }
    let reference =
        flowar_runtime::verify::Reference::load(&fixture("sd-f8c4/expected.safetensors")).unwrap();
    let tokens = reference.f32("vae.tokens").unwrap();
    let with_attention = reference.f32("vae.image").unwrap().into_f32().unwrap();
    let source = flowar_runtime::edit_input::load_source(&fixture("edit-sd-f8c4/image0.png"), 128)
        .unwrap()
        .image;
    let mut tract_image = None;
    for p in cpu_providers() {
        let (mut none, mut twin) = (load(&none_dir, p), load(&twin_dir, p));
        let image = none
            .model_mut()
            .decode(&tokens)
            .unwrap()
            .into_f32()
            .unwrap();
        let twin_image = twin
            .model_mut()
            .decode(&tokens)
            .unwrap()
            .into_f32()
            .unwrap();
        assert_eq!(image.len(), 2 * 3 * 128 * 128, "{}", p.name());
        let d = max_abs_diff(&image, &twin_image);
        let enc = none.encode(std::slice::from_ref(&source)).unwrap();
        let twin_enc = twin.encode(std::slice::from_ref(&source)).unwrap();
        assert_eq!(enc.len(), 4 * 16 * 16, "{}", p.name());
        let e = max_abs_diff(&enc, &twin_enc);
        // The attention the twin zeroes is not negligible: the fixture's own decoder
        // (attention on) gives another image, so the twins agree for a reason.
        let moved = max_abs_diff(&image, &with_attention);
        eprintln!(
            "{}: no middle attention vs identity twin: image {d:.3e}, tokens {e:.3e}; vs the \
             fixture's attention {moved:.3e}",
            p.name()
        );
        assert!(
            d <= TWIN_BOUND && e <= TWIN_BOUND,
            "{}: image {d:.3e}, tokens {e:.3e} past {TWIN_BOUND:.0e}",
            p.name()
        );
        assert!(
            moved > 0.01,
            "{}: the middle attention moved the image only {moved:.3e}",
            p.name()
        );
        if p == Provider::Tract {
            tract_image = Some(image);
        }
    }
    // The LDM layout's middle block without `decoder.mid.attn_1`.
    let src = read_tensors(&none.join("diffusion_pytorch_model.safetensors"));
    let ldm: Tensors = src
        .into_iter()
        .filter_map(|(k, v)| ldm_key(&k, 4).map(|k| (k, v)))
        .collect();
    assert!(ldm.contains_key("decoder.mid.block_2.conv1.weight"));
    assert!(ldm.keys().all(|k| !k.contains(".attn_1.")));
    let ldm_file = tmp.path().join("ldm-no-mid-attention.safetensors");
    write_tensors(&ldm, &ldm_file);
    let (_c, ldm_dir) = convert_with_vae(&flowar, &ldm_file, |r| r.latent_scale(Some(0.18215)));
    let v = Manifest::load(&ldm_dir).unwrap().architecture.vae;
    assert_eq!((v.layout, v.mid_attention), (VaeLayout::Ldm, false));
    let image = load(&ldm_dir, Provider::Tract)
        .model_mut()
        .decode(&tokens)
        .unwrap()
        .into_f32()
        .unwrap();
    let d = max_abs_diff(&image, tract_image.as_ref().expect("tract always runs"));
    assert!(
        d <= TWIN_BOUND,
        "LDM layout: image {d:.3e} from the diffusers layout's"
    );
}

/// A config whose `mid_block_add_attention` the weights contradict (either way, in the
/// decoder or the encoder) is refused before anything is written, naming the field, both
/// values, the weights file and the key.
#[test]
fn a_config_contradicting_the_weights_on_middle_attention_is_refused_naming_both() {
    use flowar_exporter::checkpoint::Checkpoint;
    use flowar_exporter::convert::{convert, ConvertRequest};
    use flowar_exporter::vae_checkpoint::VaeCheckpoint;
    use flowar_exporter::ExportError;
    let tmp = tempfile::tempdir().unwrap();
    let flowar = fixture("sd-f8c4/flowar.pth");
    let f = Checkpoint::open(&flowar).unwrap();
    let says_true = without_mid_attention(tmp.path(), "says-true", true);
    let says_false = vae_copy(tmp.path(), "says-false", false, |_, v| Some(v));
    // The decoder agrees with the config; the encoder (built from the same flag) does not.
    let encoder_without = vae_copy(tmp.path(), "encoder-without", true, |k, v| {
        (!k.starts_with(MID_ATTENTIONS[1])).then_some(v)
    });
    let decoder_key = "(decoder.mid_block.attentions.0)";
    for (vae, said, found, key) in [
        (&says_true, "true", "no middle attention", decoder_key),
        (&says_false, "false", "a middle attention", decoder_key),
        (
            &encoder_without,
            "true",
            "no middle attention in the encoder",
            "(encoder.mid_block.attentions.0)",
        ),
    ] {
        let v = VaeCheckpoint::open(vae).unwrap();
        let out = tmp.path().join("out");
        match convert(&ConvertRequest::from_files(&f, &flowar, &v, &out)) {
            Err(ExportError::Config { origin, reason }) => {
                assert_eq!(origin, vae.join("config.json").display().to_string());
                for part in [
                    format!("`mid_block_add_attention` is {said}"),
                    format!(
                        "the weights in {} have {found}",
                        vae.join("diffusion_pytorch_model.safetensors").display()
                    ),
                    key.into(),
                ] {
                    assert!(reason.contains(&part), "{reason:?} lacks {part:?}");
                }
            }
            Err(other) => panic!("config says {said}: {other}"),
            Ok(_) => panic!("config says {said}, weights have {found}: converted"),
        }
        assert!(!out.exists(), "a refused conversion left {}", out.display());
    }
}

// ------------------------------------------------------------------ where the VAE is given

/// A diffusers pipeline folder (`model_index.json`, `unet/`, `vae/`) given as the VAE, and
/// the `vae/` folder's weights file given alone (its `config.json` beside it), convert to
/// the same model folder, byte for byte, as the `vae/` folder itself (the CLI's `--vae`
/// hands its path to `VaeCheckpoint::open` as here); the notes say where the VAE was read.
#[test]
fn a_pipeline_folder_and_a_weights_file_convert_as_the_vae_folder_does() {
    use flowar_exporter::checkpoint::Checkpoint;
    use flowar_exporter::convert::{convert, source_notes, ConvertRequest};
    use flowar_exporter::vae_checkpoint::VaeCheckpoint;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pipeline");
    let vae = root.join("vae");
    std::fs::create_dir_all(&vae).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(fixture("sd-f8c4/vae").join(f), vae.join(f)).unwrap();
    }
    std::fs::write(
        root.join("model_index.json"),
        r#"{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}"#,
    )
    .unwrap();
    std::fs::create_dir(root.join("unet")).unwrap();
    std::fs::write(
        root.join("unet/config.json"),
        r#"{"_class_name": "UNet2DConditionModel", "in_channels": 4}"#,
    )
    .unwrap();
    let flowar = fixture("sd-f8c4/flowar.pth");
    let f = Checkpoint::open(&flowar).unwrap();
    let (_o, original) = convert_vae_fixture("sd-f8c4");
    let files = |dir: &Path| -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    };
    let want = files(&original);
    assert!(want.contains_key("vae_decoder.onnx") && want.contains_key("vae_encoder.onnx"));
    let weights = vae.join("diffusion_pytorch_model.safetensors");
    for (given, from_pipeline) in [(&root, true), (&weights, false)] {
        let v = VaeCheckpoint::open(given).unwrap();
        let notes = source_notes(&f, &v);
        let said = |s: &str| notes.iter().any(|n| n.contains(s));
        assert_eq!(
            said(&format!(
                "the `vae` folder of the pipeline folder {}",
                root.display()
            )),
            from_pipeline,
            "{notes:?}"
        );
        assert!(
            said(&format!(
                "with its config {}",
                vae.join("config.json").display()
            )),
            "{notes:?}"
        );
        let out = tmp.path().join(if from_pipeline {
            "from-root"
        } else {
            "from-file"
        });
        convert(&ConvertRequest::from_files(&f, &flowar, &v, &out)).unwrap();
        let got = files(&out);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{}",
            given.display()
        );
        for (name, bytes) in &want {
            assert!(got[name] == *bytes, "{}: {name} differs", given.display());
        }
    }
}
