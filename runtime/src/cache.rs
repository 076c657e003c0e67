//! The on-disk cache of compiled graphs, and its size cap.
//!
//! One root ([`cache_root`]) holds OpenVINO's compiled blobs, one folder per model folder
//! (`<root>/openvino/<folder name>-<key>/`, see
//! [`cache_entry`](crate::backend::openvino_backend::session::cache_entry)), and
//! TensorRT's engines, one folder per set of graphs, TensorRT version and profile
//! (`<root>/tensorrt/<key>/`). Each such folder is an *entry*.
//!
//! The cache is capped ([`max_bytes`]: `FLOWAR_CACHE_MAX_BYTES`, default 2 GiB). Whenever
//! a load writes to it, [`evict`] removes whole entries, least recently used first (the
//! newest modification time of any file in the entry; a load touches its entry), until the
//! entries under the root fit. An entry in use is never removed: a load holds a shared
//! lock on the entry's `.lock` file ([`Lease`]) for as long as the session it loads lives,
//! and eviction takes an exclusive one first, skipping entries it cannot lock. The locks
//! are the operating system's (`flock`), released when a process dies, so a killed
//! process leaves nothing locked. An entry larger than the cap on its own stays while it
//! is in use; it is the next one evicted after. Only what flowar made is ever counted or
//! removed (`is_ours`): the root may be a folder the user named.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, Result};

/// The environment variable that caps the cache's size (bytes, or with a unit: `2GiB`,
/// `500MiB`).
pub const MAX_BYTES_VAR: &str = "FLOWAR_CACHE_MAX_BYTES";

/// The cap when [`MAX_BYTES_VAR`] is unset: room for a FlowAR-S model in both OpenVINO
/// precisions and its TensorRT engines, a few times over.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

/// The subfolders of the root whose entries the cap counts and evicts.
pub const KINDS: [&str; 2] = ["openvino", "tensorrt"];

/// The lock file inside each entry.
const LOCK: &str = ".lock";

/// An entry being removed is first renamed to this prefix (so a loader never finds it
/// half-deleted); one left by a killed process is removed by the next eviction.
const TRASH: &str = ".evicting-";

/// Default cache root: `$FLOWAR_CACHE_DIR`, else `$XDG_CACHE_HOME/flowar`, else
/// `$HOME/.cache/flowar`, else the system temp folder's `flowar-cache`.
pub fn cache_root() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("FLOWAR_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("flowar")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/flowar")))
        .unwrap_or_else(|| std::env::temp_dir().join("flowar-cache"))
}

/// The cap in bytes: [`MAX_BYTES_VAR`], else [`DEFAULT_MAX_BYTES`]. A value that is not a
/// positive size is an [`Error::BadArgument`] naming the variable.
pub fn max_bytes() -> Result<u64> {
    parse_max_bytes(std::env::var(MAX_BYTES_VAR).ok().as_deref())
}

/// [`max_bytes`] for the variable's value `v` (`None`: unset).
pub fn parse_max_bytes(v: Option<&str>) -> Result<u64> {
    match v.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(DEFAULT_MAX_BYTES),
        Some(v) => crate::backend::gpu::parse_bytes(MAX_BYTES_VAR, v).map_err(|_| {
            Error::BadArgument(format!(
                "{MAX_BYTES_VAR}=`{v}` is not a positive size (bytes, or with a unit: 2GiB, \
                 500MiB, 64KiB)"
            ))
        }),
    }
}

/// A shared lock on one cache entry: while it lives, [`evict`] (in this process or any
/// other) leaves the entry alone. Dropping it releases the lock.
#[derive(Debug)]
pub struct Lease {
    _lock: File,
    dir: PathBuf,
}

/// The entries this process holds leases on, with their counts. `flock` keeps the
/// processes apart; this keeps one process from evicting its own entries where the kernel
/// turns `flock` into per-process `fcntl` locks (NFS), which an eviction's exclusive lock
/// would not see as held, and whose release drops the process's other locks on the file.
static LEASED: std::sync::Mutex<Vec<(PathBuf, usize)>> = std::sync::Mutex::new(Vec::new());

/// `dir` as the registry keys it: canonical where it exists, so that one folder reached
/// through two spellings of the root is one entry.
fn lease_key(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

fn leased_here(dir: &Path) -> bool {
    let dir = lease_key(dir);
    LEASED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|(d, n)| *d == dir && *n > 0)
}

