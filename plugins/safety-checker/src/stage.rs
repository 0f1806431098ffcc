//! [`SafetyCheckerConfig`] (plain serde data) and [`SafetyCheckerStage`], the running stage.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use image::RgbImage;
use inpaint_engine::{DeviceSpec, PrecisionSpec};
use inpaint_plugin_api::{
    Block, Change, Finding, JobContext, Modification, OutputImage, SafetyFinding, Stage,
    StageError, Verdict,
};
use serde::{Deserialize, Serialize};

use crate::checker::{SafetyChecker, SafetyResult};
use crate::error::SafetyError;

/// What the stage does with an output image that the checker flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NsfwAction {
    /// Withhold the image: the stage returns a block (category `nsfw`), nothing is written.
    #[default]
    Block,
    /// diffusers' behaviour: replace the image with a black one of the same size.
    BlackOut,
    /// Replace the image with a strongly blurred copy (Gaussian).
    Blur,
}

/// Configuration of the safety-checker stage.
///
/// ```toml
/// [[plugins]]
/// type = "safety-checker"
/// model = "/models/stable-diffusion-inpainting"  # holds safety_checker/ and feature_extractor/
/// device = "auto"        # auto | cpu | cuda | cuda:N
/// precision = "auto"     # auto (f16 on CUDA, f32 on the CPU) | f32 | f16 | bf16
/// action = "block"       # block | black_out | blur
/// adjustment = 0.0       # added to every score: > 0 stricter, < 0 looser
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SafetyCheckerConfig {
    /// The Stable Diffusion model folder containing `safety_checker/` (`config.json`,
    /// `model.safetensors`) and `feature_extractor/` (`preprocessor_config.json`).
    pub model: PathBuf,
    /// Where the checker runs.
    pub device: DeviceSpec,
    /// Floating-point format of the checker's weights and activations: `auto` (f16 on CUDA, as
    /// the published weights are; f32 on the CPU, the reference), or `f32`, `f16`, `bf16`.
    pub precision: PrecisionSpec,
    /// What to do with a flagged output image.
    pub action: NsfwAction,
    /// Operator adjustment added to every score before the `> 0` test (diffusers: 0.0). Positive
    /// values flag more images (stricter), negative fewer (looser); 0.01 is a noticeable step.
    pub adjustment: f32,
    /// Standard deviation of the blur in pixels for `action = "blur"`; by default a twentieth of
    /// the image's longer side (at least 8), which leaves only colour blobs.
    pub blur_sigma: Option<f32>,
    /// Also check the job's input image before inference (`JobContext::input_image`). A flagged
    /// input blocks the job (category `nsfw`) whatever `action` says: inpainting a blacked-out
    /// or blurred input would only hide the problem. Scores of the input go into the job's
    /// reports either way.
    pub check_input: bool,
}

impl Default for SafetyCheckerConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            device: DeviceSpec::Auto,
            precision: PrecisionSpec::Auto,
            action: NsfwAction::Block,
            adjustment: 0.0,
            blur_sigma: None,
            check_input: false,
        }
    }
}

impl SafetyCheckerConfig {
    /// Resolves the device and loads the checker.
    pub fn build(&self) -> Result<SafetyCheckerStage, SafetyError> {
        if self.model.as_os_str().is_empty() {
            return Err(SafetyError::Unsupported(
                "`model` (the folder with safety_checker/ and feature_extractor/) is not set"
                    .into(),
            ));
        }
        if !self.adjustment.is_finite() || self.blur_sigma.is_some_and(|s| s.is_nan() || s <= 0.0) {
            return Err(SafetyError::Unsupported(
                "`adjustment` must be finite and `blur_sigma` positive".into(),
            ));
        }
        let device = self.device.resolve()?;
        let checker = SafetyChecker::load(
            &self.model.join("safety_checker"),
            &self.model.join("feature_extractor"),
            device,
            self.precision.resolve(device).kind(),
        )?
        .with_adjustment(self.adjustment);
        Ok(
            SafetyCheckerStage::new(checker, self.action, self.blur_sigma)
                .with_input_check(self.check_input),
        )
    }
}

