//! `--quantize int8`: the transformers' block linears as int8, recorded in the manifest,
//! verified against the fixtures within the bounds the manifest records, on every CPU
//! backend; refused together with float16.

use flowar_exporter::convert::Precision;
use flowar_runtime::manifest::Manifest;
use flowar_tests::*;

#[test]
fn int8_fixtures_verify_within_the_recorded_bounds() {
    for name in ["spatial", "cross"] {
        let (_t32, exact) = convert_fixture(name);
        let (_t8, dir) = convert_fixture_quantized(name);
        let m = Manifest::load(&dir).unwrap();
        let m32 = Manifest::load(&exact).unwrap();
        assert!(m.quantization.as_deref().unwrap().starts_with("int8"));
        assert!(m32.quantization.is_none() && m32.graphs.flow_head.int8_linears.is_empty());
        assert_ne!(
            m.model_hash, m32.model_hash,
            "an int8 model is another model"
        );
        // Pinned as numbers, not the exporter's own constant: loosening it must fail here.
        assert_eq!((m.verify.graph, m.verify.vae), (0.5, 1e-3));
        assert!(!m.verify.pipeline);
        // The flow head: every block's attention, MLP and adaLN linears (spatial: qkv,
        // proj, fc1_g, fc1_x, fc2, ada_lin; cross: three more attention linears and two
        // adaLNs) and the final layer's adaLN; not the embeddings or the final linear.
        let linears = &m.graphs.flow_head.int8_linears;
        let per_block = if name == "spatial" { 6 } else { 10 };
        assert_eq!(
            linears.len(),
            m.architecture.flow.depth * per_block + 1,
            "{linears:?}"
        );
        let final_ada = "flownet.final_layer.adaLN_modulation.1";
        assert!(linears
            .iter()
            .all(|l| l.contains(".res_blocks.") || l == final_ada));
        assert!(linears.iter().any(|l| l == final_ada));
        // The AR: every block's attention and MLP linears, not its one-token adaLN.
        let ar = &m.graphs.ar_step.int8_linears;
        let a = &m.architecture.ar;
        assert_eq!(ar.len(), (a.encoder_depth + a.decoder_depth) * 5, "{ar:?}");
        assert!(ar
            .iter()
            .all(|l| (l.contains(".attn.") || l.contains(".mlp.")) && l.contains("_blocks.")));
        assert!(m.graphs.vae_decoder.int8_linears.is_empty());
        let size = |d: &std::path::Path| std::fs::metadata(d.join("flow_head.onnx")).unwrap().len();
        assert!(
            (size(&dir) as f64) < 0.7 * size(&exact) as f64,
            "{name}: int8 flow head {} bytes vs f32 {}",
            size(&dir),
            size(&exact)
        );

        for (p, results) in verify_with_manifest_bounds(name, &dir, "int8") {
            assert_eq!(results.len(), 16, "{name} on {}", p.name());
            for r in &results {
                assert!(r.pass, "int8 {name} on {}: {r:?}", p.name());
                if r.name.starts_with("flow.") || r.name.ends_with(".z") {
                    // Really quantized: far past float32 rounding.
                    assert!(r.max_abs > 1e-3, "{name} {}: {r:?}", p.name());
                } else {
                    // Upsampling and the VAE stay float32: the exact bounds hold.
                    let exact = if r.name.starts_with("vae.") {
                        1e-3
                    } else {
                        1e-4
                    };
                    assert!(
                        r.max_abs <= exact || r.name.ends_with("_u8"),
                        "{name} {}: {r:?}",
                        p.name()
                    );
                }
            }
        }
    }
}

/// OpenVINO runs int8 graphs no faster than float32: such a folder is refused there, with
/// a pointer to onnxruntime's CPU provider, never left silently slow.
#[test]
fn int8_folders_are_refused_on_openvino() {
    use flowar_runtime::{Provider, ProviderChoice};
    if !cpu_providers().contains(&Provider::OpenVino) {
        return; // skipped loudly by cpu_providers (a failure under FLOWAR_REQUIRE_OPENVINO)
    }
    let (_t, dir) = convert_fixture_quantized("spatial");
    let err = load_refused(&dir, ProviderChoice::Named(Provider::OpenVino));
    assert!(
        err.contains("int8") && err.contains("--provider ort-cpu"),
        "{err}"
    );
}

#[test]
fn int8_and_float16_are_refused_together() {
    let err = int8_conversion_refused_with(Precision::F16);
    assert!(err.contains("--quantize int8 and --dtype f16"), "{err}");
}

/// The fast-mode provider by name: an int8 folder loads and verifies on ort-cpu, asked
/// for explicitly (not through a provider list), whenever onnxruntime is here.
#[test]
fn int8_folders_run_on_ort_cpu_by_name() {
    use flowar_runtime::Provider;
    if !cpu_providers().contains(&Provider::OrtCpu) {
        return; // recorded by cpu_providers (a failure under FLOWAR_REQUIRE_ORT)
    }
    let (_t, dir) = convert_fixture_quantized("spatial");
    let m = Manifest::load(&dir).unwrap();
    assert!(providers_for(&m).contains(&Provider::OrtCpu));
    let results = verify_on_with_manifest_bounds("spatial", &dir, Provider::OrtCpu, "int8");
    assert_eq!(results.len(), 16);
    assert!(results.iter().all(|r| r.pass), "{results:?}");
}
