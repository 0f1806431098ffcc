//! Admission checks: the rules a valid job must also meet on *this* worker, checked before any
//! download, each refused with its own [`ErrorCode`]:
//!
//! - [`InpaintJob::check_limits`]: the configured chain can serve the output size
//!   (`unsupported_by_chain`); [`ChainLimits::check_size`] for sizes known only after decoding;
//! - [`InpaintJob::check_output_not_input`]: no output key (or the `result.json` manifest) is the
//!   job's own image or mask (`output_overwrites_input`);
//! - [`InpaintJob::request_sha256`] and [`InpaintResult::check_same_request`]: a `job_id` reused
//!   for a different request is refused instead of answered with the old result
//!   (`job_id_conflict`).
//!
//! Pure functions: the job flow calls them, this crate does no I/O.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::JobError;
use crate::job::{InpaintJob, TEXT_ONLY_DEFAULT_SIDE};
use crate::result::{ErrorCode, InpaintResult};

/// Name of the manifest the worker writes beside a job's outputs: the job's stored
/// [`InpaintResult`], read back to answer a redelivered job without recomputing it.
pub const MANIFEST_NAME: &str = "result.json";

/// What the worker's configured chain needs of an output image.
///
/// Built by the worker from its configuration (e.g. the `watermark` stage's DWT-DCT embedding
/// needs at least [`ChainLimits::WATERMARK_MIN_PIXELS`] pixels). Plain data: zero means no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChainLimits {
    /// Smallest output side in pixels the chain accepts.
    pub min_side: u32,
    /// Fewest output pixels (width × height) the chain accepts.
    pub min_pixels: u64,
    /// Which stage sets these limits, for the refusal message (e.g. `watermark`).
    pub needed_by: String,
}

impl ChainLimits {
    /// Fewest pixels the `dwtDct` watermark embeds into (`invisible-watermark` raises below
    /// 256 × 256 pixels).
    pub const WATERMARK_MIN_PIXELS: u64 = 256 * 256;

    /// The limits of the default chain (prompt policy, safety checker, watermark): the watermark
    /// needs at least 65,536 pixels, e.g. 256 × 256.
    pub fn default_chain() -> Self {
        Self {
            min_side: 0,
            min_pixels: Self::WATERMARK_MIN_PIXELS,
            needed_by: "watermark".into(),
        }
    }

    /// Whether an output of `width` × `height` can be served; `field` names where the size came
    /// from (e.g. `params.width`, or `image` for a size read from the decoded input).
    pub fn check_size(&self, field: &str, width: u32, height: u32) -> Result<(), JobError> {
        let by = if self.needed_by.is_empty() {
            "this worker's chain".to_owned()
        } else {
            format!("this worker's {} stage", self.needed_by)
        };
        let side = width.min(height);
        if side < self.min_side {
            return Err(unsupported(
                field,
                format!(
                    "an output of {width}x{height} is too small: {by} needs every side to be at \
                     least {} pixels",
                    self.min_side
                ),
            ));
        }
        let pixels = u64::from(width) * u64::from(height);
        if pixels < self.min_pixels {
            return Err(unsupported(
                field,
                format!(
                    "an output of {width}x{height} ({pixels} pixels) is too small: {by} needs at \
                     least {} pixels (e.g. 256x256)",
                    self.min_pixels
                ),
            ));
        }
        Ok(())
    }
}

fn unsupported(field: &str, message: String) -> JobError {
    JobError::Refused {
        code: ErrorCode::UnsupportedByChain,
        field: field.to_owned(),
        message,
    }
}

/// The fields of a job that decide what it produces: everything but `schema_version`,
/// `job_id` (the key itself), `expires_at`, `progress` and `metadata` (which change neither the
/// images nor where they go). Serialised from the typed job, so field order, defaults made
/// explicit and `null`-versus-absent do not change the fingerprint.
#[derive(Serialize)]
struct Request<'a> {
    image: Option<String>,
    mask: Option<String>,
    prompt: &'a str,
    negative_prompt: &'a str,
    params: &'a crate::job::InpaintParams,
    output_bucket: &'a str,
    output_prefix: &'a str,
    output_format: &'a crate::job::OutputFormat,
}

