//! Why a job did not succeed ([`JobFailure`]), and the one place that decides what the broker
//! does with its delivery: [`action_for`] maps an outcome to [`Action::Ack`],
//! [`Action::Retry`], [`Action::DeadLetter`] or [`Action::Release`]; `crate::settle` carries
//! every one of them out.

use std::time::Duration;

use inpaint_job::{BlockInfo, ErrorCode, ErrorInfo, JobError};
use inpaint_plugin_api::{ChainError, StageError};
use inpaint_queue::QueueError;
use inpaint_storage::StorageError;

use crate::inference::InferenceError;
use crate::settings::RetryConfig;

/// A job that ended without outputs: the error class, a message for people, whether another
/// attempt may succeed, and the block behind a `blocked` status.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct JobFailure {
    /// The result's error code; the status follows from it.
    pub code: ErrorCode,
    /// What went wrong. Never contains prompt text.
    pub message: String,
    /// True when the same job may succeed later (storage, broker, timeouts, out of memory).
    pub transient: bool,
    /// Which stage blocked the job, for `policy_blocked` and `safety_blocked` (boxed: it is
    /// rare and large).
    pub block: Option<Box<BlockInfo>>,
    /// True when the job did not end but was stopped by this worker (shutdown before it
    /// started or after the grace period, its task panicked, its outcome could not be
    /// settled): the delivery goes back to the queue untouched ([`Action::Release`]).
    pub interrupted: bool,
}

impl JobFailure {
    /// A failure that retrying cannot fix.
    pub fn permanent(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            transient: false,
            block: None,
            interrupted: false,
        }
    }

    /// A failure that another attempt may not hit.
    pub fn transient(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            transient: true,
            ..Self::permanent(code, message)
        }
    }

    /// A job this worker stopped without an answer: its delivery is released to the queue.
    pub fn interrupted(message: impl Into<String>) -> Self {
        Self {
            interrupted: true,
            ..Self::transient(ErrorCode::Internal, message)
        }
    }

    /// A bug in the worker or the engine.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::permanent(ErrorCode::Internal, message)
    }

    /// A block by a plugin stage.
    pub fn blocked(code: ErrorCode, block: BlockInfo) -> Self {
        Self {
            code,
            message: format!("blocked by {} ({})", block.stage, block.category),
            transient: false,
            block: Some(Box::new(block)),
            interrupted: false,
        }
    }

    /// The result's `error` object.
    pub fn to_error_info(&self) -> ErrorInfo {
        ErrorInfo {
            code: self.code,
            message: self.message.clone(),
            retryable: self.transient,
        }
    }
}

impl From<&JobError> for JobFailure {
    fn from(e: &JobError) -> Self {
        Self::permanent(e.code(), e.to_string())
    }
}

impl From<StorageError> for JobFailure {
    fn from(e: StorageError) -> Self {
        match &e {
            StorageError::NotFound { .. } => {
                Self::permanent(ErrorCode::ObjectNotFound, e.to_string())
            }
            StorageError::TooLarge { .. } => {
                Self::permanent(ErrorCode::ObjectTooLarge, e.to_string())
            }
            StorageError::InvalidRef { .. } => {
                Self::permanent(ErrorCode::InvalidParameter, e.to_string())
            }
            _ if e.is_transient() => Self::transient(ErrorCode::StorageUnavailable, e.to_string()),
            _ => Self::permanent(ErrorCode::StorageUnavailable, e.to_string()),
        }
    }
}

impl From<QueueError> for JobFailure {
    fn from(e: QueueError) -> Self {
        Self::transient(ErrorCode::BrokerUnavailable, e.to_string())
    }
}

impl From<InferenceError> for JobFailure {
    fn from(e: InferenceError) -> Self {
        match e {
            InferenceError::Cancelled => {
                Self::permanent(ErrorCode::Cancelled, "cancelled by a cancel request")
            }
            InferenceError::OutOfMemory(_) => {
                Self::transient(ErrorCode::OutOfMemory, e.to_string())
            }
            InferenceError::InvalidInput(_) => {
                Self::permanent(ErrorCode::InvalidParameter, e.to_string())
            }
            InferenceError::Unavailable => Self::transient(ErrorCode::Internal, e.to_string()),
            InferenceError::Failed(_) | InferenceError::Panicked(_) => {
                Self::internal(e.to_string())
            }
        }
    }
}

impl From<ChainError> for JobFailure {
    fn from(e: ChainError) -> Self {
        let code = match e.source {
            StageError::Timeout(_) => ErrorCode::Timeout,
            _ => ErrorCode::Internal,
        };
        if e.is_retryable() {
            Self::transient(code, e.to_string())
        } else {
            Self::permanent(code, e.to_string())
        }
    }
}

