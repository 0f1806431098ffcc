//! CLIP (transformers `modeling_clip`): [`ClipEncoder`], the stack of pre-norm transformer layers
//! both CLIP towers share, and the text encoder built on it ([`ClipTextModel`]: token and
//! position embeddings, causal encoder, final layer norm; its `last_hidden_state` conditions the
//! UNet). The safety checker's vision tower (`inpaint-safety-checker`) runs the same encoder with
//! full attention.

use tch::{Kind, Tensor};

use crate::EngineError;
use crate::config::ClipTextConfig;
use crate::models::layers::{LayerNorm, Linear};
use crate::weights::Weights;

/// The activation between an MLP's two projections (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`: CLIP's own (`quick_gelu`).
    QuickGelu,
    /// The exact (erf) GELU (`gelu`).
    Gelu,
}

impl Activation {
    /// The activation a config's `hidden_act` names, `None` for one no CLIP model here uses.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Self::QuickGelu),
            "gelu" => Some(Self::Gelu),
            _ => None,
        }
    }

    fn forward(self, x: &Tensor) -> Result<Tensor, EngineError> {
        Ok(match self {
            Self::Gelu => x.f_gelu("none")?,
            Self::QuickGelu => x.f_mul(&x.f_mul_scalar(1.702)?.f_sigmoid()?)?,
        })
    }
}

/// Which earlier and later positions a token attends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionMask {
    /// Only itself and earlier positions (the text tower).
    Causal,
    /// Every position (the vision tower).
    Full,
}

/// The architecture of a [`ClipEncoder`], read from a text or vision config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncoderSpec {
    /// Width of the transformer.
    pub hidden_size: i64,
    /// Width of the MLP.
    pub intermediate_size: i64,
    /// Attention heads per layer (a divisor of `hidden_size`).
    pub num_attention_heads: i64,
    /// Number of layers.
    pub num_hidden_layers: i64,
    /// Epsilon of both layer norms of every layer.
    pub layer_norm_eps: f64,
    /// The MLP's activation.
    pub activation: Activation,
    /// Causal (text) or full (vision) attention.
    pub mask: AttentionMask,
}

/// One pre-norm transformer layer (`CLIPEncoderLayer`): `x + attn(ln1(x))`, then
/// `x + mlp(ln2(x))`. Weight names are transformers': `layer_norm1`, `self_attn.{q,k,v,out}_proj`,
/// `layer_norm2`, `mlp.fc1`, `mlp.fc2`.
#[derive(Debug)]
pub struct ClipEncoderLayer {
    spec: EncoderSpec,
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl ClipEncoderLayer {
    /// Loads the layer from its scope (`encoder.layers.{i}`).
    pub fn load(w: &Weights, spec: &EncoderSpec) -> Self {
        let (hidden, inter, eps) = (
            spec.hidden_size,
            spec.intermediate_size,
            spec.layer_norm_eps,
        );
        let attn = w.sub("self_attn");
        let mlp = w.sub("mlp");
        Self {
            spec: *spec,
            layer_norm1: LayerNorm::load(&w.sub("layer_norm1"), hidden, eps),
            q_proj: Linear::load(&attn.sub("q_proj"), hidden, hidden, true),
            k_proj: Linear::load(&attn.sub("k_proj"), hidden, hidden, true),
            v_proj: Linear::load(&attn.sub("v_proj"), hidden, hidden, true),
            out_proj: Linear::load(&attn.sub("out_proj"), hidden, hidden, true),
            layer_norm2: LayerNorm::load(&w.sub("layer_norm2"), hidden, eps),
            fc1: Linear::load(&mlp.sub("fc1"), hidden, inter, true),
            fc2: Linear::load(&mlp.sub("fc2"), inter, hidden, true),
        }
    }

    /// `x` `[B, T, hidden]` to the layer's output of the same shape.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        let (b, len, hidden) = x.size3()?;
        let heads = self.spec.num_attention_heads;
        if hidden != self.spec.hidden_size || heads <= 0 || hidden % heads != 0 {
            return Err(EngineError::InvalidInput(format!(
                "CLIP layer input of width {hidden}, the layer has {} in {heads} heads",
                self.spec.hidden_size
            )));
        }
        let h = self.layer_norm1.f_forward(x)?;
        let split = |t: Tensor| t.f_view([b, len, heads, hidden / heads])?.f_transpose(1, 2);
        let q = split(self.q_proj.f_forward(&h)?)?;
        let k = split(self.k_proj.f_forward(&h)?)?;
        let v = split(self.v_proj.f_forward(&h)?)?;
        let causal = self.spec.mask == AttentionMask::Causal;
        let attn = Tensor::f_scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            causal,
            None,
            false,
        )?
        .f_transpose(1, 2)?
        .f_reshape([b, len, hidden])?;
        let x = x.f_add(&self.out_proj.f_forward(&attn)?)?;
        let h = self.layer_norm2.f_forward(&x)?;
        let mlp = self
            .fc2
            .f_forward(&self.spec.activation.forward(&self.fc1.f_forward(&h)?)?)?;
        Ok(x.f_add(&mlp)?)
    }
}

