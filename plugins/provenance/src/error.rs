//! [`ProvenanceError`]: why a provenance stage could not be built or an encoded PNG, JPEG or WebP
//! not annotated.

/// Why configuring the stage or embedding provenance into an encoded image failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvenanceError {
    /// The input does not start with the PNG signature.
    #[error("not a PNG: the 8-byte PNG signature is missing")]
    NotPng,
    /// The first chunk is not a well-formed `IHDR`.
    #[error("malformed PNG header chunk: {0}")]
    BadHeader(String),
    /// A keyword that PNG text chunks cannot carry (1 to 79 printable Latin-1 characters, no
    /// leading, trailing or double spaces).
    #[error("invalid PNG text keyword {0:?}: {1}")]
    BadKeyword(String, &'static str),
    /// A text value with a NUL character (readers would cut it short).
    #[error("text for PNG keyword {0:?} contains a NUL character")]
    NulInText(String),
    /// A chunk would exceed the PNG limit of 2^31 - 1 data bytes.
    #[error("PNG chunk for keyword {0:?} would be too large")]
    ChunkTooLarge(String),
    /// The input does not start with a JPEG start-of-image marker.
    #[error("not a JPEG: the start-of-image marker FF D8 FF is missing")]
    NotJpeg,
    /// The JPEG's marker segments before the scan data are malformed.
    #[error("malformed JPEG: {0}")]
    BadJpeg(String),
    /// The input is not a RIFF/WebP file.
    #[error("not a WebP: the RIFF....WEBP header is missing")]
    NotWebp,
    /// The WebP's chunk structure is malformed or not one this crate can extend.
    #[error("malformed WebP: {0}")]
    BadWebp(String),
    /// A metadata block does not fit the container: a JPEG APP1 segment carries at most 65,533
    /// bytes after its marker (XMP: 65,504 after the namespace), a WebP file at most 4 GiB.
    #[error("{what} is {len} bytes, more than the {max} bytes the container allows")]
    TooLarge {
        /// Which block: "EXIF", "XMP packet", "WebP file".
        what: &'static str,
        /// Its size in bytes.
        len: usize,
        /// The most the container takes.
        max: usize,
    },
    /// C2PA signing could not be set up or failed (`c2pa` feature).
    #[error("C2PA: {0}")]
    C2pa(String),
    /// `weights_sha256` is not 64 hex digits.
    #[error("weights_sha256 must be 64 hex digits, got {0:?}")]
    BadSha256(String),
    /// An empty `model_id`.
    #[error("model_id, when set, must not be empty")]
    EmptyModelId,
}
