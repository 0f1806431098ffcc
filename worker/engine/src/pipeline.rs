//! The inpainting pipeline: diffusers' `StableDiffusionInpaintPipeline.__call__` as library code.
//!
//! Order of work and of random draws follows diffusers exactly, per image: (a) the image-latent
//! sample when strength < 1 or the UNet has 4 channels, (b) the initial noise, (c) the
//! masked-image-latent sample, (d) the noise of stochastic scheduler steps. Each image draws from
//! its own generator seeded with its own seed, so an image is the same whatever batch it ran in.
//! (diffusers, given a list of generators, draws (a) and (c) from the first generator only and
//! shares them across the batch; [`BatchNoise::DiffusersList`] reproduces that for comparison.)

use std::path::{Path, PathBuf};

use image::{GrayImage, RgbImage};
use tch::{Device, Kind, Tensor};

use crate::EngineError;
use crate::image_tensor::{rgb_to_tensor, tensor_to_rgb};
use crate::model_folder::LoadOptions;
use crate::models::clip::ClipTextModel;
use crate::models::unet_2d::UNet2DConditionModel;
use crate::models::vae::AutoencoderKL;
use crate::models::vae::DiagonalGaussian;
use crate::schedulers::{
    self, CpuGenerator, Generators, NoiseSource, SchedulerConfig, SchedulerKind,
};
use crate::tokenizer::ClipTokenizer;

mod bench;

/// How the images of one batch get their random numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchNoise {
    /// Every draw of image i comes from generator i: an image equals the same seed run alone.
    #[default]
    PerImage,
    /// diffusers with `generator=[...]`: the VAE samples come from the first generator and are
    /// shared; initial and step noise per image. Only for reproducing diffusers' batches.
    DiffusersList,
}

/// One inpainting call: everything but the model.
#[derive(Clone, Debug)]
pub struct InpaintRequest {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// The picture to inpaint; None: text-only mode (everything is repainted).
    pub image: Option<RgbImage>,
    /// White = repaint; binarised at 0.5 for conditioning as diffusers does. Same size as `image`.
    pub mask: Option<GrayImage>,
    /// Output size; both multiples of 8 and equal to the image's size.
    pub width: u32,
    pub height: u32,
    pub num_inference_steps: usize,
    /// Classifier-free guidance scale; guidance runs only above 1, as in diffusers.
    pub guidance_scale: f64,
    /// In (0, 1]: below 1 the loop starts from the noised input.
    pub strength: f64,
    /// DDIM's eta; ignored by the other schedulers.
    pub eta: f64,
    pub scheduler: SchedulerKind,
    /// One seed per output image.
    pub seeds: Vec<u64>,
    pub batch_noise: BatchNoise,
}

/// What [`InpaintPipeline::run`] produced.
#[derive(Debug)]
pub struct InpaintOutput {
    /// The decoded images, one per seed, before any compositing.
    pub images: Vec<RgbImage>,
    /// The binarised mask used for conditioning (255 = repainted), at output size.
    pub mask: GrayImage,
    /// Whether the prompt or the negative prompt was cut to the tokenizer's maximum length.
    pub prompt_truncated: bool,
    /// The final latents `[images, C, h, w]` (f32, before the VAE's scaling is undone): what the
    /// batch tests compare bit for bit, since 8-bit images could hide a difference.
    pub latents: Tensor,
}

/// What the step callback may decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepControl {
    Continue,
    Cancel,
}

/// A loaded model: weights load once and serve many requests.
#[derive(Debug)]
pub struct InpaintPipeline {
    folder: PathBuf,
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextModel,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler_config: SchedulerConfig,
    device: Device,
    kind: Kind,
    /// The VAE's element kind (the `vae_precision` option: by default the pipeline's, as in
    /// diffusers; f32 is the upcast choice, safe from f16 overflow at a cost in memory and time
    /// on a GPU). Latents and pixels stay f32 outside the VAE.
    vae_kind: Kind,
}

