//! An edit's inputs: source images and masks read from PNG files of any colour type,
//! fitted to the model's size the way the reference's data pipeline prepares images
//! (ADM's `center_crop_arr`), the encoder's input tensor, and compositing the source back.
//!
//! Fitting an image of another size: while its short side is at least twice the model's
//! size it is halved with a box filter, then resized (bicubic, Catmull-Rom) so the short
//! side is the model's size, then centre-cropped. Masks take the same geometry with
//! nearest-neighbour resizing, so a mask stays binary where it was.

use std::path::Path;

use image::imageops::{self, FilterType};
use image::{GrayImage, RgbaImage};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::image::RgbImage;
use crate::sampler::Mask;
use crate::tensor::Tensor;

/// A source image ready for the encoder.
#[derive(Debug, Clone)]
pub struct Source {
    pub image: RgbImage,
    /// The mask its alpha channel gives (transparent = regenerate), when it has a
    /// non-opaque alpha channel.
    pub alpha_mask: Option<Mask>,
    /// Its size as read, when that was not the model's (it was fitted).
    pub fitted_from: Option<(u32, u32)>,
    /// sha256 of the file (or buffer) it was read from, for the output's metadata.
    pub sha256: String,
}

/// sha256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode(bytes: &[u8], what: &str) -> Result<image::DynamicImage> {
    image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
        .map_err(|e| Error::BadArgument(format!("{what}: not a readable PNG: {e}")))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// The final size and crop offset `center_crop_arr` gives a `w x h` image for `size`.
fn fit_geometry(mut w: u32, mut h: u32, size: u32) -> (u32, u32, u32, u32, u32) {
    let mut halvings = 0;
    while w.min(h) >= 2 * size {
        w /= 2;
        h /= 2;
        halvings += 1;
    }
    let scale = size as f64 / w.min(h) as f64;
    let nw = ((w as f64 * scale).round_ties_even() as u32).max(size);
    let nh = ((h as f64 * scale).round_ties_even() as u32).max(size);
    (nw, nh, (nw - size) / 2, (nh - size) / 2, halvings)
}

/// Halves an image with a 2x2 box filter (PIL's `BOX` for an exact halving).
fn box_halve(img: &RgbaImage) -> RgbaImage {
    let (w, h) = (img.width() / 2, img.height() / 2);
    RgbaImage::from_fn(w, h, |x, y| {
        let mut acc = [0u32; 4];
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            let p = img.get_pixel(2 * x + dx, 2 * y + dy).0;
            for c in 0..4 {
                acc[c] += p[c] as u32;
            }
        }
        image::Rgba(acc.map(|v| ((v + 2) / 4) as u8))
    })
}

/// `center_crop_arr` (see the module docs) of an RGBA image.
fn fit_rgba(img: RgbaImage, size: u32) -> RgbaImage {
    let (nw, nh, x0, y0, halvings) = fit_geometry(img.width(), img.height(), size);
    let mut img = img;
    for _ in 0..halvings {
        img = box_halve(&img);
    }
    let img = imageops::resize(&img, nw, nh, FilterType::CatmullRom);
    imageops::crop_imm(&img, x0, y0, size, size).to_image()
}

/// The same geometry for a mask, nearest-neighbour.
fn fit_mask(img: &GrayImage, size: u32) -> GrayImage {
    let (nw, nh, x0, y0, _) = fit_geometry(img.width(), img.height(), size);
    let img = imageops::resize(img, nw, nh, FilterType::Nearest);
    imageops::crop_imm(&img, x0, y0, size, size).to_image()
}

/// A source image from PNG bytes (`what` names it in errors), fitted to `size`.
pub fn source_from_png(bytes: &[u8], what: &str, size: usize) -> Result<Source> {
    let img = decode(bytes, what)?;
    let has_alpha = img.color().has_alpha();
    source_from_rgba(img.to_rgba8(), has_alpha, sha256_hex(bytes), size)
}

