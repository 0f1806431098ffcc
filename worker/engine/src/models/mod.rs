//! The networks of SD-1.5 inpainting, one file per diffusers/transformers module they mirror.
//! Weight names equal the Hugging Face safetensors keys, so published weights load unchanged.

pub mod attention;
pub mod clip;
pub mod embeddings;
pub mod layers;
pub mod resnet;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod vae;