/// PIL's `convert("L")` for RGB: `(R*19595 + G*38470 + B*7471 + 0x8000) >> 16`.
pub fn pil_luma(image: &RgbImage) -> GrayImage {
    GrayImage::from_fn(image.width(), image.height(), |x, y| {
        let [r, g, b] = image.get_pixel(x, y).0;
        let l = (u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16;
        image::Luma([l as u8])
    })
}

impl InpaintPipeline {
    /// Loads a model: a diffusers folder or a single-file `.safetensors` checkpoint. The same as
    /// [`crate::model_folder::load_pipeline`], the engine's one loading entry point, which owns
    /// the file handling.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self, EngineError> {
        crate::model_folder::load_pipeline(path, options)
    }

    /// Assembles a pipeline from components loaded elsewhere (a single-file checkpoint: see
    /// [`crate::single_file`]), with the checks of [`InpaintPipeline::load`]. `source` is what
    /// [`InpaintPipeline::folder`] reports; the VAE in `options.vae_kind` as `load` makes it.
    pub fn from_parts(
        source: PathBuf,
        tokenizer: ClipTokenizer,
        text_encoder: ClipTextModel,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler_config: SchedulerConfig,
        options: &LoadOptions,
    ) -> Result<Self, EngineError> {
        let unet_in = unet.config().in_channels;
        let latent = vae.config().latent_channels;
        if unet_in != latent && unet_in != 2 * latent + 1 {
            return Err(EngineError::Model(format!(
                "unet in_channels {unet_in} fits neither a {latent}-channel latent (standard) \
                 nor {} (inpainting)",
                2 * latent + 1
            )));
        }
        if tokenizer.model_max_length() as i64 > text_encoder.config().max_position_embeddings {
            return Err(EngineError::Model(format!(
                "tokenizer model_max_length {} exceeds the text encoder's {} positions",
                tokenizer.model_max_length(),
                text_encoder.config().max_position_embeddings
            )));
        }
        let vae_kind = vae.kind();
        Ok(Self {
            folder: source,
            tokenizer,
            text_encoder,
            unet,
            vae,
            scheduler_config: scheduler_config.with_inpaint_pipeline_fixups(),
            device: options.device,
            kind: options.kind,
            vae_kind,
        })
    }

    /// The element formats it runs in, for reports: `f16`, or `f16, VAE f32` when they differ.
    pub fn precision_summary(&self) -> String {
        let name = |kind: Kind| match kind {
            Kind::Half => "f16".to_owned(),
            Kind::BFloat16 => "bf16".to_owned(),
            Kind::Float => "f32".to_owned(),
            other => format!("{other:?}"),
        };
        if self.kind == self.vae_kind {
            name(self.kind)
        } else {
            format!("{}, VAE {}", name(self.kind), name(self.vae_kind))
        }
    }

    /// The folder the model came from.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// Pixels per latent along each axis.
    pub fn vae_scale_factor(&self) -> i64 {
        self.vae.config().scale_factor()
    }

    /// diffusers' default output size: `unet.sample_size * vae_scale_factor` (512 for SD-1.5).
    pub fn native_resolution(&self) -> u32 {
        let sample = self.unet.config().sample_size.unwrap_or(64);
        u32::try_from(sample * self.vae_scale_factor()).unwrap_or(512)
    }

    /// An estimate of the device memory a batch of `images` images of `shape` needs beyond the
    /// weights, in bytes: what the worker's `engine.batch_memory_mib` is compared with.
    ///
    /// Without autograd only the working set of the current layer is alive. At the UNet's first
    /// level (the largest spatial size) that is the self-attention: scaled-dot-product attention
    /// may fall back to its math kernel on any device, which holds the scores and their softmax,
    /// `rows x heads x N^2` each (N latent pixels, two rows per image with guidance), next to a
    /// few `rows x N x C` activations (input, residual, the feed-forward's 8C-wide hidden). The
    /// VAE decoder's first up-block at full resolution (512 channels at a quarter of the pixels,
    /// 256 at half, 128 at full, three tensors alive) runs per job and counts once per image. An
    /// estimate for sizing, not a promise: a batch that still runs out of memory is split.
    pub fn batch_memory_bytes(&self, shape: &BatchShape, images: usize) -> u64 {
        let unet = self.unet.config();
        let element = self.kind.elt_size_in_bytes() as u64;
        let factor = self.vae_scale_factor().max(1) as u64;
        let latent_pixels = (u64::from(shape.width) / factor) * (u64::from(shape.height) / factor);
        let rows = 2 * images as u64;
        let channels = unet
            .block_out_channels
            .first()
            .copied()
            .unwrap_or(320)
            .max(1) as u64;
        let heads = unet.heads(0).unwrap_or(8).max(1) as u64;
        let attention = 2 * rows * heads * latent_pixels * latent_pixels * element;
        let activations = 12 * rows * latent_pixels * channels * element;
        let pixels = u64::from(shape.width) * u64::from(shape.height);
        let vae_element = self.vae_kind.elt_size_in_bytes() as u64;
        let decoder = 3 * 128 * pixels * vae_element;
        attention + activations + images as u64 * decoder
    }

    /// True when the UNet takes mask and masked-image latents (9 channels).
    pub fn is_inpainting_unet(&self) -> bool {
        self.unet.config().in_channels != self.vae.config().latent_channels
    }

    fn check(&self, r: &InpaintRequest) -> Result<(), EngineError> {
        let invalid = |m: String| Err(EngineError::InvalidInput(m));
        let factor = self.vae_scale_factor() as u32;
        if r.width == 0
            || r.height == 0
            || !r.width.is_multiple_of(8)
            || !r.height.is_multiple_of(8)
        {
            return invalid(format!(
                "size {}x{} must be positive multiples of 8",
                r.width, r.height
            ));
        }
        if !r.width.is_multiple_of(factor) || !r.height.is_multiple_of(factor) {
            return invalid(format!(
                "size {}x{} must be multiples of the VAE's scale factor {factor}",
                r.width, r.height
            ));
        }
        if r.seeds.is_empty() {
            return invalid("at least one seed (one per image) is required".into());
        }
        if !(r.strength > 0.0 && r.strength <= 1.0) {
            return invalid(format!("strength must be in (0, 1], got {}", r.strength));
        }
        if !r.guidance_scale.is_finite() || r.guidance_scale < 0.0 {
            return invalid(format!(
                "guidance_scale must be >= 0, got {}",
                r.guidance_scale
            ));
        }
        if r.num_inference_steps == 0 || r.num_inference_steps > 1000 {
            return invalid(format!(
                "steps must be 1 to 1000, got {}",
                r.num_inference_steps
            ));
        }
        match (&r.image, &r.mask) {
            (Some(image), Some(mask)) => {
                if image.dimensions() != (r.width, r.height) {
                    return invalid(format!(
                        "image is {}x{}, output size is {}x{}: resize or crop first",
                        image.width(),
                        image.height(),
                        r.width,
                        r.height
                    ));
                }
                if mask.dimensions() != image.dimensions() {
                    return invalid(format!(
                        "mask is {}x{} but image is {}x{}",
                        mask.width(),
                        mask.height(),
                        image.width(),
                        image.height()
                    ));
                }
            }
            (None, None) => {
                if r.strength < 1.0 {
                    return invalid("text-only mode needs strength 1".into());
                }
            }
            _ => return invalid("image and mask must be given together".into()),
        }
        Ok(())
    }

    fn encode_text(&self, text: &str, copies: i64) -> Result<(Tensor, bool), EngineError> {
        let encoding = self.tokenizer.encode(text);
        let ids = Tensor::f_from_slice(&encoding.ids)?
            .f_unsqueeze(0)?
            .f_to_device(self.device)?;
        let embeds = self.text_encoder.forward(&ids)?;
        Ok((embeds.f_repeat([copies, 1, 1])?, encoding.truncated))
    }

    /// Runs the request. `on_step(done, total)` is called after every denoising step; returning
    /// [`StepControl::Cancel`] stops with [`EngineError::Cancelled`].
    ///
    /// This is [`InpaintPipeline::run_batch`] with a batch of one: a request gives the same bits
    /// alone as in any batch.
    pub fn run(
        &self,
        r: &InpaintRequest,
        on_step: &mut dyn FnMut(usize, usize) -> StepControl,
    ) -> Result<InpaintOutput, EngineError> {
        let mut items = [BatchItem {
            request: r,
            on_step,
        }];
        self.run_batch(&mut items)?
            .pop()
            .unwrap_or_else(|| Err(EngineError::Model("the batch returned no result".into())))
    }

    /// Runs several requests in one denoising loop: one UNet evaluation per step for all of them.
    ///
    /// The requests must share what makes their loops step together — output size, steps,
    /// scheduler, strength and eta (checked: [`BatchShape`]) — and may differ in everything else:
    /// prompts, negative prompts, guidance scales (with and without guidance mixed), seeds (any
    /// number per request), images and masks. Every image is the one the request gives alone:
    /// text encoding, VAE encoding and decoding, noise, guidance and scheduler steps run per request
    /// exactly as alone (each request has its own scheduler and generators); only the UNet call is
    /// shared, its rows in each request's own order (`[uncond, cond]` with guidance, `[cond]`
    /// without).
    ///
    /// Each item's `on_step(done, total)` is called after every step of that request; returning
    /// [`StepControl::Cancel`] drops the request from the batch (its result is
    /// [`EngineError::Cancelled`]) and the others go on unchanged. A request that fails its own
    /// checks fails alone. The outer error is for the batch as a whole: mismatched shared
    /// parameters, or a model failure inside the shared loop.
    pub fn run_batch(
        &self,
        items: &mut [BatchItem<'_, '_>],
    ) -> Result<Vec<Result<InpaintOutput, EngineError>>, EngineError> {
        if let Some(first) = items.first() {
            let shape = BatchShape::of(first.request);
            for (i, item) in items.iter().enumerate().skip(1) {
                shape.check_member(i, &BatchShape::of(item.request))?;
            }
        }
        let _guard = tch::no_grad_guard();
        let mut results: Vec<Option<Result<InpaintOutput, EngineError>>> =
            items.iter().map(|_| None).collect();
        let mut active: Vec<(usize, Prepared)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match self.prepare(item.request) {
                Ok(prepared) => active.push((i, prepared)),
                Err(err) => results[i] = Some(Err(err)),
            }
        }

        let timesteps = match active.first() {
            Some((_, p)) => p.timesteps.clone(),
            None => Vec::new(),
        };
        if let Some((i, _)) = active.iter().find(|(_, p)| p.timesteps != timesteps) {
            return Err(EngineError::InvalidInput(format!(
                "batch request {i} has other timesteps than request 0"
            )));
        }
        // Progress counts denoising steps, not UNet calls: PNDM repeats one timestep to warm up
        // its multistep history (diffusers' PLMS), so its first `warm_up` calls report nothing.
        let total = match items.first() {
            Some(item) => denoising_steps(item.request),
            None => 0,
        };
        let warm_up = timesteps.len().saturating_sub(total);
        for (step, &t) in timesteps.iter().enumerate() {
            if active.is_empty() {
                break;
            }
            // One UNet batch: each request's rows, in the order it uses alone.
            let mut inputs = Vec::with_capacity(active.len());
            let mut contexts = Vec::with_capacity(active.len());
            let mut rows = Vec::with_capacity(active.len());
            for (_, p) in active.iter_mut() {
                let input = p.unet_input(t)?;
                rows.push(input.size()[0]);
                inputs.push(input.f_to_kind(self.kind)?);
                contexts.push(p.context.shallow_clone());
            }
            let (input, context) = if inputs.len() == 1 {
                (inputs.remove(0), contexts.remove(0))
            } else {
                (Tensor::f_cat(&inputs, 0)?, Tensor::f_cat(&contexts, 0)?)
            };
            let prediction = self
                .unet
                .forward(&input, t, &context)
                .f_to_kind(Kind::Float)?;
            let predictions = if rows.len() == 1 {
                vec![prediction]
            } else {
                prediction.f_split_with_sizes(&rows, 0)?
            };
            let mut still_active = Vec::with_capacity(active.len());
            for ((i, mut p), prediction) in active.drain(..).zip(predictions) {
                p.step(&prediction, step, t, &timesteps)?;
                if step >= warm_up
                    && (items[i].on_step)(step + 1 - warm_up, total) == StepControl::Cancel
                {
                    results[i] = Some(Err(EngineError::Cancelled));
                } else {
                    still_active.push((i, p));
                }
            }
            active = still_active;
        }

        for (i, p) in active {
            results[i] = Some(self.finish(p));
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Err(EngineError::Cancelled)))
            .collect())
    }

    /// Everything of a request before the loop, in diffusers' order: checks, text conditioning,
    /// scheduler and strength cut, image and mask, VAE encoding, noise, initial latents.
    fn prepare(&self, r: &InpaintRequest) -> Result<Prepared, EngineError> {
        self.check(r)?;
        let n = r.seeds.len() as i64;
        let device = self.device;
        let factor = self.vae_scale_factor();
        let (h, w) = (i64::from(r.height), i64::from(r.width));
        let (lh, lw) = (h / factor, w / factor);
        let latent_channels = self.vae.config().latent_channels;
        let scaling = self.vae.config().scaling_factor;
        let inpainting_unet = self.is_inpainting_unet();
        let cfg = r.guidance_scale > 1.0;

        // Text conditioning: [negative x n, positive x n] with guidance, else positive x n.
        let (positive, mut truncated) = self.encode_text(&r.prompt, n)?;
        let context = if cfg {
            let (negative, neg_truncated) =
                self.encode_text(r.negative_prompt.as_deref().unwrap_or(""), n)?;
            truncated |= neg_truncated;
            Tensor::f_cat(&[negative, positive], 0)?
        } else {
            positive
        };
        let context = context.f_to_kind(self.kind)?;

        // Scheduler and the strength cut.
        let mut scheduler = schedulers::build(
            r.scheduler,
            &self.scheduler_config,
            r.num_inference_steps,
            r.eta,
        )?;
        let (timesteps, _) =
            schedulers::apply_strength(scheduler.as_mut(), r.num_inference_steps, r.strength)?;
        let first_t = *timesteps
            .first()
            .ok_or_else(|| EngineError::InvalidInput("strength leaves no denoising step".into()))?;

        // Image and mask at output size: mask binarised at 0.5, masked image = image * (mask < 0.5).
        let (image, mask_gray) = match (&r.image, &r.mask) {
            (Some(image), Some(mask)) => (image.clone(), mask.clone()),
            _ => (
                RgbImage::new(r.width, r.height),
                GrayImage::from_pixel(r.width, r.height, image::Luma([255])),
            ),
        };
        let image_t = rgb_to_tensor(&image, device)?;
        let mask_f = Tensor::f_from_slice(mask_gray.as_raw())?
            .f_view([1, 1, h, w])?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(255.0)?;
        let mask_bin = mask_f
            .f_ge(0.5)?
            .f_to_kind(Kind::Float)?
            .f_to_device(device)?;
        let keep = mask_bin.f_lt(0.5)?.f_to_kind(Kind::Float)?;
        let masked_image = image_t.f_mul(&keep)?;

        let need_image_latents = !inpainting_unet || r.strength < 1.0;
        let image_dist = need_image_latents
            .then(|| self.vae_encode(&image_t))
            .transpose()?;
        let masked_dist = self.vae_encode(&masked_image)?;
        let one = [1, latent_channels, lh, lw];

        // Per-image draws in diffusers' order: (a) image-latent sample, (b) noise, (c) masked.
        let mut generators: Vec<CpuGenerator> =
            r.seeds.iter().map(|&s| CpuGenerator::new(s)).collect();
        let mut image_latents: Vec<Tensor> = Vec::new();
        let mut noises: Vec<Tensor> = Vec::new();
        let mut masked_latents: Vec<Tensor> = Vec::new();
        for (i, generator) in generators.iter_mut().enumerate() {
            let shared = r.batch_noise == BatchNoise::DiffusersList && i > 0;
            if let Some(dist) = &image_dist {
                if shared {
                    image_latents.push(image_latents[0].shallow_clone());
                } else {
                    let sample = generator.randn(&one, Kind::Float, device)?;
                    image_latents.push(dist.sample_with(&sample).f_mul_scalar(scaling)?);
                }
            }
            noises.push(generator.randn(&one, Kind::Float, device)?);
            if shared {
                masked_latents.push(masked_latents[0].shallow_clone());
            } else {
                let sample = generator.randn(&one, Kind::Float, device)?;
                masked_latents.push(masked_dist.sample_with(&sample).f_mul_scalar(scaling)?);
            }
        }
        let noise = Tensor::f_cat(&noises, 0)?;
        let image_latents = if image_latents.is_empty() {
            None
        } else {
            Some(Tensor::f_cat(&image_latents, 0)?)
        };
        let masked_latents = Tensor::f_cat(&masked_latents, 0)?;

        let latents = if r.strength >= 1.0 {
            noise.f_mul_scalar(scheduler.init_noise_sigma())?
        } else {
            let start = image_latents.as_ref().ok_or_else(|| {
                EngineError::InvalidInput("strength < 1 needs image latents".into())
            })?;
            scheduler.add_noise(start, &noise, first_t)?
        };

        // Conditioning channels for the 9-channel UNet, doubled for guidance.
        let mask_latent = mask_bin
            .f_upsample_nearest2d([lh, lw], None, None)?
            .f_repeat([n, 1, 1, 1])?;
        let conditioning = if inpainting_unet {
            Some(Tensor::f_cat(
                &[double(cfg, &mask_latent)?, double(cfg, &masked_latents)?],
                1,
            )?)
        } else {
            None
        };

        Ok(Prepared {
            width: r.width,
            height: r.height,
            guidance_scale: cfg.then_some(r.guidance_scale),
            context,
            scheduler,
            timesteps,
            latents,
            noise,
            image_latents: (!inpainting_unet).then_some(image_latents).flatten(),
            mask_latent,
            conditioning,
            step_noise: Generators(generators),
            mask_gray,
            truncated,
        })
    }

    /// The VAE's encoder in its own kind; the distribution comes back in f32.
    fn vae_encode(&self, pixels: &Tensor) -> Result<DiagonalGaussian, EngineError> {
        let dist = self.vae.encode(&pixels.f_to_kind(self.vae_kind)?);
        Ok(DiagonalGaussian {
            mean: dist.mean.f_to_kind(Kind::Float)?,
            std: dist.std.f_to_kind(Kind::Float)?,
        })
    }

    /// The VAE's decoder in its own kind; pixels come back in f32.
    fn vae_decode(&self, latents: &Tensor) -> Result<Tensor, EngineError> {
        Ok(self
            .vae
            .decode(&latents.f_to_kind(self.vae_kind)?)
            .f_to_kind(Kind::Float)?)
    }

    /// Decodes a finished request and makes its output.
    fn finish(&self, p: Prepared) -> Result<InpaintOutput, EngineError> {
        let scaling = self.vae.config().scaling_factor;
        let decoded = self.vae_decode(&p.latents.f_div_scalar(scaling)?)?;
        let latents = p.latents.f_to_device(Device::Cpu)?;
        let images = tensor_to_rgb(&decoded)?;
        let mask_gray = &p.mask_gray;
        let mask = GrayImage::from_fn(p.width, p.height, |x, y| {
            image::Luma([if mask_gray.get_pixel(x, y).0[0] >= 128 {
                255
            } else {
                0
            }])
        });
        Ok(InpaintOutput {
            images,
            mask,
            prompt_truncated: p.truncated,
            latents,
        })
    }
}

