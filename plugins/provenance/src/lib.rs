//! inpaint-provenance: says, in each output's metadata and in the encoded file, that the image
//! was made by a trained model, under which licence, by which job.
//!
//! Two halves:
//! - the plugin stage ([`ProvenanceStage`], configured by [`ProvenanceConfig`]), which adds
//!   `provenance.*` metadata entries to every output image after output; it runs last, after the
//!   watermark;
//! - pure byte-level helpers for the worker's encoder, which write those entries into the
//!   encoded file without decoding or re-encoding its pixels, fed with [`png_fields`] and
//!   [`xmp_for`]:
//!   - [`embed_png`]: one `iTXt` chunk per field plus the XMP packet;
//!   - [`embed_jpeg`]: an EXIF `APP1` segment (a summary, [`exif_tiff`]) and an XMP `APP1`
//!     segment;
//!   - [`embed_webp`]: converts to the extended format (`VP8X`) and adds `EXIF` and `XMP `
//!     chunks.
//!
//!   The XMP packet ([`xmp_packet`]) carries the full field set in every format.
//!
//! Layout:
//! - [`stage`]: [`ProvenanceConfig`], [`ProvenanceStage`], the metadata keys and IPTC codes.
//! - [`png`](mod@png): [`embed_png`] and the chunk-level CRC-32.
//! - [`jpeg`](mod@jpeg): [`embed_jpeg`].
//! - [`webp`](mod@webp): [`embed_webp`].
//! - [`exif`](mod@exif): [`exif_tiff`], the EXIF summary JPEG and WebP carry.
//! - [`xmp`](mod@xmp): [`xmp_packet`].
//! - `c2pa_manifest` (cargo feature `c2pa`, off by default): `C2paConfig` and `C2paSigner`,
//!   which sign an annotated file with a C2PA manifest, offline.
//! - [`error`](mod@error): [`ProvenanceError`].

#[cfg(feature = "c2pa")]
pub mod c2pa_manifest;
pub mod error;
pub mod exif;
pub mod jpeg;
pub mod png;
pub mod stage;
pub mod webp;
pub mod xmp;

/// The verdict of a [`read_manifest`] reader (`reader.validation_state()`), re-exported so
/// that callers check it against the c2pa version this crate links, without depending on it.
#[cfg(feature = "c2pa")]
pub use ::c2pa::ValidationState as C2paValidationState;
#[cfg(feature = "c2pa")]
pub use c2pa_manifest::{C2paAlgorithm, C2paConfig, C2paSigner, TrainingMiningUse, read_manifest};
pub use error::ProvenanceError;
pub use exif::{ExifImage, exif_tiff};
pub use jpeg::embed_jpeg;
pub use png::{XMP_KEYWORD, crc32, embed_png};
pub use stage::{
    DIGITAL_SOURCE_TYPE_COMPOSITE, DIGITAL_SOURCE_TYPE_TRAINED, LICENCE, LICENCE_RESTRICTIONS,
    ProvenanceConfig, ProvenanceStage, SOFTWARE, creator_tool, png_fields, xmp_for,
};
pub use webp::embed_webp;
pub use xmp::{XMP_NAMESPACE, xmp_packet};

#[cfg(test)]
pub(crate) mod test_support {
    //! Fixtures shared by the format modules' tests.

    /// Provenance fields as the stage makes them for an inpainting job, with a model id that is
    /// not ASCII and a prompt.
    pub(crate) fn fields() -> Vec<(String, String)> {
        [
            ("provenance.ai_generated", "true"),
            (
                "provenance.digital_source_type",
                crate::DIGITAL_SOURCE_TYPE_COMPOSITE,
            ),
            ("provenance.license", crate::LICENCE),
            ("provenance.job_id", "4f1c-job"),
            ("provenance.seed", "1234"),
            ("provenance.model_id", "sd-inpainting ✓"),
            ("provenance.parameters", r#"{"steps":30}"#),
            ("provenance.prompt", "a secret prompt"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}
