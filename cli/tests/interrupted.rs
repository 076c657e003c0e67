//! Runs killed outright (SIGKILL: no handler runs, as when a machine is lost or the OOM
//! killer strikes) leave nothing half-written where a reader looks, and a rerun completes:
//! `generate` (every PNG whole, the dead writer's temporary removed by the rerun, a live
//! writer's kept) and `pack` (the `.npz` whole or absent at any moment of the kill, and
//! absent when killed between its write and its rename, which a test-only pause makes
//! certain).

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// This host's name as the temporaries record it (`flowar_runtime::atomic_file`).
fn host() -> String {
    let t = flowar_runtime::atomic_file::temp_path(Path::new("x"));
    let name = t.file_name().unwrap().to_string_lossy().into_owned();
    let writer = name.rsplit_once(".tmp-").unwrap().1.to_string();
    writer.rsplit_once('-').unwrap().0.to_string()
}

fn spawn(args: &[&str], cwd: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_flowar"))
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run flowar")
}

fn sigkill(child: &mut Child) {
    let pid = child.id().to_string();
    let ok = Command::new("kill").args(["-KILL", &pid]).status().unwrap();
    assert!(ok.success(), "kill -KILL {pid}");
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run finished before the kill");
}

fn pngs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "png"));
    v.sort();
    v
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The demo model converted into `dir/demo`.
fn demo(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes10");
    let out = dir.join("demo");
    let o = convert(
        dir,
        &src.join("flowar.pth"),
        &src.join("vae.ckpt"),
        &out,
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    out
}

/// `generate` killed after it wrote some images: each PNG there is whole and equals the
/// clean run's; the temporary it would have left mid-write (planted: a kill lands between
/// two writes far more often than inside one) is removed by the rerun, which completes
/// the set, while a live writer's temporary stays.
#[test]
fn a_killed_generate_leaves_whole_pngs_and_a_rerun_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = demo(tmp.path());
    let m = model.to_str().unwrap();
    let args = |out: &str| {
        vec![
            "generate",
            "--model",
            m,
            "--count",
            "12",
            "--batch-size",
            "1",
            "--steps",
            "6",
            "--seed",
            "2",
            "--provider",
            "tract",
            "--threads",
            "1",
            "--out",
            out,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let run = |out: &str| {
        let a = args(out);
        flowar(
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            tmp.path(),
        )
    };
    let clean = run("clean");
    assert!(clean.status.success(), "{}", text(&clean));
    let clean_dir = tmp.path().join("clean");
    assert_eq!(pngs(&clean_dir).len(), 12);

    let dir = tmp.path().join("killed");
    let a = args("killed");
    let mut child = spawn(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        tmp.path(),
    );
    let start = Instant::now();
    while pngs(&dir).len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no images after 120 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = child.id();
    sigkill(&mut child);
    let written = pngs(&dir);
    assert!(
        written.len() < 12,
        "killed after the last image: {}",
        written.len()
    );
    assert!(!dir.join("run.json").exists(), "run.json of a killed run");
    for p in &written {
        let got = std::fs::read(p).unwrap();
        let want = std::fs::read(clean_dir.join(p.file_name().unwrap())).unwrap();
        assert!(got == want, "{} is not the clean run's", p.display());
    }
    // A kill that landed inside a write left that image's temporary (not a visible PNG).
    let left = names(&dir)
        .iter()
        .filter(|n| n.contains(".png.tmp-"))
        .count();
    assert!(left <= 1, "{:?}", names(&dir));
    let h = host();
    let dead = dir.join(format!(".000011.png.tmp-{h}-{pid}"));
    std::fs::write(&dead, b"\x89PNG half").unwrap();
    let live = dir.join(format!(".000010.png.tmp-{h}-{}", std::process::id()));
    std::fs::write(&live, b"\x89PNG another shard's").unwrap();

    let rerun = run("killed");
    let t = text(&rerun);
    assert!(rerun.status.success(), "{t}");
    assert!(
        t.contains(&format!(
            "removed {} temporary file(s) that an interrupted run left",
            left + 1
        )),
        "{t}"
    );
    assert!(!dead.exists() && live.exists());
    std::fs::remove_file(&live).unwrap();
    assert_eq!(names(&dir), names(&clean_dir));
    for p in pngs(&clean_dir) {
        let name = p.file_name().unwrap();
        assert!(
            std::fs::read(&p).unwrap() == std::fs::read(dir.join(name)).unwrap(),
            "{name:?} differs after the rerun"
        );
    }
}

/// The pack test's pause window (see `flowar pack`'s `PAUSE_BEFORE_RENAME`): a pack run
/// with it set writes the whole temporary, says so on stderr, and waits this long before
/// its rename.
const PAUSE_VAR: &str = "FLOWAR_TEST_PACK_PAUSE_BEFORE_RENAME";

/// Starts `flowar pack set --out samples.npz` in `cwd` with the pause before its rename set
/// to `pause_ms`, and returns it once it says, on stderr, that the temporary is written
/// (with that temporary's path and what it said before), so that a kill now lands between
/// the write and the rename, every time.
fn pack_paused_before_rename(cwd: &Path, pause_ms: u64) -> (Child, PathBuf, String) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowar"))
        .args(["pack", "set", "--out", "samples.npz"])
        .env(PAUSE_VAR, pause_ms.to_string())
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run flowar");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.starts_with(PAUSE_VAR) {
                let _ = tx.send(Ok((line, seen.join("\n"))));
                return;
            }
            seen.push(line);
        }
        let _ = tx.send(Err(seen.join("\n")));
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok((line, before))) => {
            // `{PAUSE_VAR}: PATH is written whole; pausing ...`
            let path = line
                .strip_prefix(&format!("{PAUSE_VAR}: "))
                .and_then(|r| r.split_once(" is written whole"))
                .map(|(p, _)| cwd.join(p))
                .unwrap_or_else(|| panic!("unexpected pause line: {line}"));
            (child, path, before)
        }
        Ok(Err(stderr)) => {
            let status = child.wait().unwrap();
            panic!("pack ended ({status}) without pausing before its rename: {stderr}")
        }
        Err(_) => {
            let _ = child.kill();
            panic!("pack did not reach its rename in 120 s")
        }
    }
}

