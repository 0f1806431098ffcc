//! What a stage sees: the job's context before inference and each composited output image.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use image::RgbImage;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use inpaint_job::InpaintParams;
use serde_json::Value;

use crate::report::{Finding, ProvenanceFinding, SafetyFinding, WatermarkFinding};

/// The part of a job that stages look at and may change before inference.
///
/// The prompt fields are user text: stages must never copy them into logs, audit entries,
/// block reasons or metadata that leaves the worker.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobContext {
    /// The job's id, as carried in the job message.
    pub job_id: Uuid,
    /// The positive prompt, as given (possibly rewritten by an earlier stage).
    pub prompt: String,
    /// The negative prompt, if any (stages may append to it or force one).
    pub negative_prompt: Option<String>,
    /// The job's engine parameters (steps, guidance, size, scheduler, ...), the job contract's
    /// own type: the same value the engine runs with, never a copy in another shape. Stages
    /// that send or write them as JSON use [`JobContext::params_json`], so every stage shows
    /// them in the one form.
    #[serde(default)]
    pub params: InpaintParams,
    /// Free-form job metadata (from the job message and added by stages); sorted, so audit
    /// output and provenance are deterministic.
    pub metadata: BTreeMap<String, String>,
    /// True when the job has no input image to inpaint (text-only request), so stages that
    /// inspect the input image have nothing to look at.
    pub text_only: bool,
    /// Scores and other reports that stages attached before inference.
    pub reports: Vec<StageReport>,
    /// Typed reports of built-in stages before inference (the safety checker's verdict on the
    /// input image).
    #[serde(default)]
    pub findings: Vec<Finding>,
    /// The job's decoded input image, for stages that inspect it before inference (an input
    /// safety check). `None` for text-only jobs and where the caller did not provide it. Shared,
    /// not copied, between the worker and the stages; never serialized (it is not part of the
    /// job message, and a context written to JSON stays small).
    #[serde(skip)]
    pub input_image: Option<Arc<RgbImage>>,
}

impl fmt::Debug for JobContext {
    // By hand so that the input image shows as its size, not as its pixel buffer.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("job_id", &self.job_id)
            .field("prompt", &self.prompt)
            .field("negative_prompt", &self.negative_prompt)
            .field("params", &self.params)
            .field("metadata", &self.metadata)
            .field("text_only", &self.text_only)
            .field("reports", &self.reports)
            .field("findings", &self.findings)
            .field(
                "input_image",
                &self.input_image.as_ref().map(|image| image.dimensions()),
            )
            .finish()
    }
}

impl JobContext {
    /// A context with the given id and prompt, the default parameters and everything else empty.
    pub fn new(job_id: Uuid, prompt: impl Into<String>) -> Self {
        Self {
            job_id,
            prompt: prompt.into(),
            ..Self::default()
        }
    }

    /// The parameters as the JSON object that leaves the worker (the external stages' wire
    /// protocol, the provenance `parameters` field): the job contract's serde form with its
    /// keys sorted, absent optional fields left out. `Null` only if the parameters cannot be
    /// written as JSON, which their types rule out.
    pub fn params_json(&self) -> Value {
        // Sorted explicitly: serde_json's map keeps insertion order whenever any crate in the
        // build turns on its `preserve_order` feature (the c2pa build does), so relying on
        // `Value`'s default map would make the text depend on what else is linked.
        sort_keys(serde_json::to_value(&self.params).unwrap_or(Value::Null))
    }
}

/// `value` with the keys of every object in it in sorted order, whatever map serde_json uses.
fn sort_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// One composited output image on its way out of the worker.
///
/// (This is the "artifact" of the stage API: the only kind of artifact the worker produces.)
#[derive(Debug, Clone, PartialEq)]
pub struct OutputImage {
    /// Position of this image in the job's batch (0-based).
    pub index: u32,
    /// Seed that produced this image.
    pub seed: u64,
    /// The pixels, 8-bit RGB.
    pub image: RgbImage,
    /// Key/value pairs that end up in provenance and in the job result, in insertion order.
    pub metadata: Vec<MetadataEntry>,
    /// Per-stage reports (safety scores, watermark bit error rate, ...).
    pub reports: Vec<StageReport>,
    /// Typed reports of built-in stages, in the order they ran: what the worker's result
    /// builder and encoder read ([`OutputImage::safety`], [`OutputImage::watermark`],
    /// [`OutputImage::provenance`]).
    pub findings: Vec<Finding>,
}

impl OutputImage {
    /// An output image without metadata or reports.
    pub fn new(index: u32, seed: u64, image: RgbImage) -> Self {
        Self {
            index,
            seed,
            image,
            metadata: Vec::new(),
            reports: Vec::new(),
            findings: Vec::new(),
        }
    }

