//! What a faster configuration costs in output (`flowar compare`): the same seeds and
//! classes through two configurations (two model folders, two step schedules or two
//! providers), the first taken as the reference. Reported per scale (token error, where the
//! two part ways), per image (pixel max error and PSNR), the time each took in this run,
//! and on the shapes demo the shape-and-colour check's pass rate for both.

use std::time::Instant;

use flowar_runtime::image::RgbImage;
use flowar_runtime::sampler::schedule::Steps;
use flowar_runtime::{Pipeline, Request};
use serde::Serialize;

use crate::demo_check::{self, Meta};

/// One configuration: a loaded model and the steps to run it with.
pub struct Side {
    /// How the report names it, e.g. `models/s-int8 on ort-cpu, steps 25`.
    pub label: String,
    pub pipe: Pipeline,
    /// `None`: the model's steps.
    pub steps: Option<Steps>,
}

impl Side {
    fn request(&self, classes: &[usize], seed: u64) -> flowar_runtime::Result<Request> {
        let r = self
            .pipe
            .request()
            .with_images(classes.to_vec(), 0)?
            .with_seed(seed);
        Ok(match &self.steps {
            Some(s) => r.with_steps(s),
            None => r,
        })
    }
}

/// Token error at one scale, over every image and seed.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleError {
    pub side: usize,
    pub max_abs: f64,
    /// RMS of the difference over the RMS of the reference's tokens.
    pub rel_rms: f64,
}

/// One scale's running sums over every compared image: the largest |a - b|, the sum of
/// (a - b)² and of a². A NaN or infinity on either side stays visible as NaN (`f64::max`
/// would drop it), so `compare` fails on it instead of reporting zero.
#[derive(Debug, Clone, Copy, Default)]
struct ScaleSums {
    max_abs: f64,
    d2: f64,
    r2: f64,
}

impl ScaleSums {
    /// Adds reference tokens `a` against candidate tokens `b`.
    fn add(&mut self, a: &[f32], b: &[f32]) {
        for (&x, &y) in a.iter().zip(b) {
            let d = (x - y).abs() as f64;
            if d.is_nan() || d > self.max_abs {
                self.max_abs = d;
            }
            self.d2 += d * d;
            self.r2 += (x as f64) * (x as f64);
        }
    }

    fn error(&self, side: usize) -> ScaleError {
        ScaleError {
            side,
            max_abs: self.max_abs,
            rel_rms: if self.r2 > 0.0 {
                (self.d2 / self.r2).sqrt()
            } else if self.d2 == 0.0 {
                0.0
            } else {
                // A zero or NaN reference with a difference: no ratio, and not zero.
                f64::NAN
            },
        }
    }
}

/// The comparison of configuration `b` against the reference `a`.
#[derive(Debug, Clone, Serialize)]
pub struct QualityReport {
    pub reference: String,
    pub candidate: String,
    pub seeds: Vec<u64>,
    pub images: usize,
    pub scales: Vec<ScaleError>,
    /// Per image: largest u8 difference and PSNR in dB (infinite when identical).
    pub max_pixel_error: Vec<u8>,
    pub psnr_db: Vec<f64>,
    /// Share of u8 values identical over all images.
    pub identical: f64,
    /// Seconds per image of each side in this run (generation only, loads excluded).
    pub seconds_per_image: [f64; 2],
    /// On the shapes demo: images passing the shape-and-colour check, per side.
    pub demo_check_passes: Option<[usize; 2]>,
}

impl QualityReport {
    /// PSNR summary: (mean over finite values, minimum).
    pub fn psnr_summary(&self) -> (f64, f64) {
        let finite: Vec<f64> = self
            .psnr_db
            .iter()
            .copied()
            .filter(|p| p.is_finite())
            .collect();
        let mean = if finite.is_empty() {
            f64::INFINITY
        } else {
            finite.iter().sum::<f64>() / finite.len() as f64
        };
        let min = self.psnr_db.iter().copied().fold(f64::INFINITY, f64::min);
        (mean, min)
    }

    /// The report as Markdown: one table per scale, one summary table.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "reference: {}\ncandidate: {}\n{} images ({} seeds)\n\n| scale | token max abs | token rel. RMS |\n|---|---:|---:|\n",
            self.reference,
            self.candidate,
            self.images,
            self.seeds.len()
        );
        for e in &self.scales {
            s += &format!(
                "| {0}x{0} | {1:.3e} | {2:.2}% |\n",
                e.side,
                e.max_abs,
                100.0 * e.rel_rms
            );
        }
        let (mean, min) = self.psnr_summary();
        let worst = self.max_pixel_error.iter().copied().max().unwrap_or(0);
        s += &format!(
            "\n| images: PSNR mean / min | max pixel error | identical u8 | s/image ref / cand (speed-up) |\n|---|---:|---:|---:|\n| {mean:.1} / {min:.1} dB | {worst} | {:.2}% | {:.2} / {:.2} ({:.2}×) |\n",
            100.0 * self.identical,
            self.seconds_per_image[0],
            self.seconds_per_image[1],
            self.seconds_per_image[0] / self.seconds_per_image[1]
        );
        if let Some([a, b]) = self.demo_check_passes {
            s += &format!(
                "\nshape-and-colour check: reference {a}/{n} ({:.0}%), candidate {b}/{n} ({:.0}%)\n",
                100.0 * a as f64 / self.images as f64,
                100.0 * b as f64 / self.images as f64,
                n = self.images
            );
        }
        s
    }
}

