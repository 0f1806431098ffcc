//! inpaint-plugin-api: the contract between the worker and its plugin stages.
//!
//! Every job passes through an ordered chain of stages that enforce the CreativeML OpenRAIL-M
//! use restrictions (paragraph 5 and Attachment A of `LICENSE-OPENRAIL-M`): a prompt policy
//! before inference, a safety checker, a watermark and provenance after compositing.
//!
//! Layout:
//! - [`context`]: [`JobContext`] (what a stage sees of a job) and [`OutputImage`] (one composited
//!   result with its metadata and per-stage reports).
//! - [`verdict`]: [`Verdict`], what a stage decides: continue, modify (a list of declarative
//!   [`Modification`]s) or block.
//! - [`stage`]: the [`Stage`] trait and the [`Hook`]s it can act on.
//! - [`chain`]: [`Chain`], which runs stages in order, applies their modifications, keeps an
//!   audit log and fails closed.
//! - [`report`]: typed stage reports: [`StageKind`] (the built-in kinds) and [`Finding`] (the
//!   safety checker's scores and flags, the watermark's payload and bits, the provenance
//!   fields), which built-in stages attach and the worker reads instead of metadata strings.
//! - [`policy`]: the chain-policy check, which refuses a chain without a safety checker and a
//!   watermark unless the operator overrides it.
//! - [`error`]: [`StageError`], [`ChainError`], [`ChainPolicyError`].
//!
//! The closed enum of built-in stage configurations (`StageConfig`) does not live here: it names
//! every plugin crate, and every plugin crate depends on this one, so it sits one level up in
//! `inpaint-stages` (see that crate's docs). This crate stays small and free of libtorch.

pub mod chain;
pub mod context;
pub mod error;
pub mod policy;
pub mod report;
pub mod stage;
pub mod verdict;

pub use chain::{AuditAction, AuditEntry, BlockRecord, Chain, ChainOutcome, OutputOutcome};
pub use context::{JobContext, MetadataEntry, OutputImage, StageReport};
pub use error::{ChainError, ChainPolicyError, StageError};
pub use image::RgbImage;
pub use policy::{REQUIRED_STAGE_KINDS, check_required_kinds, missing_required_kinds};
pub use report::{
    Finding, ProvenanceFinding, SafetyFinding, StageKind, WatermarkFinding, WatermarkOutcome,
};
pub use stage::{Hook, Stage};
pub use verdict::{Block, Change, Modification, Verdict};
