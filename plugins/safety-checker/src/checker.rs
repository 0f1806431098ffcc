//! [`SafetyChecker`]: diffusers' `StableDiffusionSafetyChecker` with its `CLIPImageProcessor`.
//!
//! The image embedding (`visual_projection(pooled)`) is compared by cosine similarity with 17
//! concept embeddings and 3 "special care" embeddings, each with its own threshold (the
//! `*_embeds_weights` parameters). [`decide`] then applies diffusers' rule exactly, including its
//! float32 arithmetic and `round(x, 3)`:
//!
//! ```text
//! adjustment = operator adjustment (diffusers: 0.0)
//! for each special-care j:  s_j = round(cos_j - w_j + adjustment, 3); if s_j > 0: adjustment += 0.01
//!                           (only once; later special-care scores see the bump too)
//! for each concept i:       c_i = round(cos_i - w_i + adjustment, 3); flagged if c_i > 0
//! NSFW = any concept flagged
//! ```

use std::path::Path;

use image::RgbImage;
use inpaint_engine::models::layers::Linear;
use inpaint_engine::weights::WeightStore;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::config::{CheckerConfig, PreprocessorConfig};
use crate::error::SafetyError;
use crate::preprocess::preprocess;
use crate::vision::ClipVisionModel;

/// Number of concept embeddings (diffusers' constant).
pub const CONCEPTS: usize = 17;
/// Number of special-care embeddings (diffusers' constant).
pub const SPECIAL_CARE: usize = 3;

/// The bump diffusers adds to every later score once a special-care concept is found.
pub const SPECIAL_CARE_BUMP: f32 = 0.01;

/// Names a checkpoint may carry that are buffers, not weights.
const IGNORABLE: &[&str] = &[
    "vision_model.vision_model.embeddings.position_ids",
    "vision_model.embeddings.position_ids",
];

/// The verdict on one image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SafetyResult {
    /// Any concept flagged: diffusers' `has_nsfw_concepts`.
    pub nsfw: bool,
    /// Per concept, `round(cos - threshold + adjustment, 3)`; flagged when > 0.
    pub concept_scores: Vec<f32>,
    /// Per special-care concept, the same score.
    pub special_scores: Vec<f32>,
    /// Indices of the flagged concepts (diffusers' `bad_concepts`).
    pub flagged_concepts: Vec<usize>,
    /// A special-care concept was found (which raised the other scores by 0.01).
    pub special_care: bool,
    /// Indices of the special-care concepts found.
    pub special_care_concepts: Vec<usize>,
}

/// The raw cosine similarities of a batch (diffusers' `cos_dist` and `special_cos_dist`).
#[derive(Clone, Debug, PartialEq)]
pub struct CosineScores {
    /// `[B][17]`.
    pub concept: Vec<Vec<f32>>,
    /// `[B][3]`.
    pub special: Vec<Vec<f32>>,
}

/// diffusers' `round(np.float32, 3)`: `rint(x * 1000) / 1000`, all in float32.
fn round3(x: f32) -> f32 {
    (x * 1000.0f32).round_ties_even() / 1000.0f32
}

/// diffusers' decision rule on one image's cosines, with an extra operator `adjustment`
/// (diffusers: 0; positive is stricter). Scores are float32 as in diffusers (numpy float32 minus
/// a Python float stays float32 under NumPy 2).
pub fn decide(
    cos: &[f32],
    special_cos: &[f32],
    thresholds: &[f32],
    special_thresholds: &[f32],
    adjustment: f32,
) -> SafetyResult {
    let mut adj = adjustment;
    let mut special_scores = Vec::with_capacity(special_cos.len());
    let mut special_care_concepts = Vec::new();
    for (j, (&c, &w)) in special_cos.iter().zip(special_thresholds).enumerate() {
        let score = round3(c - w + adj);
        special_scores.push(score);
        if score > 0.0 {
            special_care_concepts.push(j);
            // diffusers sets `adjustment = 0.01` (from 0): the bump applies once.
            adj = (f64::from(adjustment) + f64::from(SPECIAL_CARE_BUMP)) as f32;
        }
    }
    let mut concept_scores = Vec::with_capacity(cos.len());
    let mut flagged_concepts = Vec::new();
    for (i, (&c, &w)) in cos.iter().zip(thresholds).enumerate() {
        let score = round3(c - w + adj);
        concept_scores.push(score);
        if score > 0.0 {
            flagged_concepts.push(i);
        }
    }
    SafetyResult {
        nsfw: !flagged_concepts.is_empty(),
        concept_scores,
        special_scores,
        flagged_concepts,
        special_care: !special_care_concepts.is_empty(),
        special_care_concepts,
    }
}