/// `[t, t]` with guidance (uncond and cond rows see the same latents), else `t`.
fn double(cfg: bool, t: &Tensor) -> Result<Tensor, EngineError> {
    Ok(if cfg {
        Tensor::f_cat(&[t, t], 0)?
    } else {
        t.shallow_clone()
    })
}

/// One request of [`InpaintPipeline::run_batch`], with its own progress callback.
pub struct BatchItem<'r, 'f> {
    pub request: &'r InpaintRequest,
    /// `on_step(done, total)` after each step; [`StepControl::Cancel`] drops this request.
    pub on_step: &'f mut dyn FnMut(usize, usize) -> StepControl,
}

impl std::fmt::Debug for BatchItem<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchItem")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

/// The denoising steps a request runs, as the progress contract counts them: diffusers'
/// `min(int(num_inference_steps * strength), num_inference_steps)`, at least 1.
pub fn denoising_steps(request: &InpaintRequest) -> usize {
    let cut = (request.num_inference_steps as f64 * request.strength) as usize;
    cut.min(request.num_inference_steps).max(1)
}

/// What the requests of one batch must share: the parameters that decide the loop's timesteps
/// and the latent shape. Requests with equal shapes can be batched (the key to group jobs by).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchShape {
    pub width: u32,
    pub height: u32,
    pub num_inference_steps: usize,
    pub scheduler: SchedulerKind,
    pub strength: f64,
    /// Only DDIM uses eta; for the others it is ignored here as in the loop.
    pub eta: Option<f64>,
}

