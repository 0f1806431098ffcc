//! Typed stage reports: [`StageKind`], the closed set of built-in stage kinds, and [`Finding`],
//! what a built-in stage found or did, as data the worker reads without parsing strings.
//!
//! A built-in stage reports with [`Change::Report`](crate::Change::Report); the chain keeps the
//! finding on the context ([`JobContext::findings`](crate::JobContext::findings)) or the image
//! ([`OutputImage::findings`](crate::OutputImage::findings)), and the worker's result builder
//! and encoder read it from there: the safety checker's scores and flags, the watermark's
//! payload and bits, the provenance fields written into the file.
//!
//! Why the types live here and not in the plugin crates: an output image carries them, and the
//! image type is this crate's, which every plugin crate depends on (the reverse would be a
//! cycle). They are plain data with no dependencies, so the worker reads them whether or not a
//! plugin crate is compiled in (`inpaint-stages` features); each plugin crate is the only one
//! that fills its variant. Stages also keep describing themselves in metadata strings and score
//! maps: that is what external stages see (protocol `inpaint-stage.v1`), not what the worker
//! reads.
//!
//! Policy verdicts need no type here: a prompt policy's decision is already a
//! [`Verdict`](crate::Verdict) ([`Block`](crate::Block) with category and rule ids), which the
//! chain records as a [`BlockRecord`](crate::BlockRecord) and an [`AuditEntry`](crate::AuditEntry).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The built-in stage kinds: the `type` tag of a stage in configuration, and what the chain
/// policy requires ([`REQUIRED_STAGE_KINDS`](crate::REQUIRED_STAGE_KINDS)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageKind {
    /// The prompt policy (before inference).
    PromptPolicy,
    /// The CLIP safety checker (after output; optionally on the input before inference).
    SafetyChecker,
    /// The invisible watermark (after output).
    Watermark,
    /// Provenance metadata (after output).
    Provenance,
    /// An operator's stage behind HTTP.
    Http,
    /// An operator's stage as a subprocess.
    Exec,
}

impl StageKind {
    /// Every kind, in configuration order.
    pub const ALL: [StageKind; 6] = [
        StageKind::PromptPolicy,
        StageKind::SafetyChecker,
        StageKind::Watermark,
        StageKind::Provenance,
        StageKind::Http,
        StageKind::Exec,
    ];

    /// The kind's name: its `type` tag in configuration (kebab-case).
    pub const fn as_str(self) -> &'static str {
        match self {
            StageKind::PromptPolicy => "prompt-policy",
            StageKind::SafetyChecker => "safety-checker",
            StageKind::Watermark => "watermark",
            StageKind::Provenance => "provenance",
            StageKind::Http => "http",
            StageKind::Exec => "exec",
        }
    }
}

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a built-in stage found or did, one variant per reporting stage kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Finding {
    /// The safety checker's scores and flags for one image.
    Safety(SafetyFinding),
    /// The watermark embedded in one image (or why it was not).
    Watermark(WatermarkFinding),
    /// The provenance fields to write into one image's file.
    Provenance(ProvenanceFinding),
}

impl Finding {
    /// The kind of stage that reports this finding.
    pub fn kind(&self) -> StageKind {
        match self {
            Finding::Safety(_) => StageKind::SafetyChecker,
            Finding::Watermark(_) => StageKind::Watermark,
            Finding::Provenance(_) => StageKind::Provenance,
        }
    }

    /// A one-line description for the audit log (no prompt text: findings carry none, except
    /// provenance fields the operator chose to include, which this does not print).
    pub fn summary(&self) -> String {
        match self {
            Finding::Safety(s) => format!(
                "safety report: nsfw={}, {} concept(s) flagged",
                s.nsfw,
                s.flagged_concepts.len()
            ),
            Finding::Watermark(w) => match &w.outcome {
                WatermarkOutcome::Embedded { .. } => {
                    format!("watermark report: {} bits embedded ({})", w.bits, w.method)
                }
                WatermarkOutcome::Skipped { .. } => "watermark report: skipped".to_owned(),
            },
            Finding::Provenance(p) => format!("provenance report: {} field(s)", p.fields.len()),
        }
    }
}

/// The safety checker's verdict on one image (diffusers' `StableDiffusionSafetyChecker`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SafetyFinding {
    /// Whether any concept crossed its threshold.
    pub nsfw: bool,
    /// Whether any "special care" concept crossed its threshold.
    pub special_care: bool,
    /// Score per concept (cosine similarity minus threshold and adjustment; > 0 is flagged),
    /// in the model's concept order.
    pub concept_scores: Vec<f32>,
    /// Score per special-care concept, in order.
    pub special_scores: Vec<f32>,
    /// Indices of the flagged concepts, ascending.
    pub flagged_concepts: Vec<usize>,
    /// Indices of the flagged special-care concepts, ascending.
    pub special_care_concepts: Vec<usize>,
}

impl SafetyFinding {
    /// The name of concept `index` as results and score maps write it: `concept.03`.
    pub fn concept_name(index: usize) -> String {
        format!("concept.{index:02}")
    }

    /// The name of special-care concept `index`: `special.0`.
    pub fn special_name(index: usize) -> String {
        format!("special.{index}")
    }

