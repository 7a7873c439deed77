//! Storage backends for coffer. Each implements [`coffer_core::Backend`].
//!
//! Today: the local directory backend. S3-compatible storage, SFTP and the coffer server
//! client arrive with their issues, each behind its own cargo feature.

mod local;

use std::sync::Arc;

pub use local::LocalBackend;

use coffer_core::{Backend, Error};

/// Open a backend from a repository location: for now a local path (absolute or relative).
pub fn open(location: &str) -> Result<Arc<dyn Backend>, Error> {
    if location.is_empty() {
        return Err(Error::Invalid("empty repository location".into()));
    }
    for scheme in ["s3:", "sftp:", "rest:", "http://", "https://"] {
        if location.starts_with(scheme) {
            return Err(Error::Invalid(format!(
                "repository {location:?}: the {} backend is not built into this coffer yet; use a local path",
                scheme.trim_end_matches(':').trim_end_matches("://")
            )));
        }
    }
    Ok(Arc::new(LocalBackend::new(location)))
}
