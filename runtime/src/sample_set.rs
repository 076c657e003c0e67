//! A sample set on disk: one `NNNNNN.png` per image, named by its global index and
//! carrying the model and sampler settings as PNG text. `flowar generate --out`, the Python
//! package and its Ray engine all write images through here, so a set can be made by any
//! of them, resumed by another, and packed by `flowar pack`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::{save_png, RgbImage};
use crate::manifest::Manifest;
use crate::sampler::Request;

/// The PNG text keys that must agree across one set: the same model and sampler settings.
pub const SETTINGS: [&str; 6] = [
    "flowar:model_hash",
    "flowar:seed",
    "flowar:cfg",
    "flowar:guidance",
    "flowar:steps",
    "flowar:solver",
];

/// `NNNNNN.png`: six digits or more, so a set sorts in index order.
pub fn file_name(index: u64) -> String {
    format!("{index:06}.png")
}

/// `NNNNNN.png` (six or more digits) -> its index.
pub fn index_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".png")?;
    (digits.len() >= 6 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Removes the images' and `run.json`'s temporaries that a killed run on this host left in
/// `dir` (see [`crate::atomic_file::sweep_stale`]); returns what it removed.
pub fn sweep_stale(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(crate::atomic_file::sweep_stale(dir, |f| {
        index_of(f).is_some() || f == "run.json"
    })?)
}

/// The text an image of `req`'s settings carries: model, index, class and sampler settings.
pub fn png_text(m: &Manifest, req: &Request, index: u64, class: usize) -> Vec<(String, String)> {
    vec![
        ("flowar:model".into(), m.name.clone()),
        ("flowar:model_hash".into(), m.model_hash.clone()),
        // The graphs' precision (float32, float16, bfloat16); also part of the model hash.
        ("flowar:dtype".into(), m.dtype.clone()),
        ("flowar:index".into(), index.to_string()),
        ("flowar:class".into(), class.to_string()),
        ("flowar:seed".into(), req.seed.to_string()),
        ("flowar:cfg".into(), req.cfg.to_string()),
        ("flowar:guidance".into(), req.guidance.to_string()),
        ("flowar:steps".into(), req.steps_text()),
        ("flowar:solver".into(), req.solver.name().into()),
    ]
}

/// Writes the images `req` produced (`images[i]` is image `req.image_indices[i]`) into
/// `dir`, atomically each; returns the paths.
pub fn save_images(
    dir: &Path,
    m: &Manifest,
    req: &Request,
    images: &[RgbImage],
) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::with_capacity(images.len());
    for ((&k, &class), img) in req.image_indices.iter().zip(&req.classes).zip(images) {
        let path = dir.join(file_name(k));
        save_png(&path, img, &png_text(m, req, k, class))?;
        paths.push(path);
    }
    Ok(paths)
}

/// One image of a set read back: its pixels and its text.
#[derive(Debug, Clone)]
pub struct SampleFile {
    pub image: RgbImage,
    pub text: Vec<(String, String)>,
}

impl SampleFile {
    /// The value of a text key, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.text
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A PNG of a set, its header read (size and text; no pixels decoded yet).
pub type PngReader = png::Reader<std::io::BufReader<std::fs::File>>;

/// Opens an image of a set and reads its header, refusing anything but the 8-bit RGB that
/// flowar writes: a missing file is an [`Error::Io`], a foreign one an
/// [`Error::BadArgument`] naming the file. `flowar pack` and [`read_image`] both read
/// through here.
pub fn open_png(path: &Path) -> Result<PngReader> {
    let bad = |why: String| Error::BadArgument(format!("{}: {why}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .map_err(|e| bad(format!("not a readable PNG: {e}")))?;
    let (color, depth) = (reader.info().color_type, reader.info().bit_depth);
    if color != png::ColorType::Rgb || depth != png::BitDepth::Eight {
        return Err(bad(format!(
            "{color:?} {depth:?}-bit, expected 8-bit RGB as flowar writes"
        )));
    }
    Ok(reader)
}

/// Reads and fully decodes an image of a set, so a truncated file is an error (which a
/// resumed run takes as "not done yet").
pub fn read_image(path: &Path) -> Result<SampleFile> {
    let bad = |why: String| Error::BadArgument(format!("{}: {why}", path.display()));
    let mut reader = open_png(path)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad("image too large".into()))?;
    let mut pixels = vec![0u8; size];
    let frame = reader
        .next_frame(&mut pixels)
        .map_err(|e| bad(format!("not a readable PNG: {e}")))?;
    pixels.truncate(frame.buffer_size());
    let info = reader.info();
    let text = info
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .collect();
    Ok(SampleFile {
        image: RgbImage {
            width: frame.width as usize,
            height: frame.height as usize,
            pixels,
        },
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(file_name(7), "000007.png");
        assert_eq!(file_name(1_234_567), "1234567.png");
        assert_eq!(index_of("000007.png"), Some(7));
        assert_eq!(index_of("1234567.png"), Some(1_234_567));
        assert_eq!(index_of("00007.png"), None);
        assert_eq!(index_of("00000a.png"), None);
        assert_eq!(index_of("000007.jpg"), None);
    }

    #[test]
    fn a_written_image_reads_back_and_a_truncated_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let img = RgbImage {
            width: 3,
            height: 2,
            pixels: (0..18).map(|v| v as u8 * 13).collect(),
        };
        let text = vec![("flowar:index".to_string(), "5".to_string())];
        let path = dir.path().join(file_name(5));
        save_png(&path, &img, &text).unwrap();
        let back = read_image(&path).unwrap();
        assert_eq!(back.image, img);
        assert_eq!(back.get("flowar:index"), Some("5"));
        assert_eq!(back.get("flowar:seed"), None);

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 20]).unwrap();
        let err = read_image(&path).unwrap_err().to_string();
        assert!(err.contains("000005.png"), "{err}");
    }

    /// Only the 8-bit RGB that flowar writes is read: RGBA, grey and 16-bit files are
    /// refused by name, a missing file is an I/O error.
    #[test]
    fn only_8_bit_rgb_is_read() {
        let dir = tempfile::tempdir().unwrap();
        for (name, color, depth, channels, bytes) in [
            ("rgba", png::ColorType::Rgba, png::BitDepth::Eight, 4, 1),
            (
                "grey",
                png::ColorType::Grayscale,
                png::BitDepth::Eight,
                1,
                1,
            ),
            ("rgb16", png::ColorType::Rgb, png::BitDepth::Sixteen, 3, 2),
        ] {
            let path = dir.path().join(format!("{name}.png"));
            let file = std::fs::File::create(&path).unwrap();
            let mut enc = png::Encoder::new(std::io::BufWriter::new(file), 2, 2);
            enc.set_color(color);
            enc.set_depth(depth);
            let mut w = enc.write_header().unwrap();
            w.write_image_data(&vec![9u8; 2 * 2 * channels * bytes])
                .unwrap();
            w.finish().unwrap();
            let want = format!(
                "{}: {color:?} {depth:?}-bit, expected 8-bit RGB as flowar writes",
                path.display()
            );
            for err in [
                read_image(&path).unwrap_err(),
                open_png(&path).map(|_| ()).unwrap_err(),
            ] {
                assert!(matches!(&err, Error::BadArgument(m) if *m == want), "{err}");
            }
        }
        let missing = open_png(&dir.path().join("none.png"))
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(missing, Error::Io { .. }), "{missing}");
    }
}
