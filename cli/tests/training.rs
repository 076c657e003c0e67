//! Converting the checkpoints a FlowAR user trains: which weights `convert` takes and
//! says it took, what `inspect` lists, model cards found beside the weights, and the
//! latent scale that must not be silently wrong.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use flowar_fuzz::torch::{
    checkpoint_tensors, torch_checkpoint, training_checkpoint, TensorDef, TrainingExtras,
};

/// The spatial fixture's FlowAR tensors, each value moved by `shift`, keys prefixed.
fn fixture_tensors(shift: f32, prefix: &str) -> Vec<TensorDef> {
    checkpoint_tensors(&fixture("spatial").join("flowar.pth"), shift, prefix)
}

/// `checkpoint-last.pth` in `dir`: `model_ema` the fixture's weights, `model` perturbed.
fn training_ckpt(dir: &Path) -> PathBuf {
    let bytes = training_checkpoint(
        &fixture_tensors(0.05, ""),
        &fixture_tensors(0.0, ""),
        &TrainingExtras::default(),
    );
    let p = dir.join("checkpoint-last.pth");
    std::fs::write(&p, bytes).unwrap();
    p
}

fn run_convert(
    dir: &Path,
    flowar_ckpt: &Path,
    vae: &Path,
    out: &Path,
    extra: &[&str],
) -> (bool, String) {
    let o = convert(dir, flowar_ckpt, vae, out, extra);
    (o.status.success(), text(&o))
}

fn verify(dir: &Path, model: &Path) -> (bool, String) {
    let o = verify_spatial(dir, model, &[]);
    (o.status.success(), text(&o))
}

#[test]
fn a_training_checkpoint_converts_its_ema_weights_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = training_ckpt(tmp.path());
    let vae = fixture("spatial").join("vae.ckpt");

    let inspect = flowar(&["inspect", ck.to_str().unwrap()], tmp.path());
    let t = text(&inspect);
    assert!(inspect.status.success(), "{t}");
    assert!(t.contains("* model_ema"), "{t}");
    assert!(
        t.contains("    model "),
        "the trained weights are listed, unmarked: {t}"
    );
    assert!(t.contains("float32 ×"), "{t}");

    let out = tmp.path().join("ema");
    let (ok, t) = run_convert(tmp.path(), &ck, &vae, &out, &[]);
    assert!(ok, "{t}");
    assert!(
        t.contains("converting the state dict `model_ema`") && t.contains("(also holds: model)"),
        "{t}"
    );
    let (ok, t) = verify(tmp.path(), &out);
    assert!(ok, "the EMA weights are the fixture's: {t}");

    let out = tmp.path().join("trained");
    let (ok, t) = run_convert(tmp.path(), &ck, &vae, &out, &["--weights", "model"]);
    assert!(ok && t.contains("converting the state dict `model`"), "{t}");
    let (ok, t) = verify(tmp.path(), &out);
    assert!(!ok, "perturbed weights must fail: {t}");
    assert!(t.contains("the first is `flow.s0.v`"), "{t}");
}

#[test]
fn a_ddp_prefix_is_stripped_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("ddp.pth");
    std::fs::write(
        &ck,
        torch_checkpoint(&fixture_tensors(0.0, "module."), None),
    )
    .unwrap();
    let out = tmp.path().join("m");
    let (ok, t) = run_convert(
        tmp.path(),
        &ck,
        &fixture("spatial").join("vae.ckpt"),
        &out,
        &[],
    );
    assert!(ok, "{t}");
    assert!(t.contains("stripped the `module.` prefix"), "{t}");
    let (ok, t) = verify(tmp.path(), &out);
    assert!(ok, "{t}");
}

#[test]
fn the_demo_converts_with_the_model_card_beside_it_unless_told_not_to() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes10");
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(demo.join("meta.json")).unwrap()).unwrap();
    let latent_scale = |dir: &Path| -> f64 {
        let m: serde_json::Value = manifest_json(dir);
        m["latent_scale"].as_f64().unwrap()
    };
    let (f, v) = (demo.join("flowar.pth"), demo.join("vae.ckpt"));

    let with = tmp.path().join("with");
    let (ok, t) = run_convert(tmp.path(), &f, &v, &with, &[]);
    assert!(ok, "{t}");
    assert!(
        t.contains("using the model card") && t.contains("meta.json"),
        "{t}"
    );
    assert_eq!(latent_scale(&with), card["latent_scale"].as_f64().unwrap());
    assert!(!t.contains("tokens / 0.2325"), "{t}");

    let without = tmp.path().join("without");
    let (ok, t) = run_convert(tmp.path(), &f, &v, &without, &["--no-meta"]);
    assert!(ok, "{t}");
    assert!(t.contains("ignoring") && t.contains("(--no-meta)"), "{t}");
    assert!(
        t.contains("tokens / 0.2325 (default)") && t.contains("kl16 scale"),
        "the fallback is said: {t}"
    );
    assert_eq!(latent_scale(&without), 0.2325);

    // A card that disagrees with the weights beside them stops the conversion.
    let here = tmp.path().join("copy");
    std::fs::create_dir(&here).unwrap();
    std::fs::copy(&f, here.join("flowar.pth")).unwrap();
    std::fs::write(here.join("meta.json"), r#"{"num_classes": 3}"#).unwrap();
    let out = tmp.path().join("bad");
    let (ok, t) = run_convert(tmp.path(), &here.join("flowar.pth"), &v, &out, &[]);
    assert!(!ok, "{t}");
    assert!(t.contains("num_classes 3") && t.contains("10"), "{t}");
    assert!(!out.exists());
}
