//! One job's images from input to output, the code path both the worker and the `inpaint` CLI
//! run: output-size choice, text-only mode, crop-to-mask for large inputs, inference, and the
//! `preserve_unmasked` composite.
//!
//! Sizes. With an explicit width/height the image (and mask) are resized to it, as diffusers
//! does. Without one the inference size is the input's size rounded down to a multiple of 8
//! (and of the VAE factor), and the result is resized back, so the output always has the input's
//! size; inputs whose longer side exceeds `max_side` are inpainted through crop-to-mask instead
//! (a padded crop around the mask at model resolution, pasted back). diffusers' own default —
//! always the model's 512×512, silently distorting other aspects — is what users complain about.
//! Resizing uses Lanczos3 from the `image` crate, which is close to but not bit-identical with
//! PIL's; parity with diffusers is exact when no resize happens.

use image::imageops::{self, FilterType};
use image::{GrayImage, RgbImage};

use crate::EngineError;
use crate::composite::{Region, binarize, blend_alpha, composite, crop_region};
use crate::pipeline::{BatchNoise, InpaintPipeline, InpaintRequest, StepControl};
use crate::schedulers::SchedulerKind;

/// Everything a job asks of the engine.
#[derive(Clone, Debug)]
pub struct JobSpec {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// None together with `mask`: text-only mode.
    pub image: Option<RgbImage>,
    /// Same size as `image`; white = repaint.
    pub mask: Option<GrayImage>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub num_inference_steps: usize,
    pub guidance_scale: f64,
    pub strength: f64,
    pub eta: f64,
    pub scheduler: SchedulerKind,
    pub seeds: Vec<u64>,
    /// Outside the (grown) mask, output pixels equal input pixels exactly.
    pub preserve_unmasked: bool,
    pub mask_grow_px: u32,
    pub mask_feather_px: u32,
    /// Inpaint a crop around the mask padded by this many pixels, at model resolution.
    pub crop_to_mask: Option<u32>,
    /// Longest side inferred without cropping; larger inputs use crop-to-mask (padding 32).
    pub max_side: u32,
}

/// What [`InpaintPipeline::run_job`] produced.
#[derive(Debug)]
pub struct JobImages {
    /// Final images, one per seed.
    pub images: Vec<RgbImage>,
    pub prompt_truncated: bool,
    /// The size the model ran at.
    pub inference_size: (u32, u32),
    /// The crop that was inpainted, when crop-to-mask ran.
    pub crop: Option<Region>,
}

const DEFAULT_CROP_PADDING: u32 = 32;

fn round_down(value: u32, multiple: u32) -> u32 {
    (value / multiple) * multiple
}

impl InpaintPipeline {
    fn size_multiple(&self) -> u32 {
        let factor = self.vae_scale_factor() as u32;
        if factor.is_multiple_of(8) {
            factor
        } else {
            8 * factor / gcd(8, factor)
        }
    }

