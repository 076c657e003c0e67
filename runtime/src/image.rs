//! Pixels out: float images to RGB8, PNG files with their settings as text, grids.

use std::path::Path;

use crate::error::{Error, Result};

/// An RGB8 image, row-major `[height, width, 3]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

/// `round(clamp((x + 1) / 2 * 255, 0, 255))` from `[batch, 3, h, w]` floats to RGB8 images.
pub fn to_rgb8(image: &[f32], batch: usize, h: usize, w: usize) -> Vec<RgbImage> {
    (0..batch)
        .map(|b| {
            let mut pixels = vec![0u8; h * w * 3];
            for c in 0..3 {
                let plane = &image[(b * 3 + c) * h * w..(b * 3 + c + 1) * h * w];
                for (i, &x) in plane.iter().enumerate() {
                    let v = ((x + 1.0) / 2.0 * 255.0)
                        .clamp(0.0, 255.0)
                        .round_ties_even();
                    pixels[i * 3 + c] = v as u8;
                }
            }
            RgbImage {
                width: w,
                height: h,
                pixels,
            }
        })
        .collect()
}

/// Writes `bytes` to `path` whole or not at all ([`crate::atomic_file::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(crate::atomic_file::write_atomic(path, bytes)?)
}

/// Encodes an image as PNG with `text` entries as tEXt chunks.
pub fn encode_png(img: &RgbImage, text: &[(String, String)]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, img.width as u32, img.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            enc.add_text_chunk(k.clone(), v.clone())
                .map_err(|e| Error::BadArgument(format!("PNG text `{k}`: {e}")))?;
        }
        let mut w = enc
            .write_header()
            .map_err(|e| Error::BadArgument(format!("PNG encoding: {e}")))?;
        w.write_image_data(&img.pixels)
            .map_err(|e| Error::BadArgument(format!("PNG encoding: {e}")))?;
    }
    Ok(out)
}

/// Writes a PNG atomically.
pub fn save_png(path: &Path, img: &RgbImage, text: &[(String, String)]) -> Result<()> {
    write_atomic(path, &encode_png(img, text)?)
}

/// Draws `text` in an 8x8 bitmap font at `(x, y)`, scaled by `scale`.
fn draw_text(img: &mut RgbImage, text: &str, x: usize, y: usize, scale: usize, color: [u8; 3]) {
    let mut cx = x;
    for ch in text.chars() {
        let glyph = font8x8::legacy::BASIC_LEGACY
            .get(ch as usize)
            .copied()
            .unwrap_or([0; 8]);
        for (gy, bits) in glyph.iter().enumerate() {
            for gx in 0..8 {
                if bits >> gx & 1 == 1 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let (px, py) = (cx + gx * scale + dx, y + gy * scale + dy);
                            if px < img.width && py < img.height {
                                let i = (py * img.width + px) * 3;
                                img.pixels[i..i + 3].copy_from_slice(&color);
                            }
                        }
                    }
                }
            }
        }
        cx += 8 * scale;
    }
}

/// Lays images out in a grid, each enlarged by `zoom` (nearest) and captioned below.
pub fn labelled_grid(
    images: &[RgbImage],
    labels: &[String],
    columns: usize,
    zoom: usize,
) -> RgbImage {
    let (iw, ih) = images
        .first()
        .map(|i| (i.width * zoom, i.height * zoom))
        .unwrap_or((0, 0));
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let cell_w = iw.max(longest * 8) + 8;
    let cell_h = ih + 8 + 12;
    let columns = columns.max(1);
    let rows = images.len().div_ceil(columns);
    let mut grid = RgbImage {
        width: columns * cell_w,
        height: rows * cell_h,
        pixels: vec![255; columns * cell_w * rows * cell_h * 3],
    };
    for (n, img) in images.iter().enumerate() {
        let (ox, oy) = (
            (n % columns) * cell_w + (cell_w - iw) / 2,
            (n / columns) * cell_h + 4,
        );
        for y in 0..ih {
            for x in 0..iw {
                let s = ((y / zoom) * img.width + x / zoom) * 3;
                let d = ((oy + y) * grid.width + ox + x) * 3;
                grid.pixels[d..d + 3].copy_from_slice(&img.pixels[s..s + 3]);
            }
        }
        if let Some(label) = labels.get(n) {
            let tx =
                (n % columns) * cell_w + (cell_w.saturating_sub(label.chars().count() * 8)) / 2;
            draw_text(&mut grid, label, tx, oy + ih + 3, 1, [30, 30, 30]);
        }
    }
    grid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb8_rounds_and_clamps() {
        // one 1x2 image: channel planes R=[-1, 2], G=[0, 0], B=[1, -3]
        let img = to_rgb8(&[-1.0, 2.0, 0.0, 0.0, 1.0, -3.0], 1, 1, 2);
        assert_eq!(img[0].pixels, vec![0, 128, 255, 255, 128, 0]);
    }
}