fn note_lease(dir: &Path, delta: isize) {
    let dir = &lease_key(dir);
    let mut held = LEASED.lock().unwrap_or_else(|p| p.into_inner());
    match held.iter_mut().find(|(d, _)| d == dir) {
        Some((_, n)) => *n = n.saturating_add_signed(delta),
        None if delta > 0 => held.push((dir.to_path_buf(), delta as usize)),
        None => {}
    }
    held.retain(|(_, n)| *n > 0);
}

impl Drop for Lease {
    fn drop(&mut self) {
        note_lease(&self.dir, -1);
    }
}

/// The entry's lock file, for a shared lock: read-write (created when missing), else, in a
/// cache this process may not write (a read-only shared engine cache), read-only; `flock`
/// works on either. `Ok((file, writable))`.
fn open_lock_for_lease(path: &Path) -> io::Result<(File, bool)> {
    match OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => Ok((f, true)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            File::open(path).map(|f| (f, false))
        }
        Err(e) => Err(e),
    }
}

impl Lease {
    /// Creates the entry `dir` if needed, locks it shared and marks it used now. Retries
    /// when an eviction removed the entry while this waited for the lock.
    pub fn acquire(dir: &Path) -> io::Result<Lease> {
        let mut last = None;
        for _ in 0..4 {
            if !dir.is_dir() {
                std::fs::create_dir_all(dir)?;
            }
            let path = dir.join(LOCK);
            let (file, writable) = open_lock_for_lease(&path)?;
            file.lock_shared()?;
            // An eviction renames the entry away while it holds the lock: the file locked
            // here must still be the one at `path`.
            if same_file(&file, &path) {
                if writable {
                    file.set_modified(SystemTime::now())?;
                }
                note_lease(dir, 1);
                return Ok(Lease {
                    _lock: file,
                    dir: dir.to_path_buf(),
                });
            }
            last = Some(io::Error::other(format!(
                "{} was evicted while this process waited for it",
                dir.display()
            )));
        }
        Err(last.unwrap_or_else(|| io::Error::other("no attempt made")))
    }

    /// The entry's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

/// One entry as [`evict`] sees it.
#[derive(Debug, Clone)]
struct Entry {
    path: PathBuf,
    bytes: u64,
    last_used: SystemTime,
}

/// The bytes and the newest modification time of the files under `path` (itself, when a
/// file). Symbolic links are counted as links, never followed.
fn measure(path: &Path) -> io::Result<(u64, SystemTime)> {
    let meta = std::fs::symlink_metadata(path)?;
    let mut bytes = 0;
    let mut newest = meta.modified()?;
    if meta.is_dir() {
        for item in std::fs::read_dir(path)? {
            let (b, t) = measure(&item?.path())?;
            bytes += b;
            newest = newest.max(t);
        }
    } else {
        bytes = meta.len();
    }
    Ok((bytes, newest))
}

/// What one [`evict`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Eviction {
    /// The entries removed, oldest first.
    pub removed: Vec<PathBuf>,
    /// Entries that would have been removed but were in use.
    pub in_use: Vec<PathBuf>,
    /// The entries' total size afterwards.
    pub bytes_after: u64,
    /// What could not be read or removed (left in place).
    pub problems: Vec<String>,
}

