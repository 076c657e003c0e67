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
        eprintln!("SKIPPING the ort-cpu entry's checks: {}", ort["reason"]);
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
