//! The `flowar` command as a user runs it: hostile inputs fail cleanly and leave nothing
//! behind; generate writes what it promises.

mod common;
use common::*;

use std::path::{Path, PathBuf};

/// Runs `convert`, expecting a clean failure that names `needle` and leaves no output.
fn convert_fails(flowar_ckpt: &Path, vae: &Path, needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let o = convert(tmp.path(), flowar_ckpt, vae, &out, &[]);
    let t = text(&o);
    assert!(!o.status.success(), "convert succeeded: {t}");
    assert!(t.contains(needle), "message lacks `{needle}`: {t}");
    assert!(!t.contains("panicked"), "{t}");
    assert!(!out.exists(), "output left behind");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// Writes the spatial fixture's FlowAR weights as safetensors with `edit` applied.
fn edited_checkpoint(
    dir: &Path,
    edit: impl Fn(&mut Vec<(String, Vec<usize>, Vec<u8>)>),
) -> PathBuf {
    let bytes = std::fs::read(fixture("spatial").join("flowar.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, s, d)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    let path = dir.join("edited.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    path
}

#[test]
fn hostile_checkpoints_fail_with_clear_messages_and_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let vae = fixture("spatial").join("vae.ckpt");
    let good = std::fs::read(fixture("spatial").join("flowar.pth")).unwrap();
    // Truncated zip.
    let truncated = tmp.path().join("truncated.pth");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    convert_fails(&truncated, &vae, "truncated.pth");
    // Not a checkpoint at all.
    let notes = tmp.path().join("notes.pth");
    std::fs::write(&notes, b"just some text, not a checkpoint").unwrap();
    convert_fails(&notes, &vae, "notes.pth");
    // Empty file, and a directory in place of a file.
    let empty = tmp.path().join("empty.pth");
    std::fs::write(&empty, b"").unwrap();
    convert_fails(&empty, &vae, "empty.pth");
    convert_fails(tmp.path(), &vae, &tmp.path().display().to_string());
    // A VAE where the FlowAR checkpoint should be.
    convert_fails(&vae, &vae, "not a FlowAR checkpoint");
    // A plain ViT checkpoint.
    let vit = edited_checkpoint(tmp.path(), |t| {
        t.clear();
        t.push(("cls_token".into(), vec![1, 1, 4], vec![0; 16]));
        t.push(("blocks.0.attn.qkv.weight".into(), vec![12, 4], vec![0; 192]));
    });
    convert_fails(&vit, &vae, "not a FlowAR checkpoint");
    // Wrong shape.
    let wrong = edited_checkpoint(tmp.path(), |t| {
        let e = t
            .iter_mut()
            .find(|e| e.0 == "encoder_blocks.1.attn.proj.weight")
            .unwrap();
        e.1 = vec![64, 32];
        e.2.truncate(64 * 32 * 4);
    });
    convert_fails(&wrong, &vae, "encoder_blocks.1.attn.proj.weight");
    // Missing key.
    let missing = edited_checkpoint(tmp.path(), |t| {
        t.retain(|e| e.0 != "flownet.final_layer.linear.bias")
    });
    convert_fails(&missing, &vae, "flownet.final_layer.linear.bias");
    // Unknown extra key.
    let extra = edited_checkpoint(tmp.path(), |t| {
        t.push(("head.weight".into(), vec![2], vec![0; 8]))
    });
    convert_fails(&extra, &vae, "head.weight");
    // NaN in a weight.
    let nan = edited_checkpoint(tmp.path(), |t| {
        let e = t.iter_mut().find(|e| e.0 == "z_proj.weight").unwrap();
        e.2[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    convert_fails(&nan, &vae, "z_proj.weight");
    // FlowAR and VAE with different latent channels: the cross VAE fits, so fake one.
    let fl = fixture("spatial").join("flowar.pth");
    convert_fails(&fl, &fl, "not a KL-VAE checkpoint");
}

#[test]
fn convert_refuses_an_existing_folder_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    let f = fixture("cross");
    let args = |force: bool| {
        let mut a = vec![
            "convert".to_string(),
            "--flowar".into(),
            f.join("flowar.pth").display().to_string(),
            "--vae".into(),
            f.join("vae.ckpt").display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        if force {
            a.push("--force".into());
        }
        a
    };
    let run = |a: Vec<String>| {
        flowar(
            &a.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            tmp.path(),
        )
    };
    assert!(run(args(false)).status.success());
    let again = run(args(false));
    assert!(!again.status.success());
    assert!(text(&again).contains("--force"));
    assert!(run(args(true)).status.success());
    assert!(out.join("manifest.json").is_file());
}

#[test]
fn generate_writes_pngs_with_metadata_run_json_and_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial(tmp.path());
    let gen = |out: &str, extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--class",
            "3",
            "917",
            "--count",
            "4",
            "--steps",
            "6",
            "--provider",
            "tract",
            "--out",
            out,
        ];
        a.extend_from_slice(extra);
        let o = flowar(&a, tmp.path());
        assert!(o.status.success(), "{}", text(&o));
        o
    };
    gen("all", &["--batch-size", "3"]);
    gen("shard1", &["--shard", "1/2"]);
    let names = |d: &str| {
        let mut v: Vec<String> = std::fs::read_dir(tmp.path().join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names("all"),
        [
            "000000.png",
            "000001.png",
            "000002.png",
            "000003.png",
            "run.json"
        ]
    );
    assert_eq!(names("shard1"), ["000001.png", "000003.png", "run.json"]);
    // Image 3 is the same whatever the batch size or shard.
    let pixels = |p: PathBuf| {
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(p).unwrap()));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        r.next_frame(&mut buf).unwrap();
        let text: Vec<(String, String)> = r
            .info()
            .uncompressed_latin1_text
            .iter()
            .map(|t| (t.keyword.clone(), t.text.clone()))
            .collect();
        (buf, text)
    };
    let (a, meta) = pixels(tmp.path().join("all/000003.png"));
    let (b, _) = pixels(tmp.path().join("shard1/000003.png"));
    assert_eq!(
        a.len(),
        b.len(),
        "image 3's size in the full run and in the shard"
    );
    assert!(a.iter().zip(&b).all(|(x, y)| x.abs_diff(*y) <= 1));
    // Every PNG text key, with its value; the model hash is the manifest's.
    let manifest: serde_json::Value = manifest_json(&model);
    let sampler = &manifest["sampler"];
    let f64_text = |v: &serde_json::Value| v.as_f64().unwrap().to_string();
    let want: Vec<(String, String)> = [
        (
            "flowar:model",
            manifest["name"].as_str().unwrap().to_string(),
        ),
        (
            "flowar:model_hash",
            manifest["model_hash"].as_str().unwrap().to_string(),
        ),
        ("flowar:dtype", "float32".into()),
        ("flowar:index", "3".into()),
        ("flowar:class", "917".into()),
        ("flowar:seed", "0".into()),
        ("flowar:cfg", f64_text(&sampler["cfg"])),
        ("flowar:guidance", f64_text(&sampler["guidance"])),
        ("flowar:steps", "6".into()),
        ("flowar:solver", "euler".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(meta, want, "PNG metadata of image 3");

    // Every run.json field, for the whole run and for a shard.
    let run_json = |d: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join(d).join("run.json")).unwrap())
            .unwrap()
    };
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    for (dir, shard, indices, classes, batch) in [
        (
            "all",
            serde_json::Value::Null,
            vec![0, 1, 2, 3],
            vec![3, 917, 3, 917],
            3,
        ),
        ("shard1", "1/2".into(), vec![1, 3], vec![917, 917], 8),
    ] {
        let run = run_json(dir);
        assert_eq!(
            keys(&run),
            [
                "batch_size",
                "cfg",
                "classes",
                "count",
                "dtype",
                "guidance",
                "indices",
                "model",
                "model_hash",
                "model_name",
                "noise_file",
                "provider",
                "provider_reason",
                "seed",
                "shard",
                "solver",
                "steps",
                "timings_s"
            ],
            "{dir}"
        );
        assert_eq!(run["model"], model.display().to_string(), "{dir}");
        assert_eq!(run["model_name"], manifest["name"], "{dir}");
        assert_eq!(run["model_hash"], manifest["model_hash"], "{dir}");
        assert_eq!(run["dtype"], "float32", "{dir}");
        assert_eq!(run["provider"], "tract", "{dir}");
        assert_eq!(run["provider_reason"], "asked for by name", "{dir}");
        assert_eq!(run["classes"], serde_json::json!(classes), "{dir}");
        assert_eq!(run["indices"], serde_json::json!(indices), "{dir}");
        assert_eq!(run["count"], 4, "{dir}: the whole run's count");
        assert_eq!(run["shard"], shard, "{dir}");
        assert_eq!(run["seed"], 0, "{dir}");
        assert_eq!(run["cfg"], sampler["cfg"], "{dir}");
        assert_eq!(run["guidance"], sampler["guidance"], "{dir}");
        assert_eq!(run["steps"], 6, "{dir}");
        assert_eq!(run["solver"], "euler", "{dir}");
        assert_eq!(run["batch_size"], batch, "{dir}");
        assert_eq!(run["noise_file"], serde_json::Value::Null, "{dir}");
        let t = &run["timings_s"];
        assert_eq!(
            keys(t),
            [
                "ar",
                "flow_head",
                "flow_head_calls",
                "load",
                "solver_step",
                "total",
                "upsample",
                "vae"
            ],
            "{dir}"
        );
        for k in [
            "ar",
            "flow_head",
            "load",
            "solver_step",
            "total",
            "upsample",
            "vae",
        ] {
            assert!(
                t[k].as_f64().is_some_and(|s| s.is_finite() && s >= 0.0),
                "{dir}: timings_s.{k} = {}",
                t[k]
            );
        }
        // One flow-head call per batch, scale and step: 5 scales of 6 Euler steps.
        let batches = indices.len().div_ceil(batch) as u64;
        assert_eq!(t["flow_head_calls"], batches * 5 * 6, "{dir}");
    }
}