/// A source image from an 8-bit pixel buffer `[height, width, channels]` (3: RGB, 4: RGBA,
/// whose alpha is a mask where it is not opaque), fitted to `size`: what the C ABI and
/// the Python package hand over.
pub fn source_from_pixels(
    pixels: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    size: usize,
) -> Result<Source> {
    if !(channels == 3 || channels == 4) || width == 0 || height == 0 {
        return Err(Error::BadArgument(format!(
            "a source image is {width}x{height} with {channels} channels; expected a non-empty \
             image with 3 (RGB) or 4 (RGBA) channels"
        )));
    }
    if pixels.len() != width * height * channels {
        return Err(Error::BadArgument(format!(
            "a {width}x{height} image with {channels} channels holds {} bytes, not {}",
            width * height * channels,
            pixels.len()
        )));
    }
    let rgba = RgbaImage::from_fn(width as u32, height as u32, |x, y| {
        let i = (y as usize * width + x as usize) * channels;
        let a = if channels == 4 { pixels[i + 3] } else { 255 };
        image::Rgba([pixels[i], pixels[i + 1], pixels[i + 2], a])
    });
    source_from_rgba(rgba, channels == 4, sha256_hex(pixels), size)
}

/// A mask from an 8-bit grey buffer `[height, width]` (any value above 0 = regenerate), of
/// its image's size as given or the model's `size`; fitted like the image.
pub fn mask_from_grey(
    values: &[u8],
    width: usize,
    height: usize,
    source_size: (usize, usize),
    size: usize,
) -> Result<Mask> {
    if values.len() != width * height {
        return Err(Error::BadArgument(format!(
            "a {width}x{height} mask holds {} bytes, not {}",
            width * height,
            values.len()
        )));
    }
    if (width, height) != source_size && (width, height) != (size, size) {
        return Err(Error::BadArgument(format!(
            "the mask is {width}x{height} but its image is {}x{} (a mask must be its image's \
             size, or the model's {size}x{size})",
            source_size.0, source_size.1
        )));
    }
    let grey =
        GrayImage::from_raw(width as u32, height as u32, values.to_vec()).expect("length checked");
    let grey = if (width, height) == (size, size) {
        grey
    } else {
        fit_mask(&grey, size as u32)
    };
    Ok(Mask {
        size,
        values: grey.into_raw(),
    })
}

fn source_from_rgba(
    rgba: RgbaImage,
    has_alpha: bool,
    sha256: String,
    size: usize,
) -> Result<Source> {
    let (w, h) = rgba.dimensions();
    let size32 = size as u32;
    let alpha = has_alpha
        .then(|| GrayImage::from_fn(w, h, |x, y| image::Luma([255 - rgba.get_pixel(x, y).0[3]])))
        .filter(|m| m.pixels().any(|p| p.0[0] > 0));
    let (rgba, alpha, fitted_from) = if (w, h) == (size32, size32) {
        (rgba, alpha, None)
    } else {
        let a = alpha.map(|m| fit_mask(&m, size32));
        (fit_rgba(rgba, size32), a, Some((w, h)))
    };
    let pixels = rgba
        .pixels()
        .flat_map(|p| [p.0[0], p.0[1], p.0[2]])
        .collect();
    Ok(Source {
        image: RgbImage {
            width: size,
            height: size,
            pixels,
        },
        alpha_mask: alpha.map(|m| Mask {
            size,
            values: m.into_raw(),
        }),
        fitted_from,
        sha256,
    })
}

/// A source image from a PNG file, fitted to `size`.
pub fn load_source(path: &Path, size: usize) -> Result<Source> {
    source_from_png(&read(path)?, &path.display().to_string(), size)
}