/// `pack` killed between writing its temporary and renaming it (made certain by the
/// test-only pause there) leaves no `.npz`, and the same pack left to finish leaves the
/// whole one: both outcomes are asserted, each in its own run. Kills at moments spread over
/// a run (from before it reads a file to after the rename) leave the output absent or whole,
/// never partial. The killed pack's temporary is removed by the rerun, which writes the same
/// bytes as a clean pack.
#[test]
fn a_killed_pack_leaves_no_partial_npz_and_a_rerun_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = demo(tmp.path());
    let g = flowar(
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--count",
            "64",
            "--batch-size",
            "16",
            "--steps",
            "2",
            "--provider",
            "tract",
            "--out",
            "set",
        ],
        tmp.path(),
    );
    assert!(g.status.success(), "{}", text(&g));
    let t0 = Instant::now();
    let clean = flowar(&["pack", "set", "--out", "clean.npz"], tmp.path());
    let took = t0.elapsed();
    assert!(clean.status.success(), "{}", text(&clean));
    let want = std::fs::read(tmp.path().join("clean.npz")).unwrap();
    let out = tmp.path().join("samples.npz");
    let only_known_names_visible = || {
        // What a kill before the rename leaves is hidden and is swept by the next pack.
        let visible: Vec<String> = names(tmp.path())
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert!(
            visible
                .iter()
                .all(|n| ["clean.npz", "samples.npz", "set", "demo"].contains(&n.as_str())),
            "{visible:?}"
        );
    };

    // Kill moments spread over the clean pack's own duration (process start included):
    // wherever one lands, the output is absent or whole.
    for step in 0..24u32 {
        let delay = took * step / 20;
        let _ = std::fs::remove_file(&out);
        let mut child = spawn(&["pack", "set", "--out", "samples.npz"], tmp.path());
        std::thread::sleep(delay);
        let _ = Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status();
        let _ = child.wait();
        if let Ok(got) = std::fs::read(&out) {
            assert!(got == want, "a partial .npz after a kill at {delay:?}");
        }
        only_known_names_visible();
    }
    let _ = std::fs::remove_file(&out);

    // Killed inside the window between the whole write and the rename: no output, and the
    // temporary it leaves holds every byte, so only the rename makes an .npz visible.
    let (mut child, partial, _) = pack_paused_before_rename(tmp.path(), 60_000);
    assert!(!out.exists(), "the output exists before the rename");
    sigkill(&mut child);
    assert!(
        !out.exists(),
        "a pack killed before its rename left an .npz"
    );
    let left = std::fs::read(&partial)
        .unwrap_or_else(|e| panic!("the killed pack's temporary {}: {e}", partial.display()));
    assert!(left == want, "the temporary was not written whole");
    only_known_names_visible();

    // The same pack left to finish (the pause included) renames the whole .npz into place,
    // and removes the killed pack's temporary on the way.
    let (child, _, said) = pack_paused_before_rename(tmp.path(), 100);
    let rerun = child.wait_with_output().unwrap();
    assert!(
        rerun.status.success(),
        "the unkilled pack failed: {}",
        text(&rerun)
    );
    assert!(
        said.contains("removed 1 temporary file(s) that an interrupted pack left"),
        "{said}"
    );
    assert!(
        std::fs::read(&out).unwrap() == want,
        "the unkilled pack's .npz is not the clean pack's"
    );
    assert!(
        !partial.exists(),
        "the killed pack's temporary was not swept"
    );
    let hidden: Vec<String> = names(tmp.path())
        .into_iter()
        .filter(|n| n.starts_with(".samples.npz.tmp-"))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
    only_known_names_visible();
}