/// The safety-checker stage: runs the checker on every output image and blocks, blacks out or
/// blurs flagged ones. Whatever the outcome, the result goes into the image's typed report
/// ([`Finding::Safety`], what the job result reads), its scores (`AddScores`) and metadata
/// (`safety_checker.nsfw`, `safety_checker.flagged_concepts`; what external stages see).
#[derive(Debug)]
pub struct SafetyCheckerStage {
    // libtorch tensors are `Send` but not `Sync`: the mutex makes the stage shareable (and
    // serialises the checker's use of the device).
    checker: Mutex<SafetyChecker>,
    action: NsfwAction,
    blur_sigma: Option<f32>,
    check_input: bool,
}

/// One result as the stage's typed report, which the worker's job result reads.
pub fn finding(result: &SafetyResult) -> SafetyFinding {
    SafetyFinding {
        nsfw: result.nsfw,
        special_care: result.special_care,
        concept_scores: result.concept_scores.clone(),
        special_scores: result.special_scores.clone(),
        flagged_concepts: result.flagged_concepts.clone(),
        special_care_concepts: result.special_care_concepts.clone(),
    }
}

/// The scores of one result as a report: `concept.NN`, `special.N`, `nsfw`, `special_care`.
pub fn report_scores(result: &SafetyResult) -> BTreeMap<String, f32> {
    let mut scores: BTreeMap<String, f32> = finding(result).named_scores().collect();
    scores.insert("nsfw".into(), f32::from(u8::from(result.nsfw)));
    scores.insert(
        "special_care".into(),
        f32::from(u8::from(result.special_care)),
    );
    scores
}

fn rule_ids(result: &SafetyResult) -> Vec<String> {
    result
        .flagged_concepts
        .iter()
        .map(|i| format!("concept:{i}"))
        .chain(
            result
                .special_care_concepts
                .iter()
                .map(|i| format!("special_care:{i}")),
        )
        .collect()
}

