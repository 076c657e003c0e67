//! A sample set across machines: shards made with `--shard auto` under the variables a
//! SLURM array or a Kubernetes Indexed Job sets (from the command lines in `deploy/`),
//! packed by `flowar pack` into the `.npz` FID evaluators read, which refuses gaps,
//! duplicates and mixed settings and then writes nothing.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

const COUNT: usize = 5;

/// Reads `arr_0` of an `.npz` written by `flowar pack`: its shape and bytes.
fn read_npz(path: &Path) -> (Vec<usize>, Vec<u8>) {
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    assert_eq!(zip.len(), 1);
    let mut npy = Vec::new();
    zip.by_name("arr_0.npy")
        .unwrap()
        .read_to_end(&mut npy)
        .unwrap();
    assert_eq!(&npy[..8], b"\x93NUMPY\x01\x00");
    let len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    assert_eq!((10 + len) % 64, 0, "header padded to 64 bytes");
    let header = std::str::from_utf8(&npy[10..10 + len]).unwrap();
    assert!(header.contains("'descr': '|u1'") && header.contains("'fortran_order': False"));
    let shape: Vec<usize> = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    (shape, npy[10 + len..].to_vec())
}

fn png_pixels(path: &Path) -> Vec<u8> {
    let mut r = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()))
        .read_info()
        .unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    r.next_frame(&mut buf).unwrap();
    buf
}

/// Runs `program args` in `dir` with `vars` set and `flowar` first on PATH.
fn run_with(dir: &Path, program: &str, args: &[String], vars: &[(&str, String)]) {
    let bin = Path::new(env!("CARGO_BIN_EXE_flowar")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new(program)
        .args(args)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .env("PATH", path)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{program} {args:?}: {}", text(&o));
}

/// The command of the Kubernetes Job in `deploy/`, with the model, count and output root
/// moved to this test's, `$(JOB_COMPLETION_INDEX)` expanded as Kubernetes does, and the
/// provider the SLURM run is given (tract), so that both make the same set.
fn kubernetes_command(model: &Path, out_root: &Path, index: u32) -> Vec<String> {
    let yaml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/generate-job.yaml"),
    )
    .unwrap();
    let line = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("command: "))
        .expect("a one-line JSON command in the Job");
    let cmd: Vec<String> = serde_json::from_str(line).unwrap();
    let count = cmd.iter().position(|a| a == "--count").unwrap() + 1;
    cmd.into_iter()
        .enumerate()
        .map(|(i, a)| match a.as_str() {
            "/models/flowar-s" => model.display().to_string(),
            _ if i == count => COUNT.to_string(),
            _ => a
                .replace("/samples", &out_root.display().to_string())
                .replace("$(JOB_COMPLETION_INDEX)", &index.to_string()),
        })
        .chain(["--provider", "tract"].map(String::from))
        .collect()
}

