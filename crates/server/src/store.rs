//! The server's storage, behind [`Storage`]: a local directory ([`LocalStore`], the default)
//! or an S3-compatible bucket ([`crate::store_s3::S3Store`], through coffer's S3 backend).
//! Either way each repository has the layout of a client-side repository, so
//! `coffer -r DATA/repos/NAME` (or `-r s3:…/repos/NAME`) opens it directly in an emergency;
//! beside them are a trash and upload staging. On a local directory:
//!
//! ```text
//! DATA/repos/<repo>/{config,keys,snapshots,index,data/ab,locks,marks,manifests,parity/ab}
//! DATA/repos/<repo>/.incoming/      uploads in progress (cleared at start)
//! DATA/trash/<repo>/<kind>/<name>   what retention or an admin removed, until purged
//! ```
//!
//! Writes never overwrite: an upload lands in `.incoming`, is fsynced, and is renamed into
//! place with `RENAME_NOREPLACE` (first write wins), then the directory is fsynced.

use std::fs::{self, File};
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use coffer_core::FileKind;
use rustix::fs::{renameat_with, RenameFlags, CWD};
use rustix::io::Errno;

use crate::{Result, ServerError};

/// Every kind the server stores.
pub const KINDS: [FileKind; 9] = FileKind::ALL;

/// The kind named by a URL segment (`keys`, `data`, ...).
pub fn kind_from_segment(s: &str) -> Option<FileKind> {
    KINDS
        .iter()
        .copied()
        .find(|k| *k != FileKind::Config && k.dir() == s)
}

/// Files of these kinds are named by the BLAKE3 hash of their bytes; the server checks it.
pub fn is_hashed(kind: FileKind) -> bool {
    matches!(
        kind,
        FileKind::Key | FileKind::Snapshot | FileKind::Index | FileKind::Pack | FileKind::Mark
    )
}

/// The largest upload accepted for a kind.
pub fn max_size(kind: FileKind) -> u64 {
    match kind {
        FileKind::Config | FileKind::Key => 1 << 20,
        FileKind::Lock => 64 << 10,
        FileKind::Snapshot | FileKind::Mark => 64 << 20,
        FileKind::Manifest => coffer_core::format::MAX_MANIFEST as u64,
        FileKind::Index => 512 << 20,
        FileKind::Pack | FileKind::Parity => coffer_core::format::MAX_PACK_SIZE,
    }
}

/// Check an object name for its kind: 64 lowercase hex digits (leases: 48).
pub fn valid_name(kind: FileKind, name: &str) -> bool {
    let len = match kind {
        FileKind::Config => return name == "config",
        FileKind::Lock => 48,
        _ => 64,
    };
    name.len() == len && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Names the server's own pages use.
pub const RESERVED_NAMES: &[&str] = &["metrics", "console", "static", "api", "health"];

/// Repository names: 1–64 of `a-z 0-9 . _ -`, starting with a letter or digit, and not one
/// of [`RESERVED_NAMES`].
pub fn valid_repo_name(name: &str) -> bool {
    !RESERVED_NAMES.contains(&name)
        && !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

/// A stored object as listed.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    /// Modification time (upload time), seconds since the epoch.
    pub mtime: i64,
}

/// What the server needs of a place to keep repositories. Every name passed in has passed
/// [`valid_name`] and every repository [`valid_repo_name`].
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Where the repositories are, for messages (`/srv/coffer/repos`, `s3:https://…/bucket`).
    fn describe(&self) -> String;
    /// Make a repository ready (idempotent); with `clear_incoming` (at start, when no upload
    /// can be running) remove what interrupted uploads left.
    fn prepare_repo(&self, repo: &str, clear_incoming: bool) -> Result<()>;
    /// The local directory where uploads to `repo` are staged before [`Storage::commit`].
    fn incoming(&self, repo: &str) -> PathBuf;
    /// The object's file, if it is stored as one on this machine (reads stream from it).
    fn local_path(&self, repo: &str, kind: FileKind, name: &str) -> Option<PathBuf>;
    fn list(&self, repo: &str, kind: FileKind) -> Result<Vec<Entry>>;
    fn stat(&self, repo: &str, kind: FileKind, name: &str) -> Result<Option<Entry>>;
    /// A whole object (for small ones: manifests), `None` if it is not there.
    fn read(&self, repo: &str, kind: FileKind, name: &str) -> Result<Option<Vec<u8>>>;
    /// `len` bytes at `offset`, which the caller knows to be inside the object (from
    /// [`Storage::stat`] or [`Storage::list`]).
    fn read_range(&self, repo: &str, kind: FileKind, name: &str, offset: u64, len: u32) -> Result<Vec<u8>>;
    /// Put a finished upload (a file in [`Storage::incoming`]) in place, never over an
    /// existing object; the staged file is gone afterwards.
    fn commit(&self, repo: &str, kind: FileKind, name: &str, tmp: &Path) -> Result<Commit>;
    /// Put `data` in place of a damaged object in one step (the damaged copy is not removed
    /// before the new one is durable). Only for a repair whose bytes were checked against the
    /// name (a pack rebuilt from its parity, a parity file computed again from its pack).
    fn replace(&self, repo: &str, kind: FileKind, name: &str, data: &[u8]) -> Result<()>;
    /// Delete for good (leases only; everything else goes to the trash).
    fn remove(&self, repo: &str, kind: FileKind, name: &str) -> Result<bool>;
    /// Move an object to the trash. Returns false if it was not there.
    fn move_to_trash(&self, repo: &str, kind: FileKind, name: &str) -> Result<bool>;
    /// A whole trashed object, `None` if the trash does not hold it.
    fn read_trashed(&self, repo: &str, kind: FileKind, name: &str) -> Result<Option<Vec<u8>>>;
    /// Move an object back from the trash, never over an existing one: the trashed copy is
    /// dropped when the live one is the same object (a name that is its content's hash, or
    /// the same bytes), and both are kept with a [`ServerError::Conflict`] when they differ
    /// (a manifest stored under a trashed one's name). Returns false if the trash does not
    /// hold it.
    fn take_from_trash(&self, repo: &str, kind: FileKind, name: &str) -> Result<bool>;
    /// Delete a trashed object for good.
    fn purge(&self, repo: &str, kind: FileKind, name: &str) -> Result<()>;
    /// Bytes stored in a repository (trash excluded).
    fn usage(&self, repo: &str) -> Result<u64> {
        let mut total = 0;
        for k in KINDS {
            total += self.list(repo, k)?.iter().map(|e| e.size).sum::<u64>();
        }
        Ok(total)
    }
}

