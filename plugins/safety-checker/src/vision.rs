//! The CLIP vision tower (transformers `CLIPVisionModel`): patch embedding (a strided conv
//! without bias), class token, learned position embeddings, `pre_layrnorm`, the pre-norm encoder
//! layers with full (non-causal) attention (the engine's [`ClipEncoder`], which the text encoder
//! runs causally), and `post_layernorm` on the class token, which is the pooled output.

use inpaint_engine::models::clip::{Activation, AttentionMask, ClipEncoder, EncoderSpec};
use inpaint_engine::models::layers::LayerNorm;
use inpaint_engine::weights::Weights;
use tch::{Kind, Tensor};

use crate::config::VisionConfig;
use crate::error::SafetyError;

/// The vision tower.
#[derive(Debug)]
pub struct ClipVisionModel {
    config: VisionConfig,
    patch_embedding: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    encoder: ClipEncoder,
    post_layernorm: LayerNorm,
}

impl ClipVisionModel {
    /// Loads the tower from the scope that holds `embeddings`, `encoder`, `pre_layrnorm` and
    /// `post_layernorm` (`vision_model` in transformers 5 files, `vision_model.vision_model` in
    /// the published SD-1.5 file).
    pub fn load(w: &Weights, config: &VisionConfig) -> Result<Self, SafetyError> {
        let (hidden, eps) = (config.hidden_size, config.layer_norm_eps);
        let activation = Activation::from_name(&config.hidden_act).ok_or_else(|| {
            SafetyError::Unsupported(format!("vision hidden_act {:?}", config.hidden_act))
        })?;
        let spec = EncoderSpec {
            hidden_size: hidden,
            intermediate_size: config.intermediate_size,
            num_attention_heads: config.num_attention_heads,
            num_hidden_layers: config.num_hidden_layers,
            layer_norm_eps: eps,
            activation,
            mask: AttentionMask::Full,
        };
        let emb = w.sub("embeddings");
        let patch = config.patch_size;
        Ok(Self {
            config: config.clone(),
            patch_embedding: emb
                .sub("patch_embedding")
                .get("weight", &[hidden, config.num_channels, patch, patch]),
            class_embedding: emb.get("class_embedding", &[hidden]),
            position_embedding: emb
                .sub("position_embedding")
                .get("weight", &[config.num_positions(), hidden]),
            pre_layrnorm: LayerNorm::load(&w.sub("pre_layrnorm"), hidden, eps),
            encoder: ClipEncoder::load(&w.sub("encoder"), &spec),
            post_layernorm: LayerNorm::load(&w.sub("post_layernorm"), hidden, eps),
        })
    }

    /// The architecture.
    pub fn config(&self) -> &VisionConfig {
        &self.config
    }

    /// `pixels` `[B, C, S, S]` (in the weights' kind and device) to the pooled output
    /// `[B, hidden]`.
    pub fn pooled(&self, pixels: &Tensor) -> Result<Tensor, SafetyError> {
        let c = &self.config;
        let size = pixels.size();
        if size.len() != 4 || size[1..] != [c.num_channels, c.image_size, c.image_size] {
            return Err(SafetyError::InvalidInput(format!(
                "pixel batch of shape {size:?}, the vision tower expects [B, {}, {}, {}]",
                c.num_channels, c.image_size, c.image_size
            )));
        }
        let b = size[0];
        let hidden = c.hidden_size;
        let patch = c.patch_size;
        let patches = pixels
            .f_conv2d(
                &self.patch_embedding,
                None::<Tensor>,
                [patch, patch],
                [0, 0],
                [1, 1],
                1,
            )?
            .f_flatten(2, -1)?
            .f_transpose(1, 2)?;
        let class = self
            .class_embedding
            .f_view([1, 1, hidden])?
            .f_expand([b, 1, hidden], false)?;
        let embeddings =
            Tensor::f_cat(&[class, patches], 1)?.f_add(&self.position_embedding.f_unsqueeze(0)?)?;
        let x = self
            .encoder
            .forward(&self.pre_layrnorm.f_forward(&embeddings)?)?;
        let class_token = x.f_select(1, 0)?;
        Ok(self.post_layernorm.f_forward(&class_token)?)
    }

    /// The element kind of the weights.
    pub fn kind(&self) -> Kind {
        self.patch_embedding.kind()
    }
}
