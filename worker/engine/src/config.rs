//! Architecture configs read from a diffusers model folder's `config.json` files. Every size the
//! models use comes from here; nothing is hard-coded for SD-1.5. Unknown keys are ignored (real
//! configs carry many that do not change the architecture); values this engine cannot run are
//! refused by [`UNetConfig::check`] and friends, naming the key.

use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::EngineError;

/// Reads and parses a JSON config file, naming the file in errors.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, EngineError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EngineError::Model(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| EngineError::Model(format!("{}: {e}", path.display())))
}

/// An int or a per-block list, as diffusers allows for head counts.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock {
    /// The same value for every block.
    All(i64),
    /// One value per down block (up blocks use the list reversed).
    Each(Vec<i64>),
}

impl PerBlock {
    /// The value for down block `index` of `count`.
    pub fn for_block(&self, index: usize, count: usize) -> Result<i64, EngineError> {
        match self {
            Self::All(v) => Ok(*v),
            Self::Each(list) if list.len() == count => Ok(list[index]),
            Self::Each(list) => Err(EngineError::Model(format!(
                "per-block list {list:?} has {} entries for {count} blocks",
                list.len()
            ))),
        }
    }
}

fn default_groups() -> i64 {
    32
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_one() -> i64 {
    1
}
fn default_act() -> String {
    "silu".into()
}
fn default_mid_block() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn default_per_block_one() -> PerBlock {
    PerBlock::All(1)
}
fn default_three() -> i64 {
    3
}

/// `unet/config.json` (UNet2DConditionModel).
#[derive(Clone, Debug, Deserialize)]
pub struct UNetConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub block_out_channels: Vec<i64>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    /// Absent means diffusers' default `UNetMidBlock2DCrossAttn`; `null` means no mid block.
    #[serde(default = "default_mid_block")]
    pub mid_block_type: Option<String>,
    pub layers_per_block: i64,
    /// Legacy naming: for SD-1.x configs this is the number of heads.
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    pub cross_attention_dim: i64,
    #[serde(default = "default_groups")]
    pub norm_num_groups: i64,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: i64,
    #[serde(default)]
    pub sample_size: Option<i64>,
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Transformer blocks per attention, for every block or per down block (up blocks use the
    /// list reversed, the mid block its last entry).
    #[serde(default = "default_per_block_one")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default = "default_one")]
    pub downsample_padding: i64,
    #[serde(default = "default_act")]
    pub act_fn: String,
    /// A bool or a per-block list of bools; only all-false is implemented.
    #[serde(default)]
    pub only_cross_attention: Value,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default)]
    pub resnet_time_scale_shift: Option<String>,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub time_embedding_type: Option<String>,
    #[serde(default)]
    pub mid_block_scale_factor: Option<f64>,
    // diffusers options this engine implements only at their defaults; each is refused by
    // `UNetConfig::check` when set otherwise, naming it.
    #[serde(default = "default_three")]
    pub conv_in_kernel: i64,
    #[serde(default = "default_three")]
    pub conv_out_kernel: i64,
    #[serde(default)]
    pub time_cond_proj_dim: Option<i64>,
    #[serde(default)]
    pub encoder_hid_dim: Option<i64>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub attention_type: Option<String>,
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<i64>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub time_embedding_dim: Option<i64>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default)]
    pub class_embeddings_concat: bool,
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    #[serde(default)]
    pub resnet_out_scale_factor: Option<f64>,
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<Value>,
}

impl UNetConfig {
    /// Heads of down block `index` (diffusers: `num_attention_heads or attention_head_dim`).
    pub fn heads(&self, index: usize) -> Result<i64, EngineError> {
        let count = self.block_out_channels.len();
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .for_block(index, count)
    }

    /// Transformer blocks in each attention of down block `index` (and the up block at the
    /// same depth; the mid block uses the last).
    pub fn transformer_layers(&self, index: usize) -> Result<i64, EngineError> {
        self.transformer_layers_per_block
            .for_block(index, self.block_out_channels.len())
    }

