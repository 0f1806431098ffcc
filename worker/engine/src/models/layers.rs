//! The basic layers every model is built from (linear, conv, norms), as plain weight holders
//! with a functional forward: no autograd state, no random initialisation.

use tch::{TchError, Tensor};

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

    /// [`Linear::f_forward`] for callers whose shapes are fixed by the model (panics on a
    /// libtorch error, as tch's non-`f_` ops do).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.f_forward(x).unwrap_or_else(|e| panic!("linear: {e}"))
    }

    /// `x Wᵀ + b`, or libtorch's error (a last dimension that is not `in`, for example).
    pub fn f_forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        // On the CPU, a matmul with one or two rows per sample (the UNet's deepest attention at
        // small sizes) takes another kernel than the same rows inside a taller batch matrix, so
        // a sample's bits would depend on its batch; from 4 rows on they do not (probed over SD
        // shapes, tests/batch_parity.rs). Such tiny products run per sample: same bits alone and
        // batched, at negligible cost.
        let size = x.size();
        if x.device() == tch::Device::Cpu && size.len() == 3 && size[0] > 1 && size[1] < FEW_ROWS {
            let rows = (0..size[0])
                .map(|i| x.f_get(i)?.f_linear(&self.weight, self.bias.as_ref()))
                .collect::<Result<Vec<Tensor>, TchError>>()?;
            return Tensor::f_stack(&rows, 0);
        }
        x.f_linear(&self.weight, self.bias.as_ref())
    }
}

/// Rows per sample below which [`Linear`] multiplies sample by sample on the CPU (differences
/// were seen at 1 and 2 rows; 8 leaves a margin).
const FEW_ROWS: i64 = 8;

/// Whether libtorch has oneDNN (MKL-DNN) for CPU convolutions.
fn mkldnn_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(tch::utils::has_mkldnn)
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

    /// The element kind of the weights.
    pub fn kind(&self) -> tch::Kind {
        self.weight.kind()
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        // On the CPU in f32 always oneDNN: libtorch's conv2d takes its own im2col kernel for a
        // batch of one small input (at most 20480 numbers, kernel at most 3x3) and oneDNN for
        // any larger batch, so an image would get other bits alone than batched with others.
        // oneDNN's result for a sample does not depend on the batch (tests/batch_parity.rs).
        if x.device() == tch::Device::Cpu && x.kind() == tch::Kind::Float && mkldnn_available() {
            let strides = [self.stride, self.stride];
            let padding = [self.padding, self.padding];
            if let Ok(y) =
                x.f_mkldnn_convolution(&self.weight, Some(&self.bias), padding, strides, [1, 1], 1)
            {
                return y;
            }
        }
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

    /// [`LayerNorm::f_forward`] for callers whose shapes are fixed by the model (panics on a
    /// libtorch error, as tch's non-`f_` ops do).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.f_forward(x)
            .unwrap_or_else(|e| panic!("layer norm: {e}"))
    }

    /// The normalised `x`, or libtorch's error (a last dimension that is not `dim`).
    pub fn f_forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        x.f_layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}
