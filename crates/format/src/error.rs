//! Errors from decoding stored bytes.
//!
//! Every decoder in this crate treats its input as hostile: lengths are checked before use,
//! counts are capped, and any inconsistency is a [`FormatError`] naming what was being decoded.

use thiserror::Error;

/// A stored object could not be decoded.
#[derive(Debug, Error)]
pub enum FormatError {
    /// The bytes are shorter than the layout requires.
    #[error("{what}: truncated ({got} bytes, need at least {need})")]
    Truncated {
        what: &'static str,
        got: usize,
        need: usize,
    },
    /// A magic number or version does not match what this build understands.
    #[error("{what}: unsupported format (found {found}, this coffer reads {supported})")]
    Unsupported {
        what: &'static str,
        found: String,
        supported: String,
    },
    /// The bytes are structurally wrong (bad count, bad offset, unknown code).
    #[error("{what}: malformed: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// A CBOR or JSON body failed to decode.
    #[error("{what}: cannot decode: {detail}")]
    Decode { what: &'static str, detail: String },
    /// An id string is not 64 hex digits.
    #[error("invalid id {0:?}: expected 64 hexadecimal digits")]
    BadId(String),
}

impl FormatError {
    pub(crate) fn malformed(what: &'static str, detail: impl Into<String>) -> Self {
        FormatError::Malformed {
            what,
            detail: detail.into(),
        }
    }
}