    /// The safety checker's last report on this image; `None` when no safety checker ran.
    pub fn safety(&self) -> Option<&SafetyFinding> {
        self.findings.iter().rev().find_map(|f| match f {
            Finding::Safety(s) => Some(s),
            _ => None,
        })
    }

    /// The watermark stage's last report on this image; `None` when no watermark stage ran.
    pub fn watermark(&self) -> Option<&WatermarkFinding> {
        self.findings.iter().rev().find_map(|f| match f {
            Finding::Watermark(w) => Some(w),
            _ => None,
        })
    }

    /// The provenance fields of this image; `None` when no provenance stage ran.
    pub fn provenance(&self) -> Option<&ProvenanceFinding> {
        self.findings.iter().rev().find_map(|f| match f {
            Finding::Provenance(p) => Some(p),
            _ => None,
        })
    }

    /// The provenance fields of this image, to add to; `None` when no provenance stage ran.
    pub fn provenance_mut(&mut self) -> Option<&mut ProvenanceFinding> {
        self.findings.iter_mut().rev().find_map(|f| match f {
            Finding::Provenance(p) => Some(p),
            _ => None,
        })
    }

    /// The last value recorded for `key`, if any.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .rev()
            .find(|entry| entry.key == key)
            .map(|entry| entry.value.as_str())
    }
}

/// A key/value pair that a stage added to an output image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataEntry {
    /// Name of the stage that added it.
    pub stage: String,
    /// The key, e.g. `watermark.payload`.
    pub key: String,
    /// The value.
    pub value: String,
}

/// Scores a stage computed (for example per-concept safety scores).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    /// Name of the stage that reported.
    pub stage: String,
    /// Score name to value.
    pub scores: BTreeMap<String, f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_value_returns_the_latest_entry() {
        let mut out = OutputImage::new(0, 1, RgbImage::new(1, 1));
        for value in ["a", "b"] {
            out.metadata.push(MetadataEntry {
                stage: "s".into(),
                key: "k".into(),
                value: value.into(),
            });
        }
        assert_eq!(out.metadata_value("k"), Some("b"));
        assert_eq!(out.metadata_value("missing"), None);
    }

    #[test]
    fn typed_reports_are_found_by_kind_latest_first() {
        let mut out = OutputImage::new(0, 1, RgbImage::new(1, 1));
        assert!(out.safety().is_none() && out.watermark().is_none());
        assert!(out.provenance().is_none() && out.provenance_mut().is_none());
        for nsfw in [true, false] {
            out.findings.push(Finding::Safety(SafetyFinding {
                nsfw,
                ..SafetyFinding::default()
            }));
        }
        out.findings
            .push(Finding::Provenance(ProvenanceFinding::default()));
        assert_eq!(out.safety().map(|s| s.nsfw), Some(false));
        assert!(out.watermark().is_none());
        out.provenance_mut()
            .expect("provenance")
            .fields
            .push(("provenance.seed".into(), "1".into()));
        assert_eq!(out.provenance().and_then(|p| p.field("seed")), Some("1"));
    }

    #[test]
    fn context_round_trips_through_json() {
        let mut ctx = JobContext::new(Uuid::nil(), "a lighthouse at dusk");
        ctx.params.num_inference_steps = 30;
        ctx.params.seed = Some(7);
        let json = serde_json::to_string(&ctx).expect("serialize");
        let back: JobContext = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, ctx);
    }

    #[test]
    fn params_json_is_the_contract_form_with_sorted_keys() {
        let mut ctx = JobContext::new(Uuid::nil(), "a lighthouse at dusk");
        ctx.params.num_inference_steps = 30;
        ctx.params.width = Some(512);
        let json = ctx.params_json();
        assert_eq!(json["num_inference_steps"], 30);
        assert_eq!(json["width"], 512);
        // Absent optional fields stay absent, as in the job message.
        assert!(json.get("seed").is_none() && json.get("height").is_none());
        let text = json.to_string();
        let keys: Vec<&String> = json.as_object().expect("object").keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "{text}");
        // What a job message with this text as `params` parses to.
        let back: InpaintParams = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, ctx.params);
    }

    #[test]
    fn input_image_is_shared_and_not_serialized() {
        let mut ctx = JobContext::new(Uuid::nil(), "a lighthouse at dusk");
        ctx.input_image = Some(Arc::new(RgbImage::new(3, 2)));
        let json = serde_json::to_string(&ctx).expect("serialize");
        assert!(!json.contains("input_image"), "{json}");
        let back: JobContext = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back.input_image, None);
        assert!(format!("{ctx:?}").contains("input_image: Some((3, 2))"));
    }
}
