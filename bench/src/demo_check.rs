//! The shapes demo's quality check: does an image show its class's shape (circle, square,
//! triangle, ring, cross) in its colour on a clean background? Read from the largest
//! blob's fill, corners, middle and holes and the foreground's median colour. Used by the
//! demo tests (`tests/demo_quality.rs`, with negative controls) and by `flowar compare`
//! to report a pass rate for two configurations of the demo model.

use std::path::Path;

use flowar_runtime::image::RgbImage;

/// The demo model card's classes: each one's name, colour and shape.
#[derive(Debug, Clone)]
pub struct Meta {
    pub colours: Vec<[f64; 3]>,
    pub names: Vec<String>,
    pub shapes: Vec<Shape>,
}

impl Meta {
    /// Reads the demo's `meta.json` (its `classes` and `colours`); a card without them
    /// is not the demo's, and an error says so.
    pub fn load(path: &Path) -> Result<Meta, MetaError> {
        let at = || path.to_path_buf();
        let text =
            std::fs::read_to_string(path).map_err(|source| MetaError::Io { path: at(), source })?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| MetaError::Json { path: at(), source })?;
        let bad = || MetaError::NotDemo { path: at() };
        let colours = v["colours"]
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|c| {
                let c = c.as_array().filter(|c| c.len() == 3).ok_or_else(bad)?;
                let f = |i: usize| c[i].as_f64().ok_or_else(bad);
                Ok([f(0)?, f(1)?, f(2)?])
            })
            .collect::<Result<Vec<_>, MetaError>>()?;
        let names = v["classes"]
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|n| n.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<Vec<_>, MetaError>>()?;
        if names.len() != colours.len() {
            return Err(bad());
        }
        let shapes = names
            .iter()
            .map(|n| {
                Shape::of_class(n).ok_or_else(|| MetaError::NoShape {
                    path: at(),
                    class: n.clone(),
                })
            })
            .collect::<Result<_, MetaError>>()?;
        Ok(Meta {
            colours,
            names,
            shapes,
        })
    }
}

/// Why a `meta.json` is not the shapes demo's card.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Json {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: no `classes` and `colours` of the shapes demo", path.display())]
    NotDemo { path: std::path::PathBuf },
    #[error("{}: class `{class}` names no shape", path.display())]
    NoShape {
        path: std::path::PathBuf,
        class: String,
    },
}

/// What an image shows: its foreground share, the share of the foreground in the largest
/// 4-connected blob, the foreground's median colour and the classes ranked by how near
/// their colour is to it.
#[derive(Debug)]
pub struct Reading {
    pub shape: ShapeFeatures,
    /// Share of the background (non-foreground pixels) that is not near-neutral light
    /// grey: tinted (channels more than 24 apart) or darker than 200.
    pub tinted_background: f64,
    pub foreground: f64,
    pub largest_blob: f64,
    pub nearest_class: usize,
    pub median: [f64; 3],
    pub ranked: Vec<usize>,
}

/// The five shapes the demo draws; a class's shape is the last word of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Ring,
    Cross,
}

impl Shape {
    /// The shape a class name ends in (`red-circle`), if any.
    pub fn of_class(name: &str) -> Option<Shape> {
        match name.rsplit('-').next().unwrap_or("") {
            "circle" => Some(Shape::Circle),
            "square" => Some(Shape::Square),
            "triangle" => Some(Shape::Triangle),
            "ring" => Some(Shape::Ring),
            "cross" => Some(Shape::Cross),
            _ => None,
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
pub struct ShapeFeatures {
    pub fill: f64,
    pub hole: f64,
    pub corners: f64,
    pub center: f64,
}

impl ShapeFeatures {
    /// The shape these features show. Thresholds sit in the gaps measured on the demo
    /// model's output (tract, seeds 0-9, every class): rings' middles are at most 20%
    /// covered and every other shape's at least 76%; circles and squares fill at least 68%
    /// of their box and triangles and crosses at most 64%; squares cover at least 50% of
    /// the corner cells and circles at most 38%; crosses at most 15% and triangles at
    /// least 21%.
    pub fn shape(&self) -> Shape {
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

pub fn shape_features(blob: &[bool], w: usize, h: usize) -> ShapeFeatures {
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
pub fn distance(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

pub fn pixel(img: &RgbImage, i: usize) -> [f64; 3] {
    [
        img.pixels[3 * i] as f64,
        img.pixels[3 * i + 1] as f64,
        img.pixels[3 * i + 2] as f64,
    ]
}

/// The background is light grey to white: foreground is anything clearly darker or
/// clearly coloured.
pub fn foreground(img: &RgbImage) -> Vec<bool> {
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

pub fn read(img: &RgbImage, meta: &Meta) -> Reading {
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
pub fn colour_ok(r: &Reading, class: usize, meta: &Meta) -> bool {
    let colour = distance(&meta.colours[class], &r.median) < 70.0 && r.ranked[..3].contains(&class);
    r.foreground > 0.03 && r.foreground < 0.6 && r.largest_blob > 0.8 && colour
}

/// Whether `img` shows the shape of `class` in its colour on the training images' light,
/// near-neutral background. At most 13% of a correct image's background is tinted
/// (measured: tract, seeds 0-2, every class); decoding with a wrong latent scale tints
/// 5-61%, so the background rejects most of those images even where shape and colour
/// survive.
pub fn shows_class(img: &RgbImage, class: usize, meta: &Meta) -> Result<(), NotShown> {
    let r = read(img, meta);
    let ok = colour_ok(&r, class, meta)
        && r.shape.shape() == meta.shapes[class]
        && r.tinted_background < 0.2;
    if ok {
        Ok(())
    } else {
        Err(NotShown {
            expected: meta.names[class].clone(),
            shape: r.shape.shape(),
            nearest: meta.names[r.nearest_class].clone(),
            reading: Box::new(r),
        })
    }
}

/// An image that does not show its class: what was expected and what was read.
#[derive(Debug, thiserror::Error)]
#[error("expected {expected} but read a {shape:?} in {reading:?} (nearest colour: {nearest})")]
pub struct NotShown {
    pub expected: String,
    pub shape: Shape,
    pub nearest: String,
    pub reading: Box<Reading>,
}
