//! The two config files of a published safety checker, read as transformers reads them:
//! `safety_checker/config.json` (a `CLIPConfig`; only its vision part and `projection_dim` matter)
//! and `feature_extractor/preprocessor_config.json` (a `CLIPImageProcessor`).
//!
//! Every architecture value comes from the files, with transformers' defaults for missing keys
//! (those of `CLIPVisionConfig`, `CLIPConfig` and `CLIPImageProcessor`).

use std::path::Path;

use inpaint_engine::models::clip::Activation;
use serde::Deserialize;
use serde_json::Value;

use crate::error::SafetyError;

fn config_error(path: &Path, message: impl Into<String>) -> SafetyError {
    SafetyError::Config {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn read_value(path: &Path) -> Result<Value, SafetyError> {
    let text = std::fs::read_to_string(path).map_err(|e| config_error(path, e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| config_error(path, e.to_string()))
}

/// The CLIP vision tower's architecture (transformers `CLIPVisionConfig`, defaults included).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct VisionConfig {
    /// Width of the transformer (1024 for ViT-L/14).
    pub hidden_size: i64,
    /// Width of the MLP (4096 for ViT-L/14).
    pub intermediate_size: i64,
    /// Number of encoder layers (24 for ViT-L/14).
    pub num_hidden_layers: i64,
    /// Attention heads per layer (16 for ViT-L/14).
    pub num_attention_heads: i64,
    /// Input channels (3).
    pub num_channels: i64,
    /// Side of the square input image (224).
    pub image_size: i64,
    /// Side of a square patch (14 for ViT-L/14).
    pub patch_size: i64,
    /// `quick_gelu` (CLIP) or `gelu`.
    pub hidden_act: String,
    /// Epsilon of every layer norm.
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl VisionConfig {
    /// Number of position embeddings: one per patch plus the class token.
    pub fn num_positions(&self) -> i64 {
        let side = self.image_size / self.patch_size;
        side * side + 1
    }

    fn check(&self, path: &Path) -> Result<(), SafetyError> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_channels", self.num_channels),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
        ];
        if let Some((name, value)) = positive.iter().find(|(_, v)| *v <= 0) {
            return Err(config_error(path, format!("vision {name} is {value}")));
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(config_error(
                path,
                format!(
                    "vision hidden_size {} not divisible by num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        if self.image_size % self.patch_size != 0 {
            return Err(config_error(
                path,
                format!(
                    "vision image_size {} not divisible by patch_size {}",
                    self.image_size, self.patch_size
                ),
            ));
        }
        if Activation::from_name(&self.hidden_act).is_none() {
            return Err(config_error(
                path,
                format!("unsupported vision hidden_act {:?}", self.hidden_act),
            ));
        }
        Ok(())
    }
}

/// `safety_checker/config.json`: the vision tower and the projection width.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckerConfig {
    /// The vision tower.
    pub vision: VisionConfig,
    /// Width of `visual_projection` and of the concept embeddings (768 for SD-1.5).
    pub projection_dim: i64,
}

impl CheckerConfig {
    /// Reads a `CLIPConfig`. As in transformers, a legacy `vision_config_dict` (SD-1.5's file has
    /// one) wins over `vision_config`: the tower is then `CLIPVisionConfig(**vision_config_dict)`.
    pub fn read(path: &Path) -> Result<Self, SafetyError> {
        Self::from_value(&read_value(path)?, path)
    }

    pub(crate) fn from_value(value: &Value, path: &Path) -> Result<Self, SafetyError> {
        let vision = match (value.get("vision_config_dict"), value.get("vision_config")) {
            (Some(v), _) if !v.is_null() => v.clone(),
            (_, Some(v)) if !v.is_null() => v.clone(),
            _ => Value::Object(Default::default()),
        };
        let vision: VisionConfig =
            serde_json::from_value(vision).map_err(|e| config_error(path, e.to_string()))?;
        vision.check(path)?;
        let projection_dim = match value.get("projection_dim") {
            None | Some(Value::Null) => 512,
            Some(v) => v
                .as_i64()
                .filter(|d| *d > 0)
                .ok_or_else(|| config_error(path, format!("projection_dim {v}")))?,
        };
        Ok(Self {
            vision,
            projection_dim,
        })
    }
}

/// Resampling filters of PIL that the preprocessor supports (`resample` in the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// PIL `BILINEAR` (2).
    Bilinear,
    /// PIL `BICUBIC` (3), what CLIP uses.
    Bicubic,
}

/// The resize target of `CLIPImageProcessor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeTo {
    /// Shortest side to this length, the other side `int(len * long / short)`.
    ShortestEdge(u32),
    /// Exactly this size.
    Exact {
        /// Height.
        height: u32,
        /// Width.
        width: u32,
    },
}

/// `feature_extractor/preprocessor_config.json`, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessorConfig {
    /// Resize target, when `do_resize`.
    pub resize: Option<ResizeTo>,
    /// Resampling filter of the resize.
    pub resample: Resample,
    /// Center-crop size `(height, width)`, when `do_center_crop`.
    pub crop: Option<(u32, u32)>,
    /// Multiplier after cropping, when `do_rescale` (1/255).
    pub rescale: Option<f64>,
    /// Per-channel mean and std, when `do_normalize`.
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

impl PreprocessorConfig {
    /// Reads a `CLIPImageProcessor` config (also the legacy `CLIPFeatureExtractor` form with
    /// integer `size` and `crop_size`, as SD-1.5 ships it).
    pub fn read(path: &Path) -> Result<Self, SafetyError> {
        Self::from_value(&read_value(path)?, path)
    }

    pub(crate) fn from_value(value: &Value, path: &Path) -> Result<Self, SafetyError> {
        let err = |m: String| config_error(path, m);
        let flag = |key: &str| -> Result<bool, SafetyError> {
            match value.get(key) {
                None | Some(Value::Null) => Ok(true),
                Some(v) => v.as_bool().ok_or_else(|| err(format!("{key}: {v}"))),
            }
        };
        let side = |v: &Value, what: &str| -> Result<u32, SafetyError> {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| err(format!("{what}: {v}")))
        };
        let resize = if flag("do_resize")? {
            Some(match value.get("size") {
                None | Some(Value::Null) => ResizeTo::ShortestEdge(224),
                Some(v @ Value::Number(_)) => ResizeTo::ShortestEdge(side(v, "size")?),
                Some(Value::Object(map)) => {
                    if map.get("longest_edge").is_some_and(|v| !v.is_null()) {
                        return Err(err("size.longest_edge is not supported".into()));
                    }
                    match (
                        map.get("shortest_edge"),
                        map.get("height"),
                        map.get("width"),
                    ) {
                        (Some(s), _, _) if !s.is_null() => {
                            ResizeTo::ShortestEdge(side(s, "size.shortest_edge")?)
                        }
                        (_, Some(h), Some(w)) => ResizeTo::Exact {
                            height: side(h, "size.height")?,
                            width: side(w, "size.width")?,
                        },
                        _ => return Err(err(format!("size: {}", Value::Object(map.clone())))),
                    }
                }
                Some(v) => return Err(err(format!("size: {v}"))),
            })
        } else {
            None
        };
        let resample = match value.get("resample") {
            None | Some(Value::Null) => Resample::Bicubic,
            Some(v) => match v.as_u64() {
                Some(3) => Resample::Bicubic,
                Some(2) => Resample::Bilinear,
                _ => {
                    return Err(err(format!(
                        "resample {v}: only PIL BICUBIC (3) and BILINEAR (2) are supported"
                    )));
                }
            },
        };
        let crop = if flag("do_center_crop")? {
            Some(match value.get("crop_size") {
                None | Some(Value::Null) => (224, 224),
                Some(v @ Value::Number(_)) => {
                    let s = side(v, "crop_size")?;
                    (s, s)
                }
                Some(Value::Object(map)) => match (map.get("height"), map.get("width")) {
                    (Some(h), Some(w)) => {
                        (side(h, "crop_size.height")?, side(w, "crop_size.width")?)
                    }
                    _ => return Err(err("crop_size needs height and width".into())),
                },
                Some(v) => return Err(err(format!("crop_size: {v}"))),
            })
        } else {
            None
        };
        let rescale = if flag("do_rescale")? {
            Some(match value.get("rescale_factor") {
                None | Some(Value::Null) => 1.0 / 255.0,
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| err(format!("rescale_factor: {v}")))?,
            })
        } else {
            None
        };
        let triple = |key: &str, default: [f64; 3]| -> Result<[f32; 3], SafetyError> {
            let values = match value.get(key) {
                None | Some(Value::Null) => default.to_vec(),
                Some(Value::Number(n)) => vec![n.as_f64().unwrap_or(f64::NAN); 3],
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| v.as_f64().ok_or_else(|| err(format!("{key}: {v}"))))
                    .collect::<Result<_, _>>()?,
                Some(v) => return Err(err(format!("{key}: {v}"))),
            };
            match values.as_slice() {
                // numpy converts the Python floats to the image's float32.
                &[a, b, c] if [a, b, c].iter().all(|x| x.is_finite()) => {
                    Ok([a as f32, b as f32, c as f32])
                }
                _ => Err(err(format!("{key}: 3 finite values expected"))),
            }
        };
        let normalize = if flag("do_normalize")? {
            let std = triple("image_std", CLIP_STD)?;
            if std.contains(&0.0) {
                return Err(err("image_std contains 0".into()));
            }
            Some((triple("image_mean", CLIP_MEAN)?, std))
        } else {
            None
        };
        Ok(Self {
            resize,
            resample,
            crop,
            rescale,
            normalize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_vision_config_dict_wins_with_defaults() {
        let value = serde_json::json!({
            "projection_dim": 768,
            "vision_config": {"hidden_size": 1, "patch_size": 7},
            "vision_config_dict": {"hidden_size": 1024, "intermediate_size": 4096,
                "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14}
        });
        let c = CheckerConfig::from_value(&value, Path::new("c.json")).expect("valid");
        assert_eq!(c.projection_dim, 768);
        assert_eq!(c.vision.hidden_size, 1024);
        assert_eq!(c.vision.patch_size, 14);
        assert_eq!(c.vision.image_size, 224);
        assert_eq!(c.vision.num_positions(), 257);
    }

    #[test]
    fn bad_architectures_are_refused() {
        for vision in [
            serde_json::json!({"hidden_size": 30, "num_attention_heads": 4}),
            serde_json::json!({"image_size": 30, "patch_size": 4}),
            serde_json::json!({"hidden_act": "relu"}),
        ] {
            let value = serde_json::json!({"vision_config": vision});
            assert!(CheckerConfig::from_value(&value, Path::new("c.json")).is_err());
        }
    }

    #[test]
    fn legacy_feature_extractor_form() {
        let value = serde_json::json!({
            "crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
            "feature_extractor_type": "CLIPFeatureExtractor", "resample": 3, "size": 224
        });
        let p = PreprocessorConfig::from_value(&value, Path::new("p.json")).expect("valid");
        assert_eq!(p.resize, Some(ResizeTo::ShortestEdge(224)));
        assert_eq!(p.crop, Some((224, 224)));
        assert_eq!(p.rescale, Some(1.0 / 255.0));
        assert_eq!(p.resample, Resample::Bicubic);
        let bad = serde_json::json!({"resample": 1});
        assert!(PreprocessorConfig::from_value(&bad, Path::new("p.json")).is_err());
    }
}
