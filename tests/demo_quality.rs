//! The bundled demo model draws the right shape in the right colour for every class, on
//! every CPU backend and several seeds. Negative controls show the check fails when the
//! class condition is ignored, when the VAE is decoded with the wrong latent scale, and
//! when a shape wears another class's colour.

use flowar_bench::demo_check::*;
use flowar_exporter::convert::{ModelMeta, Precision};
use flowar_runtime::image::RgbImage;
use flowar_runtime::{Pipeline, Solver};
use flowar_tests::*;

fn meta() -> Meta {
    Meta::load(&model_source("shapes10").join("meta.json")).unwrap()
}

fn generate(
    pipe: &mut Pipeline,
    classes: &[usize],
    labels_override: Option<usize>,
    seed: u64,
) -> Vec<RgbImage> {
    let labels = classes
        .iter()
        .map(|&c| labels_override.unwrap_or(c))
        .collect();
    let req = pipe
        .request()
        .with_images(labels, 0)
        .unwrap()
        .with_seed(seed)
        .with_solver(Solver::Euler);
    pipe.generate(&req, &mut |_| true).unwrap().images
}

/// The check's misses over every named class and `seeds` (labels optionally overridden).
fn misses(
    pipe: &mut Pipeline,
    meta: &Meta,
    labels_override: Option<usize>,
    seeds: &[u64],
) -> Vec<String> {
    let classes: Vec<usize> = (0..meta.names.len()).collect();
    let mut failures = Vec::new();
    for &seed in seeds {
        for (c, img) in generate(pipe, &classes, labels_override, seed)
            .iter()
            .enumerate()
        {
            if let Err(e) = shows_class(img, c, meta) {
                failures.push(format!("seed {seed}: {e}"));
            }
        }
    }
    failures
}

fn convert_demo(latent_scale: Option<f64>) -> (tempfile::TempDir, std::path::PathBuf) {
    convert_demo_as(latent_scale, Precision::F32)
}

fn convert_demo_as(
    latent_scale: Option<f64>,
    precision: Precision,
) -> (tempfile::TempDir, std::path::PathBuf) {
    convert_demo_with(latent_scale, precision, None)
}

fn convert_demo_with(
    latent_scale: Option<f64>,
    precision: Precision,
    quantize: Option<flowar_exporter::quantize::Quantize>,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let src = model_source("shapes10");
    let meta = ModelMeta::load(&src.join("meta.json")).unwrap();
    convert_files_with(
        &src.join("flowar.pth"),
        &src.join("vae.ckpt"),
        meta,
        latent_scale,
        flowar_exporter::convert::EXTERNAL_DATA_THRESHOLD,
        precision,
        quantize,
    )
}

/// Every class on every CPU backend and three seeds; a trained 2.9M-parameter model is
/// not perfect, so one miss in 30 images is allowed.
fn check_all_classes(dir: &std::path::Path, what: &str) {
    let meta = meta();
    for p in cpu_providers() {
        let mut pipe = load(dir, p);
        let failures = misses(&mut pipe, &meta, None, &[0, 1, 2]);
        assert!(
            failures.len() <= 1,
            "{what} on {}: {} misses:\n{}",
            p.name(),
            failures.len(),
            failures.join("\n")
        );
    }
}

#[test]
fn every_class_shows_its_shape_and_colour() {
    let (_t, dir) = convert_demo(None);
    check_all_classes(&dir, "float32 graphs");
}

/// End to end in float16: per-graph bounds alone do not show that 100+ solver steps of
/// float16 rounding still draw the right images; this does.
#[test]
fn float16_graphs_draw_every_class_too() {
    let (_t, dir) = convert_demo_as(None, Precision::F16);
    check_all_classes(&dir, "float16 graphs");
}

