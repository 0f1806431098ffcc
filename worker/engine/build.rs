//! Makes every binary, test and bench that links inpaint-engine load libtorch's CUDA backend when
//! the libtorch it builds against has one (see csrc/torch_cuda_anchor.c for why rustc's
//! `--as-needed` drops it otherwise), and tells the crate what was linked:
//! - cfg `libtorch_cuda`: libtorch_cuda.so was linked in;
//! - env `INPAINT_ENGINE_LIBTORCH_LIB`: the libtorch library folder torch-sys linked against.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(libtorch_cuda)");
    println!("cargo::rerun-if-changed=csrc/torch_cuda_anchor.c");
    // torch-sys (`links = "tch"`) reports the folder it linked against as DEP_TCH_LIBTORCH_LIB.
    let lib_dir = env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from);
    println!(
        "cargo::rustc-env=INPAINT_ENGINE_LIBTORCH_LIB={}",
        lib_dir
            .as_deref()
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    );
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let has_cuda = lib_dir
        .as_deref()
        .is_some_and(|dir| dir.join("libtorch_cuda.so").is_file());
    // Only ELF targets link with --as-needed here; a CPU-only libtorch has nothing to keep.
    if target_os == "linux" && has_cuda {
        cc::Build::new()
            .file("csrc/torch_cuda_anchor.c")
            .warnings(true)
            // whole-archive: the object is linked although nothing in Rust refers to it.
            .link_lib_modifier("+whole-archive")
            .compile("inpaint_engine_torch_cuda_anchor");
        println!("cargo::rustc-cfg=libtorch_cuda");
    }
}