/// A mask from PNG bytes: grey (or the brightest of R, G, B), any value above 0 =
/// regenerate. It must be the size of its source image as read (`source_size`), or the
/// model's `size`; it is fitted like the image.
pub fn mask_from_png(
    bytes: &[u8],
    what: &str,
    source_size: (u32, u32),
    size: usize,
) -> Result<Mask> {
    let rgb = decode(bytes, what)?.to_rgb8();
    let (w, h) = rgb.dimensions();
    let grey: Vec<u8> = rgb
        .pixels()
        .map(|p| p.0[0].max(p.0[1]).max(p.0[2]))
        .collect();
    let source = (source_size.0 as usize, source_size.1 as usize);
    mask_from_grey(&grey, w as usize, h as usize, source, size)
        .map_err(|e| Error::BadArgument(format!("{what}: {e}")))
}

/// The encoder's input `[n, 3, H, W]`: `u8 / 127.5 - 1`, channel planes.
pub fn encoder_input(images: &[RgbImage]) -> Result<Tensor> {
    let first = images
        .first()
        .ok_or_else(|| Error::BadArgument("no source images".into()))?;
    let (h, w) = (first.height, first.width);
    let plane = h * w;
    let mut data = vec![0f32; images.len() * 3 * plane];
    for (i, img) in images.iter().enumerate() {
        if (img.height, img.width) != (h, w) || img.pixels.len() != plane * 3 {
            return Err(Error::BadArgument(format!(
                "source image {i} is {}x{} ({} bytes), image 0 is {w}x{h}",
                img.width,
                img.height,
                img.pixels.len()
            )));
        }
        for (p, px) in img.pixels.chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[(i * 3 + c) * plane + p] = px[c] as f32 / 127.5 - 1.0;
            }
        }
    }
    Ok(Tensor::f32(vec![images.len(), 3, h, w], data))
}

/// Pastes `source`'s pixels into `out` wherever `mask` keeps them (value 0): the kept
/// region is then the input's, bit for bit.
pub fn composite(out: &mut RgbImage, source: &RgbImage, mask: &Mask) -> Result<()> {
    if (out.width, out.height) != (source.width, source.height)
        || mask.values.len() != out.width * out.height
    {
        return Err(Error::BadArgument(format!(
            "composite: output {}x{}, source {}x{}, mask {} pixels",
            out.width,
            out.height,
            source.width,
            source.height,
            mask.values.len()
        )));
    }
    for (p, &m) in mask.values.iter().enumerate() {
        if m == 0 {
            out.pixels[p * 3..p * 3 + 3].copy_from_slice(&source.pixels[p * 3..p * 3 + 3]);
        }
    }
    Ok(())
}

/// The rule, as every edited image records it (`flowar:edit_rule`), in one line.
pub const RULE: &str = "teacher forcing: tokens = (encoder mean - shift) * scale; G_k = \
area_downsample(tokens, s_k); regenerate where area_downsample(mask, s_k) > 0 (scales < \
keep_scales known whole); after every step known tokens = (1 - t_next) G_k + t_next noise_k";

/// One source image, fitted to the model's size, with its mask (inverted already when the
/// edit out-paints) and what the output's text records of them.
pub struct EditInput {
    pub source: Source,
    pub mask: Option<Mask>,
    /// The mask file's sha256, `alpha:<sha256 of the image>`, or `none` (as `flowar edit`).
    pub mask_hash: String,
    /// How errors name it: `image 3` or its path.
    pub name: String,
}

/// Source `i` from an 8-bit buffer `[height, width, channels]` (3 or 4; RGBA's alpha is
/// the mask where no mask is given) and its optional grey mask `[mask_h, mask_w]`.
pub fn from_pixels(
    i: usize,
    image: (&[u8], usize, usize, usize),
    mask: Option<(&[u8], usize, usize)>,
    invert: bool,
    size: usize,
) -> Result<EditInput> {
    let (pixels, h, w, c) = image;
    let name = format!("edit image {i}");
    let source = source_from_pixels(pixels, w, h, c, size).map_err(|e| named(&name, e))?;
    let (mask, mask_hash) = match mask {
        Some((values, mh, mw)) => {
            let m = mask_from_grey(values, mw, mh, (w, h), size)
                .map_err(|e| named(&format!("the mask of {name}"), e))?;
            (Some(m), sha256_hex(values))
        }
        None => alpha(&source),
    };
    Ok(EditInput {
        mask: orient(mask, invert),
        source,
        mask_hash,
        name,
    })
}

