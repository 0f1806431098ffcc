//! [`ProvenanceConfig`] (plain serde data) and [`ProvenanceStage`], the running stage, plus
//! [`png_fields`] and [`xmp_for`], which turn a finished image's provenance metadata into what
//! [`embed_png`](crate::embed_png), [`embed_jpeg`](crate::embed_jpeg) and
//! [`embed_webp`](crate::embed_webp) write.
//!
//! **Order.** Put the stage last, after the watermark: it describes the final pixels.

use inpaint_plugin_api::{
    Change, Finding, JobContext, Modification, OutputImage, ProvenanceFinding, Stage, StageError,
    Verdict,
};
use serde::{Deserialize, Serialize};

use crate::error::ProvenanceError;
use crate::xmp::xmp_packet;

/// The generating software as files name it (EXIF `Software`, XMP `xmp:CreatorTool`): the
/// worker and its version (the workspace shares one version).
pub const SOFTWARE: &str = concat!("inpaint-worker ", env!("CARGO_PKG_VERSION"));

/// IPTC digital source type of an inpainted image: a composite of a capture (the input image)
/// and trained-model output.
pub const DIGITAL_SOURCE_TYPE_COMPOSITE: &str =
    "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia";
/// IPTC digital source type of an image made from a prompt alone (text-only job).
pub const DIGITAL_SOURCE_TYPE_TRAINED: &str =
    "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia";
/// The model licence every output is subject to.
pub const LICENCE: &str = "CreativeML OpenRAIL-M";
/// Where the licence's use restrictions are, recorded next to [`LICENCE`]. Paragraph 5 makes
/// them bind every user of the model and of its outputs' derivatives.
pub const LICENCE_RESTRICTIONS: &str = "Use is subject to the use-based restrictions of \
     paragraph 5 and Attachment A of the CreativeML OpenRAIL-M licence \
     (https://huggingface.co/spaces/CompVis/stable-diffusion-license)";

/// Configuration of the provenance stage.
///
/// ```toml
/// [[plugins]]
/// type = "provenance"
/// include_prompt = false
/// include_parameters = true
/// model_id = "stable-diffusion-v1-5/stable-diffusion-inpainting"
/// weights_sha256 = "…64 hex digits…"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvenanceConfig {
    /// Record the prompt (and the negative prompt, if any) as `provenance.prompt` and
    /// `provenance.negative_prompt`. Default `false`: prompts are user text and this metadata
    /// leaves the worker, in the job result and in the file; turn it on only where users have
    /// agreed to publish their prompts.
    pub include_prompt: bool,
    /// Record the engine parameters (the job's `params` object: steps, guidance, size,
    /// scheduler, ...) as compact JSON in `provenance.parameters`. Default `true`.
    pub include_parameters: bool,
    /// The model's name to record as `provenance.model_id`, e.g. a Hugging Face repository id.
    /// Default: not recorded.
    pub model_id: Option<String>,
    /// SHA-256 of the weights file (64 hex digits) to record as `provenance.weights_sha256`,
    /// in lower case. Default: not recorded.
    pub weights_sha256: Option<String>,
}

impl Default for ProvenanceConfig {
    fn default() -> Self {
        Self {
            include_prompt: false,
            include_parameters: true,
            model_id: None,
            weights_sha256: None,
        }
    }
}

impl ProvenanceConfig {
    /// Checks `model_id` and `weights_sha256` and builds the stage.
    pub fn build(&self) -> Result<ProvenanceStage, ProvenanceError> {
        if self
            .model_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            return Err(ProvenanceError::EmptyModelId);
        }
        let weights_sha256 = match &self.weights_sha256 {
            Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(hex.to_ascii_lowercase())
            }
            Some(other) => return Err(ProvenanceError::BadSha256(other.clone())),
            None => None,
        };
        Ok(ProvenanceStage {
            include_prompt: self.include_prompt,
            include_parameters: self.include_parameters,
            model_id: self.model_id.clone(),
            weights_sha256,
        })
    }
}

/// The provenance stage: after output, adds to each image the metadata entries (all keys
/// prefixed `provenance.`):
///
/// | key | value |
/// |---|---|
/// | `ai_generated` | `true` |
/// | `digital_source_type` | [`DIGITAL_SOURCE_TYPE_COMPOSITE`], or [`DIGITAL_SOURCE_TYPE_TRAINED`] for text-only jobs |
/// | `license` | [`LICENCE`] |
/// | `license_restrictions` | [`LICENCE_RESTRICTIONS`] |
/// | `job_id` | the job's id |
/// | `seed` | the image's seed |
/// | `model_id`, `weights_sha256` | when configured |
/// | `parameters` | the job's `params` as compact JSON, with `include_parameters` (default) |
/// | `prompt`, `negative_prompt` | only with `include_prompt` |
///
/// They go into a typed report ([`Finding::Provenance`]), which the worker writes into the file,
/// and the same as metadata entries. It never blocks and never changes pixels.
#[derive(Debug, Clone)]
pub struct ProvenanceStage {
    include_prompt: bool,
    include_parameters: bool,
    model_id: Option<String>,
    weights_sha256: Option<String>,
}

