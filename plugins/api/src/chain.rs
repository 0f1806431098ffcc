//! [`Chain`]: runs the configured stages in order, applies their modifications, keeps an audit
//! log and fails closed.
//!
//! Semantics:
//! - **Before inference** every stage sees the context as changed by the stages before it. The
//!   first [`Verdict::Block`] stops the chain; later stages are not called.
//! - **After output** each stage is called once per job ([`Stage::after_outputs`]) with all
//!   images still in play, so a model-based stage can run one batch; every image goes through
//!   all stages in order. A block withholds that image (it is not returned) and the remaining
//!   stages do not see it; other images go on. The worker decides what a job with withheld
//!   images reports.
//! - **Fail closed.** A stage error (or panic, or a modification its hook may not make) stops
//!   everything and is returned as a [`ChainError`]; nothing of that job proceeds.
//! - **Audit.** Every applied modification and every block becomes an [`AuditEntry`] naming the
//!   stage, hook, category and rule ids, with a summary that never contains prompt text.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::Serialize;

use crate::context::{JobContext, MetadataEntry, OutputImage, StageReport};
use crate::error::{ChainError, StageError};
use crate::stage::{Hook, Stage};
use crate::verdict::{Block, Change, Modification, Verdict};

/// An ordered list of built stages.
#[derive(Default)]
pub struct Chain {
    stages: Vec<Box<dyn Stage>>,
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// What an applied modification or a block looked like, for logs and job results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// Stage name.
    pub stage: String,
    /// Hook the stage acted in.
    pub hook: Hook,
    /// The image, for [`Hook::AfterOutput`].
    pub image_index: Option<u32>,
    /// Modified or blocked.
    pub action: AuditAction,
    /// Policy category, if the stage named one.
    pub category: Option<String>,
    /// Rule ids that triggered (never prompt text).
    pub rules: Vec<String>,
    /// What changed ([`Change::summary`]) or the block reason.
    pub detail: String,
}

/// Kind of an [`AuditEntry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditAction {
    /// A modification was applied.
    Modified,
    /// The job or image was blocked.
    Blocked,
}

/// A block, with where it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockRecord {
    /// Stage that blocked.
    pub stage: String,
    /// Hook it blocked in.
    pub hook: Hook,
    /// The blocked image, for [`Hook::AfterOutput`].
    pub image_index: Option<u32>,
    /// The stage's block.
    pub block: Block,
}

/// Result of [`Chain::before_inference`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChainOutcome {
    /// The context after all applied modifications (stages after a block did not run).
    pub context: JobContext,
    /// Every modification and block, in order.
    pub audit: Vec<AuditEntry>,
    /// The block that stopped the job, if any.
    pub block: Option<BlockRecord>,
}

impl ChainOutcome {
    /// True when a stage blocked the job: inference must not run.
    pub fn is_blocked(&self) -> bool {
        self.block.is_some()
    }
}

/// Result of [`Chain::after_output`].
#[derive(Debug, Clone, PartialEq)]
pub struct OutputOutcome {
    /// The images that passed every stage, modified, in input order. Blocked images are
    /// withheld.
    pub images: Vec<OutputImage>,
    /// Every modification and block, in order.
    pub audit: Vec<AuditEntry>,
    /// One record per withheld image.
    pub blocks: Vec<BlockRecord>,
}

impl Chain {
    /// A chain of these stages, run in this order.
    pub fn new(stages: Vec<Box<dyn Stage>>) -> Self {
        Self { stages }
    }

    /// Appends a stage at the end.
    pub fn push(&mut self, stage: Box<dyn Stage>) {
        self.stages.push(stage);
    }

    /// Number of stages.
    pub fn len(&self) -> usize {
        self.stages.len()
    }

