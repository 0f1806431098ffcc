//! What the plugin chain's records become in the result: the safety report and watermark of
//! each output (from the stages' typed reports, [`inpaint_plugin_api::Finding`]), the block
//! behind a `blocked` status, the override note in the provenance fields, and the audit counters
//! and log lines. Nothing here parses a stage's metadata strings or names a plugin crate.

use inpaint_job::{BlockInfo, SafetyReport, WatermarkInfo};
use inpaint_plugin_api::{BlockRecord, OutputImage, ProvenanceFinding, SafetyFinding, StageKind};

use crate::metrics::Metrics;

/// The provenance key that names the required stages an output was made without.
pub const MISSING_STAGES_KEY: &str = ProvenanceFinding::MISSING_STAGES_KEY;

/// Records in an output's provenance that required stages (safety checker, watermark) did not
/// run because the operator overrode the rule, so that the file itself says so. Only where the
/// provenance stage ran: without it the file carries no provenance to add to.
pub fn mark_missing_stages(out: &mut OutputImage, missing: &[StageKind]) {
    if let Some(provenance) = out.provenance_mut()
        && !provenance.fields.is_empty()
    {
        provenance.record_missing_stages(missing);
    }
}

/// Counts and logs every block and modification of the plugin chain: stage and category only,
/// never the prompt (the job's span adds the job id). At debug: a chain modifies every output
/// of every job (watermark, provenance), which at info was most of the worker's log; the job's
/// one info line ("job done") carries the outcome.
pub fn count_audit(metrics: &Metrics, audit: &[inpaint_plugin_api::AuditEntry]) {
    for entry in audit {
        let action = match entry.action {
            inpaint_plugin_api::AuditAction::Blocked => "blocked",
            inpaint_plugin_api::AuditAction::Modified => "modified",
        };
        let category = entry.category.as_deref().unwrap_or("none");
        metrics.count_plugin_action(action, category);
        tracing::debug!(stage = %entry.stage, action, category, "plugin chain audit");
    }
}

/// The safety checker's verdict on one output, from its typed report: every concept and
/// special-care score by name (`concept.NN`, `special.N`) and the flagged concepts named like
/// their scores. `None` when no safety checker ran on the image.
pub fn safety_of(out: &OutputImage) -> Option<SafetyReport> {
    let report = out.safety()?;
    Some(SafetyReport {
        nsfw: report.nsfw,
        concept_scores: report
            .named_scores()
            .map(|(name, score)| (name, f64::from(score)))
            .collect(),
        flagged_concepts: report
            .flagged_concepts
            .iter()
            .map(|&index| SafetyFinding::concept_name(index))
            .collect(),
    })
}

/// The watermark embedded in one output, from the watermark stage's typed report. `None` when
/// no watermark stage ran or when it left the image unmarked (images too small to carry it).
pub fn watermark_of(out: &OutputImage) -> Option<WatermarkInfo> {
    let report = out.watermark().filter(|report| report.is_embedded())?;
    Some(WatermarkInfo {
        payload_hex: report.payload_hex.to_ascii_lowercase(),
        method: report.method.clone(),
    })
}

pub fn block_info(record: &BlockRecord) -> BlockInfo {
    BlockInfo {
        stage: record.stage.clone(),
        category: record.block.category.clone(),
        reason: record.block.reason.clone(),
        scores: record
            .block
            .scores
            .iter()
            .map(|(k, v)| (k.clone(), f64::from(*v)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use inpaint_plugin_api::{Finding, WatermarkFinding, WatermarkOutcome};

    use super::*;

    fn output_with(findings: Vec<Finding>) -> OutputImage {
        let mut out = OutputImage::new(0, 1, image::RgbImage::new(1, 1));
        out.findings = findings;
        out
    }

    #[test]
    fn safety_report_comes_from_the_safety_stage() {
        assert_eq!(safety_of(&output_with(vec![])), None);
        let mut concept_scores = vec![-0.25; 12];
        concept_scores[3] = 0.012;
        concept_scores[11] = 0.5;
        let out = output_with(vec![Finding::Safety(SafetyFinding {
            nsfw: true,
            special_care: false,
            concept_scores,
            special_scores: vec![-0.1],
            flagged_concepts: vec![3, 11],
            special_care_concepts: vec![],
        })]);
        let report = safety_of(&out).expect("report");
        assert!(report.nsfw);
        assert_eq!(report.flagged_concepts, vec!["concept.03", "concept.11"]);
        assert_eq!(report.concept_scores.len(), 13);
        assert_eq!(report.concept_scores.get("concept.00"), Some(&-0.25));
        assert_eq!(
            report.concept_scores.get("concept.03"),
            Some(&f64::from(0.012f32))
        );
        assert_eq!(
            report.concept_scores.get("special.0"),
            Some(&f64::from(-0.1f32))
        );
        assert!(!report.concept_scores.contains_key("nsfw"));
        let clean = output_with(vec![Finding::Safety(SafetyFinding {
            concept_scores: vec![-0.25],
            ..SafetyFinding::default()
        })]);
        let report = safety_of(&clean).expect("report");
        assert!(!report.nsfw && report.flagged_concepts.is_empty());
    }

    fn watermark(outcome: WatermarkOutcome) -> Finding {
        Finding::Watermark(WatermarkFinding {
            method: "dwtDct".into(),
            payload_hex: "5B2F".into(),
            bits: 16,
            outcome,
        })
    }

    #[test]
    fn watermark_info_only_for_embedded_marks() {
        assert_eq!(watermark_of(&output_with(vec![])), None);
        let marked = output_with(vec![watermark(WatermarkOutcome::Embedded {
            bits_matched: None,
        })]);
        let info = watermark_of(&marked).expect("watermark");
        assert_eq!(info.payload_hex, "5b2f");
        assert_eq!(info.method, "dwtDct");
        let skipped = output_with(vec![watermark(WatermarkOutcome::Skipped {
            reason: "too small".into(),
        })]);
        assert_eq!(watermark_of(&skipped), None);
    }

    #[test]
    fn missing_stages_are_marked_only_where_provenance_ran() {
        let missing = [StageKind::SafetyChecker, StageKind::Watermark];
        let mut without = output_with(vec![]);
        mark_missing_stages(&mut without, &missing);
        assert!(without.findings.is_empty());
        let mut with = output_with(vec![Finding::Provenance(ProvenanceFinding {
            fields: vec![("provenance.ai_generated".into(), "true".into())],
        })]);
        mark_missing_stages(&mut with, &missing);
        let fields = &with.provenance().expect("provenance").fields;
        assert_eq!(
            fields.last().map(|(k, v)| (k.as_str(), v.as_str())),
            Some((MISSING_STAGES_KEY, "safety-checker,watermark"))
        );
    }
}
