//! The checkpoints FlowAR users have beside the released ones: training checkpoints (EMA
//! and trained weights, optimizer state, an `argparse.Namespace`), DDP-saved keys, and
//! model cards that must agree with the weights. Each is built here from the spatial
//! fixture's weights, so no binary checkpoint is stored.

use std::path::{Path, PathBuf};

use flowar_exporter::checkpoint::{Checkpoint, CheckpointError, Weights};
use flowar_exporter::convert::{convert, ConvertRequest, ModelMeta};
use flowar_exporter::ExportError;
use flowar_fuzz::torch::{
    checkpoint_tensors, torch_checkpoint, training_checkpoint, TensorDef, TrainingExtras,
};
use flowar_runtime::manifest::Manifest;
use flowar_tests::*;

/// The spatial fixture's FlowAR tensors, as float32, each value moved by `shift`.
fn fixture_tensors(shift: f32, prefix: &str) -> Vec<TensorDef> {
    checkpoint_tensors(&fixture("spatial").join("flowar.pth"), shift, prefix)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A training checkpoint whose `model_ema` holds the fixture's weights and whose `model`
/// holds perturbed ones.
fn training(dir: &Path, extras: &TrainingExtras) -> PathBuf {
    let bytes = training_checkpoint(
        &fixture_tensors(0.05, ""),
        &fixture_tensors(0.0, ""),
        extras,
    );
    write(dir, "checkpoint-last.pth", &bytes)
}

fn convert_to(flowar: &Checkpoint, dir: &Path) -> Result<Manifest, ExportError> {
    let vae = Checkpoint::open(&fixture("spatial").join("vae.ckpt")).unwrap();
    convert(&ConvertRequest::new(flowar, &vae, dir)).map(|r| r.manifest)
}

/// The weighted graphs' hashes, which equal exactly when the weights do.
fn graph_hashes(m: &Manifest) -> [String; 3] {
    let g = &m.graphs;
    [&g.ar_step, &g.flow_head, &g.vae_decoder].map(|s| s.sha256.clone())
}

/// Every fixture case on every CPU provider; the names of the cases out of bounds.
fn failing_cases(dir: &Path) -> Vec<String> {
    verify_fixture("spatial", dir)
        .into_iter()
        .flat_map(|(p, results)| {
            results
                .into_iter()
                .filter(|r| !r.pass)
                .map(move |r| format!("{} {}", p.name(), r.name))
        })
        .collect()
}

#[test]
fn a_training_checkpoint_converts_its_ema_weights_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let path = training(tmp.path(), &TrainingExtras::default());
    let ck = Checkpoint::open(&path).expect("a training checkpoint opens");
    assert_eq!(ck.selected_state_dict(), Some("model_ema"));
    let dicts: Vec<(&str, bool)> = ck
        .state_dicts()
        .iter()
        .map(|s| (s.name.as_str(), s.selected))
        .collect();
    assert_eq!(dicts, [("model", false), ("model_ema", true)]);
    let fixture_ck = Checkpoint::open(&fixture("spatial").join("flowar.pth")).unwrap();
    for s in ck.state_dicts() {
        assert_eq!(
            s.parameters as usize,
            fixture_ck.total_params(),
            "{}",
            s.name
        );
        assert_eq!(s.dtypes.get("float32"), Some(&fixture_ck.keys().len()));
    }
    let m = convert_to(&ck, &tmp.path().join("model")).expect("converts");
    let (_f, reference) = convert_fixture("spatial");
    assert_eq!(
        graph_hashes(&m),
        graph_hashes(&Manifest::load(&reference).unwrap()),
        "the EMA weights are the fixture's, so the graphs are the fixture's"
    );
    let failed = failing_cases(&tmp.path().join("model"));
    assert!(failed.is_empty(), "{failed:?}");
}

#[test]
fn weights_model_converts_the_trained_weights_which_fail_verification() {
    let tmp = tempfile::tempdir().unwrap();
    let path = training(tmp.path(), &TrainingExtras::default());
    let ck = Checkpoint::open_with(&path, Weights::Model).unwrap();
    assert_eq!(ck.selected_state_dict(), Some("model"));
    convert_to(&ck, &tmp.path().join("model")).expect("converts");
    let failed = failing_cases(&tmp.path().join("model"));
    assert!(
        failed.iter().any(|c| c.ends_with("flow.s0.v")),
        "the perturbed weights must fail from the first flow case on: {failed:?}"
    );
}

