//! [`InpaintResult`] v1: what the worker publishes when a job ends, whatever the outcome.
//!
//! Unlike jobs, result types accept unknown fields when read: new fields may be added to v1
//! results, and consumers (this crate included) must ignore what they do not know.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use inpaint_storage::ObjectRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::id::JobId;
use crate::schema::{S3Uri, SHA256_PATTERN};

/// The result schema version this crate writes.
pub const RESULT_SCHEMA_VERSION: u32 = 1;

/// The outcome of one job delivery, published to the results exchange (and to the job's
/// `reply_to` queue when it had one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "InpaintResult v1")]
pub struct InpaintResult {
    /// The version of this contract the result follows: 1.
    #[schemars(extend("const" = 1))]
    pub schema_version: u32,

    /// The job this result answers. Absent only for a `rejected` message whose `job_id` could
    /// not be read at all (not JSON, or no valid UUID); match on the AMQP `correlation_id` then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,

    /// How the job ended.
    pub status: JobStatus,

    /// The images written, in index order. Empty unless `status` is `succeeded`.
    #[serde(default)]
    pub outputs: Vec<OutputObject>,

    /// Why the job did not succeed. Present for `failed`, `rejected`, `expired` and `cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,

    /// Which check blocked the job, and why. Present for `blocked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<BlockInfo>,

    /// True when the prompt or negative prompt was longer than CLIP's 77 tokens and was cut.
    #[serde(default)]
    pub prompt_truncated: bool,

    /// Milliseconds spent per stage (`download`, `decode`, `plugins_before`, `inference`,
    /// `plugins_after`, `upload`, `manifest`), for stages that ran, and `total`: from the
    /// worker receiving the message to this result being final (the result's own publish and
    /// the acknowledgement follow it).
    #[serde(default)]
    pub timings_ms: BTreeMap<String, u64>,

    /// The model that ran (or would have run) the job.
    pub model: ModelInfo,

    /// The worker that handled this delivery.
    pub worker: WorkerInfo,

    /// Which delivery of the job this was, from 1 (redeliveries and retries count up).
    #[schemars(range(min = 1))]
    pub attempt: u32,

    /// The job's `metadata`, echoed untouched.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,

    /// When the worker finished with the job (RFC 3339, UTC).
    pub finished_at: DateTime<Utc>,

    /// SHA-256 (lowercase hex) of what the job asked for (its image, mask, prompts, parameters
    /// and output spec; not `job_id`, `expires_at`, `progress` or `metadata`). A redelivery is
    /// answered from the stored result only when the fingerprints match; otherwise the job is
    /// refused with `job_id_conflict`. Absent for messages that never parsed as a job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SHA256_PATTERN))]
    pub request_sha256: Option<String>,

    /// True when this delivery did not compute the job but answered it from the result an
    /// earlier delivery stored (the worker died between publishing that result and the ack):
    /// the outputs, their `sha256` and `request_sha256` are the earlier ones, so a producer may
    /// receive the same job's result twice and deduplicates on `job_id`. Absent means false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replay: bool,
}

/// How a job ended. Every status is final for its delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// All images were made, checked and written; `outputs` lists them.
    Succeeded,
    /// The job was valid but could not be completed (storage, model, timeout, out of memory,
    /// internal error); `error` says why and whether republishing may help (`retryable`).
    Failed,
    /// The message was refused before any work: not JSON, wrong shape, a bad parameter, an
    /// input that is missing, too large or undecodable, or a bucket that is not allowed.
    /// Republishing the same message fails the same way.
    Rejected,
    /// A policy or safety check stopped the job (the prompt, the input or an output); `block`
    /// says which and why. No outputs are written.
    Blocked,
    /// The job's `expires_at` had passed when the worker picked it up; it was not run.
    Expired,
    /// A `CancelRequest` for this job arrived before it finished. No outputs are listed.
    Cancelled,
}

// The stored object, as the result lists it; the plugin API's `OutputImage` is the image itself
// on its way through the stages, before it is stored. The doc line below is the schema's
// description and the schema keeps its v1 definition name, so the published file is unchanged.
/// One image written by the worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "OutputImage")]
pub struct OutputObject {
    /// Where the image was written: `s3://bucket/prefix/job_id/index.ext`.
    #[schemars(with = "S3Uri")]
    pub uri: ObjectRef,

    /// The image's index in the job, from 0.
    pub index: u32,

