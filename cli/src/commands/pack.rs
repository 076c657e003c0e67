//! `flowar pack`: the folders a sample set was generated into (one per shard, or one for
//! the whole run) into one `.npz` holding `arr_0`, uint8 `[N, H, W, 3]` in image-index
//! order: the layout common FID evaluators read. It refuses a set that is not exactly
//! images 0..N-1 once each, or that mixes models or sampler settings, naming the images
//! and files, and then writes nothing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use flowar_runtime::sample_set::{index_of, open_png, PngReader, SETTINGS};

use super::{CliError, CliResult};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folders written by `flowar generate --out` (one per shard, or one for the run).
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// The .npz file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// How many images the set holds (default: the `count` the folders' run.json files
    /// record, else one more than the largest index found).
    #[arg(long)]
    pub count: Option<u64>,
    /// Replace an existing output file.
    #[arg(long)]
    pub force: bool,
}

/// How many offending indices or files a message lists before it says how many more.
const SHOWN: usize = 10;

/// One image file of the set, as its header describes it.
struct Image {
    path: PathBuf,
    width: u32,
    height: u32,
    settings: Vec<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |e| CliError::Runtime(flowar_runtime::Error::io(path, e))
}

fn bad(msg: String) -> CliError {
    CliError::Failed(msg)
}

/// A list of at most [`SHOWN`] items, then how many more.
fn listed<T: std::fmt::Display>(items: &[T]) -> String {
    let shown: Vec<String> = items.iter().take(SHOWN).map(|i| i.to_string()).collect();
    if items.len() > SHOWN {
        format!("{} and {} more", shown.join(", "), items.len() - SHOWN)
    } else {
        shown.join(", ")
    }
}

/// Every `NNNNNN.png` under `dirs`, by index; duplicates are an error naming both files.
fn find_images(dirs: &[PathBuf]) -> CliResult<BTreeMap<u64, PathBuf>> {
    let mut found: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut twice: Vec<(u64, String)> = Vec::new();
    for dir in dirs {
        let mut any = false;
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            let Some(k) = path.file_name().and_then(|n| n.to_str()).and_then(index_of) else {
                continue;
            };
            any = true;
            if let Some(first) = found.get(&k) {
                twice.push((
                    k,
                    format!("{k} ({} and {})", first.display(), path.display()),
                ));
            } else {
                found.insert(k, path);
            }
        }
        if !any {
            return Err(bad(format!(
                "{} holds no NNNNNN.png images (is it a `flowar generate --out` folder?)",
                dir.display()
            )));
        }
    }
    if !twice.is_empty() {
        twice.sort();
        return Err(bad(format!(
            "{} image index(es) appear more than once: {}",
            twice.len(),
            listed(&twice.into_iter().map(|(_, m)| m).collect::<Vec<_>>())
        )));
    }
    Ok(found)
}

/// An image of the set opened as the runtime reads one (8-bit RGB only); a foreign file
/// fails the pack (exit 1) rather than being bad usage.
fn open(path: &Path) -> CliResult<PngReader> {
    open_png(path).map_err(|e| match e {
        flowar_runtime::Error::BadArgument(msg) => bad(msg),
        e => CliError::Runtime(e),
    })
}

/// Reads an image's size and settings from its header (no pixels).
fn read_header(path: &Path, k: u64) -> CliResult<Image> {
    let reader = open(path)?;
    let info = reader.info();
    let text: BTreeMap<&str, &str> = info
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.as_str(), t.text.as_str()))
        .collect();
    match text.get("flowar:index").map(|i| i.parse::<u64>()) {
        Some(Ok(i)) if i == k => {}
        Some(_) => {
            return Err(bad(format!(
                "{}: its flowar:index `{}` is not its file name's {k} (renamed?)",
                path.display(),
                text["flowar:index"]
            )))
        }
        None => {
            return Err(bad(format!(
                "{}: no flowar:index text: not written by `flowar generate`",
                path.display()
            )))
        }
    }
    let settings = SETTINGS
        .iter()
        .map(|key| {
            text.get(key).map(|v| v.to_string()).ok_or_else(|| {
                bad(format!(
                    "{}: no {key} text: not written by `flowar generate`",
                    path.display()
                ))
            })
        })
        .collect::<CliResult<_>>()?;
    Ok(Image {
        path: path.to_path_buf(),
        width: info.width,
        height: info.height,
        settings,
    })
}