    /// Refuses configurations this engine does not implement, naming the key.
    pub fn check(&self) -> Result<(), EngineError> {
        let refuse = |key: &str, value: &dyn std::fmt::Debug| {
            Err(EngineError::Model(format!(
                "unet config: unsupported {key} = {value:?}"
            )))
        };
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return refuse(
                "block counts (block_out_channels/down_block_types/up_block_types)",
                &n,
            );
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                return refuse("down_block_types", t);
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                return refuse("up_block_types", t);
            }
        }
        match self.mid_block_type.as_deref() {
            None | Some("UNetMidBlock2DCrossAttn") => {}
            Some(other) => return refuse("mid_block_type", &other),
        }
        if self.act_fn != "silu" {
            return refuse("act_fn", &self.act_fn);
        }
        let only_cross = match &self.only_cross_attention {
            Value::Null | Value::Bool(false) => false,
            Value::Array(list) => list.iter().any(|v| v != &Value::Bool(false)),
            _ => true,
        };
        if only_cross {
            return refuse("only_cross_attention", &self.only_cross_attention);
        }
        if !matches!(
            self.resnet_time_scale_shift.as_deref(),
            None | Some("default")
        ) {
            return refuse("resnet_time_scale_shift", &self.resnet_time_scale_shift);
        }
        if self.class_embed_type.is_some() {
            return refuse("class_embed_type", &self.class_embed_type);
        }
        if self.addition_embed_type.is_some() {
            return refuse("addition_embed_type", &self.addition_embed_type);
        }
        if !matches!(
            self.time_embedding_type.as_deref(),
            None | Some("positional")
        ) {
            return refuse("time_embedding_type", &self.time_embedding_type);
        }
        if self.mid_block_scale_factor.is_some_and(|f| f != 1.0) {
            return refuse("mid_block_scale_factor", &self.mid_block_scale_factor);
        }
        if self.center_input_sample {
            return refuse("center_input_sample", &true);
        }
        if self.mid_block_only_cross_attention == Some(true) {
            return refuse("mid_block_only_cross_attention", &true);
        }
        if self.mid_block_type.is_none() {
            return refuse("mid_block_type", &"null (no mid block)");
        }
        let defaults: [(&str, bool, &dyn std::fmt::Debug); 16] = [
            (
                "conv_in_kernel",
                self.conv_in_kernel == 3,
                &self.conv_in_kernel,
            ),
            (
                "conv_out_kernel",
                self.conv_out_kernel == 3,
                &self.conv_out_kernel,
            ),
            (
                "time_cond_proj_dim",
                self.time_cond_proj_dim.is_none(),
                &self.time_cond_proj_dim,
            ),
            (
                "encoder_hid_dim",
                self.encoder_hid_dim.is_none(),
                &self.encoder_hid_dim,
            ),
            (
                "encoder_hid_dim_type",
                self.encoder_hid_dim_type.is_none(),
                &self.encoder_hid_dim_type,
            ),
            (
                "dual_cross_attention",
                !self.dual_cross_attention,
                &self.dual_cross_attention,
            ),
            (
                "attention_type",
                matches!(self.attention_type.as_deref(), None | Some("default")),
                &self.attention_type,
            ),
            (
                "cross_attention_norm",
                self.cross_attention_norm.is_none(),
                &self.cross_attention_norm,
            ),
            (
                "num_class_embeds",
                self.num_class_embeds.is_none(),
                &self.num_class_embeds,
            ),
            (
                "timestep_post_act",
                self.timestep_post_act.is_none(),
                &self.timestep_post_act,
            ),
            (
                "time_embedding_dim",
                self.time_embedding_dim.is_none(),
                &self.time_embedding_dim,
            ),
            (
                "time_embedding_act_fn",
                self.time_embedding_act_fn.is_none(),
                &self.time_embedding_act_fn,
            ),
            (
                "class_embeddings_concat",
                !self.class_embeddings_concat,
                &self.class_embeddings_concat,
            ),
            (
                "resnet_skip_time_act",
                !self.resnet_skip_time_act,
                &self.resnet_skip_time_act,
            ),
            (
                "resnet_out_scale_factor",
                self.resnet_out_scale_factor.is_none_or(|f| f == 1.0),
                &self.resnet_out_scale_factor,
            ),
            (
                "reverse_transformer_layers_per_block",
                self.reverse_transformer_layers_per_block.is_none(),
                &self.reverse_transformer_layers_per_block,
            ),
        ];
        if let Some((key, _, value)) = defaults.iter().find(|(_, ok, _)| !ok) {
            return refuse(key, value);
        }
        if let Some(heads) = &self.num_attention_heads {
            // diffusers' UNet2DConditionModel raises on it too (the SD-1.x naming issue).
            return refuse("num_attention_heads (diffusers refuses it as well)", heads);
        }
        // Heads only matter where there is attention: a cross-attention down block, the up block
        // at the same depth, or the mid block (the last depth). Channels need not be a multiple
        // of the heads: the attention then works on heads * (channels / heads) features.
        let has_attention = |i: usize| {
            self.down_block_types[i] == "CrossAttnDownBlock2D"
                || self.up_block_types[n - 1 - i] == "CrossAttnUpBlock2D"
                || i == n - 1
        };
        for i in 0..n {
            let channels = self.block_out_channels[i];
            if channels <= 0 || channels % self.norm_num_groups != 0 {
                return refuse("norm_num_groups for block channels", &(i, channels));
            }
            if has_attention(i) {
                let heads = self.heads(i)?;
                if heads <= 0 || heads > channels {
                    return refuse("attention heads for block channels", &(i, channels, heads));
                }
                if self.transformer_layers(i)? < 1 {
                    return refuse(
                        "transformer_layers_per_block",
                        &self.transformer_layers_per_block,
                    );
                }
            }
        }
        Ok(())
    }
}

