//! Sampler properties on a fixture model: seeds, batching, CFG off, providers, solvers.

use flowar_runtime::backend::BackendOptions;
use flowar_runtime::{Error, Pipeline, PipelineOptions, Provider, ProviderChoice, Request, Solver};
use flowar_tests::*;

fn request(classes: &[usize], indices: &[u64], seed: u64) -> Request {
    Request {
        classes: classes.to_vec(),
        image_indices: indices.to_vec(),
        seed,
        cfg: 4.3,
        guidance: 0.9,
        steps: 8,
        scale_steps: None,
        solver: Solver::Euler,
        noise: None,
        edit: None,
    }
}

#[test]
fn a_seed_reproduces_an_image_and_another_seed_does_not() {
    let (_t, dir) = convert_fixture("spatial");
    for p in cpu_providers() {
        let mut pipe = load(&dir, p);
        let a = pipe
            .generate(&request(&[3], &[0], 11), &mut |_| true)
            .unwrap();
        let b = pipe
            .generate(&request(&[3], &[0], 11), &mut |_| true)
            .unwrap();
        let c = pipe
            .generate(&request(&[3], &[0], 12), &mut |_| true)
            .unwrap();
        assert_eq!(a.images, b.images, "{}", p.name());
        assert_ne!(a.images, c.images, "{}", p.name());
    }
}

#[test]
fn batch_size_and_sharding_do_not_change_image_k() {
    let (_t, dir) = convert_fixture("spatial");
    let mut pipe = load(&dir, Provider::Tract);
    let batch = pipe
        .generate(&request(&[1, 2, 3, 4], &[0, 1, 2, 3], 5), &mut |_| true)
        .unwrap();
    // Image 2 alone (batch size 1), and as part of shard 0/2 = indices {0, 2}.
    let alone = pipe
        .generate(&request(&[3], &[2], 5), &mut |_| true)
        .unwrap();
    let shard = pipe
        .generate(&request(&[1, 3], &[0, 2], 5), &mut |_| true)
        .unwrap();
    let close = |a: &[u8], b: &[u8]| {
        assert_eq!(a.len(), b.len(), "images of different sizes");
        a.iter().zip(b).all(|(x, y)| x.abs_diff(*y) <= 1)
    };
    // Batched kernels may round differently in the last bit; pixels agree to one level.
    assert!(close(&batch.images[2].pixels, &alone.images[0].pixels));
    assert!(close(&batch.images[2].pixels, &shard.images[1].pixels));
    assert!(close(&batch.images[0].pixels, &shard.images[0].pixels));
    assert_ne!(batch.images[1].pixels, batch.images[2].pixels);
}

#[test]
fn cfg_one_runs_without_null_rows() {
    let (_t, dir) = convert_fixture("cross");
    let mut pipe = load(&dir, Provider::Tract);
    let mut req = request(&[207, 3], &[0, 1], 0);
    req.cfg = 1.0;
    let mut calls = 0;
    let out = pipe
        .generate(&req, &mut |_| {
            calls += 1;
            true
        })
        .unwrap();
    assert_eq!(out.images.len(), 2);
    assert!(out.tokens.iter().all(|v| v.is_finite()));
    assert_eq!(calls, 5 * 8, "5 scales of 8 Euler steps (9 grid points)");
    assert_eq!(out.times.flow_calls, 5 * 8);
    assert_eq!(
        out.times.flow_rows,
        2 * 5 * 8,
        "every flow-head call runs the 2 images' conditional rows only"
    );
    // The same request guided runs both rows of every image in its guided steps.
    req.cfg = 4.0;
    let guided = pipe.generate(&req, &mut |_| true).unwrap();
    assert_eq!(guided.times.flow_calls, 5 * 8);
    // Guided steps are those with w > 1 (every scale but the first) and t <= guidance.
    use flowar_runtime::sampler::schedule::{cfg_at_scale, guided as is_guided, time_grid};
    let grid = time_grid(req.steps);
    let expected: usize = (0..5)
        .map(|scale| {
            let w = cfg_at_scale(req.cfg, scale, 5);
            grid[..grid.len() - 1]
                .iter()
                .map(|&t| if is_guided(w, t, req.guidance) { 4 } else { 2 })
                .sum::<usize>()
        })
        .sum();
    assert!(expected > 2 * 5 * 8, "the request has guided steps");
    assert_eq!(guided.times.flow_rows, expected);
}

