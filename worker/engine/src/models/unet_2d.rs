//! `UNet2DConditionModel` (diffusers `unets/unet_2d_condition.py`) for SD-1.x: 9 input channels
//! for inpainting (latents, mask, masked-image latents) or 4 for the standard model.

use tch::{Kind, Tensor};

use crate::EngineError;
use crate::config::UNetConfig;
use crate::models::embeddings::{TimestepEmbedding, timestep_embedding};
use crate::models::layers::{Conv2d, GroupNorm};
use crate::models::unet_2d_blocks::{BlockCommon, DownBlock, MidBlock, UpBlock, UpChannels};
use crate::weights::Weights;

/// The denoising UNet.
#[derive(Debug)]
pub struct UNet2DConditionModel {
    config: UNetConfig,
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet2DConditionModel {
    /// Builds the network from `config` with weights from `w` (names as in diffusers).
    pub fn load(w: &Weights, config: &UNetConfig) -> Result<Self, EngineError> {
        config.check()?;
        let channels = &config.block_out_channels;
        let n = channels.len();
        let c0 = channels[0];
        let temb = c0 * 4;
        let common = BlockCommon {
            temb,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            context_dim: config.cross_attention_dim,
            transformer_layers: config.transformer_layers(n - 1)?,
            linear_projection: config.use_linear_projection,
        };
        let mut down_blocks = Vec::with_capacity(n);
        let mut output = c0;
        for (i, &channels_i) in channels.iter().enumerate() {
            let input = output;
            output = channels_i;
            let heads = (config.down_block_types[i] == "CrossAttnDownBlock2D")
                .then(|| config.heads(i))
                .transpose()?;
            let block_common = BlockCommon {
                transformer_layers: config.transformer_layers(i)?,
                ..common
            };
            down_blocks.push(DownBlock::load(
                &w.sub("down_blocks").sub(i),
                &block_common,
                input,
                output,
                config.layers_per_block,
                heads,
                i + 1 < n,
                config.downsample_padding,
            ));
        }
        let mid_block = MidBlock::load(
            &w.sub("mid_block"),
            &common,
            channels[n - 1],
            config.heads(n - 1)?,
        );
        let reversed: Vec<i64> = channels.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        let mut output = reversed[0];
        for i in 0..n {
            let previous = output;
            output = reversed[i];
            let input = reversed[(i + 1).min(n - 1)];
            let heads = (config.up_block_types[i] == "CrossAttnUpBlock2D")
                .then(|| config.heads(n - 1 - i))
                .transpose()?;
            let block_common = BlockCommon {
                transformer_layers: config.transformer_layers(n - 1 - i)?,
                ..common
            };
            up_blocks.push(UpBlock::load(
                &w.sub("up_blocks").sub(i),
                &block_common,
                UpChannels {
                    input,
                    output,
                    previous,
                },
                config.layers_per_block + 1,
                heads,
                i + 1 < n,
            ));
        }
        Ok(Self {
            config: config.clone(),
            conv_in: Conv2d::load(&w.sub("conv_in"), config.in_channels, c0, 3, 1, 1),
            time_embedding: TimestepEmbedding::load(&w.sub("time_embedding"), c0, temb),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(
                &w.sub("conv_norm_out"),
                config.norm_num_groups,
                c0,
                config.norm_eps,
            ),
            conv_out: Conv2d::load(&w.sub("conv_out"), c0, config.out_channels, 3, 1, 1),
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Predicts noise for `sample` `[B, in_channels, h, w]` at `timestep` (one value for the
    /// whole batch) given text embeddings `context` `[B, tokens, cross_attention_dim]`.
    pub fn forward(&self, sample: &Tensor, timestep: f64, context: &Tensor) -> Tensor {
        let c0 = self.config.block_out_channels[0];
        // One row, broadcast over the batch by the resnets: the timestep is the same for every
        // sample, and a one-row matmul is what a sample gets alone. With a row per sample the
        // time MLP's matmul would change its blocking with the batch size, and with it the bits
        // (tests/batch_parity.rs).
        let timesteps = Tensor::full([1], timestep, (Kind::Float, sample.device()));
        let t_emb = timestep_embedding(
            &timesteps,
            c0,
            self.config.flip_sin_to_cos,
            self.config.freq_shift as f64,
        )
        .to_kind(sample.kind());
        let temb = self.time_embedding.forward(&t_emb);

        let mut x = self.conv_in.forward(sample);
        let mut skips = vec![x.shallow_clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(&x, &temb, context);
            x = out;
            skips.extend(states);
        }
        x = self.mid_block.forward(&x, &temb, context);
        for block in &self.up_blocks {
            let take = block.skip_count();
            let mut mine: Vec<Tensor> = skips.split_off(skips.len() - take);
            mine.reverse();
            // The next block's first skip state tells the upsampler the exact size to reach
            // (diffusers' `upsample_size`), which matters when a size is odd.
            let upsample_size = skips.last().map(|s| (s.size()[2], s.size()[3]));
            x = block.forward(&x, &mine, &temb, context, upsample_size);
        }
        self.conv_out
            .forward(&self.conv_norm_out.forward(&x).silu())
    }
}
