//! [`JobError`]: why a job message was refused, in the three classes a producer can act on.

use thiserror::Error;

use crate::result::{ErrorCode, ErrorInfo};

/// Why a job message was refused before any work started.
///
/// The first three variants are the first three error classes of the result contract: the bytes
/// were not JSON, the JSON had the wrong shape, or the values broke a rule; [`JobError::Refused`]
/// carries the admission checks' codes. None of them is retryable: the same job fails the same
/// way every time.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum JobError {
    /// The message is not JSON at all (or not UTF-8).
    #[error("message is not valid JSON: {message}")]
    MalformedJson {
        /// The parser's description, with line and column.
        message: String,
    },

    /// The message is JSON but not a job: a missing or unknown field, a wrong type, a value the
    /// field's type cannot hold (a bad UUID, a non-`s3://` reference, an unknown scheduler).
    #[error("schema violation at {path}: {message}")]
    SchemaViolation {
        /// Where: a dotted path such as `params.seeds[2]`, or `job` for the whole message.
        path: String,
        /// What is wrong there.
        message: String,
    },

    /// The message is a well-formed job whose values break a rule: a range, a multiple of 8,
    /// the seeds length, image and mask given together, the schema version.
    #[error("invalid parameter {field}: {message}")]
    InvalidParameter {
        /// The field, as a dotted path such as `params.width`.
        field: String,
        /// The rule it breaks, with the value seen.
        message: String,
    },

    /// A valid job this worker refuses before any download, with a specific code: the
    /// configured chain cannot serve it (`unsupported_by_chain`), an output would overwrite an
    /// input (`output_overwrites_input`), or its `job_id` was used for a different request
    /// (`job_id_conflict`). See [`crate::admission`].
    #[error("{field}: {message}")]
    Refused {
        /// The error class (a `rejected` status).
        code: ErrorCode,
        /// The field concerned, as a dotted path.
        field: String,
        /// What is wrong, and what to do.
        message: String,
    },
}

impl JobError {
    /// Shorthand for an [`JobError::InvalidParameter`].
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidParameter {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The error class reported in the result's `error.code`.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::MalformedJson { .. } => ErrorCode::MalformedJson,
            Self::SchemaViolation { .. } => ErrorCode::SchemaViolation,
            Self::InvalidParameter { .. } => ErrorCode::InvalidParameter,
            Self::Refused { code, .. } => *code,
        }
    }

    /// The `error` object of a `rejected` result: this error's code and message, not retryable.
    pub fn to_error_info(&self) -> ErrorInfo {
        ErrorInfo {
            code: self.code(),
            message: self.to_string(),
            retryable: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_name_the_place() {
        let e = JobError::invalid("params.width", "must be a multiple of 8, got 500");
        assert_eq!(e.code(), ErrorCode::InvalidParameter);
        assert_eq!(
            e.to_string(),
            "invalid parameter params.width: must be a multiple of 8, got 500"
        );
        let info = e.to_error_info();
        assert!(!info.retryable);
        assert_eq!(info.code, ErrorCode::InvalidParameter);

        let e = JobError::SchemaViolation {
            path: "params.seeds[1]".into(),
            message: "invalid type".into(),
        };
        assert_eq!(e.code(), ErrorCode::SchemaViolation);
        assert!(e.to_string().contains("params.seeds[1]"));

        let e = JobError::MalformedJson {
            message: "expected value at line 1 column 1".into(),
        };
        assert_eq!(e.code(), ErrorCode::MalformedJson);
    }
}