    /// True when the chain has no stages.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Stage names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().map(|stage| stage.name())
    }

    /// Runs every stage's [`Stage::before_inference`] on `ctx`, in order.
    pub fn before_inference(&self, mut ctx: JobContext) -> Result<ChainOutcome, ChainError> {
        let mut audit = Vec::new();
        for stage in &self.stages {
            let name = stage.name();
            let _span =
                tracing::debug_span!("stage", stage = name, hook = "before-inference").entered();
            let fail = |source| ChainError {
                stage: name.to_owned(),
                hook: Hook::BeforeInference,
                image_index: None,
                source,
            };
            let verdict = guarded(|| stage.before_inference(&ctx)).map_err(fail)?;
            match verdict {
                Verdict::Continue => {}
                Verdict::Modify(mods) => {
                    check_allowed(&mods, Hook::BeforeInference).map_err(fail)?;
                    for m in mods {
                        if m.change.is_audited() {
                            audit.push(modified_entry(name, Hook::BeforeInference, None, &m));
                        }
                        apply_to_context(&mut ctx, name, m.change);
                    }
                }
                Verdict::Block(block) => {
                    audit.push(blocked_entry(name, Hook::BeforeInference, None, &block));
                    let block = Some(BlockRecord {
                        stage: name.to_owned(),
                        hook: Hook::BeforeInference,
                        image_index: None,
                        block,
                    });
                    return Ok(ChainOutcome {
                        context: ctx,
                        audit,
                        block,
                    });
                }
            }
        }
        Ok(ChainOutcome {
            context: ctx,
            audit,
            block: None,
        })
    }

    /// Runs every stage's [`Stage::after_outputs`] once on the job's images, in chain order.
    ///
    /// Each stage sees the images that no earlier stage withheld, as earlier stages changed
    /// them, in index order. Audit entries come stage by stage, within a stage image by image.
    pub fn after_output(
        &self,
        ctx: &JobContext,
        images: Vec<OutputImage>,
    ) -> Result<OutputOutcome, ChainError> {
        let mut live = images;
        let mut audit = Vec::new();
        let mut blocks = Vec::new();
        for stage in &self.stages {
            if live.is_empty() {
                break;
            }
            let name = stage.name();
            let _span = tracing::debug_span!(
                "stage",
                stage = name,
                hook = "after-output",
                images = live.len()
            )
            .entered();
            let fail = |error: StageError| {
                let (image_index, source) = error.split_image();
                ChainError {
                    stage: name.to_owned(),
                    hook: Hook::AfterOutput,
                    image_index,
                    source,
                }
            };
            let verdicts = guarded(|| stage.after_outputs(ctx, &live)).map_err(fail)?;
            if verdicts.len() != live.len() {
                return Err(fail(StageError::Contract(format!(
                    "{} verdict(s) for {} image(s)",
                    verdicts.len(),
                    live.len()
                ))));
            }
            let mut kept = Vec::with_capacity(live.len());
            for (mut image, verdict) in live.into_iter().zip(verdicts) {
                let index = image.index;
                match verdict {
                    Verdict::Continue => kept.push(image),
                    Verdict::Modify(mods) => {
                        check_allowed(&mods, Hook::AfterOutput)
                            .map_err(|e| fail(e.at_image(index)))?;
                        for m in mods {
                            if m.change.is_audited() {
                                audit.push(modified_entry(
                                    name,
                                    Hook::AfterOutput,
                                    Some(index),
                                    &m,
                                ));
                            }
                            apply_to_image(&mut image, name, m.change);
                        }
                        kept.push(image);
                    }
                    Verdict::Block(block) => {
                        audit.push(blocked_entry(name, Hook::AfterOutput, Some(index), &block));
                        blocks.push(BlockRecord {
                            stage: name.to_owned(),
                            hook: Hook::AfterOutput,
                            image_index: Some(index),
                            block,
                        });
                    }
                }
            }
            live = kept;
        }
        Ok(OutputOutcome {
            images: live,
            audit,
            blocks,
        })
    }
}

/// Calls a stage hook, turning a panic into [`StageError::Panicked`].
fn guarded<T>(call: impl FnOnce() -> Result<T, StageError>) -> Result<T, StageError> {
    match catch_unwind(AssertUnwindSafe(call)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            Err(StageError::Panicked(message))
        }
    }
}

/// Validates a whole verdict before any of it is applied.
fn check_allowed(mods: &[Modification], hook: Hook) -> Result<(), StageError> {
    for m in mods {
        let ok = match hook {
            Hook::BeforeInference => m.change.allowed_before_inference(),
            Hook::AfterOutput => m.change.allowed_after_output(),
        };
        if !ok {
            return Err(StageError::Contract(format!(
                "{} is not allowed during {hook}",
                m.change.summary()
            )));
        }
    }
    Ok(())
}