/// The loaded checker: preprocessing, vision tower, projection, concept embeddings.
#[derive(Debug)]
pub struct SafetyChecker {
    preprocessor: PreprocessorConfig,
    config: CheckerConfig,
    vision: ClipVisionModel,
    visual_projection: Linear,
    concept_embeds: Tensor,
    special_care_embeds: Tensor,
    thresholds: Vec<f32>,
    special_thresholds: Vec<f32>,
    adjustment: f32,
    device: Device,
    kind: Kind,
}

fn to_f32_vec(t: &Tensor) -> Result<Vec<f32>, SafetyError> {
    let flat = t
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_flatten(0, -1)?;
    Ok(Vec::<f32>::try_from(&flat)?)
}

/// `F.normalize(x)` along dimension 1: `x / max(||x||, 1e-12)`.
fn normalize(x: &Tensor) -> Result<Tensor, SafetyError> {
    let norm = x
        .f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?
        .f_clamp_min(1e-12)?;
    Ok(x.f_div(&norm)?)
}

impl SafetyChecker {
    /// Loads `safety_checker/` (`config.json`, `model.safetensors`, fp16 or fp32, converted to
    /// `kind`) and `feature_extractor/` (`preprocessor_config.json`). Every tensor name and shape
    /// is checked; all problems are reported together.
    pub fn load(
        safety_checker: &Path,
        feature_extractor: &Path,
        device: Device,
        kind: Kind,
    ) -> Result<Self, SafetyError> {
        let config = CheckerConfig::read(&safety_checker.join("config.json"))?;
        let preprocessor_path = feature_extractor.join("preprocessor_config.json");
        let preprocessor = PreprocessorConfig::read(&preprocessor_path)?;
        let image_size = u32::try_from(config.vision.image_size).unwrap_or(0);
        let produced = match (preprocessor.crop, preprocessor.resize) {
            (Some(crop), _) => Some(crop),
            (None, Some(crate::config::ResizeTo::Exact { height, width })) => Some((height, width)),
            _ => None,
        };
        if produced != Some((image_size, image_size)) {
            return Err(SafetyError::Config {
                path: preprocessor_path.display().to_string(),
                message: format!(
                    "produces images of {produced:?} (height, width) but the vision tower \
                     expects {image_size}x{image_size}"
                ),
            });
        }
        let weights = safety_checker.join("model.safetensors");
        let store = WeightStore::open(&weights, kind, device)?;
        let root = store.root();
        let tower = if root.contains("vision_model.vision_model.post_layernorm.weight") {
            root.sub("vision_model").sub("vision_model")
        } else {
            root.sub("vision_model")
        };
        let vision = ClipVisionModel::load(&tower, &config.vision)?;
        let (hidden, proj) = (config.vision.hidden_size, config.projection_dim);
        let visual_projection = Linear::load(&root.sub("visual_projection"), hidden, proj, false);
        let concept_embeds = root.get("concept_embeds", &[CONCEPTS as i64, proj]);
        let special_care_embeds = root.get("special_care_embeds", &[SPECIAL_CARE as i64, proj]);
        // diffusers reads the thresholds with `.item()` from the parameters in the model's kind.
        let thresholds = root.get("concept_embeds_weights", &[CONCEPTS as i64]);
        let special_thresholds = root.get("special_care_embeds_weights", &[SPECIAL_CARE as i64]);
        store.finish(IGNORABLE)?;
        let checker = Self {
            preprocessor,
            thresholds: to_f32_vec(&thresholds)?,
            special_thresholds: to_f32_vec(&special_thresholds)?,
            config,
            vision,
            visual_projection,
            concept_embeds,
            special_care_embeds,
            adjustment: 0.0,
            device,
            kind,
        };
        tracing::info!(
            weights = %weights.display(),
            layers = checker.config.vision.num_hidden_layers,
            hidden = checker.config.vision.hidden_size,
            image_size = checker.config.vision.image_size,
            ?device,
            ?kind,
            "safety checker loaded"
        );
        Ok(checker)
    }

