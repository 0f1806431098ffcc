//! inpaint-safety-checker: the output safety checker of inpaint-worker, equal to diffusers'
//! `StableDiffusionSafetyChecker` with transformers' `CLIPImageProcessor` (PIL backend).
//!
//! It is one of the two stages the chain policy requires (with the watermark): how an operator
//! enforces the OpenRAIL-M use restrictions on what the model produces. The checker compares a
//! CLIP image embedding with 17 sexual-content concepts and 3 "special care" concepts (minors);
//! it does not cover violence or other categories, and it has false positives, so every score is
//! reported and operators can shift all scores with an adjustment.
//!
//! Layout:
//! - [`config`]: `safety_checker/config.json` and `feature_extractor/preprocessor_config.json`.
//! - [`preprocess`]: the image processor, including an exact port of PIL's 8-bit resampling.
//! - [`vision`]: the CLIP vision tower on libtorch (weights through `inpaint-engine`).
//! - [`checker`]: [`SafetyChecker`] and diffusers' decision rule ([`decide`]).
//! - [`stage`]: [`SafetyCheckerConfig`] and the [`SafetyCheckerStage`].
//! - [`error`]: the [`SafetyError`] type.

pub mod checker;
pub mod config;
pub mod error;
pub mod preprocess;
pub mod stage;
pub mod vision;

pub use checker::{CosineScores, SafetyChecker, SafetyResult, decide};
pub use error::SafetyError;
pub use stage::{NsfwAction, SafetyCheckerConfig, SafetyCheckerStage};
