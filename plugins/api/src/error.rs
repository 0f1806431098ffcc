//! Errors of the stage API: what a stage can fail with, what the chain returns, and why a chain
//! configuration is refused.

use std::time::Duration;

use crate::report::StageKind;
use crate::stage::Hook;

/// Boxed error source for [`StageError::Build`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a stage could not be built or could not decide.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The stage's configuration is invalid (never retryable: the operator must fix it).
    #[error("invalid configuration of stage `{stage}`: {message}")]
    Config {
        /// Stage kind or name.
        stage: String,
        /// What is wrong.
        message: String,
    },
    /// Building the stage failed (loading lists, models, keys...).
    #[error("cannot build stage `{stage}`: {source}")]
    Build {
        /// Stage kind or name.
        stage: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// Something the stage depends on is temporarily unavailable (retryable).
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    /// The stage gave up waiting (retryable).
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The stage failed on this job; retrying will not help.
    #[error("stage failed: {0}")]
    Failed(String),
    /// The stage returned something its hook may not do (a bug in the stage).
    #[error("stage broke the stage contract: {0}")]
    Contract(String),
    /// The stage panicked; the chain caught it.
    #[error("stage panicked: {0}")]
    Panicked(String),
    /// The stage failed on one image of a batch ([`Stage::after_outputs`](crate::Stage::after_outputs)).
    /// The chain unwraps it: `index` becomes [`ChainError::image_index`], `source` its source.
    #[error("image {index}: {source}")]
    Image {
        /// [`OutputImage::index`](crate::OutputImage::index) of the image.
        index: u32,
        /// What went wrong with it.
        #[source]
        source: Box<StageError>,
    },
}

impl StageError {
    /// Whether requeueing the job may succeed: true only for transient conditions.
    pub fn is_retryable(&self) -> bool {
        match self {
            StageError::Unavailable(_) | StageError::Timeout(_) => true,
            StageError::Image { source, .. } => source.is_retryable(),
            _ => false,
        }
    }

    /// This error, attributed to the output image `index` (unchanged if it already names one).
    pub fn at_image(self, index: u32) -> Self {
        match self {
            StageError::Image { .. } => self,
            other => StageError::Image {
                index,
                source: Box::new(other),
            },
        }
    }

    /// The image this error names, if any, and the error without that attribution.
    pub fn split_image(self) -> (Option<u32>, StageError) {
        match self {
            StageError::Image { index, source } => (Some(index), *source),
            other => (None, other),
        }
    }
}

/// A stage failed while the chain ran it. The job must not proceed.
#[derive(Debug, thiserror::Error)]
#[error("stage `{stage}` failed during {hook}{}: {source}", image_suffix(.image_index))]
pub struct ChainError {
    /// Name of the failing stage.
    pub stage: String,
    /// The hook it failed in.
    pub hook: Hook,
    /// The image being processed, for [`Hook::AfterOutput`].
    pub image_index: Option<u32>,
    /// What went wrong.
    #[source]
    pub source: StageError,
}

fn image_suffix(index: &Option<u32>) -> String {
    index.map(|i| format!(" (image {i})")).unwrap_or_default()
}

impl ChainError {
    /// Whether requeueing the job may succeed (delegates to [`StageError::is_retryable`]).
    pub fn is_retryable(&self) -> bool {
        self.source.is_retryable()
    }
}

/// The configured chain does not meet the licence-driven minimum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainPolicyError {
    /// Required stage kinds are missing and no override is set.
    #[error(
        "the plugin chain lacks required stage(s): {}; add them, or set the explicit override \
         to run without them (and take responsibility for OpenRAIL-M paragraph 5 compliance)",
        .missing.iter().map(|kind| kind.as_str()).collect::<Vec<_>>().join(", ")
    )]
    MissingRequired {
        /// The missing kinds, in [`REQUIRED_STAGE_KINDS`](crate::REQUIRED_STAGE_KINDS) order.
        missing: Vec<StageKind>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_errors_are_retryable() {
        assert!(StageError::Unavailable("http 503".into()).is_retryable());
        assert!(StageError::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(!StageError::Failed("bad".into()).is_retryable());
        assert!(!StageError::Contract("x".into()).is_retryable());
        assert!(!StageError::Panicked("x".into()).is_retryable());
        let at = StageError::Timeout(Duration::from_secs(1)).at_image(3);
        assert!(at.is_retryable());
        let (index, inner) = at.at_image(5).split_image();
        assert_eq!(index, Some(3));
        assert!(matches!(inner, StageError::Timeout(_)));
        assert!(
            !StageError::Config {
                stage: "s".into(),
                message: "m".into()
            }
            .is_retryable()
        );
    }

    #[test]
    fn chain_error_names_stage_hook_and_image() {
        let err = ChainError {
            stage: "watermark".into(),
            hook: Hook::AfterOutput,
            image_index: Some(2),
            source: StageError::Timeout(Duration::from_secs(3)),
        };
        assert!(err.is_retryable());
        let text = err.to_string();
        assert!(text.contains("watermark") && text.contains("after-output"));
        assert!(text.contains("image 2"), "{text}");
    }
}
