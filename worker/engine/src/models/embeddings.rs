//! Sinusoidal timestep embedding and its MLP (diffusers `embeddings.get_timestep_embedding`,
//! `TimestepEmbedding`).

use tch::{Kind, Tensor};

use crate::models::layers::Linear;
use crate::weights::Weights;

/// `[B]` timesteps to `[B, dim]` sinusoids, in f32 as diffusers computes them:
/// `exp(-ln(10000) * i / (half - shift))`, then sin/cos, cos first when `flip_sin_to_cos`.
pub fn timestep_embedding(
    timesteps: &Tensor,
    dim: i64,
    flip_sin_to_cos: bool,
    shift: f64,
) -> Tensor {
    let half = dim / 2;
    let device = timesteps.device();
    let exponent = Tensor::arange(half, (Kind::Float, device)) * (-(10000f64.ln()));
    let exponent = exponent / (half as f64 - shift);
    let args = timesteps.to_kind(Kind::Float).unsqueeze(1) * exponent.exp().unsqueeze(0);
    let (sin, cos) = (args.sin(), args.cos());
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], -1)
    } else {
        Tensor::cat(&[sin, cos], -1)
    };
    if dim % 2 == 1 {
        emb.constant_pad_nd([0, 1, 0, 0])
    } else {
        emb
    }
}

/// `linear_1`, SiLU, `linear_2`.
#[derive(Debug)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn load(w: &Weights, input: i64, output: i64) -> Self {
        Self {
            linear_1: Linear::load(&w.sub("linear_1"), input, output, true),
            linear_2: Linear::load(&w.sub("linear_2"), output, output, true),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.linear_2.forward(&self.linear_1.forward(x).silu())
    }
}