#[test]
fn bad_requests_fail_before_any_work() {
    let (_t, dir) = convert_fixture("spatial");
    let mut pipe = load(&dir, Provider::Tract);
    let cases: Vec<(Request, &str)> = vec![
        (request(&[1000], &[0], 0), "out of range"),
        (
            Request {
                steps: 0,
                ..request(&[1], &[0], 0)
            },
            "steps",
        ),
        (
            Request {
                cfg: -1.0,
                ..request(&[1], &[0], 0)
            },
            "cfg",
        ),
        (
            Request {
                guidance: 1.5,
                ..request(&[1], &[0], 0)
            },
            "guidance",
        ),
        (
            Request {
                noise: Some(vec![vec![0.0; 3]]),
                ..request(&[1], &[0], 0)
            },
            "noise",
        ),
    ];
    for (req, word) in cases {
        let mut ticks = 0;
        let err = pipe.generate(&req, &mut |_| {
            ticks += 1;
            true
        });
        match err {
            Err(Error::BadArgument(m)) => assert!(m.contains(word), "{m}"),
            other => panic!("expected a BadArgument about {word}, got {:?}", other.err()),
        }
        assert_eq!(ticks, 0);
    }
}

#[test]
fn cancelling_from_progress_stops_the_run() {
    let (_t, dir) = convert_fixture("spatial");
    let mut pipe = load(&dir, Provider::Tract);
    let mut ticks = 0;
    let r = pipe.generate(&request(&[1], &[0], 0), &mut |_| {
        ticks += 1;
        ticks < 3
    });
    assert!(matches!(r, Err(Error::Cancelled)));
    assert_eq!(ticks, 3);
}

#[test]
fn missing_provider_is_an_error_and_auto_reports_its_pick() {
    let (_t, dir) = convert_fixture("spatial");
    for p in [Provider::Cuda, Provider::TensorRt] {
        let opts = PipelineOptions {
            provider: ProviderChoice::Named(p),
            backend: BackendOptions::default(),
        };
        match Pipeline::load(&dir, &opts) {
            Err(Error::ProviderUnavailable {
                provider, reason, ..
            }) => {
                assert_eq!(provider, p.name());
                assert!(!reason.is_empty());
            }
            Ok(_) => flowar_runtime::test_support::note_skip(
                module_path!(),
                &format!("{} is available on this machine", p.name()),
            ),
            Err(e) => panic!("unexpected error for {}: {e}", p.name()),
        }
    }
    let pipe = Pipeline::load(&dir, &PipelineOptions::default()).unwrap();
    let r = pipe.provider();
    assert!(r.reason.starts_with("auto:"), "{}", r.reason);
    assert!(r.reason.contains(r.provider.name()));
}