/// `vae/config.json` (AutoencoderKL).
#[derive(Clone, Debug, Deserialize)]
pub struct VaeConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub latent_channels: i64,
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: i64,
    #[serde(default = "default_groups")]
    pub norm_num_groups: i64,
    #[serde(default = "default_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
    #[serde(default)]
    pub sample_size: Option<i64>,
    #[serde(default = "default_act")]
    pub act_fn: String,
}

fn default_scaling() -> f64 {
    0.18215
}

impl VaeConfig {
    /// Pixels per latent along each axis: `2 ** (len(block_out_channels) - 1)`.
    pub fn scale_factor(&self) -> i64 {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }

    /// Refuses configurations this engine does not implement.
    pub fn check(&self) -> Result<(), EngineError> {
        if self.block_out_channels.is_empty() {
            return Err(EngineError::Model(
                "vae config: empty block_out_channels".into(),
            ));
        }
        if self.act_fn != "silu" {
            return Err(EngineError::Model(format!(
                "vae config: unsupported act_fn {}",
                self.act_fn
            )));
        }
        if self.shift_factor.is_some_and(|s| s != 0.0) {
            return Err(EngineError::Model(
                "vae config: shift_factor is not supported".into(),
            ));
        }
        Ok(())
    }
}

/// `text_encoder/config.json` (transformers CLIPTextConfig).
#[derive(Clone, Debug, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub max_position_embeddings: i64,
    #[serde(default = "default_quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "default_norm_eps")]
    pub layer_norm_eps: f64,
}

fn default_quick_gelu() -> String {
    "quick_gelu".into()
}

impl ClipTextConfig {
    pub fn check(&self) -> Result<(), EngineError> {
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(EngineError::Model(format!(
                "text_encoder config: hidden_size {} not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(EngineError::Model(format!(
                "text_encoder config: unsupported hidden_act {}",
                self.hidden_act
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_head_naming_and_per_block_lists() {
        let config: UNetConfig = serde_json::from_str(
            r#"{"in_channels":9,"out_channels":4,"block_out_channels":[16,16,32],
                "down_block_types":["CrossAttnDownBlock2D","CrossAttnDownBlock2D","DownBlock2D"],
                "up_block_types":["UpBlock2D","CrossAttnUpBlock2D","CrossAttnUpBlock2D"],
                "layers_per_block":2,"attention_head_dim":[1,2,4],"cross_attention_dim":48,
                "norm_num_groups":8,"future_key":123}"#,
        )
        .expect("parse");
        assert_eq!(config.heads(2).ok(), Some(4));
        config.check().expect("supported");
        let bad = UNetConfig {
            act_fn: "gelu".into(),
            ..config
        };
        assert!(bad.check().expect_err("act").to_string().contains("act_fn"));
    }

    #[test]
    fn vae_scale_factor_follows_block_count() {
        let config: VaeConfig = serde_json::from_str(
            r#"{"in_channels":3,"out_channels":3,"latent_channels":4,
                "block_out_channels":[8,16,32],"layers_per_block":1}"#,
        )
        .expect("parse");
        assert_eq!(config.scale_factor(), 4);
        assert_eq!(config.scaling_factor, 0.18215);
    }
}