#[test]
fn shards_from_slurm_and_kubernetes_pack_into_one_npz() {
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial(tmp.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/slurm/generate.sbatch");

    // Two SLURM array tasks run the sbatch script as the scheduler would (without sbatch).
    let slurm = tmp.path().join("slurm");
    for task in 0..2 {
        let vars = [
            ("MODEL", model.display().to_string()),
            ("OUT", slurm.display().to_string()),
            ("COUNT", COUNT.to_string()),
            ("PROVIDER", "tract".to_string()),
            ("SLURM_ARRAY_TASK_ID", task.to_string()),
            ("SLURM_ARRAY_TASK_COUNT", "2".to_string()),
        ];
        run_with(tmp.path(), "bash", &[script.display().to_string()], &vars);
    }
    let names = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&slurm.join("shard-1")),
        ["000001.png", "000003.png", "run.json"]
    );

    // Two pods of the Indexed Job run its command with the variables Kubernetes sets.
    let k8s = tmp.path().join("k8s");
    for index in 0..2 {
        let cmd = kubernetes_command(&model, &k8s, index);
        let vars = [
            ("JOB_COMPLETION_INDEX", index.to_string()),
            ("FLOWAR_SHARD_COUNT", "2".to_string()),
        ];
        run_with(tmp.path(), &cmd[0], &cmd[1..], &vars);
    }

    // The two schedulers' shards are the same images, file for file and byte for byte
    // (run.json differs: its paths and timings).
    for shard in ["shard-0", "shard-1"] {
        let files = names(&slurm.join(shard));
        assert_eq!(files, names(&k8s.join(shard)), "{shard}");
        for f in files.iter().filter(|f| f.ends_with(".png")) {
            assert!(
                std::fs::read(slurm.join(shard).join(f)).unwrap()
                    == std::fs::read(k8s.join(shard).join(f)).unwrap(),
                "{shard}/{f} differs between the SLURM and the Kubernetes run"
            );
        }
    }

    // Each set packs into index order, and the two packs are one file byte for byte.
    let pack = |dirs: &[PathBuf], out: &Path| {
        let mut args = vec!["pack".to_string()];
        args.extend(dirs.iter().map(|d| d.display().to_string()));
        args.extend(["--out".into(), out.display().to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        flowar(&args, tmp.path())
    };
    let shards = |root: &Path| vec![root.join("shard-1"), root.join("shard-0")];
    let npz = tmp.path().join("slurm.npz");
    let o = pack(&shards(&slurm), &npz);
    assert!(o.status.success(), "{}", text(&o));
    let (shape, data) = read_npz(&npz);
    let frame = 256 * 256 * 3;
    assert_eq!(shape, [COUNT, 256, 256, 3]);
    assert_eq!(data.len(), COUNT * frame);
    for k in 0..COUNT {
        let png = slurm.join(format!("shard-{}/{k:06}.png", k % 2));
        assert!(
            data[k * frame..(k + 1) * frame] == png_pixels(&png),
            "image {k}"
        );
    }
    let k8s_npz = tmp.path().join("k8s.npz");
    let o = pack(&shards(&k8s), &k8s_npz);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        std::fs::read(&k8s_npz).unwrap() == std::fs::read(&npz).unwrap(),
        "the Kubernetes pack is not the SLURM pack byte for byte"
    );

    // numpy reads it, where the test Python has numpy (scripts/test.sh installs it).
    let python = std::env::var("FLOWAR_PYTHON").unwrap_or_else(|_| "python3".into());
    let check = format!(
        "import numpy as np; a = np.load(r'{}')['arr_0']; assert a.shape == ({COUNT}, 256, 256, 3) and a.dtype == np.uint8, (a.shape, a.dtype)",
        npz.display()
    );
    match Command::new(&python).args(["-c", &check]).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No module named 'numpy'") => {
            // numpy comes with the onnx checker's package, which the suite requires.
            assert!(
                !flowar_runtime::test_support::required("FLOWAR_REQUIRE_ONNX_CHECKER"),
                "numpy is required here ({python} has none)"
            );
            flowar_runtime::test_support::note_skip(
                module_path!(),
                &format!("numpy reading the packed .npz: {python} has no numpy"),
            );
        }
        other => panic!("numpy could not read the npz: {other:?}"),
    }
}

#[test]
fn pack_refuses_gaps_duplicates_and_mixed_settings_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial(tmp.path());
    let gen = |out: &str, extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--count",
            "4",
            "--steps",
            "2",
            "--provider",
            "tract",
            "--out",
            out,
        ];
        a.extend_from_slice(extra);
        let o = flowar(&a, tmp.path());
        assert!(o.status.success(), "{}", text(&o));
    };
    gen("a0", &["--shard", "0/2"]);
    gen("a1", &["--shard", "1/2"]);
    gen("b1", &["--shard", "1/2", "--seed", "9"]);
    gen("c1", &["--shard", "1/2"]);
    let out = tmp.path().join("out.npz");
    let cases: [(&[&str], i32, &str); 5] = [
        (&["a0"], 1, "2 of 4 images are missing: indices 1, 3"),
        (
            &["a0", "a1", "c1"],
            1,
            "appear more than once: 1 (a1/000001.png and c1/000001.png)",
        ),
        (&["a0", "b1"], 1, "flowar:seed `0`"),
        (
            &["a0", "a1", "--count", "3"],
            2,
            "disagrees with the count 4",
        ),
        (&["a0", "nowhere"], 1, "nowhere"),
    ];
    for (args, code, needle) in cases {
        let mut a = vec!["pack"];
        a.extend_from_slice(args);
        a.extend(["--out", out.to_str().unwrap()]);
        let o = flowar(&a, tmp.path());
        let t = text(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {t}");
        assert!(t.contains(needle), "{args:?}: {t}");
        assert!(!out.exists(), "{args:?} left an output");
        let partial = std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(".tmp-"));
        assert!(!partial, "{args:?} left a partial file");
    }
    // A complete set packs; an existing output needs --force.
    let ok = flowar(
        &["pack", "a0", "a1", "--out", out.to_str().unwrap()],
        tmp.path(),
    );
    assert!(ok.status.success(), "{}", text(&ok));
    let again = flowar(
        &["pack", "a0", "a1", "--out", out.to_str().unwrap()],
        tmp.path(),
    );
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(text(&again).contains("--force"));
}

