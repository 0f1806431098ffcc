//! [`ProvenanceError`]: why a provenance stage could not be built or a PNG not annotated.

/// Why configuring the stage or embedding provenance into a PNG failed.
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
    /// `weights_sha256` is not 64 hex digits.
    #[error("weights_sha256 must be 64 hex digits, got {0:?}")]
    BadSha256(String),
    /// An empty `model_id`.
    #[error("model_id, when set, must not be empty")]
    EmptyModelId,
}
