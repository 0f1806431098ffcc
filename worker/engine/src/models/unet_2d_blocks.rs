//! The UNet's down, mid and up blocks (diffusers `unet_2d_blocks.py`): `CrossAttnDownBlock2D` /
//! `DownBlock2D`, `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D` / `UpBlock2D`. Whether a block
//! has attention is the `Option` of its transformer list.

use tch::Tensor;

use crate::models::attention::{Transformer2DModel, TransformerShape};
use crate::models::resnet::{Downsample2D, ResnetBlock2D, ResnetShape, Upsample2D};
use crate::weights::Weights;

/// Shared sizes of every block in one UNet.
#[derive(Clone, Copy, Debug)]
pub struct BlockCommon {
    pub temb: i64,
    pub groups: i64,
    pub eps: f64,
    pub context_dim: i64,
    pub transformer_layers: i64,
    pub linear_projection: bool,
}

impl BlockCommon {
    fn resnet(&self, input: i64, output: i64) -> ResnetShape {
        ResnetShape {
            input,
            output,
            temb: Some(self.temb),
            groups: self.groups,
            eps: self.eps,
        }
    }

    fn transformer(&self, channels: i64, heads: i64) -> TransformerShape {
        TransformerShape {
            channels,
            heads,
            context_dim: self.context_dim,
            layers: self.transformer_layers,
            groups: self.groups,
            linear_projection: self.linear_projection,
        }
    }
}

/// One down block: resnets (each followed by a transformer when `heads` is set) and an optional
/// stride-2 downsampler.
#[derive(Debug)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Option<Vec<Transformer2DModel>>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        w: &Weights,
        c: &BlockCommon,
        input: i64,
        output: i64,
        layers: i64,
        heads: Option<i64>,
        downsample: bool,
        downsample_padding: i64,
    ) -> Self {
        let resnets = (0..layers)
            .map(|i| {
                let inp = if i == 0 { input } else { output };
                ResnetBlock2D::load(&w.sub("resnets").sub(i), c.resnet(inp, output))
            })
            .collect();
        let attentions = heads.map(|heads| {
            (0..layers)
                .map(|i| {
                    Transformer2DModel::load(
                        &w.sub("attentions").sub(i),
                        c.transformer(output, heads),
                    )
                })
                .collect()
        });
        let downsampler = downsample
            .then(|| Downsample2D::load(&w.sub("downsamplers").sub(0), output, downsample_padding));
        Self {
            resnets,
            attentions,
            downsampler,
        }
    }

    /// Returns the block output and every intermediate state the up path concatenates.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> (Tensor, Vec<Tensor>) {
        let mut x = x.shallow_clone();
        let mut states = Vec::new();
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(&x, Some(temb));
            if let Some(attentions) = &self.attentions {
                x = attentions[i].forward(&x, context);
            }
            states.push(x.shallow_clone());
        }
        if let Some(down) = &self.downsampler {
            x = down.forward(&x);
            states.push(x.shallow_clone());
        }
        (x, states)
    }
}

/// Resnet, transformer, resnet.
#[derive(Debug)]
pub struct MidBlock {
    resnet_in: ResnetBlock2D,
    attention: Transformer2DModel,
    resnet_out: ResnetBlock2D,
}

impl MidBlock {
    pub fn load(w: &Weights, c: &BlockCommon, channels: i64, heads: i64) -> Self {
        Self {
            resnet_in: ResnetBlock2D::load(&w.sub("resnets").sub(0), c.resnet(channels, channels)),
            attention: Transformer2DModel::load(
                &w.sub("attentions").sub(0),
                c.transformer(channels, heads),
            ),
            resnet_out: ResnetBlock2D::load(&w.sub("resnets").sub(1), c.resnet(channels, channels)),
        }
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> Tensor {
        let x = self.resnet_in.forward(x, Some(temb));
        let x = self.attention.forward(&x, context);
        self.resnet_out.forward(&x, Some(temb))
    }
}

/// One up block: `layers + 1` resnets, each taking the previous output concatenated with a
/// skip state, each followed by a transformer when `heads` is set, then an optional upsampler.
#[derive(Debug)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Option<Vec<Transformer2DModel>>,
    upsampler: Option<Upsample2D>,
}

/// Channel sizes of one up block.
#[derive(Clone, Copy, Debug)]
pub struct UpChannels {
    /// Channels of the down block at the same depth (the skip states' channels, but the first).
    pub input: i64,
    pub output: i64,
    /// Channels coming from the block below.
    pub previous: i64,
}

impl UpBlock {
    pub fn load(
        w: &Weights,
        c: &BlockCommon,
        ch: UpChannels,
        layers: i64,
        heads: Option<i64>,
        upsample: bool,
    ) -> Self {
        let resnets = (0..layers)
            .map(|i| {
                let skip = if i == layers - 1 { ch.input } else { ch.output };
                let inp = if i == 0 { ch.previous } else { ch.output };
                ResnetBlock2D::load(&w.sub("resnets").sub(i), c.resnet(inp + skip, ch.output))
            })
            .collect();
        let attentions = heads.map(|heads| {
            (0..layers)
                .map(|i| {
                    Transformer2DModel::load(
                        &w.sub("attentions").sub(i),
                        c.transformer(ch.output, heads),
                    )
                })
                .collect()
        });
        let upsampler = upsample.then(|| Upsample2D::load(&w.sub("upsamplers").sub(0), ch.output));
        Self {
            resnets,
            attentions,
            upsampler,
        }
    }

    /// Number of skip states this block consumes.
    pub fn skip_count(&self) -> usize {
        self.resnets.len()
    }

    /// `skips` in the order they are consumed (last down state first). `upsample_size` is the
    /// spatial size of the next block's first skip state, when there is a next block.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        upsample_size: Option<(i64, i64)>,
    ) -> Tensor {
        let mut x = x.shallow_clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(&Tensor::cat(&[&x, &skips[i]], 1), Some(temb));
            if let Some(attentions) = &self.attentions {
                x = attentions[i].forward(&x, context);
            }
        }
        match &self.upsampler {
            Some(up) => up.forward(&x, upsample_size),
            None => x,
        }
    }
}
