//! The hostile-input corpus: every case in `hostile/cases.json` runs the built `flowar`
//! binary on a bad input and must fail with the expected exit code and a message naming
//! the problem, never panic, and leave nothing behind (no model folder, no PNG, no
//! `.partial` or `.tmp` file, no change to files that were there before).
//!
//! Inputs are generated here from the fixtures (truncations, corruptions, edited
//! tensors, edited model folders) or taken from `hostile/files/`. The binary is
//! `target/<profile>/flowar`, found next to this test executable and built with
//! `cargo build -p flowar-cli` when it is missing or older than the sources it is built from.
//!
//! Also here: Ctrl-C (SIGINT) during `convert` and `generate` leaves no half-written output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use flowar_fuzz::torch::{
    foreign_global_checkpoint, safetensors_bytes, torch_checkpoint, torch_zip, training_checkpoint,
    TensorDef, TrainingExtras,
};
use safetensors::Dtype;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            newest_mtime(&p)
        } else {
            e.metadata().ok().and_then(|m| m.modified().ok())
        };
        if let Some(t) = t {
            newest = Some(newest.map_or(t, |n: SystemTime| n.max(t)));
        }
    }
    newest
}

/// `target/<profile>/flowar` next to this test executable, built if missing or stale.
fn flowar_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("FLOWAR_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/hostile-<hash>
        let profile_dir = exe
            .ancestors()
            .find(|a| a.file_name().is_some_and(|n| n == "deps"))
            .and_then(Path::parent)
            .expect("test executable lives in target/<profile>/deps")
            .to_path_buf();
        let bin = profile_dir.join(format!("flowar{}", std::env::consts::EXE_SUFFIX));
        let bin_time = bin.metadata().ok().and_then(|m| m.modified().ok());
        let src_time = [
            "cli/src",
            "cli/Cargo.toml",
            "runtime/src",
            "exporter/src",
            "format/src",
            "bench/src",
            "Cargo.lock",
        ]
        .map(|p| repo().join(p))
        .iter()
        .filter_map(|p| {
            if p.is_dir() {
                newest_mtime(p)
            } else {
                p.metadata().ok().and_then(|m| m.modified().ok())
            }
        })
        .max();
        let stale = match (bin_time, src_time) {
            (None, _) => true,
            (Some(b), Some(s)) => b < s,
            (Some(_), None) => false,
        };
        if stale {
            let profile = profile_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "debug".into());
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.args(["build", "-p", "flowar-cli"]).current_dir(repo());
            if profile == "release" {
                cmd.arg("--release");
            }
            println!(
                "{} is {}; building it: cargo build -p flowar-cli{}",
                bin.display(),
                if bin_time.is_none() {
                    "missing"
                } else {
                    "older than its sources"
                },
                if profile == "release" {
                    " --release"
                } else {
                    ""
                }
            );
            let status = cmd.status().expect("run cargo build");
            assert!(status.success(), "cargo build -p flowar-cli failed");
        }
        assert!(bin.is_file(), "{} not found", bin.display());
        bin
    })
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs flowar in `cwd`, killing it after `limit`.
fn flowar(args: &[String], cwd: &Path, limit: Duration) -> Output {
    let mut child = Command::new(flowar_bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flowar");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().expect("collect output");
            panic!(
                "flowar {args:?} still running after {limit:?} (a hang): {}",
                text(&o)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect output")
}

/// The spatial fixture converted once per test run (read-only for the cases).
fn shared_model() -> &'static Path {
    static MODEL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &MODEL
        .get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("flowar-hostile-model-")
                .tempdir()
                .expect("tempdir");
            let out = dir.path().join("model");
            let f = repo().join("tests/fixtures/spatial");
            let args: Vec<String> = vec![
                "convert".into(),
                "--flowar".into(),
                f.join("flowar.pth").display().to_string(),
                "--vae".into(),
                f.join("vae.ckpt").display().to_string(),
                "--out".into(),
                out.display().to_string(),
            ];
            let o = flowar(&args, dir.path(), Duration::from_secs(600));
            assert!(
                o.status.success(),
                "converting the spatial fixture: {}",
                text(&o)
            );
            (dir, out)
        })
        .1
}

