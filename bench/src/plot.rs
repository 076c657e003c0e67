//! `--plot`: stacked per-stage bars (median seconds per image) per provider and batch.
//!
//! Shapes are drawn with `plotters`' bitmap backend; text uses the 8x8 bitmap font of the
//! `font8x8` crate, drawn pixel by pixel, so no system font or font file is needed.

use std::path::Path;

use font8x8::UnicodeFonts;
use plotters::prelude::*;

use crate::report::Report;

const W: u32 = 960;
const H: u32 = 540;
const STAGES: [(&str, RGBColor); 7] = [
    ("VAE encoder", RGBColor(0x9c, 0x75, 0x5f)),
    ("AR", RGBColor(0x4e, 0x79, 0xa7)),
    ("flow head", RGBColor(0xf2, 0x8e, 0x2b)),
    ("solver step", RGBColor(0x76, 0xb7, 0xb2)),
    ("upsample", RGBColor(0x59, 0xa1, 0x4f)),
    ("VAE decode", RGBColor(0xe1, 0x57, 0x59)),
    ("other", RGBColor(0xba, 0xb0, 0xac)),
];

/// Draws `text` into an RGB buffer at `(x, y)` (top left), each font pixel `scale` wide.
fn text(buf: &mut [u8], x: i32, y: i32, s: &str, scale: i32, rgb: (u8, u8, u8)) {
    for (ci, ch) in s.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::LATIN_FONTS.get(ch))
            .unwrap_or([0; 8]);
        for (gy, row) in glyph.iter().enumerate() {
            for gx in 0..8 {
                if row >> gx & 1 == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let px = x + (ci as i32 * 8 + gx) * scale + dx;
                        let py = y + gy as i32 * scale + dy;
                        if px >= 0 && py >= 0 && (px as u32) < W && (py as u32) < H {
                            let o = (py as usize * W as usize + px as usize) * 3;
                            buf[o..o + 3].copy_from_slice(&[rgb.0, rgb.1, rgb.2]);
                        }
                    }
                }
            }
        }
    }
}

/// A bar's task in a few characters: `gen`, `k=2`, `in c k=2`, `out l`.
fn short_task(label: &str) -> String {
    let mut out = label
        .replace("generate", "gen")
        .replace("variation ", "")
        .replace("outpaint ", "out ")
        .replace("inpaint ", "in ")
        .replace("center", "c")
        .replace("left", "l");
    out.truncate(10);
    out
}

