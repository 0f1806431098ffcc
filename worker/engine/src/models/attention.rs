//! Attention (diffusers `attention_processor.Attention` with the SDPA processor), the VAE's
//! spatial self-attention, `BasicTransformerBlock` and `Transformer2DModel`.

use tch::Tensor;

use crate::models::layers::{Conv2d, GroupNorm, LayerNorm, Linear};
use crate::weights::Weights;

/// Multi-head attention with q/k/v projections (no bias) and an output projection (bias).
#[derive(Debug)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: i64,
}

impl Attention {
    /// `query_dim` channels in, `context_dim` channels for keys/values (None: self-attention).
    pub fn load(
        w: &Weights,
        query_dim: i64,
        context_dim: Option<i64>,
        heads: i64,
        head_dim: i64,
        qkv_bias: bool,
    ) -> Self {
        let inner = heads * head_dim;
        let context = context_dim.unwrap_or(query_dim);
        Self {
            to_q: Linear::load(&w.sub("to_q"), query_dim, inner, qkv_bias),
            to_k: Linear::load(&w.sub("to_k"), context, inner, qkv_bias),
            to_v: Linear::load(&w.sub("to_v"), context, inner, qkv_bias),
            to_out: Linear::load(&w.sub("to_out").sub(0), inner, query_dim, true),
            heads,
        }
    }

    /// `x`: `[B, N, C]`; `context`: `[B, M, Cc]` or None for self-attention.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Tensor {
        let context = context.unwrap_or(x);
        let (b, n) = (x.size()[0], x.size()[1]);
        let split = |t: Tensor| {
            let (len, inner) = (t.size()[1], t.size()[2]);
            t.view([b, len, self.heads, inner / self.heads])
                .transpose(1, 2)
        };
        let q = split(self.to_q.forward(x));
        let k = split(self.to_k.forward(context));
        let v = split(self.to_v.forward(context));
        let out = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        );
        let inner = out.size()[1] * out.size()[3];
        self.to_out
            .forward(&out.transpose(1, 2).reshape([b, n, inner]))
    }
}

/// The VAE mid-block attention: group norm, single-head self-attention over pixels, residual.
#[derive(Debug)]
pub struct SpatialSelfAttention {
    group_norm: GroupNorm,
    attention: Attention,
}

impl SpatialSelfAttention {
    pub fn load(w: &Weights, channels: i64, groups: i64, eps: f64) -> Self {
        Self {
            group_norm: GroupNorm::load(&w.sub("group_norm"), groups, channels, eps),
            attention: Attention::load(w, channels, None, 1, channels, true),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let (b, c, h, w) = (size[0], size[1], size[2], size[3]);
        let normed = self
            .group_norm
            .forward(x)
            .view([b, c, h * w])
            .transpose(1, 2);
        let out = self.attention.forward(&normed, None);
        out.transpose(1, 2).reshape([b, c, h, w]) + x
    }
}

/// GEGLU feed-forward: `proj` to twice the inner width, `x * gelu(gate)`, back down.
#[derive(Debug)]
struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
}

impl FeedForward {
    fn load(w: &Weights, dim: i64) -> Self {
        let inner = dim * 4;
        Self {
            proj_in: Linear::load(&w.sub("net").sub(0).sub("proj"), dim, inner * 2, true),
            proj_out: Linear::load(&w.sub("net").sub(2), inner, dim, true),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let projected = self.proj_in.forward(x);
        let halves = projected.chunk(2, -1);
        self.proj_out
            .forward(&(&halves[0] * halves[1].gelu("none")))
    }
}

/// Self-attention, cross-attention and feed-forward, each pre-normed with a residual.
#[derive(Debug)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn load(w: &Weights, dim: i64, heads: i64, context_dim: i64) -> Self {
        let head_dim = dim / heads;
        Self {
            norm1: LayerNorm::load(&w.sub("norm1"), dim, 1e-5),
            attn1: Attention::load(&w.sub("attn1"), dim, None, heads, head_dim, false),
            norm2: LayerNorm::load(&w.sub("norm2"), dim, 1e-5),
            attn2: Attention::load(
                &w.sub("attn2"),
                dim,
                Some(context_dim),
                heads,
                head_dim,
                false,
            ),
            norm3: LayerNorm::load(&w.sub("norm3"), dim, 1e-5),
            ff: FeedForward::load(&w.sub("ff"), dim),
        }
    }

    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let x = self.attn1.forward(&self.norm1.forward(x), None) + x;
        let x = self.attn2.forward(&self.norm2.forward(&x), Some(context)) + &x;
        self.ff.forward(&self.norm3.forward(&x)) + &x
    }
}

/// Projection in (1×1 conv, or linear for `use_linear_projection`) or out.
#[derive(Debug)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// `Transformer2DModel`: group norm, project in, transformer blocks over pixels, project out,
/// residual.
#[derive(Debug)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

/// Sizes of one `Transformer2DModel`.
#[derive(Clone, Copy, Debug)]
pub struct TransformerShape {
    pub channels: i64,
    pub heads: i64,
    pub context_dim: i64,
    pub layers: i64,
    pub groups: i64,
    pub linear_projection: bool,
}

impl Transformer2DModel {
    pub fn load(w: &Weights, s: TransformerShape) -> Self {
        // diffusers: head size `channels // heads`, so the blocks work on `heads * head size`
        // features, fewer than `channels` when the heads do not divide them.
        let inner = s.heads * (s.channels / s.heads);
        let projection = |name: &str, from: i64, to: i64| {
            if s.linear_projection {
                Projection::Linear(Linear::load(&w.sub(name), from, to, true))
            } else {
                Projection::Conv(Conv2d::load(&w.sub(name), from, to, 1, 1, 0))
            }
        };
        Self {
            norm: GroupNorm::load(&w.sub("norm"), s.groups, s.channels, 1e-6),
            proj_in: projection("proj_in", s.channels, inner),
            blocks: (0..s.layers)
                .map(|i| {
                    let bw = w.sub("transformer_blocks").sub(i);
                    BasicTransformerBlock::load(&bw, inner, s.heads, s.context_dim)
                })
                .collect(),
            proj_out: projection("proj_out", inner, s.channels),
        }
    }

    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let size = x.size();
        let (b, h, w) = (size[0], size[2], size[3]);
        let normed = self.norm.forward(x);
        // Feature counts are read from the tensors: `inner` between the projections.
        let to_tokens = |t: Tensor| {
            let features = t.size()[1];
            t.permute([0, 2, 3, 1]).reshape([b, h * w, features])
        };
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(&normed)),
            Projection::Linear(linear) => linear.forward(&to_tokens(normed)),
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context);
        }
        let to_image = |t: Tensor| {
            let features = t.size()[2];
            t.reshape([b, h, w, features])
                .permute([0, 3, 1, 2])
                .contiguous()
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_image(tokens)),
            Projection::Linear(linear) => to_image(linear.forward(&tokens)),
        };
        out + x
    }
}
