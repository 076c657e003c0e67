//! The C ABI from C: the checked-in header is current, the C examples build and write
//! images (generation, and in-painting on the edit fixture), the C error-path program
//! passes (natively and under valgrind), the static library links, and the C++ wrapper
//! compiles and runs (generation and an edit).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The folder holding `libflowar.so` / `libflowar.a`: this test binary's own folder,
/// `target/<profile>/deps/`. The library's rlib is a dependency of this test, and rustc
/// emits the cdylib and staticlib beside it in the same invocation, so they are always
/// current there. (`target/<profile>/libflowar.so` is only refreshed by `cargo build`,
/// not by `cargo test`, so it can be stale.)
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("target/<profile>/deps").to_path_buf();
    for f in ["libflowar.so", "libflowar.a"] {
        assert!(
            dir.join(f).is_file(),
            "{} is missing: the rlib, cdylib and staticlib of flowar-capi are built together",
            dir.join(f).display()
        );
    }
    dir
}

/// The spatial fixture converted once per test process.
fn model() -> &'static Path {
    static MODEL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &MODEL
        .get_or_init(|| flowar_tests::convert_fixture("spatial"))
        .1
}

/// The edit fixture (128x128, a diffusers VAE with its encoder), converted once per test
/// process.
fn edit_model() -> &'static Path {
    static MODEL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &MODEL
        .get_or_init(|| flowar_tests::convert_vae_fixture("edit-sd-f8c4"))
        .1
}

/// Fixture image `i` of the edit fixture (RGB) and its mask (grey), 128x128.
fn edit_fixture_image(i: usize) -> (Vec<u8>, Vec<u8>) {
    use flowar_runtime::edit_input::load_source;
    let dir = flowar_tests::fixture("edit-sd-f8c4");
    let src = load_source(&dir.join(format!("image{i}.png")), 128).unwrap();
    // The mask is a grey PNG: read as RGB, each pixel's channels are its grey value.
    let mask = load_source(&dir.join(format!("mask{i}.png")), 128).unwrap();
    let mask = mask.image.pixels.iter().step_by(3).copied().collect();
    (src.image.pixels, mask)
}

/// The pixels of a binary PPM (P6) or PGM (P5) with maxval 255 and no comments.
fn read_pnm(path: &Path, magic: &str, width: usize, height: usize, channels: usize) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = format!("{magic}\n{width} {height}\n255\n");
    assert_eq!(
        &bytes[..header.len()],
        header.as_bytes(),
        "{}",
        path.display()
    );
    let pixels = bytes[header.len()..].to_vec();
    assert_eq!(
        pixels.len(),
        width * height * channels,
        "{}",
        path.display()
    );
    pixels
}

fn show(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", show(&out));
    out
}

/// Compiles C sources against the header and the shared library, into `out`.
fn cc_shared(sources: &[PathBuf], out: &Path, extra: &[&str]) {
    let lib = lib_dir();
    let mut cmd = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .arg("-I")
        .arg(root().join("include"))
        .args(sources)
        .arg("-L")
        .arg(&lib)
        // RPATH, not RUNPATH: `cargo test` sets LD_LIBRARY_PATH to include target/<profile>/,
        // whose libflowar.so only `cargo build` refreshes; RUNPATH would lose to it.
        .arg("-Wl,--disable-new-dtags")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lflowar", "-lpthread"])
        .args(extra)
        .arg("-o")
        .arg(out);
    run(&mut cmd);
}

#[test]
fn header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("config");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen");
    let mut text = Vec::new();
    bindings.write(&mut text);
    let text = String::from_utf8(text).expect("utf-8 header");
    let path = root().join("include/flowar.h");
    if std::env::var_os("FLOWAR_BLESS").is_some() {
        std::fs::write(&path, &text).expect("write header");
        eprintln!("wrote {}", path.display());
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == text,
        "{} is stale: regenerate it with `FLOWAR_BLESS=1 cargo test -p flowar-capi --test c_api header` \
         and commit it",
        path.display()
    );
}

