//! What the HTTP and the exec stage share: which hooks they act on, the attempt loop with
//! backoff, and what an unavailable program turns into ([`OnFailure`]).
//!
//! Failures come in two kinds:
//! - **transient** (connection refused or reset, timeout, HTTP 5xx/408/429, a program that
//!   crashed or hung): worth another attempt; when every attempt failed, `on_failure` decides
//!   between a [`Verdict::Block`] and a retryable [`StageError`];
//! - **permanent** (a malformed response, HTTP 4xx, an oversized response): the program
//!   answered and the answer is wrong, so another attempt or a requeue would get the same. It is
//!   a non-retryable [`StageError`] whatever `on_failure` says; the job fails closed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use inpaint_plugin_api::{Block, Hook, JobContext, OutputImage, StageError, Verdict};
use serde::{Deserialize, Serialize};

use crate::error::ExternalError;
use crate::protocol::{self, Call};

/// Block category of a [`Verdict::Block`] returned when the program could not be reached and
/// `on_failure = "block"`.
pub const UNAVAILABLE_CATEGORY: &str = "external_stage_unavailable";

/// Most attempts one call may make (a typo like 100 would hold the inference thread for long).
pub const MAX_ATTEMPTS: u32 = 10;

/// Longest pause between two attempts, however many came before.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a call does when every attempt failed transiently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Requeue the job: the stage returns a retryable error (`Timeout` or `Unavailable`) and the
    /// worker retries the job later with its own backoff, up to its delivery limit. Like the
    /// worker's other dependencies (broker, storage), an outage delays jobs instead of refusing
    /// them.
    #[default]
    Retry,
    /// Block the job (before inference) or the image (after output) with category
    /// [`UNAVAILABLE_CATEGORY`]: a final answer, nothing is generated or returned.
    Block,
}

/// One failed attempt.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// Worth another attempt.
    Transient {
        /// It was a timeout (becomes [`StageError::Timeout`] under `on_failure = "retry"`).
        timed_out: bool,
        /// What happened, without prompt text or response bodies.
        message: String,
    },
    /// Not worth another attempt: returned as is.
    Permanent(StageError),
}

impl AttemptError {
    pub fn transient(message: impl Into<String>) -> Self {
        AttemptError::Transient {
            timed_out: false,
            message: message.into(),
        }
    }

    pub fn timed_out(message: impl Into<String>) -> Self {
        AttemptError::Transient {
            timed_out: true,
            message: message.into(),
        }
    }

    /// A response that is not in the protocol: the program's bug, a contract error.
    pub fn malformed(error: ExternalError) -> Self {
        AttemptError::Permanent(StageError::Contract(error.to_string()))
    }
}

/// The settings both stages share, checked, plus the request counter.
#[derive(Debug)]
pub(crate) struct Common {
    pub name: String,
    hooks: Vec<Hook>,
    send_input_image: bool,
    pub attempts: u32,
    backoff: Duration,
    pub on_failure: OnFailure,
    /// Per-attempt limit, reported in [`StageError::Timeout`].
    pub timeout: Duration,
    pub max_response_bytes: u64,
    next_id: AtomicU64,
}

/// The raw shared settings, as read from either stage's configuration.
pub(crate) struct CommonSettings<'a> {
    pub name: &'a str,
    pub hooks: &'a [Hook],
    pub send_input_image: bool,
    pub attempts: u32,
    pub backoff_ms: u64,
    pub on_failure: OnFailure,
    pub timeout_ms: u64,
    pub max_response_bytes: u64,
}

