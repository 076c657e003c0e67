//! Editing through the C ABI, called from Rust on the `edit-sd-f8c4` fixture (128x128,
//! diffusers VAE with its encoder): the C ABI's edits equal the Rust `Pipeline`'s for the
//! same request (images of the model's size and fitted ones, RGB and RGBA, `count` rows),
//! `composite` keeps unmasked pixels bit for bit, every edit error names its problem,
//! and edits run from several threads, on separate pipelines and on one shared pipeline.

use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::OnceLock;

use flowar::*;
use flowar_runtime::edit_input;
use flowar_runtime::sampler::schedule::Steps;
use flowar_runtime::{Mask, Pipeline, Provider};

/// The model size of the fixture.
const SIZE: usize = 128;
const STEPS: i64 = 2;

/// The edit fixture converted once per test process.
fn edit_model() -> &'static Path {
    static MODEL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &MODEL
        .get_or_init(|| flowar_tests::convert_vae_fixture("edit-sd-f8c4"))
        .1
}

/// A folder without a VAE encoder (the spatial fixture's VAE has no `encoder.*` keys).
fn plain_model() -> &'static Path {
    static MODEL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &MODEL
        .get_or_init(|| flowar_tests::convert_fixture("spatial"))
        .1
}

/// Fixture image `i` (RGB, 128x128) and its mask (grey, 128x128).
fn fixture_image(i: usize) -> (Vec<u8>, Vec<u8>) {
    let dir = flowar_tests::fixture("edit-sd-f8c4");
    let src = edit_input::load_source(&dir.join(format!("image{i}.png")), SIZE).unwrap();
    assert!(src.fitted_from.is_none());
    // The mask is a grey PNG: read as RGB, each pixel's channels are its grey value.
    let grey = edit_input::load_source(&dir.join(format!("mask{i}.png")), SIZE).unwrap();
    assert!(grey
        .image
        .pixels
        .chunks_exact(3)
        .all(|p| p[0] == p[1] && p[1] == p[2]));
    let mask = Mask {
        size: SIZE,
        values: grey.image.pixels.iter().step_by(3).copied().collect(),
    };
    assert!(mask.any() && mask.values.contains(&0));
    (src.image.pixels, mask.values)
}

/// Nearest-neighbour 2x enlargement of `[h, w, c]` bytes.
fn upscale2(pixels: &[u8], w: usize, h: usize, c: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(pixels.len() * 4);
    for y in 0..2 * h {
        for x in 0..2 * w {
            let p = ((y / 2) * w + x / 2) * c;
            out.extend_from_slice(&pixels[p..p + c]);
        }
    }
    out
}

/// RGB to opaque RGBA.
fn rgba(pixels: &[u8]) -> Vec<u8> {
    pixels
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect()
}

/// Reads and frees a status: `None` for success, else (code, message).
fn take(status: *mut FlowarStatus) -> Option<(FlowarCode, String)> {
    if status.is_null() {
        return None;
    }
    // SAFETY: a live status from the library, destroyed once here.
    unsafe {
        let code = flowar_status_code(status);
        let msg = CStr::from_ptr(flowar_status_message(status))
            .to_string_lossy()
            .into_owned();
        let mut s = status;
        flowar_status_destroy(&mut s);
        Some((code, msg))
    }
}

#[track_caller]
fn ok(status: *mut FlowarStatus) {
    if let Some((code, msg)) = take(status) {
        panic!("[{code:?}] {msg}");
    }
}

/// Asserts an error of `code` whose message holds every `needles`; returns the message.
#[track_caller]
fn err(status: *mut FlowarStatus, code: FlowarCode, needles: &[&str]) -> String {
    let (got, msg) = take(status).expect("expected an error, got success");
    assert_eq!(got, code, "{msg}");
    for n in needles {
        assert!(msg.contains(n), "`{n}` not in: {msg}");
    }
    msg
}