#[test]
fn c_example_writes_images() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("generate");
    cc_shared(&[root().join("examples/c/generate.c")], &exe, &[]);
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let out = run(Command::new(&exe)
        .arg(model())
        .arg(&images)
        .args(["--provider", "tract", "--steps", "4", "--seed", "5"])
        .args(["--classes", "3,917,12"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("provider tract"), "{}", show(&out));
    assert!(
        stderr.contains("scale 1/5"),
        "no progress shown: {}",
        show(&out)
    );
    for class in [3, 917, 12] {
        let bytes = std::fs::read(images.join(format!("class-{class}.ppm")))
            .unwrap_or_else(|e| panic!("class-{class}.ppm: {e}\n{}", show(&out)));
        let header = b"P6\n256 256\n255\n";
        assert_eq!(&bytes[..header.len()], header);
        let pixels = &bytes[header.len()..];
        assert_eq!(pixels.len(), 256 * 256 * 3);
        assert!(pixels.iter().any(|&p| p != pixels[0]), "constant image");
    }
    // Bad input is reported with the library's message and a nonzero exit.
    let bad = Command::new(&exe)
        .arg(tmp.path().join("no-model"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("[code 3]") && stderr.contains("no-model"),
        "{}",
        show(&bad)
    );
}

/// `examples/c/edit.c` in-paints its synthetic image, and a fixture image it reads as PPM
/// with its PGM mask: with `--composite` every pixel the mask keeps is the source's, and
/// the masked region is regenerated; the two `--count` edits differ.
#[test]
fn c_edit_example_inpaints() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("edit");
    cc_shared(&[root().join("examples/c/edit.c")], &exe, &[]);
    let check = |dir: &Path, count: usize| {
        let source = read_pnm(&dir.join("source.ppm"), "P6", 128, 128, 3);
        let mask = read_pnm(&dir.join("mask.pgm"), "P5", 128, 128, 1);
        assert!(mask.iter().any(|&m| m > 0) && mask.contains(&0));
        let edits: Vec<Vec<u8>> = (0..count)
            .map(|j| read_pnm(&dir.join(format!("edit-{j}.ppm")), "P6", 128, 128, 3))
            .collect();
        for edit in &edits {
            let (mut kept, mut regenerated) = (0, 0);
            for (p, &m) in mask.iter().enumerate() {
                let same = edit[p * 3..p * 3 + 3] == source[p * 3..p * 3 + 3];
                if m == 0 {
                    assert!(same, "pixel {p} outside the mask changed");
                    kept += 1;
                } else if !same {
                    regenerated += 1;
                }
            }
            assert!(
                kept > 0 && regenerated > 0,
                "{kept} kept, {regenerated} regenerated"
            );
        }
        if count > 1 {
            assert!(edits[0] != edits[1], "two edits are equal");
        }
    };

    // The synthetic image and square mask, two edits.
    let synthetic = tmp.path().join("synthetic");
    std::fs::create_dir(&synthetic).unwrap();
    let out = run(Command::new(&exe)
        .arg(edit_model())
        .arg(&synthetic)
        .args(["--provider", "tract", "--steps", "2", "--seed", "3"])
        .args(["--class", "12", "--count", "2", "--composite"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("scale 1/5"),
        "no progress shown: {}",
        show(&out)
    );
    check(&synthetic, 2);

    // A fixture image read as PPM with its mask as PGM, unconditional.
    let (image, mask) = edit_fixture_image(0);
    let read = tmp.path().join("read");
    std::fs::create_dir(&read).unwrap();
    let ppm = tmp.path().join("in.ppm");
    let pgm = tmp.path().join("in.pgm");
    std::fs::write(
        &ppm,
        [b"P6\n# a comment\n128 128\n255\n".as_slice(), &image].concat(),
    )
    .unwrap();
    std::fs::write(&pgm, [b"P5 128 128 255\n".as_slice(), &mask].concat()).unwrap();
    let out = run(Command::new(&exe)
        .arg(edit_model())
        .arg(&read)
        .args(["--provider", "tract", "--steps", "2"])
        .arg("--image")
        .arg(&ppm)
        .arg("--mask")
        .arg(&pgm)
        .args(["--unconditional", "--composite"]));
    check(&read, 1);
    assert_eq!(
        read_pnm(&read.join("source.ppm"), "P6", 128, 128, 3),
        image,
        "{}",
        show(&out)
    );

    // A model folder without an encoder: the library's message and a nonzero exit.
    let bad = Command::new(&exe)
        .arg(model())
        .arg(tmp.path())
        .args(["--provider", "tract", "--steps", "2"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("[code 3]") && stderr.contains("no VAE encoder"),
        "{}",
        show(&bad)
    );
}

/// A ```` ```c ```` block of a Markdown page: its page (from the repository root), the
/// line its code starts on, and the code.
struct CBlock {
    page: String,
    line: usize,
    code: String,
}

/// The ```` ```c ```` blocks of the README and of every page under `docs/`.
fn doc_c_blocks() -> Vec<CBlock> {
    let mut pages = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    let mut blocks = Vec::new();
    for path in pages {
        let page = path
            .strip_prefix(root())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut open: Option<(usize, String)> = None;
        for (i, l) in text.lines().enumerate() {
            match open.as_mut() {
                None if l.trim_end() == "```c" => open = Some((i + 2, String::new())),
                None => {}
                Some(_) if l.trim_end() == "```" => {
                    let (line, code) = open.take().unwrap();
                    blocks.push(CBlock {
                        page: page.clone(),
                        line,
                        code,
                    });
                }
                Some((_, code)) => {
                    code.push_str(l);
                    code.push('\n');
                }
            }
        }
        assert!(open.is_none(), "{page}: a ```c block is never closed");
    }
    blocks
}

/// What every snippet's program has: the headers, and the `on_progress` callback the
/// snippets pass (with `user_data` pointing at a count of the steps it was told of).
const SNIPPET_PRELUDE: &str = r#"#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flowar.h"

static int on_progress(int scale, int step, int total_steps, void *user_data) {
  (void)scale;
  (void)step;
  (void)total_steps;
  ++*(int *)user_data;
  return 0;
}
"#;

/// The C program around `block`. A snippet that creates its pipeline runs as `main`'s
/// body, and prints its own errors; any other continues one that did: a pipeline `pipe`
/// on the model folder `argv[1]` (tract), a status `st`, a request `req`, one class id in
/// `classes`, and a `w` × `h` RGB source `src` with a centre-box `mask` to edit. Either
/// way the program then prints how many progress calls the snippet's run made.
fn snippet_program(block: &CBlock, creates_pipeline: bool) -> String {
    let at = format!("#line {} \"{}\"\n", block.line, block.page);
    let code = &block.code;
    let back = "#line 1 \"snippet harness (capi/tests/c_api.rs)\"\n";
    if creates_pipeline {
        format!(
            "{SNIPPET_PRELUDE}\nint main(void) {{\n  int progress_calls = 0;\n  \
             void *user_data = &progress_calls;\n{at}{code}{back}  \
             printf(\"progress calls: %d\\n\", progress_calls);\n  return 0;\n}}\n"
        )
    } else {
        format!(
            r#"{SNIPPET_PRELUDE}
int main(int argc, char **argv) {{
  if (argc != 2) return 2;
  int progress_calls = 0;
  void *user_data = &progress_calls;
  FlowarOptions *opts = NULL;
  FlowarPipeline *pipe = NULL;
  FlowarRequest *req = NULL;
  FlowarStatus *st = flowar_options_create(&opts);
  if (!st) st = flowar_options_set(opts, "provider", "tract");
  if (!st) st = flowar_pipeline_create(argv[1], opts, &pipe);
  int32_t classes[] = {{3}};
  size_t w = 128, h = 128;
  uint8_t *src = malloc(w * h * 3), *mask = malloc(w * h);
  if (src == NULL || mask == NULL) return 1;
  for (size_t y = 0; y < h; y++)
    for (size_t x = 0; x < w; x++) {{
      for (size_t c = 0; c < 3; c++) src[(y * w + x) * 3 + c] = (uint8_t)(2 * x + 3 * y + 80 * c);
      mask[y * w + x] = (x >= w / 4 && x < 3 * w / 4 && y >= h / 4 && y < 3 * h / 4) ? 255 : 0;
    }}
{at}{code}{back}  (void)classes;
  (void)user_data;
  if (st) {{
    fprintf(stderr, "[%d] %s\n", (int)flowar_status_code(st), flowar_status_message(st));
    return 1;
  }}
  printf("progress calls: %d\n", progress_calls);
  flowar_request_destroy(&req);
  flowar_pipeline_destroy(&pipe);
  flowar_options_destroy(&opts);
  free(src);
  free(mask);
  return 0;
}}
"#
        )
    }
}

/// Every ```` ```c ```` block of the README and `docs/` compiles against the header and
/// library, and runs: one that creates its pipeline on the path it names (which points
/// here to the spatial fixture), any other on the edit fixture after a pipeline, a
/// request and an edit source the harness made. Each must run to its end with no error
/// and report progress.
#[test]
fn doc_c_snippets_compile_and_run() {
    let blocks = doc_c_blocks();
    assert!(
        blocks.len() >= 2,
        "the C snippets of docs/c-api.md (generation and editing) were not found: {} blocks",
        blocks.len()
    );
    let tmp = tempfile::tempdir().unwrap();
    for (i, block) in blocks.iter().enumerate() {
        let what = format!("the C snippet at {}:{}", block.page, block.line);
        let creates_pipeline = block.code.contains("flowar_pipeline_create(");
        let source = tmp.path().join(format!("snippet{i}.c"));
        std::fs::write(&source, snippet_program(block, creates_pipeline)).unwrap();
        let exe = tmp.path().join(format!("snippet{i}"));
        cc_shared(&[source], &exe, &[]);
        let mut cmd = Command::new(&exe);
        if creates_pipeline {
            // The model folder it names, relative to where it runs.
            let named = block
                .code
                .split("flowar_pipeline_create(\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_else(|| {
                    panic!("{what}: flowar_pipeline_create takes no string literal path")
                });
            let cwd = tmp.path().join(format!("run{i}"));
            let link = cwd.join(named);
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(model(), &link).unwrap();
            cmd.current_dir(&cwd);
        } else {
            cmd.arg(edit_model());
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
        assert!(out.status.success(), "{what}: {}", show(&out));
        assert!(out.stderr.is_empty(), "{what} reported: {}", show(&out));
        let calls: usize = String::from_utf8_lossy(&out.stdout)
            .trim()
            .strip_prefix("progress calls: ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{what}: {}", show(&out)));
        assert!(calls > 0, "{what} reported no progress: {}", show(&out));
    }
}

/// `bench/soak/capi_soak.c`, short, on tract and on OpenVINO: 4 threads, each with 3
/// requests on a shared pipeline and on its own, then 12 create-generate-destroy cycles.
/// Every call must return images (the program counts them as they return; the count is
/// held to the one these arguments make), every image must equal the sequential run's,
/// and resident memory may grow by at most
/// [`CYCLE_GROWTH_KB`] over the last 7 cycles. (OpenVINO pipelines once leaked their whole
/// graph per cycle through ports the binding never frees; `bench/soak/README.md` has the
/// long run's figures.) No time is asserted.
#[test]
fn soak_threads_and_create_destroy_cycles() {
    // Measured over the 7 cycles: tract -17.9 to +17.8 MB (allocator arenas of the
    // threads each pipeline starts; more under a loaded machine), OpenVINO +2.3 MB; the
    // OpenVINO port leak grew 136 MB.
    const CYCLE_GROWTH_KB: i64 = 64 * 1024;
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("capi_soak");
    cc_shared(&[root().join("bench/soak/capi_soak.c")], &exe, &[]);
    let mut providers = vec!["tract"];
    if flowar_tests::cpu_providers().contains(&flowar_runtime::Provider::OpenVino) {
        providers.push("openvino");
    }
    let (threads, requests, cycles) = (4, 3, 12);
    // Each thread's requests on the shared pipeline and on its own, then one per cycle;
    // capi_soak counts the calls that returned images as they return.
    let calls = 2 * threads * requests + cycles;
    for provider in providers {
        let out = run(Command::new(&exe).arg(model()).args([
            threads.to_string(),
            requests.to_string(),
            cycles.to_string(),
            provider.to_string(),
        ]));
        let line = String::from_utf8_lossy(&out.stdout);
        let report: serde_json::Value =
            serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {}", show(&out)));
        eprintln!("{report}");
        assert_eq!(report["calls"], calls, "{report}");
        assert_eq!(report["mismatches"], 0, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
        let growth = report["cycle_growth_kb"].as_i64().unwrap();
        assert!(
            growth <= CYCLE_GROWTH_KB,
            "{provider}: grew {growth} kB over 7 cycles: {report}"
        );
    }
}

/// Builds `capi/tests/c/test_errors.c`.
fn build_error_test(dir: &Path) -> PathBuf {
    let exe = dir.join("test_errors");
    cc_shared(
        &[root().join("capi/tests/c/test_errors.c")],
        &exe,
        &["-pthread"],
    );
    exe
}

#[test]
fn c_error_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_error_test(tmp.path());
    let out = run(Command::new(&exe)
        .arg(model())
        .arg("--edit")
        .arg(edit_model()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(" passed, 0 failed"), "{}", show(&out));
    eprintln!("{stdout}");
}

#[test]
fn c_error_paths_under_valgrind() {
    let have = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var("FLOWAR_REQUIRE_VALGRIND").as_deref() != Ok("1"),
            "valgrind is required (FLOWAR_REQUIRE_VALGRIND=1) but not installed"
        );
        flowar_runtime::test_support::note_skip(
            "the valgrind run of test_errors",
            "valgrind is not installed",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_error_test(tmp.path());
    let supp = root().join("capi/tests/c/valgrind.supp");
    let out = Command::new("valgrind")
        .args([
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--error-exitcode=1",
        ])
        .arg(format!("--suppressions={}", supp.display()))
        .arg(&exe)
        .arg(model())
        // No VAE decode under valgrind (it alone takes minutes there); see test_errors.c.
        .arg("--light")
        // The edit's checks, and its encoder, under valgrind too.
        .arg("--edit")
        .arg(edit_model())
        .output()
        .expect("run valgrind");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            l.contains("ERROR SUMMARY") || l.contains("definitely lost") || l.contains("All heap")
        })
        .collect();
    eprintln!("valgrind:\n{}", summary.join("\n"));
    assert!(out.status.success(), "valgrind run failed: {}", show(&out));
    assert!(
        stderr.contains("ERROR SUMMARY: 0 errors"),
        "valgrind reported errors: {}",
        show(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(" passed, 0 failed"),
        "{}",
        show(&out)
    );
}

#[test]
fn static_library_links() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("static.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <string.h>
#include "flowar.h"
int main(void) {
  FlowarPipeline *p = NULL;
  FlowarStatus *st = flowar_pipeline_create("/nonexistent", NULL, &p);
  int ok = st != NULL && flowar_status_code(st) != FLOWAR_CODE_OK && p == NULL;
  printf("libflowar %s: %s\n", flowar_version(), flowar_status_message(st));
  flowar_status_destroy(&st);
  return ok && st == NULL ? 0 : 1;
}
"#,
    )
    .unwrap();
    let exe = tmp.path().join("static");
    let mut cmd = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cmd.args(["-std=c11", "-Wall", "-Werror"])
        .arg("-I")
        .arg(root().join("include"))
        .arg(&src)
        .arg(lib_dir().join("libflowar.a"))
        .args(["-lpthread", "-ldl", "-lm"])
        .arg("-o")
        .arg(&exe);
    run(&mut cmd);
    let out = run(&mut Command::new(&exe));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(env!("CARGO_PKG_VERSION")) && stdout.contains("/nonexistent"),
        "{}",
        show(&out)
    );
}

#[test]
fn cpp_wrapper_compiles_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("wrapper.cpp");
    std::fs::write(
        &src,
        r#"#include <cstdio>
#include <cstring>
#include "flowar.hpp"
int main(int argc, char** argv) {
  if (argc != 2) return 2;
  try {
    flowar::Pipeline bad("/nonexistent", flowar::Options().set("provider", "tract"));
    return 1;
  } catch (const flowar::Error& e) {
    if (e.code() != FLOWAR_CODE_MODEL || std::strstr(e.what(), "/nonexistent") == nullptr) return 1;
  }
  flowar::Pipeline pipe(argv[1], flowar::Options().set("provider", "tract"));
  flowar::Request req;
  req.classes({3, 5}).set("steps", "2").set("cfg", 1.0).set("seed", int64_t{9});
  int calls = 0;
  std::vector<uint8_t> rgb = pipe.generate(req, [&](int, int, int) { ++calls; return true; });
  if (rgb.size() != 2 * pipe.width() * pipe.height() * pipe.channels() || calls == 0) return 1;
  try {
    pipe.generate(req, [](int, int, int) { return false; });
    return 1;
  } catch (const flowar::Error& e) {
    if (e.code() != FLOWAR_CODE_CANCELLED) return 1;
  }
  std::printf("ok %zux%zu, %zu classes, %d progress calls\n", pipe.width(), pipe.height(),
              pipe.num_classes(), calls);
  return 0;
}
"#,
    )
    .unwrap();
    let exe = tmp.path().join("wrapper");
    let lib = lib_dir();
    let mut cmd = Command::new(std::env::var("CXX").unwrap_or_else(|_| "c++".into()));
    cmd.args(["-std=c++17", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(root().join("include"))
        .arg(&src)
        .arg("-L")
        .arg(&lib)
        // RPATH, not RUNPATH: `cargo test` sets LD_LIBRARY_PATH to include target/<profile>/,
        // whose libflowar.so only `cargo build` refreshes; RUNPATH would lose to it.
        .arg("-Wl,--disable-new-dtags")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lflowar")
        .arg("-o")
        .arg(&exe);
    run(&mut cmd);
    let out = run(Command::new(&exe).arg(model()));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ok 256x256"),
        "{}",
        show(&out)
    );
}

#[test]
fn cpp_wrapper_edits() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("edit.cpp");
    std::fs::write(
        &src,
        r#"#include <cstdio>
#include <cstring>
#include "flowar.hpp"
int main(int argc, char** argv) {
  if (argc != 2) return 2;
  flowar::Pipeline pipe(argv[1], flowar::Options().set("provider", "tract"));
  size_t w = pipe.width(), h = pipe.height();
  std::vector<uint8_t> image(w * h * 3), mask(w * h, 0);
  for (size_t i = 0; i < image.size(); i++) image[i] = static_cast<uint8_t>(i * 7);
  for (size_t y = h / 4; y < h / 2; y++)
    for (size_t x = w / 4; x < w / 2; x++) mask[y * w + x] = 255;
  flowar::Request req;
  req.edit_image(image, w, h, 3, mask, w, h).edit_image(image, w, h, 3);
  req.classes({12}).set("steps", 2).set("count", 2).set("keep_scales", int64_t{2});
  if (req.count() != 4) return 1;
  try {
    pipe.generate(req.set("composite", true));
    return 1;
  } catch (const flowar::Error& e) {
    if (e.code() != FLOWAR_CODE_BAD_ARGUMENT || std::strstr(e.what(), "edit image 1 has no mask") == nullptr) return 1;
  }
  req.clear_edit().edit_image(image, w, h, 3, mask, w, h).set("composite", true);
  if (req.count() != 1) return 1;
  std::vector<uint8_t> rgb = pipe.generate(req);
  for (size_t p = 0; p < w * h; p++)
    if (mask[p] == 0 && std::memcmp(&rgb[p * 3], &image[p * 3], 3) != 0) return 1;
  std::printf("ok edit %zux%zu\n", w, h);
  return 0;
}
"#,
    )
    .unwrap();
    let exe = tmp.path().join("edit");
    let lib = lib_dir();
    let mut cmd = Command::new(std::env::var("CXX").unwrap_or_else(|_| "c++".into()));
    cmd.args(["-std=c++17", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(root().join("include"))
        .arg(&src)
        .arg("-L")
        .arg(&lib)
        .arg("-Wl,--disable-new-dtags")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lflowar")
        .arg("-o")
        .arg(&exe);
    run(&mut cmd);
    let out = run(Command::new(&exe).arg(edit_model()));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ok edit 128x128"),
        "{}",
        show(&out)
    );
}