// ------------------------------------------------------------------ input generators

/// A named source: `fixture:REL`, `file:REL` (tests/hostile/files), `model:FILE` (the
/// shared converted model) or an earlier input of the same case.
fn source_path(src: &str, made: &BTreeMap<String, PathBuf>) -> PathBuf {
    if let Some(rel) = src.strip_prefix("fixture:") {
        repo().join("tests/fixtures").join(rel)
    } else if let Some(rel) = src.strip_prefix("file:") {
        repo().join("tests/hostile/files").join(rel)
    } else if let Some(rel) = src.strip_prefix("model:") {
        shared_model().join(rel)
    } else if let Some(p) = made.get(src) {
        p.clone()
    } else {
        panic!("unknown source `{src}`")
    }
}

fn read_src(spec: &Value, made: &BTreeMap<String, PathBuf>) -> Vec<u8> {
    let src = spec["from"].as_str().expect("`from`");
    std::fs::read(source_path(src, made)).unwrap_or_else(|e| panic!("{src}: {e}"))
}

/// A position given as a fraction of the length (`0.5`) or a byte offset (`-10` from
/// the end, `100` from the start).
fn position(v: &Value, len: usize) -> usize {
    match v {
        Value::Number(n) if n.is_f64() => (n.as_f64().unwrap() * len as f64) as usize,
        Value::Number(n) => {
            let i = n.as_i64().unwrap();
            if i < 0 {
                len.saturating_sub(i.unsigned_abs() as usize)
            } else {
                (i as usize).min(len)
            }
        }
        _ => panic!("bad position {v}"),
    }
}

type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