fn apply_to_context(ctx: &mut JobContext, stage: &str, change: Change) {
    match change {
        Change::RewritePrompt(prompt) => ctx.prompt = prompt,
        Change::AppendNegative(terms) => {
            ctx.negative_prompt = Some(append_terms(ctx.negative_prompt.as_deref(), &terms));
        }
        Change::SetNegative(negative) => ctx.negative_prompt = Some(negative),
        Change::AddMetadata { key, value } => {
            ctx.metadata.insert(key, value);
        }
        Change::AddScores(scores) => ctx.reports.push(StageReport {
            stage: stage.to_owned(),
            scores,
        }),
        Change::Report(finding) => ctx.findings.push(finding),
        // Rejected by `check_allowed` before we get here; ignoring keeps this total.
        Change::ReplaceImage(_) => {}
    }
}

fn apply_to_image(image: &mut OutputImage, stage: &str, change: Change) {
    match change {
        Change::ReplaceImage(pixels) => image.image = pixels,
        Change::AddMetadata { key, value } => image.metadata.push(MetadataEntry {
            stage: stage.to_owned(),
            key,
            value,
        }),
        Change::AddScores(scores) => image.reports.push(StageReport {
            stage: stage.to_owned(),
            scores,
        }),
        Change::Report(finding) => image.findings.push(finding),
        // Rejected by `check_allowed` before we get here.
        Change::RewritePrompt(_) | Change::AppendNegative(_) | Change::SetNegative(_) => {}
    }
}