struct Pipe(*mut FlowarPipeline);
// SAFETY: the C ABI serialises calls on one pipeline with its own mutex (flowar.h); the
// handle is destroyed only after every thread using it has joined.
unsafe impl Send for Pipe {}
unsafe impl Sync for Pipe {}

impl Pipe {
    fn load(dir: &Path) -> Pipe {
        let dir = CString::new(dir.to_str().unwrap()).unwrap();
        let mut opts: *mut FlowarOptions = ptr::null_mut();
        let mut p: *mut FlowarPipeline = ptr::null_mut();
        // SAFETY: valid strings and out pointers.
        unsafe {
            ok(flowar_options_create(&mut opts));
            ok(flowar_options_set(
                opts,
                c"provider".as_ptr(),
                c"tract".as_ptr(),
            ));
            ok(flowar_pipeline_create(dir.as_ptr(), opts, &mut p));
            flowar_options_destroy(&mut opts);
        }
        Pipe(p)
    }

    /// Runs `req` into a fresh buffer of the size `flowar_request_image_count` asks for.
    fn generate(&self, req: &Req) -> Result<Vec<u8>, (FlowarCode, String)> {
        let mut n = 0usize;
        let mut len = 0usize;
        // SAFETY: live handles; the buffer is `len` bytes.
        unsafe {
            ok(flowar_request_image_count(req.0, &mut n));
            ok(flowar_pipeline_buffer_size(self.0, n.max(1), &mut len));
            let mut out = vec![0xABu8; len];
            match take(flowar_pipeline_generate(
                self.0,
                req.0,
                out.as_mut_ptr(),
                out.len(),
                None,
                ptr::null_mut(),
            )) {
                None => Ok(out),
                Some(e) => {
                    assert!(
                        out.iter().all(|&b| b == 0xAB),
                        "a failed call wrote the buffer"
                    );
                    Err(e)
                }
            }
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // SAFETY: every user has joined; destroyed once.
        unsafe { flowar_pipeline_destroy(&mut self.0) };
    }
}

struct Req(*mut FlowarRequest);

impl Req {
    /// A request of `STEPS` steps and seed 11.
    fn new() -> Req {
        let mut r: *mut FlowarRequest = ptr::null_mut();
        // SAFETY: a valid out pointer and strings.
        unsafe {
            ok(flowar_request_create(&mut r));
            ok(flowar_request_set_int(r, c"steps".as_ptr(), STEPS));
            ok(flowar_request_set_int(r, c"seed".as_ptr(), 11));
        }
        Req(r)
    }

    fn image(
        &self,
        pixels: &[u8],
        w: usize,
        h: usize,
        c: usize,
        mask: Option<(&[u8], usize, usize)>,
    ) -> *mut FlowarStatus {
        let (mp, ml, mw, mh) = match mask {
            Some((m, mw, mh)) => (m.as_ptr(), m.len(), mw, mh),
            None => (ptr::null(), 0, 0, 0),
        };
        // SAFETY: a live request; buffers of the lengths given.
        unsafe {
            flowar_request_add_edit_image(
                self.0,
                pixels.as_ptr(),
                pixels.len(),
                w,
                h,
                c,
                mp,
                ml,
                mw,
                mh,
            )
        }
    }

    fn classes(&self, ids: &[i32]) -> &Req {
        // SAFETY: a live request; `ids.len()` values.
        ok(unsafe { flowar_request_set_classes(self.0, ids.as_ptr(), ids.len()) });
        self
    }

    fn int(&self, name: &CStr, v: i64) -> *mut FlowarStatus {
        // SAFETY: a live request and a NUL-terminated name.
        unsafe { flowar_request_set_int(self.0, name.as_ptr(), v) }
    }

    fn str(&self, name: &CStr, v: &CStr) -> *mut FlowarStatus {
        // SAFETY: a live request and NUL-terminated strings.
        unsafe { flowar_request_set(self.0, name.as_ptr(), v.as_ptr() as *const c_char) }
    }