/// Removes the least recently used entries under `root`'s [`KINDS`] folders until their
/// total size is at most `cap`, skipping entries in use. Best effort: an entry that cannot
/// be measured or removed is left and reported in [`Eviction::problems`].
pub fn evict(root: &Path, cap: u64) -> Eviction {
    let mut out = Eviction::default();
    let mut entries = Vec::new();
    for kind in KINDS {
        let dir = root.join(kind);
        let listing = match std::fs::read_dir(&dir) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.problems.push(format!("{}: {e}", dir.display()));
                continue;
            }
        };
        for item in listing {
            let path = match item {
                Ok(i) => i.path(),
                Err(e) => {
                    out.problems.push(format!("{}: {e}", dir.display()));
                    continue;
                }
            };
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.as_deref().is_some_and(|n| n.starts_with(TRASH)) {
                // Left by an eviction that was killed mid-removal (or being removed by a
                // concurrent one: then it may vanish under this one, which is fine).
                match remove(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => out.problems.push(format!("{}: {e}", path.display())),
                }
                continue;
            }
            if !is_ours(&path, kind) {
                // Not made by flowar (the root may be a folder the user named): never
                // counted, never touched.
                continue;
            }
            match measure(&path) {
                Ok((bytes, last_used)) => entries.push(Entry {
                    path,
                    bytes,
                    last_used,
                }),
                // Removed meanwhile by another process's eviction.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => out.problems.push(format!("{}: {e}", path.display())),
            }
        }
    }
    let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
    // Oldest first; equal times by path, so the order is the same on every run.
    entries.sort_by(|a, b| (a.last_used, &a.path).cmp(&(b.last_used, &b.path)));
    for e in entries {
        if total <= cap {
            break;
        }
        match remove_unless_in_use(&e.path) {
            Ok(true) => {
                total = total.saturating_sub(e.bytes);
                out.removed.push(e.path);
            }
            Ok(false) => out.in_use.push(e.path),
            Err(err) => out.problems.push(format!("{}: {err}", e.path.display())),
        }
    }
    out.bytes_after = total;
    out
}

/// Whether `path`, straight under the `kind` folder, is a cache entry flowar made: a real
/// folder holding the `.lock` file a [`Lease`] creates, or (OpenVINO only) a loose
/// `*.blob` file, OpenVINO's blobs from before entries had folders. Anything else (a
/// symbolic link, a user's folder or file) is not ours.
fn is_ours(path: &Path, kind: &str) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if meta.is_dir() {
        std::fs::symlink_metadata(path.join(LOCK)).is_ok_and(|m| m.is_file())
    } else {
        meta.is_file() && kind == "openvino" && path.extension().is_some_and(|e| e == "blob")
    }
}

