//! The `flowar` command as a user runs it: hostile inputs fail cleanly and leave nothing
//! behind; generate writes what it promises.

mod common;
use common::*;

use std::path::{Path, PathBuf};

/// Runs `convert`, expecting a clean failure that names `needle` and leaves no output.
fn convert_fails(flowar_ckpt: &Path, vae: &Path, needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let o = flowar(
        &[
            "convert",
            "--flowar",
            flowar_ckpt.to_str().unwrap(),
            "--vae",
            vae.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        tmp.path(),
    );
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
    assert!(a.iter().zip(&b).all(|(x, y)| x.abs_diff(*y) <= 1));
    for key in [
        "flowar:model_hash",
        "flowar:class",
        "flowar:seed",
        "flowar:cfg",
        "flowar:guidance",
        "flowar:steps",
        "flowar:solver",
    ] {
        assert!(
            meta.iter().any(|(k, _)| k == key),
            "PNG lacks {key}: {meta:?}"
        );
    }
    assert!(meta.contains(&("flowar:class".into(), "917".into())));
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("all/run.json")).unwrap())
            .unwrap();
    assert_eq!(run["steps"], 6);
    assert!(run["timings_s"]["flow_head"].as_f64().unwrap() > 0.0);
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
    let f = fixture("spatial");
    let reference = f.join("expected.safetensors");
    let ok = flowar(
        &[
            "verify",
            "--model",
            model.to_str().unwrap(),
            "--reference",
            reference.to_str().unwrap(),
            "--provider",
            "tract",
        ],
        tmp.path(),
    );
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("all 18 case(s) within bounds"));
    let strict = flowar(
        &[
            "verify",
            "--model",
            model.to_str().unwrap(),
            "--reference",
            reference.to_str().unwrap(),
            "--provider",
            "tract",
            "--tol",
            "1e-9",
        ],
        tmp.path(),
    );
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
}