    fn count(&self) -> usize {
        let mut n = 0;
        // SAFETY: a live request and a valid out pointer.
        ok(unsafe { flowar_request_image_count(self.0, &mut n) });
        n
    }
}

impl Drop for Req {
    fn drop(&mut self) {
        // SAFETY: destroyed once.
        unsafe { flowar_request_destroy(&mut self.0) };
    }
}

/// The edit fixture on tract, as a Rust pipeline.
fn rust_pipeline() -> Pipeline {
    flowar_tests::load(edit_model(), Provider::Tract)
}

/// The Rust pipeline's edit of `images` (already fitted, with their masks), row `r`
/// editing image `rows[r]` with `classes[rows[r]]`, global indices from 0: what the C ABI
/// must reproduce.
fn rust_edit(
    images: &[flowar_runtime::image::RgbImage],
    masks: &[Option<Mask>],
    classes: &[usize],
    rows: &[usize],
    keep_scales: usize,
) -> Vec<u8> {
    let mut pipe = rust_pipeline();
    let plan = pipe.edit_plan(images, masks, keep_scales, rows).unwrap();
    let req = pipe
        .request()
        .with_images(rows.iter().map(|&r| classes[r]).collect(), 0)
        .unwrap()
        .with_seed(11)
        .with_steps(&Steps::Uniform(STEPS as usize))
        .with_edit(Some(plan));
    let out = pipe.generate(&req, &mut |_| true).unwrap();
    out.images.into_iter().flat_map(|im| im.pixels).collect()
}

#[test]
fn edits_equal_the_rust_pipeline() {
    let (img0, mask0) = fixture_image(0);
    let (img1, mask1) = fixture_image(1);
    // Image 1 goes in as RGBA at twice the model's size, its mask too: fitted by the library.
    let big1 = rgba(&upscale2(&img1, SIZE, SIZE, 3));
    let big_mask1 = upscale2(&mask1, SIZE, SIZE, 1);

    let p = Pipe::load(edit_model());
    let req = Req::new();
    ok(req.image(&img0, SIZE, SIZE, 3, Some((&mask0, SIZE, SIZE))));
    ok(req.image(
        &big1,
        2 * SIZE,
        2 * SIZE,
        4,
        Some((&big_mask1, 2 * SIZE, 2 * SIZE)),
    ));
    req.classes(&[12, 640]);
    ok(req.int(c"count", 2));
    assert_eq!(req.count(), 4);
    let got = p.generate(&req).unwrap();

    let s1 = edit_input::source_from_pixels(&big1, 2 * SIZE, 2 * SIZE, 4, SIZE).unwrap();
    assert!(s1.alpha_mask.is_none() && s1.fitted_from == Some((256, 256)));
    let m1 = edit_input::mask_from_grey(&big_mask1, 256, 256, (256, 256), SIZE).unwrap();
    let images = [
        flowar_runtime::image::RgbImage {
            width: SIZE,
            height: SIZE,
            pixels: img0.clone(),
        },
        s1.image,
    ];
    let masks = [
        Some(Mask {
            size: SIZE,
            values: mask0,
        }),
        Some(m1),
    ];
    let want = rust_edit(&images, &masks, &[12, 640], &[0, 0, 1, 1], 0);
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "the C ABI's edits differ from the Rust pipeline's"
    );
    // Edit 0 and edit 1 of an image draw different noise (global indices 0 and 1).
    let one = SIZE * SIZE * 3;
    assert!(
        got[..one] != got[one..2 * one],
        "two edits of image 0 are equal"
    );

