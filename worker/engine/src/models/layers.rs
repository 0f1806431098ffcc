//! The basic layers every model is built from (linear, conv, norms), as plain weight holders
//! with a functional forward: no autograd state, no random initialisation.

use tch::Tensor;

use crate::weights::Weights;

/// `y = x Wᵀ + b`.
#[derive(Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` `[out, in]` and, with `bias`, `bias` `[out]`.
    pub fn load(w: &Weights, input: i64, output: i64, bias: bool) -> Self {
        Self {
            weight: w.get("weight", &[output, input]),
            bias: bias.then(|| w.get("bias", &[output])),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// A 2-D convolution with square kernel, stride and padding.
#[derive(Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    pub fn load(
        w: &Weights,
        input: i64,
        output: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
    ) -> Self {
        Self {
            weight: w.get("weight", &[output, input, kernel, kernel]),
            bias: w.get("bias", &[output]),
            stride,
            padding,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.weight,
            Some(&self.bias),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }
}

/// Group normalisation over channels (dimension 1).
#[derive(Debug)]
pub struct GroupNorm {
    groups: i64,
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl GroupNorm {
    pub fn load(w: &Weights, groups: i64, channels: i64, eps: f64) -> Self {
        Self {
            groups,
            weight: w.get("weight", &[channels]),
            bias: w.get("bias", &[channels]),
            eps,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.group_norm(
            self.groups,
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

/// Layer normalisation over the last dimension.
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    dim: i64,
}

impl LayerNorm {
    pub fn load(w: &Weights, dim: i64, eps: f64) -> Self {
        Self {
            weight: w.get("weight", &[dim]),
            bias: w.get("bias", &[dim]),
            eps,
            dim,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}
