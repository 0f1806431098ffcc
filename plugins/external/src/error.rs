//! [`ExternalError`]: why an external stage could not be built, or why a program's answer was
//! refused.
//!
//! Messages never contain prompt text or response bodies: they end up in logs and in job
//! results. A malformed response is described by where it is wrong (`changes[1].key`), not by
//! what it said.

/// Why building an external stage failed, or why a response was refused.
#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    /// A configuration value is missing or out of range; the message names the key.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A header is configured to come from an environment variable that is not set (or not
    /// valid as a header value).
    #[error("header `{header}`: environment variable `{var}` {problem}")]
    HeaderEnv {
        /// The header name.
        header: String,
        /// The environment variable named in `headers_from_env`.
        var: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The exec stage could not start its program.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// The configured program.
        program: String,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The request could not be encoded (an image that does not encode as PNG).
    #[error("cannot encode the request: {0}")]
    Request(String),
    /// The program answered, but not in the protocol (`inpaint-stage.v1`).
    #[error("malformed response: {0}")]
    Malformed(String),
}
