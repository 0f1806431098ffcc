//! The [`Stage`] trait: one step of the plugin chain.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::context::{JobContext, OutputImage};
use crate::error::StageError;
use crate::verdict::Verdict;

/// Where in a job's life a stage is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    /// On the job context, before the model runs (prompt policy).
    BeforeInference,
    /// On each composited output image (safety checker, watermark, provenance).
    AfterOutput,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::BeforeInference => "before-inference",
            Hook::AfterOutput => "after-output",
        })
    }
}

/// One stage of the plugin chain.
///
/// Design notes:
/// - **Synchronous.** Stages run on the worker's inference thread, next to the model, and may
///   block (a safety checker runs a model; an HTTP stage may wait on a socket with its own
///   timeout). Keeping the trait free of async keeps it object safe without boxing futures and
///   lets stages that need an async client own a small runtime of their own.
/// - **Shared references in, a [`Verdict`] out.** A stage describes changes; the
///   [`Chain`](crate::Chain) applies and audits them (see [`crate::verdict`] for why).
/// - **Two hooks with default no-ops.** A stage implements the hooks it cares about.
/// - **`Send + Sync`.** A built chain is shared by the worker's threads; a stage that keeps
///   mutable state uses interior mutability.
/// - **Errors are errors, not verdicts.** A stage that cannot decide returns a [`StageError`]
///   and the job does not proceed (fail closed); [`StageError::is_retryable`] tells the worker
///   whether to requeue it.
pub trait Stage: Send + Sync {
    /// A short, stable name used in logs, spans, audit entries and metadata.
    fn name(&self) -> &str;

    /// Called once per job before inference.
    fn before_inference(&self, ctx: &JobContext) -> Result<Verdict, StageError> {
        let _ = ctx;
        Ok(Verdict::Continue)
    }

    /// Called once per output image, after compositing, in chain order (through the default
    /// [`Stage::after_outputs`]).
    fn after_output(&self, ctx: &JobContext, image: &OutputImage) -> Result<Verdict, StageError> {
        let _ = (ctx, image);
        Ok(Verdict::Continue)
    }

    /// Called once per job with every output image that earlier stages did not withhold, in
    /// index order; returns one verdict per image, in the same order. This is what the
    /// [`Chain`](crate::Chain) calls.
    ///
    /// The default calls [`Stage::after_output`] per image and stops at the first error, which it
    /// attributes to that image ([`StageError::at_image`]). Override it where a batch is cheaper
    /// than single images (a model that runs the whole batch at once); an override should also
    /// attribute per-image errors with [`StageError::at_image`].
    fn after_outputs(
        &self,
        ctx: &JobContext,
        images: &[OutputImage],
    ) -> Result<Vec<Verdict>, StageError> {
        images
            .iter()
            .map(|image| {
                self.after_output(ctx, image)
                    .map_err(|e| e.at_image(image.index))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Noop;

    impl Stage for Noop {
        fn name(&self) -> &str {
            "noop"
        }
    }

    #[test]
    fn default_hooks_continue() {
        let ctx = JobContext::default();
        let out = OutputImage::new(0, 0, image::RgbImage::new(1, 1));
        assert_eq!(Noop.before_inference(&ctx).ok(), Some(Verdict::Continue));
        assert_eq!(Noop.after_output(&ctx, &out).ok(), Some(Verdict::Continue));
        let outs = [
            out.clone(),
            OutputImage::new(1, 0, image::RgbImage::new(1, 1)),
        ];
        assert_eq!(
            Noop.after_outputs(&ctx, &outs).ok(),
            Some(vec![Verdict::Continue, Verdict::Continue])
        );
        assert_eq!(Hook::AfterOutput.to_string(), "after-output");
    }
}