/// Repositories in directories below `DATA/repos`, the trash below `DATA/trash`.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
}

/// A whole file, `None` if it is not there.
fn read_if_there(p: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(p.display(), e)),
    }
}

/// A trashed object and a live one of the same name that differ: neither is dropped.
pub(crate) fn not_the_same(repo: &str, kind: FileKind, name: &str) -> ServerError {
    ServerError::Conflict(format!(
        "{repo}: {}/{name} in the trash differs from the one stored under its name since; both \
         are kept (the stored one was not written by the client that wrote the trashed one: \
         look at the server log for who uploaded it)",
        kind_label(kind)
    ))
}

pub(crate) fn io_err(what: impl std::fmt::Display, e: io::Error) -> ServerError {
    if crate::is_full(&e) {
        return ServerError::Full(format!("{what}: {e}"));
    }
    ServerError::Io(format!("{what}: {e}"))
}

pub fn sync_dir(p: &Path) -> io::Result<()> {
    File::open(p)?.sync_all()
}

/// What [`Store::commit`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    Created,
    Existed,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> LocalStore {
        LocalStore { root: root.into() }
    }

    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root.join("repos").join(repo)
    }

    fn kind_dir(&self, repo: &str, kind: FileKind, name: &str) -> PathBuf {
        let base = self.repo_dir(repo);
        match kind {
            FileKind::Config => base,
            k if k.fanned_out() => base.join(k.dir()).join(&name[..2.min(name.len())]),
            k => base.join(k.dir()),
        }
    }

    /// The path of an object; the name must have passed [`valid_name`].
    pub fn path(&self, repo: &str, kind: FileKind, name: &str) -> PathBuf {
        self.kind_dir(repo, kind, name).join(name)
    }

    pub fn trash_path(&self, repo: &str, kind: FileKind, name: &str) -> PathBuf {
        self.root
            .join("trash")
            .join(repo)
            .join(kind_label(kind))
            .join(name)
    }
}

impl Storage for LocalStore {
    fn describe(&self) -> String {
        self.root.join("repos").display().to_string()
    }

    fn incoming(&self, repo: &str) -> PathBuf {
        self.repo_dir(repo).join(".incoming")
    }

    fn local_path(&self, repo: &str, kind: FileKind, name: &str) -> Option<PathBuf> {
        Some(self.path(repo, kind, name))
    }

