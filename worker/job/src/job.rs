//! [`InpaintJob`] v1: what a producer asks for, its defaults, its rules and the worker's helpers
//! (per-image seeds, output keys, expiry).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use inpaint_storage::ObjectRef;
use schemars::{JsonSchema, Schema, json_schema};
use serde::{Deserialize, Serialize};

use crate::error::JobError;
use crate::id::JobId;
use crate::schema::{self, S3Uri};

/// The job schema version this crate reads and writes.
pub const JOB_SCHEMA_VERSION: u32 = 1;
/// Most characters in `prompt` or `negative_prompt` (CLIP reads 77 tokens; the rest is cut).
pub const MAX_PROMPT_CHARS: usize = 4096;
/// Most denoising steps a job may ask for.
pub const MAX_INFERENCE_STEPS: u32 = 1000;
/// Highest classifier-free guidance scale.
pub const MAX_GUIDANCE_SCALE: f64 = 50.0;
/// Most images one job may ask for.
pub const MAX_NUM_IMAGES: u32 = 8;
/// Smallest output side in pixels.
pub const MIN_SIDE: u32 = 64;
/// Largest output side in pixels (the worker may cap lower).
pub const MAX_SIDE: u32 = 2048;
/// Output sides must be a multiple of this (the VAE downsamples by 8).
pub const SIDE_MULTIPLE: u32 = 8;
/// Largest `mask_grow_px` and `mask_feather_px`.
pub const MAX_MASK_PX: u32 = 256;
/// Largest `crop_to_mask.padding_px`.
pub const MAX_CROP_PADDING_PX: u32 = 1024;
/// Most bytes in `output.prefix`.
pub const MAX_PREFIX_BYTES: usize = 512;
/// Most entries in `metadata`.
pub const MAX_METADATA_ENTRIES: usize = 32;
/// Most characters in a `metadata` key.
pub const MAX_METADATA_KEY_CHARS: usize = 64;
/// Most characters in a `metadata` value.
pub const MAX_METADATA_VALUE_CHARS: usize = 1024;
/// Output side used in text-only mode when `width`/`height` are absent (SD 1.5's native size).
pub const TEXT_ONLY_DEFAULT_SIDE: u32 = 512;

/// An inpainting job, schema version 1.
///
/// The producer names the input image and mask in object storage, the prompt, the engine
/// parameters and where outputs go. Fields not listed here are refused (`schema_violation`), so
/// a typo never silently falls back to a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "InpaintJob v1", transform = job_rules)]
pub struct InpaintJob {
    /// The version of this contract the job follows. Must be 1.
    #[schemars(extend("const" = 1))]
    pub schema_version: u32,

    /// The job's identity, chosen by the producer: a UUID. It is the idempotency key: a job
    /// delivered twice writes the same output keys, and a result is published for each delivery.
    pub job_id: JobId,

    /// The image to inpaint (PNG, JPEG or WebP). Give `image` and `mask` together, or neither:
    /// without them the job runs in text-only mode, where the whole canvas is masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<S3Uri>")]
    pub image: Option<ObjectRef>,

    /// The mask, same size as `image`: white (≥ 128 after conversion to grayscale) is repainted,
    /// black is kept. Required when `image` is given, forbidden without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<S3Uri>")]
    pub mask: Option<ObjectRef>,

    /// What to paint into the masked area. May be empty. CLIP reads the first 77 tokens; the
    /// result's `prompt_truncated` says when the rest was cut.
    #[schemars(length(max = MAX_PROMPT_CHARS))]
    pub prompt: String,

    /// What to steer away from (the unconditional side of classifier-free guidance). Absent:
    /// the empty prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_PROMPT_CHARS))]
    pub negative_prompt: Option<String>,

    /// Engine parameters; every one has a default (diffusers' defaults where diffusers has one).
    #[serde(default)]
    pub params: InpaintParams,

    /// Where and how the outputs are written.
    pub output: OutputSpec,

    /// When the job stops being worth running (RFC 3339, e.g. `2030-01-01T12:00:00Z`). A job
    /// picked up at or after this instant is answered with status `expired` and not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,