#[test]
fn invalid_generate_values_are_refused_before_work() {
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial(tmp.path());
    let m = model.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--class", "1000"], "out of range"),
        (&["--class", "dog"], "unknown class"),
        (&["--steps", "0"], "steps"),
        (&["--cfg=-2"], "cfg"),
        (&["--guidance", "1.5"], "guidance"),
        (&["--shard", "3/2"], "--shard"),
        (&["--batch-size", "0"], "batch-size"),
        (&["--provider", "gpu"], "unknown provider"),
        (&["--provider", "cuda"], "cuda"),
        (&["--solver", "rk4"], "rk4"),
        (
            &["--noise-file", "/nonexistent/noise.safetensors"],
            "noise.safetensors",
        ),
    ];
    for (extra, needle) in cases {
        let out = tmp.path().join("out");
        let mut a = vec!["generate", "--model", m, "--out", out.to_str().unwrap()];
        if !extra.contains(&"--provider") {
            a.extend_from_slice(&["--provider", "tract"]);
        }
        a.extend_from_slice(extra);
        let o = flowar(&a, tmp.path());
        let t = text(&o);
        assert!(!o.status.success(), "{extra:?} succeeded");
        assert!(
            t.contains(needle),
            "{extra:?}: message lacks `{needle}`: {t}"
        );
        assert!(!t.contains("panicked"), "{t}");
        let pngs = std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0);
        assert_eq!(pngs, 0, "{extra:?} left files in the output folder");
    }
    // A model folder that is not one.
    let o = flowar(
        &[
            "generate",
            "--model",
            tmp.path().join("nope").to_str().unwrap(),
            "--provider",
            "tract",
        ],
        tmp.path(),
    );
    assert!(!o.status.success() && text(&o).contains("nope"));
}

