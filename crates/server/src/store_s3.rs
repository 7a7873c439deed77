//! The server's repositories in an S3-compatible bucket, through coffer's S3 backend
//! ([`coffer_backends::S3Backend`]: credentials, retries with backoff, multipart uploads,
//! conditional PUTs). One client serves every repository:
//!
//! ```text
//! <prefix>/repos/<repo>/{config,keys,snapshots,index,data/ab,locks,marks,manifests,parity/ab}
//! <prefix>/trash/<repo>/<kind>/<name>    (same layout as a repository)
//! DATA/incoming/<repo>/                  uploads being received, on the server's disk
//! ```
//!
//! An upload is received and checked on local disk first (hash, size, form), then sent to
//! the bucket with a conditional PUT after a HEAD, so an existing object is never replaced.
//! The trash is a server-side copy then a delete. The bucket prefix belongs to one coffer
//! server: two servers sharing it would judge retention without seeing each other's
//! snapshot commits.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use coffer_backends::{S3Backend, S3Location};
use coffer_core::{Backend, BackendError, FileKind, WriteOutcome};

use crate::store::{valid_name, Commit, Entry, Storage};
use crate::{Result, ServerError};

/// A repository's objects and its trash.
#[derive(Debug)]
struct Repo {
    live: S3Backend,
    trash: S3Backend,
}

#[derive(Debug)]
pub struct S3Store {
    root: S3Backend,
    staging: PathBuf,
    repos: Mutex<HashMap<String, Arc<Repo>>>,
    /// Sizes of packs seen (packs never change, only go): a read of a pack then costs one
    /// request to the bucket instead of two.
    pack_sizes: Mutex<HashMap<(String, String), u64>>,
}

/// Pack sizes remembered at most; the map starts over when full.
const PACK_SIZES: usize = 200_000;

fn be(e: BackendError) -> ServerError {
    ServerError::Io(e.to_string())
}

impl S3Store {
    /// `location` is what follows `s3:` (`https://host/bucket/prefix`); credentials come from
    /// the environment or `~/.aws/credentials`, as for the client. `staging` is a local
    /// directory for uploads being received.
    pub fn open(location: &str, staging: &Path) -> Result<S3Store> {
        let loc = S3Location::parse(location)
            .map_err(|e| ServerError::Invalid(format!("storage s3:{location}: {e}")))?;
        if std::env::var_os("COFFER_S3_OBJECT_LOCK").is_some() {
            // the server's retention and trash delete and copy objects on their own schedule
            return Err(ServerError::Invalid(
                "storage: COFFER_S3_OBJECT_LOCK is not supported for a server's storage yet; \
                 unset it (the server's append-only keys already protect the backups)"
                    .into(),
            ));
        }
        let root = S3Backend::open(loc).map_err(|e| ServerError::Invalid(format!("storage: {e}")))?;
        // a listing proves the bucket is reachable with these credentials
        root.list(FileKind::Key).map_err(be)?;
        Ok(S3Store {
            root,
            staging: staging.to_path_buf(),
            repos: Mutex::new(HashMap::new()),
            pack_sizes: Mutex::new(HashMap::new()),
        })
    }