/// Appends `terms` to a comma-separated negative prompt, skipping terms already present
/// (compared case-insensitively after trimming).
fn append_terms(existing: Option<&str>, terms: &[String]) -> String {
    let mut out = existing.unwrap_or_default().trim().to_owned();
    let mut present: Vec<String> = out
        .split(',')
        .map(|t| t.trim().to_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for term in terms {
        let term = term.trim();
        let key = term.to_lowercase();
        if term.is_empty() || present.contains(&key) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(term);
        present.push(key);
    }
    out
}

fn modified_entry(
    stage: &str,
    hook: Hook,
    image_index: Option<u32>,
    m: &Modification,
) -> AuditEntry {
    AuditEntry {
        stage: stage.to_owned(),
        hook,
        image_index,
        action: AuditAction::Modified,
        category: m.category.clone(),
        rules: m.rules.clone(),
        detail: m.change.summary(),
    }
}

fn blocked_entry(stage: &str, hook: Hook, image_index: Option<u32>, block: &Block) -> AuditEntry {
    AuditEntry {
        stage: stage.to_owned(),
        hook,
        image_index,
        action: AuditAction::Blocked,
        category: Some(block.category.clone()),
        rules: block.rules.clone(),
        detail: block.reason.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use image::{Rgb, RgbImage};
    use uuid::Uuid;

    use super::*;

    /// A stage that returns a fixed verdict (or error) and counts its calls.
    struct Fixed {
        name: &'static str,
        before: fn(&JobContext) -> Result<Verdict, StageError>,
        after: fn(&OutputImage) -> Result<Verdict, StageError>,
        calls: AtomicUsize,
    }

    impl Fixed {
        fn boxed(
            name: &'static str,
            before: fn(&JobContext) -> Result<Verdict, StageError>,
            after: fn(&OutputImage) -> Result<Verdict, StageError>,
        ) -> Box<dyn Stage> {
            Box::new(Fixed {
                name,
                before,
                after,
                calls: AtomicUsize::new(0),
            })
        }
    }

    impl Stage for Fixed {
        fn name(&self) -> &str {
            self.name
        }
        fn before_inference(&self, ctx: &JobContext) -> Result<Verdict, StageError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            (self.before)(ctx)
        }
        fn after_output(&self, _: &JobContext, image: &OutputImage) -> Result<Verdict, StageError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            (self.after)(image)
        }
    }

    fn cont<T>(_: &T) -> Result<Verdict, StageError> {
        Ok(Verdict::Continue)
    }

    fn ctx() -> JobContext {
        JobContext::new(Uuid::nil(), "a red bicycle leaning on a wall")
    }

    fn images(n: u32) -> Vec<OutputImage> {
        (0..n)
            .map(|i| OutputImage::new(i, 100 + u64::from(i), RgbImage::new(4, 4)))
            .collect()
    }

    #[test]
    fn empty_chain_passes_everything_through() {
        let chain = Chain::default();
        let outcome = chain.before_inference(ctx()).expect("chain");
        assert!(!outcome.is_blocked());
        assert_eq!(outcome.context, ctx());
        assert!(outcome.audit.is_empty());
        let out = chain.after_output(&ctx(), images(2)).expect("chain");
        assert_eq!(out.images.len(), 2);
    }

    #[test]
    fn modifications_apply_in_order_and_are_audited_without_prompt_text() {
        let chain = Chain::new(vec![
            Fixed::boxed(
                "rewrite",
                |_| {
                    Ok(Verdict::Modify(vec![
                        Modification::new(Change::RewritePrompt("a blue bicycle".into()))
                            .with_category("demo")
                            .with_rules(["demo/r1"]),
                        Modification::new(Change::AppendNegative(vec![
                            "blurry".into(),
                            "gore".into(),
                        ])),
                    ]))
                },
                cont,
            ),
            Fixed::boxed(
                "sees-rewrite",
                |ctx| {
                    // The second stage sees the first stage's changes.
                    assert_eq!(ctx.prompt, "a blue bicycle");
                    Ok(Verdict::Modify(vec![
                        Modification::new(Change::AppendNegative(vec![
                            "GORE".into(),
                            "text".into(),
                        ])),
                        Modification::new(Change::AddMetadata {
                            key: "policy".into(),
                            value: "v1".into(),
                        }),
                    ]))
                },
                cont,
            ),
        ]);
        let mut input = ctx();
        input.negative_prompt = Some("lowres".into());
        let outcome = chain.before_inference(input).expect("chain");
        assert!(!outcome.is_blocked());
        assert_eq!(outcome.context.prompt, "a blue bicycle");
        assert_eq!(
            outcome.context.negative_prompt.as_deref(),
            Some("lowres, blurry, gore, text")
        );
        assert_eq!(
            outcome.context.metadata.get("policy").map(String::as_str),
            Some("v1")
        );
        assert_eq!(outcome.audit.len(), 4);
        assert_eq!(outcome.audit[0].stage, "rewrite");
        assert_eq!(outcome.audit[0].category.as_deref(), Some("demo"));
        assert_eq!(outcome.audit[0].rules, vec!["demo/r1".to_owned()]);
        let log = serde_json::to_string(&outcome.audit).expect("json");
        assert!(!log.contains("bicycle"), "audit leaks prompt text: {log}");
    }

    #[test]
    fn first_block_stops_the_chain() {
        let chain = Chain::new(vec![
            Fixed::boxed(
                "policy",
                |_| {
                    let mut block =
                        Block::new("violence_gore", "prompt matches a blocked category");
                    block.rules.push("violence_gore/term/x".into());
                    Ok(Verdict::Block(block))
                },
                cont,
            ),
            Fixed::boxed("never", |_| panic!("must not run"), cont),
        ]);
        let outcome = chain.before_inference(ctx()).expect("chain");
        let record = outcome.block.as_ref().expect("blocked");
        assert_eq!(record.stage, "policy");
        assert_eq!(record.block.category, "violence_gore");
        assert_eq!(outcome.audit.len(), 1);
        assert_eq!(outcome.audit[0].action, AuditAction::Blocked);
    }

    #[test]
    fn stage_errors_fail_closed_with_retry_flag() {
        let chain = Chain::new(vec![Fixed::boxed(
            "remote",
            |_| Err(StageError::Unavailable("connection refused".into())),
            cont,
        )]);
        let err = chain.before_inference(ctx()).expect_err("must fail");
        assert_eq!(err.stage, "remote");
        assert!(err.is_retryable());

        let chain = Chain::new(vec![Fixed::boxed(
            "broken",
            |_| Err(StageError::Failed("bad input".into())),
            cont,
        )]);
        assert!(
            !chain
                .before_inference(ctx())
                .expect_err("must fail")
                .is_retryable()
        );
    }

    #[test]
    fn panics_become_non_retryable_errors() {
        let chain = Chain::new(vec![Fixed::boxed("boom", |_| panic!("stage bug"), cont)]);
        let err = chain.before_inference(ctx()).expect_err("must fail");
        assert!(matches!(err.source, StageError::Panicked(ref m) if m == "stage bug"));
        assert!(!err.is_retryable());
    }

    #[test]
    fn hook_contract_is_enforced_atomically() {
        let chain = Chain::new(vec![Fixed::boxed(
            "bad",
            |_| {
                Ok(Verdict::Modify(vec![
                    Modification::new(Change::RewritePrompt("changed".into())),
                    Modification::new(Change::ReplaceImage(RgbImage::new(1, 1))),
                ]))
            },
            |_| {
                Ok(Verdict::Modify(vec![Modification::new(
                    Change::SetNegative("x".into()),
                )]))
            },
        )]);
        let err = chain
            .before_inference(ctx())
            .expect_err("image change before inference");
        assert!(matches!(err.source, StageError::Contract(_)));
        let err = chain
            .after_output(&ctx(), images(1))
            .expect_err("prompt change after output");
        assert_eq!(err.image_index, Some(0));
        assert!(matches!(err.source, StageError::Contract(_)));
    }

    #[test]
    fn after_output_modifies_each_image_and_withholds_blocked_ones() {
        let chain = Chain::new(vec![
            Fixed::boxed("safety", cont, |image| {
                let mut scores = BTreeMap::new();
                scores.insert("nsfw".to_owned(), if image.index == 1 { 0.9 } else { 0.1 });
                if image.index == 1 {
                    let mut block = Block::new("nsfw", "safety score above threshold");
                    block.scores = scores;
                    return Ok(Verdict::Block(block));
                }
                Ok(Verdict::Modify(vec![Modification::new(Change::AddScores(
                    scores,
                ))]))
            }),
            Fixed::boxed("watermark", cont, |image| {
                let mut marked = image.image.clone();
                marked.put_pixel(0, 0, Rgb([1, 2, 3]));
                Ok(Verdict::Modify(vec![
                    Modification::new(Change::ReplaceImage(marked)),
                    Modification::new(Change::AddMetadata {
                        key: "watermark".into(),
                        value: "sdv1".into(),
                    }),
                ]))
            }),
        ]);
        let out = chain.after_output(&ctx(), images(3)).expect("chain");
        let indices: Vec<u32> = out.images.iter().map(|i| i.index).collect();
        assert_eq!(indices, vec![0, 2]);
        for image in &out.images {
            assert_eq!(image.image.get_pixel(0, 0), &Rgb([1, 2, 3]));
            assert_eq!(image.metadata_value("watermark"), Some("sdv1"));
            assert_eq!(image.metadata[0].stage, "watermark");
            assert_eq!(image.reports[0].stage, "safety");
        }
        assert_eq!(out.blocks.len(), 1);
        assert_eq!(out.blocks[0].image_index, Some(1));
        assert_eq!(out.blocks[0].block.scores.get("nsfw"), Some(&0.9));
        // 2 images × (scores + image + metadata) + 1 block.
        assert_eq!(out.audit.len(), 7);
    }

    #[test]
    fn typed_reports_are_kept_on_the_image_and_context_but_not_audited() {
        use crate::report::{Finding, ProvenanceFinding, SafetyFinding};
        let chain = Chain::new(vec![Fixed::boxed(
            "reporter",
            |_| {
                Ok(Verdict::Modify(vec![Modification::new(Change::Report(
                    Finding::Safety(SafetyFinding::default()),
                ))]))
            },
            |image| {
                let fields = vec![("provenance.seed".to_owned(), image.seed.to_string())];
                Ok(Verdict::Modify(vec![
                    Modification::new(Change::Report(Finding::Provenance(ProvenanceFinding {
                        fields,
                    }))),
                    Modification::new(Change::AddMetadata {
                        key: "provenance.seed".into(),
                        value: image.seed.to_string(),
                    }),
                ]))
            },
        )]);
        let before = chain.before_inference(ctx()).expect("chain");
        assert_eq!(
            before.context.findings,
            vec![Finding::Safety(SafetyFinding::default())]
        );
        assert!(before.audit.is_empty());
        let out = chain.after_output(&ctx(), images(2)).expect("chain");
        for image in &out.images {
            let seed = image.seed.to_string();
            assert_eq!(
                image.provenance().and_then(|p| p.field("seed")),
                Some(seed.as_str())
            );
        }
        // Only the metadata entries are audited: one per image.
        assert_eq!(out.audit.len(), 2);
        assert!(out.audit.iter().all(|e| e.detail.starts_with("metadata")));
    }

    #[test]
    fn after_output_error_names_the_image() {
        let chain = Chain::new(vec![Fixed::boxed("slow", cont, |image| {
            if image.index == 1 {
                Err(StageError::Timeout(Duration::from_secs(5)))
            } else {
                Ok(Verdict::Continue)
            }
        })]);
        let err = chain.after_output(&ctx(), images(2)).expect_err("timeout");
        assert_eq!(err.image_index, Some(1));
        assert!(err.is_retryable());
    }

    /// A stage with its own batched hook that records the batch sizes it was called with.
    struct Batched {
        batches: std::sync::Arc<std::sync::Mutex<Vec<Vec<u32>>>>,
    }

    impl Stage for Batched {
        fn name(&self) -> &str {
            "batched"
        }
        fn after_output(&self, _: &JobContext, _: &OutputImage) -> Result<Verdict, StageError> {
            panic!("the chain must call after_outputs, not after_output")
        }
        fn after_outputs(
            &self,
            _: &JobContext,
            images: &[OutputImage],
        ) -> Result<Vec<Verdict>, StageError> {
            let indices = images.iter().map(|i| i.index).collect();
            self.batches.lock().expect("lock").push(indices);
            Ok(images
                .iter()
                .map(|i| {
                    Verdict::Modify(vec![Modification::new(Change::AddMetadata {
                        key: "batch".into(),
                        value: format!("{}/{}", i.index, images.len()),
                    })])
                })
                .collect())
        }
    }

    #[test]
    fn batched_hook_is_called_once_per_job_without_withheld_images() {
        let batches = std::sync::Arc::default();
        let batched = || {
            Box::new(Batched {
                batches: std::sync::Arc::clone(&batches),
            })
        };
        let chain = Chain::new(vec![
            Fixed::boxed("gate", cont, |image| {
                Ok(if image.index == 1 {
                    Verdict::Block(Block::new("nsfw", "flagged"))
                } else {
                    Verdict::Continue
                })
            }),
            batched(),
        ]);
        let out = chain.after_output(&ctx(), images(4)).expect("chain");
        assert_eq!(*batches.lock().expect("lock"), vec![vec![0, 2, 3]]);
        let marks: Vec<Option<&str>> = out
            .images
            .iter()
            .map(|i| i.metadata_value("batch"))
            .collect();
        assert_eq!(marks, vec![Some("0/3"), Some("2/3"), Some("3/3")]);
        assert_eq!(out.blocks.len(), 1);
        assert_eq!(out.audit.len(), 4);

        // Every image withheld: later stages are not called at all.
        let chain = Chain::new(vec![
            Fixed::boxed("gate", cont, |_| Ok(Verdict::Block(Block::new("c", "r")))),
            batched(),
        ]);
        let out = chain.after_output(&ctx(), images(2)).expect("chain");
        assert!(out.images.is_empty());
        assert_eq!(batches.lock().expect("lock").len(), 1);
    }

    #[test]
    fn a_batch_with_the_wrong_number_of_verdicts_breaks_the_contract() {
        struct Short;
        impl Stage for Short {
            fn name(&self) -> &str {
                "short"
            }
            fn after_outputs(
                &self,
                _: &JobContext,
                _: &[OutputImage],
            ) -> Result<Vec<Verdict>, StageError> {
                Ok(vec![Verdict::Continue])
            }
        }
        let chain = Chain::new(vec![Box::new(Short)]);
        let err = chain.after_output(&ctx(), images(2)).expect_err("short");
        assert!(matches!(err.source, StageError::Contract(_)));
        assert_eq!(err.image_index, None);
    }

    #[test]
    fn append_terms_dedups_and_handles_empty() {
        assert_eq!(append_terms(None, &["a".into(), "b".into()]), "a, b");
        assert_eq!(append_terms(Some(" "), &["a".into()]), "a");
        assert_eq!(
            append_terms(Some("A, b"), &["a".into(), " c ".into(), "".into()]),
            "A, b, c"
        );
    }

    #[test]
    fn debug_lists_stage_names() {
        let chain = Chain::new(vec![Fixed::boxed("one", cont, cont)]);
        assert_eq!(format!("{chain:?}"), r#"["one"]"#);
        assert_eq!(chain.len(), 1);
        assert!(!chain.is_empty());
    }
}