    // A variation (no mask, keep_scales 3) of image 0 alone, as the unconditional edit.
    let var = Req::new();
    ok(var.image(&img0, SIZE, SIZE, 3, None));
    ok(var.int(c"keep_scales", 3));
    ok(var.str(c"unconditional", c"true"));
    let got = p.generate(&var).unwrap();
    let want = {
        let mut pipe = rust_pipeline();
        let null = pipe.manifest().null_class;
        let plan = pipe.edit_plan(&images[..1], &[None], 3, &[0]).unwrap();
        let req = pipe
            .request()
            .with_sampler(Some(1.0), None, None)
            .with_images(vec![null], 0)
            .unwrap()
            .with_seed(11)
            .with_steps(&Steps::Uniform(STEPS as usize))
            .with_edit(Some(plan));
        pipe.generate(&req, &mut |_| true).unwrap().images[0]
            .pixels
            .clone()
    };
    assert!(got == want, "the unconditional variation differs");
}

#[test]
fn composite_keeps_unmasked_pixels_exactly() {
    let (img, mask) = fixture_image(0);
    let p = Pipe::load(edit_model());
    let changed_outside = |out: &[u8], keep: &dyn Fn(u8) -> bool| {
        mask.iter()
            .enumerate()
            .filter(|(_, &m)| keep(m))
            .filter(|(i, _)| out[i * 3..i * 3 + 3] != img[i * 3..i * 3 + 3])
            .count()
    };
    // In-painting: the pixels where the mask is 0 are the input's.
    let req = Req::new();
    ok(req.image(&img, SIZE, SIZE, 3, Some((&mask, SIZE, SIZE))));
    req.classes(&[12]);
    let plain = p.generate(&req).unwrap();
    ok(req.int(c"composite", 1));
    let comp = p.generate(&req).unwrap();
    assert_eq!(changed_outside(&comp, &|m| m == 0), 0);
    assert!(
        changed_outside(&plain, &|m| m == 0) > 0,
        "without composite the VAE round trip changes kept pixels"
    );
    // Inside the mask the composite is the edit itself.
    for (i, &m) in mask.iter().enumerate() {
        if m > 0 {
            assert_eq!(comp[i * 3..i * 3 + 3], plain[i * 3..i * 3 + 3]);
        }
    }
    // Out-painting: inverted, the pixels under the mask are kept.
    ok(req.int(c"invert_mask", 1));
    let out = p.generate(&req).unwrap();
    assert_eq!(changed_outside(&out, &|m| m > 0), 0);
    assert!(changed_outside(&out, &|m| m == 0) > 0);
    // An RGBA image's alpha is its mask (transparent = regenerate).
    let alpha: Vec<u8> = img
        .chunks_exact(3)
        .zip(&mask)
        .flat_map(|(p, &m)| [p[0], p[1], p[2], if m > 0 { 0 } else { 255 }])
        .collect();
    let req = Req::new();
    ok(req.image(&alpha, SIZE, SIZE, 4, None));
    req.classes(&[12]);
    ok(req.int(c"composite", 1));
    let via_alpha = p.generate(&req).unwrap();
    assert!(
        via_alpha == comp,
        "the alpha channel masks as the mask buffer does"
    );
}

