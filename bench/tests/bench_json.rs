//! The bench logic end to end on the tiny spatial fixture, one run: every field of the
//! JSON per provider, an unavailable provider reported with its reason, the Markdown and
//! the chart written. Nothing here looks at how fast anything was.

use clap::Parser;
use serde_json::Value;

#[derive(Parser)]
struct Cmd {
    #[command(flatten)]
    args: flowar_bench::engine::Args,
}

const STAT_FIELDS: [&str; 10] = [
    "ar_s",
    "flow_s",
    "flow_per_call_ms",
    "solver_s",
    "upsample_s",
    "vae_s",
    "other_s",
    "total_s",
    "seconds_per_image",
    "images_per_second",
];

fn is_stat(v: &Value) -> bool {
    ["min", "median", "max"]
        .iter()
        .all(|k| v[k].as_f64().is_some_and(f64::is_finite))
        && v["min"].as_f64() <= v["median"].as_f64()
        && v["median"].as_f64() <= v["max"].as_f64()
}

#[test]
fn json_has_every_field_per_provider() {
    let (_guard, model) = flowar_bench::fixture_model("spatial").expect("convert fixture");
    let out = tempfile::tempdir().unwrap();
    let (json, md, png) = (
        out.path().join("b.json"),
        out.path().join("b.md"),
        out.path().join("b.png"),
    );
    let cmd = Cmd::parse_from([
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--providers",
        "ort-cpu,tract,cuda",
        "--batch",
        "1,2",
        "--steps",
        "4",
        "--warmup",
        "0",
        "--runs",
        "1",
        "--calibration-s",
        "0.01",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
        "--markdown",
        md.to_str().unwrap(),
        "--plot",
        png.to_str().unwrap(),
    ]);
    flowar_bench::engine::run(cmd.args).expect("bench runs");

    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for k in ["tool", "version", "date", "machine", "model", "settings"] {
        assert!(!v[k].is_null(), "missing {k}");
    }
    let scales = v["model"]["scales"].as_array().unwrap().len();
    let providers = v["providers"].as_array().unwrap();
    let names: Vec<&str> = providers
        .iter()
        .map(|p| p["provider"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["ort-cpu", "tract", "cuda"],
        "every provider asked for, in order"
    );

    let cuda = &providers[2];
    assert_eq!(cuda["available"], false, "no GPU here");
    assert!(
        !cuda["reason"].as_str().unwrap_or("").is_empty(),
        "an unavailable provider says why"
    );

    let tract = &providers[1];
    assert_eq!(
        tract["available"], true,
        "tract always runs: {}",
        tract["reason"]
    );
    let ort = &providers[0];
    if ort["available"] != true {
        assert!(
            std::env::var("FLOWAR_REQUIRE_ORT").as_deref() != Ok("1"),
            "onnxruntime is required here: {}",
            ort["reason"]
        );
        flowar_runtime::test_support::note_skip(
            "bench's ort-cpu entry checks (flowar bench --json)",
            ort["reason"].as_str().unwrap_or("no reason given"),
        );
    }
    for p in providers.iter().filter(|p| p["available"] == true) {
        let name = p["provider"].as_str().unwrap();
        assert!(p["reason"].is_null());
        assert!(
            p["load_s"]
                .as_f64()
                .is_some_and(|s| s.is_finite() && s >= 0.0),
            "{name} load time: {}",
            p["load_s"]
        );
        let batches = p["batches"].as_array().unwrap();
        assert_eq!(batches.len(), 2, "{name}: one entry per batch size");
        for (b, want) in batches.iter().zip([1, 2]) {
            assert_eq!(b["batch"], want);
            assert_eq!(b["runs"], 1);
            for k in STAT_FIELDS {
                assert!(is_stat(&b[k]), "{name} b{want}: {k} = {}", b[k]);
            }
            let per_scale = b["ar_per_scale_s"].as_array().unwrap();
            assert_eq!(per_scale.len(), scales, "{name}: AR time per scale");
            assert!(per_scale.iter().all(is_stat));
            assert!(b["flow_calls"].as_u64().unwrap() > 0);
            assert!(b["peak_rss_bytes"].as_u64().unwrap() > 0);
            assert!(
                b["gpu_memory_bytes"].is_null(),
                "CPU providers report no GPU memory"
            );
            let f = &b["flops"];
            for k in ["ar", "flow", "vae", "total", "per_image"] {
                assert!(f[k].as_f64().unwrap() > 0.0, "{name}: flops.{k}");
            }
            assert_eq!(
                f["flow_calls"], b["flow_calls"],
                "FLOP model counts the calls made"
            );
            assert!(is_stat(&b["gflops"]) && is_stat(&b["efficiency"]));
            let cal = &b["calibration"];
            assert!(cal["best_gflops"].as_f64().unwrap() > 0.0);
            assert_eq!(cal["shapes"].as_array().unwrap().len(), 3);
        }
    }

    let md = std::fs::read_to_string(&md).unwrap();
    assert!(md.contains("| cuda | – | not available: "), "{md}");
    let png = std::fs::read(&png).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "chart is a PNG");
}