    /// Publish `ProgressEvent`s (one per denoising step) while the job runs.
    #[serde(default)]
    pub progress: bool,

    /// Free-form string pairs copied untouched into the result (at most 32 entries, keys 1–64
    /// characters, values up to 1024 characters). The worker never reads them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = MAX_METADATA_ENTRIES,
        "propertyNames" = {"minLength": 1, "maxLength": MAX_METADATA_KEY_CHARS},
        "additionalProperties" = {"type": "string", "maxLength": MAX_METADATA_VALUE_CHARS},
    ))]
    pub metadata: BTreeMap<String, String>,
}

/// Engine parameters. Every field is optional; an absent field takes its default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[schemars(transform = params_rules)]
pub struct InpaintParams {
    /// The noise scheduler (sampler).
    pub scheduler: Scheduler,

    /// Denoising steps, 1 to 1000. With `strength` below 1 only the last
    /// `floor(num_inference_steps × strength)` steps run (at least 1).
    #[schemars(range(min = 1, max = MAX_INFERENCE_STEPS))]
    pub num_inference_steps: u32,

    /// Classifier-free guidance scale, 0 to 50. At 1 or below guidance is skipped (one UNet
    /// pass per step instead of two) and `negative_prompt` has no effect.
    #[schemars(range(min = 0.0, max = MAX_GUIDANCE_SCALE))]
    pub guidance_scale: f64,

    /// How much of the masked area is re-noised, in (0, 1]: 1 ignores the original pixels under
    /// the mask, lower values keep more of them. Below 1 needs an `image`.
    #[schemars(range(max = 1.0), extend("exclusiveMinimum" = 0.0))]
    pub strength: f64,

    /// DDIM's η, 0 to 1 (0 is deterministic DDIM). Only the `ddim` scheduler uses it; a non-zero
    /// value with another scheduler is refused.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub eta: f64,

    /// Base seed. Image `i` uses `seed + i` (wrapping) unless `seeds` is given. Absent: the
    /// worker picks one and reports every image's seed in the result. Values above 2^53 lose
    /// precision in JavaScript producers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,

    /// Explicit per-image seeds, one per image: its length must equal `num_images`. Cannot be
    /// combined with `seed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_NUM_IMAGES))]
    pub seeds: Option<Vec<u64>>,

    /// How many images to make, 1 to 8 (one batch).
    #[schemars(range(min = 1, max = MAX_NUM_IMAGES))]
    pub num_images: u32,

    /// Output width in pixels: a multiple of 8, 64 to 2048. Absent: the input image's own width
    /// (the model runs at it rounded down to a multiple of 8 and the result is resized back;
    /// inputs above the worker's maximum side go through crop-to-mask), 512 in text-only mode.
    /// With `crop_to_mask` it is the size the crop is scaled to for the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_SIDE, max = MAX_SIDE), extend("multipleOf" = SIDE_MULTIPLE))]
    pub width: Option<u32>,

    /// Output height in pixels, with the same rules as `width`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_SIDE, max = MAX_SIDE), extend("multipleOf" = SIDE_MULTIPLE))]
    pub height: Option<u32>,

    /// Paste the original pixels back outside the mask after decoding, so the VAE round trip
    /// leaves the unmasked area bit-exact.
    pub preserve_unmasked: bool,

    /// Grow (dilate) the mask by this many pixels before inference, 0 to 256.
    #[schemars(range(max = MAX_MASK_PX))]
    pub mask_grow_px: u32,

    /// Feather the mask edge by this many pixels when pasting back, 0 to 256 (only with
    /// `preserve_unmasked`).
    #[schemars(range(max = MAX_MASK_PX))]
    pub mask_feather_px: u32,

    /// Run the model only on a crop around the mask's bounding box and paste the result back
    /// into the full image (more detail on small masks in large images). Absent: the whole
    /// image. Needs an `image`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crop_to_mask: Option<CropToMask>,
}