#[test]
fn edit_errors_name_the_problem() {
    use FlowarCode::{BadArgument, Model};
    let (img, mask) = fixture_image(0);
    let p = Pipe::load(edit_model());

    // Adding images: each length and shape is checked, and a failed add adds nothing.
    let req = Req::new();
    let null = ptr::null_mut();
    // SAFETY: a NULL request and NULL buffers are reported, not read.
    unsafe {
        err(
            flowar_request_add_edit_image(
                null,
                img.as_ptr(),
                img.len(),
                SIZE,
                SIZE,
                3,
                ptr::null(),
                0,
                0,
                0,
            ),
            BadArgument,
            &["`request` is NULL"],
        );
        err(
            flowar_request_add_edit_image(
                req.0,
                ptr::null(),
                img.len(),
                SIZE,
                SIZE,
                3,
                ptr::null(),
                0,
                0,
                0,
            ),
            BadArgument,
            &["`pixels` is NULL"],
        );
    }
    err(
        req.image(&img, SIZE, SIZE, 2, None),
        BadArgument,
        &["`channels` is 2"],
    );
    err(
        req.image(&img[1..], SIZE, SIZE, 3, None),
        BadArgument,
        &[
            "`pixels_len` is 49151",
            "128x128 image with 3 channels holds 49152",
        ],
    );
    err(
        req.image(&img, SIZE, SIZE, 4, None),
        BadArgument,
        &["`pixels_len` is 49152", "holds 65536"],
    );
    err(
        req.image(&img, 0, SIZE, 3, None),
        BadArgument,
        &["0x128", "empty"],
    );
    err(
        req.image(&img, SIZE, SIZE, 3, Some((&mask[..100], SIZE, SIZE))),
        BadArgument,
        &["`mask_len` is 100", "128x128 mask holds 16384"],
    );
    // SAFETY: buffers of the lengths given; the NULL mask is not read.
    err(
        unsafe {
            flowar_request_add_edit_image(
                req.0,
                img.as_ptr(),
                img.len(),
                SIZE,
                SIZE,
                3,
                ptr::null(),
                0,
                SIZE,
                SIZE,
            )
        },
        BadArgument,
        &["`mask` is NULL", "pass 0"],
    );
    assert_eq!(req.count(), 0, "failed adds add nothing");

    // Settings: malformed values are refused when set.
    err(
        req.int(c"count", 0),
        BadArgument,
        &["`count`", "at least 1"],
    );
    err(
        req.int(c"composite", 2),
        BadArgument,
        &["`composite` is a switch"],
    );
    err(
        req.str(c"invert_mask", c"yes"),
        BadArgument,
        &["`invert_mask` is a switch"],
    );
    err(req.int(c"keep_scales", -1), BadArgument, &["non-negative"]);

    // Edit settings need edit images.
    req.classes(&[12]);
    ok(req.int(c"keep_scales", 2));
    let (_, msg) = p.generate(&req).unwrap_err();
    assert!(
        msg.contains("`keep_scales` is an edit setting") && msg.contains("no edit images"),
        "{msg}"
    );
    // SAFETY: a live request.
    ok(unsafe { flowar_request_clear_edit(req.0) });
    p.generate(&req)
        .expect("clear_edit resets the edit settings");
    // SAFETY: NULL is reported.
    err(
        unsafe { flowar_request_clear_edit(ptr::null_mut()) },
        BadArgument,
        &["NULL"],
    );

    // A folder without a VAE encoder: the runtime's message, before any other check.
    let plain = Pipe::load(plain_model());
    let e = Req::new();
    ok(e.image(&img, SIZE, SIZE, 3, Some((&mask, SIZE, SIZE))));
    e.classes(&[3]);
    let (code, msg) = plain.generate(&e).unwrap_err();
    assert_eq!(code, Model, "{msg}");
    assert!(
        msg.contains("no VAE encoder") && msg.contains("cannot edit images"),
        "{msg}"
    );

    // Buffer too small: sized from the image count (2 images x count 2).
    let two = Req::new();
    ok(two.image(&img, SIZE, SIZE, 3, Some((&mask, SIZE, SIZE))));
    ok(two.image(&img, SIZE, SIZE, 3, None));
    ok(two.int(c"count", 2));
    assert_eq!(two.count(), 4);
    let mut small = vec![0u8; 3 * SIZE * SIZE * 3];
    // SAFETY: live handles; `small` is as long as stated.
    err(
        unsafe {
            flowar_pipeline_generate(
                p.0,
                two.0,
                small.as_mut_ptr(),
                small.len(),
                None,
                ptr::null_mut(),
            )
        },
        BadArgument,
        &["too small for 4 images"],
    );

    // Classes: neither one nor one per image, none, or out of range.
    two.classes(&[1, 2, 3]);
    let msg = p.generate(&two).unwrap_err().1;
    assert!(msg.contains("3 classes for 2 edit images"), "{msg}");
    let none = Req::new();
    ok(none.image(&img, SIZE, SIZE, 3, None));
    let msg = p.generate(&none).unwrap_err().1;
    assert!(
        msg.contains("an edit needs classes") && msg.contains("unconditional"),
        "{msg}"
    );
    two.classes(&[1, 100_000]);
    let msg = p.generate(&two).unwrap_err().1;
    assert!(msg.contains("class id 100000 is out of range"), "{msg}");
    two.classes(&[1]);

    // keep_scales past the model's scales.
    ok(two.int(c"keep_scales", 6));
    let msg = p.generate(&two).unwrap_err().1;
    assert!(
        msg.contains("`keep_scales` 6 exceeds the model's 5 scales [1, 2, 4, 8, 16]"),
        "{msg}"
    );
    ok(two.int(c"keep_scales", 5));

    // Composite needs every image's mask; invert_mask needs some mask.
    ok(two.int(c"composite", 1));
    let msg = p.generate(&two).unwrap_err().1;
    assert!(
        msg.contains("composite pastes") && msg.contains("edit image 1 has no mask"),
        "{msg}"
    );
    ok(none.int(c"invert_mask", 1));
    none.classes(&[1]);
    let msg = p.generate(&none).unwrap_err().1;
    assert!(
        msg.contains("inverting the mask (out-painting) needs a mask"),
        "{msg}"
    );

    // A mask neither its image's size nor the model's.
    let odd = Req::new();
    ok(odd.image(&img, SIZE, SIZE, 3, Some((&mask[..64 * 64], 64, 64))));
    odd.classes(&[1]);
    let msg = p.generate(&odd).unwrap_err().1;
    assert!(
        msg.contains("edit image 0: the mask is 64x64 but its image is 128x128"),
        "{msg}"
    );

    // Unconditional: no classes, and cfg 1 or unset.
    let unc = Req::new();
    ok(unc.image(&img, SIZE, SIZE, 3, Some((&mask, SIZE, SIZE))));
    ok(unc.int(c"unconditional", 1));
    // SAFETY: a live request and a NUL-terminated name.
    ok(unsafe { flowar_request_set_float(unc.0, c"cfg".as_ptr(), 2.0) });
    let msg = p.generate(&unc).unwrap_err().1;
    assert!(msg.contains("cfg must be 1 or unset, not 2"), "{msg}");
    // SAFETY: as above.
    ok(unsafe { flowar_request_set_float(unc.0, c"cfg".as_ptr(), 1.0) });
    unc.classes(&[3]);
    let msg = p.generate(&unc).unwrap_err().1;
    assert!(
        msg.contains("`unconditional` edits use the model's null class"),
        "{msg}"
    );
}

/// Edits on two pipelines from two threads, and on one pipeline shared by two threads,
/// give the lone call's images.
#[test]
fn edits_from_several_threads() {
    let (img, mask) = fixture_image(1);
    let edit = |p: &Pipe| {
        let req = Req::new();
        ok(req.image(&img, SIZE, SIZE, 3, Some((&mask, SIZE, SIZE))));
        req.classes(&[640]);
        ok(req.int(c"composite", 1));
        p.generate(&req).unwrap()
    };
    let a = Pipe::load(edit_model());
    let b = Pipe::load(edit_model());
    let alone = edit(&a);
    let (x, y) = std::thread::scope(|s| {
        let x = s.spawn(|| edit(&a));
        let y = s.spawn(|| edit(&b));
        (x.join().unwrap(), y.join().unwrap())
    });
    assert!(x == alone && y == alone, "separate pipelines");
    let (x, y) = std::thread::scope(|s| {
        let x = s.spawn(|| edit(&a));
        let y = s.spawn(|| edit(&a));
        (x.join().unwrap(), y.join().unwrap())
    });
    assert!(x == alone && y == alone, "one shared pipeline");
}
