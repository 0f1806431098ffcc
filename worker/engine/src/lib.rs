//! inpaint-engine: Stable Diffusion 1.5 inpainting on libtorch through `tch`.
//!
//! This is the only crate of the workspace that links libtorch; the queue, storage and plugin
//! crates build without it.
//!
//! Layout:
//! - [`device`]: [`DeviceSpec`] (`auto`, `cpu`, `cuda`, `cuda:N`) and [`Precision`], resolved
//!   against the machine at start-up.
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

pub use device::{DeviceSpec, Precision};
pub use error::EngineError;
pub use tch;