/// A source image from a PNG file and its optional mask file (`flowar edit --image
/// --mask`).
pub fn from_files(
    path: &Path,
    mask_path: Option<&Path>,
    invert: bool,
    size: usize,
) -> Result<EditInput> {
    let source = load_source(path, size)?;
    let from = source.fitted_from.unwrap_or((size as u32, size as u32));
    let (mask, mask_hash) = match mask_path {
        Some(mp) => {
            let bytes = std::fs::read(mp).map_err(|e| Error::io(mp, e))?;
            let m = mask_from_png(&bytes, &mp.display().to_string(), from, size)?;
            (Some(m), sha256_hex(&bytes))
        }
        None => alpha(&source),
    };
    Ok(EditInput {
        mask: orient(mask, invert),
        source,
        mask_hash,
        name: path.display().to_string(),
    })
}

/// A `BadArgument` prefixed with what it is about.
fn named(what: &str, e: Error) -> Error {
    match e {
        Error::BadArgument(m) => Error::BadArgument(format!("{what}: {m}")),
        other => other,
    }
}

fn alpha(source: &Source) -> (Option<Mask>, String) {
    match &source.alpha_mask {
        Some(m) => (Some(m.clone()), format!("alpha:{}", source.sha256)),
        None => (None, "none".to_string()),
    }
}

fn orient(mask: Option<Mask>, invert: bool) -> Option<Mask> {
    match (mask, invert) {
        (Some(m), true) => Some(m.inverted()),
        (m, _) => m,
    }
}

/// The checks of a set of inputs: out-painting needs a mask, compositing one per
/// image.
pub fn check(inputs: &[EditInput], invert: bool, composite: bool) -> Result<()> {
    if invert && inputs.iter().all(|i| i.mask.is_none()) {
        return Err(Error::BadArgument(
            "inverting the mask (out-painting) needs a mask: give one, or an RGBA image whose alpha is the mask".into(),
        ));
    }
    if composite {
        if let Some(i) = inputs.iter().find(|i| i.mask.is_none()) {
            return Err(Error::BadArgument(format!(
                "composite pastes the source back outside the mask, but {} has no mask \
                 (give one, or an RGBA image whose alpha is the mask)",
                i.name
            )));
        }
    }
    Ok(())
}

/// What kind of edit a run is (`flowar:edit`).
pub fn task(any_mask: bool, keep_scales: usize, invert: bool) -> &'static str {
    match (any_mask, keep_scales > 0) {
        (false, _) => "variation",
        (true, _) if invert => "outpaint",
        (true, false) => "inpaint",
        (true, true) => "inpaint+keep_scales",
    }
}

/// The PNG text keys an edited image carries after the generation's
/// ([`crate::sample_set::png_text`]): the CLI, Python and Ray write the same.
pub fn png_text(
    input: &EditInput,
    task: &str,
    invert: bool,
    keep_scales: usize,
    composite: bool,
) -> [(String, String); 7] {
    [
        ("flowar:edit".into(), task.to_string()),
        ("flowar:source_sha256".into(), input.source.sha256.clone()),
        ("flowar:mask_sha256".into(), input.mask_hash.clone()),
        ("flowar:invert_mask".into(), invert.to_string()),
        ("flowar:keep_scales".into(), keep_scales.to_string()),
        ("flowar:composite".into(), composite.to_string()),
        ("flowar:edit_rule".into(), RULE.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitting_follows_center_crop_arr() {
        // 600x400 for 128: halved once (300x200), short side to 128 (192x128), crop x 32.
        assert_eq!(fit_geometry(600, 400, 128), (192, 128, 32, 0, 1));
        assert_eq!(fit_geometry(128, 128, 128), (128, 128, 0, 0, 0));
        // A smaller image is enlarged.
        assert_eq!(fit_geometry(64, 100, 128), (128, 200, 0, 36, 0));
    }
}