/// `--steps` takes a per-scale schedule: the settings record it, the sampler runs it and
/// the FLOP model counts the same flow-head calls.
#[test]
fn a_step_schedule_is_benchmarked_and_counted() {
    let (_guard, model) = flowar_bench::fixture_model("spatial").expect("convert fixture");
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("b.json");
    let cmd = Cmd::parse_from([
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--providers",
        "tract",
        "--steps",
        "6,6,4,4,2",
        "--warmup",
        "0",
        "--runs",
        "1",
        "--calibration-s",
        "0.01",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    flowar_bench::engine::run(cmd.args).expect("bench runs");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        v["settings"]["scale_steps"],
        serde_json::json!([6, 6, 4, 4, 2])
    );
    let b = &v["providers"][0]["batches"][0];
    assert_eq!(
        b["flow_calls"],
        6 + 6 + 4 + 4 + 2,
        "the sampler ran the schedule"
    );
    assert_eq!(
        b["flops"]["flow_calls"], b["flow_calls"],
        "and the FLOP model counts it"
    );
}

/// `--mode edit` on the edit fixture (a diffusers VAE folder with its encoder): the batch
/// is generated, then its images are edited, and every case is an entry beside the
/// generation with its encoder stage. A variation keeping the first scales makes fewer
/// flow-head calls than the generation with the same steps (the fully known scales skip the
/// flow head); an in-painting, whose every scale has something to regenerate, makes as
/// many. Counts only: nothing here looks at how fast anything was.
#[test]
fn edit_mode_measures_each_case_against_generation() {
    let (_guard, model) = flowar_bench::fixture_model("edit-sd-f8c4").expect("convert fixture");
    let out = tempfile::tempdir().unwrap();
    let (json, md, png) = (
        out.path().join("e.json"),
        out.path().join("e.md"),
        out.path().join("e.png"),
    );
    let steps = 4; // an even count: that many Euler steps per scale
    let cmd = Cmd::parse_from([
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--mode",
        "edit",
        "--keep-scales",
        "0,3",
        "--mask",
        "none,center",
        "--providers",
        "tract,ort-cpu",
        "--steps",
        &steps.to_string(),
        "--warmup",
        "0",
        "--runs",
        "2",
        "--calibration-s",
        "0.01",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
        "--markdown",
        md.to_str().unwrap(),
        "--plot",
        png.to_str().unwrap(),
    ]);
    flowar_bench::engine::run(cmd.args).expect("bench runs");

    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["settings"]["mode"], "edit");
    assert_eq!(
        v["settings"]["edit"]["keep_scales"],
        serde_json::json!([0, 3])
    );
    let scales = v["model"]["scales"].as_array().unwrap().len();
    assert_eq!(scales, 5, "edit-sd-f8c4 has scales 1, 2, 4, 8, 16");
    let providers = v["providers"].as_array().unwrap();
    assert_eq!(
        providers[0]["available"], true,
        "tract always runs: {}",
        providers[0]["reason"]
    );
    let ort = &providers[1];
    if ort["available"] != true {
        assert!(
            std::env::var("FLOWAR_REQUIRE_ORT").as_deref() != Ok("1"),
            "onnxruntime is required here: {}",
            ort["reason"]
        );
        flowar_runtime::test_support::note_skip(
            "bench's ort-cpu entry checks (flowar bench --mode edit)",
            ort["reason"].as_str().unwrap_or("no reason given"),
        );
    }
    for p in providers.iter().filter(|p| p["available"] == true) {
        check_edit_entries(p, scales, steps);
    }
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(
        md.contains("| tract | 1 | variation k=3 | [0, 1, 2] | 20 → 8 |"),
        "{md}"
    );
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    // The saved report renders again, in the same layout.
    let again = out.path().join("again.md");
    let cmd = Cmd::parse_from([
        "bench",
        "--from-json",
        json.to_str().unwrap(),
        "--quiet",
        "--markdown",
        again.to_str().unwrap(),
    ]);
    flowar_bench::engine::run(cmd.args).expect("re-render");
    assert_eq!(std::fs::read_to_string(&again).unwrap(), md);
}