impl InpaintJob {
    /// Refuses, before any download, a job whose output size is known up front and too small
    /// (or otherwise not servable) for the configured chain: `unsupported_by_chain`.
    ///
    /// Known up front: text-only jobs (`width`/`height`, else 512 × 512), and image jobs without
    /// `crop_to_mask` that give both `width` and `height`. Other image jobs get their size from
    /// the decoded input: check it then with [`ChainLimits::check_size`].
    pub fn check_limits(&self, limits: &ChainLimits) -> Result<(), JobError> {
        let p = &self.params;
        let (width, height) = if self.is_text_only() {
            (
                p.width.unwrap_or(TEXT_ONLY_DEFAULT_SIDE),
                p.height.unwrap_or(TEXT_ONLY_DEFAULT_SIDE),
            )
        } else {
            match (p.width, p.height, p.crop_to_mask) {
                (Some(w), Some(h), None) => (w, h),
                // One side known: that side alone must meet the side limit.
                (Some(w), None, None) => return check_side(limits, "params.width", w),
                (None, Some(h), None) => return check_side(limits, "params.height", h),
                _ => return Ok(()),
            }
        };
        let field = match (p.width, p.height) {
            (Some(_), _) => "params.width",
            (None, Some(_)) => "params.height",
            (None, None) => "params",
        };
        limits.check_size(field, width, height)
    }

