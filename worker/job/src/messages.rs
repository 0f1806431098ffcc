//! The two small side messages: [`ProgressEvent`] (worker → producer, per denoising step) and
//! [`CancelRequest`] (producer → worker).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::JobError;
use crate::id::JobId;
use crate::parse;

/// How far a running job is, published after each denoising step when the job asked for
/// `progress`. Events are best effort: some may be dropped or arrive late, the result is final.
/// Readers ignore fields they do not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "ProgressEvent v1")]
pub struct ProgressEvent {
    /// The job that is running.
    pub job_id: JobId,

    /// Denoising steps done so far, 1 to `total`.
    #[schemars(range(min = 1))]
    pub step: u32,

    /// Denoising steps this job runs (`num_inference_steps`, fewer when `strength` is below 1).
    #[schemars(range(min = 1))]
    pub total: u32,
}

impl ProgressEvent {
    /// The event as JSON bytes, ready to publish.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// Asks the worker to stop a job. A job that is queued or running ends with status
/// `cancelled`; a request for a finished or unknown job has no effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "CancelRequest v1")]
pub struct CancelRequest {
    /// The job to cancel.
    pub job_id: JobId,
}

impl CancelRequest {
    /// Reads a cancel message, with the same error classes as [`crate::InpaintJob::from_json`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, JobError> {
        parse::from_value(parse::to_value(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips() {
        let event = ProgressEvent {
            job_id: JobId::new_random(),
            step: 3,
            total: 50,
        };
        let back: ProgressEvent =
            serde_json::from_slice(&event.to_json().expect("serialize")).expect("parse");
        assert_eq!(back, event);
    }

    #[test]
    fn cancel_parses_and_refuses_extras() {
        let id = "0b9c5a52-3f0e-4d8a-9a3e-8f6f4d1c2b7a";
        let ok =
            CancelRequest::from_json(format!(r#"{{"job_id":"{id}"}}"#).as_bytes()).expect("valid");
        assert_eq!(ok.job_id.to_string(), id);
        let extra = format!(r#"{{"job_id":"{id}","why":"x"}}"#);
        assert!(matches!(
            CancelRequest::from_json(extra.as_bytes()),
            Err(JobError::SchemaViolation { .. })
        ));
        assert!(matches!(
            CancelRequest::from_json(b"cancel it"),
            Err(JobError::MalformedJson { .. })
        ));
    }
}
