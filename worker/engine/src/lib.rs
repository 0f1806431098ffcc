//! inpaint-engine: Stable Diffusion 1.5 inpainting on libtorch through `tch`.
//!
//! This is the only crate of the workspace that links libtorch; the queue, storage and plugin
//! crates build without it.
//!
//! Layout:
//! - [`device`]: [`DeviceSpec`] (`auto`, `cpu`, `cuda`, `cuda:N`), [`Precision`] and
//!   [`PrecisionSpec`] (`auto`: f16 on CUDA, f32 on CPU), resolved against the machine at
//!   start-up; [`cuda_backend`] says whether libtorch's CUDA backend is linked and loaded (build.rs
//!   keeps `libtorch_cuda.so` in every binary despite `--as-needed`).
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

pub use device::{CudaBackend, DeviceSpec, Precision, PrecisionSpec, cuda_backend};
pub use error::EngineError;
pub use tch;