    /// Runs a job; see the module documentation for the size rules.
    pub fn run_job(
        &self,
        spec: &JobSpec,
        on_step: &mut dyn FnMut(usize, usize) -> StepControl,
    ) -> Result<JobImages, EngineError> {
        let request =
            |image: Option<RgbImage>, mask: Option<GrayImage>, w: u32, h: u32| InpaintRequest {
                prompt: spec.prompt.clone(),
                negative_prompt: spec.negative_prompt.clone(),
                image,
                mask,
                width: w,
                height: h,
                num_inference_steps: spec.num_inference_steps,
                guidance_scale: spec.guidance_scale,
                strength: spec.strength,
                eta: spec.eta,
                scheduler: spec.scheduler,
                seeds: spec.seeds.clone(),
                batch_noise: BatchNoise::PerImage,
            };
        let multiple = self.size_multiple();
        let (image, mask) = match (&spec.image, &spec.mask) {
            (None, None) => {
                let native = self.native_resolution();
                let (w, h) = (spec.width.unwrap_or(native), spec.height.unwrap_or(native));
                let out = self.run(&request(None, None, w, h), on_step)?;
                return Ok(JobImages {
                    images: out.images,
                    prompt_truncated: out.prompt_truncated,
                    inference_size: (w, h),
                    crop: None,
                });
            }
            (Some(image), Some(mask)) => (image, mask),
            _ => {
                return Err(EngineError::InvalidInput(
                    "image and mask must be given together".into(),
                ));
            }
        };
        if image.dimensions() != mask.dimensions() {
            return Err(EngineError::InvalidInput(format!(
                "mask is {}x{} but image is {}x{}: masks are not resized, send one of the image's size",
                mask.width(),
                mask.height(),
                image.width(),
                image.height()
            )));
        }
        let explicit = match (spec.width, spec.height) {
            (Some(w), Some(h)) => Some((w, h)),
            (None, None) => None,
            _ => {
                return Err(EngineError::InvalidInput(
                    "width and height must be given together".into(),
                ));
            }
        };
        let too_large = image.width().max(image.height()) > spec.max_side;
        let crop_padding = spec
            .crop_to_mask
            .or((explicit.is_none() && too_large).then_some(DEFAULT_CROP_PADDING));
        if let Some(padding) = crop_padding {
            return self.run_cropped(spec, image, mask, padding, explicit, &request, on_step);
        }
        let (w, h) = explicit.unwrap_or((
            round_down(image.width(), multiple),
            round_down(image.height(), multiple),
        ));
        if w == 0 || h == 0 {
            return Err(EngineError::InvalidInput(format!(
                "image {}x{} is smaller than the minimum size {multiple}",
                image.width(),
                image.height()
            )));
        }
        let resized = (w, h) != image.dimensions();
        let (model_image, model_mask) = if resized {
            (
                imageops::resize(image, w, h, FilterType::Lanczos3),
                imageops::resize(mask, w, h, FilterType::Lanczos3),
            )
        } else {
            (image.clone(), mask.clone())
        };
        let out = self.run(
            &request(Some(model_image.clone()), Some(model_mask.clone()), w, h),
            on_step,
        )?;
        // With an explicit size the output has that size; otherwise the input's.
        let (reference, reference_mask) = if explicit.is_some() {
            (&model_image, &model_mask)
        } else {
            (image, mask)
        };
        // One blend mask for the whole batch: every image shares the job's mask.
        let alpha = spec
            .preserve_unmasked
            .then(|| blend_alpha(reference_mask, spec.mask_grow_px, spec.mask_feather_px));
        let images = out
            .images
            .into_iter()
            .map(|generated| {
                let generated = if generated.dimensions() == reference.dimensions() {
                    generated
                } else {
                    imageops::resize(
                        &generated,
                        reference.width(),
                        reference.height(),
                        FilterType::Lanczos3,
                    )
                };
                match &alpha {
                    Some(alpha) => composite(reference, &generated, alpha),
                    None => generated,
                }
            })
            .collect();
        Ok(JobImages {
            images,
            prompt_truncated: out.prompt_truncated,
            inference_size: (w, h),
            crop: None,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn run_cropped(
        &self,
        spec: &JobSpec,
        image: &RgbImage,
        mask: &GrayImage,
        padding: u32,
        explicit: Option<(u32, u32)>,
        request: &dyn Fn(Option<RgbImage>, Option<GrayImage>, u32, u32) -> InpaintRequest,
        on_step: &mut dyn FnMut(usize, usize) -> StepControl,
    ) -> Result<JobImages, EngineError> {
        let binary = binarize(mask);
        let region = crop_region(&binary, padding, explicit).ok_or_else(|| {
            EngineError::InvalidInput("the mask is empty: nothing to inpaint".into())
        })?;
        let multiple = self.size_multiple();
        let (w, h) = explicit.unwrap_or_else(|| {
            // The crop's shape at the model's native resolution (longer side = native).
            let native = f64::from(self.native_resolution());
            let scale = native / f64::from(region.width.max(region.height));
            let side =
                |v: u32| round_down((f64::from(v) * scale).round() as u32, multiple).max(multiple);
            (side(region.width), side(region.height))
        });
        let crop_image =
            imageops::crop_imm(image, region.x, region.y, region.width, region.height).to_image();
        let crop_mask =
            imageops::crop_imm(mask, region.x, region.y, region.width, region.height).to_image();
        let model_image = imageops::resize(&crop_image, w, h, FilterType::Lanczos3);
        let model_mask = imageops::resize(&crop_mask, w, h, FilterType::Lanczos3);
        let out = self.run(&request(Some(model_image), Some(model_mask), w, h), on_step)?;
        // Paste back, then composite so that everything outside the (grown) mask, and
        // everything outside the crop, is the input.
        let mut alpha = blend_alpha(mask, spec.mask_grow_px, spec.mask_feather_px);
        for (x, y, a) in alpha.enumerate_pixels_mut() {
            let inside = x >= region.x
                && y >= region.y
                && x < region.x + region.width
                && y < region.y + region.height;
            if !inside {
                a.0[0] = 0;
            }
        }
        let images = out
            .images
            .into_iter()
            .map(|generated| {
                let back = imageops::resize(
                    &generated,
                    region.width,
                    region.height,
                    FilterType::Lanczos3,
                );
                let mut pasted = image.clone();
                imageops::replace(&mut pasted, &back, i64::from(region.x), i64::from(region.y));
                composite(image, &pasted, &alpha)
            })
            .collect();
        Ok(JobImages {
            images,
            prompt_truncated: out.prompt_truncated,
            inference_size: (w, h),
            crop: Some(region),
        })
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}
