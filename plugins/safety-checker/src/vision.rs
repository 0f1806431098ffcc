//! The CLIP vision tower (transformers `CLIPVisionModel`): patch embedding (a strided conv
//! without bias), class token, learned position embeddings, `pre_layrnorm`, pre-norm encoder
//! layers with full (non-causal) attention, and `post_layernorm` on the class token, which is the
//! pooled output.

use inpaint_engine::models::layers::{LayerNorm, Linear};
use inpaint_engine::weights::Weights;
use tch::{Kind, Tensor};

use crate::config::VisionConfig;
use crate::error::SafetyError;

#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// The vision tower.
#[derive(Debug)]
pub struct ClipVisionModel {
    config: VisionConfig,
    patch_embedding: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
}

impl ClipVisionModel {
    /// Loads the tower from the scope that holds `embeddings`, `encoder`, `pre_layrnorm` and
    /// `post_layernorm` (`vision_model` in transformers 5 files, `vision_model.vision_model` in
    /// the published SD-1.5 file).
    pub fn load(w: &Weights, config: &VisionConfig) -> Self {
        let (hidden, eps) = (config.hidden_size, config.layer_norm_eps);
        let inter = config.intermediate_size;
        let emb = w.sub("embeddings");
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = w.sub("encoder").sub("layers").sub(i);
                let a = l.sub("self_attn");
                let mlp = l.sub("mlp");
                EncoderLayer {
                    layer_norm1: LayerNorm::load(&l.sub("layer_norm1"), hidden, eps),
                    q_proj: Linear::load(&a.sub("q_proj"), hidden, hidden, true),
                    k_proj: Linear::load(&a.sub("k_proj"), hidden, hidden, true),
                    v_proj: Linear::load(&a.sub("v_proj"), hidden, hidden, true),
                    out_proj: Linear::load(&a.sub("out_proj"), hidden, hidden, true),
                    layer_norm2: LayerNorm::load(&l.sub("layer_norm2"), hidden, eps),
                    fc1: Linear::load(&mlp.sub("fc1"), hidden, inter, true),
                    fc2: Linear::load(&mlp.sub("fc2"), inter, hidden, true),
                }
            })
            .collect();
        let patch = config.patch_size;
        Self {
            config: config.clone(),
            patch_embedding: emb
                .sub("patch_embedding")
                .get("weight", &[hidden, config.num_channels, patch, patch]),
            class_embedding: emb.get("class_embedding", &[hidden]),
            position_embedding: emb
                .sub("position_embedding")
                .get("weight", &[config.num_positions(), hidden]),
            pre_layrnorm: LayerNorm::load(&w.sub("pre_layrnorm"), hidden, eps),
            layers,
            post_layernorm: LayerNorm::load(&w.sub("post_layernorm"), hidden, eps),
        }
    }

    /// The architecture.
    pub fn config(&self) -> &VisionConfig {
        &self.config
    }

    fn activation(&self, x: &Tensor) -> Result<Tensor, SafetyError> {
        Ok(match self.config.hidden_act.as_str() {
            "gelu" => x.f_gelu("none")?,
            // quick_gelu: x * sigmoid(1.702 x)
            _ => x.f_mul(&x.f_mul_scalar(1.702)?.f_sigmoid()?)?,
        })
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
        let heads = c.num_attention_heads;
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
        let mut x = self.pre_layrnorm.forward(&embeddings);
        let len = c.num_positions();
        for layer in &self.layers {
            let h = layer.layer_norm1.forward(&x);
            let split = |t: Tensor| -> Result<Tensor, SafetyError> {
                Ok(t.f_view([b, len, heads, hidden / heads])?
                    .f_transpose(1, 2)?)
            };
            let q = split(layer.q_proj.forward(&h))?;
            let k = split(layer.k_proj.forward(&h))?;
            let v = split(layer.v_proj.forward(&h))?;
            let attn = Tensor::f_scaled_dot_product_attention(
                &q,
                &k,
                &v,
                None::<Tensor>,
                0.0,
                false,
                None,
                false,
            )?;
            let attn = attn.f_transpose(1, 2)?.f_reshape([b, len, hidden])?;
            x = x.f_add(&layer.out_proj.forward(&attn))?;
            let h = layer.layer_norm2.forward(&x);
            let mlp = layer.fc2.forward(&self.activation(&layer.fc1.forward(&h))?);
            x = x.f_add(&mlp)?;
        }
        let class_token = x.f_select(1, 0)?;
        Ok(self.post_layernorm.forward(&class_token))
    }

    /// The element kind of the weights.
    pub fn kind(&self) -> Kind {
        self.patch_embedding.kind()
    }
}
