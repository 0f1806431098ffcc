//! inpaint-external-stages: plugin stages that delegate the decision to a program the operator
//! writes in any language — over HTTP or over a subprocess's stdin/stdout.
//!
//! Both stages speak one protocol, `inpaint-stage.v1` ([`protocol`]): a JSON request per hook
//! call (and per image after output) carrying the job context, and a JSON verdict in return —
//! continue, block, or modify with the changes the stage API allows. `ops/plugins/README.md`
//! documents it for program authors, with a Python example of each kind.
//!
//! The request carries the prompt, because checking it is the point; the stage never logs it
//! and refuses responses that would copy it into audit entries or metadata.
//!
//! Layout:
//! - [`protocol`]: the wire format, request encoding and strict response validation.
//! - [`common`]: hook selection, attempts with backoff, [`OnFailure`] (block or requeue when the
//!   program cannot be reached), shared by both stages.
//! - [`http`]: [`HttpStageConfig`] → [`HttpStage`] (POST to a URL, ureq).
//! - [`exec`]: [`ExecStageConfig`] → [`ExecStage`] (a long-lived subprocess, line-delimited JSON).
//! - [`error`](mod@error): [`ExternalError`].

pub mod common;
pub mod error;
pub mod exec;
pub mod http;
pub mod protocol;

pub use common::{MAX_ATTEMPTS, OnFailure, UNAVAILABLE_CATEGORY};
pub use error::ExternalError;
pub use exec::{ExecStage, ExecStageConfig};
pub use http::{HttpStage, HttpStageConfig};
pub use protocol::PROTOCOL;