impl Default for InpaintParams {
    fn default() -> Self {
        Self {
            scheduler: Scheduler::default(),
            num_inference_steps: 50,
            guidance_scale: 7.5,
            strength: 1.0,
            eta: 0.0,
            seed: None,
            seeds: None,
            num_images: 1,
            width: None,
            height: None,
            preserve_unmasked: true,
            mask_grow_px: 0,
            mask_feather_px: 0,
            crop_to_mask: None,
        }
    }
}

/// The noise scheduler, named like its diffusers class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Scheduler {
    /// `PNDMScheduler`, the SD 1.5 default.
    #[default]
    #[serde(rename = "pndm")]
    Pndm,
    /// `DDIMScheduler`; the only one that reads `eta`.
    #[serde(rename = "ddim")]
    Ddim,
    /// `EulerDiscreteScheduler`.
    #[serde(rename = "euler")]
    Euler,
    /// `EulerAncestralDiscreteScheduler` (adds noise each step: seeds matter more).
    #[serde(rename = "euler_ancestral")]
    EulerAncestral,
    /// `DPMSolverMultistepScheduler` (DPM-Solver++ 2M).
    #[serde(rename = "dpmpp_2m")]
    DpmPp2m,
    /// `DPMSolverMultistepScheduler` with Karras sigmas.
    #[serde(rename = "dpmpp_2m_karras")]
    DpmPp2mKarras,
}

impl Scheduler {
    /// The wire name (`pndm`, `dpmpp_2m_karras`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pndm => "pndm",
            Self::Ddim => "ddim",
            Self::Euler => "euler",
            Self::EulerAncestral => "euler_ancestral",
            Self::DpmPp2m => "dpmpp_2m",
            Self::DpmPp2mKarras => "dpmpp_2m_karras",
        }
    }
}

/// Crop around the mask before inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CropToMask {
    /// Context kept around the mask's bounding box, in pixels, 0 to 1024; the crop is then
    /// rounded out to multiples of 8 and clipped to the image.
    #[schemars(range(max = MAX_CROP_PADDING_PX))]
    pub padding_px: u32,
}

impl Default for CropToMask {
    fn default() -> Self {
        Self { padding_px: 32 }
    }
}

/// Where outputs go. Image `i` is written to
/// `s3://{bucket}/{prefix}/{job_id}/{i}.{extension}` (no `{prefix}/` when the prefix is empty),
/// so a redelivered job overwrites its own outputs instead of adding new ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// The bucket outputs are written to (S3 naming rules). The worker may only allow some
    /// buckets; others are refused with `bucket_not_allowed`.
    #[schemars(regex(pattern = schema::BUCKET_PATTERN))]
    pub bucket: String,

    /// Key prefix inside the bucket, e.g. `tenants/42/inpaint`. One trailing `/` is ignored;
    /// no leading `/`, no empty, `.` or `..` segments. At most 512 bytes of UTF-8 (so that
    /// every output key stays within S3's 1,024 bytes): `maxLength` counts characters, so a
    /// prefix of at most 512 characters whose UTF-8 takes more than 512 bytes passes this schema
    /// and is refused by the worker with `invalid_parameter`. Empty: the bucket's root.
    #[serde(default)]
    #[schemars(length(max = MAX_PREFIX_BYTES), regex(pattern = schema::PREFIX_PATTERN))]
    pub prefix: String,

    /// The image format of the outputs. Default: PNG.
    #[serde(default)]
    pub format: OutputFormat,
}

/// The encoding of output images, tagged by `type`: `{"type": "png"}`,
/// `{"type": "jpeg", "quality": 90}`.
//
// PNG and WebP are empty struct variants (`Png {}`) so that `deny_unknown_fields` refuses a
// stray `quality` on them: serde lets unit variants of a tagged enum ignore extra fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum OutputFormat {
    /// Lossless PNG (`image/png`). Keeps the invisible watermark intact.
    #[serde(rename = "png")]
    Png {},
    /// Lossless WebP (`image/webp`). Keeps the invisible watermark intact.
    #[serde(rename = "webp")]
    Webp {},
    /// Lossy JPEG (`image/jpeg`). Warning: JPEG's chroma subsampling and quantisation destroy
    /// the invisible watermark, so JPEG outputs cannot be proven machine-made by watermark;
    /// prefer PNG or WebP where provenance matters.
    #[serde(rename = "jpeg")]
    Jpeg {
        /// JPEG quality, 1 to 100.
        #[serde(default = "default_jpeg_quality")]
        #[schemars(range(min = 1, max = 100))]
        quality: u8,
    },
}