impl Common {
    /// Checks the shared settings.
    pub fn new(settings: CommonSettings<'_>) -> Result<Self, ExternalError> {
        let invalid = |message: String| Err(ExternalError::Config(message));
        if settings.name.trim().is_empty() {
            return invalid("`name` must not be empty".into());
        }
        if settings.hooks.is_empty() {
            return invalid(
                "`hooks` is empty: name \"before-inference\", \"after-output\" or both".into(),
            );
        }
        if let Some(hook) = settings
            .hooks
            .iter()
            .enumerate()
            .find_map(|(i, hook)| settings.hooks[..i].contains(hook).then_some(hook))
        {
            return invalid(format!("`hooks` names \"{hook}\" twice"));
        }
        if !(1..=MAX_ATTEMPTS).contains(&settings.attempts) {
            return invalid(format!(
                "`attempts` must be 1 to {MAX_ATTEMPTS}, got {}",
                settings.attempts
            ));
        }
        if settings.timeout_ms == 0 {
            return invalid("`timeout_ms` must be above 0".into());
        }
        if settings.max_response_bytes == 0 {
            return invalid("`max_response_bytes` must be above 0".into());
        }
        if settings.send_input_image && !settings.hooks.contains(&Hook::BeforeInference) {
            return invalid(
                "`send_input_image` needs the \"before-inference\" hook in `hooks`".into(),
            );
        }
        Ok(Self {
            name: settings.name.to_owned(),
            hooks: settings.hooks.to_vec(),
            send_input_image: settings.send_input_image,
            attempts: settings.attempts,
            backoff: Duration::from_millis(settings.backoff_ms),
            on_failure: settings.on_failure,
            timeout: Duration::from_millis(settings.timeout_ms),
            max_response_bytes: settings.max_response_bytes,
            next_id: AtomicU64::new(1),
        })
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The request for `before-inference`, or `None` when the stage does not act on that hook.
    pub fn before_inference<'a>(
        &self,
        ctx: &'a JobContext,
    ) -> Result<Option<Call<'a>>, StageError> {
        if !self.hooks.contains(&Hook::BeforeInference) {
            return Ok(None);
        }
        protocol::before_inference(&self.name, self.next_id(), ctx, self.send_input_image)
            .map(Some)
            .map_err(|e| StageError::Failed(e.to_string()))
    }

    /// The request for one output image, or `None` when the stage does not act after output.
    pub fn after_output<'a>(
        &self,
        ctx: &'a JobContext,
        image: &OutputImage,
    ) -> Result<Option<Call<'a>>, StageError> {
        if !self.hooks.contains(&Hook::AfterOutput) {
            return Ok(None);
        }
        protocol::after_output(&self.name, self.next_id(), ctx, image)
            .map(Some)
            .map_err(|e| StageError::Failed(e.to_string()))
    }

    /// Pause before attempt `attempt` (2, 3, ...): `backoff_ms`, doubled for each attempt after
    /// the second, at most [`MAX_BACKOFF`].
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(2).min(16);
        self.backoff
            .saturating_mul(1u32 << doublings)
            .min(MAX_BACKOFF)
    }

    /// Runs `attempt` (given the attempt number, from 1) until it succeeds, fails permanently,
    /// or `attempts` are used up; then applies `on_failure`.
    pub fn run(
        &self,
        call: &Call<'_>,
        mut attempt: impl FnMut(u32) -> Result<Verdict, AttemptError>,
    ) -> Result<Verdict, StageError> {
        let mut last = None;
        for number in 1..=self.attempts {
            if number > 1 {
                thread::sleep(self.backoff(number));
            }
            match attempt(number) {
                Ok(verdict) => return Ok(verdict),
                Err(AttemptError::Permanent(error)) => {
                    tracing::warn!(
                        stage = %self.name, hook = %call.hook, request_id = call.id,
                        attempt = number, %error, "external stage refused its answer"
                    );
                    return Err(error);
                }
                Err(AttemptError::Transient { timed_out, message }) => {
                    tracing::warn!(
                        stage = %self.name, hook = %call.hook, request_id = call.id,
                        attempt = number, of = self.attempts, error = %message,
                        "external stage attempt failed"
                    );
                    last = Some((timed_out, message));
                }
            }
        }
        let (timed_out, message) = last.unwrap_or((false, "no attempt was made".to_owned()));
        self.give_up(timed_out, &message)
    }

    /// What a call returns when every attempt failed transiently.
    fn give_up(&self, timed_out: bool, message: &str) -> Result<Verdict, StageError> {
        let attempts = self.attempts;
        match self.on_failure {
            OnFailure::Block => Ok(Verdict::Block(Block::new(
                UNAVAILABLE_CATEGORY,
                format!(
                    "external stage `{}` gave no verdict after {attempts} attempt(s): {message}",
                    self.name
                ),
            ))),
            OnFailure::Retry if timed_out => Err(StageError::Timeout(self.timeout)),
            OnFailure::Retry => Err(StageError::Unavailable(format!(
                "external stage `{}` after {attempts} attempt(s): {message}",
                self.name
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Instant;

    use uuid::Uuid;

    use super::*;

    fn settings(hooks: &[Hook]) -> CommonSettings<'_> {
        CommonSettings {
            name: "ext",
            hooks,
            send_input_image: false,
            attempts: 3,
            backoff_ms: 1,
            on_failure: OnFailure::Retry,
            timeout_ms: 250,
            max_response_bytes: 1024,
        }
    }

    fn common(on_failure: OnFailure) -> Common {
        Common::new(CommonSettings {
            on_failure,
            ..settings(&[Hook::BeforeInference, Hook::AfterOutput])
        })
        .expect("valid")
    }

    fn ctx() -> JobContext {
        JobContext::new(Uuid::nil(), "a quiet harbour")
    }

    #[test]
    fn settings_are_checked() {
        let both = [Hook::BeforeInference, Hook::AfterOutput];
        let bad: Vec<(CommonSettings<'_>, &str)> = vec![
            (settings(&[]), "`hooks` is empty"),
            (
                settings(&[Hook::AfterOutput, Hook::AfterOutput]),
                "\"after-output\" twice",
            ),
            (
                CommonSettings {
                    attempts: 0,
                    ..settings(&both)
                },
                "`attempts` must be 1 to 10, got 0",
            ),
            (
                CommonSettings {
                    attempts: 11,
                    ..settings(&both)
                },
                "got 11",
            ),
            (
                CommonSettings {
                    timeout_ms: 0,
                    ..settings(&both)
                },
                "`timeout_ms`",
            ),
            (
                CommonSettings {
                    name: " ",
                    ..settings(&both)
                },
                "`name`",
            ),
            (
                CommonSettings {
                    max_response_bytes: 0,
                    ..settings(&both)
                },
                "`max_response_bytes`",
            ),
            (
                CommonSettings {
                    send_input_image: true,
                    ..settings(&[Hook::AfterOutput])
                },
                "`send_input_image` needs",
            ),
        ];
        for (settings, expected) in bad {
            let err = Common::new(settings).expect_err(expected).to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn hooks_select_the_calls() {
        let only_after = Common::new(settings(&[Hook::AfterOutput])).expect("valid");
        let ctx = ctx();
        assert!(only_after.before_inference(&ctx).expect("ok").is_none());
        let image = OutputImage::new(0, 1, image::RgbImage::new(2, 2));
        let call = only_after.after_output(&ctx, &image).expect("ok");
        assert!(call.is_some_and(|c| c.hook == Hook::AfterOutput && c.id == 1));
        let again = only_after.after_output(&ctx, &image).expect("ok");
        assert_eq!(again.map(|c| c.id), Some(2), "ids count up");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = Common::new(CommonSettings {
            backoff_ms: 100,
            ..settings(&[Hook::AfterOutput])
        })
        .expect("valid");
        assert_eq!(c.backoff(2), Duration::from_millis(100));
        assert_eq!(c.backoff(3), Duration::from_millis(200));
        assert_eq!(c.backoff(4), Duration::from_millis(400));
        assert_eq!(c.backoff(10), MAX_BACKOFF);
    }

    #[test]
    fn transient_failures_are_retried_then_succeed() {
        let c = common(OnFailure::Retry);
        let ctx = ctx();
        let call = c.before_inference(&ctx).expect("ok").expect("wanted");
        let count = Cell::new(0);
        let verdict = c
            .run(&call, |n| {
                count.set(n);
                if n < 3 {
                    Err(AttemptError::transient("connection refused"))
                } else {
                    Ok(Verdict::Continue)
                }
            })
            .expect("third attempt answers");
        assert_eq!(verdict, Verdict::Continue);
        assert_eq!(count.get(), 3);
    }

    #[test]
    fn exhausted_attempts_follow_on_failure() {
        let ctx = ctx();
        let retry = common(OnFailure::Retry);
        let call = retry.before_inference(&ctx).expect("ok").expect("wanted");
        let calls = Cell::new(0);
        let err = retry
            .run(&call, |_| {
                calls.set(calls.get() + 1);
                Err(AttemptError::timed_out("no answer in 250ms"))
            })
            .expect_err("retry mode");
        assert_eq!(calls.get(), 3);
        assert!(matches!(err, StageError::Timeout(d) if d == Duration::from_millis(250)));
        assert!(err.is_retryable());
        let err = retry
            .run(&call, |_| Err(AttemptError::transient("HTTP 503")))
            .expect_err("retry mode");
        assert!(matches!(&err, StageError::Unavailable(m) if m.contains("HTTP 503")));
        assert!(err.is_retryable());

        let block = common(OnFailure::Block);
        let verdict = block
            .run(&call, |_| Err(AttemptError::transient("HTTP 503")))
            .expect("block mode answers");
        let Verdict::Block(b) = verdict else {
            panic!("expected a block: {verdict:?}");
        };
        assert_eq!(b.category, UNAVAILABLE_CATEGORY);
        assert!(
            b.reason.contains("3 attempt(s)") && b.reason.contains("HTTP 503"),
            "{}",
            b.reason
        );
    }

    #[test]
    fn permanent_failures_are_not_retried_in_either_mode() {
        let ctx = ctx();
        for mode in [OnFailure::Retry, OnFailure::Block] {
            let c = common(mode);
            let call = c.before_inference(&ctx).expect("ok").expect("wanted");
            let calls = Cell::new(0);
            let err = c
                .run(&call, |_| {
                    calls.set(calls.get() + 1);
                    Err(AttemptError::malformed(ExternalError::Malformed(
                        "bad".into(),
                    )))
                })
                .expect_err("permanent");
            assert_eq!(calls.get(), 1);
            assert!(matches!(err, StageError::Contract(_)));
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn attempts_pause_for_the_backoff() {
        let c = Common::new(CommonSettings {
            backoff_ms: 40,
            ..settings(&[Hook::BeforeInference])
        })
        .expect("valid");
        let ctx = ctx();
        let call = c.before_inference(&ctx).expect("ok").expect("wanted");
        let start = Instant::now();
        let _ = c.run(&call, |_| Err(AttemptError::transient("down")));
        // 40 ms before the second attempt, 80 ms before the third.
        assert!(
            start.elapsed() >= Duration::from_millis(120),
            "{:?}",
            start.elapsed()
        );
    }
}