/// Removes one entry unless a [`Lease`] holds it: `Ok(false)` when in use (or gone).
fn remove_unless_in_use(path: &Path) -> io::Result<bool> {
    if !std::fs::symlink_metadata(path)?.is_dir() {
        // A loose blob (see [`is_ours`]): nothing loads it any more.
        std::fs::remove_file(path)?;
        return Ok(true);
    }
    if leased_here(path) {
        return Ok(false);
    }
    // Never created here: an entry without its lock file is not ours to remove.
    let lock = match File::open(path.join(LOCK)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
        Err(std::fs::TryLockError::Error(e)) => return Err(e),
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let trash = path.with_file_name(format!("{TRASH}{name}-{}-{nanos}", std::process::id()));
    std::fs::rename(path, &trash)?;
    // The lock is released when `lock` is dropped, after the entry is gone.
    remove(&trash)?;
    Ok(true)
}

fn remove(path: &Path) -> io::Result<()> {
    if std::fs::symlink_metadata(path)?.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// [`evict`] under `root` with the configured cap, after a load wrote to the cache; what
/// could not be removed is said on stderr (a full cache never stops a load).
pub fn evict_after_write(root: &Path, cap: u64) {
    let done = evict(root, cap);
    for p in &done.problems {
        eprintln!("flowar: cache eviction under {}: {p}", root.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An entry `root/<kind>/<name>` of `bytes` bytes, every file last modified `age_s`
    /// seconds ago.
    fn entry(root: &Path, kind: &str, name: &str, bytes: usize, age_s: u64) -> PathBuf {
        let dir = root.join(kind).join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("graph.blob"), vec![7u8; bytes]).unwrap();
        // What a Lease leaves: the mark of an entry flowar made.
        std::fs::write(dir.join(LOCK), b"").unwrap();
        age(&dir, age_s);
        dir
    }

    fn age(dir: &Path, age_s: u64) {
        let t = SystemTime::now() - Duration::from_secs(age_s);
        for f in std::fs::read_dir(dir).unwrap() {
            let f = File::options().write(true).open(f.unwrap().path()).unwrap();
            f.set_modified(t).unwrap();
        }
        File::open(dir).unwrap().set_modified(t).unwrap();
    }

    #[test]
    fn over_the_cap_the_oldest_entries_go_and_the_newest_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let oldest = entry(root, "openvino", "a-1", 1000, 400);
        let old = entry(root, "tensorrt", "b-2", 1000, 300);
        let newer = entry(root, "openvino", "c-3", 1000, 200);
        let newest = entry(root, "openvino", "d-4", 1000, 100);
        // Something outside the kind folders is neither counted nor touched.
        std::fs::write(root.join("notes.txt"), vec![0u8; 5000]).unwrap();

        // Under the cap: nothing goes.
        let done = evict(root, 4000);
        assert!(done.removed.is_empty(), "{done:?}");
        assert_eq!(done.bytes_after, 4000);

        // Over it by 1.5 entries: the two oldest go, across both kinds.
        let done = evict(root, 2500);
        assert_eq!(done.removed, vec![oldest.clone(), old.clone()], "{done:?}");
        assert_eq!(done.bytes_after, 2000);
        assert!(done.problems.is_empty(), "{done:?}");
        assert!(!oldest.exists() && !old.exists());
        assert!(newer.join("graph.blob").is_file() && newest.join("graph.blob").is_file());
        assert!(root.join("notes.txt").is_file());
        // Nothing half-removed is left behind.
        for kind in KINDS {
            for f in std::fs::read_dir(root.join(kind)).unwrap() {
                let name = f.unwrap().file_name().to_string_lossy().into_owned();
                assert!(!name.starts_with(TRASH), "{name}");
            }
        }
    }

    #[test]
    fn a_load_makes_its_entry_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let a = entry(root, "openvino", "a", 1000, 400);
        let b = entry(root, "openvino", "b", 1000, 300);
        // `a` was loaded before (its lock file exists), long ago.
        drop(Lease::acquire(&a).unwrap());
        age(&a, 400);
        // Loading it again (and letting go) makes `b` the least recently used.
        drop(Lease::acquire(&a).unwrap());
        let done = evict(root, 1000);
        assert_eq!(done.removed, vec![b], "{done:?}");
        assert!(a.join("graph.blob").is_file());
    }

    #[test]
    fn an_entry_in_use_is_never_evicted() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let oldest = entry(root, "openvino", "a", 1000, 400);
        let middle = entry(root, "openvino", "b", 1000, 300);
        let newest = entry(root, "openvino", "c", 1000, 200);
        // A load of the oldest entry under way (its lease's touch undone, so it still
        // sorts first).
        let lease = Lease::acquire(&oldest).unwrap();
        age(&oldest, 400);
        let done = evict(root, 1000);
        assert_eq!(done.in_use, vec![oldest.clone()], "{done:?}");
        assert_eq!(
            done.removed,
            vec![middle.clone(), newest.clone()],
            "{done:?}"
        );
        assert!(oldest.join("graph.blob").is_file());
        // Even a cap below the entry alone leaves it while in use.
        let done = evict(root, 1);
        assert_eq!(done.in_use, vec![oldest.clone()], "{done:?}");
        assert!(oldest.join("graph.blob").is_file());
        // Once the load is done, it goes like any other.
        drop(lease);
        let done = evict(root, 1);
        assert_eq!(done.removed, vec![oldest.clone()], "{done:?}");
        assert_eq!(done.bytes_after, 0);
    }

    #[test]
    fn a_lease_waits_out_an_eviction_and_recreates_its_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let a = entry(root, "openvino", "a", 1000, 400);
        // An eviction of `a` under way: it holds the exclusive lock...
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(a.join(LOCK))
            .unwrap();
        lock.lock().unwrap();
        let waiting = {
            let a = a.clone();
            std::thread::spawn(move || Lease::acquire(&a))
        };
        std::thread::sleep(Duration::from_millis(300));
        // ...then renames the entry away, removes it and lets go.
        let trash = root.join("openvino").join(format!("{TRASH}a-1"));
        std::fs::rename(&a, &trash).unwrap();
        std::fs::remove_dir_all(&trash).unwrap();
        drop(lock);
        // The waiting load holds a fresh entry at the same place, not the removed one.
        let lease = waiting.join().unwrap().unwrap();
        assert_eq!(lease.dir(), a);
        assert!(a.join(LOCK).is_file() && !a.join("graph.blob").exists());
        // And that lease protects it.
        std::fs::write(a.join("graph.blob"), [1u8; 10]).unwrap();
        let done = evict(root, 0);
        assert_eq!(done.in_use, vec![a.clone()], "{done:?}");
    }

    #[test]
    fn old_flat_blobs_and_killed_evictions_are_cleaned() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("openvino")).unwrap();
        // OpenVINO's blobs as earlier versions left them, straight in `openvino/`.
        let flat = root.join("openvino/123.blob");
        std::fs::write(&flat, vec![1u8; 3000]).unwrap();
        File::options()
            .write(true)
            .open(&flat)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(500))
            .unwrap();
        let trash = entry(root, "openvino", &format!("{TRASH}x-99"), 10, 10);
        let kept = entry(root, "openvino", "m-1", 1000, 100);
        let done = evict(root, 2000);
        assert_eq!(done.removed, vec![flat.clone()], "{done:?}");
        assert!(!flat.exists() && !trash.exists() && kept.is_dir());
        assert_eq!(done.bytes_after, 1000);
    }

    #[test]
    fn the_cap_is_read_from_its_variable() {
        assert_eq!(parse_max_bytes(None).unwrap(), DEFAULT_MAX_BYTES);
        assert_eq!(parse_max_bytes(Some("")).unwrap(), DEFAULT_MAX_BYTES);
        assert_eq!(parse_max_bytes(Some("500MiB")).unwrap(), 500 << 20);
        assert_eq!(parse_max_bytes(Some("4096")).unwrap(), 4096);
        for bad in ["0", "lots", "-1GiB", "2 parsecs"] {
            let err = parse_max_bytes(Some(bad)).unwrap_err();
            assert!(matches!(err, Error::BadArgument(_)), "{bad}: {err:?}");
            let msg = err.to_string();
            assert!(msg.contains(MAX_BYTES_VAR) && msg.contains(bad), "{msg}");
        }
    }

    /// The root may be a folder the user named (FLOWAR_CACHE_DIR=$HOME, a shared
    /// trt_cache_dir): under its kind folders, only what flowar made is counted and evicted.
    /// A folder without the lock file a lease creates, a symbolic link (to a folder that
    /// has one, even), and files other than OpenVINO's loose blobs stay, whatever the cap.
    #[test]
    fn only_entries_flowar_made_are_evicted() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let ours = entry(root, "openvino", "model-0123456789abcdef", 1000, 300);
        let user_dir = root.join("openvino").join("runtime");
        std::fs::create_dir_all(user_dir.join("lib")).unwrap();
        std::fs::write(user_dir.join("lib/libopenvino.so"), vec![1u8; 5000]).unwrap();
        let user_file = root.join("tensorrt").join("notes.txt");
        std::fs::create_dir_all(user_file.parent().unwrap()).unwrap();
        std::fs::write(&user_file, vec![2u8; 5000]).unwrap();
        let elsewhere = entry(
            &tmp.path().join("big-disk"),
            "tensorrt",
            "engines",
            1000,
            900,
        );
        let link = root.join("tensorrt").join("linked");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let loose = root.join("openvino").join("123456789.blob");
        std::fs::write(&loose, vec![3u8; 1000]).unwrap();

        let done = evict(root, 0);
        let mut removed = done.removed.clone();
        removed.sort();
        let mut want = vec![loose.clone(), ours.clone()];
        want.sort();
        assert_eq!(removed, want, "{done:?}");
        assert_eq!(done.bytes_after, 0, "{done:?}");
        assert!(user_dir.join("lib/libopenvino.so").is_file());
        assert!(user_file.is_file());
        assert!(link.exists() && elsewhere.join("graph.blob").is_file());
    }

    /// One process's own leases hold even where `flock` would not tell them from the
    /// eviction's lock (NFS turns it into per-process `fcntl` locks): the registry does.
    #[test]
    fn this_process_never_evicts_what_it_leases() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let a = entry(root, "openvino", "a", 1000, 400);
        let lease = Lease::acquire(&a).unwrap();
        assert!(leased_here(&a));
        // Another spelling of the same folder is the same entry.
        assert!(leased_here(&root.join("openvino/./a")));
        let done = evict(root, 0);
        assert!(
            done.removed.is_empty() && done.in_use == vec![a.clone()],
            "{done:?}"
        );
        drop(lease);
        assert!(!leased_here(&a));
        assert_eq!(evict(root, 0).removed, vec![a]);
    }
}