#[test]
fn verify_passes_on_fixtures_and_fails_on_a_tightened_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial(tmp.path());
    let ok = verify_spatial(tmp.path(), &model, &[]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("all 18 case(s) within bounds"));
    let strict = verify_spatial(tmp.path(), &model, &["--tol", "1e-9"]);
    assert!(!strict.status.success());
    assert!(text(&strict).contains("FAIL"));
}

#[test]
fn inspect_describes_checkpoints_and_models() {
    let tmp = tempfile::tempdir().unwrap();
    let o = flowar(
        &[
            "inspect",
            fixture("cross").join("flowar.pth").to_str().unwrap(),
        ],
        tmp.path(),
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("\"kind\":\"cross\"") && t.contains("F32"), "{t}");
    let v = flowar(
        &[
            "inspect",
            fixture("cross").join("vae.ckpt").to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(text(&v).contains("KL-VAE decoder"), "{}", text(&v));
    // A diffusers VAE folder: its architecture checked against its config, and the rule.
    let d = flowar(
        &[
            "inspect",
            fixture("flux-f8c16").join("vae").to_str().unwrap(),
        ],
        tmp.path(),
    );
    let t = text(&d);
    assert!(d.status.success(), "{t}");
    assert!(
        t.contains("\"layout\":\"diffusers\"")
            && t.contains("\"stride\":8")
            && t.contains("latent = tokens / 0.3611 + 0.1159"),
        "{t}"
    );
}

#[test]
fn presets_report_released_parameter_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s");
    let o = flowar(
        &[
            "convert",
            "--preset",
            "s",
            "--random-init",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
        tmp.path(),
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("FlowAR total 171.7M") && t.contains("vae_decoder 38.2M"),
        "{t}"
    );
    // A preset holds kl16's encoder too (its key table is checked against an LDM
    // checkpoint in exporter/src/preset.rs), so preset folders edit as released ones do.
    assert!(t.contains("vae_encoder 26.2M"), "{t}");
    let edited = tmp.path().join("edited");
    let o = flowar(
        &[
            "edit",
            "--model",
            out.to_str().unwrap(),
            "--image",
            fixture("edit-kl16").join("image0.png").to_str().unwrap(),
            "--class",
            "207",
            "--keep-scales",
            "4",
            "--steps",
            "2",
            "--out",
            edited.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(edited.join("000000.png").is_file(), "{}", text(&o));
    // The released FlowAR-S sampler settings are the manifest's defaults (L's and H's:
    // exporter/src/convert.rs, from their detected architectures).
    let manifest: serde_json::Value = manifest_json(&out);
    assert_eq!(
        manifest["sampler"],
        serde_json::json!({"cfg": 4.3, "guidance": 0.9, "steps": 25})
    );
}

/// Replays fixture `name`'s recorded noise with `flowar generate --noise-file` on the
/// model folder `model` and `provider`; compares the PNGs with the fixture's
/// `pipe.image_u8`: (share of identical bytes, largest difference).
fn replay_fixture_noise(name: &str, model: &Path, provider: &str, tmp: &Path) -> (f64, u8) {
    let f = fixture(name);
    let bytes = std::fs::read(f.join("expected.safetensors")).unwrap();
    let reference = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // The recorded noise under the names --noise-file reads: noise.s{i}.
    let noise: Vec<(String, safetensors::tensor::TensorView)> = (0..5)
        .map(|i| {
            (
                format!("noise.s{i}"),
                reference.tensor(&format!("pipe.noise.s{i}")).unwrap(),
            )
        })
        .collect();
    let noise_file = tmp.join(format!("noise-{name}.safetensors"));
    safetensors::serialize_to_file(noise, None, &noise_file).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.join("config.json")).unwrap()).unwrap();
    let labels: Vec<String> = cfg["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.to_string())
        .collect();
    let out = tmp.join(format!("replay-{name}-{provider}"));
    let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--class"];
    args.extend(labels.iter().map(String::as_str));
    let (c, g, s) = (
        cfg["cfg"].to_string(),
        cfg["guidance"].to_string(),
        cfg["num_steps"].to_string(),
    );
    args.extend([
        "--cfg",
        &c,
        "--guidance",
        &g,
        "--steps",
        &s,
        "--noise-file",
        noise_file.to_str().unwrap(),
        "--provider",
        provider,
        "--out",
        out.to_str().unwrap(),
    ]);
    let o = flowar(&args, tmp);
    assert!(o.status.success(), "{}", text(&o));
    let want = reference.tensor("pipe.image_u8").unwrap();
    let per_image: usize = want.shape()[1..].iter().product();
    let (mut same, mut worst) = (0usize, 0u8);
    let mut images = 0;
    for (k, expected) in want.data().chunks(per_image).enumerate() {
        let file = std::fs::File::open(out.join(format!("{k:06}.png"))).unwrap();
        let mut r = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .unwrap();
        let mut got = vec![0; r.output_buffer_size().unwrap()];
        r.next_frame(&mut got).unwrap();
        assert_eq!(got.len(), expected.len(), "{name} image {k}");
        for (a, b) in got.iter().zip(expected) {
            same += (a == b) as usize;
            worst = worst.max(a.abs_diff(*b));
        }
        images += 1;
    }
    assert_eq!(images, labels.len(), "{name}: one image per label");
    let share = same as f64 / want.data().len() as f64;
    eprintln!(
        "{name} noise replay on {provider}: {:.4}% identical, max {worst} level(s)",
        share * 100.0
    );
    (share, worst)
}

/// `--noise-file` replays the reference's recorded noise through the CLI and reproduces
/// the fixture's images: what `flowar verify` checks on the library, checked on the PNGs a
/// user gets. Bounds as in the parity suite (tests/parity.rs): none more than one level
/// off, at least 99.8% identical (measured 99.93% here on tract).
#[test]
fn noise_file_replay_reproduces_the_fixture_images() {
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial(tmp.path());
    let (share, worst) = replay_fixture_noise("spatial", &model, "tract", tmp.path());
    assert!(
        share >= 0.998 && worst <= 1,
        "{share} identical, max {worst}"
    );
}

/// The fixtures on diffusers-layout VAEs, as a user runs them: `convert --vae DIR` (saying
/// where the decode rule came from and that the encoder is not exported), `verify`, and
/// generate replaying the recorded noise, on onnxruntime and tract, to the reference's
/// pixels (measured 99.96% identical or more, one level at most; bounds as above).
#[test]
fn diffusers_vae_fixtures_convert_verify_and_replay_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let mut providers = vec!["tract"];
    if ort_here("diffusers_vae_fixtures_convert_verify_and_replay_through_the_cli") {
        providers.push("ort-cpu");
    }
    for (name, rule) in [
        (
            "flux-f8c16",
            "tokens / 0.3611 (from the VAE's config.json) + 0.1159 (from the VAE's config.json)",
        ),
        (
            "sd-f8c4",
            "tokens / 0.18215 (from the VAE's config.json) + 0 (default)",
        ),
    ] {
        let f = fixture(name);
        let model = tmp.path().join(name);
        let o = convert(
            tmp.path(),
            &f.join("flowar.pth"),
            &f.join("vae"),
            &model,
            &[],
        );
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        assert!(t.contains(rule), "{name}: {t}");
        // Their VAE folders hold the encoder, as published VAEs do: exported for editing.
        assert!(
            t.contains("vae_encoder") && t.contains("for `flowar edit`"),
            "{name}: {t}"
        );
        let inspect = text(&flowar(&["inspect", model.to_str().unwrap()], tmp.path()));
        assert!(
            inspect.contains("\"layout\": \"diffusers\"") && inspect.contains("\"latent_shift\""),
            "{inspect}"
        );
        for p in &providers {
            let v = verify_against(tmp.path(), &model, name, p, &[]);
            let vt = text(&v);
            assert!(
                v.status.success() && vt.contains("all 4 case(s) within bounds"),
                "{name} on {p}: {vt}"
            );
            let (share, worst) = replay_fixture_noise(name, &model, p, tmp.path());
            assert!(
                share >= 0.998 && worst <= 1,
                "{name} on {p}: {share} identical, max {worst}"
            );
        }
    }
}

/// `flowar generate` with no `--model` uses the bundled demo: it redoes a cached
/// conversion an older flowar wrote (format 1), saying why, and writes the labelled grid,
/// one tile per class, each tile the image `--out` holds, enlarged 3x.
#[test]
fn generate_without_model_uses_the_demo_and_redoes_an_old_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes10");
    let here = tmp.path().join("models/shapes10");
    std::fs::create_dir_all(here.join("converted")).unwrap();
    for f in ["flowar.pth", "vae.ckpt", "meta.json"] {
        std::fs::copy(demo.join(f), here.join(f)).unwrap();
    }
    std::fs::write(
        here.join("converted/manifest.json"),
        r#"{"format_version": 1, "name": "shapes10"}"#,
    )
    .unwrap();
    let o = flowar(
        &[
            "generate",
            "--provider",
            "tract",
            "--out",
            "images",
            "--grid",
            "grid.png",
        ],
        tmp.path(),
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("converting the bundled demo model")
            && t.contains("the cached conversion is unusable")
            && t.contains("format_version 1"),
        "{t}"
    );
    let manifest: serde_json::Value = manifest_json(&here.join("converted"));
    assert_eq!(manifest["format_version"], 2, "the cache was redone");

    let read = |p: &Path| {
        let file = std::fs::File::open(p).unwrap();
        let mut r = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        (info.width as usize, info.height as usize, buf)
    };
    let names: Vec<String> = manifest["class_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 10);
    // 32 px images enlarged 3x; cells 8 px wider than the longest label (8 px a character).
    let (zoom, side) = (3, 32);
    let longest = names.iter().map(|n| n.len()).max().unwrap();
    let cell_w = (side * zoom).max(8 * longest) + 8;
    let cell_h = side * zoom + 20;
    let (gw, gh, grid) = read(&tmp.path().join("grid.png"));
    assert_eq!((gw, gh), (10 * cell_w, cell_h), "one row of ten cells");
    for k in 0..10 {
        let (w, h, img) = read(&tmp.path().join(format!("images/{k:06}.png")));
        assert_eq!((w, h), (side, side));
        let (ox, oy) = (k * cell_w + (cell_w - side * zoom) / 2, 4);
        for y in 0..side * zoom {
            for x in 0..side * zoom {
                let g = ((oy + y) * gw + ox + x) * 3;
                let s = ((y / zoom) * side + x / zoom) * 3;
                assert_eq!(grid[g..g + 3], img[s..s + 3], "tile {k} at ({x}, {y})");
            }
        }
    }
}

/// `--steps` takes one count per scale; the PNGs and run.json record the schedule, and a
/// malformed or ill-fitting one is refused before work.
#[test]
fn generate_takes_a_per_scale_step_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial(tmp.path());
    let gen = |steps: &str| {
        flowar(
            &[
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--class",
                "3",
                "--steps",
                steps,
                "--provider",
                "tract",
                "--out",
                "s",
            ],
            tmp.path(),
        )
    };
    let o = gen("6,6,4,4,2");
    assert!(o.status.success(), "{}", text(&o));
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("s/run.json")).unwrap())
            .unwrap();
    assert_eq!(run["steps"], serde_json::json!([6, 6, 4, 4, 2]));
    assert_eq!(run["timings_s"]["flow_head_calls"], 6 + 6 + 4 + 4 + 2);
    let file = std::fs::File::open(tmp.path().join("s/000000.png")).unwrap();
    let r = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let steps = r
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "flowar:steps")
        .map(|t| t.text.clone());
    assert_eq!(steps.as_deref(), Some("6,6,4,4,2"));
    for (steps, needle) in [
        ("6,6", "one count per scale: this model has 5 scales"),
        ("6,6,1,6,6", "1 step(s) at scale 2 (4x4)"),
        ("6,x", "`x` is not a whole number"),
    ] {
        let o = gen(steps);
        assert_eq!(o.status.code(), Some(2), "{steps}: {}", text(&o));
        assert!(text(&o).contains(needle), "{steps}: {}", text(&o));
    }
}