/// End to end in bfloat16 products on OpenVINO, where the CPU computes bfloat16: at least
/// 28 of 30 images pass (the reference's own autocast passes 29/30). Where the CPU has no
/// bfloat16, loading is refused with what is missing.
#[test]
fn bf16_graphs_draw_the_classes_on_openvino() {
    use flowar_runtime::backend::{openvino_backend, BackendOptions};
    use flowar_runtime::{Provider, ProviderChoice};
    let caps = match openvino_backend::cpu_capabilities(&BackendOptions::default()) {
        Ok(c) => c,
        Err(why) => {
            assert!(
                std::env::var("FLOWAR_REQUIRE_OPENVINO").as_deref() != Ok("1"),
                "OpenVINO is required here: {why}"
            );
            flowar_runtime::test_support::note_skip(
                module_path!(),
                &format!("OpenVINO is not installed: {why}"),
            );
            return;
        }
    };
    let (_t, dir) = convert_demo_as(None, Precision::Bf16);
    if !caps.has_bf16() {
        let err = load_refused(&dir, ProviderChoice::Named(Provider::OpenVino));
        assert!(err.contains("neither AMX nor AVX512-BF16"), "{err}");
        bf16_missing("bf16 demo check done as a refusal", &err);
        return;
    }
    let meta = meta();
    let mut pipe = load(&dir, Provider::OpenVino);
    let failures = misses(&mut pipe, &meta, None, &[0, 1, 2]);
    assert!(
        failures.len() <= 2,
        "bf16 on openvino: {} misses:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Negative control: the same check rejects images whose class condition was ignored
/// (every image generated as class 0).
#[test]
fn check_fails_when_the_class_condition_is_ignored() {
    let meta = meta();
    let (_t, dir) = convert_demo(None);
    let mut pipe = load(&dir, flowar_runtime::Provider::Tract);
    let passed = meta.names.len() - misses(&mut pipe, &meta, Some(0), &[0]).len();
    assert!(
        passed <= 2,
        "{passed} of 10 class-0 images passed as their nominal class"
    );
}

/// Negative control: decoding with the released models' latent scale instead of the demo's
/// own gives images the check rejects.
#[test]
fn check_fails_with_the_wrong_latent_scale() {
    let meta = meta();
    let (_t, dir) = convert_demo(Some(0.2325));
    let mut pipe = load(&dir, flowar_runtime::Provider::Tract);
    let passed = 3 * meta.names.len() - misses(&mut pipe, &meta, None, &[0, 1, 2]).len();
    // The main test tolerates one miss in thirty; here all but one image missed when
    // measured (the margin allows one more).
    assert!(
        passed <= 2,
        "{passed} of 30 images passed with a wrong latent scale"
    );
}

/// Paints the foreground of `img` (what the check reads as the shape) in `colour`.
fn recolour(img: &RgbImage, colour: [f64; 3]) -> RgbImage {
    let mut out = img.clone();
    let fg = foreground(img);
    assert!(fg.contains(&true), "the image shows something to recolour");
    let rgb = colour.map(|c| c as u8);
    for (px, _) in out.pixels.chunks_exact_mut(3).zip(&fg).filter(|(_, &f)| f) {
        px.copy_from_slice(&rgb);
    }
    out
}

/// Negative control: a shape in another class's colour. Each class's image is painted in
/// the colour of the next class, whose shape differs (the classes cycle through the five
/// shapes). The colour check alone accepts these; the shape check must reject them.
#[test]
fn check_fails_when_shapes_are_swapped_but_colours_kept() {
    let meta = meta();
    let (_t, dir) = convert_demo(None);
    let mut pipe = load(&dir, flowar_runtime::Provider::Tract);
    let n = meta.names.len();
    let classes: Vec<usize> = (0..n).collect();
    let (mut colour_passed, mut passed, mut total) = (0, 0, 0);
    for seed in [0, 1, 2] {
        for (donor, img) in generate(&mut pipe, &classes, None, seed).iter().enumerate() {
            let class = (donor + 1) % n;
            assert_ne!(meta.shapes[class], meta.shapes[donor]);
            let swapped = recolour(img, meta.colours[class]);
            colour_passed += colour_ok(&read(&swapped, &meta), class, &meta) as usize;
            passed += shows_class(&swapped, class, &meta).is_ok() as usize;
            total += 1;
        }
    }
    assert!(
        colour_passed >= total - 3,
        "the control must keep the colours right ({colour_passed} of {total} did)"
    );
    assert!(
        passed <= 1,
        "{passed} of {total} shape-swapped images passed as the class whose colour they wear"
    );
}

/// The shape reader on drawn shapes: exact ones, and ones it must not confuse.
#[test]
fn the_shape_reader_tells_the_five_shapes_apart() {
    let (w, h) = (32usize, 32usize);
    let draw = |inside: &dyn Fn(f64, f64) -> bool| -> Vec<bool> {
        (0..w * h)
            .map(|i| inside((i % w) as f64 + 0.5 - 16.0, (i / w) as f64 + 0.5 - 16.0))
            .collect()
    };
    type Inside = Box<dyn Fn(f64, f64) -> bool>;
    let cases: [(Shape, Inside); 5] = [
        (Shape::Circle, Box::new(|x, y| x * x + y * y <= 81.0)),
        (
            Shape::Square,
            Box::new(|x: f64, y: f64| x.abs() <= 8.0 && y.abs() <= 8.0),
        ),
        // Apex up: the half-width grows from 0 at y = -8 to 9 at y = 8.
        (
            Shape::Triangle,
            Box::new(|x: f64, y: f64| {
                (-8.0..=8.0).contains(&y) && x.abs() <= (y + 8.0) * 9.0 / 16.0
            }),
        ),
        (
            Shape::Ring,
            Box::new(|x, y| (36.0..=81.0).contains(&(x * x + y * y))),
        ),
        (
            Shape::Cross,
            Box::new(|x: f64, y: f64| {
                (x.abs() <= 3.0 && y.abs() <= 9.0) || (y.abs() <= 3.0 && x.abs() <= 9.0)
            }),
        ),
    ];
    for (want, inside) in &cases {
        let f = shape_features(&draw(inside.as_ref()), w, h);
        assert_eq!(f.shape(), *want, "{f:?}");
    }
    // A ring drawn with a gap has no enclosed hole; its empty middle still makes it a ring.
    let open_ring =
        draw(&|x, y| (36.0..=81.0).contains(&(x * x + y * y)) && !(x > 0.0 && y.abs() < 1.5));
    let f = shape_features(&open_ring, w, h);
    assert_eq!(f.hole, 0.0);
    assert_eq!(f.shape(), Shape::Ring, "{f:?}");
}

/// Misses of the shape-and-colour check over every class and three seeds on each CPU
/// backend, with `schedule` (None: the model's steps); at most three in thirty (90%).
fn check_all_classes_within_90_percent(
    dir: &std::path::Path,
    schedule: Option<&flowar_runtime::sampler::schedule::Steps>,
    what: &str,
) {
    let meta = meta();
    // Every CPU backend that runs this model (OpenVINO refuses int8 folders).
    let m = flowar_runtime::manifest::Manifest::load(dir).unwrap();
    for p in providers_for(&m) {
        let mut pipe = load(dir, p);
        let classes: Vec<usize> = (0..meta.names.len()).collect();
        let mut failures = Vec::new();
        for seed in [0, 1, 2] {
            let mut req = pipe
                .request()
                .with_images(classes.clone(), 0)
                .unwrap()
                .with_seed(seed);
            if let Some(s) = schedule {
                req = req.with_steps(s);
            }
            let out = pipe.generate(&req, &mut |_| true).unwrap();
            for (c, img) in out.images.iter().enumerate() {
                if let Err(e) = shows_class(img, c, &meta) {
                    failures.push(format!("seed {seed}: {e}"));
                }
            }
        }
        eprintln!("{what} on {}: {} misses of 30", p.name(), failures.len());
        assert!(
            failures.len() <= 3,
            "{what} on {}: {} misses:\n{}",
            p.name(),
            failures.len(),
            failures.join("\n")
        );
    }
}

/// Fewer solver steps at the fine scales (a training-free speed-up, DiSA) changes the
/// outputs but, at this schedule, the demo still draws every class: the same check as the
/// exact run, on both CPU backends and three seeds, allowing three misses in thirty (90%).
#[test]
fn a_reduced_step_schedule_still_draws_every_class() {
    let (_t, dir) = convert_demo(None);
    let schedule = "25,25,12,8".parse().unwrap();
    check_all_classes_within_90_percent(&dir, Some(&schedule), "schedule 25,25,12,8");
}

/// Fast mode as the README recommends it: int8 flow-head linears and the reduced
/// schedule together, then int8 alone; the same 90% bar.
#[test]
fn fast_mode_int8_draws_every_class() {
    let (_t, dir) = convert_demo_with(
        None,
        Precision::F32,
        Some(flowar_exporter::quantize::Quantize::Int8),
    );
    let schedule = "25,25,12,8".parse().unwrap();
    check_all_classes_within_90_percent(&dir, Some(&schedule), "int8 + schedule 25,25,12,8");
    check_all_classes_within_90_percent(&dir, None, "int8");
}

/// Editing on the trained demo, judged by the shape check (the fixture README's measure:
/// cfg 4, 25 steps, 3 seeds x 10 classes, sources generated by the model first). The
/// reference under the same rule: sources 26/30 recognised; a variation keeping the first 2
/// scales 30/30; the left half regenerated with the same class 26/30; a centre box (half
/// the side) regenerated with the next class recognised as that class 12/30 (the shapes
/// reach past the box). The bounds leave a few images of room below those counts, and
/// the negative control (the sources themselves read as the next class) must stay near 0.
#[test]
fn editing_the_demo_keeps_and_changes_what_it_should() {
    use flowar_runtime::Mask;
    let (_t, dir) = convert_demo(None);
    let meta = meta();
    let n = meta.names.len();
    for p in cpu_providers() {
        let mut pipe = load(&dir, p);
        let size = pipe.manifest().image_size;
        let classes: Vec<usize> = (0..n).collect();
        let next: Vec<usize> = classes.iter().map(|c| (c + 1) % n).collect();
        let left = Mask {
            size,
            values: (0..size * size)
                .map(|i| if i % size < size / 2 { 255 } else { 0 })
                .collect(),
        };
        let centre = Mask {
            size,
            values: (0..size * size)
                .map(|i| {
                    let (y, x) = (i / size, i % size);
                    let inside = |v: usize| v >= size / 4 && v < 3 * size / 4;
                    if inside(y) && inside(x) {
                        255
                    } else {
                        0
                    }
                })
                .collect(),
        };
        let (mut variation, mut half, mut boxed, mut control) = (0, 0, 0, 0);
        for seed in 0..3u64 {
            let req = pipe
                .request()
                .with_sampler(Some(4.0), None, Some(25))
                .with_seed(seed);
            let sources = pipe
                .generate(
                    &req.clone().with_images(classes.clone(), 0).unwrap(),
                    &mut |_| true,
                )
                .unwrap()
                .images;
            let mut edit = |labels: &[usize], mask: Option<&Mask>, keep: usize| {
                let r = req
                    .clone()
                    .with_seed(seed + 100)
                    .with_images(labels.to_vec(), 0)
                    .unwrap();
                let masks = vec![mask.cloned(); n];
                pipe.edit(&r, &sources, &masks, keep, &mut |_| true)
                    .unwrap()
                    .images
            };
            let count = |imgs: &[RgbImage], want: &[usize]| {
                imgs.iter()
                    .zip(want)
                    .filter(|(img, &c)| shows_class(img, c, &meta).is_ok())
                    .count()
            };
            variation += count(&edit(&classes, None, 2), &classes);
            half += count(&edit(&classes, Some(&left), 0), &classes);
            boxed += count(&edit(&next, Some(&centre), 0), &next);
            control += count(&sources, &next);
        }
        eprintln!(
            "demo edits on {}: variation {variation}/30, left half {half}/30, centre box with the next class {boxed}/30, sources read as the next class {control}/30",
            p.name()
        );
        assert!(variation >= 27, "{}: variation {variation}/30", p.name());
        assert!(half >= 22, "{}: left half {half}/30", p.name());
        assert!(
            boxed >= 8 && boxed > control + 5,
            "{}: centre box {boxed}/30 (control {control})",
            p.name()
        );
    }
}