/// What happens to a delivery once its job has an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Publish the result, then acknowledge: the job is done.
    Ack,
    /// Republish the job to the delay queue (confirmed) with the next attempt number, then
    /// acknowledge this delivery. No result yet.
    Retry {
        /// How long the job waits in the delay queue.
        after: Duration,
    },
    /// Publish the failure result, then reject without requeue: the dead-letter exchange routes
    /// the message to the dead-letter queue.
    DeadLetter,
    /// Reject with requeue, publishing nothing: the job was not answered here and goes back to
    /// the queue for this or another worker (the quorum queue counts the redelivery).
    Release,
}

/// The one mapping from a job's outcome to the broker action.
///
/// - success, `expired`, `cancelled`: [`Action::Ack`] (final answers, nothing to inspect);
/// - permanent failures (malformed, schema, parameters, undecodable, missing or too large
///   objects, bucket not allowed, policy or safety block, internal errors):
///   [`Action::DeadLetter`];
/// - transient failures (storage, broker, timeouts, out of memory): [`Action::Retry`] with
///   exponential backoff while `attempt < max_attempts`, then [`Action::DeadLetter`];
/// - interrupted jobs ([`JobFailure::interrupted`]: shutdown, a panicked task, an outcome that
///   could not be settled): [`Action::Release`].
pub fn action_for(outcome: Result<(), &JobFailure>, attempt: u32, retry: &RetryConfig) -> Action {
    action_after(outcome, attempt, Duration::ZERO, retry)
}

/// [`action_for`] `elapsed` after the job's first failure: an outage
/// (`storage_unavailable`, `broker_unavailable`) is retried while `elapsed` is within
/// `retry.max_elapsed_secs` ([`RetryConfig::retries`]).
pub fn action_after(
    outcome: Result<(), &JobFailure>,
    attempt: u32,
    elapsed: Duration,
    retry: &RetryConfig,
) -> Action {
    match outcome {
        Ok(()) => Action::Ack,
        Err(failure) if failure.interrupted => Action::Release,
        Err(failure) => match failure.code {
            ErrorCode::Expired | ErrorCode::Cancelled => Action::Ack,
            code if failure.transient && retry.retries(code, attempt, elapsed) => Action::Retry {
                after: jittered(retry.backoff(attempt), random_unit()),
            },
            _ => Action::DeadLetter,
        },
    }
}

/// `delay` scaled into (delay/2, delay] by `unit` in [0, 1): jobs failing together in an
/// outage come back spread out instead of all at once. A delay queue then holds TTLs within a
/// factor of two of each other, so a message waits at most half its delay more behind a
/// longer-lived head (RabbitMQ expires messages at the head only).
pub fn jittered(delay: Duration, unit: f64) -> Duration {
    delay.mul_f64(1.0 - 0.5 * unit.clamp(0.0, 0.999_999))
}

