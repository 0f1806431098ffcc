//! The safety checker's error type.

use inpaint_engine::EngineError;

/// Everything that can go wrong while loading or running the safety checker.
#[derive(Debug, thiserror::Error)]
pub enum SafetyError {
    /// A config file (`safety_checker/config.json`, `feature_extractor/preprocessor_config.json`)
    /// that cannot be read or describes something this implementation does not support.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// An image the checker cannot look at (empty).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A stage configuration that cannot work (for example an option the plugin API cannot
    /// serve yet).
    #[error("safety-checker configuration: {0}")]
    Unsupported(String),
    /// Weights, device or libtorch errors from the engine.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<tch::TchError> for SafetyError {
    fn from(e: tch::TchError) -> Self {
        Self::Engine(EngineError::Torch(e))
    }
}
