//! onnxruntime's library is process-global, so the "bad library" checks live in their own
//! test binary (their own process), where nothing has loaded it yet.

use std::path::PathBuf;

use flowar_runtime::backend::ort_backend::{self, OrtSession};
use flowar_runtime::backend::{BackendOptions, Provider};
use flowar_runtime::error::Error;

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_kv.onnx")
}

fn expect_unavailable(opts: &BackendOptions, provider: Provider, needle: &str) {
    let e = OrtSession::open(provider, &tiny(), opts).unwrap_err();
    match &e {
        Error::ProviderUnavailable {
            provider: p,
            reason,
            ..
        } => {
            assert_eq!(p, provider.name());
            assert!(reason.contains(needle), "reason lacks `{needle}`: {reason}");
        }
        other => panic!("expected ProviderUnavailable, got {other:?}"),
    }
    eprintln!("{e}");
}

// One test function: the steps must run in this order within the process.
#[test]
fn bogus_library_paths_are_errors_not_panics_and_a_good_one_still_loads_afterwards() {
    // A path that does not exist.
    let bogus = PathBuf::from("/nonexistent/flowar/libonnxruntime.so.1.31.1");
    let opts = BackendOptions {
        ort_lib: Some(bogus.clone()),
        ..Default::default()
    };
    expect_unavailable(
        &opts,
        Provider::OrtCpu,
        "/nonexistent/flowar/libonnxruntime.so.1.31.1",
    );
    expect_unavailable(&opts, Provider::Cuda, "does not exist");
    let why = ort_backend::ort_available(&opts).unwrap_err().to_string();
    assert!(why.contains("pip install onnxruntime"), "{why}");

    // A file that exists but is not a shared library: dlopen fails, no panic.
    let opts = BackendOptions {
        ort_lib: Some(tiny()),
        ..Default::default()
    };
    expect_unavailable(&opts, Provider::OrtCpu, "could not load ONNX Runtime");

    // A folder without the library.
    let opts = BackendOptions {
        ort_lib: Some(tiny().parent().unwrap().to_path_buf()),
        ..Default::default()
    };
    expect_unavailable(&opts, Provider::OrtCpu, "holds no libonnxruntime.so");

    // Failed attempts leave nothing behind: the normal search still works afterwards.
    match ort_backend::ort_available(&BackendOptions::default()) {
        Ok(lib) => {
            eprintln!("loaded {}", lib.display());
            OrtSession::open(Provider::OrtCpu, &tiny(), &BackendOptions::default()).unwrap();
            // Once loaded, a different explicit library is refused rather than silently ignored.
            let opts = BackendOptions {
                ort_lib: Some(bogus),
                ..Default::default()
            };
            expect_unavailable(&opts, Provider::OrtCpu, "already loaded");
            // The same library, named explicitly, is fine.
            let opts = BackendOptions {
                ort_lib: Some(lib.clone()),
                ..Default::default()
            };
            OrtSession::open(Provider::OrtCpu, &tiny(), &opts).unwrap();
            // ... and so is the folder that holds it.
            let opts = BackendOptions {
                ort_lib: Some(lib.parent().unwrap().to_path_buf()),
                ..Default::default()
            };
            OrtSession::open(Provider::OrtCpu, &tiny(), &opts).unwrap();
        }
        Err(why) => {
            assert!(
                std::env::var("FLOWAR_REQUIRE_ORT").as_deref() != Ok("1"),
                "onnxruntime is required here: {why}"
            );
            flowar_runtime::test_support::note_skip(
                module_path!(),
                &format!("the recovery check: {why}"),
            );
        }
    }
}