    fn prepare_repo(&self, repo: &str, clear_incoming: bool) -> Result<()> {
        let base = self.repo_dir(repo);
        let mk = |p: PathBuf| coffer_backends::create_dir_durable(&p).map_err(|e| io_err(p.display(), e));
        for k in KINDS.iter().filter(|k| **k != FileKind::Config) {
            if k.fanned_out() {
                for i in 0..256 {
                    mk(base.join(k.dir()).join(format!("{i:02x}")))?;
                }
            } else {
                mk(base.join(k.dir()))?;
            }
        }
        // the trash's directories too, made durable here once (two requests trashing their
        // first objects at once must not count on each other's sync of a new directory)
        for k in KINDS {
            if let Some(d) = self.trash_path(repo, k, "x").parent() {
                mk(d.to_path_buf())?;
            }
        }
        let inc = self.incoming(repo);
        if clear_incoming && inc.exists() {
            fs::remove_dir_all(&inc).map_err(|e| io_err(inc.display(), e))?;
        }
        mk(inc)?;
        Ok(())
    }

    fn list(&self, repo: &str, kind: FileKind) -> Result<Vec<Entry>> {
        let base = self.repo_dir(repo);
        let mut out = Vec::new();
        if kind == FileKind::Config {
            if let Some(e) = entry(&base.join("config"), "config")? {
                out.push(e);
            }
            return Ok(out);
        }
        let dirs: Vec<PathBuf> = if kind.fanned_out() {
            (0..256)
                .map(|i| base.join(kind.dir()).join(format!("{i:02x}")))
                .collect()
        } else {
            vec![base.join(kind.dir())]
        };
        for d in dirs {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(d.display(), e)),
            };
            for ent in rd {
                let ent = ent.map_err(|e| io_err(d.display(), e))?;
                let name = ent.file_name().to_string_lossy().into_owned();
                if !valid_name(kind, &name) {
                    continue; // temporary or foreign files
                }
                if let Some(e) = entry(&ent.path(), &name)? {
                    out.push(e);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn stat(&self, repo: &str, kind: FileKind, name: &str) -> Result<Option<Entry>> {
        entry(&self.path(repo, kind, name), name)
    }

    fn replace(&self, repo: &str, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        let dest = self.path(repo, kind, name);
        // staged beside the file (a rename does not cross file systems), under a dot name
        // that listings pass over
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.kind_dir(repo, kind, name).join(format!(
            ".repair-{}-{}-{seq}-{name}",
            kind_label(kind),
            std::process::id()
        ));
        coffer_backends::replace_file(&tmp, &dest, data).map_err(|e| io_err(dest.display(), e))
    }

    fn commit(&self, repo: &str, kind: FileKind, name: &str, tmp: &Path) -> Result<Commit> {
        let dir = self.kind_dir(repo, kind, name);
        let dest = dir.join(name);
        let outcome = match renameat_with(CWD, tmp, CWD, &dest, RenameFlags::NOREPLACE) {
            Ok(()) => Commit::Created,
            Err(Errno::EXIST) => Commit::Existed,
            Err(Errno::INVAL) | Err(Errno::NOSYS) => match fs::hard_link(tmp, &dest) {
                Ok(()) => Commit::Created,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Commit::Existed,
                Err(e) => return Err(io_err(dest.display(), e)),
            },
            Err(e) => {
                return Err(io_err(
                    dest.display(),
                    io::Error::from_raw_os_error(e.raw_os_error()),
                ))
            }
        };
        let _ = fs::remove_file(tmp);
        sync_dir(&dir).map_err(|e| io_err(dir.display(), e))?;
        Ok(outcome)
    }

    fn read(&self, repo: &str, kind: FileKind, name: &str) -> Result<Option<Vec<u8>>> {
        read_if_there(&self.path(repo, kind, name))
    }

    fn read_range(&self, repo: &str, kind: FileKind, name: &str, offset: u64, len: u32) -> Result<Vec<u8>> {
        let p = self.path(repo, kind, name);
        let mut f = File::open(&p).map_err(|e| io_err(p.display(), e))?;
        f.seek(io::SeekFrom::Start(offset))
            .map_err(|e| io_err(p.display(), e))?;
        let mut out = Vec::with_capacity(len as usize);
        f.take(len as u64)
            .read_to_end(&mut out)
            .map_err(|e| io_err(p.display(), e))?;
        Ok(out)
    }

    fn remove(&self, repo: &str, kind: FileKind, name: &str) -> Result<bool> {
        let p = self.path(repo, kind, name);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(p.display(), e)),
        }
        // gone for good only once its directory is synced (a lease released must not come
        // back after a power cut as a stale lock)
        let dir = self.kind_dir(repo, kind, name);
        sync_dir(&dir).map_err(|e| io_err(dir.display(), e))?;
        Ok(true)
    }