impl ProvenanceStage {
    /// The stage's name in logs, audit entries and metadata.
    pub const NAME: &'static str = "provenance";
    /// Prefix of every metadata key this stage adds.
    pub const KEY_PREFIX: &'static str = ProvenanceFinding::KEY_PREFIX;

    /// The metadata entries for `image` of the job `ctx`, as (key, value), in order.
    pub fn entries(&self, ctx: &JobContext, image: &OutputImage) -> Vec<(String, String)> {
        let source = if ctx.text_only {
            DIGITAL_SOURCE_TYPE_TRAINED
        } else {
            DIGITAL_SOURCE_TYPE_COMPOSITE
        };
        let mut entries: Vec<(&str, String)> = vec![
            ("ai_generated", "true".into()),
            ("digital_source_type", source.into()),
            ("license", LICENCE.into()),
            ("license_restrictions", LICENCE_RESTRICTIONS.into()),
            ("job_id", ctx.job_id.to_string()),
            ("seed", image.seed.to_string()),
        ];
        if let Some(id) = &self.model_id {
            entries.push(("model_id", id.clone()));
        }
        if let Some(sha) = &self.weights_sha256 {
            entries.push(("weights_sha256", sha.clone()));
        }
        let params = ctx.params_json();
        if self.include_parameters && !params.is_null() {
            entries.push(("parameters", params.to_string()));
        }
        if self.include_prompt {
            entries.push(("prompt", ctx.prompt.clone()));
            if let Some(negative) = &ctx.negative_prompt {
                entries.push(("negative_prompt", negative.clone()));
            }
        }
        entries
            .into_iter()
            .map(|(key, value)| (format!("{}{key}", Self::KEY_PREFIX), value))
            .collect()
    }
}

impl Stage for ProvenanceStage {
    fn name(&self) -> &str {
        Self::NAME
    }

    /// The fields as a typed report ([`Finding::Provenance`], what the worker's encoder writes
    /// into the file), then each as a metadata entry (what external stages see).
    fn after_output(&self, ctx: &JobContext, image: &OutputImage) -> Result<Verdict, StageError> {
        let fields = self.entries(ctx, image);
        let mut mods = Vec::with_capacity(fields.len() + 1);
        mods.extend(
            fields
                .iter()
                .cloned()
                .map(|(key, value)| Modification::new(Change::AddMetadata { key, value })),
        );
        let report = Finding::Provenance(ProvenanceFinding { fields });
        mods.insert(0, Modification::new(Change::Report(report)));
        Ok(Verdict::Modify(mods))
    }
}

/// The provenance fields of `image` (the [`ProvenanceStage`]'s typed report, with whatever the
/// worker added to it), as (key, value) for the encoders: PNG `iTXt` keywords
/// ([`embed_png`](crate::embed_png)) and the source of the EXIF summary and XMP packet for every
/// format. Empty when the stage did not run on it.
pub fn png_fields(image: &OutputImage) -> Vec<(String, String)> {
    image
        .provenance()
        .map(|report| report.fields.clone())
        .unwrap_or_default()
}

/// The XMP packet for `image`, from its provenance fields ([`png_fields`]); `None` when the
/// stage did not run on it.
pub fn xmp_for(image: &OutputImage) -> Option<String> {
    xmp_packet(&png_fields(image))
}

/// The value of `provenance.<name>` among `fields`.
pub(crate) fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find_map(|(key, value)| {
        (key.strip_prefix(ProvenanceStage::KEY_PREFIX) == Some(name)).then_some(value.as_str())
    })
}