#[test]
fn asking_for_missing_weights_names_what_is_there() {
    let tmp = tempfile::tempdir().unwrap();
    let extras = TrainingExtras {
        no_ema: true,
        ..Default::default()
    };
    let path = training(tmp.path(), &extras);
    // Without EMA weights the trained ones are used, and asking for EMA is an error.
    let ck = Checkpoint::open(&path).unwrap();
    assert_eq!(ck.selected_state_dict(), Some("model"));
    let e = Checkpoint::open_with(&path, Weights::Ema).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, CheckpointError::NotACheckpoint { .. }), "{e:?}");
    assert!(
        msg.contains("no EMA weights") && msg.contains("`model`"),
        "{msg}"
    );
}

#[test]
fn code_in_the_args_namespace_is_refused_by_name_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    for (module, name) in [
        ("os", "system"),
        ("builtins", "eval"),
        ("runpy", "run_path"),
    ] {
        let extras = TrainingExtras {
            call_in_args: Some((module.into(), name.into())),
            ..Default::default()
        };
        let path = training(tmp.path(), &extras);
        let e = Checkpoint::open(&path).unwrap_err();
        match &e {
            CheckpointError::ForeignGlobal {
                module: m,
                name: n,
                offset,
                ..
            } => {
                assert_eq!((m.as_str(), n.as_str()), (module, name));
                assert!(*offset > 0);
            }
            other => panic!("expected ForeignGlobal, got {other:?}"),
        }
        assert!(e.to_string().contains(&format!("`{module}.{name}`")), "{e}");
    }
}

