//! The storage error type, and whether an error is worth retrying.

/// Everything that can go wrong reading or writing an object.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The text is not a valid `s3://bucket/key` reference.
    #[error("invalid object reference {reference:?}: {reason}")]
    InvalidRef { reference: String, reason: String },
    /// The configuration cannot make a working store.
    #[error("invalid storage configuration: {0}")]
    Config(String),
    /// The object does not exist.
    #[error("object {object} not found")]
    NotFound { object: String },
    /// The object is larger than the caller allows; it was not downloaded.
    #[error("object {object} is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        object: String,
        size: u64,
        limit: u64,
    },
    /// The backend refused or failed the request.
    #[cfg(feature = "store")]
    #[error("storage request for {object} failed: {source}")]
    Backend {
        object: String,
        #[source]
        source: object_store::Error,
    },
}

impl StorageError {
    /// True when the same request may succeed later (network, throttling, server errors);
    /// false when retrying cannot help (bad reference, missing object, access denied, too large).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::InvalidRef { .. }
            | Self::Config(_)
            | Self::NotFound { .. }
            | Self::TooLarge { .. } => false,
            #[cfg(feature = "store")]
            Self::Backend { source, .. } => !matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
                    | object_store::Error::UnknownConfigurationKey { .. }
            ),
        }
    }
}

#[cfg(all(test, feature = "store"))]
mod tests {
    use super::*;

    #[test]
    fn missing_objects_are_permanent_and_io_errors_transient() {
        let missing = StorageError::NotFound {
            object: "s3://b/k".into(),
        };
        assert!(!missing.is_transient());
        let io = StorageError::Backend {
            object: "s3://b/k".into(),
            source: object_store::Error::Generic {
                store: "S3",
                source: "connection reset".into(),
            },
        };
        assert!(io.is_transient());
        let denied = StorageError::Backend {
            object: "s3://b/k".into(),
            source: object_store::Error::PermissionDenied {
                path: "k".into(),
                source: "403".into(),
            },
        };
        assert!(!denied.is_transient());
    }
}
