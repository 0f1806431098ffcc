/*
 * Keeps libtorch_cuda.so in every binary that links inpaint-engine.
 *
 * rustc links with --as-needed, and no Rust code calls into libtorch_cuda.so, so the linker
 * drops it: libtorch then never registers its CUDA backend and a GPU host runs everything on the
 * CPU. This object (linked whole-archive by build.rs, only when the libtorch folder has
 * libtorch_cuda.so) holds an undefined reference to one of its symbols, so the library stays a
 * DT_NEEDED entry and is loaded, with its static initialisers, at start-up.
 *
 * The reference sits in a constructor: .init_array is kept by --gc-sections on every toolchain,
 * which a plain data reference would not be. The constructor only reads the address.
 */

/* at::cuda::getCurrentDeviceProperties(): defined in libtorch_cuda.so since libtorch 1.x. */
extern void _ZN2at4cuda26getCurrentDevicePropertiesEv(void);

void *volatile inpaint_engine_torch_cuda_anchor;

__attribute__((constructor, used)) static void inpaint_engine_keep_torch_cuda(void) {
    inpaint_engine_torch_cuda_anchor = (void *)&_ZN2at4cuda26getCurrentDevicePropertiesEv;
}
