//! The C ABI from Rust, where C tests cannot easily look: one pipeline called from two
//! threads at once (its calls are serialised, and both give the images a lone call
//! gives), and `first_index` choosing which global images a request draws.

use std::ffi::{c_int, c_void, CStr, CString};
use std::ptr;
use std::sync::Mutex;

use flowar::*;

/// Panics with the status's message when it is an error; frees it.
unsafe fn ok(status: *mut FlowarStatus) {
    if !status.is_null() {
        // SAFETY: a live status from the library.
        let msg = unsafe { CStr::from_ptr(flowar_status_message(status)) }
            .to_string_lossy()
            .into_owned();
        let mut s = status;
        // SAFETY: as above; destroyed once.
        unsafe { flowar_status_destroy(&mut s) };
        panic!("{msg}");
    }
}

struct Pipe(*mut FlowarPipeline);
// SAFETY: the C ABI serialises calls on one pipeline with its own mutex (flowar.h); the
// handle is destroyed only after every thread using it has joined.
unsafe impl Send for Pipe {}
unsafe impl Sync for Pipe {}

fn pipeline(dir: &std::path::Path) -> Pipe {
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

/// Generates `classes` from global index `first_index` (6 steps), recording every progress
/// call as `(tag, scale, step)` in `log`.
fn generate(
    p: &Pipe,
    classes: &[i32],
    first_index: i64,
    tag: usize,
    log: &Mutex<Vec<(usize, c_int, c_int)>>,
) -> Vec<u8> {
    struct Ctx<'a> {
        tag: usize,
        log: &'a Mutex<Vec<(usize, c_int, c_int)>>,
    }
    unsafe extern "C" fn progress(
        scale: c_int,
        step: c_int,
        _total: c_int,
        user: *mut c_void,
    ) -> c_int {
        // SAFETY: `user` is the `Ctx` passed below, alive for the whole call.
        let ctx = unsafe { &*(user as *const Ctx) };
        ctx.log.lock().unwrap().push((ctx.tag, scale, step));
        0
    }
    let mut req: *mut FlowarRequest = ptr::null_mut();
    let mut size = 0usize;
    let ctx = Ctx { tag, log };
    // SAFETY: live handles, buffers of the sizes given.
    unsafe {
        ok(flowar_request_create(&mut req));
        ok(flowar_request_set_classes(
            req,
            classes.as_ptr(),
            classes.len(),
        ));
        ok(flowar_request_set_int(
            req,
            c"first_index".as_ptr(),
            first_index,
        ));
        ok(flowar_request_set_int(req, c"steps".as_ptr(), 6));
        ok(flowar_pipeline_buffer_size(p.0, classes.len(), &mut size));
        let mut out = vec![0u8; size];
        ok(flowar_pipeline_generate(
            p.0,
            req,
            out.as_mut_ptr(),
            out.len(),
            Some(progress),
            &ctx as *const Ctx as *mut c_void,
        ));
        flowar_request_destroy(&mut req);
        out
    }
}

#[test]
fn one_pipeline_from_two_threads_is_serialised_and_gives_the_same_images() {
    let (_t, dir) = flowar_tests::convert_fixture("spatial");
    let p = pipeline(&dir);
    let log = Mutex::new(Vec::new());
    let alone = generate(&p, &[3, 917], 0, 0, &log);
    let calls_per_run = log.lock().unwrap().len();
    log.lock().unwrap().clear();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| generate(&p, &[3, 917], 0, 1, &log));
        let b = s.spawn(|| generate(&p, &[3, 917], 0, 2, &log));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(
        a == alone && b == alone,
        "concurrent calls give the lone call's images"
    );
    // Serialised: each call's progress is one unbroken run, never interleaved.
    let log = log.into_inner().unwrap();
    assert_eq!(log.len(), 2 * calls_per_run);
    let tags: Vec<usize> = log.iter().map(|e| e.0).collect();
    let first = tags[0];
    assert!(
        tags[..calls_per_run].iter().all(|&t| t == first)
            && tags[calls_per_run..].iter().all(|&t| t != first),
        "progress of the two calls interleaved: {tags:?}"
    );
    let mut p = p.0;
    // SAFETY: both threads joined; destroyed once.
    unsafe { flowar_pipeline_destroy(&mut p) };
}

