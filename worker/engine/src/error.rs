//! The engine error type.

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A device string that is not `auto`, `cpu`, `cuda` or `cuda:N`.
    #[error("invalid device {0:?}: expected auto, cpu, cuda or cuda:N")]
    InvalidDevice(String),
    /// A CUDA device that this machine does not have.
    #[error("device cuda:{index} requested but {available} CUDA device(s) are available")]
    CudaUnavailable { index: usize, available: usize },
    /// A precision that is not `f32`, `f16` or `bf16`.
    #[error("invalid precision {0:?}: expected auto, f32, f16 or bf16")]
    InvalidPrecision(String),
    /// Input that the engine cannot work with (wrong shape, empty image, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A model folder, config or weights file that cannot be used; the message names the file
    /// and every problem found.
    #[error("model: {0}")]
    Model(String),
    /// The caller cancelled the run between two denoising steps.
    #[error("cancelled")]
    Cancelled,
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