/// A number in [0, 1), different on every call (a per-process random hash of a counter).
fn random_unit() -> f64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let hash = SEED
        .get_or_init(Default::default)
        .hash_one(COUNTER.fetch_add(1, Ordering::Relaxed));
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry() -> RetryConfig {
        RetryConfig {
            max_attempts: 3,
            base_delay_ms: 100,
            max_delay_ms: 10_000,
            ..RetryConfig::default()
        }
    }

    #[test]
    fn outcomes_map_to_actions() {
        let r = retry();
        assert_eq!(action_for(Ok(()), 1, &r), Action::Ack);
        for code in [ErrorCode::Expired, ErrorCode::Cancelled] {
            assert_eq!(
                action_for(Err(&JobFailure::permanent(code, "x")), 1, &r),
                Action::Ack
            );
        }
        for code in [
            ErrorCode::MalformedJson,
            ErrorCode::SchemaViolation,
            ErrorCode::InvalidParameter,
            ErrorCode::UndecodableImage,
            ErrorCode::ObjectNotFound,
            ErrorCode::ObjectTooLarge,
            ErrorCode::ImageTooLarge,
            ErrorCode::BucketNotAllowed,
            ErrorCode::PolicyBlocked,
            ErrorCode::SafetyBlocked,
            ErrorCode::Internal,
        ] {
            let f = JobFailure::permanent(code, "x");
            assert_eq!(action_for(Err(&f), 1, &r), Action::DeadLetter, "{code:?}");
        }
        let storage = JobFailure::transient(ErrorCode::Timeout, "slow");
        for (attempt, full_ms) in [(1, 100u64), (2, 200)] {
            let Action::Retry { after } = action_for(Err(&storage), attempt, &r) else {
                panic!("attempt {attempt} not retried");
            };
            let full = Duration::from_millis(full_ms);
            assert!(after > full / 2 && after <= full, "{after:?} for {full:?}");
        }
        assert_eq!(action_for(Err(&storage), 3, &r), Action::DeadLetter);
    }

    /// Every unit gives a delay in (d/2, d], and retries of jobs failing together are spread:
    /// 1,000 of them at the same attempt get many distinct delays.
    #[test]
    fn retry_delays_are_jittered_within_half_to_full() {
        let full = Duration::from_millis(8_000);
        for i in 0..=1_000 {
            let unit = f64::from(i) / 1_000.0;
            let d = jittered(full, unit);
            assert!(d > full / 2 && d <= full, "unit {unit}: {d:?}");
        }
        let r = retry();
        let f = JobFailure::transient(ErrorCode::StorageUnavailable, "503");
        let delays: std::collections::BTreeSet<Duration> = (0..1_000)
            .map(|_| match action_for(Err(&f), 2, &r) {
                Action::Retry { after } => after,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(delays.len() > 50, "{} distinct delays", delays.len());
        assert!(
            delays
                .iter()
                .all(|d| *d > Duration::from_millis(100) && *d <= Duration::from_millis(200))
        );
    }

    /// Outages are retried by time, whatever `max_attempts` says: every budget, elapsed time
    /// around it and attempt up to the outage cap.
    #[test]
    fn outages_are_retried_while_within_the_time_budget() {
        for budget in [1u64, 20, 600] {
            let r = RetryConfig {
                max_attempts: 2,
                max_elapsed_secs: budget,
                max_outage_attempts: 30,
                ..RetryConfig::default()
            };
            for code in [ErrorCode::StorageUnavailable, ErrorCode::BrokerUnavailable] {
                let f = JobFailure::transient(code, "down");
                for attempt in 1..=31 {
                    for elapsed_ms in [0, budget * 1_000 - 1, budget * 1_000, budget * 1_000 + 1] {
                        let elapsed = Duration::from_millis(elapsed_ms);
                        let action = action_after(Err(&f), attempt, elapsed, &r);
                        let retried = attempt < 30 && elapsed_ms < budget * 1_000;
                        assert_eq!(
                            matches!(action, Action::Retry { .. }),
                            retried,
                            "{code:?} budget {budget} attempt {attempt} elapsed {elapsed_ms}"
                        );
                        if !retried {
                            assert_eq!(action, Action::DeadLetter);
                        }
                    }
                }
            }
            let timeout = JobFailure::transient(ErrorCode::Timeout, "slow");
            assert_eq!(
                action_after(Err(&timeout), 2, Duration::ZERO, &r),
                Action::DeadLetter
            );
        }
    }

    #[test]
    fn interrupted_jobs_are_released_whatever_the_attempt() {
        let r = retry();
        for attempt in [1, 2, 3, 100] {
            let f = JobFailure::interrupted("worker shutting down");
            assert_eq!(action_for(Err(&f), attempt, &r), Action::Release);
        }
    }

    #[test]
    fn errors_of_the_other_crates_get_their_class() {
        let missing = JobFailure::from(StorageError::NotFound {
            object: "s3://b/k".into(),
        });
        assert_eq!(
            (missing.code, missing.transient),
            (ErrorCode::ObjectNotFound, false)
        );
        let down = JobFailure::from(StorageError::Backend {
            object: "s3://b/k".into(),
            source: object_store_generic(),
        });
        assert_eq!(
            (down.code, down.transient),
            (ErrorCode::StorageUnavailable, true)
        );
        let oom = JobFailure::from(InferenceError::OutOfMemory("CUDA out of memory".into()));
        assert_eq!((oom.code, oom.transient), (ErrorCode::OutOfMemory, true));
        let panic = JobFailure::from(InferenceError::Panicked("boom".into()));
        assert_eq!((panic.code, panic.transient), (ErrorCode::Internal, false));
        let broker = JobFailure::from(QueueError::Config("x".into()));
        assert!(broker.transient);
        let parse = JobFailure::from(&JobError::MalformedJson {
            message: "eof".into(),
        });
        assert_eq!(parse.code, ErrorCode::MalformedJson);
        assert!(!parse.to_error_info().retryable);
    }

    fn object_store_generic() -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: "connection refused".into(),
        }
    }
}