/// The `.npy` header of a uint8 `[n, h, w, 3]` array (format 1.0, padded to 64 bytes).
fn npy_header(n: u64, h: u32, w: u32) -> Vec<u8> {
    let dict = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': ({n}, {h}, {w}, 3), }}");
    let unpadded = 10 + dict.len() + 1;
    let padded = format!("{dict}{}\n", " ".repeat((64 - unpadded % 64) % 64));
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((padded.len() as u16).to_le_bytes());
    out.extend(padded.as_bytes());
    out
}

/// A temporary sibling of the output, removed unless renamed into place.
struct Partial(PathBuf);

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Test-only, never for use (`scripts/test.sh` clears it): milliseconds `pack` waits, once
/// the temporary holds the whole `.npz`, before renaming it into place, after saying so on
/// stderr. `cli/tests/interrupted.rs` kills a pack inside this window, so the kill lands
/// between the write and the rename every time instead of when a timed kill happens to.
pub const PAUSE_BEFORE_RENAME: &str = "FLOWAR_TEST_PACK_PAUSE_BEFORE_RENAME";

/// The [`PAUSE_BEFORE_RENAME`] window, when the variable is set; a Ctrl-C during it stops
/// the pack as one during the write does (the temporary goes, nothing is renamed).
fn pause_before_rename(partial: &Path, out: &Path) -> CliResult {
    let Some(value) = std::env::var_os(PAUSE_BEFORE_RENAME) else {
        return Ok(());
    };
    let ms: u64 = value
        .to_str()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "{PAUSE_BEFORE_RENAME}={value:?} is not a number of milliseconds (a test-only \
                 variable: unset it)"
            ))
        })?;
    eprintln!(
        "{PAUSE_BEFORE_RENAME}: {} is written whole; pausing {ms} ms before renaming it to {}",
        partial.display(),
        out.display()
    );
    std::thread::sleep(Duration::from_millis(ms));
    if crate::interrupted() {
        return Err(CliError::Failed("packing interrupted by Ctrl-C".into()));
    }
    Ok(())
}