    /// The seed that made this image; republishing the job with this seed reproduces it on
    /// the same model and hardware.
    pub seed: u64,

    /// SHA-256 of the written bytes, lowercase hex.
    #[schemars(regex(pattern = SHA256_PATTERN))]
    pub sha256: String,

    /// Width in pixels.
    pub width: u32,

    /// Height in pixels.
    pub height: u32,

    /// The MIME type the object was written with (`image/png`, `image/webp`, `image/jpeg`).
    pub content_type: String,

    /// The safety checker's verdict on this image. Absent when no safety checker ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety: Option<SafetyReport>,

    /// The invisible watermark embedded in this image. Absent when watermarking is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<WatermarkInfo>,
}

/// The safety checker's scores for one image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SafetyReport {
    /// Whether any concept crossed its threshold.
    pub nsfw: bool,

    /// Score per concept (cosine similarity minus the concept's threshold; above 0 is flagged).
    #[serde(default)]
    pub concept_scores: BTreeMap<String, f64>,

    /// The concepts that crossed their threshold.
    #[serde(default)]
    pub flagged_concepts: Vec<String>,
}

/// The invisible watermark in an output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WatermarkInfo {
    /// The embedded payload bits, as lowercase hex.
    #[schemars(regex(pattern = "^[0-9a-f]*$"))]
    pub payload_hex: String,

    /// The embedding method, as invisible-watermark names it (e.g. `dwtDct`).
    pub method: String,
}

/// Why a job did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorInfo {
    /// The error class: stable, machine-readable.
    pub code: ErrorCode,

    /// What went wrong, for people: names the field or object concerned.
    pub message: String,

    /// Whether republishing the same job later may succeed (the worker has already used its
    /// own retries).
    pub retryable: bool,
}

/// The error classes. New codes may be added in v1; treat an unknown code as `internal`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message is not JSON.
    MalformedJson,
    /// The message is JSON but not a v1 job: missing, unknown or mistyped field.
    SchemaViolation,
    /// A field's value breaks a rule (range, multiple of 8, seeds length, schema version, ...).
    InvalidParameter,
    /// The image or mask could not be decoded, or their sizes differ.
    UndecodableImage,
    /// The image or mask does not exist.
    ObjectNotFound,
    /// The image or mask is larger (in bytes) than the worker accepts.
    ObjectTooLarge,
    /// The image is larger (in pixels) than the worker accepts.
    ImageTooLarge,
    /// The input or output bucket is not on the worker's allow-list.
    BucketNotAllowed,
    /// The prompt policy refused the job.
    PolicyBlocked,
    /// The safety checker flagged the input or an output.
    SafetyBlocked,
    /// `expires_at` had passed.
    Expired,
    /// A cancel request stopped the job.
    Cancelled,
    /// Object storage failed or was unreachable.
    StorageUnavailable,
    /// The message broker failed while the job ran.
    BrokerUnavailable,
    /// The job ran longer than the worker's time limit.
    Timeout,
    /// The accelerator or host ran out of memory.
    OutOfMemory,
    /// Anything else: a bug in the worker.
    Internal,
    /// A valid job this worker's configured chain cannot serve (e.g. an output smaller than the
    /// watermark needs); refused before any download.
    UnsupportedByChain,
    /// An output key (or the `result.json` manifest) is the job's own image or mask.
    OutputOverwritesInput,
    /// The `job_id` was already used for a different request.
    JobIdConflict,
    /// The message reached the jobs queue's delivery limit (it ended every earlier delivery
    /// without a settlement, e.g. by crashing the worker): answered without running it again.
    DeliveryLimitExceeded,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [Self; 21] = [
        Self::MalformedJson,
        Self::SchemaViolation,
        Self::InvalidParameter,
        Self::UndecodableImage,
        Self::ObjectNotFound,
        Self::ObjectTooLarge,
        Self::ImageTooLarge,
        Self::BucketNotAllowed,
        Self::PolicyBlocked,
        Self::SafetyBlocked,
        Self::Expired,
        Self::Cancelled,
        Self::StorageUnavailable,
        Self::BrokerUnavailable,
        Self::Timeout,
        Self::OutOfMemory,
        Self::Internal,
        Self::UnsupportedByChain,
        Self::OutputOverwritesInput,
        Self::JobIdConflict,
        Self::DeliveryLimitExceeded,
    ];

    /// The wire name (`malformed_json`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed_json",
            Self::SchemaViolation => "schema_violation",
            Self::InvalidParameter => "invalid_parameter",
            Self::UndecodableImage => "undecodable_image",
            Self::ObjectNotFound => "object_not_found",
            Self::ObjectTooLarge => "object_too_large",
            Self::ImageTooLarge => "image_too_large",
            Self::BucketNotAllowed => "bucket_not_allowed",
            Self::PolicyBlocked => "policy_blocked",
            Self::SafetyBlocked => "safety_blocked",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::StorageUnavailable => "storage_unavailable",
            Self::BrokerUnavailable => "broker_unavailable",
            Self::Timeout => "timeout",
            Self::OutOfMemory => "out_of_memory",
            Self::Internal => "internal",
            Self::UnsupportedByChain => "unsupported_by_chain",
            Self::OutputOverwritesInput => "output_overwrites_input",
            Self::JobIdConflict => "job_id_conflict",
            Self::DeliveryLimitExceeded => "delivery_limit_exceeded",
        }
    }

    /// The status a job ending with this error gets.
    pub const fn status(self) -> JobStatus {
        match self {
            Self::MalformedJson
            | Self::SchemaViolation
            | Self::InvalidParameter
            | Self::UndecodableImage
            | Self::ObjectNotFound
            | Self::ObjectTooLarge
            | Self::ImageTooLarge
            | Self::BucketNotAllowed
            | Self::UnsupportedByChain
            | Self::OutputOverwritesInput
            | Self::JobIdConflict => JobStatus::Rejected,
            Self::PolicyBlocked | Self::SafetyBlocked => JobStatus::Blocked,
            Self::Expired => JobStatus::Expired,
            Self::Cancelled => JobStatus::Cancelled,
            Self::StorageUnavailable
            | Self::BrokerUnavailable
            | Self::Timeout
            | Self::OutOfMemory
            | Self::Internal
            | Self::DeliveryLimitExceeded => JobStatus::Failed,
        }
    }
}