/// A `convert --force` killed between its two renames (the old folder moved aside to
/// `.OUT.old.tmp-HOST-PID`, the new one still in its staging folder) leaves both hidden
/// and no `OUT`. The next convert to that output first moves the old folder back (it is
/// the only whole model there), so even a convert that then fails leaves the user their
/// model; it removes the dead writer's staging folder and says both. A dead writer's
/// replaced folder beside an `OUT` that exists (killed after the second rename) is swept.
/// A live writer's and another host's replaced folders stay. The state is planted exactly
/// as the renames leave it: a kill cannot be aimed between two renames.
#[test]
fn a_convert_force_killed_between_its_renames_is_undone_by_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = convert_spatial_with(d, "m", &[]);
    let manifest = std::fs::read(out.join("manifest.json")).unwrap();
    let h = host();
    // A pid no process has: past the kernel's largest (`pid_max` is at most 2^22).
    let dead = 4_194_400u32;
    let old = d.join(format!(".m.old.tmp-{h}-{dead}"));
    std::fs::rename(&out, &old).unwrap();
    let staging = d.join(format!(".m.tmp-{h}-{dead}"));
    std::fs::create_dir(&staging).unwrap();
    std::fs::write(staging.join("manifest.json"), b"{}").unwrap();
    let live = d.join(format!(".m.old.tmp-{h}-{}", std::process::id()));
    let elsewhere = d.join(format!(".m.old.tmp-elsewhere-{dead}"));
    for p in [&live, &elsewhere] {
        std::fs::create_dir(p).unwrap();
        std::fs::write(p.join("manifest.json"), b"{}").unwrap();
    }

    // Without --force the convert fails (the output is back), and the model is intact.
    let f = fixture("spatial");
    let o = convert(d, &f.join("flowar.pth"), &f.join("vae.ckpt"), &out, &[]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("already exists; pass --force"), "{t}");
    assert!(!old.exists(), "the moved-aside model was not moved back");
    assert_eq!(
        std::fs::read(out.join("manifest.json")).unwrap(),
        manifest,
        "the restored folder is not the model that was moved aside"
    );
    assert!(live.is_dir() && elsewhere.is_dir());

    // Killed after the second rename: the new folder in place, the old one left aside.
    let old_after = d.join(format!(".m.old.tmp-{h}-{}", dead + 1));
    std::fs::create_dir(&old_after).unwrap();
    std::fs::write(old_after.join("manifest.json"), b"{}").unwrap();
    let o = convert(
        d,
        &f.join("flowar.pth"),
        &f.join("vae.ckpt"),
        &out,
        &["--force"],
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("removed 1 staging folder(s) that an interrupted convert left"),
        "{t}"
    );
    assert!(
        t.contains(
            "removed 1 replaced model folder(s) that a `convert --force` killed between its two renames left"
        ),
        "{t}"
    );
    assert!(
        !old_after.exists(),
        "the dead writer's replaced folder stayed"
    );
    assert!(!staging.exists(), "the dead writer's staging folder stayed");
    assert!(live.is_dir() && elsewhere.is_dir());
    assert!(out.join("manifest.json").is_file());
    std::fs::remove_dir_all(&live).unwrap();
    std::fs::remove_dir_all(&elsewhere).unwrap();
    assert_eq!(names(d), ["m"]);

    // A --force over the folder now in place leaves nothing beside it either.
    let again = convert(
        d,
        &f.join("flowar.pth"),
        &f.join("vae.ckpt"),
        &out,
        &["--force"],
    );
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(names(d), ["m"]);
}