impl Default for OutputFormat {
    fn default() -> Self {
        Self::Png {}
    }
}

fn default_jpeg_quality() -> u8 {
    90
}

impl OutputFormat {
    /// The file extension used in output keys, without the dot.
    pub const fn extension(&self) -> &'static str {
        match self {
            Self::Png {} => "png",
            Self::Webp {} => "webp",
            Self::Jpeg { .. } => "jpg",
        }
    }

    /// The MIME type written as the object's content type.
    pub const fn content_type(&self) -> &'static str {
        match self {
            Self::Png {} => "image/png",
            Self::Webp {} => "image/webp",
            Self::Jpeg { .. } => "image/jpeg",
        }
    }
}

impl InpaintJob {
    /// True when no image and mask were given: the whole canvas is generated from the prompt.
    pub fn is_text_only(&self) -> bool {
        self.image.is_none() && self.mask.is_none()
    }

    /// Whether the job's deadline has passed at `now` (never, without `expires_at`).
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|deadline| now >= deadline)
    }

    /// The seed of each image, in order: `seeds` when given, else `seed + i` (wrapping), with
    /// `fallback_seed` standing in for an absent `seed`. The list has `num_images` entries.
    pub fn per_image_seeds(&self, fallback_seed: u64) -> Vec<u64> {
        if let Some(seeds) = &self.params.seeds {
            return seeds.clone();
        }
        let base = self.params.seed.unwrap_or(fallback_seed);
        (0..u64::from(self.params.num_images))
            .map(|i| base.wrapping_add(i))
            .collect()
    }

    /// Where image `index` (0-based) is written: `{prefix}/{job_id}/{index}.{extension}` in the
    /// output bucket. Deterministic, so redelivery overwrites rather than duplicates. Fails only
    /// for a job that did not pass [`InpaintJob::validate`] (bad bucket or prefix).
    pub fn output_key(&self, index: u32) -> Result<ObjectRef, JobError> {
        let out = &self.output;
        let name = format!("{}/{index}.{}", self.job_id, out.format.extension());
        let prefix = out.prefix.strip_suffix('/').unwrap_or(&out.prefix);
        let key = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        ObjectRef::new(out.bucket.as_str(), key)
            .map_err(|e| JobError::invalid("output", e.to_string()))
    }

    /// Checks the rules that the shape alone does not: ranges, multiples of 8, image and mask
    /// together, seeds length, metadata bounds, the schema version. The first broken rule is
    /// returned, naming its field.
    pub fn validate(&self) -> Result<(), JobError> {
        if self.schema_version != JOB_SCHEMA_VERSION {
            return Err(unsupported_version(u64::from(self.schema_version)));
        }
        match (&self.image, &self.mask) {
            (Some(_), None) => {
                return Err(JobError::invalid(
                    "mask",
                    "is required when image is given (give both, or neither for text-only mode)",
                ));
            }
            (None, Some(_)) => {
                return Err(JobError::invalid(
                    "image",
                    "is required when mask is given (give both, or neither for text-only mode)",
                ));
            }
            _ => {}
        }
        check_text("prompt", &self.prompt)?;
        if let Some(negative) = &self.negative_prompt {
            check_text("negative_prompt", negative)?;
        }
        self.validate_params()?;
        self.validate_output()?;
        self.validate_metadata()
    }

    fn validate_params(&self) -> Result<(), JobError> {
        let p = &self.params;
        if !(1..=MAX_INFERENCE_STEPS).contains(&p.num_inference_steps) {
            return Err(JobError::invalid(
                "params.num_inference_steps",
                format!(
                    "must be 1 to {MAX_INFERENCE_STEPS}, got {}",
                    p.num_inference_steps
                ),
            ));
        }
        if !(0.0..=MAX_GUIDANCE_SCALE).contains(&p.guidance_scale) {
            return Err(JobError::invalid(
                "params.guidance_scale",
                format!(
                    "must be 0 to {MAX_GUIDANCE_SCALE}, got {}",
                    p.guidance_scale
                ),
            ));
        }
        if !(p.strength > 0.0 && p.strength <= 1.0) {
            return Err(JobError::invalid(
                "params.strength",
                format!("must be above 0 and at most 1, got {}", p.strength),
            ));
        }
        if !(0.0..=1.0).contains(&p.eta) {
            return Err(JobError::invalid(
                "params.eta",
                format!("must be 0 to 1, got {}", p.eta),
            ));
        }
        if p.eta != 0.0 && p.scheduler != Scheduler::Ddim {
            return Err(JobError::invalid(
                "params.eta",
                format!(
                    "is only used by the ddim scheduler; got eta {} with scheduler {}",
                    p.eta,
                    p.scheduler.as_str()
                ),
            ));
        }
        if !(1..=MAX_NUM_IMAGES).contains(&p.num_images) {
            return Err(JobError::invalid(
                "params.num_images",
                format!("must be 1 to {MAX_NUM_IMAGES}, got {}", p.num_images),
            ));
        }
        if let Some(seeds) = &p.seeds {
            if p.seed.is_some() {
                return Err(JobError::invalid(
                    "params.seeds",
                    "cannot be combined with params.seed: give one base seed or one seed per image",
                ));
            }
            if seeds.len() != p.num_images as usize {
                return Err(JobError::invalid(
                    "params.seeds",
                    format!(
                        "must hold one seed per image: {} seeds for num_images {}",
                        seeds.len(),
                        p.num_images
                    ),
                ));
            }
        }
        check_side("params.width", p.width)?;
        check_side("params.height", p.height)?;
        if p.mask_grow_px > MAX_MASK_PX {
            return Err(JobError::invalid(
                "params.mask_grow_px",
                format!("must be 0 to {MAX_MASK_PX}, got {}", p.mask_grow_px),
            ));
        }
        if p.mask_feather_px > MAX_MASK_PX {
            return Err(JobError::invalid(
                "params.mask_feather_px",
                format!("must be 0 to {MAX_MASK_PX}, got {}", p.mask_feather_px),
            ));
        }
        if let Some(crop) = p.crop_to_mask
            && crop.padding_px > MAX_CROP_PADDING_PX
        {
            return Err(JobError::invalid(
                "params.crop_to_mask.padding_px",
                format!(
                    "must be 0 to {MAX_CROP_PADDING_PX}, got {}",
                    crop.padding_px
                ),
            ));
        }
        if self.is_text_only() {
            if p.strength < 1.0 {
                return Err(JobError::invalid(
                    "params.strength",
                    format!(
                        "must be 1 in text-only mode (no image to keep), got {}",
                        p.strength
                    ),
                ));
            }
            if p.crop_to_mask.is_some() {
                return Err(JobError::invalid(
                    "params.crop_to_mask",
                    "needs an image and mask; text-only jobs have nothing to crop",
                ));
            }
        }
        Ok(())
    }

    fn validate_output(&self) -> Result<(), JobError> {
        let out = &self.output;
        if out.prefix.len() > MAX_PREFIX_BYTES {
            return Err(JobError::invalid(
                "output.prefix",
                format!(
                    "must be at most {MAX_PREFIX_BYTES} bytes of UTF-8, got {} bytes ({} \
                     characters)",
                    out.prefix.len(),
                    out.prefix.chars().count()
                ),
            ));
        }
        if out.prefix.starts_with('/') {
            return Err(JobError::invalid(
                "output.prefix",
                "must not start with '/'",
            ));
        }
        if let OutputFormat::Jpeg { quality } = out.format
            && !(1..=100).contains(&quality)
        {
            return Err(JobError::invalid(
                "output.format.quality",
                format!("must be 1 to 100, got {quality}"),
            ));
        }
        // The bucket rules and the prefix's segment rules are ObjectRef's: build a real key.
        ObjectRef::new(out.bucket.as_str(), "probe")
            .map_err(|e| JobError::invalid("output.bucket", storage_reason(&e.to_string())))?;
        self.output_key(0).map_err(|e| match e {
            JobError::InvalidParameter { message, .. } => {
                JobError::invalid("output.prefix", storage_reason(&message))
            }
            other => other,
        })?;
        Ok(())
    }

    fn validate_metadata(&self) -> Result<(), JobError> {
        if self.metadata.len() > MAX_METADATA_ENTRIES {
            return Err(JobError::invalid(
                "metadata",
                format!(
                    "may hold at most {MAX_METADATA_ENTRIES} entries, got {}",
                    self.metadata.len()
                ),
            ));
        }
        for (key, value) in &self.metadata {
            let key_chars = key.chars().count();
            if !(1..=MAX_METADATA_KEY_CHARS).contains(&key_chars) {
                return Err(JobError::invalid(
                    "metadata",
                    format!(
                        "keys must be 1 to {MAX_METADATA_KEY_CHARS} characters, got {key_chars}"
                    ),
                ));
            }
            let value_chars = value.chars().count();
            if value_chars > MAX_METADATA_VALUE_CHARS {
                return Err(JobError::invalid(
                    format!("metadata.{key}"),
                    format!(
                        "must be at most {MAX_METADATA_VALUE_CHARS} characters, got {value_chars}"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The error for a `schema_version` this crate does not read.
pub(crate) fn unsupported_version(version: u64) -> JobError {
    JobError::invalid(
        "schema_version",
        format!(
            "unsupported schema_version {version}: this worker reads schema_version \
             {JOB_SCHEMA_VERSION} only (see schemas/inpaint-job.v{JOB_SCHEMA_VERSION}.schema.json)"
        ),
    )
}

/// `StorageError`'s display is "invalid object reference X: reason"; keep the reason.
fn storage_reason(message: &str) -> String {
    message
        .rsplit_once(": ")
        .map_or(message, |(_, reason)| reason)
        .to_owned()
}

fn check_text(field: &str, text: &str) -> Result<(), JobError> {
    let chars = text.chars().count();
    if chars > MAX_PROMPT_CHARS {
        return Err(JobError::invalid(
            field,
            format!("must be at most {MAX_PROMPT_CHARS} characters, got {chars}"),
        ));
    }
    Ok(())
}

fn check_side(field: &str, side: Option<u32>) -> Result<(), JobError> {
    let Some(side) = side else { return Ok(()) };
    if !(MIN_SIDE..=MAX_SIDE).contains(&side) {
        return Err(JobError::invalid(
            field,
            format!("must be {MIN_SIDE} to {MAX_SIDE} pixels, got {side}"),
        ));
    }
    if side % SIDE_MULTIPLE != 0 {
        return Err(JobError::invalid(
            field,
            format!(
                "must be a multiple of {SIDE_MULTIPLE}, got {side} (nearest: {} or {})",
                side / SIDE_MULTIPLE * SIDE_MULTIPLE,
                (side / SIDE_MULTIPLE + 1) * SIDE_MULTIPLE
            ),
        ));
    }
    Ok(())
}

/// Adds the cross-field rule a JSON Schema can state to the job's schema: `image` and `mask`
/// together. (`seeds` length = `num_images`, `eta` only with ddim and the text-only rules are
/// checked by the Rust parser only.) A `null` counts as absent, as it does for the parser.
fn job_rules(schema: &mut Schema) {
    let present = |field: &str| json_schema!({"required": [field], "properties": {field: {"type": "string"}}});
    let rules = [
        json_schema!({"if": present("image"), "then": present("mask")}),
        json_schema!({"if": present("mask"), "then": present("image")}),
    ];
    schema.insert("allOf".into(), rules.map(Schema::to_value).to_vec().into());
}

/// Adds the rule that `seed` and `seeds` are not both given (a `null` counts as absent).
fn params_rules(schema: &mut Schema) {
    let both = json_schema!({
        "required": ["seed", "seeds"],
        "properties": {"seed": {"type": "integer"}, "seeds": {"type": "array"}},
    });
    schema.insert("not".into(), both.to_value());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> InpaintJob {
        InpaintJob {
            schema_version: 1,
            job_id: "0b9c5a52-3f0e-4d8a-9a3e-8f6f4d1c2b7a"
                .parse()
                .expect("uuid"),
            image: Some("s3://inputs/a/image.png".parse().expect("ref")),
            mask: Some("s3://inputs/a/mask.png".parse().expect("ref")),
            prompt: "a red bicycle".into(),
            negative_prompt: None,
            params: InpaintParams::default(),
            output: OutputSpec {
                bucket: "outputs".into(),
                prefix: "tenants/42/".into(),
                format: OutputFormat::default(),
            },
            expires_at: None,
            progress: false,
            metadata: BTreeMap::new(),
        }
    }

    fn field_of(job: &InpaintJob) -> String {
        match job.validate() {
            Err(JobError::InvalidParameter { field, .. }) => field,
            other => panic!("expected InvalidParameter, got {other:?}"),
        }
    }

    #[test]
    fn defaults_follow_diffusers() {
        let p = InpaintParams::default();
        assert_eq!(p.scheduler, Scheduler::Pndm);
        assert_eq!(p.num_inference_steps, 50);
        assert_eq!(p.guidance_scale, 7.5);
        assert_eq!(p.strength, 1.0);
        assert_eq!(p.eta, 0.0);
        assert_eq!(p.num_images, 1);
        assert!(p.preserve_unmasked);
        assert_eq!(CropToMask::default().padding_px, 32);
        assert_eq!(OutputFormat::default(), OutputFormat::Png {});
        job().validate().expect("the sample job is valid");
    }

    #[test]
    fn per_image_seeds_count_up_from_seed_or_fallback() {
        let mut j = job();
        j.params.num_images = 3;
        assert_eq!(j.per_image_seeds(100), vec![100, 101, 102]);
        j.params.seed = Some(u64::MAX);
        assert_eq!(j.per_image_seeds(100), vec![u64::MAX, 0, 1]);
        j.params.seed = None;
        j.params.seeds = Some(vec![7, 3, 9]);
        assert_eq!(j.per_image_seeds(100), vec![7, 3, 9]);
        j.validate().expect("valid");
    }

    #[test]
    fn output_keys_are_deterministic_and_under_the_prefix() {
        let mut j = job();
        let key = j.output_key(2).expect("key");
        assert_eq!(
            key.to_string(),
            "s3://outputs/tenants/42/0b9c5a52-3f0e-4d8a-9a3e-8f6f4d1c2b7a/2.png"
        );
        assert_eq!(j.output_key(2).expect("key"), key);
        j.output.prefix = String::new();
        j.output.format = OutputFormat::Jpeg { quality: 80 };
        assert_eq!(
            j.output_key(0).expect("key").key(),
            "0b9c5a52-3f0e-4d8a-9a3e-8f6f4d1c2b7a/0.jpg"
        );
        j.output.prefix = "a/b".into();
        j.output.format = OutputFormat::Webp {};
        assert_eq!(
            j.output_key(1).expect("key").key(),
            "a/b/0b9c5a52-3f0e-4d8a-9a3e-8f6f4d1c2b7a/1.webp"
        );
    }

    #[test]
    fn expiry_is_inclusive() {
        let mut j = job();
        let t: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().expect("time");
        assert!(!j.is_expired(t));
        j.expires_at = Some(t);
        assert!(j.is_expired(t));
        assert!(!j.is_expired(t - chrono::Duration::seconds(1)));
    }

    #[test]
    fn each_rule_names_its_field() {
        type Mutation = fn(&mut InpaintJob);
        let cases: Vec<(&str, Mutation)> = vec![
            ("schema_version", |j| j.schema_version = 2),
            ("image", |j| j.image = None),
            ("mask", |j| j.mask = None),
            ("prompt", |j| j.prompt = "x".repeat(MAX_PROMPT_CHARS + 1)),
            ("negative_prompt", |j| {
                j.negative_prompt = Some("x".repeat(MAX_PROMPT_CHARS + 1))
            }),
            ("params.num_inference_steps", |j| {
                j.params.num_inference_steps = 0
            }),
            ("params.num_inference_steps", |j| {
                j.params.num_inference_steps = 1001
            }),
            ("params.guidance_scale", |j| j.params.guidance_scale = 50.5),
            ("params.guidance_scale", |j| j.params.guidance_scale = -1.0),
            ("params.strength", |j| j.params.strength = 0.0),
            ("params.strength", |j| j.params.strength = 1.5),
            ("params.eta", |j| j.params.eta = 0.5),
            ("params.eta", |j| {
                j.params.scheduler = Scheduler::Ddim;
                j.params.eta = 2.0;
            }),
            ("params.num_images", |j| j.params.num_images = 9),
            ("params.num_images", |j| j.params.num_images = 0),
            ("params.seeds", |j| j.params.seeds = Some(vec![1, 2])),
            ("params.seeds", |j| {
                j.params.seed = Some(1);
                j.params.seeds = Some(vec![1]);
            }),
            ("params.width", |j| j.params.width = Some(500)),
            ("params.width", |j| j.params.width = Some(2056)),
            ("params.height", |j| j.params.height = Some(56)),
            ("params.mask_grow_px", |j| j.params.mask_grow_px = 300),
            ("params.mask_feather_px", |j| j.params.mask_feather_px = 300),
            ("params.crop_to_mask.padding_px", |j| {
                j.params.crop_to_mask = Some(CropToMask { padding_px: 5000 })
            }),
            ("params.strength", |j| {
                j.image = None;
                j.mask = None;
                j.params.strength = 0.5;
            }),
            ("params.crop_to_mask", |j| {
                j.image = None;
                j.mask = None;
                j.params.crop_to_mask = Some(CropToMask::default());
            }),
            ("output.bucket", |j| j.output.bucket = "Bad_Bucket".into()),
            ("output.prefix", |j| j.output.prefix = "/abs".into()),
            ("output.prefix", |j| j.output.prefix = "a/../b".into()),
            ("output.prefix", |j| j.output.prefix = "a//".into()),
            ("output.prefix", |j| j.output.prefix = "p".repeat(600)),
            ("output.format.quality", |j| {
                j.output.format = OutputFormat::Jpeg { quality: 0 }
            }),
            ("metadata", |j| {
                j.metadata = (0..33).map(|i| (format!("k{i}"), String::new())).collect()
            }),
            ("metadata", |j| {
                j.metadata.insert("k".repeat(65), String::new());
            }),
            ("metadata", |j| {
                j.metadata.insert(String::new(), String::new());
            }),
            ("metadata.big", |j| {
                j.metadata.insert("big".into(), "v".repeat(1025));
            }),
        ];
        for (expected, mutate) in cases {
            let mut j = job();
            mutate(&mut j);
            assert_eq!(field_of(&j), expected);
        }
    }

    #[test]
    fn messages_say_what_is_wrong() {
        let mut j = job();
        j.params.width = Some(500);
        let message = j.validate().expect_err("invalid").to_string();
        assert!(message.contains("multiple of 8"), "{message}");
        assert!(message.contains("496 or 504"), "{message}");

        let mut j = job();
        j.schema_version = 2;
        let message = j.validate().expect_err("invalid").to_string();
        assert!(message.contains("schema_version 1"), "{message}");

        let mut j = job();
        j.output.bucket = "ab".into();
        let message = j.validate().expect_err("invalid").to_string();
        assert!(message.contains("3 to 63"), "{message}");
    }

    #[test]
    fn edge_values_are_accepted() {
        let mut j = job();
        j.params.num_inference_steps = 1000;
        j.params.guidance_scale = 0.0;
        j.params.strength = 1e-6;
        j.params.scheduler = Scheduler::Ddim;
        j.params.eta = 1.0;
        j.params.num_images = 8;
        j.params.width = Some(64);
        j.params.height = Some(2048);
        j.params.mask_grow_px = 256;
        j.params.crop_to_mask = Some(CropToMask { padding_px: 1024 });
        j.output.format = OutputFormat::Jpeg { quality: 100 };
        j.metadata = (0..32)
            .map(|i| (format!("{i:0>64}"), "v".repeat(1024)))
            .collect();
        j.validate().expect("edges are inside the ranges");
    }
}