/// Which check blocked a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BlockInfo {
    /// The stage that blocked: `prompt_policy`, `input_safety`, `safety_checker`, ...
    pub stage: String,

    /// The category of content, as the stage names it (e.g. `nsfw`, `blocked_term`).
    pub category: String,

    /// Why, for people. Never repeats the blocked prompt text.
    pub reason: String,

    /// The stage's scores behind the decision, by name.
    #[serde(default)]
    pub scores: BTreeMap<String, f64>,
}

/// The model behind a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ModelInfo {
    /// The model's name, e.g. `stable-diffusion-v1-5/stable-diffusion-inpainting`.
    pub id: String,

    /// SHA-256 over the loaded weight files, lowercase hex: pins the exact weights.
    #[schemars(regex(pattern = SHA256_PATTERN))]
    pub weights_sha256: String,
}

/// The worker behind a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerInfo {
    /// The worker's version (`CARGO_PKG_VERSION`, plus a git hash where built with one).
    pub version: String,

    /// The host (or pod) name the worker ran on.
    pub host: String,

    /// Required stages (`safety-checker`, `watermark`) the worker's chain lacked because its
    /// operator set `chain.allow_unsafe_chain`: the OpenRAIL-M fail-closed override, reported in
    /// every result it affects. Absent or empty normally.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_required_stages: Vec<String>,
}

impl InpaintResult {
    /// A result with the given status and nothing else filled in: no outputs, no error, no
    /// timings, attempt 1. Set the other fields directly.
    pub fn new(
        job_id: Option<JobId>,
        status: JobStatus,
        model: ModelInfo,
        worker: WorkerInfo,
        finished_at: DateTime<Utc>,
    ) -> Self {
        Self {
            schema_version: RESULT_SCHEMA_VERSION,
            job_id,
            status,
            outputs: Vec::new(),
            error: None,
            block: None,
            prompt_truncated: false,
            timings_ms: BTreeMap::new(),
            model,
            worker,
            attempt: 1,
            metadata: BTreeMap::new(),
            finished_at,
            request_sha256: None,
            replay: false,
        }
    }

    /// A result for a job that ended with `error`: the status follows from the error's code.
    pub fn from_error(
        job_id: Option<JobId>,
        error: ErrorInfo,
        model: ModelInfo,
        worker: WorkerInfo,
        finished_at: DateTime<Utc>,
    ) -> Self {
        let mut result = Self::new(job_id, error.code.status(), model, worker, finished_at);
        result.error = Some(error);
        result
    }

