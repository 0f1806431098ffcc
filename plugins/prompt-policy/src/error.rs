//! [`PolicyError`]: everything that can go wrong loading and compiling policy lists. Every
//! variant names the file (and, where it can, the line and category) so an operator can fix it.

use std::io;

/// Why a policy could not be loaded or compiled.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A policy file could not be read.
    #[error("{file}: cannot read policy file: {source}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A policy file is not valid TOML or has unknown keys (the message carries line and column).
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// The parser's message.
        message: String,
    },
    /// A category definition is invalid.
    #[error("{file}:{line}: category `{category}`: {message}")]
    Category {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// The category id.
        category: String,
        /// What is wrong.
        message: String,
    },
    /// A term set definition is invalid.
    #[error("{file}:{line}: set `{set}`: {message}")]
    Set {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// The set name.
        set: String,
        /// What is wrong.
        message: String,
    },
    /// After loading, no category is left: a prompt-policy stage without rules is a mistake.
    #[error("the prompt policy has no categories (built-in lists disabled and no files given?)")]
    Empty,
    /// Building the combined automaton failed.
    #[error("cannot compile the prompt policy: {0}")]
    Compile(String),
}