/// `flowar pack` refuses a set whose halves differ in any one recorded setting (model hash,
/// cfg, guidance, steps, solver; the seed is in the test above), naming the setting and
/// both values, and refuses an image that is not 8-bit RGB; either way it writes nothing.
#[test]
fn pack_refuses_each_mixed_setting_and_non_rgb_images() {
    let tmp = tempfile::tempdir().unwrap();
    let model = convert_spatial(tmp.path());
    // Another model: the same weights under another latent scale hash differently.
    let other = convert_spatial_with(tmp.path(), "m2", &["--latent-scale", "0.3"]);
    let gen = |model: &Path, out: &str, extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--count",
            "2",
            "--provider",
            "tract",
            "--out",
            out,
        ];
        a.extend_from_slice(extra);
        if !extra.contains(&"--steps") {
            a.extend(["--steps", "2"]);
        }
        let o = flowar(&a, tmp.path());
        assert!(o.status.success(), "{}", text(&o));
    };
    let hash = |m: &Path| -> String {
        let v: serde_json::Value = manifest_json(m);
        v["model_hash"].as_str().unwrap().to_string()
    };
    assert_ne!(hash(&model), hash(&other));
    gen(&model, "a0", &["--shard", "0/2"]);
    let out = tmp.path().join("out.npz");
    let cases: [(&str, &Path, &[&str], String); 5] = [
        (
            "model",
            &other,
            &[],
            format!(
                "flowar:model_hash `{}`, {} has `{}`",
                hash(&model),
                Path::new("model/000001.png").display(),
                hash(&other)
            ),
        ),
        (
            "cfg",
            &model,
            &["--cfg", "2.5"],
            "flowar:cfg `4.3`, ".into(),
        ),
        (
            "guidance",
            &model,
            &["--guidance", "0.5"],
            "flowar:guidance `0.9`, ".into(),
        ),
        (
            "steps",
            &model,
            &["--steps", "3"],
            "flowar:steps `2`, ".into(),
        ),
        (
            "solver",
            &model,
            &["--solver", "heun"],
            "flowar:solver `euler`, ".into(),
        ),
    ];
    for (dir, m, extra, needle) in cases {
        let mut extra = extra.to_vec();
        extra.extend(["--shard", "1/2"]);
        gen(m, dir, &extra);
        let o = flowar(
            &["pack", "a0", dir, "--out", out.to_str().unwrap()],
            tmp.path(),
        );
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{dir}: {t}");
        assert!(t.contains("the set mixes settings"), "{dir}: {t}");
        assert!(t.contains(&needle), "{dir}: `{needle}` not in {t}");
        assert!(!out.exists(), "{dir} left an output");
    }
    // The other half of a0's own run packs, so only the one setting differed above.
    gen(&model, "a1", &["--shard", "1/2"]);
    let ok = flowar(
        &["pack", "a0", "a1", "--out", out.to_str().unwrap()],
        tmp.path(),
    );
    assert!(ok.status.success(), "{}", text(&ok));
    std::fs::remove_file(&out).unwrap();

    // An image that is not 8-bit RGB (here RGBA) is refused by name, before any pixels.
    let rgba = tmp.path().join("rgba");
    std::fs::create_dir(&rgba).unwrap();
    let file = std::fs::File::create(rgba.join("000001.png")).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), 256, 256);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().unwrap();
    w.write_image_data(&vec![7u8; 256 * 256 * 4]).unwrap();
    w.finish().unwrap();
    let o = flowar(
        &["pack", "a0", "rgba", "--out", out.to_str().unwrap()],
        tmp.path(),
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("000001.png: Rgba Eight-bit, expected 8-bit RGB as flowar writes"),
        "{t}"
    );
    assert!(!out.exists(), "a non-RGB image left an output");
}
