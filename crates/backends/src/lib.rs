//! Storage backends for coffer. Each implements [`coffer_core::Backend`].
//!
//! A local directory, S3-compatible storage, any SSH host over SFTP, and a coffer server
//! (`https://HOST:PORT/REPO`).

mod cache;
mod limited;
mod local;
mod rest;
mod retry;
mod s3;
pub mod s3_lock;
mod sftp;

use std::sync::Arc;

pub use cache::CachedBackend;
pub use limited::DownloadLimited;
pub use local::{create_dir_durable, replace_file, LocalBackend};
pub use rest::{tls_config, RestBackend, RestOptions};
pub use s3::{ObjectStat, S3Backend, S3Location};
pub use sftp::{SftpBackend, SftpLocation};

use coffer_core::limit::RateLimit;
use coffer_core::{Backend, BackendError, Error, FileKind};

/// How much a paced upload sends per turn under `--limit-upload` (local and coffer server
/// backends; SFTP paces its own 240 KiB write requests, S3 whole objects).
pub(crate) const PACED_PIECE: usize = 256 << 10;

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
        k if k.fanned_out() && name.len() >= 2 => format!("{}/{}/{name}", k.dir(), &name[..2]),
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
    open_with(location, &RestOptions::default(), None)
}

/// [`open`] with the settings a coffer server needs (CA certificate, token file) and the
/// rate uploads keep under (`--limit-upload`), if any.
pub fn open_with(
    location: &str,
    rest: &RestOptions,
    upload_limit: Option<Arc<RateLimit>>,
) -> Result<Arc<dyn Backend>, Error> {
    if let Some(l) = &upload_limit {
        // (COFFER_LOG=coffer_limits=debug shows which limits a command, a job or a step got)
        tracing::debug!(target: "coffer_limits", "uploads kept under {} bytes/s", l.bytes_per_sec());
    }
    if location.starts_with("https://") {
        let b = RestBackend::open(location, rest)
            .map_err(|e| Error::Invalid(format!("repository {location:?}: {e}")))?;
        return Ok(Arc::new(b.with_upload_limit(upload_limit)));
    }
    if location.is_empty() {
        return Err(Error::Invalid("empty repository location".into()));
    }
    if let Some(rest) = location.strip_prefix("s3:") {
        let loc =
            S3Location::parse(rest).map_err(|e| Error::Invalid(format!("repository {location:?}: {e}")))?;
        let b = S3Backend::open(loc).map_err(|e| Error::Invalid(format!("repository {location:?}: {e}")))?;
        return Ok(Arc::new(b.with_upload_limit(upload_limit)));
    }
    if location.starts_with("sftp:") {
        let loc = SftpLocation::parse(location)
            .map_err(|e| Error::Invalid(format!("repository {location:?}: {e}")))?;
        let b =
            SftpBackend::open(loc).map_err(|e| Error::Invalid(format!("repository {location:?}: {e}")))?;
        return Ok(Arc::new(b.with_upload_limit(upload_limit)));
    }
    if let Some(scheme) = url_like(location) {
        return Err(Error::Usage(format!(
            "repository {location:?}: {scheme} is not a kind of location coffer knows; use {SUPPORTED} \
             (a local directory whose name starts with `{scheme}` is written ./{location})"
        )));
    }
    Ok(Arc::new(
        LocalBackend::new(location).with_upload_limit(upload_limit),
    ))
}

/// The forms a repository location takes, for messages and `--help`.
pub const SUPPORTED: &str = "a local path (/srv/backup, ./repo), s3:https://HOST/BUCKET/PREFIX, \
     s3:BUCKET/PREFIX (AWS), sftp:[USER@]HOST:/PATH, sftp://[USER@]HOST:PORT/PATH or \
     https://HOST:PORT/REPO (a coffer server)";

/// The scheme a location that is not one of the supported kinds seems to name (`ftp:`,
/// `http://`, `https//` with its colon lost), or `None` for what can only be a path. A typo
/// must not become a directory named `ftp:` or `https` next to the user.
fn url_like(location: &str) -> Option<&str> {
    let end = location
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
        .unwrap_or(location.len());
    let word = &location[..end];
    let rest = &location[end..];
    let starts_alpha = word.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if starts_alpha && (rest.starts_with(':') || rest.starts_with("//")) {
        Some(&location[..end + if rest.starts_with(':') { 1 } else { 2 }])
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_of_urls_are_refused_and_paths_are_not() {
        for bad in [
            "ftp://x/y",
            "https//backup.example.net:8443/web1",
            "http://backup.example.net/web1",
            "rest:http://host/",
            "s3//bucket/prefix",
            "sftp//host/path",
            "backup:2026",
            "HTTPS://host/r",
        ] {
            let Err(e) = open(bad) else { panic!("{bad} opened") };
            assert_eq!(e.category(), coffer_core::Category::Usage, "{bad}: {e}");
            assert!(e.to_string().contains("s3:https://HOST/BUCKET/PREFIX"), "{e}");
        }
        for ok in [
            "/srv/backup",
            "./ftp:x",
            "repo",
            "../a:b",
            "repo-2026.d",
            "/x/https//y",
        ] {
            assert_eq!(url_like(ok), None, "{ok}");
        }
    }
}
