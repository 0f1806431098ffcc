//! What the plugin chain's records become in the result: the safety report and watermark of
//! each output, the block behind a `blocked` status, and the audit counters and log lines.

use inpaint_job::{BlockInfo, SafetyReport, WatermarkInfo};
use inpaint_plugin_api::{BlockRecord, MetadataEntry, OutputImage};
use inpaint_provenance::ProvenanceStage;

use crate::metrics::Metrics;

/// The provenance key that names the required stages an output was made without.
pub const MISSING_STAGES_KEY: &str = "provenance.missing_required_stages";

/// Records in an output's provenance that required stages (safety checker, watermark) did not
/// run because the operator overrode the rule, so that the file itself says so. Only where the
/// provenance stage ran: without it the file carries no provenance to add to.
pub fn mark_missing_stages(out: &mut OutputImage, missing: &[String]) {
    if missing.is_empty() || inpaint_provenance::png_fields(out).is_empty() {
        return;
    }
    out.metadata.push(MetadataEntry {
        stage: ProvenanceStage::NAME.into(),
        key: MISSING_STAGES_KEY.into(),
        value: missing.join(","),
    });
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

/// Name of the safety-checker stage (`inpaint_safety_checker::SafetyCheckerStage::NAME`), whose
/// reports carry the scores.
const SAFETY_STAGE: &str = "safety-checker";

/// The safety checker's verdict on one output, from what its stage recorded: metadata
/// `safety_checker.nsfw` and `safety_checker.flagged_concepts` (indices `3,11`), and the report
/// with scores `concept.NN`, `special.N` (kept as named) plus the 0/1 flags `nsfw` and
/// `special_care` (left out: `nsfw` has its own field). Flagged concepts are named like their
/// score keys (`concept.03`). `None` when no safety checker ran on the image.
pub fn safety_of(out: &OutputImage) -> Option<SafetyReport> {
    let nsfw = out.metadata_value("safety_checker.nsfw")? == "true";
    let concept_scores = out
        .reports
        .iter()
        .rev()
        .find(|report| report.stage == SAFETY_STAGE)
        .map(|report| {
            report
                .scores
                .iter()
                .filter(|(key, _)| key.starts_with("concept.") || key.starts_with("special."))
                .map(|(key, score)| (key.clone(), f64::from(*score)))
                .collect()
        })
        .unwrap_or_default();
    let flagged_concepts = out
        .metadata_value("safety_checker.flagged_concepts")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|index| !index.is_empty())
        .map(|index| match index.parse::<usize>() {
            Ok(i) => format!("concept.{i:02}"),
            Err(_) => index.to_owned(),
        })
        .collect();
    Some(SafetyReport {
        nsfw,
        concept_scores,
        flagged_concepts,
    })
}

/// The watermark embedded in one output, from the watermark stage's metadata
/// (`watermark.payload` hex, `watermark.method`). `None` when no watermark stage ran or when it
/// left the image unmarked (`watermark.status = skipped`, images too small to carry it).
pub fn watermark_of(out: &OutputImage) -> Option<WatermarkInfo> {
    if out
        .metadata_value("watermark.status")
        .is_some_and(|status| status != "embedded")
    {
        return None;
    }
    let payload = out.metadata_value("watermark.payload")?;
    Some(WatermarkInfo {
        payload_hex: payload.to_ascii_lowercase(),
        method: out
            .metadata_value("watermark.method")
            .unwrap_or(inpaint_watermark::WatermarkStage::METHOD)
            .to_owned(),
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
    use super::*;

    fn output_with(metadata: &[(&str, &str)], scores: &[(&str, f32)]) -> PluginOutput {
        let mut out = PluginOutput::new(0, 1, image::RgbImage::new(1, 1));
        for (key, value) in metadata {
            let stage = key.split('.').next().unwrap_or_default().replace('_', "-");
            out.metadata.push(MetadataEntry {
                stage,
                key: (*key).into(),
                value: (*value).into(),
            });
        }
        if !scores.is_empty() {
            out.reports.push(inpaint_plugin_api::StageReport {
                stage: SAFETY_STAGE.into(),
                scores: scores.iter().map(|(k, v)| ((*k).into(), *v)).collect(),
            });
        }
        out
    }

    type PluginOutput = OutputImage;

    #[test]
    fn safety_report_comes_from_the_safety_stage() {
        assert_eq!(safety_of(&output_with(&[], &[])), None);
        let out = output_with(
            &[
                ("safety_checker.nsfw", "true"),
                ("safety_checker.flagged_concepts", "3,11"),
            ],
            &[
                ("concept.03", 0.012),
                ("concept.11", 0.5),
                ("concept.00", -0.25),
                ("special.0", -0.1),
                ("nsfw", 1.0),
                ("special_care", 0.0),
            ],
        );
        let report = safety_of(&out).expect("report");
        assert!(report.nsfw);
        assert_eq!(report.flagged_concepts, vec!["concept.03", "concept.11"]);
        assert_eq!(report.concept_scores.len(), 4);
        assert_eq!(report.concept_scores.get("concept.00"), Some(&-0.25));
        assert!(!report.concept_scores.contains_key("nsfw"));
        let clean = output_with(
            &[
                ("safety_checker.nsfw", "false"),
                ("safety_checker.flagged_concepts", ""),
            ],
            &[("concept.00", -0.25)],
        );
        let report = safety_of(&clean).expect("report");
        assert!(!report.nsfw && report.flagged_concepts.is_empty());
    }

    #[test]
    fn watermark_info_only_for_embedded_marks() {
        assert_eq!(watermark_of(&output_with(&[], &[])), None);
        let marked = output_with(
            &[
                ("watermark.method", "dwtDct"),
                ("watermark.payload", "5B2F"),
                ("watermark.status", "embedded"),
            ],
            &[],
        );
        let info = watermark_of(&marked).expect("watermark");
        assert_eq!(info.payload_hex, "5b2f");
        assert_eq!(info.method, "dwtDct");
        let skipped = output_with(
            &[
                ("watermark.payload", "5b2f"),
                ("watermark.status", "skipped"),
            ],
            &[],
        );
        assert_eq!(watermark_of(&skipped), None);
    }
}