impl BatchShape {
    /// The shape of `r`.
    pub fn of(r: &InpaintRequest) -> Self {
        Self {
            width: r.width,
            height: r.height,
            num_inference_steps: r.num_inference_steps,
            scheduler: r.scheduler,
            strength: r.strength,
            eta: (r.scheduler == SchedulerKind::Ddim).then_some(r.eta),
        }
    }

    /// Whether `other` can join a batch of this shape (bitwise-equal floats).
    pub fn matches(&self, other: &BatchShape) -> bool {
        self.width == other.width
            && self.height == other.height
            && self.num_inference_steps == other.num_inference_steps
            && self.scheduler == other.scheduler
            && self.strength.to_bits() == other.strength.to_bits()
            && self.eta.map(f64::to_bits) == other.eta.map(f64::to_bits)
    }

    fn check_member(&self, index: usize, other: &BatchShape) -> Result<(), EngineError> {
        if self.matches(other) {
            Ok(())
        } else {
            Err(EngineError::InvalidInput(format!(
                "batch request {index} cannot share a loop with request 0: {other:?} vs {self:?} \
                 (size, steps, scheduler, strength and eta must be equal)"
            )))
        }
    }
}

/// A request between [`InpaintPipeline::prepare`] and [`InpaintPipeline::finish`]: its own
/// conditioning, scheduler, generators and latents.
struct Prepared {
    width: u32,
    height: u32,
    /// `Some(scale)` when guidance runs (scale > 1).
    guidance_scale: Option<f64>,
    context: Tensor,
    scheduler: Box<dyn schedulers::Scheduler>,
    timesteps: Vec<f64>,
    latents: Tensor,
    noise: Tensor,
    /// The 4-channel UNet's image latents, re-noised into the unmasked region after each step.
    image_latents: Option<Tensor>,
    mask_latent: Tensor,
    /// The 9-channel UNet's mask and masked-image channels (doubled for guidance).
    conditioning: Option<Tensor>,
    step_noise: Generators,
    mask_gray: GrayImage,
    truncated: bool,
}