/// PSNR of two RGB8 images in dB; infinite when they are identical.
pub fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let mse = a
        .pixels
        .iter()
        .zip(&b.pixels)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.pixels.len().max(1) as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// Runs `classes` for every seed through both sides (one batch per seed) and compares
/// `b` against `a`. `check`: the shapes demo's card, to report its pass rate.
pub fn compare(
    a: &mut Side,
    b: &mut Side,
    classes: &[usize],
    seeds: &[u64],
    check: Option<&Meta>,
    progress: &mut dyn FnMut(&str),
) -> flowar_runtime::Result<QualityReport> {
    let scales = a.pipe.manifest().scales.clone();
    if b.pipe.manifest().scales != scales
        || b.pipe.manifest().image_size != a.pipe.manifest().image_size
    {
        return Err(flowar_runtime::Error::BadArgument(format!(
            "the two models differ in scales ({:?} vs {:?}) or image size: compare configurations of one model",
            scales,
            b.pipe.manifest().scales
        )));
    }
    let mut sums = vec![ScaleSums::default(); scales.len()];
    let mut report = QualityReport {
        reference: a.label.clone(),
        candidate: b.label.clone(),
        seeds: seeds.to_vec(),
        images: 0,
        scales: Vec::new(),
        max_pixel_error: Vec::new(),
        psnr_db: Vec::new(),
        identical: 0.0,
        seconds_per_image: [0.0; 2],
        demo_check_passes: check.map(|_| [0, 0]),
    };
    let (mut same, mut values) = (0usize, 0usize);
    let mut seconds = [0f64; 2];
    for &seed in seeds {
        let mut outs = Vec::new();
        for (k, side) in [&mut *a, &mut *b].into_iter().enumerate() {
            progress(&format!("seed {seed}: {}", side.label));
            let req = side.request(classes, seed)?;
            let t = Instant::now();
            let out = side.pipe.generate(&req, &mut |_| true)?;
            seconds[k] += t.elapsed().as_secs_f64();
            outs.push(out);
        }
        let (ra, rb) = (&outs[0], &outs[1]);
        for (sum, (ta, tb)) in sums
            .iter_mut()
            .zip(ra.scale_tokens.iter().zip(&rb.scale_tokens))
        {
            sum.add(ta, tb);
        }
        for (c, (ia, ib)) in classes.iter().zip(ra.images.iter().zip(&rb.images)) {
            let worst = ia
                .pixels
                .iter()
                .zip(&ib.pixels)
                .map(|(&x, &y)| x.abs_diff(y))
                .max()
                .unwrap_or(0);
            same += ia
                .pixels
                .iter()
                .zip(&ib.pixels)
                .filter(|(x, y)| x == y)
                .count();
            values += ia.pixels.len();
            report.max_pixel_error.push(worst);
            report.psnr_db.push(psnr(ia, ib));
            if let (Some(meta), Some(passes)) = (check, report.demo_check_passes.as_mut()) {
                passes[0] += demo_check::shows_class(ia, *c, meta).is_ok() as usize;
                passes[1] += demo_check::shows_class(ib, *c, meta).is_ok() as usize;
            }
        }
        report.images += classes.len();
    }
    report.scales = scales
        .iter()
        .zip(&sums)
        .map(|(&side, sum)| sum.error(side))
        .collect();
    report.identical = same as f64 / values.max(1) as f64;
    let n = report.images.max(1) as f64;
    report.seconds_per_image = [seconds[0] / n, seconds[1] / n];
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_of_identical_images_is_infinite_and_falls_with_error() {
        let a = RgbImage {
            width: 2,
            height: 1,
            pixels: vec![10, 20, 30, 40, 50, 60],
        };
        assert!(psnr(&a, &a).is_infinite());
        let mut b = a.clone();
        b.pixels[0] += 1;
        let mut c = a.clone();
        c.pixels[0] += 10;
        // one value off by 1 in 6: mse 1/6, psnr = 10 log10(255^2 * 6)
        assert!((psnr(&a, &b) - 10.0 * (255.0f64 * 255.0 * 6.0).log10()).abs() < 1e-9);
        assert!(psnr(&a, &c) < psnr(&a, &b));
    }

    /// #30 item 7: a NaN or infinite token on either side makes the scale's error NaN
    /// (compare then fails), never a finite number; identical tokens give exactly zero.
    #[test]
    fn scale_errors_keep_nan_and_infinity_visible() {
        let mut same = ScaleSums::default();
        same.add(&[1.0, -2.0], &[1.0, -2.0]);
        let e = same.error(4);
        assert_eq!((e.side, e.max_abs, e.rel_rms), (4, 0.0, 0.0));

        let mut s = ScaleSums::default();
        // The NaN comes first: a fold that keeps the larger of two values drops it.
        s.add(&[1.0, 2.0], &[f32::NAN, 2.5]);
        let e = s.error(1);
        assert!(e.max_abs.is_nan() && e.rel_rms.is_nan(), "{e:?}");

        let mut s = ScaleSums::default();
        s.add(&[f32::NAN, 1.0], &[0.0, 1.0]);
        assert!(s.error(1).max_abs.is_nan());

        let mut s = ScaleSums::default();
        s.add(&[1.0], &[f32::INFINITY]);
        let e = s.error(1);
        assert!(e.max_abs.is_infinite() && e.rel_rms.is_infinite(), "{e:?}");

        // A zero reference with a difference has no ratio: NaN, not zero.
        let mut s = ScaleSums::default();
        s.add(&[0.0, 0.0], &[0.5, 0.0]);
        let e = s.error(1);
        assert_eq!(e.max_abs, 0.5);
        assert!(e.rel_rms.is_nan(), "{e:?}");
    }
}