    /// The `result.json` manifest beside the job's outputs (see [`MANIFEST_NAME`]).
    pub fn manifest_key(&self) -> Result<inpaint_storage::ObjectRef, JobError> {
        let first = self.output_key(0)?;
        let key = match first.key().rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{MANIFEST_NAME}"),
            None => MANIFEST_NAME.to_owned(),
        };
        inpaint_storage::ObjectRef::new(first.bucket(), key)
            .map_err(|e| JobError::invalid("output", e.to_string()))
    }

    /// Refuses a job one of whose output keys (or its `result.json` manifest) is its own image
    /// or mask: writing the outputs would destroy the user's input. `output_overwrites_input`.
    pub fn check_output_not_input(&self) -> Result<(), JobError> {
        let inputs = [("image", &self.image), ("mask", &self.mask)];
        let mut outputs = Vec::with_capacity(self.params.num_images as usize + 1);
        for index in 0..self.params.num_images {
            outputs.push((format!("output {index}"), self.output_key(index)?));
        }
        outputs.push(("the result.json manifest".to_owned(), self.manifest_key()?));
        for (field, input) in inputs {
            let Some(input) = input else { continue };
            for (what, output) in &outputs {
                if output.bucket() == input.bucket() && output.key() == input.key() {
                    return Err(JobError::Refused {
                        code: ErrorCode::OutputOverwritesInput,
                        field: field.to_owned(),
                        message: format!(
                            "{what} would be written to {output}, which is the job's {field}: \
                             choose another output.bucket or output.prefix"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// SHA-256 (lowercase hex) of what the job asks for: the canonical JSON of its image, mask,
    /// prompts, parameters (defaults made explicit) and output spec, without `job_id`,
    /// `expires_at`, `progress` and `metadata`. Two deliveries of the same request have the same
    /// fingerprint; a different request reusing the `job_id` does not. Stored in the result as
    /// `request_sha256`.
    pub fn request_sha256(&self) -> String {
        let request = Request {
            image: self.image.as_ref().map(ToString::to_string),
            mask: self.mask.as_ref().map(ToString::to_string),
            prompt: &self.prompt,
            negative_prompt: self.negative_prompt.as_deref().unwrap_or(""),
            params: &self.params,
            output_bucket: &self.output.bucket,
            output_prefix: self
                .output
                .prefix
                .strip_suffix('/')
                .unwrap_or(&self.output.prefix),
            output_format: &self.output.format,
        };
        // Serialising plain data with string keys cannot fail; an empty body would still hash.
        let bytes = serde_json::to_vec(&request).unwrap_or_default();
        Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

fn check_side(limits: &ChainLimits, field: &str, side: u32) -> Result<(), JobError> {
    if side < limits.min_side {
        return limits.check_size(field, side, side);
    }
    Ok(())
}

impl InpaintResult {
    /// Whether this stored result (an earlier delivery's `result.json`) answers `job`: refuses
    /// with `job_id_conflict` when it was made for a different request under the same `job_id`.
    /// A result without `request_sha256` (written before the field existed) is trusted.
    pub fn check_same_request(&self, job: &InpaintJob) -> Result<(), JobError> {
        let Some(recorded) = &self.request_sha256 else {
            return Ok(());
        };
        let asked = job.request_sha256();
        if *recorded == asked {
            return Ok(());
        }
        Err(JobError::Refused {
            code: ErrorCode::JobIdConflict,
            field: "job_id".into(),
            message: format!(
                "job_id {} was already used for a different request (stored request_sha256 \
                 {recorded}, this one {asked}): use a fresh job_id for a new request",
                job.job_id
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(text: &str) -> InpaintJob {
        InpaintJob::from_json(text.as_bytes()).expect("valid job")
    }

    const ID: &str = "0b9c5a52-3f0e-4d8a-9a3e-8f6f4d1c2b7a";

    fn image_job(extra_params: &str, bucket: &str, prefix: &str) -> InpaintJob {
        job(&format!(
            r#"{{"schema_version": 1, "job_id": "{ID}", "image": "s3://inb/a/{ID}/0.png",
                "mask": "s3://inb/a/m.png", "prompt": "p", "params": {{{extra_params}}},
                "output": {{"bucket": "{bucket}", "prefix": "{prefix}"}}}}"#
        ))
    }

    fn code(e: &JobError) -> ErrorCode {
        e.code()
    }

    #[test]
    fn sizes_below_the_chain_minimum_are_refused_with_their_code() {
        let limits = ChainLimits::default_chain();
        // Every side from 64 to 512 in steps of 8, both dimensions, text-only: the verdict is
        // exactly "pixels < 65536".
        for w in (64u32..=512).step_by(8) {
            for h in (64u32..=512).step_by(64) {
                let j = job(&format!(
                    r#"{{"schema_version": 1, "job_id": "{ID}", "prompt": "",
                        "params": {{"width": {w}, "height": {h}}},
                        "output": {{"bucket": "out"}}}}"#
                ));
                let verdict = j.check_limits(&limits);
                let small = u64::from(w) * u64::from(h) < ChainLimits::WATERMARK_MIN_PIXELS;
                assert_eq!(verdict.is_err(), small, "{w}x{h}: {verdict:?}");
                if let Err(e) = verdict {
                    assert_eq!(code(&e), ErrorCode::UnsupportedByChain);
                    assert!(e.to_string().contains("watermark"), "{e}");
                    assert!(e.to_string().contains(&format!("{w}x{h}")), "{e}");
                }
            }
        }
        // Text-only without a size: 512x512, fine.
        let j = job(&format!(
            r#"{{"schema_version": 1, "job_id": "{ID}", "prompt": "", "output": {{"bucket": "out"}}}}"#
        ));
        j.check_limits(&limits).expect("512x512 is served");
        // Text-only with one side: the other is 512.
        let j = job(&format!(
            r#"{{"schema_version": 1, "job_id": "{ID}", "prompt": "", "params": {{"width": 64}},
                "output": {{"bucket": "out"}}}}"#
        ));
        let e = j.check_limits(&limits).expect_err("64x512 = 32768 < 65536");
        assert!(e.to_string().contains("64x512"), "{e}");
    }

    #[test]
    fn text_only_one_side_below_the_pixel_minimum() {
        let limits = ChainLimits::default_chain();
        let j = job(&format!(
            r#"{{"schema_version": 1, "job_id": "{ID}", "prompt": "", "params": {{"height": 64}},
                "output": {{"bucket": "out"}}}}"#
        ));
        // 512x64 = 32768 pixels.
        let e = j.check_limits(&limits).expect_err("too small");
        assert_eq!(e.code(), ErrorCode::UnsupportedByChain);
    }

    #[test]
    fn image_jobs_are_checked_when_their_size_is_known() {
        let limits = ChainLimits::default_chain();
        let e = image_job(r#""width": 64, "height": 64"#, "out", "")
            .check_limits(&limits)
            .expect_err("64x64");
        assert_eq!(e.code(), ErrorCode::UnsupportedByChain);
        image_job(r#""width": 256, "height": 256"#, "out", "")
            .check_limits(&limits)
            .expect("256x256");
        // Size from the input (or crop scaled back into the full image): known after decoding.
        image_job("", "out", "")
            .check_limits(&limits)
            .expect("unknown yet");
        image_job(
            r#""width": 64, "height": 64, "crop_to_mask": {}"#,
            "out",
            "",
        )
        .check_limits(&limits)
        .expect("crop: the output is the full image");
        assert_eq!(
            limits.check_size("image", 200, 200).map_err(|e| e.code()),
            Err(ErrorCode::UnsupportedByChain)
        );
        limits.check_size("image", 256, 256).expect("256x256");
        // A side limit: one known side is enough to refuse.
        let sides = ChainLimits {
            min_side: 128,
            min_pixels: 0,
            needed_by: String::new(),
        };
        let e = image_job(r#""width": 64"#, "out", "")
            .check_limits(&sides)
            .expect_err("64 < 128");
        assert!(e.to_string().contains("params.width"), "{e}");
        assert!(e.to_string().contains("this worker's chain"), "{e}");
        ChainLimits::default()
            .check_size("image", 8, 8)
            .expect("no limits");
    }

    #[test]
    fn outputs_onto_inputs_are_refused() {
        // image is s3://inb/a/{ID}/0.png: output 0 with bucket "in", prefix "a" lands on it.
        let e = image_job("", "inb", "a")
            .check_output_not_input()
            .expect_err("same key");
        assert_eq!(e.code(), ErrorCode::OutputOverwritesInput);
        assert!(e.to_string().contains("s3://inb/a/"), "{e}");
        // Trailing slash: same key.
        assert!(image_job("", "inb", "a/").check_output_not_input().is_err());
        // Image 1 of 2 hits a mask at .../1.png.
        let j = job(&format!(
            r#"{{"schema_version": 1, "job_id": "{ID}", "image": "s3://inb/x.png",
                "mask": "s3://inb/{ID}/1.png", "prompt": "p", "params": {{"num_images": 2}},
                "output": {{"bucket": "inb"}}}}"#
        ));
        let e = j.check_output_not_input().expect_err("mask");
        assert!(e.to_string().contains("mask"), "{e}");
        // The manifest too.
        let j = job(&format!(
            r#"{{"schema_version": 1, "job_id": "{ID}", "image": "s3://inb/p/{ID}/result.json",
                "mask": "s3://inb/m.png", "prompt": "p", "output": {{"bucket": "inb", "prefix": "p"}}}}"#
        ));
        let e = j.check_output_not_input().expect_err("manifest");
        assert!(e.to_string().contains("manifest"), "{e}");
        // Elsewhere: fine, also the same key in another bucket.
        image_job("", "out", "a")
            .check_output_not_input()
            .expect("other bucket");
        image_job("", "inb", "b")
            .check_output_not_input()
            .expect("other prefix");
        job(&format!(
            r#"{{"schema_version": 1, "job_id": "{ID}", "prompt": "", "output": {{"bucket": "inb"}}}}"#
        ))
        .check_output_not_input()
        .expect("text-only has no inputs");
    }

    #[test]
    fn fingerprints_ignore_volatile_fields_and_catch_every_other_change() {
        let base = r#"{"schema_version": 1, "job_id": "0b9c5a52-3f0e-4d8a-9a3e-8f6f4d1c2b7a",
            "image": "s3://inb/i.png", "mask": "s3://inb/m.png", "prompt": "p",
            "output": {"bucket": "outb", "prefix": "x"}}"#;
        let base_value: serde_json::Value = serde_json::from_str(base).expect("json");
        let reference = job(base).request_sha256();
        assert_eq!(reference.len(), 64);
        let with = |path: &[&str], value: serde_json::Value| {
            let mut v = base_value.clone();
            let mut at = &mut v;
            for key in &path[..path.len() - 1] {
                at = at
                    .as_object_mut()
                    .expect("object")
                    .entry(key.to_string())
                    .or_insert_with(|| serde_json::json!({}));
            }
            at[path[path.len() - 1]] = value;
            InpaintJob::from_json(&serde_json::to_vec(&v).expect("bytes"))
                .expect("valid")
                .request_sha256()
        };
        use serde_json::json;
        // Same request: volatile fields, explicit defaults, key order, nulls, trailing slash.
        for same in [
            with(&["job_id"], json!("11111111-2222-4333-8444-555555555555")),
            with(&["expires_at"], json!("2031-01-01T00:00:00Z")),
            with(&["progress"], json!(true)),
            with(&["metadata"], json!({"trace": "abc"})),
            with(&["params", "num_inference_steps"], json!(50)),
            with(&["params", "seed"], serde_json::Value::Null),
            with(&["negative_prompt"], json!("")),
            with(&["output", "prefix"], json!("x/")),
            with(&["output", "format"], json!({"type": "png"})),
        ] {
            assert_eq!(same, reference);
        }
        // A different request: every field that shapes the outputs.
        let changes = [
            with(&["image"], json!("s3://inb/other.png")),
            with(&["mask"], json!("s3://inb/other.png")),
            with(&["prompt"], json!("q")),
            with(&["negative_prompt"], json!("n")),
            with(&["params", "scheduler"], json!("ddim")),
            with(&["params", "num_inference_steps"], json!(51)),
            with(&["params", "guidance_scale"], json!(7.0)),
            with(&["params", "strength"], json!(0.5)),
            with(&["params", "seed"], json!(1)),
            with(&["params", "width"], json!(512)),
            with(&["params", "height"], json!(512)),
            with(&["params", "preserve_unmasked"], json!(false)),
            with(&["params", "mask_grow_px"], json!(1)),
            with(&["params", "mask_feather_px"], json!(1)),
            with(&["params", "crop_to_mask"], json!({})),
            with(&["output", "bucket"], json!("out2")),
            with(&["output", "prefix"], json!("y")),
            with(&["output", "format"], json!({"type": "webp"})),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for (i, changed) in changes.iter().enumerate() {
            assert_ne!(*changed, reference, "change {i} kept the fingerprint");
            assert!(seen.insert(changed.clone()), "change {i} collides");
        }
    }

    #[test]
    fn a_stored_result_answers_only_its_own_request() {
        let j = image_job("", "out", "");
        let mut stored = InpaintResult::new(
            Some(j.job_id),
            crate::JobStatus::Succeeded,
            crate::ModelInfo {
                id: "m".into(),
                weights_sha256: "0".repeat(64),
            },
            crate::WorkerInfo {
                version: "v".into(),
                host: "h".into(),
                missing_required_stages: vec![],
            },
            "2030-01-01T00:00:00Z".parse().expect("time"),
        );
        stored
            .check_same_request(&j)
            .expect("legacy: no fingerprint");
        stored.request_sha256 = Some(j.request_sha256());
        stored.check_same_request(&j).expect("same request");
        let mut other = j.clone();
        other.prompt = "something else".into();
        let e = stored.check_same_request(&other).expect_err("conflict");
        assert_eq!(e.code(), ErrorCode::JobIdConflict);
        assert_eq!(e.code().status(), crate::JobStatus::Rejected);
        assert!(e.to_string().contains("fresh job_id"), "{e}");
    }
}
