//! The bundled demo model draws the right shape in the right colour for every class, on
//! every CPU backend and several seeds. Negative controls show the check fails when the
//! class condition is ignored, when the VAE is decoded with the wrong latent scale, and
//! when a shape wears another class's colour.

use flowar_exporter::convert::{ModelMeta, Precision};
use flowar_runtime::image::RgbImage;
use flowar_runtime::{Pipeline, Solver};
use flowar_tests::*;

struct Meta {
    colours: Vec<[f64; 3]>,
    names: Vec<String>,
    shapes: Vec<Shape>,
}

fn meta() -> Meta {
    let text = std::fs::read_to_string(model_source("shapes10").join("meta.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let colours = v["colours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let c = c.as_array().unwrap();
            [
                c[0].as_f64().unwrap(),
                c[1].as_f64().unwrap(),
                c[2].as_f64().unwrap(),
            ]
        })
        .collect();
    let names = v["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    let shapes = names.iter().map(|n| Shape::of_class(n)).collect();
    Meta {
        colours,
        names,
        shapes,
    }
}

/// What an image shows: its foreground share, the share of the foreground in the largest
/// 4-connected blob, the foreground's median colour and the classes ranked by how near
/// their colour is to it.
#[derive(Debug)]
struct Reading {
    shape: ShapeFeatures,
    /// Share of the background (non-foreground pixels) that is not near-neutral light
    /// grey: tinted (channels more than 24 apart) or darker than 200.
    tinted_background: f64,
    foreground: f64,
    largest_blob: f64,
    nearest_class: usize,
    median: [f64; 3],
    ranked: Vec<usize>,
}

/// The five shapes the demo draws; a class's shape is the last word of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Circle,
    Square,
    Triangle,
    Ring,
    Cross,
}

impl Shape {
    fn of_class(name: &str) -> Shape {
        match name.rsplit('-').next().unwrap_or("") {
            "circle" => Shape::Circle,
            "square" => Shape::Square,
            "triangle" => Shape::Triangle,
            "ring" => Shape::Ring,
            "cross" => Shape::Cross,
            other => panic!("unknown shape `{other}` in class `{name}`"),
        }
    }
}

/// Shape features of the largest blob, measured in its bounding box: how much of the box
/// it fills, how much enclosed background (a hole) it has relative to its area, how much
/// of the box's middle third (both ways) and of its four corner cells (a 4x4 grid's
/// corners) it covers. The corners tell a cross (empty) from a triangle (its base fills
/// the lower ones) and a square (all full); the middle tells a ring, even one drawn with a
/// gap, from everything else.
#[derive(Debug, Clone, Copy)]
struct ShapeFeatures {
    fill: f64,
    hole: f64,
    corners: f64,
    center: f64,
}

impl ShapeFeatures {
    /// The shape these features show. Thresholds sit in the gaps measured on the demo
    /// model's output (tract, seeds 0-9, every class): rings' middles are at most 20%
    /// covered and every other shape's at least 76%; circles and squares fill at least 68%
    /// of their box and triangles and crosses at most 64%; squares cover at least 50% of
    /// the corner cells and circles at most 38%; crosses at most 15% and triangles at
    /// least 21%.
    fn shape(&self) -> Shape {
        if self.center < 0.5 || self.hole >= 0.1 {
            Shape::Ring
        } else if self.fill >= 0.665 {
            if self.corners >= 0.44 {
                Shape::Square
            } else {
                Shape::Circle
            }
        } else if self.corners < 0.18 {
            Shape::Cross
        } else {
            Shape::Triangle
        }
    }
}