/// The run's image count as the folders' `run.json` files record it (every shard of a
/// run records the whole run's count), when any does; folders that disagree are an error.
fn recorded_count(dirs: &[PathBuf]) -> CliResult<Option<u64>> {
    let mut seen: Option<(u64, PathBuf)> = None;
    for dir in dirs {
        let path = dir.join("run.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let run: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| bad(format!("{}: not valid JSON: {e}", path.display())))?;
        let Some(count) = run["count"].as_u64() else {
            return Err(bad(format!("{}: no `count`", path.display())));
        };
        match &seen {
            Some((c, other)) if *c != count => {
                return Err(bad(format!(
                "the folders come from different runs: {} records count {c}, {} records {count}",
                other.display(),
                path.display()
            )))
            }
            _ => seen = Some((count, path)),
        }
    }
    Ok(seen.map(|(c, _)| c))
}

pub fn run(a: Args) -> CliResult {
    if a.out.exists() && !a.force {
        return Err(CliError::Usage(format!(
            "{} already exists; pass --force to replace it",
            a.out.display()
        )));
    }
    let found = find_images(&a.dirs)?;
    let largest = *found
        .keys()
        .next_back()
        .expect("find_images found at least one");
    let recorded = recorded_count(&a.dirs)?;
    if let (Some(given), Some(r)) = (a.count, recorded) {
        if given != r {
            return Err(CliError::Usage(format!(
                "--count {given} disagrees with the count {r} the folders' run.json files record"
            )));
        }
    }
    let n = a.count.or(recorded).unwrap_or(largest + 1);
    let beyond: Vec<u64> = found.keys().copied().filter(|&k| k >= n).collect();
    if !beyond.is_empty() {
        return Err(bad(format!(
            "{} image(s) past --count {n}: indices {}",
            beyond.len(),
            listed(&beyond)
        )));
    }
    let missing: Vec<u64> = (0..n).filter(|k| !found.contains_key(k)).collect();
    if !missing.is_empty() {
        return Err(bad(format!(
            "the set is incomplete: {} of {n} images are missing: indices {}",
            missing.len(),
            listed(&missing)
        )));
    }

    // First pass: headers only, so a mixed set is refused before anything is written.
    let images: Vec<Image> = found
        .iter()
        .map(|(&k, p)| read_header(p, k))
        .collect::<CliResult<_>>()?;
    let first = &images[0];
    for img in &images[1..] {
        if (img.width, img.height) != (first.width, first.height) {
            return Err(bad(format!(
                "image sizes differ: {} is {}x{}, {} is {}x{}",
                first.path.display(),
                first.width,
                first.height,
                img.path.display(),
                img.width,
                img.height
            )));
        }
        if let Some(i) = (0..SETTINGS.len()).find(|&i| img.settings[i] != first.settings[i]) {
            return Err(bad(format!(
                "the set mixes settings: {} has {} `{}`, {} has `{}`",
                first.path.display(),
                SETTINGS[i],
                first.settings[i],
                img.path.display(),
                img.settings[i]
            )));
        }
    }

    let parent = a
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // What a pack killed outright left of this output before its rename.
    let name = a.out.file_name().map(|n| n.to_string_lossy().into_owned());
    let stale = flowar_runtime::atomic_file::sweep_stale(parent, |f| Some(f) == name.as_deref())?;
    if !stale.is_empty() {
        eprintln!(
            "removed {} temporary file(s) that an interrupted pack left: {}",
            stale.len(),
            listed(&stale.iter().map(|p| p.display()).collect::<Vec<_>>())
        );
    }
    let partial = Partial(flowar_runtime::atomic_file::temp_path(&a.out));
    let file = std::fs::File::create(&partial.0).map_err(io(&partial.0))?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
    let zip_err = |e: zip::result::ZipError| bad(format!("{}: {e}", partial.0.display()));
    // A fixed entry time (1980-01-01, zip's epoch): packing the same set twice gives the
    // same bytes, whenever it runs.
    let opts = zip::write::SimpleFileOptions::default()
        .last_modified_time(zip::DateTime::default())
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    zip.start_file("arr_0.npy", opts).map_err(zip_err)?;
    zip.write_all(&npy_header(n, first.height, first.width))
        .map_err(io(&partial.0))?;
    let bar = ProgressBar::new(n);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} packing")
            .expect("valid template"),
    );
    let frame = first.width as usize * first.height as usize * 3;
    let mut pixels = Vec::with_capacity(frame);
    for img in &images {
        if crate::interrupted() {
            return Err(CliError::Failed("packing interrupted by Ctrl-C".into()));
        }
        let mut reader = open(&img.path)?;
        pixels.resize(reader.output_buffer_size().unwrap_or(frame), 0);
        let info = reader
            .next_frame(&mut pixels)
            .map_err(|e| bad(format!("{}: {e}", img.path.display())))?;
        if info.buffer_size() != frame {
            return Err(bad(format!(
                "{}: {} bytes of pixels, expected {frame}",
                img.path.display(),
                info.buffer_size()
            )));
        }
        zip.write_all(&pixels[..frame]).map_err(io(&partial.0))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut inner = zip.finish().map_err(zip_err)?;
    inner.flush().map_err(io(&partial.0))?;
    drop(inner);
    pause_before_rename(&partial.0, &a.out)?;
    std::fs::rename(&partial.0, &a.out).map_err(io(&a.out))?;
    println!(
        "packed {n} images of {}x{} from {} folder(s) into {} (arr_0: uint8 [{n}, {}, {}, 3]); model {}, seed {}, cfg {}, guidance {}, steps {}, solver {}",
        first.width,
        first.height,
        a.dirs.len(),
        a.out.display(),
        first.height,
        first.width,
        first.settings[0],
        first.settings[1],
        first.settings[2],
        first.settings[3],
        first.settings[4],
        first.settings[5]
    );
    Ok(())
}
