//! inpaint-job: the message contract between producers and the worker.
//!
//! Layout:
//! - [`job`]: [`InpaintJob`] v1 (with [`InpaintParams`], [`OutputSpec`], [`OutputFormat`]), its
//!   rules ([`InpaintJob::validate`]) and the worker's helpers (seeds, output keys, expiry).
//! - [`parse`]: [`InpaintJob::from_json`], sorting failures into the three [`JobError`] classes,
//!   and [`peek_job_id`] for answering broken messages.
//! - [`result`]: [`InpaintResult`] v1, its [`JobStatus`] and [`ErrorCode`] classes.
//! - [`admission`]: the checks a valid job must also pass on this worker (chain limits, outputs
//!   onto inputs, `job_id` reuse) and the request fingerprint.
//! - [`messages`]: [`ProgressEvent`] and [`CancelRequest`].
//! - [`schema`]: the JSON Schemas generated from these types, committed under `schemas/`.
//!
//! No I/O here: bytes in, types out, and the other way round.

pub mod admission;
pub mod error;
pub mod id;
pub mod job;
pub mod messages;
pub mod parse;
pub mod result;
pub mod schema;

#[cfg(test)]
mod contract_tests;

pub use admission::{ChainLimits, MANIFEST_NAME};
pub use error::JobError;
pub use id::{JobId, JobIdError};
pub use job::{
    CropToMask, InpaintJob, InpaintParams, JOB_SCHEMA_VERSION, OutputFormat, OutputSpec, Scheduler,
};
pub use messages::{CancelRequest, ProgressEvent};
pub use parse::{MAX_MESSAGE_BYTES, peek_job_id};
pub use result::{
    BlockInfo, ErrorCode, ErrorInfo, InpaintResult, JobStatus, ModelInfo, OutputObject,
    RESULT_SCHEMA_VERSION, SafetyReport, WatermarkInfo, WorkerInfo,
};
pub use schema::{
    SCHEMA_FILES, cancel_schema_json, job_schema_json, progress_schema_json, result_schema_json,
};
