//! What `inpaint-worker bench` measures of a loaded pipeline, part by part: the text encoder, one
//! UNet step at a batch size, VAE encode and decode; and SD-1.5-inpainting's full-size
//! architecture with random weights ([`InpaintPipeline::random_sd15_inpainting`]), so that a
//! machine can be sized without downloading a model. Every timing waits for the device
//! (CUDA work is asynchronous) before the clock stops.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use super::InpaintPipeline;
use crate::EngineError;
use crate::model_folder::{LoadOptions, load_tokenizer};
use crate::models::clip::ClipTextModel;
use crate::models::unet_2d::UNet2DConditionModel;
use crate::models::vae::AutoencoderKL;
use crate::single_file::ModelConfigs;
use crate::weights::WeightStore;

/// Waits for the device's queued work.
fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

/// How long `work` takes on `device`, from an idle device until its queued work is done.
fn timed<T>(
    device: Device,
    work: impl FnOnce() -> Result<T, EngineError>,
) -> Result<Duration, EngineError> {
    synchronize(device);
    let started = Instant::now();
    drop(work()?);
    synchronize(device);
    Ok(started.elapsed())
}

impl InpaintPipeline {
    /// SD-1.5-inpainting's architecture (the built-in configs of
    /// [`crate::single_file::builtin_sd15_inpainting`]) with random weights: full-size compute
    /// and memory, noise for images. The UNet and text encoder are in `options.kind`, the VAE in
    /// `options.vae_kind`, convolutions channels-last when `options.channels_last`; `tokenizer` is any CLIP tokenizer folder (the tiny test model's serves: its ids
    /// are below SD's vocabulary size).
    pub fn random_sd15_inpainting(
        tokenizer: &Path,
        options: &LoadOptions,
    ) -> Result<Self, EngineError> {
        let configs = ModelConfigs::sd15_inpainting()?;
        let source = PathBuf::from("random SD-1.5-inpainting");
        let tokenizer = load_tokenizer(tokenizer, configs.text_encoder.max_position_embeddings)?;
        let store = WeightStore::random(source.clone(), options.kind, options.device)
            .with_channels_last(options.channels_last);
        let unet = UNet2DConditionModel::load(&store.root(), &configs.unet)?;
        let store = WeightStore::random(source.clone(), options.vae_kind, options.device)
            .with_channels_last(options.channels_last);
        let vae = AutoencoderKL::load(&store.root(), &configs.vae)?;
        let store = WeightStore::random(source.clone(), options.kind, options.device);
        let text_encoder = ClipTextModel::load(&store.root(), &configs.text_encoder)?;
        Self::from_parts(
            source,
            tokenizer,
            text_encoder,
            unet,
            vae,
            configs.scheduler,
            options,
        )
    }

    /// Encodes `prompt` once (one sequence), timed.
    pub fn time_text_encoder(&self, prompt: &str) -> Result<Duration, EngineError> {
        let _guard = tch::no_grad_guard();
        timed(self.device, || self.encode_text(prompt, 1))
    }

    /// One UNet evaluation for `images` images at `width`x`height` with guidance (two rows per
    /// image, as every guided step runs), timed.
    pub fn time_unet_step(
        &self,
        images: usize,
        width: u32,
        height: u32,
    ) -> Result<Duration, EngineError> {
        let _guard = tch::no_grad_guard();
        let factor = self.vae_scale_factor();
        let rows = 2 * images as i64;
        let config = self.unet.config();
        let sample = Tensor::f_randn(
            [
                rows,
                config.in_channels,
                i64::from(height) / factor,
                i64::from(width) / factor,
            ],
            (self.kind, self.device),
        )?;
        let context = Tensor::f_randn(
            [
                rows,
                self.text_encoder.config().max_position_embeddings,
                config.cross_attention_dim,
            ],
            (self.kind, self.device),
        )?;
        timed(self.device, || {
            Ok(self.unet.forward(&sample, 500.0, &context))
        })
    }

    /// VAE encoding of one `width`x`height` image, timed.
    pub fn time_vae_encode(&self, width: u32, height: u32) -> Result<Duration, EngineError> {
        let _guard = tch::no_grad_guard();
        let pixels = Tensor::f_rand(
            [1, 3, i64::from(height), i64::from(width)],
            (Kind::Float, self.device),
        )?;
        timed(self.device, || self.vae_encode(&pixels))
    }

    /// VAE decoding of `images` latents to `width`x`height`, timed.
    pub fn time_vae_decode(
        &self,
        images: usize,
        width: u32,
        height: u32,
    ) -> Result<Duration, EngineError> {
        let _guard = tch::no_grad_guard();
        let factor = self.vae_scale_factor();
        let latents = Tensor::f_randn(
            [
                images as i64,
                self.vae.config().latent_channels,
                i64::from(height) / factor,
                i64::from(width) / factor,
            ],
            (Kind::Float, self.device),
        )?;
        timed(self.device, || self.vae_decode(&latents))
    }

    /// The device the pipeline runs on.
    pub fn device(&self) -> Device {
        self.device
    }
}
