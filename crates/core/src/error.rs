//! Errors of the core.
//!
//! Rules for this file:
//! - every variant says *what* failed and *on which* object, path or location, in one line;
//! - a variant's category ([`Error::category`]) decides the CLI's exit code, so user-facing
//!   conditions (no repository, wrong password) each have their own variant;
//! - [`Error::is_transient`] says whether retrying the same call may succeed.

use std::io;
use std::path::PathBuf;

use coffer_format::FormatError;
use thiserror::Error;

use crate::backend::BackendError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is; the CLI maps each to an exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    /// No repository at the given location.
    NoRepository,
    /// No key file opens with the given passphrase.
    WrongPassword,
    /// Stored data failed an integrity check.
    Integrity,
    /// The command was used wrongly (a bad flag value, a location that is not one).
    Usage,
    /// Anything else.
    Fatal,
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("no repository at {location} (create one with `coffer init`)")]
    NoRepository { location: String },
    #[error("a repository already exists at {location}")]
    RepositoryExists { location: String },
    #[error("wrong password: no key in {location} opens with it")]
    WrongPassword { location: String },
    #[error("{location} has no key files; the repository cannot be opened")]
    NoKeys { location: String },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{object}: {source}")]
    Format {
        object: String,
        #[source]
        source: FormatError,
    },
    #[error("{object}: integrity check failed: {detail}")]
    Integrity { object: String, detail: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    /// Wrong usage: a value the user gave that cannot be right (exit code 2).
    #[error("{0}")]
    Usage(String),
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    pub fn category(&self) -> Category {
        match self {
            Error::NoRepository { .. } => Category::NoRepository,
            Error::WrongPassword { .. } => Category::WrongPassword,
            Error::Integrity { .. } | Error::Format { .. } => Category::Integrity,
            Error::Usage(_) => Category::Usage,
            _ => Category::Fatal,
        }
    }

    pub fn is_transient(&self) -> bool {
        match self {
            Error::Backend(b) => b.is_transient(),
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn format(object: impl Into<String>, source: FormatError) -> Self {
        Error::Format {
            object: object.into(),
            source,
        }
    }

    pub(crate) fn integrity(object: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Integrity {
            object: object.into(),
            detail: detail.into(),
        }
    }
}