fn shape_features(blob: &[bool], w: usize, h: usize) -> ShapeFeatures {
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    let mut area = 0usize;
    for (i, _) in blob.iter().enumerate().filter(|(_, &b)| b) {
        let (x, y) = (i % w, i / w);
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x);
        y1 = y1.max(y);
        area += 1;
    }
    if area == 0 {
        return ShapeFeatures {
            fill: 0.0,
            hole: 0.0,
            corners: 0.0,
            center: 0.0,
        };
    }
    let (bw, bh) = (x1 - x0 + 1, y1 - y0 + 1);
    let inside = |x: usize, y: usize| blob[y * w + x];
    // Background reachable from the box's edge; what is left enclosed is a hole.
    let mut outside = vec![false; bw * bh];
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for y in y0..=y1 {
        for x in x0..=x1 {
            let edge = x == x0 || x == x1 || y == y0 || y == y1;
            if edge && !inside(x, y) {
                outside[(y - y0) * bw + (x - x0)] = true;
                stack.push((x, y));
            }
        }
    }
    while let Some((x, y)) = stack.pop() {
        let mut visit = |nx: usize, ny: usize| {
            let k = (ny - y0) * bw + (nx - x0);
            if !inside(nx, ny) && !outside[k] {
                outside[k] = true;
                stack.push((nx, ny));
            }
        };
        if x > x0 {
            visit(x - 1, y);
        }
        if x < x1 {
            visit(x + 1, y);
        }
        if y > y0 {
            visit(x, y - 1);
        }
        if y < y1 {
            visit(x, y + 1);
        }
    }
    let hole = outside.iter().filter(|&&o| !o).count() - area;
    let (cw, ch) = ((bw / 4).max(1), (bh / 4).max(1));
    let mut corner = 0;
    for (cx, cy) in [
        (x0, y0),
        (x1 + 1 - cw, y0),
        (x0, y1 + 1 - ch),
        (x1 + 1 - cw, y1 + 1 - ch),
    ] {
        for y in cy..cy + ch {
            for x in cx..cx + cw {
                corner += inside(x, y) as usize;
            }
        }
    }
    // The middle third of the box, both ways.
    let (mx0, mx1) = (x0 + bw / 3, x0 + (2 * bw).div_ceil(3));
    let (my0, my1) = (y0 + bh / 3, y0 + (2 * bh).div_ceil(3));
    let mut mid_in = 0;
    for y in my0..my1.max(my0 + 1) {
        for x in mx0..mx1.max(mx0 + 1) {
            mid_in += inside(x, y) as usize;
        }
    }
    let mid_cells = (mx1.max(mx0 + 1) - mx0) * (my1.max(my0 + 1) - my0);
    ShapeFeatures {
        center: mid_in as f64 / mid_cells as f64,
        fill: area as f64 / (bw * bh) as f64,
        hole: hole as f64 / area as f64,
        corners: corner as f64 / (4 * cw * ch) as f64,
    }
}

