//! inpaint-provenance: says, in each output's metadata and in the encoded file, that the image
//! was made by a trained model, under which licence, by which job.
//!
//! Two halves:
//! - the plugin stage ([`ProvenanceStage`], configured by [`ProvenanceConfig`]), which adds
//!   `provenance.*` metadata entries to every output image after output; it runs last, after the
//!   watermark;
//! - pure byte-level helpers for the encoder: [`embed_png`] inserts `iTXt` chunks (one per
//!   field, plus an XMP packet from [`xmp_packet`]) into an already-encoded PNG without
//!   re-encoding its pixels.
//!
//! The worker does not call [`embed_png`] yet; the hook belongs in its PNG encode path
//! (`worker/service/src/images.rs`), fed with [`png_fields`] and [`xmp_for`].
//!
//! Layout:
//! - [`stage`]: [`ProvenanceConfig`], [`ProvenanceStage`], the metadata keys and IPTC codes.
//! - [`png`](mod@png): [`embed_png`] and the chunk-level CRC-32.
//! - [`xmp`](mod@xmp): [`xmp_packet`].
//! - [`error`](mod@error): [`ProvenanceError`].

pub mod error;
pub mod png;
pub mod stage;
pub mod xmp;

pub use error::ProvenanceError;
pub use png::{XMP_KEYWORD, crc32, embed_png};
pub use stage::{
    DIGITAL_SOURCE_TYPE_COMPOSITE, DIGITAL_SOURCE_TYPE_TRAINED, LICENCE, LICENCE_RESTRICTIONS,
    ProvenanceConfig, ProvenanceStage, png_fields, xmp_for,
};
pub use xmp::xmp_packet;