#[test]
fn first_index_picks_the_global_images() {
    let (_t, dir) = flowar_tests::convert_fixture("spatial");
    let p = pipeline(&dir);
    let log = Mutex::new(Vec::new());
    let pair = generate(&p, &[3, 917], 0, 0, &log);
    let second = generate(&p, &[917], 1, 0, &log);
    let first_as_917 = generate(&p, &[917], 0, 0, &log);
    let half = pair.len() / 2;
    // Image 1 alone (first_index 1) is image 1 of the pair: the same noise stream. The
    // batch of one rounds a little differently from the batch of two in float32.
    let diff = second
        .iter()
        .zip(&pair[half..])
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(diff <= 1, "image 1 differs by {diff} levels");
    // first_index 0 draws another image for the same class.
    let moved = second
        .iter()
        .zip(&first_as_917)
        .filter(|(a, b)| a.abs_diff(**b) > 8)
        .count();
    assert!(
        moved * 10 > second.len(),
        "only {moved} bytes differ between images 0 and 1"
    );
    let mut p = p.0;
    // SAFETY: no other user; destroyed once.
    unsafe { flowar_pipeline_destroy(&mut p) };
}

/// A step schedule set by string reaches the sampler; a malformed one is refused when
/// set, and one that does not fit the model when generating, naming the problem.
#[test]
fn steps_take_a_per_scale_schedule() {
    let (_t, dir) = flowar_tests::convert_fixture("spatial");
    let p = pipeline(&dir);
    let mut req: *mut FlowarRequest = ptr::null_mut();
    let message = |status: *mut FlowarStatus| -> String {
        assert!(!status.is_null(), "expected an error");
        // SAFETY: a live status from the library, destroyed once.
        unsafe {
            let m = CStr::from_ptr(flowar_status_message(status))
                .to_string_lossy()
                .into_owned();
            let mut s = status;
            flowar_status_destroy(&mut s);
            m
        }
    };
    let mut size = 0usize;
    // SAFETY: live handles, valid strings and buffers of the sizes given.
    unsafe {
        ok(flowar_request_create(&mut req));
        ok(flowar_request_set_classes(req, [3].as_ptr(), 1));
        let bad = message(flowar_request_set(req, c"steps".as_ptr(), c"6,x".as_ptr()));
        assert!(bad.contains("`x` is not a whole number"), "{bad}");
        ok(flowar_request_set(
            req,
            c"steps".as_ptr(),
            c"6,6,4,4,2".as_ptr(),
        ));
        ok(flowar_pipeline_buffer_size(p.0, 1, &mut size));
        let mut out = vec![0u8; size];
        let calls = Mutex::new(0usize);
        unsafe extern "C" fn count(_: c_int, _: c_int, _: c_int, user: *mut c_void) -> c_int {
            // SAFETY: `user` is the Mutex passed below, alive for the whole call.
            *unsafe { &*(user as *const Mutex<usize>) }.lock().unwrap() += 1;
            0
        }
        ok(flowar_pipeline_generate(
            p.0,
            req,
            out.as_mut_ptr(),
            out.len(),
            Some(count),
            &calls as *const Mutex<usize> as *mut c_void,
        ));
        // time_grid(6): 6 steps, (4): 4, (2): 2.
        assert_eq!(*calls.lock().unwrap(), 6 + 6 + 4 + 4 + 2);
        ok(flowar_request_set(req, c"steps".as_ptr(), c"6,6".as_ptr()));
        let e = message(flowar_pipeline_generate(
            p.0,
            req,
            out.as_mut_ptr(),
            out.len(),
            None,
            ptr::null_mut(),
        ));
        assert!(e.contains("one count per scale"), "{e}");
        flowar_request_destroy(&mut req);
        let mut pp = p.0;
        flowar_pipeline_destroy(&mut pp);
    }
}