/// `flowar generate --model DIR` with neither `--out` nor `--grid` writes the labelled grid
/// as `flowar-grid.png` in the working directory, and nothing else there.
#[test]
fn generate_without_out_writes_flowar_grid_png_in_the_working_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial(tmp.path());
    let cwd = tmp.path().join("work");
    std::fs::create_dir(&cwd).unwrap();
    let o = flowar(
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--provider",
            "tract",
            "--steps",
            "2",
            "--class",
            "3",
            "917",
        ],
        &cwd,
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("wrote grid flowar-grid.png"),
        "{t}"
    );
    let names: Vec<String> = std::fs::read_dir(&cwd)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["flowar-grid.png"]);
    let file = std::fs::File::open(cwd.join("flowar-grid.png")).unwrap();
    let r = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let info = r.info();
    // Two 256-px tiles side by side (zoom 1), each cell 8 px wider than the image.
    assert_eq!((info.width, info.height), (2 * (256 + 8), 256 + 20));
    let manifest: serde_json::Value = manifest_json(&model);
    let text: Vec<(&str, &str)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.as_str(), t.text.as_str()))
        .collect();
    assert_eq!(text, [("flowar:model", manifest["name"].as_str().unwrap())]);
}

/// tract's `--threads`: 1 and 2 threads give bit-identical images (its products are split
/// over output tiles), and 0 is refused before any work.
#[test]
fn tract_threads_give_identical_images_and_zero_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial(tmp.path());
    let gen = |threads: &str| {
        flowar(
            &[
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--provider",
                "tract",
                "--threads",
                threads,
                "--steps",
                "3",
                "--class",
                "3",
                "917",
                "--batch-size",
                "2",
                "--out",
                &format!("t{threads}"),
            ],
            tmp.path(),
        )
    };
    let pixels = |p: PathBuf| {
        let file = std::fs::File::open(p).unwrap();
        let mut r = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        r.next_frame(&mut buf).unwrap();
        buf
    };
    for threads in ["1", "2"] {
        let o = gen(threads);
        assert!(o.status.success(), "--threads {threads}: {}", text(&o));
    }
    for k in 0..2 {
        let name = format!("{k:06}.png");
        let (one, two) = (
            pixels(tmp.path().join("t1").join(&name)),
            pixels(tmp.path().join("t2").join(&name)),
        );
        assert_eq!(one.len(), 256 * 256 * 3);
        assert!(one == two, "image {k} differs between 1 and 2 threads");
    }
    let o = gen("0");
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("--threads must be at least 1"), "{t}");
    assert!(
        !tmp.path().join("t0").exists(),
        "--threads 0 left an output folder"
    );
}