/// A "nice" axis step for a maximum `max` with about five ticks.
fn tick_step(max: f64) -> f64 {
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|k| k * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// Renders the chart to `path` (PNG).
pub fn write_png(report: &Report, path: &Path) -> std::io::Result<()> {
    // One bar per provider and batch that ran; values are median seconds per image.
    // Each bar is labelled with the median end-to-end time, as the tables give it (the
    // stacked stage medians need not add up to it exactly).
    let mut bars: Vec<(String, [f64; STAGES.len()])> = Vec::new();
    // In edit mode each bar's task, under its provider and batch.
    let mut tasks: Vec<String> = Vec::new();
    let mut totals: Vec<f64> = Vec::new();
    let mut missing = Vec::new();
    for p in &report.providers {
        if !p.available {
            missing.push(p.provider.clone());
            continue;
        }
        for b in &p.batches {
            let per = 1.0 / b.batch as f64;
            totals.push(b.seconds_per_image.median);
            tasks.push(if report.settings.mode == "edit" {
                short_task(b.task_label())
            } else {
                String::new()
            });
            bars.push((
                format!("{} b{}", p.provider, b.batch),
                [
                    b.encoder_s.map_or(0.0, |e| e.median) * per,
                    b.ar_s.median * per,
                    b.flow_s.median * per,
                    b.solver_s.median * per,
                    b.upsample_s.median * per,
                    b.vae_s.median * per,
                    b.other_s.median.max(0.0) * per,
                ],
            ));
        }
    }
    // The legend lists the encoder only where a bar has one.
    let legend: Vec<usize> = (0..STAGES.len())
        .filter(|&k| k != 0 || bars.iter().any(|(_, v)| v[0] > 0.0))
        .collect();
    let max = bars
        .iter()
        .map(|(_, v)| v.iter().sum::<f64>())
        .fold(0.0, f64::max)
        .max(1e-6);
    let step = tick_step(max);
    let top = (max / step).ceil() * step;

    let (left, right, plot_top, bottom) = (90i32, W as i32 - 190, 60i32, H as i32 - 70);
    let y_of = |v: f64| bottom - ((v / top) * (bottom - plot_top) as f64).round() as i32;
    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        let err = |e: DrawingAreaErrorKind<_>| std::io::Error::other(format!("plot: {e:?}"));
        area.fill(&WHITE).map_err(err)?;
        // Grid lines and axes.
        let mut v = 0.0;
        while v <= top + 1e-12 {
            let y = y_of(v);
            area.draw(&PathElement::new(
                vec![(left, y), (right, y)],
                RGBColor(0xdd, 0xdd, 0xdd),
            ))
            .map_err(err)?;
            v += step;
        }
        area.draw(&PathElement::new(
            vec![(left, plot_top), (left, bottom), (right, bottom)],
            BLACK,
        ))
        .map_err(err)?;
        let n = bars.len().max(1) as i32;
        let slot = (right - left) / n;
        let width = (slot * 3 / 5).min(120);
        for (i, (_, vals)) in bars.iter().enumerate() {
            let x0 = left + slot * i as i32 + (slot - width) / 2;
            let mut acc = 0.0;
            for (k, val) in vals.iter().enumerate() {
                let (y0, y1) = (y_of(acc), y_of(acc + val));
                acc += val;
                if y0 > y1 {
                    area.draw(&Rectangle::new(
                        [(x0, y1), (x0 + width, y0)],
                        STAGES[k].1.filled(),
                    ))
                    .map_err(err)?;
                }
            }
        }
        // Legend swatches.
        for (row, &k) in legend.iter().enumerate() {
            let color = STAGES[k].1;
            let y = plot_top + 10 + 26 * row as i32;
            area.draw(&Rectangle::new(
                [(right + 20, y), (right + 36, y + 16)],
                color.filled(),
            ))
            .map_err(err)?;
        }
        area.present().map_err(err)?;
    }

    // Text.
    let dark = (0x22, 0x22, 0x22);
    let title = format!("{}: seconds per image by stage", report.model.name);
    // 8x8 glyphs: double size when the title fits the width, else single.
    let scale = if 20 + title.chars().count() as u32 * 16 <= W {
        2
    } else {
        1
    };
    text(&mut buf, 20, 12, &title, scale, dark);
    let sub = format!(
        "{} steps ({}), cfg {}, batch {:?}; medians of {} runs; {} ({} cores), {}",
        report.settings.steps,
        report.settings.solver,
        report.settings.cfg,
        report.settings.batches,
        report.settings.runs,
        report.machine.cpu,
        report.machine.cores,
        report.date
    );
    text(&mut buf, 20, 34, &sub, 1, dark);
    let mut v = 0.0;
    while v <= top + 1e-12 {
        let label = if step >= 1.0 {
            format!("{v:.0}")
        } else if step >= 0.1 {
            format!("{v:.1}")
        } else {
            format!("{v:.3}")
        };
        let x = left - 10 - 8 * label.len() as i32;
        text(&mut buf, x, y_of(v) - 4, &label, 1, dark);
        v += step;
    }
    text(&mut buf, 10, plot_top - 14, "s / image", 1, dark);
    let n = bars.len().max(1) as i32;
    let slot = (right - left) / n;
    for (i, ((label, vals), seconds)) in bars.iter().zip(&totals).enumerate() {
        let centre = left + slot * i as i32 + slot / 2;
        let task = &tasks[i];
        if task.is_empty() {
            let x = centre - 4 * label.len() as i32;
            text(&mut buf, x, bottom + 10, label, 1, dark);
        } else {
            // Edit mode: each bar's task, and its provider and batch once per group.
            text(
                &mut buf,
                centre - 4 * task.chars().count() as i32,
                bottom + 10,
                task,
                1,
                dark,
            );
            if i == 0 || bars[i - 1].0 != *label {
                let x0 = left + slot * i as i32 + (slot - (slot * 3 / 5).min(120)) / 2;
                text(&mut buf, x0, bottom + 24, label, 1, dark);
            }
        }
        let total = format!("{seconds:.2} s");
        let y = y_of(vals.iter().sum::<f64>()) - 12;
        text(
            &mut buf,
            centre - 4 * total.len() as i32,
            y,
            &total,
            1,
            dark,
        );
    }
    for (row, &k) in legend.iter().enumerate() {
        let y = plot_top + 10 + 26 * row as i32 + 4;
        text(&mut buf, right + 44, y, STAGES[k].0, 1, dark);
    }
    if !missing.is_empty() {
        let note = format!("not available: {}", missing.join(", "));
        text(&mut buf, left, H as i32 - 30, &note, 1, (0x88, 0x22, 0x22));
    }

    let file = std::fs::File::create(path)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), W, H);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(std::io::Error::other)?;
    w.write_image_data(&buf).map_err(std::io::Error::other)?;
    w.finish().map_err(std::io::Error::other)?;
    Ok(())
}