/// The layer stack (`CLIPEncoder`) of either tower.
#[derive(Debug)]
pub struct ClipEncoder {
    layers: Vec<ClipEncoderLayer>,
}

impl ClipEncoder {
    /// Loads `layers.0` .. `layers.{n-1}` from the `encoder` scope.
    pub fn load(w: &Weights, spec: &EncoderSpec) -> Self {
        let layers = w.sub("layers");
        Self {
            layers: (0..spec.num_hidden_layers)
                .map(|i| ClipEncoderLayer::load(&layers.sub(i), spec))
                .collect(),
        }
    }

    /// `x` `[B, T, hidden]` through every layer.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        let mut x = x.shallow_clone();
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }
}

/// The text encoder.
#[derive(Debug)]
pub struct ClipTextModel {
    config: ClipTextConfig,
    token_embedding: Tensor,
    position_embedding: Tensor,
    encoder: ClipEncoder,
    final_layer_norm: LayerNorm,
}

impl ClipTextModel {
    pub fn load(w: &Weights, config: &ClipTextConfig) -> Result<Self, EngineError> {
        config.check()?;
        let activation = Activation::from_name(&config.hidden_act).ok_or_else(|| {
            EngineError::Model(format!(
                "text_encoder config: unsupported hidden_act {}",
                config.hidden_act
            ))
        })?;
        // SD-1.5's published file names tensors `text_model.*`; transformers 5 saves them
        // without the prefix. Both load, as they do in transformers.
        let t = if w.contains("text_model.final_layer_norm.weight") {
            w.sub("text_model")
        } else {
            w.clone()
        };
        let (hidden, eps) = (config.hidden_size, config.layer_norm_eps);
        let spec = EncoderSpec {
            hidden_size: hidden,
            intermediate_size: config.intermediate_size,
            num_attention_heads: config.num_attention_heads,
            num_hidden_layers: config.num_hidden_layers,
            layer_norm_eps: eps,
            activation,
            mask: AttentionMask::Causal,
        };
        let emb = t.sub("embeddings");
        Ok(Self {
            config: config.clone(),
            token_embedding: emb
                .sub("token_embedding")
                .get("weight", &[config.vocab_size, hidden]),
            position_embedding: emb
                .sub("position_embedding")
                .get("weight", &[config.max_position_embeddings, hidden]),
            encoder: ClipEncoder::load(&t.sub("encoder"), &spec),
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

    /// `ids` `[B, T]` (int64) to `last_hidden_state` `[B, T, hidden]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor, EngineError> {
        let (b, len) = ids.size2()?;
        if len > self.config.max_position_embeddings {
            return Err(EngineError::InvalidInput(format!(
                "{len} tokens, more than the text encoder's {} positions",
                self.config.max_position_embeddings
            )));
        }
        let hidden = self.config.hidden_size;
        let positions = self
            .position_embedding
            .f_narrow(0, 0, len)?
            .f_unsqueeze(0)?;
        let x = self
            .token_embedding
            .f_index_select(0, &ids.f_reshape([-1])?.f_to_kind(Kind::Int64)?)?
            .f_view([b, len, hidden])?
            .f_add(&positions)?;
        let x = self.encoder.forward(&x)?;
        Ok(self.final_layer_norm.f_forward(&x)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;

    use tch::Device;

    use super::*;
    use crate::weights::WeightStore;

    /// One random layer of width 8 (2 heads), in `encoder.layers.0`.
    fn store() -> WeightStore {
        tch::manual_seed(3);
        let randn = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, Device::Cpu));
        let mut tensors = Vec::new();
        let prefix = "layers.0";
        for norm in ["layer_norm1", "layer_norm2"] {
            tensors.push((format!("{prefix}.{norm}.weight"), randn(&[8])));
            tensors.push((format!("{prefix}.{norm}.bias"), randn(&[8])));
        }
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            tensors.push((format!("{prefix}.self_attn.{proj}.weight"), randn(&[8, 8])));
            tensors.push((format!("{prefix}.self_attn.{proj}.bias"), randn(&[8])));
        }
        tensors.push((format!("{prefix}.mlp.fc1.weight"), randn(&[16, 8])));
        tensors.push((format!("{prefix}.mlp.fc1.bias"), randn(&[16])));
        tensors.push((format!("{prefix}.mlp.fc2.weight"), randn(&[8, 16])));
        tensors.push((format!("{prefix}.mlp.fc2.bias"), randn(&[8])));
        WeightStore::from_tensors(
            PathBuf::from("clip.safetensors"),
            tensors,
            Kind::Float,
            Device::Cpu,
        )
    }

    fn spec(activation: Activation, mask: AttentionMask) -> EncoderSpec {
        EncoderSpec {
            hidden_size: 8,
            intermediate_size: 16,
            num_attention_heads: 2,
            num_hidden_layers: 1,
            layer_norm_eps: 1e-5,
            activation,
            mask,
        }
    }

    #[test]
    fn causal_attention_ignores_later_tokens_and_full_attention_does_not() {
        let store = store();
        let causal = ClipEncoder::load(
            &store.root(),
            &spec(Activation::QuickGelu, AttentionMask::Causal),
        );
        let full = ClipEncoder::load(
            &store.root(),
            &spec(Activation::QuickGelu, AttentionMask::Full),
        );
        store.finish(&[]).unwrap();
        let x = Tensor::randn([1, 4, 8], (Kind::Float, Device::Cpu));
        let changed = x.copy();
        let _ = changed.narrow(1, 3, 1).fill_(5.0);
        let first = |encoder: &ClipEncoder, x: &Tensor| encoder.forward(x).unwrap().narrow(1, 0, 3);
        assert!(first(&causal, &x).equal(&first(&causal, &changed)));
        assert!(!first(&full, &x).equal(&first(&full, &changed)));
    }

    #[test]
    fn activations_and_bad_inputs() {
        assert_eq!(
            Activation::from_name("quick_gelu"),
            Some(Activation::QuickGelu)
        );
        assert_eq!(Activation::from_name("gelu"), Some(Activation::Gelu));
        assert_eq!(Activation::from_name("relu"), None);
        let x = Tensor::from_slice(&[-1.0f32, 0.0, 2.0]);
        let quick = Activation::QuickGelu.forward(&x).unwrap();
        let want = Tensor::from_slice(&[
            -1.0f32 / (1.0 + 1.702f32.exp()),
            0.0,
            2.0 / (1.0 + (-3.404f32).exp()),
        ]);
        assert!(quick.allclose(&want, 1e-6, 1e-6, false));
        let store = store();
        let encoder =
            ClipEncoder::load(&store.root(), &spec(Activation::Gelu, AttentionMask::Full));
        // A wrong width or rank is an error, not a panic.
        assert!(
            encoder
                .forward(&Tensor::zeros([1, 4, 6], (Kind::Float, Device::Cpu)))
                .is_err()
        );
        assert!(
            encoder
                .forward(&Tensor::zeros([4, 8], (Kind::Float, Device::Cpu)))
                .is_err()
        );
    }
}