/// `a` and `b` are the same JSON, floats equal to within a few ulps.
fn same_json(a: &serde_json::Value, b: &serde_json::Value, at: &str) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs()),
                "{at}: {x} vs {y}"
            );
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                same_json(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert!(x.keys().eq(y.keys()), "{at}: keys differ");
            for (k, x) in x {
                same_json(x, &y[k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

/// `flowar bench --from-json` re-renders a report `flowar bench --json` saved: the same
/// Markdown (also printed), the same chart and the same JSON, without measuring again;
/// the reports under bench/results that the READMEs quote re-render too.
#[test]
fn bench_from_json_re_renders_a_saved_report() {
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial(tmp.path());
    let o = flowar(
        &[
            "bench",
            "--model",
            model.to_str().unwrap(),
            "--providers",
            "tract",
            "--steps",
            "2",
            "--warmup",
            "0",
            "--runs",
            "1",
            "--calibration-s",
            "0.01",
            "--quiet",
            "--json",
            "run.json",
            "--markdown",
            "run.md",
            "--plot",
            "run.png",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = flowar(
        &[
            "bench",
            "--from-json",
            "run.json",
            "--json",
            "again.json",
            "--markdown",
            "again.md",
            "--plot",
            "again.png",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let read = |name: &str| std::fs::read(tmp.path().join(name)).unwrap();
    let md = String::from_utf8(read("run.md")).unwrap();
    assert!(md.contains("| tract |"), "{md}");
    assert_eq!(String::from_utf8(read("again.md")).unwrap(), md);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim_end(), md.trim_end());
    // The same report; serde_json reads a float back to within one ulp, not always to
    // the same bits, so a re-written float may differ in its last digit.
    let json = |name: &str| -> serde_json::Value { serde_json::from_slice(&read(name)).unwrap() };
    same_json(&json("again.json"), &json("run.json"), "report");
    assert!(read("run.png").starts_with(b"\x89PNG"));
    assert!(read("again.png") == read("run.png"), "the same chart");
    // Measuring and re-rendering are exclusive.
    let both = flowar(
        &[
            "bench",
            "--from-json",
            "run.json",
            "--model",
            model.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert_eq!(both.status.code(), Some(2), "{}", text(&both));

    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
    let mut seen = 0;
    for entry in std::fs::read_dir(&results).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let o = flowar(
            &[
                "bench",
                "--from-json",
                path.to_str().unwrap(),
                "--quiet",
                "--markdown",
                "saved.md",
            ],
            tmp.path(),
        );
        assert!(o.status.success(), "{}: {}", path.display(), text(&o));
        let saved = String::from_utf8(read("saved.md")).unwrap();
        assert!(saved.contains("\n| "), "{}: {saved}", path.display());
        seen += 1;
    }
    assert!(seen > 0, "no saved reports in {}", results.display());
}

/// `flowar verify` does not trust the bounds in the manifest it verifies: a manifest
/// edited to looser ones than flowar writes for its dtype is refused, naming the field.
#[test]
fn verify_refuses_a_manifest_with_loosened_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial(tmp.path());
    let path = model.join("manifest.json");
    let clean = std::fs::read_to_string(&path).unwrap();
    for (field, value, needle) in [
        ("graph", serde_json::json!(1e9), "`verify.graph` is 1e9"),
        ("vae", serde_json::json!(0.5), "`verify.vae` is 5e-1"),
        (
            "pipeline",
            serde_json::json!(false),
            "`verify.pipeline` is false",
        ),
    ] {
        let mut m: serde_json::Value = serde_json::from_str(&clean).unwrap();
        m["verify"][field] = value;
        std::fs::write(&path, m.to_string()).unwrap();
        let o = verify_spatial(tmp.path(), &model, &[]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{field}: {t}");
        assert!(
            t.contains(needle) && t.contains("float32 folder"),
            "{field}: {t}"
        );
    }
}