/// Loads every float tensor of a checkpoint as float32 bytes.
fn load_tensors(path: &Path) -> Tensors {
    let ck = flowar_exporter::checkpoint::Checkpoint::open(path).expect("readable source");
    ck.keys()
        .into_iter()
        .map(|k| {
            let v = ck.load_f32(k).expect("tensor");
            let shape = ck.info(k).expect("info").shape.clone();
            (
                k.to_string(),
                Dtype::F32,
                shape,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect()
}

fn find<'a>(t: &'a mut Tensors, key: &str) -> &'a mut (String, Dtype, Vec<usize>, Vec<u8>) {
    t.iter_mut()
        .find(|e| e.0 == key)
        .unwrap_or_else(|| panic!("no tensor `{key}` to edit"))
}

fn apply_ops(t: &mut Tensors, ops: &[Value]) {
    for op in ops {
        let key = op["key"].as_str().unwrap_or("");
        match op["op"].as_str().expect("`op`") {
            // Same values as int64.
            "int64" => {
                let e = find(t, key);
                e.3 =
                    e.3.chunks_exact(4)
                        .flat_map(|c| {
                            (f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).to_le_bytes()
                        })
                        .collect();
                e.1 = Dtype::I64;
            }
            "shape" => {
                let shape: Vec<usize> = serde_json::from_value(op["shape"].clone()).unwrap();
                let e = find(t, key);
                let n: usize = shape.iter().product();
                e.3.resize(n * 4, 0);
                e.2 = shape;
            }
            "remove" => t.retain(|e| e.0 != key),
            "add" => {
                let shape: Vec<usize> = serde_json::from_value(op["shape"].clone()).unwrap();
                let n: usize = shape.iter().product();
                t.push((key.into(), Dtype::F32, shape, vec![0; n * 4]));
            }
            "set" => {
                let value = match op["value"].as_str() {
                    Some("nan") => f32::NAN,
                    Some("inf") => f32::INFINITY,
                    Some("-inf") => f32::NEG_INFINITY,
                    _ => op["value"].as_f64().expect("value") as f32,
                };
                let e = find(t, key);
                let at = op["index"].as_u64().unwrap_or(0) as usize * 4;
                e.3[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
            "keep_prefix" => {
                let p = op["prefix"].as_str().unwrap();
                t.retain(|e| e.0.starts_with(p));
            }
            other => panic!("unknown tensor op `{other}`"),
        }
    }
}

fn write_tensors(t: &Tensors, format: &str, wrap: Option<&str>) -> Vec<u8> {
    match format {
        "safetensors" => safetensors_bytes(t),
        "pth" => {
            let defs: Vec<TensorDef> = t
                .iter()
                .map(|(n, d, s, b)| TensorDef {
                    name: n.clone(),
                    class: match d {
                        Dtype::I64 => "LongStorage",
                        Dtype::F16 => "HalfStorage",
                        _ => "FloatStorage",
                    }
                    .into(),
                    shape: s.clone(),
                    data: b.clone(),
                })
                .collect();
            torch_checkpoint(&defs, wrap)
        }
        other => panic!("unknown format `{other}`"),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Applies `edits` to a copy of the shared model in `dir`.
fn edit_model(dir: &Path, edits: &[Value]) {
    copy_dir(shared_model(), dir);
    let manifest_path = dir.join("manifest.json");
    for e in edits {
        match e["op"].as_str().expect("`op`") {
            "swap" => {
                let (a, b) = (
                    dir.join(e["a"].as_str().unwrap()),
                    dir.join(e["b"].as_str().unwrap()),
                );
                let tmp = dir.join(".swap");
                std::fs::rename(&a, &tmp).unwrap();
                std::fs::rename(&b, &a).unwrap();
                std::fs::rename(&tmp, &b).unwrap();
            }
            "remove" => {
                let p = dir.join(e["file"].as_str().unwrap());
                if p.is_dir() {
                    std::fs::remove_dir_all(p).unwrap();
                } else {
                    std::fs::remove_file(p).unwrap();
                }
            }
            // Truncate or corrupt a graph; with `fix_sha`, update the manifest's sha256 so
            // the damage reaches the graph parser.
            "damage" => {
                let file = e["file"].as_str().unwrap();
                let p = dir.join(file);
                let mut bytes = std::fs::read(&p).unwrap();
                if let Some(keep) = e.get("keep") {
                    let n = position(keep, bytes.len());
                    bytes.truncate(n);
                }
                if let Some(at) = e.get("corrupt_at") {
                    let a = position(at, bytes.len());
                    let n = e["len"].as_u64().unwrap_or(64) as usize;
                    for b in bytes.iter_mut().skip(a).take(n) {
                        *b ^= 0xa5;
                    }
                }
                std::fs::write(&p, &bytes).unwrap();
                if e["fix_sha"].as_bool().unwrap_or(false) {
                    let mut m: Value =
                        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap())
                            .unwrap();
                    let graphs = m["graphs"].as_object_mut().unwrap();
                    for g in graphs.values_mut() {
                        if g["file"] == file {
                            g["sha256"] = Value::String(sha256_hex(&bytes));
                        }
                    }
                    std::fs::write(&manifest_path, serde_json::to_string_pretty(&m).unwrap())
                        .unwrap();
                }
            }
            "manifest" => {
                let mut m: Value =
                    serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap())
                        .unwrap();
                let ptr = e["pointer"].as_str().unwrap();
                *m.pointer_mut(ptr)
                    .unwrap_or_else(|| panic!("no {ptr} in the manifest")) = e["value"].clone();
                std::fs::write(&manifest_path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
            }
            "write" => {
                std::fs::write(
                    dir.join(e["file"].as_str().unwrap()),
                    e["text"].as_str().unwrap(),
                )
                .unwrap();
            }
            other => panic!("unknown model edit `{other}`"),
        }
    }
}

/// Creates input `name` from its spec under `dir`; returns its path.
fn make_input(name: &str, spec: &Value, dir: &Path, made: &BTreeMap<String, PathBuf>) -> PathBuf {
    let ext = spec["ext"].as_str().unwrap_or("");
    let path = dir.join(format!("{name}{ext}"));
    let bytes: Vec<u8> = match spec["kind"].as_str().expect("`kind`") {
        "text" => spec["text"].as_str().unwrap().as_bytes().to_vec(),
        "hex" => {
            let h = spec["hex"].as_str().unwrap();
            (0..h.len() / 2)
                .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
                .collect()
        }
        "empty" => Vec::new(),
        "dir" => {
            std::fs::create_dir_all(&path).unwrap();
            return path;
        }
        "random" => {
            let mut rng = flowar_fuzz::Rng::new(spec["seed"].as_u64().unwrap_or(1));
            (0..spec["len"].as_u64().unwrap_or(4096))
                .map(|_| rng.byte())
                .collect()
        }
        "truncate" => {
            let mut b = read_src(spec, made);
            let n = position(&spec["keep"], b.len());
            b.truncate(n);
            b
        }
        "corrupt" => {
            let mut b = read_src(spec, made);
            let a = position(&spec["at"], b.len());
            let n = spec["len"].as_u64().unwrap_or(64) as usize;
            for x in b.iter_mut().skip(a).take(n) {
                *x ^= 0xa5;
            }
            b
        }
        "foreign_global" => foreign_global_checkpoint(
            spec["module"].as_str().unwrap(),
            spec["name"].as_str().unwrap(),
        ),
        // A training checkpoint (model, model_ema, optimizer, args...) with `from`'s
        // weights in both state dicts; `call` ("module.name") is called inside `args`.
        "training" => {
            let tensors: Vec<TensorDef> =
                load_tensors(&source_path(spec["from"].as_str().unwrap(), made))
                    .into_iter()
                    .map(|(name, _, shape, data)| TensorDef {
                        name,
                        class: "FloatStorage".into(),
                        shape,
                        data,
                    })
                    .collect();
            let extras = TrainingExtras {
                call_in_args: spec["call"].as_str().map(|c| {
                    let (m, n) = c.rsplit_once('.').expect("module.name");
                    (m.to_string(), n.to_string())
                }),
                no_ema: spec["no_ema"].as_bool().unwrap_or(false),
            };
            training_checkpoint(&tensors, &tensors, &extras)
        }
        "pth_without_data_pkl" => torch_zip("archive", None, &[("0".into(), vec![0; 64])]),
        "tensors" => {
            let mut t = match spec["from"].as_str() {
                Some(src) => load_tensors(&source_path(src, made)),
                None => Vec::new(),
            };
            apply_ops(
                &mut t,
                spec["ops"].as_array().map(Vec::as_slice).unwrap_or(&[]),
            );
            write_tensors(
                &t,
                spec["format"].as_str().unwrap_or("safetensors"),
                spec["wrap"].as_str(),
            )
        }
        // A raw safetensors file with exactly these tensors (any dtype name safetensors knows).
        "safetensors" => {
            let mut t: Tensors = Vec::new();
            for (k, v) in spec["tensors"].as_object().unwrap() {
                let shape: Vec<usize> = serde_json::from_value(v["shape"].clone()).unwrap();
                let dtype = match v["dtype"].as_str().unwrap_or("F32") {
                    "F32" => Dtype::F32,
                    "F64" => Dtype::F64,
                    "I64" => Dtype::I64,
                    "F16" => Dtype::F16,
                    d => panic!("dtype {d}"),
                };
                let n: usize = shape.iter().product::<usize>() * dtype.bitsize() / 8;
                t.push((k.clone(), dtype, shape, vec![0; n]));
            }
            safetensors_bytes(&t)
        }
        // A KL-VAE decoder for `latent_channels` latents (random weights).
        "tiny_vae" => {
            let c = spec["latent_channels"].as_u64().unwrap() as usize;
            flowar_fuzz::seeds::to_safetensors(&flowar_fuzz::seeds::tiny_vae(c))
        }
        // A copy of the folder `from` (a diffusers VAE folder), with the files in `remove`
        // removed and the fields in `config_set` set in its config.json (a string in
        // `config_text` replaces the whole file).
        "folder" => {
            copy_dir(
                &source_path(spec["from"].as_str().expect("`from`"), made),
                &path,
            );
            for f in spec["remove"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                std::fs::remove_file(path.join(f.as_str().unwrap())).unwrap();
            }
            let config = path.join("config.json");
            if let Some(text) = spec["config_text"].as_str() {
                std::fs::write(&config, text).unwrap();
            }
            if let Some(set) = spec["config_set"].as_object() {
                let mut c: Value =
                    serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
                for (k, v) in set {
                    c[k] = v.clone();
                }
                std::fs::write(&config, serde_json::to_string_pretty(&c).unwrap()).unwrap();
            }
            return path;
        }
        "model" => {
            edit_model(
                &path,
                spec["edits"].as_array().map(Vec::as_slice).unwrap_or(&[]),
            );
            return path;
        }
        other => panic!("unknown input kind `{other}`"),
    };
    std::fs::write(&path, bytes).unwrap();
    path
}

// ------------------------------------------------------------------ the check

/// Every file under `dir` with its length and modification time, and every folder (an
/// empty `--out` folder is left behind too) as `None`: a folder by its presence alone, as
/// its time changes whenever a file is made and removed inside it.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<(u64, Option<SystemTime>)>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                out.insert(p.clone(), None);
                stack.push(p);
            } else {
                out.insert(p, Some((m.len(), m.modified().ok())));
            }
        }
    }
    out
}