    fn move_to_trash(&self, repo: &str, kind: FileKind, name: &str) -> Result<bool> {
        let src = self.path(repo, kind, name);
        let dst = self.trash_path(repo, kind, name);
        if let Some(d) = dst.parent() {
            coffer_backends::create_dir_durable(d).map_err(|e| io_err(d.display(), e))?;
        }
        match fs::rename(&src, &dst) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(src.display(), e)),
        }
        for d in [src.parent(), dst.parent()].into_iter().flatten() {
            sync_dir(d).map_err(|e| io_err(d.display(), e))?;
        }
        Ok(true)
    }

    fn read_trashed(&self, repo: &str, kind: FileKind, name: &str) -> Result<Option<Vec<u8>>> {
        read_if_there(&self.trash_path(repo, kind, name))
    }

    fn take_from_trash(&self, repo: &str, kind: FileKind, name: &str) -> Result<bool> {
        let src = self.trash_path(repo, kind, name);
        if !src.exists() {
            return Ok(false);
        }
        if !is_hashed(kind) {
            if let Some(live) = self.read(repo, kind, name)? {
                if Some(live) != self.read_trashed(repo, kind, name)? {
                    return Err(not_the_same(repo, kind, name));
                }
            }
        }
        self.commit(repo, kind, name, &src)?;
        // (the trash's side too: a cut must not leave the object both back and in the trash)
        if let Some(d) = src.parent() {
            sync_dir(d).map_err(|e| io_err(d.display(), e))?;
        }
        Ok(true)
    }

    fn purge(&self, repo: &str, kind: FileKind, name: &str) -> Result<()> {
        let p = self.trash_path(repo, kind, name);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(p.display(), e)),
        }
        // durably gone before its trash record goes (else a cut brings back a file no record
        // lists: its space never freed)
        if let Some(d) = p.parent() {
            sync_dir(d).map_err(|e| io_err(d.display(), e))?;
        }
        Ok(())
    }
}

fn entry(p: &Path, name: &str) -> Result<Option<Entry>> {
    match fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(Some(Entry {
            name: name.to_string(),
            size: m.len(),
            mtime: m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        })),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(p.display(), e)),
    }
}

pub fn kind_label(kind: FileKind) -> &'static str {
    if kind == FileKind::Config {
        "config"
    } else {
        kind.dir()
    }
}

pub fn kind_from_label(s: &str) -> Option<FileKind> {
    if s == "config" {
        Some(FileKind::Config)
    } else {
        kind_from_segment(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let h = "ab".repeat(32);
        assert!(valid_name(FileKind::Pack, &h));
        assert!(!valid_name(FileKind::Pack, &h.to_uppercase()));
        assert!(!valid_name(FileKind::Pack, ".."));
        assert!(!valid_name(FileKind::Pack, &format!("../{}", &h[3..])));
        assert!(!valid_name(FileKind::Lock, &h));
        assert!(valid_name(FileKind::Lock, &"0".repeat(48)));
        assert!(valid_repo_name("web-01.example"));
        for bad in ["", ".", "..", "-x", "A", "a/b", "a%2e"] {
            assert!(!valid_repo_name(bad), "{bad}");
        }
        assert_eq!(kind_from_segment("data"), Some(FileKind::Pack));
        assert_eq!(kind_from_segment(""), None);
        assert_eq!(kind_from_segment("config"), None);
    }

    #[test]
    fn commit_never_overwrites_and_trash_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path());
        s.prepare_repo("r", true).unwrap();
        let name = "cd".repeat(32);
        let t1 = s.incoming("r").join("t1");
        fs::write(&t1, b"one").unwrap();
        assert_eq!(
            s.commit("r", FileKind::Pack, &name, &t1).unwrap(),
            Commit::Created
        );
        let t2 = s.incoming("r").join("t2");
        fs::write(&t2, b"two").unwrap();
        assert_eq!(
            s.commit("r", FileKind::Pack, &name, &t2).unwrap(),
            Commit::Existed
        );
        assert_eq!(fs::read(s.path("r", FileKind::Pack, &name)).unwrap(), b"one");
        assert_eq!(s.list("r", FileKind::Pack).unwrap().len(), 1);
        assert!(s.move_to_trash("r", FileKind::Pack, &name).unwrap());
        assert!(s.list("r", FileKind::Pack).unwrap().is_empty());
        assert!(s.take_from_trash("r", FileKind::Pack, &name).unwrap());
        assert_eq!(fs::read(s.path("r", FileKind::Pack, &name)).unwrap(), b"one");
    }
}
