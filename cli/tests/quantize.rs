//! `flowar convert --quantize int8`, `flowar verify` of the result within the bounds its
//! manifest records, and `flowar compare` of exact against fast configurations.

mod common;
use common::*;

#[test]
fn an_int8_folder_verifies_within_its_recorded_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial_with(tmp.path(), "q8", &["--quantize", "int8"]);
    let m: serde_json::Value = manifest_json(&model);
    assert!(m["quantization"].as_str().unwrap().starts_with("int8"));
    assert_eq!(m["verify"]["graph"].as_f64().unwrap(), 0.5);
    assert!(!m["graphs"]["flow_head"]["int8_linears"]
        .as_array()
        .unwrap()
        .is_empty());
    let o = verify_spatial(tmp.path(), &model, &[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("flow.s4.v") && out.contains("bound 5.0e-1"),
        "{out}"
    );
    // The exact bound would fail it: the verify really compares.
    let o = verify_spatial(tmp.path(), &model, &["--tol", "1e-4"]);
    assert!(!o.status.success(), "{}", text(&o));
}

#[test]
fn compare_reports_scales_images_and_the_demo_check() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes10");
    let model = tmp.path().join("demo");
    let o = convert(
        tmp.path(),
        &demo.join("flowar.pth"),
        &demo.join("vae.ckpt"),
        &model,
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let m = model.to_str().unwrap();
    // Against itself: nothing differs.
    let o = flowar(
        &[
            "compare",
            "--model",
            m,
            "--provider",
            "tract",
            "--seeds",
            "0",
            "--class",
            "0",
            "1",
        ],
        tmp.path(),
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("| 8x8 | 0.000e0 | 0.00% |"), "{out}");
    assert!(out.contains("inf / inf dB | 0 | 100.00%"), "{out}");
    assert!(
        out.contains("reference 2/2 (100%), candidate 2/2 (100%)"),
        "{out}"
    );
    // A reduced schedule: the coarse scales are untouched, the fine ones move.
    let json = tmp.path().join("q.json");
    let o = flowar(
        &[
            "compare",
            "--model",
            m,
            "--provider",
            "tract",
            "--seeds",
            "0,1",
            "--class",
            "1",
            "--against-steps",
            "25,25,12,8",
            "--json",
            json.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["images"], 2);
    let scales = r["scales"].as_array().unwrap();
    assert_eq!(scales[0]["max_abs"].as_f64().unwrap(), 0.0);
    assert_eq!(scales[1]["max_abs"].as_f64().unwrap(), 0.0);
    assert!(scales[3]["rel_rms"].as_f64().unwrap() > 0.0);
    assert_eq!(r["psnr_db"].as_array().unwrap().len(), 2);
    // Models of another shape cannot be compared.
    let spatial = convert_spatial(tmp.path());
    let o = flowar(
        &[
            "compare",
            "--model",
            m,
            "--against",
            spatial.to_str().unwrap(),
            "--provider",
            "tract",
        ],
        tmp.path(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("compare configurations of one model"),
        "{}",
        text(&o)
    );
}

use std::path::Path;