    fn sizes(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u64>> {
        self.pack_sizes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget_size(&self, repo: &str, kind: FileKind, name: &str) {
        if kind == FileKind::Pack {
            self.sizes().remove(&(repo.to_string(), name.to_string()));
        }
    }

    fn repo(&self, repo: &str) -> Result<Arc<Repo>> {
        let mut map = self.repos.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = map.get(repo) {
            return Ok(r.clone());
        }
        let r = Arc::new(Repo {
            live: self
                .root
                .below(&format!("repos/{repo}"))
                .map_err(ServerError::Invalid)?,
            trash: self
                .root
                .below(&format!("trash/{repo}"))
                .map_err(ServerError::Invalid)?,
        });
        map.insert(repo.to_string(), r.clone());
        Ok(r)
    }
}

fn entry(name: String, st: coffer_backends::ObjectStat) -> Entry {
    Entry {
        name,
        size: st.size,
        mtime: st.modified,
    }
}

impl Storage for S3Store {
    fn describe(&self) -> String {
        format!("{}/repos", self.root.location())
    }

    fn prepare_repo(&self, repo: &str, clear_incoming: bool) -> Result<()> {
        let inc = self.incoming(repo);
        if clear_incoming && inc.exists() {
            fs::remove_dir_all(&inc).map_err(|e| ServerError::Io(format!("{}: {e}", inc.display())))?;
        }
        fs::create_dir_all(&inc).map_err(|e| ServerError::Io(format!("{}: {e}", inc.display())))?;
        self.repo(repo).map(|_| ())
    }

    fn incoming(&self, repo: &str) -> PathBuf {
        self.staging.join(repo)
    }

    fn local_path(&self, _repo: &str, _kind: FileKind, _name: &str) -> Option<PathBuf> {
        None
    }

    fn list(&self, repo: &str, kind: FileKind) -> Result<Vec<Entry>> {
        let mut out: Vec<Entry> = self
            .repo(repo)?
            .live
            .list_stat(kind)
            .map_err(be)?
            .into_iter()
            .filter(|(n, _)| valid_name(kind, n))
            .map(|(n, st)| entry(n, st))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn stat(&self, repo: &str, kind: FileKind, name: &str) -> Result<Option<Entry>> {
        let key = (repo.to_string(), name.to_string());
        if kind == FileKind::Pack {
            if let Some(size) = self.sizes().get(&key) {
                // the time is not remembered; nothing that reads it comes this way
                return Ok(Some(Entry {
                    name: name.to_string(),
                    size: *size,
                    mtime: 0,
                }));
            }
        }
        let e = self
            .repo(repo)?
            .live
            .stat(kind, name)
            .map_err(be)?
            .map(|st| entry(name.to_string(), st));
        if let (FileKind::Pack, Some(e)) = (kind, &e) {
            let mut m = self.sizes();
            if m.len() >= PACK_SIZES {
                m.clear();
            }
            m.insert(key, e.size);
        }
        Ok(e)
    }

    fn read(&self, repo: &str, kind: FileKind, name: &str) -> Result<Option<Vec<u8>>> {
        match self.repo(repo)?.live.read(kind, name) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(be(e)),
        }
    }

    fn read_range(&self, repo: &str, kind: FileKind, name: &str, offset: u64, len: u32) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        self.repo(repo)?
            .live
            .read_range(kind, name, offset, len)
            .map_err(be)
    }

    fn commit(&self, repo: &str, kind: FileKind, name: &str, tmp: &Path) -> Result<Commit> {
        let r = self.repo(repo)?;
        let data = fs::read(tmp).map_err(|e| ServerError::Io(format!("{}: {e}", tmp.display())));
        let _ = fs::remove_file(tmp);
        match r.live.write(kind, name, &data?).map_err(be)? {
            WriteOutcome::Created => Ok(Commit::Created),
            WriteOutcome::Existed => Ok(Commit::Existed),
        }
    }

    fn replace(&self, repo: &str, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        self.forget_size(repo, kind, name);
        let r = self.repo(repo)?.live.replace(kind, name, data).map_err(be);
        // again: a read during the PUT may have remembered the damaged copy's size
        self.forget_size(repo, kind, name);
        r
    }

    fn remove(&self, repo: &str, kind: FileKind, name: &str) -> Result<bool> {
        self.forget_size(repo, kind, name);
        match self.repo(repo)?.live.remove(kind, name) {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(be(e)),
        }
    }

    fn move_to_trash(&self, repo: &str, kind: FileKind, name: &str) -> Result<bool> {
        self.forget_size(repo, kind, name);
        let r = self.repo(repo)?;
        if r.live.stat(kind, name).map_err(be)?.is_none() {
            return Ok(false);
        }
        // copy first: a crash between the two steps leaves the object in both places
        r.live.copy_to(kind, name, &r.trash).map_err(be)?;
        let removed = match r.live.remove(kind, name) {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(true),
            Err(e) => Err(be(e)),
        };
        // again: a stat during the copy may have remembered the pack as live
        self.forget_size(repo, kind, name);
        removed
    }

    fn read_trashed(&self, repo: &str, kind: FileKind, name: &str) -> Result<Option<Vec<u8>>> {
        match self.repo(repo)?.trash.read(kind, name) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(be(e)),
        }
    }

    fn take_from_trash(&self, repo: &str, kind: FileKind, name: &str) -> Result<bool> {
        let r = self.repo(repo)?;
        if r.trash.stat(kind, name).map_err(be)?.is_none() {
            return Ok(false);
        }
        if r.live.stat(kind, name).map_err(be)?.is_none() {
            r.trash.copy_to(kind, name, &r.live).map_err(be)?;
        } else if !crate::store::is_hashed(kind)
            && self.read(repo, kind, name)? != self.read_trashed(repo, kind, name)?
        {
            return Err(crate::store::not_the_same(repo, kind, name));
        }
        self.purge(repo, kind, name)?;
        Ok(true)
    }

    fn purge(&self, repo: &str, kind: FileKind, name: &str) -> Result<()> {
        match self.repo(repo)?.trash.remove(kind, name) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(be(e)),
        }
    }
}