    /// Every score by name ([`SafetyFinding::concept_name`], [`SafetyFinding::special_name`]),
    /// concepts first.
    pub fn named_scores(&self) -> impl Iterator<Item = (String, f32)> + '_ {
        let concepts = self
            .concept_scores
            .iter()
            .enumerate()
            .map(|(i, s)| (Self::concept_name(i), *s));
        let special = self
            .special_scores
            .iter()
            .enumerate()
            .map(|(i, s)| (Self::special_name(i), *s));
        concepts.chain(special)
    }
}

/// The watermark stage's report on one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatermarkFinding {
    /// The embedding method, as invisible-watermark names it (`dwtDct`).
    pub method: String,
    /// The payload, hex, MSB first, last byte zero-padded.
    pub payload_hex: String,
    /// The payload's length in bits.
    pub bits: usize,
    /// Whether the payload was embedded.
    pub outcome: WatermarkOutcome,
}

impl WatermarkFinding {
    /// True when the image carries the payload.
    pub fn is_embedded(&self) -> bool {
        matches!(self.outcome, WatermarkOutcome::Embedded { .. })
    }
}

/// Whether the watermark stage marked an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum WatermarkOutcome {
    /// The payload is in the pixels.
    Embedded {
        /// Payload bits read back right after embedding, when the stage verifies.
        bits_matched: Option<usize>,
    },
    /// The image was left unmarked (too small to carry the payload, and the operator chose to
    /// skip such images).
    Skipped {
        /// Why.
        reason: String,
    },
}

/// The provenance fields of one image, in the order they are written into the file: PNG
/// `iTXt` keywords, the source of the EXIF summary, the XMP packet and the C2PA assertion.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenanceFinding {
    /// (key, value) pairs; every key starts with [`ProvenanceFinding::KEY_PREFIX`].
    pub fields: Vec<(String, String)>,
}

impl ProvenanceFinding {
    /// Prefix of every provenance key.
    pub const KEY_PREFIX: &'static str = "provenance.";
    /// The key that names the required stages an output was made without (the operator's
    /// override), so that the file itself says so.
    pub const MISSING_STAGES_KEY: &'static str = "provenance.missing_required_stages";

    /// The value of `provenance.<name>`, if recorded.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find_map(|(key, value)| {
            (key.strip_prefix(Self::KEY_PREFIX) == Some(name)).then_some(value.as_str())
        })
    }

    /// Records that the output was made without these required stages (comma-separated), as
    /// the last field.
    pub fn record_missing_stages(&mut self, missing: &[StageKind]) {
        if missing.is_empty() {
            return;
        }
        let names: Vec<&str> = missing.iter().map(|kind| kind.as_str()).collect();
        self.fields
            .push((Self::MISSING_STAGES_KEY.to_owned(), names.join(",")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_the_serde_names() {
        for kind in StageKind::ALL {
            let json = serde_json::to_value(kind).expect("json");
            assert_eq!(json, kind.as_str());
            assert_eq!(kind.to_string(), kind.as_str());
            let back: StageKind = serde_json::from_value(json).expect("back");
            assert_eq!(back, kind);
        }
    }

    #[test]
    fn safety_scores_are_named_like_the_result() {
        let finding = SafetyFinding {
            concept_scores: vec![-0.5, 0.25],
            special_scores: vec![-0.1],
            ..SafetyFinding::default()
        };
        let names: Vec<(String, f32)> = finding.named_scores().collect();
        assert_eq!(
            names,
            vec![
                ("concept.00".to_owned(), -0.5),
                ("concept.01".to_owned(), 0.25),
                ("special.0".to_owned(), -0.1),
            ]
        );
        assert_eq!(SafetyFinding::concept_name(11), "concept.11");
    }

    #[test]
    fn missing_stages_go_last_and_only_when_there_are_some() {
        let mut p = ProvenanceFinding {
            fields: vec![("provenance.seed".into(), "7".into())],
        };
        p.record_missing_stages(&[]);
        assert_eq!(p.fields.len(), 1);
        p.record_missing_stages(&[StageKind::SafetyChecker, StageKind::Watermark]);
        assert_eq!(p.field("seed"), Some("7"));
        assert_eq!(
            p.fields.last(),
            Some(&(
                "provenance.missing_required_stages".to_owned(),
                "safety-checker,watermark".to_owned()
            ))
        );
        assert_eq!(
            p.field("missing_required_stages"),
            Some("safety-checker,watermark")
        );
    }

    #[test]
    fn findings_name_their_kind_and_summarise_without_values() {
        let w = Finding::Watermark(WatermarkFinding {
            method: "dwtDct".into(),
            payload_hex: "ab".into(),
            bits: 8,
            outcome: WatermarkOutcome::Skipped {
                reason: "too small".into(),
            },
        });
        assert_eq!(w.kind(), StageKind::Watermark);
        assert_eq!(w.summary(), "watermark report: skipped");
        let p = Finding::Provenance(ProvenanceFinding {
            fields: vec![("provenance.prompt".into(), "secret".into())],
        });
        assert!(!p.summary().contains("secret"));
        assert_eq!(p.kind(), StageKind::Provenance);
    }
}