/// Flagged concept indices, comma-separated (`3,11`; empty when none).
fn flagged_list(result: &SafetyResult) -> String {
    result
        .flagged_concepts
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A strong Gaussian blur; `sigma` defaults to a twentieth of the longer side, at least 8.
pub fn strong_blur(image: &RgbImage, sigma: Option<f32>) -> RgbImage {
    let longer = image.width().max(image.height()) as f32;
    let sigma = sigma.unwrap_or((longer / 20.0).max(8.0));
    image::imageops::blur(image, sigma)
}

impl SafetyCheckerStage {
    /// The stage's name in logs and audit entries.
    pub const NAME: &'static str = "safety-checker";

    /// A stage around a loaded checker.
    pub fn new(checker: SafetyChecker, action: NsfwAction, blur_sigma: Option<f32>) -> Self {
        Self {
            checker: Mutex::new(checker),
            action,
            blur_sigma,
            check_input: false,
        }
    }

    /// The same stage, also checking the job's input image before inference (see
    /// [`SafetyCheckerConfig::check_input`]).
    pub fn with_input_check(mut self, check_input: bool) -> Self {
        self.check_input = check_input;
        self
    }

    /// The verdict on a job's input image: scores and metadata (`safety_checker.input_nsfw`,
    /// `safety_checker.input_flagged_concepts`) on the context, or a block when it is flagged.
    pub fn input_verdict(result: &SafetyResult) -> Verdict {
        let scores = report_scores(result);
        let flagged = flagged_list(result);
        if result.nsfw {
            tracing::warn!(
                flagged = %flagged,
                special_care = result.special_care,
                "safety checker flagged the input image; job blocked"
            );
            return Verdict::Block(Block {
                category: "nsfw".into(),
                reason: format!(
                    "the safety checker flagged concept(s) {flagged} in the input image{}",
                    if result.special_care {
                        " (special care)"
                    } else {
                        ""
                    }
                ),
                scores,
                rules: rule_ids(result),
            });
        }
        Verdict::Modify(vec![
            Modification::new(Change::Report(Finding::Safety(finding(result)))),
            Modification::new(Change::AddScores(scores)),
            Modification::new(Change::AddMetadata {
                key: "safety_checker.input_nsfw".into(),
                value: "false".into(),
            }),
            Modification::new(Change::AddMetadata {
                key: "safety_checker.input_flagged_concepts".into(),
                value: flagged,
            }),
        ])
    }

    /// Runs the checker on a batch of images (all outputs of a job at once).
    pub fn check(&self, images: &[RgbImage]) -> Result<Vec<SafetyResult>, StageError> {
        let checker = self
            .checker
            .lock()
            .map_err(|_| StageError::Failed("safety checker lock poisoned".into()))?;
        checker
            .check(images)
            .map_err(|e| StageError::Failed(e.to_string()))
    }

    /// The verdict for one image and its result.
    pub fn verdict(&self, image: &RgbImage, result: &SafetyResult) -> Verdict {
        Self::verdict_with(self.action, self.blur_sigma, image, result)
    }

    /// [`SafetyCheckerStage::verdict`] of a stage with this action and blur.
    fn verdict_with(
        action: NsfwAction,
        blur_sigma: Option<f32>,
        image: &RgbImage,
        result: &SafetyResult,
    ) -> Verdict {
        let scores = report_scores(result);
        let flagged = flagged_list(result);
        if result.nsfw {
            tracing::warn!(
                flagged = %flagged,
                special_care = result.special_care,
                action = ?action,
                "safety checker flagged an output image"
            );
        }
        let mut mods = vec![
            Modification::new(Change::Report(Finding::Safety(finding(result)))),
            Modification::new(Change::AddScores(scores.clone())),
            Modification::new(Change::AddMetadata {
                key: "safety_checker.nsfw".into(),
                value: result.nsfw.to_string(),
            }),
            Modification::new(Change::AddMetadata {
                key: "safety_checker.flagged_concepts".into(),
                value: flagged.clone(),
            }),
        ];
        if !result.nsfw {
            return Verdict::Modify(mods);
        }
        let replacement = match action {
            NsfwAction::Block => {
                return Verdict::Block(Block {
                    category: "nsfw".into(),
                    reason: format!(
                        "the safety checker flagged concept(s) {flagged}{}",
                        if result.special_care {
                            " (special care)"
                        } else {
                            ""
                        }
                    ),
                    scores,
                    rules: rule_ids(result),
                });
            }
            NsfwAction::BlackOut => RgbImage::new(image.width(), image.height()),
            NsfwAction::Blur => strong_blur(image, blur_sigma),
        };
        mods.push(
            Modification::new(Change::ReplaceImage(replacement))
                .with_category("nsfw")
                .with_rules(rule_ids(result)),
        );
        Verdict::Modify(mods)
    }
}

impl Stage for SafetyCheckerStage {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn before_inference(&self, ctx: &JobContext) -> Result<Verdict, StageError> {
        if !self.check_input || ctx.text_only {
            return Ok(Verdict::Continue);
        }
        // Fail closed: a job with an input image that the caller did not hand over is not
        // checked by silently passing it.
        let input = ctx.input_image.as_deref().ok_or_else(|| {
            StageError::Contract(
                "check_input is set but the job context carries no input image".into(),
            )
        })?;
        let results = self.check(std::slice::from_ref(input))?;
        let result = results
            .first()
            .ok_or_else(|| StageError::Failed("safety checker returned no result".into()))?;
        Ok(Self::input_verdict(result))
    }

    fn after_output(&self, _ctx: &JobContext, image: &OutputImage) -> Result<Verdict, StageError> {
        let results = self.check(std::slice::from_ref(&image.image))?;
        let result = results
            .first()
            .ok_or_else(|| StageError::Failed("safety checker returned no result".into()))?;
        Ok(self.verdict(&image.image, result))
    }

    /// One batched [`SafetyCheckerStage::check`] for all images of the job.
    fn after_outputs(
        &self,
        _ctx: &JobContext,
        images: &[OutputImage],
    ) -> Result<Vec<Verdict>, StageError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let pixels: Vec<RgbImage> = images.iter().map(|o| o.image.clone()).collect();
        let results = self.check(&pixels)?;
        if results.len() != images.len() {
            return Err(StageError::Failed(format!(
                "safety checker returned {} result(s) for {} image(s)",
                results.len(),
                images.len()
            )));
        }
        Ok(images
            .iter()
            .zip(&results)
            .map(|(image, result)| self.verdict(&image.image, result))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inpaint_engine::Precision;

    #[test]
    fn config_is_strict_serde_data() {
        let config: SafetyCheckerConfig = serde_json::from_str(
            r#"{"model": "/m", "action": "black_out", "adjustment": 0.01, "device": "cpu"}"#,
        )
        .expect("json");
        assert_eq!(config.action, NsfwAction::BlackOut);
        assert_eq!(config.device, DeviceSpec::Cpu);
        assert_eq!(config.precision, PrecisionSpec::Auto);
        assert_eq!(config.precision.resolve(tch::Device::Cpu), Precision::F32);
        assert!(serde_json::from_str::<SafetyCheckerConfig>(r#"{"modle": "/m"}"#).is_err());
        assert!(serde_json::from_str::<SafetyCheckerConfig>(r#"{"action": "hide"}"#).is_err());
        assert_eq!(
            SafetyCheckerConfig::default().action,
            NsfwAction::Block,
            "blocking is the default"
        );
    }

    fn result(nsfw: bool) -> SafetyResult {
        SafetyResult {
            nsfw,
            concept_scores: vec![-0.25, if nsfw { 0.5 } else { -0.5 }],
            special_scores: vec![-0.1],
            flagged_concepts: if nsfw { vec![1] } else { vec![] },
            special_care: false,
            special_care_concepts: vec![],
        }
    }

    #[test]
    fn verdicts_carry_the_typed_report_and_the_same_scores_in_words() {
        // The verdict needs no model: build it the way `after_output` does.
        let verdict = |result: &SafetyResult| match SafetyCheckerStage::verdict_with(
            NsfwAction::BlackOut,
            None,
            &RgbImage::new(2, 2),
            result,
        ) {
            Verdict::Modify(mods) => mods,
            other => panic!("expected modifications, got {other:?}"),
        };
        for nsfw in [false, true] {
            let result = result(nsfw);
            let mods = verdict(&result);
            let Change::Report(Finding::Safety(report)) = &mods[0].change else {
                panic!("the typed report comes first: {mods:?}");
            };
            assert_eq!(report.nsfw, nsfw);
            assert_eq!(report.flagged_concepts, result.flagged_concepts);
            assert_eq!(report.concept_scores, result.concept_scores);
            let Change::AddScores(scores) = &mods[1].change else {
                panic!("scores second: {mods:?}");
            };
            let named: BTreeMap<String, f32> = report.named_scores().collect();
            assert!(
                named.iter().all(|(k, v)| scores.get(k) == Some(v)),
                "{scores:?}"
            );
            assert_eq!(scores.len(), named.len() + 2, "plus nsfw and special_care");
            assert_eq!(
                mods.iter()
                    .any(|m| matches!(m.change, Change::ReplaceImage(_))),
                nsfw
            );
        }
        let Verdict::Modify(mods) = SafetyCheckerStage::input_verdict(&result(false)) else {
            panic!("clean input continues");
        };
        assert!(matches!(mods[0].change, Change::Report(Finding::Safety(_))));
    }

    #[test]
    fn unusable_configurations_fail_to_build() {
        let err = SafetyCheckerConfig::default()
            .build()
            .expect_err("no model");
        assert!(err.to_string().contains("`model`"), "{err}");
    }

    #[test]
    fn blur_removes_detail() {
        let mut image = RgbImage::new(64, 64);
        for (x, y, p) in image.enumerate_pixels_mut() {
            *p = image::Rgb(if (x / 2 + y / 2) % 2 == 0 {
                [255; 3]
            } else {
                [0; 3]
            });
        }
        let blurred = strong_blur(&image, None);
        assert_eq!(blurred.dimensions(), (64, 64));
        // Away from the borders (where the kernel is cut off) only the mean grey is left.
        let (lo, hi) = blurred
            .enumerate_pixels()
            .filter(|(x, y, _)| (16..48).contains(x) && (16..48).contains(y))
            .fold((255u8, 0u8), |(lo, hi), (_, _, p)| {
                (lo.min(p.0[0]), hi.max(p.0[0]))
            });
        assert!(hi - lo < 16, "checkerboard survived: {lo}..{hi}");
    }
}