fn all_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

fn expand(arg: &str, case_dir: &Path, made: &BTreeMap<String, PathBuf>) -> String {
    let mut s = arg.replace("{work}", &case_dir.join("work").display().to_string());
    while let Some(a) = s.find('{') {
        let Some(b) = s[a..].find('}') else { break };
        let key = &s[a + 1..a + b];
        let value = if key == "model" {
            shared_model().display().to_string()
        } else if key.contains(':') {
            source_path(key, made).display().to_string()
        } else {
            made.get(key)
                .unwrap_or_else(|| panic!("placeholder {{{key}}} names no input"))
                .display()
                .to_string()
        };
        s.replace_range(a..a + b + 1, &value);
    }
    s
}

/// Runs one case; returns a description of what went wrong, if anything.
fn run_case(index: usize, case: &Value, root: &Path) -> Result<(), String> {
    let name = case["name"].as_str().expect("`name`");
    // Not the case's name: a needle must match the message, not a path that repeats it.
    let case_dir = root.join(format!("c{index:03}"));
    let inputs_dir = case_dir.join("inputs");
    let work = case_dir.join("work");
    std::fs::create_dir_all(&inputs_dir).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let mut made = BTreeMap::new();
    if let Some(inputs) = case["inputs"].as_object() {
        for (k, spec) in inputs {
            let p = make_input(k, spec, &inputs_dir, &made);
            made.insert(k.clone(), p);
        }
    }
    let args: Vec<String> = case["args"]
        .as_array()
        .expect("`args`")
        .iter()
        .map(|a| expand(a.as_str().expect("string arg"), &case_dir, &made))
        .collect();
    let before = snapshot(&case_dir);
    let o = flowar(&args, &work, Duration::from_secs(300));
    let after = snapshot(&case_dir);
    let t = text(&o);
    let mut problems = Vec::new();
    let want = case["exit"].as_i64().expect("`exit`");
    match o.status.code() {
        Some(0) => problems.push("succeeded".to_string()),
        Some(c) if i64::from(c) != want => problems.push(format!("exit code {c}, expected {want}")),
        None => problems.push("killed by a signal".into()),
        _ => {}
    }
    let needles: Vec<&str> = match &case["contains"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => panic!("{name}: `contains` must be a string or a list"),
    };
    for n in needles {
        let n = expand(n, &case_dir, &made);
        if !t.contains(&n) {
            problems.push(format!("message lacks `{n}`"));
        }
    }
    if t.contains("panicked") || t.contains("RUST_BACKTRACE") {
        problems.push("panicked".into());
    }
    let created: Vec<_> = after.keys().filter(|p| !before.contains_key(*p)).collect();
    if !created.is_empty() {
        problems.push(format!("left files or folders behind: {created:?}"));
    }
    let changed: Vec<_> = before
        .iter()
        .filter(|(p, v)| after.get(*p) != Some(v))
        .map(|(p, _)| p)
        .collect();
    if !changed.is_empty() {
        problems.push(format!("modified or removed existing entries: {changed:?}"));
    }
    let partial: Vec<_> = all_entries(&case_dir)
        .into_iter()
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            n.contains(".partial") || n.contains(".tmp-") || n.ends_with(".old")
        })
        .collect();
    if !partial.is_empty() {
        problems.push(format!("temporary entries left: {partial:?}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{name}: {}\n    flowar {}\n    output: {}",
            problems.join("; "),
            args.join(" "),
            t.trim().replace('\n', "\n            ")
        ))
    }
}

