//! Storage backends for coffer. Each implements [`coffer_core::Backend`].
//!
//! A local directory, S3-compatible storage, any SSH host over SFTP, and a coffer server
//! (`https://HOST:PORT/REPO`).

mod cache;
mod local;
mod rest;
mod s3;
pub mod s3_lock;
mod sftp;

use std::sync::Arc;

pub use cache::CachedBackend;
pub use local::LocalBackend;
pub use rest::{tls_config, RestBackend, RestOptions};
pub use s3::{ObjectStat, S3Backend, S3Location};
pub use sftp::{SftpBackend, SftpLocation};

use coffer_core::{Backend, BackendError, Error, FileKind};

/// The path of a repository file relative to the repository's root, the same on every
/// backend: `config`, `keys/<id>`, `data/ab/ab…`. Names are hex hashes; anything else is
/// refused, so a name can never leave its directory.
pub(crate) fn relative_path(location: &str, kind: FileKind, name: &str) -> Result<String, BackendError> {
    if kind == FileKind::Config {
        return Ok("config".into());
    }
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BackendError::Io {
            location: location.to_string(),
            what: format!("{}/{name}", kind.dir()),
            detail: "invalid object name".into(),
            transient: false,
        });
    }
    Ok(match kind {
        FileKind::Pack if name.len() >= 2 => format!("data/{}/{name}", &name[..2]),
        _ => format!("{}/{name}", kind.dir()),
    })
}

/// How a repository file is named in messages: `config`, `data/abcd…`.
pub fn display_name(kind: FileKind, name: &str) -> String {
    if kind == FileKind::Config {
        "config".into()
    } else {
        format!("{}/{name}", kind.dir())
    }
}

/// Open a backend from a repository location: a local path (absolute or relative),
/// `s3:https://HOST/BUCKET/PREFIX`, `sftp:[USER@]HOST:/PATH` (`sftp://HOST:PORT/PATH`), or a
/// coffer server `https://HOST:PORT/REPO`.
pub fn open(location: &str) -> Result<Arc<dyn Backend>, Error> {
    open_with(location, &RestOptions::default())
}

/// [`open`] with the settings a coffer server needs (CA certificate, token file).
pub fn open_with(location: &str, rest: &RestOptions) -> Result<Arc<dyn Backend>, Error> {
    if location.starts_with("https://") {
        let b = RestBackend::open(location, rest)
            .map_err(|e| Error::Invalid(format!("repository {location:?}: {e}")))?;
        return Ok(Arc::new(b));
    }
    if location.is_empty() {
        return Err(Error::Invalid("empty repository location".into()));
    }
    if let Some(rest) = location.strip_prefix("s3:") {
        let loc =
            S3Location::parse(rest).map_err(|e| Error::Invalid(format!("repository {location:?}: {e}")))?;
        let b = S3Backend::open(loc).map_err(|e| Error::Invalid(format!("repository {location:?}: {e}")))?;
        return Ok(Arc::new(b));
    }
    if location.starts_with("sftp:") {
        let loc = SftpLocation::parse(location)
            .map_err(|e| Error::Invalid(format!("repository {location:?}: {e}")))?;
        let b =
            SftpBackend::open(loc).map_err(|e| Error::Invalid(format!("repository {location:?}: {e}")))?;
        return Ok(Arc::new(b));
    }
    for scheme in ["rest:", "http://"] {
        if location.starts_with(scheme) {
            return Err(Error::Invalid(format!(
                "repository {location:?}: the {} backend is not built into this coffer yet; use a local path",
                scheme.trim_end_matches(':').trim_end_matches("://")
            )));
        }
    }
    Ok(Arc::new(LocalBackend::new(location)))
}