    /// The result as JSON bytes, ready to publish.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Reads a result (consumers' side). Unknown fields are ignored.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelInfo {
        ModelInfo {
            id: "sd-1.5-inpainting".into(),
            weights_sha256: "0".repeat(64),
        }
    }

    fn worker() -> WorkerInfo {
        WorkerInfo {
            version: "0.1.0".into(),
            host: "test".into(),
            missing_required_stages: vec![],
        }
    }

    fn at() -> DateTime<Utc> {
        "2030-01-01T00:00:00Z".parse().expect("time")
    }

    #[test]
    fn error_codes_use_their_wire_names() {
        let mut names = std::collections::BTreeSet::new();
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).expect("serialize");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert!(names.insert(code.as_str()), "{} twice", code.as_str());
        }
        // ALL is every variant: the schema's enum lists exactly these names.
        let schema: serde_json::Value =
            serde_json::from_str(&crate::result_schema_json()).expect("schema");
        let listed: std::collections::BTreeSet<&str> = schema["$defs"]["ErrorCode"]["oneOf"]
            .as_array()
            .map(|v| v.iter().filter_map(|c| c["const"].as_str()).collect())
            .or_else(|| {
                schema["$defs"]["ErrorCode"]["enum"]
                    .as_array()
                    .map(|v| v.iter().filter_map(|c| c.as_str()).collect())
            })
            .expect("ErrorCode is an enum in the schema");
        assert_eq!(listed, names);
    }

    #[test]
    fn status_follows_the_error_code() {
        assert_eq!(ErrorCode::ObjectNotFound.status(), JobStatus::Rejected);
        assert_eq!(ErrorCode::SafetyBlocked.status(), JobStatus::Blocked);
        assert_eq!(ErrorCode::Expired.status(), JobStatus::Expired);
        assert_eq!(ErrorCode::Cancelled.status(), JobStatus::Cancelled);
        assert_eq!(ErrorCode::OutOfMemory.status(), JobStatus::Failed);
        let error = ErrorInfo {
            code: ErrorCode::Timeout,
            message: "inference ran past 600 s".into(),
            retryable: true,
        };
        let r = InpaintResult::from_error(None, error, model(), worker(), at());
        assert_eq!(r.status, JobStatus::Failed);
        assert!(r.error.is_some());
    }

    #[test]
    fn the_unsafe_chain_override_is_reported_by_the_worker_section() {
        let mut w = worker();
        w.missing_required_stages = vec!["safety-checker".into()];
        let r = InpaintResult::new(None, JobStatus::Failed, model(), w, at());
        let json = String::from_utf8(r.to_json().expect("serialize")).expect("utf8");
        assert!(
            json.contains("\"missing_required_stages\":[\"safety-checker\"]"),
            "{json}"
        );
        let back = InpaintResult::from_json(json.as_bytes()).expect("parse");
        assert_eq!(back.worker.missing_required_stages, ["safety-checker"]);
    }

    #[test]
    fn round_trips_and_omits_empty_optionals() {
        let mut r = InpaintResult::new(
            Some(JobId::new_random()),
            JobStatus::Succeeded,
            model(),
            worker(),
            at(),
        );
        r.outputs.push(OutputObject {
            uri: "s3://out/j/0.png".parse().expect("ref"),
            index: 0,
            seed: 42,
            sha256: "a".repeat(64),
            width: 512,
            height: 512,
            content_type: "image/png".into(),
            safety: None,
            watermark: None,
        });
        let json = String::from_utf8(r.to_json().expect("serialize")).expect("utf8");
        assert!(!json.contains("\"error\""), "{json}");
        assert!(!json.contains("null"), "{json}");
        assert!(!json.contains("missing_required_stages"), "{json}");
        assert!(
            json.contains("\"finished_at\":\"2030-01-01T00:00:00Z\""),
            "{json}"
        );
        let back = InpaintResult::from_json(json.as_bytes()).expect("parse");
        assert_eq!(back, r);
    }

    #[test]
    fn readers_ignore_fields_added_later() {
        let r = InpaintResult::new(None, JobStatus::Expired, model(), worker(), at());
        let mut value = serde_json::to_value(&r).expect("to value");
        value["added_in_a_later_v1"] = serde_json::json!({"x": 1});
        let bytes = serde_json::to_vec(&value).expect("bytes");
        assert_eq!(InpaintResult::from_json(&bytes).expect("parse"), r);
    }
}