/// Heun with N steps lands closer to a 200-step Euler solution than Euler with N steps.
#[test]
fn heun_beats_euler_at_equal_steps() {
    let (_t, dir) = convert_fixture("spatial");
    let mut pipe = load(&dir, Provider::Tract);
    let run = |pipe: &mut flowar_runtime::Pipeline, steps: usize, solver: Solver| {
        let req = Request {
            steps,
            solver,
            cfg: 1.0,
            ..request(&[3, 917], &[0, 1], 3)
        };
        pipe.generate(&req, &mut |_| true).unwrap().tokens
    };
    let exact = run(&mut pipe, 200, Solver::Euler);
    let dist = |a: &[f32]| {
        a.iter()
            .zip(&exact)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    for steps in [6, 10] {
        let e = dist(&run(&mut pipe, steps, Solver::Euler));
        let h = dist(&run(&mut pipe, steps, Solver::Heun));
        eprintln!("{steps} steps: euler {e:.4}, heun {h:.4} (L2 distance to 200-step Euler)");
        assert!(h < e, "{steps} steps: heun {h} not closer than euler {e}");
    }
}

#[test]
fn recorded_noise_replays_exactly() {
    let (_t, dir) = convert_fixture("spatial");
    let mut pipe = load(&dir, Provider::Tract);
    let m = pipe.manifest().clone();
    let req = request(&[1, 2], &[4, 9], 21);
    let seeded = pipe.generate(&req, &mut |_| true).unwrap();
    let noise =
        flowar_runtime::sampler::noise::seeded(21, &[4, 9], &m.scales, m.latent_channels, true);
    let replay = pipe
        .generate(
            &Request {
                noise: Some(noise),
                ..req
            },
            &mut |_| true,
        )
        .unwrap();
    assert_eq!(seeded.tokens, replay.tokens);
}

/// The solver-step graph against the host formula it replaces, on every CPU backend:
/// guided (`[cond; null]` rows), unguided (one row block: `g = v` exactly), and the
/// non-finite count. The state stays float64 (the reference's precision).
#[test]
fn solver_step_graph_matches_the_host_update() {
    use flowar_runtime::backend::Resident;
    use flowar_runtime::tensor::Tensor;
    let (_t, dir) = convert_fixture("spatial");
    for p in cpu_providers() {
        let mut pipe = load(&dir, p);
        let c = pipe.manifest().latent_channels;
        let model = pipe.model_mut();
        let (b, n) = (2usize, 4usize);
        let len = b * n * c;
        let x: Vec<f64> = (0..len)
            .map(|i| (i as f64 * 0.37).sin() / 3.0 + 1e-9)
            .collect();
        let vc: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
        let vu: Vec<f32> = (0..len).map(|i| (i as f32 * 0.23).sin() * 0.5).collect();
        let (w, dt) = (4.3f32, -0.041666666666666664f64);
        let xr = model
            .upload(&Tensor::f64(vec![b, n, c], x.clone()))
            .unwrap();

        let both: Vec<f32> = vc.iter().chain(&vu).copied().collect();
        let v = model.upload(&Tensor::f32(vec![2 * b, n, c], both)).unwrap();
        let out = model.solver_step(&xr, &v, w, dt).unwrap();
        assert_eq!(out.nonfinite, 0);
        let got = out.x.to_host().unwrap().into_f64().unwrap();
        let want: Vec<f64> = (0..len)
            .map(|j| x[j] + dt * (vu[j] + w * (vc[j] - vu[j])) as f64)
            .collect();
        assert_eq!(got, want, "{}: guided update", p.name());
        let x_in = out.x_in.to_host().unwrap();
        assert_eq!(x_in.shape, vec![b, n, c]);
        let as_f32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        assert_eq!(x_in.as_f32().unwrap(), &as_f32[..]);
        let pair = out.x_in_pair.to_host().unwrap();
        assert_eq!(pair.shape, vec![2 * b, n, c]);
        assert_eq!(&pair.as_f32().unwrap()[..len], &as_f32[..]);
        assert_eq!(&pair.as_f32().unwrap()[len..], &as_f32[..]);

        let v = Resident::Host(Tensor::f32(vec![b, n, c], vc.clone()));
        let out = model.solver_step(&xr, &v, w, dt).unwrap();
        let got = out.x.to_host().unwrap().into_f64().unwrap();
        let want: Vec<f64> = (0..len).map(|j| x[j] + dt * vc[j] as f64).collect();
        assert_eq!(got, want, "{}: unguided update ignores w", p.name());

        let mut bad = vc.clone();
        bad[3] = f32::NAN;
        bad[7] = f32::INFINITY;
        bad[8] = f32::NEG_INFINITY;
        let v = Resident::Host(Tensor::f32(vec![b, n, c], bad));
        let out = model.solver_step(&xr, &v, w, dt).unwrap();
        assert_eq!(out.nonfinite, 3, "{}: non-finite count", p.name());
    }
}

/// A NaN that appears mid-sampling stops the run with the scale and step where it
/// appeared. The NaN is planted in the AR position embedding of the third scale's tokens
/// (positions 5..21 of 1+4+16+64+256), so scales 0 and 1 sample cleanly and the AR
/// condition of scale 2 is the first value to hold it. (Reading it from the condition,
/// not only the velocity, matters on tract, whose flow head was measured to turn a NaN
/// condition into finite velocities.)
#[test]
fn a_nan_mid_sampling_names_its_scale_and_step() {
    let src = fixture("spatial").join("flowar.safetensors");
    let bytes = std::fs::read(&src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let (_, _, shape, data) = tensors
        .iter_mut()
        .find(|(k, ..)| k == "encoder_pos_embed_learned")
        .unwrap();
    let width = shape[2];
    for token in 5..21 {
        let at = 4 * (token * width);
        data[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("nan.safetensors");
    std::fs::write(&ckpt, flowar_fuzz::torch::safetensors_bytes(&tensors)).unwrap();
    let f = flowar_exporter::checkpoint::Checkpoint::open(&ckpt).unwrap();
    let v = flowar_exporter::checkpoint::Checkpoint::open(&fixture("spatial").join("vae.ckpt"))
        .unwrap();
    let dir = tmp.path().join("model");
    flowar_exporter::convert::convert(
        &flowar_exporter::convert::ConvertRequest::new(&f, &v, &dir).allow_nonfinite(true),
    )
    .unwrap();
    for p in cpu_providers() {
        let mut pipe = load(&dir, p);
        let mut seen = Vec::new();
        let Err(e) = pipe.generate(&request(&[3], &[0], 0), &mut |pr| {
            seen.push(pr.scale);
            true
        }) else {
            panic!("{}: a NaN velocity must stop the run", p.name());
        };
        match &e {
            Error::NonFinite { scale, step, what } => {
                assert_eq!((*scale, *step), (2, 0), "{}: {e}", p.name());
                assert!(what.contains("AR condition elements"), "{what}");
            }
            other => panic!("{}: expected NonFinite, got {other:?}", p.name()),
        }
        assert!(
            seen.contains(&1) && !seen.contains(&2),
            "{}: scales 0 and 1 completed, scale 2 did not: {seen:?}",
            p.name()
        );
        assert!(e.to_string().contains("at scale 2, step 0"), "{e}");
    }
}

/// A batch larger than the TensorRT profiles were built for is refused before any work,
/// saying which GPU option builds larger ones. The check is the model's, so it is tested
/// here without a GPU.
#[test]
fn a_batch_past_the_tensorrt_profile_is_refused() {
    let (_t, dir) = convert_fixture("spatial");
    let m = flowar_runtime::manifest::Manifest::load(&dir).unwrap();
    let req = request(&[1, 2, 3], &[0, 1, 2], 0);
    let e = req.validate(&m, Some(2)).unwrap_err();
    assert!(matches!(e, Error::BadArgument(_)), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("a batch of 3 images exceeds the TensorRT profile's maximum of 2")
            && msg.contains("trt_max_batch=3"),
        "{msg}"
    );
    req.validate(&m, Some(3)).unwrap();
    req.validate(&m, None).unwrap();
}

/// Heun's method against a float64 Heun integration written here, on the model's own
/// flow head: the first two scales of the spatial fixture (the second guided), from the
/// same seeded noise. Both evaluate the flow head on the same float32 inputs, so they
/// agree to float64 rounding of the state; a wrong half step, a velocity taken at the
/// wrong point or a missed guidance combination would be off by far more.
#[test]
fn heun_matches_a_float64_heun_integration() {
    use flowar_runtime::backend::Resident;
    use flowar_runtime::model::{KvCache, Model};
    use flowar_runtime::sampler::noise::seeded;
    use flowar_runtime::sampler::ode::ScaleOde;
    use flowar_runtime::sampler::schedule::{cfg_at_scale, guided, time_grid};
    use flowar_runtime::sampler::upsample::next_scale_tokens;
    use flowar_runtime::sampler::StageTimes;
    use flowar_runtime::tensor::Tensor;

    let (_t, dir) = convert_fixture("spatial");
    let mut model = Model::load(&dir, Provider::Tract, &BackendOptions::default()).unwrap();
    let m = model.manifest.clone();
    let (c, n_scales) = (m.latent_channels, m.scales.len());
    let (cfg, guidance, steps) = (4.3, 0.9, 8);
    let labels = [3i64, m.null_class as i64];
    let noise = seeded(5, &[0], &m.scales, c, true);
    let times = time_grid(steps);
    let mut cache = KvCache::empty(&m, 2);
    let mut tokens_in = Resident::Host(Tensor::f32(vec![2, 1, c], vec![0.0; 2 * c]));
    let mut st = StageTimes::default();
    let mut guided_steps = 0;
    for (scale, &side) in m.scales.iter().enumerate().take(2) {
        let n = side * side;
        let z = model
            .ar_step(scale, &labels, &tokens_in, &mut cache)
            .unwrap();
        let w = cfg_at_scale(cfg, scale, n_scales);

        // The runtime's Heun steps.
        let mut ode = ScaleOde::new(scale, 1, true, w, guidance, &z);
        let mut state = ode.initial_state(&model, &noise[scale], n, c).unwrap();
        for step in 0..times.len() - 1 {
            let span = (times[step], times[step + 1]);
            state = ode
                .step(&mut model, state, Solver::Heun, span, step, &mut st)
                .unwrap();
        }
        let got = state.x.to_host().unwrap().into_f64().unwrap();

        // The reference: float64 state, the flow head on float32 casts of it, guidance
        // combined in float32 as the reference implementation does.
        let zh = z.to_host().unwrap();
        let zf = zh.as_f32().unwrap();
        let z_cond = Tensor::f32(vec![1, n, zh.shape[2]], zf[..zf.len() / 2].to_vec());
        let mut velocity = |x: &[f64], t: f64| -> Vec<f64> {
            let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            if guided(w, t, guidance) {
                guided_steps += 1;
                let pair = Tensor::f32(vec![2, n, c], [xf.clone(), xf].concat());
                let v = model
                    .flow(
                        scale,
                        &pair.into(),
                        &Tensor::f32(vec![2], vec![t as f32; 2]).into(),
                        &z,
                    )
                    .unwrap()
                    .to_host()
                    .unwrap();
                let v = v.as_f32().unwrap();
                let (vc, vu) = v.split_at(n * c);
                vc.iter()
                    .zip(vu)
                    .map(|(&c, &u)| (u + w as f32 * (c - u)) as f64)
                    .collect()
            } else {
                let x1 = Tensor::f32(vec![1, n, c], xf);
                let v = model
                    .flow(
                        scale,
                        &x1.into(),
                        &Tensor::f32(vec![1], vec![t as f32]).into(),
                        &z_cond.clone().into(),
                    )
                    .unwrap()
                    .to_host()
                    .unwrap();
                v.as_f32().unwrap().iter().map(|&v| v as f64).collect()
            }
        };
        let mut x: Vec<f64> = noise[scale][..n * c].iter().map(|&v| v as f64).collect();
        for win in times.windows(2) {
            let (t, tn) = (win[0], win[1]);
            let dt = tn - t;
            let g1 = velocity(&x, t);
            let pred: Vec<f64> = x.iter().zip(&g1).map(|(x, g)| x + dt * g).collect();
            let g2 = velocity(&pred, tn);
            x = x
                .iter()
                .zip(g1.iter().zip(&g2))
                .map(|(x, (a, b))| x + 0.5 * dt * a + 0.5 * dt * b)
                .collect();
        }
        assert_eq!(got.len(), x.len());
        // NaN stays NaN (and fails below): `f64::max` would drop it.
        let diff = got
            .iter()
            .zip(&x)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, |m: f64, d| {
                if m.is_nan() || d.is_nan() {
                    f64::NAN
                } else {
                    m.max(d)
                }
            });
        eprintln!("heun scale {scale}: max abs {diff:.3e} against the float64 reference");
        assert!(diff < 1e-9, "scale {scale}: Heun is off by {diff:e}");

        // The next scale starts from these tokens, upsampled.
        let cond: Vec<f32> = got.iter().map(|&v| v as f32).collect();
        let next = m.scales[scale + 1];
        let up = next_scale_tokens(&cond, 1, c, side, m.final_grid(), next);
        tokens_in = Resident::Host(Tensor::f32(
            vec![2, next * next, c],
            [up.clone(), up].concat(),
        ));
    }
    assert!(guided_steps > 0, "the second scale's steps were guided");
}

/// A per-scale step schedule runs each scale's ODE over the reference time grid for its
/// own count: the same count everywhere is exactly the uniform run, fewer at the fine
/// scales makes fewer flow-head calls, and a schedule that does not fit the model is
/// refused naming the scale.
#[test]
fn a_step_schedule_runs_each_scale_with_its_own_count() {
    use flowar_runtime::sampler::schedule::{time_grid, Steps};
    let (_t, dir) = convert_fixture("spatial");
    let mut pipe = load(&dir, Provider::Tract);
    let uniform = pipe
        .generate(&request(&[3, 917], &[0, 1], 0), &mut |_| true)
        .unwrap();
    let same = request(&[3, 917], &[0, 1], 0).with_steps(&"8,8,8,8,8".parse().unwrap());
    let out = pipe.generate(&same, &mut |_| true).unwrap();
    assert!(
        out.tokens == uniform.tokens,
        "8 at every scale is the uniform 8"
    );

    let schedule = [8, 8, 6, 4, 2];
    let fast = request(&[3, 917], &[0, 1], 0).with_steps(&Steps::PerScale(schedule.to_vec()));
    assert_eq!(fast.steps_text(), "8,8,6,4,2");
    let mut per_scale = vec![0usize; 5];
    let out = pipe
        .generate(&fast, &mut |p| {
            per_scale[p.scale] = p.steps;
            true
        })
        .unwrap();
    let want: Vec<usize> = schedule.iter().map(|&n| time_grid(n).len() - 1).collect();
    assert_eq!(per_scale, want, "each scale's own grid");
    assert_eq!(out.times.flow_calls, want.iter().sum::<usize>());
    assert!(out.times.flow_calls < uniform.times.flow_calls);
    assert!(out.tokens.iter().all(|v| v.is_finite()));

    for (steps, needle) in [
        ("8,8,8,8", "one count per scale: this model has 5 scales"),
        ("8,8,8,1,8", "1 step(s) at scale 3 (8x8)"),
        ("8,0,8,8,8", "0 step(s) at scale 1 (2x2)"),
    ] {
        let req = request(&[3], &[0], 0).with_steps(&steps.parse().unwrap());
        let Err(e) = pipe.generate(&req, &mut |_| true) else {
            panic!("{steps} must be refused");
        };
        assert!(matches!(e, Error::BadArgument(_)), "{steps}: {e:?}");
        assert!(e.to_string().contains(needle), "{steps}: {e}");
    }
}

/// A NaN in a VAE decoder weight (here the first post-quant conv, then a conv deep in the
/// finest up level) stops generation on every CPU provider with an error naming the graph,
/// the folder's dtype and the cure, and returns no image. tract's min/max kernels turn
/// such a NaN into finite garbage pixels by the output, so the graph's own
/// `nonfinite_probe` (means of every ResNet block's output) is what catches it there.
#[test]
fn a_nan_in_the_vae_stops_generation_on_every_provider() {
    let bytes = std::fs::read(fixture("spatial").join("vae.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for key in [
        "post_quant_conv.weight",
        "decoder.up.0.block.1.conv2.weight",
    ] {
        let mut tensors: Vec<_> = st
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
            .collect();
        let (_, _, _, data) = tensors.iter_mut().find(|(k, ..)| k == key).unwrap();
        data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        let tmp = tempfile::tempdir().unwrap();
        let vae = tmp.path().join("nan-vae.safetensors");
        std::fs::write(&vae, flowar_fuzz::torch::safetensors_bytes(&tensors)).unwrap();
        let f =
            flowar_exporter::checkpoint::Checkpoint::open(&fixture("spatial").join("flowar.pth"))
                .unwrap();
        let v = flowar_exporter::checkpoint::Checkpoint::open(&vae).unwrap();
        let dir = tmp.path().join("model");
        flowar_exporter::convert::convert(
            &flowar_exporter::convert::ConvertRequest::new(&f, &v, &dir).allow_nonfinite(true),
        )
        .unwrap();
        for p in cpu_providers() {
            let mut pipe = load(&dir, p);
            let Err(e) = pipe.generate(&request(&[3], &[0], 0), &mut |_| true) else {
                panic!("{} with a NaN in {key}: an image came out", p.name());
            };
            let msg = e.to_string();
            assert!(
                msg.contains("vae_decoder.onnx")
                    && msg.contains("NaN or infinite")
                    && msg.contains("float32 folder")
                    && msg.contains("--dtype f32"),
                "{} with a NaN in {key}: {msg}",
                p.name()
            );
        }
    }
}