/// The edit options without `--mode edit` are a usage error, not silently ignored.
#[test]
fn edit_options_need_edit_mode() {
    let cmd = Cmd::parse_from(["bench", "--model", "unused", "--keep-scales", "2"]);
    let err = flowar_bench::engine::measure(&cmd.args).unwrap_err();
    assert!(
        err.is_usage() && err.to_string().contains("--mode edit"),
        "{err}"
    );
}

/// One provider's entries of the edit-mode test: the generation, then each case.
fn check_edit_entries(p: &Value, scales: usize, steps: usize) {
    let name = p["provider"].as_str().unwrap();
    let entries = p["batches"].as_array().unwrap();
    let labels: Vec<&str> = entries
        .iter()
        .map(|b| {
            b["edit"]["label"]
                .as_str()
                .unwrap_or(b["task"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        labels,
        [
            "generate",
            "variation k=0",
            "inpaint center",
            "variation k=3",
            "inpaint center k=3"
        ],
        "{name}: the generation, then every keep-scales x mask case"
    );

    let gen = &entries[0];
    assert_eq!(gen["task"], "generate");
    assert!(gen["encoder_s"].is_null() && gen["vs_generate"].is_null());
    let gen_calls = gen["flow_calls"].as_u64().unwrap();
    assert_eq!(
        gen_calls,
        (scales * steps) as u64,
        "Euler: one call per step"
    );
    for b in entries {
        let label = format!(
            "{name} {}",
            b["edit"]["label"].as_str().unwrap_or("generate")
        );
        assert_eq!(b["runs"], 2);
        for k in STAT_FIELDS {
            assert!(is_stat(&b[k]), "{label}: {k} = {}", b[k]);
        }
        assert_eq!(b["ar_per_scale_s"].as_array().unwrap().len(), scales);
        let per_scale = b["scale_s"].as_array().unwrap();
        assert_eq!(per_scale.len(), scales, "{label}: wall time per scale");
        assert!(per_scale.iter().all(is_stat), "{label}");
        assert_eq!(
            b["flops"]["flow_calls"], b["flow_calls"],
            "{label}: the FLOP model counts the calls made"
        );
        assert!(b["flops"]["total"].as_f64().unwrap() > 0.0);
        if b["task"] == "generate" {
            continue;
        }
        assert_eq!(b["task"], "edit");
        assert!(
            is_stat(&b["encoder_s"]),
            "{label}: the encoder is its own stage"
        );
        assert!(b["flops"]["encoder"].as_f64().unwrap() > 0.0, "{label}");
        let e = &b["edit"];
        let skipped: Vec<u64> = e["skipped_scales"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_u64().unwrap())
            .collect();
        let calls = b["flow_calls"].as_u64().unwrap();
        assert_eq!(
            calls,
            gen_calls - (skipped.len() * steps) as u64,
            "{label}: no flow-head call at a skipped scale"
        );
        let keep = e["keep_scales"].as_u64().unwrap();
        // The first `keep` scales are known whole; past them, some token is regenerated
        // (a mask's cells at 1x1 cover it, and a variation regenerates everything).
        assert_eq!(skipped, (0..keep).collect::<Vec<_>>(), "{label}");
        let regen = e["regenerated_tokens"].as_array().unwrap();
        assert_eq!(regen.len(), scales);
        assert!(regen[..keep as usize].iter().all(|n| n == 0));
        let vs = &b["vs_generate"];
        assert_eq!(vs["generate_flow_calls"], gen_calls);
        assert_eq!(vs["flow_calls"], calls);
        for k in [
            "flow_ratio",
            "total_ratio",
            "flow_s_per_image",
            "generate_flow_s_per_image",
            "generate_s_per_image_at_skipped",
            "generate_share_at_skipped",
        ] {
            assert!(is_stat(&vs[k]), "{label}: vs_generate.{k} = {}", vs[k]);
        }
        let flop_ratio = vs["flow_flops_ratio"].as_f64().unwrap();
        if keep > 0 {
            assert!(
                calls < gen_calls,
                "{label}: {calls} calls, generate {gen_calls}"
            );
            assert!(flop_ratio < 1.0, "{label}: flow FLOP ratio {flop_ratio}");
        } else {
            assert_eq!(calls, gen_calls, "{label}: every scale has work");
            assert_eq!(flop_ratio, 1.0, "{label}");
            assert_eq!(
                vs["generate_s_per_image_at_skipped"]["max"], 0.0,
                "{label}: nothing skipped, nothing saved"
            );
        }
    }
}
