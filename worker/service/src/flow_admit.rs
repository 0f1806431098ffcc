//! Admission for the [`JobFlow`]: what a job must satisfy before anything is downloaded (expiry,
//! cancel requests, allow-lists, sizes and the chain's limits), the job's time budget checked
//! between steps, and what the configured chain requires of every job.

use chrono::{DateTime, Utc};
use inpaint_job::{ChainLimits, ErrorCode, InpaintJob};
use inpaint_stages::StageConfig;
use inpaint_storage::ObjectRef;

use super::JobFlow;
use crate::error::JobFailure;

/// The required stage kinds (safety checker, watermark) missing from `stages`, by name: what
/// results report as `worker.missing_required_stages` when `allow_unsafe_chain` let the worker
/// start.
pub fn missing_required_stages(stages: &[StageConfig]) -> Vec<String> {
    inpaint_stages::missing_required(stages)
        .into_iter()
        .map(|kind| kind.as_str().to_owned())
        .collect()
}

/// What the configured chain needs of an output: the watermark refuses images under
/// 256 × 256 pixels unless told to skip them.
pub fn chain_limits(stages: &[StageConfig]) -> ChainLimits {
    if stages.iter().any(StageConfig::refuses_small_images) {
        ChainLimits::default_chain()
    } else {
        ChainLimits::default()
    }
}

impl JobFlow {
    /// Refusals that need no download: expiry, a cancel heard while queued, the allow-lists,
    /// and sizes above this worker's maximum.
    pub(super) fn admit(&self, job: &InpaintJob) -> Result<(), JobFailure> {
        if job.is_expired((self.clock)()) {
            return Err(JobFailure::permanent(
                ErrorCode::Expired,
                "expires_at had passed when the job was picked up",
            ));
        }
        self.not_cancelled(job)?;
        let allow = &self.allow;
        for (what, input) in [("image", &job.image), ("mask", &job.mask)] {
            if let Some(object) = input
                && !allowed(object, &allow.read_buckets, &allow.read_prefixes)
            {
                return Err(JobFailure::permanent(
                    ErrorCode::BucketNotAllowed,
                    format!("{what} {object}: this worker may not read there"),
                ));
            }
        }
        let refused = |e: inpaint_job::JobError| JobFailure::from(&e);
        job.check_output_not_input().map_err(refused)?;
        job.check_limits(&self.chain_limits).map_err(refused)?;
        let first_output = job.output_key(0).map_err(|e| JobFailure::from(&e))?;
        if !allowed(&first_output, &allow.write_buckets, &allow.write_prefixes) {
            return Err(JobFailure::permanent(
                ErrorCode::BucketNotAllowed,
                format!(
                    "output s3://{}/{}: this worker may not write there",
                    first_output.bucket(),
                    job.output.prefix
                ),
            ));
        }
        let max = self.limits.max_output_side;
        for (field, side) in [("width", job.params.width), ("height", job.params.height)] {
            if let Some(side) = side
                && side > max
            {
                return Err(JobFailure::permanent(
                    ErrorCode::InvalidParameter,
                    format!("params.{field}: {side} is above this worker's maximum of {max}"),
                ));
            }
        }
        Ok(())
    }

    /// When a job picked up at `start` runs out of `limits.job_timeout_secs`.
    pub(super) fn budget_from(&self, start: DateTime<Utc>) -> DateTime<Utc> {
        let secs = i64::try_from(self.limits.job_timeout_secs).unwrap_or(i64::MAX);
        start
            .checked_add_signed(chrono::Duration::seconds(secs))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The documented `expired` status for a job whose `expires_at` passed `when`, else
    /// `timeout` (status failed) once the job's time budget is spent.
    pub(super) fn in_time(
        &self,
        job: &InpaintJob,
        budget: DateTime<Utc>,
        when: &str,
    ) -> Result<(), JobFailure> {
        let now = (self.clock)();
        if job.is_expired(now) {
            return Err(JobFailure::permanent(
                ErrorCode::Expired,
                format!("expires_at passed {when}"),
            ));
        }
        if now >= budget {
            // Permanent: the same job would run as long on the next attempt.
            return Err(JobFailure::permanent(
                ErrorCode::Timeout,
                format!(
                    "the job ran past this worker's limits.job_timeout_secs ({} s) {when}",
                    self.limits.job_timeout_secs
                ),
            ));
        }
        Ok(())
    }

    /// A cancel request for `job` arrived before it started.
    pub(super) fn not_cancelled(&self, job: &InpaintJob) -> Result<(), JobFailure> {
        if self.cancels.is_cancelled(job.job_id) {
            return Err(JobFailure::permanent(
                ErrorCode::Cancelled,
                "cancelled while queued",
            ));
        }
        Ok(())
    }
}

pub(super) fn allowed(object: &ObjectRef, buckets: &[String], prefixes: &[String]) -> bool {
    buckets.iter().any(|b| b == object.bucket())
        && (prefixes.is_empty()
            || prefixes
                .iter()
                .any(|p| object.key().starts_with(p.as_str())))
}
