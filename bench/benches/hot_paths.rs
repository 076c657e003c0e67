//! Criterion micro-benchmarks of the sampler's hot paths on the tiny spatial fixture
//! (`tests/fixtures/spatial`, converted on the fly): one flow-head call per scale size,
//! one AR step per scale, the upsampling between scales, the Euler / Heun state updates
//! and the VAE decode, on every provider available here (ort-cpu, tract).
//!
//! `cargo bench -p flowar-bench --bench hot_paths [-- FILTER]`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use flowar_runtime::backend::available;
use flowar_runtime::backend::{BackendOptions, Resident};
use flowar_runtime::model::{KvCache, Model};
use flowar_runtime::sampler::upsample::next_scale_tokens;
use flowar_runtime::tensor::Tensor;
use flowar_runtime::Provider;

/// Rows of a guided batch of one image (conditional + null).
const ROWS: usize = 2;

fn tensor(shape: Vec<usize>, seed: usize) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::f32(
        shape,
        (0..n)
            .map(|i| (((i * 7 + seed) % 23) as f32 - 11.0) / 11.0)
            .collect(),
    )
}

/// Runs the AR steps of scales `0..upto` so `cache` holds what scale `upto` sees.
fn fill_cache(model: &mut Model, labels: &[i64], upto: usize) -> KvCache {
    let m = model.manifest.clone();
    let c = m.latent_channels;
    let mut cache = KvCache::empty(&m, ROWS);
    for (i, &side) in m.scales.iter().enumerate().take(upto) {
        let tokens = Resident::Host(tensor(vec![ROWS, side * side, c], i));
        model.ar_step(i, labels, &tokens, &mut cache).expect("ar");
    }
    cache
}

fn hot_paths(cr: &mut Criterion) {
    let (_guard, dir) = flowar_bench::fixture_model("spatial").expect("convert fixture");
    let opts = BackendOptions::default();
    let providers: Vec<Provider> = [Provider::OrtCpu, Provider::Tract]
        .into_iter()
        .filter(|&p| match available(p, &opts) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("skipping {}: {e}", p.name());
                false
            }
        })
        .collect();
    for p in providers {
        let mut model = Model::load(&dir, p, &opts).expect("load fixture");
        let m = model.manifest.clone();
        let (c, d) = (m.latent_channels, m.architecture.ar.width);
        let labels: Vec<i64> = vec![0, m.null_class as i64];

        let mut g = cr.benchmark_group(format!("flow_head/{}", p.name()));
        for (i, &side) in m.scales.iter().enumerate() {
            let n = side * side;
            let x = model.upload(&tensor(vec![ROWS, n, c], 1)).expect("upload");
            let t = Resident::Host(Tensor::f32(vec![ROWS], vec![0.5; ROWS]));
            let z = model.upload(&tensor(vec![ROWS, n, d], 2)).expect("upload");
            g.bench_with_input(BenchmarkId::new("tokens", n), &i, |bch, &i| {
                bch.iter(|| black_box(model.flow(i, &x, &t, &z).expect("flow")))
            });
        }
        g.finish();

        let mut g = cr.benchmark_group(format!("ar_step/{}", p.name()));
        for (i, &side) in m.scales.iter().enumerate() {
            let n = side * side;
            let base = fill_cache(&mut model, &labels, i);
            let tokens = Resident::Host(tensor(vec![ROWS, n, c], 3));
            g.bench_with_input(BenchmarkId::new("tokens", n), &i, |bch, &i| {
                bch.iter_batched(
                    || base.try_clone().expect("clone cache"),
                    |mut cache| black_box(model.ar_step(i, &labels, &tokens, &mut cache)),
                    criterion::BatchSize::LargeInput,
                )
            });
        }
        g.finish();

        // The solver-step graph (CFG combination and the float64 update) per scale size,
        // guided rows, as the sampler runs it between flow-head calls.
        let mut g = cr.benchmark_group(format!("solver_step/{}", p.name()));
        for &side in &m.scales {
            let n = side * side;
            let b = ROWS / 2;
            let x = Tensor::f64(vec![b, n, c], vec![0.25; b * n * c]);
            let x = model.upload(&x).expect("upload");
            let v = model.upload(&tensor(vec![ROWS, n, c], 6)).expect("upload");
            g.bench_with_input(BenchmarkId::new("tokens", n), &n, |bch, _| {
                bch.iter(|| black_box(model.solver_step(&x, &v, 4.3, -0.04).expect("step")))
            });
        }
        g.finish();

        let grid = m.final_grid();
        let latent = tensor(vec![1, c, grid, grid], 4);
        cr.bench_function(&format!("vae_decode/{}", p.name()), |bch| {
            bch.iter(|| black_box(model.decode(&latent).expect("decode")))
        });
    }

    // Host-side work, independent of the provider: the fixture's and FlowAR's own sizes.
    let m = flowar_runtime::manifest::Manifest::load(&dir).expect("manifest");
    let c = m.latent_channels;
    let mut g = cr.benchmark_group("upsample");
    for (grid, scales) in [
        (m.final_grid(), m.scales.clone()),
        (16, vec![1, 2, 4, 8, 16]),
    ] {
        for w in scales.windows(2) {
            let (s_in, s_out) = (w[0], w[1]);
            let src = tensor(vec![ROWS, s_in * s_in, c], 5)
                .into_f32()
                .expect("f32");
            g.bench_function(format!("grid{grid}/{s_in}to{s_out}"), |bch| {
                bch.iter(|| black_box(next_scale_tokens(&src, ROWS / 2, c, s_in, grid, s_out)))
            });
        }
    }
    g.finish();
}

fn quick() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = quick();
    targets = hot_paths
}
criterion_main!(benches);
