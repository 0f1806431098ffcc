//! What a stage decides about a job or an image: [`Verdict`].
//!
//! Design: stages get shared references and *describe* changes as [`Modification`]s; the
//! [`Chain`](crate::Chain) applies them. Compared with handing stages `&mut` access:
//! - the audit log is complete by construction: nothing changes that is not announced, and the
//!   chain (not each stage) writes the audit entry, so prompt text never reaches it;
//! - a verdict is applied atomically: the chain validates all of a verdict's modifications first,
//!   so a stage that fails half-way leaves the job untouched;
//! - the chain enforces what each hook may change (no prompt rewrite after inference, no image
//!   replacement before it) instead of trusting every stage.
//!
//! The price is a copy when a stage replaces an image (a 512×512 RGB image is 768 KiB), which is
//! small next to inference.

use std::collections::BTreeMap;

use image::RgbImage;

use crate::report::Finding;

/// A stage's decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Nothing to change; go on with the next stage.
    Continue,
    /// Apply these changes in order, then go on with the next stage.
    Modify(Vec<Modification>),
    /// Stop: the job (before inference) or this image (after output) must not proceed.
    Block(Block),
}

impl Verdict {
    /// True for [`Verdict::Block`].
    pub fn is_block(&self) -> bool {
        matches!(self, Verdict::Block(_))
    }
}

/// One change a stage asks for, with what the audit log should say about why.
#[derive(Debug, Clone, PartialEq)]
pub struct Modification {
    /// The change itself.
    pub change: Change,
    /// The policy category this change enforces, if any (e.g. `violence_gore`).
    pub category: Option<String>,
    /// Ids of the rules that triggered it (never prompt text).
    pub rules: Vec<String>,
}

impl Modification {
    /// A modification with no category and no rule ids.
    pub fn new(change: Change) -> Self {
        Self {
            change,
            category: None,
            rules: Vec::new(),
        }
    }

    /// The same modification, attributed to a policy category.
    pub fn with_category(mut self, category: impl Into<String>) -> Self {
        self.category = Some(category.into());
        self
    }

    /// The same modification, attributed to rule ids.
    pub fn with_rules<I, S>(mut self, rules: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rules = rules.into_iter().map(Into::into).collect();
        self
    }
}

/// The changes a stage can ask for. Which hook may use which change is checked by the chain
/// ([`Change::allowed_before_inference`], [`Change::allowed_after_output`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Replace the prompt (before inference only).
    RewritePrompt(String),
    /// Append these terms to the negative prompt, comma-separated, skipping terms already
    /// present (before inference only).
    AppendNegative(Vec<String>),
    /// Replace the negative prompt (before inference only).
    SetNegative(String),
    /// Replace the image's pixels (after output only).
    ReplaceImage(RgbImage),
    /// Add a metadata entry: to the job's metadata before inference, to the image's after output.
    AddMetadata {
        /// Key, e.g. `provenance.manifest`.
        key: String,
        /// Value.
        value: String,
    },
    /// Attach scores as a [`StageReport`](crate::StageReport) of this stage.
    AddScores(BTreeMap<String, f32>),
    /// Attach a typed report ([`Finding`]) to the context or the image: what the worker's
    /// result builder and encoder read. Built-in stages only; not an audit entry (the same
    /// stage's metadata and scores, which say the same in words, are).
    Report(Finding),
}

impl Change {
    /// Whether this change makes sense on the job context before inference.
    pub fn allowed_before_inference(&self) -> bool {
        !matches!(self, Change::ReplaceImage(_))
    }

    /// Whether this change makes sense on an output image.
    pub fn allowed_after_output(&self) -> bool {
        matches!(
            self,
            Change::ReplaceImage(_)
                | Change::AddMetadata { .. }
                | Change::AddScores(_)
                | Change::Report(_)
        )
    }

    /// Whether the chain writes an audit entry for this change: every change but a
    /// [`Change::Report`], which changes nothing of the job and only types what the stage's
    /// audited metadata and scores already say.
    pub fn is_audited(&self) -> bool {
        !matches!(self, Change::Report(_))
    }

    /// A short description for the audit log. Never contains prompt text.
    pub fn summary(&self) -> String {
        match self {
            Change::RewritePrompt(_) => "prompt rewritten".to_owned(),
            Change::AppendNegative(terms) => {
                format!("{} term(s) appended to the negative prompt", terms.len())
            }
            Change::SetNegative(_) => "negative prompt replaced".to_owned(),
            Change::ReplaceImage(image) => {
                format!("image replaced ({}x{})", image.width(), image.height())
            }
            Change::AddMetadata { key, .. } => format!("metadata `{key}` added"),
            Change::AddScores(scores) => format!("{} score(s) reported", scores.len()),
            Change::Report(finding) => finding.summary(),
        }
    }
}

/// Why a stage stopped a job or an image.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Block {
    /// The policy category, e.g. `sexual_minors` or `nsfw`.
    pub category: String,
    /// A human-readable reason for operators and the job result. Must not contain prompt text.
    pub reason: String,
    /// Scores that led to the decision (empty for rule-based stages).
    pub scores: BTreeMap<String, f32>,
    /// Ids of the rules that matched (never prompt text).
    pub rules: Vec<String>,
}

impl Block {
    /// A block with a category and a reason, without scores or rule ids.
    pub fn new(category: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            category: category.into(),
            reason: reason.into(),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_accept_only_their_changes() {
        let image = Change::ReplaceImage(RgbImage::new(2, 2));
        let rewrite = Change::RewritePrompt("x".into());
        let meta = Change::AddMetadata {
            key: "k".into(),
            value: "v".into(),
        };
        assert!(!image.allowed_before_inference() && image.allowed_after_output());
        assert!(rewrite.allowed_before_inference() && !rewrite.allowed_after_output());
        assert!(meta.allowed_before_inference() && meta.allowed_after_output());
    }

    #[test]
    fn summaries_never_echo_prompt_text() {
        let secret = "very secret prompt";
        for change in [
            Change::RewritePrompt(secret.into()),
            Change::SetNegative(secret.into()),
            Change::AppendNegative(vec![secret.into()]),
        ] {
            assert!(!change.summary().contains(secret), "{change:?}");
        }
    }

    #[test]
    fn builders_attach_audit_info() {
        let m = Modification::new(Change::AddScores(BTreeMap::new()))
            .with_category("nsfw")
            .with_rules(["r1"]);
        assert_eq!(m.category.as_deref(), Some("nsfw"));
        assert_eq!(m.rules, vec!["r1".to_owned()]);
        assert!(Verdict::Block(Block::new("c", "r")).is_block());
    }
}