/// [`SOFTWARE`], followed by `; model <model_id>` when the fields name the model.
pub fn creator_tool(fields: &[(String, String)]) -> String {
    match field(fields, "model_id") {
        Some(model) => format!("{SOFTWARE}; model {model}"),
        None => SOFTWARE.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use inpaint_plugin_api::{Chain, RgbImage};
    use uuid::Uuid;

    use super::*;

    fn context(text_only: bool) -> JobContext {
        let mut ctx = JobContext::new(Uuid::from_u128(42), "a secret prompt");
        ctx.negative_prompt = Some("a secret negative".into());
        ctx.params.num_inference_steps = 30;
        ctx.params.guidance_scale = 7.5;
        ctx.text_only = text_only;
        ctx
    }

    fn run(config: &ProvenanceConfig, ctx: &JobContext) -> OutputImage {
        let stage = config.build().expect("build");
        let chain = Chain::new(vec![Box::new(stage)]);
        let outcome = chain
            .after_output(ctx, vec![OutputImage::new(0, 1234, RgbImage::new(2, 2))])
            .expect("runs");
        assert!(outcome.blocks.is_empty());
        outcome.images.into_iter().next().expect("one image")
    }

    #[test]
    fn digital_source_type_follows_text_only() {
        let config = ProvenanceConfig::default();
        let inpainted = run(&config, &context(false));
        assert_eq!(
            inpainted.metadata_value("provenance.digital_source_type"),
            Some(DIGITAL_SOURCE_TYPE_COMPOSITE)
        );
        let text_only = run(&config, &context(true));
        assert_eq!(
            text_only.metadata_value("provenance.digital_source_type"),
            Some(DIGITAL_SOURCE_TYPE_TRAINED)
        );
    }

    #[test]
    fn default_entries_exclude_the_prompt() {
        let image = run(&ProvenanceConfig::default(), &context(false));
        assert!(image.metadata.iter().all(|e| e.stage == "provenance"));
        let value = |key: &str| image.metadata_value(&format!("provenance.{key}"));
        assert_eq!(value("ai_generated"), Some("true"));
        assert_eq!(value("license"), Some(LICENCE));
        assert!(
            value("license_restrictions")
                .is_some_and(|v| v.contains("paragraph 5") && v.contains("Attachment A"))
        );
        assert_eq!(
            value("job_id"),
            Some(Uuid::from_u128(42).to_string().as_str())
        );
        assert_eq!(value("seed"), Some("1234"));
        // The job contract's JSON form, keys sorted, absent options left out: pinned, since
        // readers of the provenance field parse this text.
        assert_eq!(
            value("parameters"),
            Some(
                r#"{"eta":0.0,"guidance_scale":7.5,"mask_feather_px":0,"mask_grow_px":0,"num_images":1,"num_inference_steps":30,"preserve_unmasked":true,"scheduler":"pndm","strength":1.0}"#
            )
        );
        assert_eq!(value("prompt"), None);
        assert_eq!(value("negative_prompt"), None);
        assert_eq!(value("model_id"), None);
        assert!(image.metadata.iter().all(|e| !e.value.contains("secret")));
    }

    #[test]
    fn optional_entries_follow_the_config() {
        let sha = "AB".repeat(32);
        let config = ProvenanceConfig {
            include_prompt: true,
            include_parameters: false,
            model_id: Some("sd-inpainting".into()),
            weights_sha256: Some(sha.clone()),
        };
        let image = run(&config, &context(false));
        let value = |key: &str| image.metadata_value(&format!("provenance.{key}"));
        assert_eq!(value("prompt"), Some("a secret prompt"));
        assert_eq!(value("negative_prompt"), Some("a secret negative"));
        assert_eq!(value("parameters"), None);
        assert_eq!(value("model_id"), Some("sd-inpainting"));
        assert_eq!(value("weights_sha256"), Some(sha.to_lowercase().as_str()));
    }

    #[test]
    fn build_validates() {
        let bad = |config: ProvenanceConfig| config.build().is_err();
        assert!(bad(ProvenanceConfig {
            weights_sha256: Some("abc".into()),
            ..ProvenanceConfig::default()
        }));
        assert!(bad(ProvenanceConfig {
            weights_sha256: Some("g".repeat(64)),
            ..ProvenanceConfig::default()
        }));
        assert!(bad(ProvenanceConfig {
            model_id: Some(" ".into()),
            ..ProvenanceConfig::default()
        }));
    }

    #[test]
    fn config_parses_with_defaults_and_refuses_unknown_fields() {
        let config: ProvenanceConfig = toml::from_str("").expect("empty");
        assert_eq!(config, ProvenanceConfig::default());
        assert!(!config.include_prompt);
        assert!(config.include_parameters);
        assert!(toml::from_str::<ProvenanceConfig>("include_prompts = true").is_err());
    }

    #[test]
    fn fields_and_xmp_come_from_the_metadata() {
        let image = run(&ProvenanceConfig::default(), &context(true));
        let fields = png_fields(&image);
        assert_eq!(fields.len(), image.metadata.len());
        // The typed report and the metadata words say the same, in the same order.
        let words: Vec<(String, String)> = image
            .metadata
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        assert_eq!(fields, words);
        assert_eq!(fields[0], ("provenance.ai_generated".into(), "true".into()));
        let xmp = xmp_for(&image).expect("provenance ran");
        assert!(xmp.contains(DIGITAL_SOURCE_TYPE_TRAINED));
        assert!(xmp.contains(&Uuid::from_u128(42).to_string()));
        assert!(xmp.contains("Attachment A"));
        assert_eq!(xmp_for(&OutputImage::new(0, 0, RgbImage::new(1, 1))), None);
        // And they embed.
        let mut png = Vec::new();
        image
            .image
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .expect("encode");
        crate::embed_png(&png, &fields, &xmp).expect("embeds");
    }
}