/// Euclidean RGB distance.
fn distance(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn pixel(img: &RgbImage, i: usize) -> [f64; 3] {
    [
        img.pixels[3 * i] as f64,
        img.pixels[3 * i + 1] as f64,
        img.pixels[3 * i + 2] as f64,
    ]
}

/// The background is light grey to white: foreground is anything clearly darker or
/// clearly coloured.
fn foreground(img: &RgbImage) -> Vec<bool> {
    (0..img.width * img.height)
        .map(|i| {
            let p = pixel(img, i);
            let (mx, mn) = (
                p.iter().cloned().fold(0., f64::max),
                p.iter().cloned().fold(255., f64::min),
            );
            mn < 170.0 || mx - mn > 60.0
        })
        .collect()
}

fn read(img: &RgbImage, meta: &Meta) -> Reading {
    let (w, h) = (img.width, img.height);
    let px = |i: usize| pixel(img, i);
    let fg = foreground(img);
    let count = fg.iter().filter(|&&f| f).count();
    let mut seen = vec![false; w * h];
    let mut largest = 0;
    let mut largest_pixels: Vec<usize> = Vec::new();
    for s in 0..w * h {
        if !fg[s] || seen[s] {
            continue;
        }
        let (mut stack, mut size) = (vec![s], 0);
        let mut pixels = Vec::new();
        seen[s] = true;
        while let Some(i) = stack.pop() {
            size += 1;
            pixels.push(i);
            let (x, y) = (i % w, i / w);
            let mut push = |j: usize| {
                if fg[j] && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if x > 0 {
                push(i - 1);
            }
            if x + 1 < w {
                push(i + 1);
            }
            if y > 0 {
                push(i - w);
            }
            if y + 1 < h {
                push(i + w);
            }
        }
        if size > largest {
            largest = size;
            largest_pixels = pixels;
        }
    }
    let mut blob = vec![false; w * h];
    for i in largest_pixels {
        blob[i] = true;
    }
    let mut median = [0.0; 3];
    for (c, m) in median.iter_mut().enumerate() {
        let mut v: Vec<f64> = (0..w * h).filter(|&i| fg[i]).map(|i| px(i)[c]).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        *m = v.get(v.len() / 2).copied().unwrap_or(255.0);
    }
    let mut ranked: Vec<usize> = (0..meta.colours.len()).collect();
    ranked.sort_by(|&a, &b| {
        distance(&meta.colours[a], &median)
            .partial_cmp(&distance(&meta.colours[b], &median))
            .unwrap()
    });
    let bg: Vec<[f64; 3]> = (0..w * h).filter(|&i| !fg[i]).map(px).collect();
    let tinted = bg
        .iter()
        .filter(|p| {
            let (mx, mn) = (
                p.iter().cloned().fold(0., f64::max),
                p.iter().cloned().fold(255., f64::min),
            );
            mx - mn > 24.0 || mn < 200.0
        })
        .count();
    Reading {
        tinted_background: tinted as f64 / bg.len().max(1) as f64,
        shape: shape_features(&blob, w, h),
        foreground: count as f64 / (w * h) as f64,
        largest_blob: if count == 0 {
            0.0
        } else {
            largest as f64 / count as f64
        },
        nearest_class: ranked[0],
        median,
        ranked,
    }
}

/// Whether `img` shows one solid blob in the colour of `class` (the old check, kept to
/// show what the shape check adds). Training jittered the colours, so neighbours such as
/// teal and green can swap places: the class colour must be within 70 RGB units of the
/// shape's median colour and among its three nearest.
fn colour_ok(r: &Reading, class: usize, meta: &Meta) -> bool {
    let colour = distance(&meta.colours[class], &r.median) < 70.0 && r.ranked[..3].contains(&class);
    r.foreground > 0.03 && r.foreground < 0.6 && r.largest_blob > 0.8 && colour
}

/// Whether `img` shows the shape of `class` in its colour on the training images' light,
/// near-neutral background. At most 13% of a correct image's background is tinted
/// (measured: tract, seeds 0-2, every class); decoding with a wrong latent scale tints
/// 5-61%, so the background rejects most of those images even where shape and colour
/// survive.
fn shows_class(img: &RgbImage, class: usize, meta: &Meta) -> Result<(), String> {
    let r = read(img, meta);
    let ok = colour_ok(&r, class, meta)
        && r.shape.shape() == meta.shapes[class]
        && r.tinted_background < 0.2;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected {} but read a {:?} in {r:?} (nearest colour: {})",
            meta.names[class],
            r.shape.shape(),
            meta.names[r.nearest_class]
        ))
    }
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
    let src = model_source("shapes10");
    let meta = ModelMeta::load(&src.join("meta.json")).unwrap();
    convert_files_with(
        &src.join("flowar.pth"),
        &src.join("vae.ckpt"),
        meta,
        latent_scale,
        flowar_exporter::convert::EXTERNAL_DATA_THRESHOLD,
        precision,
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

/// Fewer solver steps at the fine scales (a training-free speed-up, DiSA) changes the
/// outputs but, at this schedule, the demo still draws every class: the same check as the
/// exact run, on both CPU backends and three seeds, allowing three misses in thirty (90%).
#[test]
fn a_reduced_step_schedule_still_draws_every_class() {
    let meta = meta();
    let (_t, dir) = convert_demo(None);
    let schedule: flowar_runtime::sampler::schedule::Steps = "25,25,12,8".parse().unwrap();
    for p in cpu_providers() {
        let mut pipe = load(&dir, p);
        let classes: Vec<usize> = (0..meta.names.len()).collect();
        let mut failures = Vec::new();
        for seed in [0, 1, 2] {
            let req = pipe
                .request()
                .with_images(classes.clone(), 0)
                .unwrap()
                .with_seed(seed)
                .with_steps(&schedule);
            let out = pipe.generate(&req, &mut |_| true).unwrap();
            for (c, img) in out.images.iter().enumerate() {
                if let Err(e) = shows_class(img, c, &meta) {
                    failures.push(format!("seed {seed}: {e}"));
                }
            }
        }
        eprintln!(
            "schedule {schedule} on {}: {} misses of 30",
            p.name(),
            failures.len()
        );
        assert!(
            failures.len() <= 3,
            "{} misses:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}