impl Prepared {
    /// This request's UNet rows for timestep `t` (f32; the caller converts).
    fn unet_input(&mut self, t: f64) -> Result<Tensor, EngineError> {
        let input = double(self.guidance_scale.is_some(), &self.latents)?;
        let input = self.scheduler.scale_model_input(&input, t)?;
        Ok(match &self.conditioning {
            Some(c) => Tensor::f_cat(&[input, c.shallow_clone()], 1)?,
            None => input,
        })
    }

    /// Guidance and the scheduler step on this request's rows of the UNet output (f32), then the
    /// 4-channel UNet's re-noising of the unmasked region.
    fn step(
        &mut self,
        prediction: &Tensor,
        index: usize,
        t: f64,
        timesteps: &[f64],
    ) -> Result<(), EngineError> {
        let guided = match self.guidance_scale {
            Some(scale) => {
                let halves = prediction.f_chunk(2, 0)?;
                let (uncond, text) = (&halves[0], &halves[1]);
                uncond.f_add(&text.f_sub(uncond)?.f_mul_scalar(scale)?)?
            }
            None => prediction.shallow_clone(),
        };
        self.latents = self.scheduler.step(
            &guided,
            t,
            &self.latents,
            &mut self.step_noise as &mut dyn NoiseSource,
        )?;
        if let Some(original) = &self.image_latents {
            // 4-channel UNet: keep the unmasked region on the image's own noise trajectory.
            let proper = match timesteps.get(index + 1) {
                Some(&next) => self.scheduler.add_noise(original, &self.noise, next)?,
                None => original.shallow_clone(),
            };
            let inverse = self.mask_latent.f_neg()?.f_add_scalar(1.0)?;
            self.latents = proper
                .f_mul(&inverse)?
                .f_add(&self.mask_latent.f_mul(&self.latents)?)?;
        }
        Ok(())
    }
}