fn load_cases() -> Vec<Value> {
    let path = repo().join("tests/hostile/cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    v["cases"].as_array().expect("`cases` list").clone()
}

/// The cases `hostile/cases.json` holds: one lost from the file (a bad merge, a cut edit)
/// fails here instead of shrinking the corpus unseen. Update it with the file.
const CORPUS_CASES: usize = 151;

#[test]
fn hostile_corpus() {
    let cases = load_cases();
    assert_eq!(
        cases.len(),
        CORPUS_CASES,
        "cases in hostile/cases.json (update CORPUS_CASES with the file)"
    );
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        let n = c["name"].as_str().expect("name");
        assert!(names.insert(n), "duplicate case name {n}");
        assert_ne!(
            c["exit"].as_i64(),
            Some(0),
            "{n}: expected exit code must be nonzero"
        );
    }
    let only = std::env::var("FLOWAR_HOSTILE_ONLY").ok();
    let cases: Vec<&Value> = cases
        .iter()
        .filter(|c| {
            only.as_deref()
                .is_none_or(|o| c["name"].as_str().unwrap().contains(o))
        })
        .collect();
    assert!(
        !cases.is_empty(),
        "FLOWAR_HOSTILE_ONLY={} matches no hostile case: a filter that runs nothing is a mistake",
        only.as_deref().unwrap_or("")
    );
    flowar_bin();
    if cases.iter().any(|c| {
        c.to_string().contains("{model}")
            || c.to_string().contains("model:")
            || c.to_string().contains("\"model\"")
    }) {
        shared_model();
    }
    let root = tempfile::Builder::new()
        .prefix("flowar-hostile-")
        .tempdir()
        .unwrap();
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let ran = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(case) = cases.get(i) else { break };
                let t = Instant::now();
                let r = run_case(i, case, root.path());
                ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                println!(
                    "{} {} ({:.1}s)",
                    if r.is_ok() { "ok  " } else { "FAIL" },
                    case["name"].as_str().unwrap(),
                    t.elapsed().as_secs_f64()
                );
                if let Err(e) = r {
                    failures.lock().unwrap().push(e);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    // Every case of the file ran (or every one the filter picked).
    assert_eq!(ran.into_inner(), cases.len(), "hostile cases run");
    assert!(
        failures.is_empty(),
        "{} of {} hostile case(s) failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    println!("{} hostile cases passed", cases.len());
}

// ------------------------------------------------------------------ Ctrl-C

#[cfg(unix)]
fn sigint(pid: u32) {
    let ok = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -INT {pid} failed");
}

/// How long a wait may last before the test calls it a hang. Not a speed check: every
/// wait here ends in well under a second of work on any machine, so only a process that
/// stopped making progress reaches this.
#[cfg(unix)]
const HANG: Duration = Duration::from_secs(600);

/// Kills `child` and fails, saying it hung, once `HANG` has passed since `start`.
#[cfg(unix)]
fn hang_guard(child: &mut std::process::Child, start: Instant, waiting_for: &str) {
    if start.elapsed() > HANG {
        let _ = child.kill();
        panic!("HANG: flowar made no progress for {HANG:?} while waiting for {waiting_for}");
    }
}

#[cfg(unix)]
fn wait_for(child: &mut std::process::Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        hang_guard(child, start, "it to stop after SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `flowar convert --preset s --out s` in `dir` (output streams from `stdio`) and
/// waits until its staging folder exists and holds work in progress.
#[cfg(unix)]
fn convert_preset_s_until_staging(
    dir: &Path,
    stdio: fn() -> Stdio,
) -> (std::process::Child, PathBuf) {
    let mut child = Command::new(flowar_bin())
        .args([
            "convert",
            "--preset",
            "s",
            "--random-init",
            "3",
            "--out",
            "s",
        ])
        .current_dir(dir)
        .stdout(stdio())
        .stderr(stdio())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let found = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().contains(".s.tmp-"));
        if let Some(p) = found {
            return (child, p);
        }
        if let Some(s) = child.try_wait().unwrap() {
            panic!("convert --preset s finished ({s}) before it could be interrupted");
        }
        hang_guard(&mut child, start, "convert to create its staging folder");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(unix)]
#[test]
fn ctrl_c_during_convert_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s");
    let (mut child, staging) = convert_preset_s_until_staging(tmp.path(), Stdio::piped);
    std::thread::sleep(Duration::from_millis(300));
    sigint(child.id());
    let status = wait_for(&mut child);
    let o = child.wait_with_output().unwrap();
    let t = text(&o);
    assert_eq!(status.code(), Some(130), "{t}");
    assert!(t.contains("interrupted"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    assert!(!out.exists(), "output folder exists after Ctrl-C");
    assert!(
        !staging.exists(),
        "staging folder {} left behind",
        staging.display()
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A convert killed outright (SIGKILL: no handler runs) leaves its hidden staging folder;
/// the next convert to the same output removes it, says so, and completes.
#[cfg(unix)]
#[test]
fn a_convert_killed_outright_is_cleaned_up_by_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s");
    let (mut child, staging) = convert_preset_s_until_staging(tmp.path(), Stdio::null);
    std::thread::sleep(Duration::from_millis(300));
    let killed = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_for(&mut child);
    assert!(!status.success());
    assert!(
        staging.is_dir() && !out.exists(),
        "a SIGKILL runs no cleanup"
    );
    let f = repo().join("tests/fixtures/spatial");
    let o = Command::new(flowar_bin())
        .args(["convert", "--flowar"])
        .arg(f.join("flowar.pth"))
        .arg("--vae")
        .arg(f.join("vae.ckpt"))
        .arg("--out")
        .arg(&out)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("removed 1 staging folder(s) that an interrupted convert left"),
        "{t}"
    );
    assert!(!staging.exists() && out.join("manifest.json").is_file());
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["s"], "left behind: {left:?}");
}

#[cfg(unix)]
#[test]
fn ctrl_c_during_generate_writes_no_run_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("images");
    let mut child = Command::new(flowar_bin())
        .args(["generate", "--model"])
        .arg(shared_model())
        .args([
            "--provider",
            "tract",
            "--count",
            "64",
            "--batch-size",
            "2",
            "--steps",
            "50",
            "--out",
        ])
        .arg(&out)
        .current_dir(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for its readiness line: the model is loaded and sampling starts (64 images of
    // 50 steps follow, far more than the signal takes to arrive).
    let stderr = child.stderr.take().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("provider:") {
                let _ = ready_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let start = Instant::now();
    loop {
        if ready_rx.try_recv().is_ok() {
            break;
        }
        if let Some(s) = child.try_wait().unwrap() {
            panic!("generate ended ({s}) before its readiness line");
        }
        hang_guard(&mut child, start, "generate's readiness line");
        std::thread::sleep(Duration::from_millis(20));
    }
    sigint(child.id());
    let status = wait_for(&mut child);
    let o = child.wait_with_output().unwrap();
    let t = format!("{}{}", text(&o), reader.join().unwrap());
    assert_eq!(status.code(), Some(130), "{t}");
    assert!(t.contains("interrupted") && t.contains("cancelled"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    assert!(
        !out.join("run.json").exists(),
        "run.json written by an interrupted run"
    );
    for e in all_entries(tmp.path()) {
        let n = e.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!n.contains(".tmp-"), "temporary file left: {}", e.display());
        if n.ends_with(".png") {
            // Whatever PNG exists is complete.
            let f = std::io::BufReader::new(std::fs::File::open(&e).unwrap());
            let mut r = png::Decoder::new(f).read_info().unwrap();
            let mut buf = vec![0; r.output_buffer_size().unwrap()];
            r.next_frame(&mut buf).unwrap();
        }
    }
    assert!(!tmp.path().join("flowar-grid.png").exists());
}
