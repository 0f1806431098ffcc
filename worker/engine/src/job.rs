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
use crate::pipeline::{
    BatchItem, BatchNoise, BatchShape, InpaintOutput, InpaintPipeline, InpaintRequest, StepControl,
};
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

/// A job turned into one engine request ([`PlannedJob::request`]) and what to do with the
/// request's images afterwards ([`PlannedJob::finish`]): the steps of [`InpaintPipeline::run_job`]
/// around inference, apart so that several jobs can share one denoising loop
/// ([`InpaintPipeline::run_jobs`]) and each still ends exactly as alone.
#[derive(Debug)]
pub struct PlannedJob {
    /// What the model runs for this job.
    pub request: InpaintRequest,
    finish: Finish,
    inference_size: (u32, u32),
    crop: Option<Region>,
}

/// How a request's images become the job's.
#[derive(Debug)]
enum Finish {
    /// Text-only mode: the images as the model made them.
    AsIs,
    /// Resized to the reference's size, then composited over it where `alpha` is given.
    Whole {
        reference: RgbImage,
        alpha: Option<GrayImage>,
    },
    /// Crop-to-mask: resized to the crop, pasted into the input, composited with `alpha` (zero
    /// outside the crop).
    Cropped {
        image: RgbImage,
        region: Region,
        alpha: GrayImage,
    },
}

/// Where and at which size a job runs: decided before any pixel is resized.
#[derive(Clone, Copy, Debug)]
enum Layout {
    TextOnly {
        width: u32,
        height: u32,
    },
    Whole {
        width: u32,
        height: u32,
        explicit: bool,
    },
    Cropped {
        width: u32,
        height: u32,
        region: Region,
    },
}

impl Layout {
    fn size(&self) -> (u32, u32) {
        match *self {
            Layout::TextOnly { width, height }
            | Layout::Whole { width, height, .. }
            | Layout::Cropped { width, height, .. } => (width, height),
        }
    }
}

impl PlannedJob {
    /// What this job must share with others to run in one denoising loop.
    pub fn shape(&self) -> BatchShape {
        BatchShape::of(&self.request)
    }

    /// The size the model runs at.
    pub fn inference_size(&self) -> (u32, u32) {
        self.inference_size
    }

    /// The job's final images from the request's output: resized back, pasted and composited
    /// as the job asks.
    pub fn finish(self, out: InpaintOutput) -> JobImages {
        let images = match &self.finish {
            Finish::AsIs => out.images,
            Finish::Whole { reference, alpha } => out
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
                    match alpha {
                        Some(alpha) => composite(reference, &generated, alpha),
                        None => generated,
                    }
                })
                .collect(),
            Finish::Cropped {
                image,
                region,
                alpha,
            } => out
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
                    composite(image, &pasted, alpha)
                })
                .collect(),
        };
        JobImages {
            images,
            prompt_truncated: out.prompt_truncated,
            inference_size: self.inference_size,
            crop: self.crop,
        }
    }
}

/// One job of [`InpaintPipeline::run_jobs`], with its own progress callback.
pub struct JobItem<'j, 'f> {
    pub job: PlannedJob,
    /// `on_step(done, total)` after each step; [`StepControl::Cancel`] drops this job alone.
    pub on_step: &'f mut (dyn FnMut(usize, usize) -> StepControl + 'j),
}

