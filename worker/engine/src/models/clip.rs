//! The CLIP text encoder (transformers `CLIPTextModel`): token and position embeddings, causal
//! pre-norm transformer layers, final layer norm. Its `last_hidden_state` conditions the UNet.

use tch::{Kind, Tensor};

use crate::EngineError;
use crate::config::ClipTextConfig;
use crate::models::layers::{LayerNorm, Linear};
use crate::weights::Weights;

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

/// The text encoder.
#[derive(Debug)]
pub struct ClipTextModel {
    config: ClipTextConfig,
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
}

impl ClipTextModel {
    pub fn load(w: &Weights, config: &ClipTextConfig) -> Result<Self, EngineError> {
        config.check()?;
        // SD-1.5's published file names tensors `text_model.*`; transformers 5 saves them
        // without the prefix. Both load, as they do in transformers.
        let t = if w.contains("text_model.final_layer_norm.weight") {
            w.sub("text_model")
        } else {
            w.clone()
        };
        let (hidden, eps) = (config.hidden_size, config.layer_norm_eps);
        let emb = t.sub("embeddings");
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = t.sub("encoder").sub("layers").sub(i);
                let a = l.sub("self_attn");
                EncoderLayer {
                    layer_norm1: LayerNorm::load(&l.sub("layer_norm1"), hidden, eps),
                    q_proj: Linear::load(&a.sub("q_proj"), hidden, hidden, true),
                    k_proj: Linear::load(&a.sub("k_proj"), hidden, hidden, true),
                    v_proj: Linear::load(&a.sub("v_proj"), hidden, hidden, true),
                    out_proj: Linear::load(&a.sub("out_proj"), hidden, hidden, true),
                    layer_norm2: LayerNorm::load(&l.sub("layer_norm2"), hidden, eps),
                    fc1: Linear::load(
                        &l.sub("mlp").sub("fc1"),
                        hidden,
                        config.intermediate_size,
                        true,
                    ),
                    fc2: Linear::load(
                        &l.sub("mlp").sub("fc2"),
                        config.intermediate_size,
                        hidden,
                        true,
                    ),
                }
            })
            .collect();
        Ok(Self {
            config: config.clone(),
            token_embedding: emb
                .sub("token_embedding")
                .get("weight", &[config.vocab_size, hidden]),
            position_embedding: emb
                .sub("position_embedding")
                .get("weight", &[config.max_position_embeddings, hidden]),
            layers,
            final_layer_norm: LayerNorm::load(&t.sub("final_layer_norm"), hidden, eps),
        })
    }

    /// Names a checkpoint may carry that are buffers, not weights.
    pub const IGNORABLE: &'static [&'static str] = &[
        "text_model.embeddings.position_ids",
        "embeddings.position_ids",
    ];

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    fn activation(&self, x: &Tensor) -> Tensor {
        match self.config.hidden_act.as_str() {
            "gelu" => x.gelu("none"),
            // quick_gelu: x * sigmoid(1.702 x)
            _ => x * (x * 1.702).sigmoid(),
        }
    }

    /// `ids` `[B, T]` (int64) to `last_hidden_state` `[B, T, hidden]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor, EngineError> {
        let size = ids.size();
        let (b, len) = (size[0], size[1]);
        if len > self.config.max_position_embeddings {
            return Err(EngineError::InvalidInput(format!(
                "{len} tokens, more than the text encoder's {} positions",
                self.config.max_position_embeddings
            )));
        }
        let heads = self.config.num_attention_heads;
        let hidden = self.config.hidden_size;
        let positions = self.position_embedding.narrow(0, 0, len).unsqueeze(0);
        let mut x = self
            .token_embedding
            .f_index_select(0, &ids.view([-1]).to_kind(Kind::Int64))?
            .view([b, len, hidden])
            + positions;
        for layer in &self.layers {
            let h = layer.layer_norm1.forward(&x);
            let split = |t: Tensor| t.view([b, len, heads, hidden / heads]).transpose(1, 2);
            let q = split(layer.q_proj.forward(&h));
            let k = split(layer.k_proj.forward(&h));
            let v = split(layer.v_proj.forward(&h));
            let attn = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                None::<Tensor>,
                0.0,
                true,
                None,
                false,
            );
            let attn = attn.transpose(1, 2).reshape([b, len, hidden]);
            x += layer.out_proj.forward(&attn);
            let h = layer.layer_norm2.forward(&x);
            x = &x + layer.fc2.forward(&self.activation(&layer.fc1.forward(&h)));
        }
        Ok(self.final_layer_norm.forward(&x))
    }
}
