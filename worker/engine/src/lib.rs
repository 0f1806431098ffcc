//! inpaint-engine: Stable Diffusion 1.5 inpainting on libtorch through `tch`.
//!
//! The crates that use libtorch are this one and the safety-checker plugin
//! (`inpaint-safety-checker`, which runs its CLIP vision tower on this crate's layers and
//! [`models::clip::ClipEncoder`]); the queue, storage, job and the other plugin crates build
//! without it. The engine does not re-export `tch`: a crate that names `tch` types depends on
//! `tch` itself (a workspace dependency, so there is one version).
//!
//! Layout:
//! - [`device`]: [`DeviceSpec`] (`auto`, `cpu`, `cuda`, `cuda:N`), [`Precision`] and
//!   [`PrecisionSpec`] (`auto`: f16 on CUDA, f32 on CPU), resolved against the machine at
//!   start-up; [`cuda_backend`] says whether libtorch's CUDA backend is linked and loaded (build.rs
//!   keeps `libtorch_cuda.so` in every binary despite `--as-needed`).
//! - [`models`]: the networks, one file per diffusers/transformers module; [`schedulers`]: the
//!   denoising schedulers behind one trait.
//! - [`image_tensor`]: images to and from tensors, with diffusers' exact arithmetic
//!   (`x / 255 * 2 - 1` in, `round(clamp(x / 2 + 0.5, 0, 1) * 255)` out).

pub mod composite;
pub mod config;
pub mod device;
pub mod error;
pub mod image_tensor;
pub mod job;
pub mod model_folder;
pub mod models;
pub mod pipeline;
pub mod schedulers;
pub mod single_file;
pub mod tokenizer;
pub mod weights;

pub use device::{
    CudaBackend, DeviceSpec, Precision, PrecisionSpec, configure_backend, cuda_backend,
};
pub use error::EngineError;