    /// The same checker with an operator adjustment added to every score (diffusers' initial
    /// `adjustment = 0.0`): positive is stricter, negative looser.
    pub fn with_adjustment(mut self, adjustment: f32) -> Self {
        self.adjustment = adjustment;
        self
    }

    /// The operator adjustment.
    pub fn adjustment(&self) -> f32 {
        self.adjustment
    }

    /// The architecture read from `safety_checker/config.json`.
    pub fn config(&self) -> &CheckerConfig {
        &self.config
    }

    /// The preprocessing read from `feature_extractor/preprocessor_config.json`.
    pub fn preprocessor(&self) -> &PreprocessorConfig {
        &self.preprocessor
    }

    /// Per-concept thresholds (`concept_embeds_weights`).
    pub fn thresholds(&self) -> &[f32] {
        &self.thresholds
    }

    /// Per-special-care thresholds (`special_care_embeds_weights`).
    pub fn special_thresholds(&self) -> &[f32] {
        &self.special_thresholds
    }

    /// The preprocessed batch `[B, 3, S, S]` (float32, CPU), as `CLIPImageProcessor` makes it.
    pub fn preprocess(&self, images: &[RgbImage]) -> Result<Tensor, SafetyError> {
        let mut data = Vec::new();
        let mut shape = (0, 0);
        for image in images {
            let (values, size) = preprocess(image, &self.preprocessor)?;
            shape = size;
            data.extend_from_slice(&values);
        }
        let (w, h) = shape;
        Ok(Tensor::f_from_slice(&data)?.f_view([
            images.len() as i64,
            3,
            i64::from(h),
            i64::from(w),
        ])?)
    }

    /// Cosine similarities of a preprocessed batch with the concept and special-care embeddings,
    /// computed in the model's kind and returned as float32 (as diffusers does).
    pub fn cosine_scores(&self, pixels: &Tensor) -> Result<CosineScores, SafetyError> {
        let _guard = tch::no_grad_guard();
        let b = usize::try_from(pixels.size().first().copied().unwrap_or(0)).unwrap_or(0);
        let pixels = pixels.f_to_device(self.device)?.f_to_kind(self.kind)?;
        let pooled = self.vision.pooled(&pixels)?;
        let embeds = normalize(&self.visual_projection.forward(&pooled))?;
        let cos = |table: &Tensor, n: usize| -> Result<Vec<Vec<f32>>, SafetyError> {
            let values = to_f32_vec(&embeds.f_mm(&normalize(table)?.f_transpose(0, 1)?)?)?;
            Ok(values.chunks(n).map(<[f32]>::to_vec).take(b).collect())
        };
        Ok(CosineScores {
            concept: cos(&self.concept_embeds, CONCEPTS)?,
            special: cos(&self.special_care_embeds, SPECIAL_CARE)?,
        })
    }

    /// Checks a batch of images (all images of a job at once): one result per image, in order.
    pub fn check(&self, images: &[RgbImage]) -> Result<Vec<SafetyResult>, SafetyError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let pixels = self.preprocess(images)?;
        let scores = self.cosine_scores(&pixels)?;
        Ok(scores
            .concept
            .iter()
            .zip(&scores.special)
            .map(|(cos, special)| {
                decide(
                    cos,
                    special,
                    &self.thresholds,
                    &self.special_thresholds,
                    self.adjustment,
                )
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_matches_numpy_float32() {
        // 0.0005 in float32 is slightly above 0.0005; x*1000 rounds to 0.5 exactly: ties to even.
        assert_eq!(round3(0.0005), 0.0);
        assert_eq!(round3(0.0015), 0.002);
        assert_eq!(round3(-0.2345), -0.234);
    }

    #[test]
    fn special_care_bumps_later_scores_once() {
        let cos = [0.295, 0.1];
        let special = [0.1, 0.2, 0.106];
        let result = decide(&cos, &special, &[0.3, 0.5], &[0.5, 0.1, 0.1], 0.0);
        assert_eq!(result.special_care_concepts, vec![1, 2]);
        assert!(result.special_care);
        // special 2: 0.106 - 0.1 + 0.01 -> 0.016 (bumped), concept 0: -0.005 + 0.01 -> flagged.
        assert_eq!(result.special_scores[2], 0.016);
        assert_eq!(result.flagged_concepts, vec![0]);
        assert!(result.nsfw);
        let looser = decide(&cos, &special, &[0.3, 0.5], &[0.5, 0.1, 0.1], -0.2);
        assert!(!looser.nsfw && !looser.special_care);
    }
}
