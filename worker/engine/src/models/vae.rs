//! `AutoencoderKL` (diffusers `autoencoders/autoencoder_kl.py`, `vae.py`): the encoder to a
//! diagonal Gaussian over latents and the decoder back to pixels.

use tch::Tensor;

use crate::EngineError;
use crate::config::VaeConfig;
use crate::models::attention::SpatialSelfAttention;
use crate::models::layers::{Conv2d, GroupNorm};
use crate::models::resnet::{Downsample2D, ResnetBlock2D, ResnetShape, Upsample2D};
use crate::weights::Weights;

const EPS: f64 = 1e-6;

/// `UNetMidBlock2D` without time embedding: resnet, (attention), resnet.
#[derive(Debug)]
struct VaeMidBlock {
    resnet_in: ResnetBlock2D,
    attention: Option<SpatialSelfAttention>,
    resnet_out: ResnetBlock2D,
}

impl VaeMidBlock {
    fn load(w: &Weights, channels: i64, groups: i64, attention: bool) -> Self {
        let shape = ResnetShape {
            input: channels,
            output: channels,
            temb: None,
            groups,
            eps: EPS,
        };
        Self {
            resnet_in: ResnetBlock2D::load(&w.sub("resnets").sub(0), shape),
            attention: attention.then(|| {
                SpatialSelfAttention::load(&w.sub("attentions").sub(0), channels, groups, EPS)
            }),
            resnet_out: ResnetBlock2D::load(&w.sub("resnets").sub(1), shape),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut x = self.resnet_in.forward(x, None);
        if let Some(attention) = &self.attention {
            x = attention.forward(&x);
        }
        self.resnet_out.forward(&x, None)
    }
}

#[derive(Debug)]
struct CodingBlock {
    resnets: Vec<ResnetBlock2D>,
    down: Option<Downsample2D>,
    up: Option<Upsample2D>,
}

/// The latent distribution `N(mean, std²)` the encoder produces.
#[derive(Debug)]
pub struct DiagonalGaussian {
    pub mean: Tensor,
    pub std: Tensor,
}

impl DiagonalGaussian {
    /// `mean + std * noise`, with `noise` drawn by the caller (so the caller controls the
    /// generator and the draw order, as diffusers' `latent_dist.sample(generator)` does).
    pub fn sample_with(&self, noise: &Tensor) -> Tensor {
        &self.mean + &self.std * noise
    }
}

/// The VAE.
#[derive(Debug)]
pub struct AutoencoderKL {
    config: VaeConfig,
    enc_conv_in: Conv2d,
    enc_blocks: Vec<CodingBlock>,
    enc_mid: VaeMidBlock,
    enc_norm_out: GroupNorm,
    enc_conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    dec_conv_in: Conv2d,
    dec_mid: VaeMidBlock,
    dec_blocks: Vec<CodingBlock>,
    dec_norm_out: GroupNorm,
    dec_conv_out: Conv2d,
}

impl AutoencoderKL {
    pub fn load(w: &Weights, config: &VaeConfig) -> Result<Self, EngineError> {
        config.check()?;
        let channels = &config.block_out_channels;
        let n = channels.len();
        let groups = config.norm_num_groups;
        let layers = config.layers_per_block;
        let latent = config.latent_channels;
        let shape = |input, output| ResnetShape {
            input,
            output,
            temb: None,
            groups,
            eps: EPS,
        };

        let e = w.sub("encoder");
        let mut enc_blocks = Vec::with_capacity(n);
        let mut output = channels[0];
        for (i, &out) in channels.iter().enumerate() {
            let input = output;
            output = out;
            let bw = e.sub("down_blocks").sub(i);
            enc_blocks.push(CodingBlock {
                resnets: (0..layers)
                    .map(|j| {
                        let inp = if j == 0 { input } else { output };
                        ResnetBlock2D::load(&bw.sub("resnets").sub(j), shape(inp, output))
                    })
                    .collect(),
                down: (i + 1 < n)
                    .then(|| Downsample2D::load(&bw.sub("downsamplers").sub(0), output, 0)),
                up: None,
            });
        }
        let last = channels[n - 1];

        let d = w.sub("decoder");
        let reversed: Vec<i64> = channels.iter().rev().copied().collect();
        let mut dec_blocks = Vec::with_capacity(n);
        let mut output = reversed[0];
        for (i, &out) in reversed.iter().enumerate() {
            let previous = output;
            output = out;
            let bw = d.sub("up_blocks").sub(i);
            dec_blocks.push(CodingBlock {
                resnets: (0..layers + 1)
                    .map(|j| {
                        let inp = if j == 0 { previous } else { output };
                        ResnetBlock2D::load(&bw.sub("resnets").sub(j), shape(inp, output))
                    })
                    .collect(),
                down: None,
                up: (i + 1 < n).then(|| Upsample2D::load(&bw.sub("upsamplers").sub(0), output)),
            });
        }

        Ok(Self {
            config: config.clone(),
            enc_conv_in: Conv2d::load(&e.sub("conv_in"), config.in_channels, channels[0], 3, 1, 1),
            enc_blocks,
            enc_mid: VaeMidBlock::load(
                &e.sub("mid_block"),
                last,
                groups,
                config.mid_block_add_attention,
            ),
            enc_norm_out: GroupNorm::load(&e.sub("conv_norm_out"), groups, last, EPS),
            enc_conv_out: Conv2d::load(&e.sub("conv_out"), last, 2 * latent, 3, 1, 1),
            quant_conv: config
                .use_quant_conv
                .then(|| Conv2d::load(&w.sub("quant_conv"), 2 * latent, 2 * latent, 1, 1, 0)),
            post_quant_conv: config
                .use_post_quant_conv
                .then(|| Conv2d::load(&w.sub("post_quant_conv"), latent, latent, 1, 1, 0)),
            dec_conv_in: Conv2d::load(&d.sub("conv_in"), latent, last, 3, 1, 1),
            dec_mid: VaeMidBlock::load(
                &d.sub("mid_block"),
                last,
                groups,
                config.mid_block_add_attention,
            ),
            dec_blocks,
            dec_norm_out: GroupNorm::load(&d.sub("conv_norm_out"), groups, channels[0], EPS),
            dec_conv_out: Conv2d::load(
                &d.sub("conv_out"),
                channels[0],
                config.out_channels,
                3,
                1,
                1,
            ),
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The element kind the VAE runs in (that of its weights).
    pub fn kind(&self) -> tch::Kind {
        self.enc_conv_in.kind()
    }

    /// Pixels `[B, 3, H, W]` in [-1, 1] to the latent distribution (unscaled latents).
    pub fn encode(&self, x: &Tensor) -> DiagonalGaussian {
        let mut h = self.enc_conv_in.forward(x);
        for block in &self.enc_blocks {
            for resnet in &block.resnets {
                h = resnet.forward(&h, None);
            }
            if let Some(down) = &block.down {
                h = down.forward(&h);
            }
        }
        h = self.enc_mid.forward(&h);
        h = self
            .enc_conv_out
            .forward(&self.enc_norm_out.forward(&h).silu());
        if let Some(quant) = &self.quant_conv {
            h = quant.forward(&h);
        }
        let parts = h.chunk(2, 1);
        let logvar = parts[1].clamp(-30.0, 20.0);
        DiagonalGaussian {
            mean: parts[0].shallow_clone(),
            std: (logvar * 0.5).exp(),
        }
    }

    /// Unscaled latents to pixels in roughly [-1, 1].
    pub fn decode(&self, z: &Tensor) -> Tensor {
        let mut h = match &self.post_quant_conv {
            Some(post) => post.forward(z),
            None => z.shallow_clone(),
        };
        h = self.dec_conv_in.forward(&h);
        h = self.dec_mid.forward(&h);
        for block in &self.dec_blocks {
            for resnet in &block.resnets {
                h = resnet.forward(&h, None);
            }
            if let Some(up) = &block.up {
                h = up.forward(&h, None);
            }
        }
        self.dec_conv_out
            .forward(&self.dec_norm_out.forward(&h).silu())
    }
}