#[test]
fn an_unknown_class_where_a_tensor_belongs_is_refused_by_name() {
    // `{ "w": webbrowser.open(...) }` refuses by module; an unknown class is refused only
    // where a tensor is expected, naming it and the entry.
    let mut p = flowar_fuzz::torch::Pickle::new(2);
    p.op(b'}')
        .str("pos_embed")
        .global("mylib.tensors", "Rebuild")
        .str("x")
        .op(0x85)
        .op(b'R')
        .op(b's');
    let pkl = p.finish();
    let tmp = tempfile::tempdir().unwrap();
    let path = write(
        tmp.path(),
        "x.pth",
        &flowar_fuzz::torch::torch_zip("archive", Some(&pkl), &[]),
    );
    let e = Checkpoint::open(&path).unwrap_err();
    assert!(matches!(e, CheckpointError::ForeignValue { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("`pos_embed`") && msg.contains("`mylib.tensors.Rebuild`"),
        "{msg}"
    );
}

#[test]
fn a_ddp_module_prefix_is_stripped() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = torch_checkpoint(&fixture_tensors(0.0, "module."), Some("model"));
    let path = write(tmp.path(), "ddp.pth", &bytes);
    let ck = Checkpoint::open(&path).unwrap();
    assert_eq!(ck.stripped_prefix(), Some("module."));
    assert!(ck.keys().iter().all(|k| !k.starts_with("module.")));
    let m = convert_to(&ck, &tmp.path().join("model")).expect("converts");
    let (_f, reference) = convert_fixture("spatial");
    assert_eq!(
        graph_hashes(&m),
        graph_hashes(&Manifest::load(&reference).unwrap())
    );
    // A prefix on only some keys is left alone.
    let mut mixed = fixture_tensors(0.0, "");
    mixed[0].name = format!("module.{}", mixed[0].name);
    let path = write(tmp.path(), "mixed.pth", &torch_checkpoint(&mixed, None));
    assert_eq!(Checkpoint::open(&path).unwrap().stripped_prefix(), None);
}

#[test]
fn a_model_card_that_disagrees_with_the_checkpoints_is_an_error() {
    let f = Checkpoint::open(&fixture("spatial").join("flowar.pth")).unwrap();
    let v = Checkpoint::open(&fixture("spatial").join("vae.ckpt")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, &str); 3] = [
        (r#"{"num_classes": 7}"#, "num_classes 7"),
        (
            r#"{"flowar": {"vae_embed_dim": 4}}"#,
            "flowar.vae_embed_dim 4",
        ),
        (r#"{"vae": {"z_channels": 3}}"#, "vae.z_channels 3"),
    ];
    for (i, (json, needle)) in cases.iter().enumerate() {
        let meta: ModelMeta = serde_json::from_str(json).unwrap();
        let out = tmp.path().join(format!("m{i}"));
        let e = convert(&ConvertRequest::new(&f, &v, &out).meta(meta)).unwrap_err();
        assert!(matches!(e, ExportError::Mismatch(_)), "{e:?}");
        assert!(e.to_string().contains(needle), "{e}");
        assert!(!out.exists(), "no folder is left");
    }
}

/// Runs `tests/tools/cpython_training_checkpoint.py` with the test Python (numpy comes with
/// the onnx package scripts/test.sh installs); `None` when that Python cannot run it here.
fn cpython_checkpoint(dir: &Path, hostile: bool) -> Option<PathBuf> {
    let python = std::env::var("FLOWAR_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/cpython_training_checkpoint.py");
    let out = dir.join(if hostile { "hostile.pth" } else { "train.pth" });
    let mut cmd = std::process::Command::new(&python);
    cmd.arg(&script).arg(&out);
    if hostile {
        cmd.arg("--hostile");
    }
    match cmd.output() {
        Ok(o) if o.status.success() => Some(out),
        other => {
            assert!(
                std::env::var("FLOWAR_REQUIRE_ONNX_CHECKER").as_deref() != Ok("1"),
                "{python} with numpy is required here: {other:?}"
            );
            flowar_runtime::test_support::note_skip(
                module_path!(),
                &format!("the CPython-pickled checkpoint: {python} could not write it ({other:?})"),
            );
            None
        }
    }
}

#[test]
fn a_checkpoint_pickled_by_cpython_reads_its_ema_weights_and_refuses_os_system() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(path) = cpython_checkpoint(tmp.path(), false) else {
        return;
    };
    let ck = Checkpoint::open(&path).expect("CPython's pickle of a training checkpoint reads");
    assert_eq!(ck.selected_state_dict(), Some("model_ema"));
    assert_eq!(ck.load_f32("w").unwrap(), [1.0, 2.0], "the EMA weights");
    let model = Checkpoint::open_with(&path, Weights::Model).unwrap();
    assert_eq!(
        model.load_f32("w").unwrap(),
        [2.0, 2.0],
        "the trained weights"
    );
    let Some(hostile) = cpython_checkpoint(tmp.path(), true) else {
        return;
    };
    let e = Checkpoint::open(&hostile).unwrap_err().to_string();
    // CPython pickles os.system by its defining module: posix on Linux.
    assert!(
        e.contains("`posix.system`") && e.contains("allow-list"),
        "{e}"
    );
}

/// bfloat16 storages in a `.pth` read as their exact values (bfloat16 is float32's upper
/// half, so these values round-trip bit for bit).
#[test]
fn bfloat16_pth_values_are_exact() {
    let values = [1.0f32, -2.0, 0.5, 3.140625, 65280.0, -0.0078125];
    let bf16 = |x: f32| -> [u8; 2] {
        let bits = x.to_bits();
        assert_eq!(bits & 0xffff, 0, "{x} is not a bfloat16 value");
        ((bits >> 16) as u16).to_le_bytes()
    };
    let t = TensorDef {
        name: "w".into(),
        class: "BFloat16Storage".into(),
        shape: vec![2, 3],
        data: values.iter().flat_map(|&x| bf16(x)).collect(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), "bf16.pth", &torch_checkpoint(&[t], None));
    let ck = Checkpoint::open(&path).unwrap();
    let info = ck.info("w").unwrap();
    assert_eq!(info.dtype, flowar_exporter::checkpoint::DType::BF16);
    assert_eq!(info.shape, [2, 3]);
    assert_eq!(ck.load_f32("w").unwrap(), values);
    assert_eq!(ck.state_dicts()[0].dtypes.get("bfloat16"), Some(&1));
}
