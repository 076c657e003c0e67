//! Files and folders written whole or not at all: through a temporary sibling and a rename,
//! so a reader (a resumed run, `flowar pack`, an FID evaluator, the runtime loading a model
//! folder) never sees half of one.
//!
//! A process killed outright (SIGKILL, a lost machine) leaves its temporary behind. Its name
//! says who wrote it, `.NAME.tmp-HOST-PID`, so the next run on the same host can remove
//! the ones whose writer is gone ([`sweep_stale`]) without touching those of a live writer:
//! shards of one set may write into one folder at once, from this host or others.

use std::path::{Path, PathBuf};

use crate::error::{FormatError as Error, Result};

/// This host's name as the temporaries record it (`-` and `/` would make names ambiguous).
fn host() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    raw.trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The marker between a file's name and its writer in a temporary's name.
const TMP: &str = ".tmp-";

/// The temporary sibling this process writes `path` through: `.NAME.tmp-HOST-PID`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}{TMP}{}-{}", host(), std::process::id()))
}

/// Writes `bytes` to `path` through [`temp_path`] and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Whether process `pid` is alive on this host; `None` where that cannot be told.
fn alive(pid: u32) -> Option<bool> {
    if !Path::new("/proc/self").exists() {
        return None;
    }
    Some(pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists())
}

/// The temporaries in `dir` that this host's dead processes left (a writer killed before
/// its rename: files, or a model folder's staging folder), for names `keep` accepts,
/// sorted. Temporaries of other hosts, of live processes and of this process are not
/// listed, nor is anything where liveness cannot be told (no `/proc`).
pub fn stale_temporaries(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let me = host();
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((file, writer)) = name.strip_prefix('.').and_then(|n| n.rsplit_once(TMP)) else {
            continue;
        };
        let Some((host, pid)) = writer.rsplit_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if host != me || !keep(file) || pid == std::process::id() || alive(pid) != Some(false) {
            continue;
        }
        found.push(entry.path());
    }
    found.sort();
    Ok(found)
}

/// Removes the [`stale_temporaries`] in `dir` for names `keep` accepts; returns what it
/// removed.
pub fn sweep_stale(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for path in stale_temporaries(dir, keep)? {
        let gone = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(e) => Err(e),
        };
        match gone {
            Ok(()) => removed.push(path),
            // Another sweeper got there first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid no process has: past the kernel's largest (`pid_max` is at most 2^22).
    const DEAD: u32 = 4_194_400;

    #[test]
    fn a_dead_writers_temporary_goes_and_the_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let h = host();
        let dead = d.join(format!(".000001.png.tmp-{h}-{DEAD}"));
        let live = d.join(format!(".000002.png.tmp-{h}-1"));
        let mine = temp_path(&d.join("000003.png"));
        let other_host = d.join(format!(".000004.png.tmp-elsewhere-{DEAD}"));
        let not_ours = d.join(format!(".notes.txt.tmp-{h}-{DEAD}"));
        let old_style = d.join(".000005.png.tmp-999");
        for p in [&dead, &live, &mine, &other_host, &not_ours, &old_style] {
            std::fs::write(p, b"half").unwrap();
        }
        let staging = d.join(format!(".model.png.tmp-{h}-{DEAD}"));
        std::fs::create_dir(&staging).unwrap();
        std::fs::write(staging.join("ar_step.onnx"), b"half").unwrap();
        let removed = sweep_stale(d, |f| f.ends_with(".png")).unwrap();
        assert_eq!(removed, vec![dead.clone(), staging.clone()]);
        for p in [&live, &mine, &other_host, &not_ours, &old_style] {
            assert!(p.exists(), "{}", p.display());
        }
        assert!(sweep_stale(&d.join("missing"), |_| true)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_write_leaves_only_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_atomic(&p, b"whole").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"whole");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
    }
}
