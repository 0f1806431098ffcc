//! Binaries that link inpaint-engine load libtorch's CUDA backend whenever the libtorch they were
//! built against has one — checked without a GPU: the library is mapped into this (test)
//! process, and libtorch's CUDA hooks answer (they report the CUDA runtime version libtorch was
//! built with, which the CPU-only stub cannot). rustc links with `--as-needed`, which dropped
//! `libtorch_cuda.so` before build.rs kept it; this test fails again if that regresses.

use std::path::Path;

use inpaint_engine::DeviceSpec;
use inpaint_engine::device::{cuda_backend, mapped_libraries};

fn libtorch_has_cuda() -> bool {
    let lib = env!("INPAINT_ENGINE_LIBTORCH_LIB");
    assert!(
        !lib.is_empty(),
        "build.rs did not learn the libtorch folder"
    );
    Path::new(lib).join("libtorch_cuda.so").is_file()
}

#[test]
fn cuda_backend_is_loaded_exactly_when_libtorch_has_one() {
    let mapped = mapped_libraries().expect("/proc/self/maps");
    // Sanity: the reading works at all (libtorch's CPU library is always there).
    assert!(
        mapped.iter().any(|l| l == "libtorch_cpu.so"),
        "libtorch_cpu.so not among the mapped libraries: {mapped:?}"
    );
    let backend = cuda_backend();
    let has_cuda = libtorch_has_cuda();
    assert_eq!(backend.linked, has_cuda, "{backend:?}");
    assert_eq!(
        mapped.iter().any(|l| l == "libtorch_cuda.so"),
        has_cuda,
        "libtorch_cuda.so mapped vs present in the libtorch folder ({backend:?})"
    );
    assert_eq!(backend.loaded, Some(has_cuda));
    // The hooks are registered (a CUDA runtime version comes back) without any GPU.
    assert_eq!(backend.present(), has_cuda, "{backend:?}");
    if has_cuda {
        let version = backend.cudart_version.unwrap_or(0);
        assert!(version >= 10_000, "CUDA runtime version {version}");
    }
    // And `auto` resolves to a GPU exactly when libtorch sees one.
    let auto = DeviceSpec::Auto.resolve().expect("auto resolves");
    assert_eq!(auto.is_cuda(), backend.device_count > 0);
    if backend.device_count == 0 {
        let why = backend.why_no_cuda();
        assert!(
            if has_cuda {
                why.contains("sees no device")
            } else {
                why.contains("CPU-only")
            },
            "{why}"
        );
    }
}