impl std::fmt::Debug for JobItem<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobItem")
            .field("job", &self.job)
            .finish_non_exhaustive()
    }
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
        let planned = self.plan_job(spec)?;
        let out = self.run(&planned.request, on_step)?;
        Ok(planned.finish(out))
    }

    /// Runs several planned jobs in one denoising loop ([`InpaintPipeline::run_batch`]): they
    /// must share a [`BatchShape`]. Every job's images are the ones [`InpaintPipeline::run_job`]
    /// gives it alone; a job cancelled by its callback or failing its own checks ends alone. The
    /// outer error is for the batch as a whole (mismatched shapes, a model failure in the loop).
    pub fn run_jobs(
        &self,
        items: Vec<JobItem<'_, '_>>,
    ) -> Result<Vec<Result<JobImages, EngineError>>, EngineError> {
        let (jobs, mut callbacks): (Vec<PlannedJob>, Vec<_>) =
            items.into_iter().map(|i| (i.job, i.on_step)).unzip();
        let mut batch: Vec<BatchItem<'_, '_>> = jobs
            .iter()
            .zip(callbacks.iter_mut())
            .map(|(job, on_step)| BatchItem {
                request: &job.request,
                on_step: &mut **on_step,
            })
            .collect();
        let outputs = self.run_batch(&mut batch)?;
        drop(batch);
        Ok(jobs
            .into_iter()
            .zip(outputs)
            .map(|(job, out)| out.map(|out| job.finish(out)))
            .collect())
    }

    /// The shape a job would run with, without resizing anything: what a batcher compares.
    pub fn job_shape(&self, spec: &JobSpec) -> Result<BatchShape, EngineError> {
        let (width, height) = self.layout(spec)?.size();
        Ok(BatchShape::of(&request_for(
            spec, None, None, width, height,
        )))
    }

    /// The size rules of the module documentation: text-only, whole image (explicit size or the
    /// input's rounded down) or crop-to-mask.
    fn layout(&self, spec: &JobSpec) -> Result<Layout, EngineError> {
        let multiple = self.size_multiple();
        let (image, mask) = match (&spec.image, &spec.mask) {
            (None, None) => {
                let native = self.native_resolution();
                return Ok(Layout::TextOnly {
                    width: spec.width.unwrap_or(native),
                    height: spec.height.unwrap_or(native),
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
            let binary = binarize(mask);
            let region = crop_region(&binary, padding, explicit).ok_or_else(|| {
                EngineError::InvalidInput("the mask is empty: nothing to inpaint".into())
            })?;
            let (width, height) = explicit.unwrap_or_else(|| {
                // The crop's shape at the model's native resolution (longer side = native).
                let native = f64::from(self.native_resolution());
                let scale = native / f64::from(region.width.max(region.height));
                let side = |v: u32| {
                    round_down((f64::from(v) * scale).round() as u32, multiple).max(multiple)
                };
                (side(region.width), side(region.height))
            });
            return Ok(Layout::Cropped {
                width,
                height,
                region,
            });
        }
        let (width, height) = explicit.unwrap_or((
            round_down(image.width(), multiple),
            round_down(image.height(), multiple),
        ));
        if width == 0 || height == 0 {
            return Err(EngineError::InvalidInput(format!(
                "image {}x{} is smaller than the minimum size {multiple}",
                image.width(),
                image.height()
            )));
        }
        Ok(Layout::Whole {
            width,
            height,
            explicit: explicit.is_some(),
        })
    }

    /// Checks a job and prepares its request: sizes chosen, inputs resized or cropped, the
    /// compositing after inference decided.
    pub fn plan_job(&self, spec: &JobSpec) -> Result<PlannedJob, EngineError> {
        let layout = self.layout(spec)?;
        let (w, h) = layout.size();
        match (layout, &spec.image, &spec.mask) {
            (Layout::TextOnly { .. }, _, _) => Ok(PlannedJob {
                request: request_for(spec, None, None, w, h),
                finish: Finish::AsIs,
                inference_size: (w, h),
                crop: None,
            }),
            (Layout::Whole { explicit, .. }, Some(image), Some(mask)) => {
                let resized = (w, h) != image.dimensions();
                let (model_image, model_mask) = if resized {
                    (
                        imageops::resize(image, w, h, FilterType::Lanczos3),
                        imageops::resize(mask, w, h, FilterType::Lanczos3),
                    )
                } else {
                    (image.clone(), mask.clone())
                };
                // With an explicit size the output has that size; otherwise the input's.
                let (reference, reference_mask) = if explicit {
                    (model_image.clone(), &model_mask)
                } else {
                    (image.clone(), mask)
                };
                // One blend mask for all the job's images: they share the job's mask.
                let alpha = spec
                    .preserve_unmasked
                    .then(|| blend_alpha(reference_mask, spec.mask_grow_px, spec.mask_feather_px));
                Ok(PlannedJob {
                    request: request_for(spec, Some(model_image), Some(model_mask), w, h),
                    finish: Finish::Whole { reference, alpha },
                    inference_size: (w, h),
                    crop: None,
                })
            }
            (Layout::Cropped { region, .. }, Some(image), Some(mask)) => {
                let crop_image =
                    imageops::crop_imm(image, region.x, region.y, region.width, region.height)
                        .to_image();
                let crop_mask =
                    imageops::crop_imm(mask, region.x, region.y, region.width, region.height)
                        .to_image();
                let model_image = imageops::resize(&crop_image, w, h, FilterType::Lanczos3);
                let model_mask = imageops::resize(&crop_mask, w, h, FilterType::Lanczos3);
                // Everything outside the (grown) mask, and everything outside the crop, stays
                // the input.
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
                Ok(PlannedJob {
                    request: request_for(spec, Some(model_image), Some(model_mask), w, h),
                    finish: Finish::Cropped {
                        image: image.clone(),
                        region,
                        alpha,
                    },
                    inference_size: (w, h),
                    crop: Some(region),
                })
            }
            _ => Err(EngineError::InvalidInput(
                "image and mask must be given together".into(),
            )),
        }
    }
}

/// The engine request for a job at an inference size.
fn request_for(
    spec: &JobSpec,
    image: Option<RgbImage>,
    mask: Option<GrayImage>,
    width: u32,
    height: u32,
) -> InpaintRequest {
    InpaintRequest {
        prompt: spec.prompt.clone(),
        negative_prompt: spec.negative_prompt.clone(),
        image,
        mask,
        width,
        height,
        num_inference_steps: spec.num_inference_steps,
        guidance_scale: spec.guidance_scale,
        strength: spec.strength,
        eta: spec.eta,
        scheduler: spec.scheduler,
        seeds: spec.seeds.clone(),
        batch_noise: BatchNoise::PerImage,
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}
