//! `ResnetBlock2D`, `Downsample2D` and `Upsample2D` (diffusers `models/resnet.py`,
//! `downsampling.py`, `upsampling.py`).

use tch::Tensor;

use crate::models::layers::{Conv2d, GroupNorm, Linear};
use crate::weights::Weights;

/// Two norm-SiLU-conv stages with an optional time-embedding bias and a residual connection.
#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

/// Sizes of one resnet block.
#[derive(Clone, Copy, Debug)]
pub struct ResnetShape {
    pub input: i64,
    pub output: i64,
    /// Channels of the time embedding; None in the VAE.
    pub temb: Option<i64>,
    pub groups: i64,
    pub eps: f64,
}

impl ResnetBlock2D {
    pub fn load(w: &Weights, s: ResnetShape) -> Self {
        Self {
            norm1: GroupNorm::load(&w.sub("norm1"), s.groups, s.input, s.eps),
            conv1: Conv2d::load(&w.sub("conv1"), s.input, s.output, 3, 1, 1),
            time_emb_proj: s
                .temb
                .map(|t| Linear::load(&w.sub("time_emb_proj"), t, s.output, true)),
            norm2: GroupNorm::load(&w.sub("norm2"), s.groups, s.output, s.eps),
            conv2: Conv2d::load(&w.sub("conv2"), s.output, s.output, 3, 1, 1),
            conv_shortcut: (s.input != s.output)
                .then(|| Conv2d::load(&w.sub("conv_shortcut"), s.input, s.output, 1, 1, 0)),
        }
    }

    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Tensor {
        let mut h = self.conv1.forward(&self.norm1.forward(x).silu());
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            h += proj.forward(&temb.silu()).unsqueeze(-1).unsqueeze(-1);
        }
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        match &self.conv_shortcut {
            Some(shortcut) => shortcut.forward(x) + h,
            None => x + h,
        }
    }
}

/// Stride-2 convolution. The VAE pads right/bottom by one and uses no conv padding
/// (`padding=0`); the UNet pads symmetrically by `downsample_padding`.
#[derive(Debug)]
pub struct Downsample2D {
    conv: Conv2d,
    asymmetric_pad: bool,
}

impl Downsample2D {
    pub fn load(w: &Weights, channels: i64, padding: i64) -> Self {
        Self {
            conv: Conv2d::load(&w.sub("conv"), channels, channels, 3, 2, padding),
            asymmetric_pad: padding == 0,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.asymmetric_pad {
            self.conv.forward(&x.constant_pad_nd([0, 1, 0, 1]))
        } else {
            self.conv.forward(x)
        }
    }
}

/// Nearest-neighbour upsampling then a 3×3 convolution. `size` overrides the default ×2 when
/// the UNet's skip connection has an odd size.
#[derive(Debug)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn load(w: &Weights, channels: i64) -> Self {
        Self {
            conv: Conv2d::load(&w.sub("conv"), channels, channels, 3, 1, 1),
        }
    }

    pub fn forward(&self, x: &Tensor, size: Option<(i64, i64)>) -> Tensor {
        let (h, w) = match size {
            Some(size) => size,
            None => (x.size()[2] * 2, x.size()[3] * 2),
        };
        self.conv.forward(&x.upsample_nearest2d([h, w], None, None))
    }
}
