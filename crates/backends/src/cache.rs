//! A local cache of a remote repository's metadata: key, index and snapshot files, and the
//! packs that hold trees. Listings, parent lookups and incremental backups over S3, SFTP or
//! a coffer server then read them from local disk instead of downloading them every run.
//!
//! Safe when other clients change the repository: what exists is always listed from the
//! repository itself (a cached file the listing no longer shows, because a prune removed it,
//! is deleted from the cache), and every cached file is checked against its name (the BLAKE3
//! of its bytes) before it is used, so a damaged cache costs a download, never a wrong read.
//! Files are stored as the repository stores them: encrypted.
//!
//! Layout: `CACHE/repos/<first 16 hex digits of BLAKE3(location)>/{keys,index,snapshots,data}/NAME`.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use coffer_core::{Backend, BackendError, FileInfo, FileKind, WriteOutcome};

type BResult<T> = Result<T, BackendError>;

#[derive(Debug)]
pub struct CachedBackend {
    inner: Arc<dyn Backend>,
    dir: PathBuf,
    /// Cached packs whose hash this process has checked.
    verified: Mutex<HashSet<String>>,
}

fn cached_kind(kind: FileKind) -> bool {
    matches!(kind, FileKind::Key | FileKind::Index | FileKind::Snapshot)
}

fn valid(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

impl CachedBackend {
    /// Cache `inner` below `cache_root`.
    pub fn new(inner: Arc<dyn Backend>, cache_root: &Path) -> CachedBackend {
        let h = blake3::hash(inner.location().as_bytes()).to_hex();
        CachedBackend {
            dir: cache_root.join("repos").join(&h[..16]),
            inner,
            verified: Mutex::new(HashSet::new()),
        }
    }

    fn path(&self, kind: FileKind, name: &str) -> PathBuf {
        self.dir.join(kind.dir()).join(name)
    }

    /// The cached bytes if they are there and whole.
    fn get(&self, kind: FileKind, name: &str) -> Option<Vec<u8>> {
        let p = self.path(kind, name);
        let b = fs::read(&p).ok()?;
        if blake3::hash(&b).to_hex().as_str() == name {
            Some(b)
        } else {
            let _ = fs::remove_file(&p);
            None
        }
    }

    /// Keep a copy (best effort: a cache that cannot be written is no cache).
    fn put(&self, kind: FileKind, name: &str, parts: &[&[u8]]) {
        if !valid(name) {
            return;
        }
        let p = self.path(kind, name);
        let Some(dir) = p.parent() else { return };
        let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
        if !self.dir.exists() {
            // encrypted files, but their names and sizes are nobody else's business
            use std::os::unix::fs::DirBuilderExt;
            let _ = fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir);
        }
        let r = fs::create_dir_all(dir).and_then(|_| {
            let mut f = fs::File::create(&tmp)?;
            for part in parts {
                io::Write::write_all(&mut f, part)?;
            }
            fs::rename(&tmp, &p)
        });
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }

    /// Remove cached files of `kind` the repository no longer lists.
    fn forget_missing(&self, kind: FileKind, listed: &[FileInfo]) {
        let Ok(rd) = fs::read_dir(self.dir.join(kind.dir())) else {
            return;
        };
        let names: std::collections::HashSet<&str> = listed.iter().map(|f| f.name.as_str()).collect();
        for e in rd.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if !names.contains(n.as_ref()) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

impl Backend for CachedBackend {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn create(&self) -> BResult<()> {
        self.inner.create()
    }

    fn exists(&self) -> BResult<bool> {
        self.inner.exists()
    }

    fn list(&self, kind: FileKind) -> BResult<Vec<FileInfo>> {
        let listed = self.inner.list(kind)?;
        if cached_kind(kind) {
            self.forget_missing(kind, &listed);
        } else if kind == FileKind::Pack {
            self.forget_missing(FileKind::Pack, &listed);
        }
        Ok(listed)
    }

    fn read(&self, kind: FileKind, name: &str) -> BResult<Vec<u8>> {
        if !cached_kind(kind) {
            return self.inner.read(kind, name);
        }
        if let Some(b) = self.get(kind, name) {
            return Ok(b);
        }
        let b = self.inner.read(kind, name)?;
        self.put(kind, name, &[&b]);
        Ok(b)
    }

    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u32) -> BResult<Vec<u8>> {
        self.inner.read_range(kind, name, offset, len)
    }

    fn read_tree_range(&self, pack: &str, offset: u64, len: u32) -> BResult<Vec<u8>> {
        let p = self.path(FileKind::Pack, pack);
        let checked = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(pack);
        if !checked && p.exists() {
            // once per process, the whole cached pack against its name: a damaged cache
            // must cost a download, not look like damage in the repository
            if self.get(FileKind::Pack, pack).is_some() {
                self.verified
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(pack.to_string());
            }
        }
        let from_cache = || -> io::Result<Vec<u8>> {
            let mut f = fs::File::open(&p)?;
            f.seek(SeekFrom::Start(offset))?;
            let mut b = vec![0u8; len as usize];
            f.read_exact(&mut b)?;
            Ok(b)
        };
        if let Ok(b) = from_cache() {
            return Ok(b);
        }
        // fetch the whole pack once; later trees of it come from disk
        let whole = self.inner.read(FileKind::Pack, pack)?;
        if blake3::hash(&whole).to_hex().as_str() != pack {
            // not what the name promises: do not keep it, read only the range
            return self.inner.read_range(FileKind::Pack, pack, offset, len);
        }
        self.put(FileKind::Pack, pack, &[&whole]);
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pack.to_string());
        let end = offset as usize + len as usize;
        match whole.get(offset as usize..end) {
            Some(b) => Ok(b.to_vec()),
            None => self.inner.read_range(FileKind::Pack, pack, offset, len),
        }
    }

    fn size(&self, kind: FileKind, name: &str) -> BResult<u64> {
        self.inner.size(kind, name)
    }

    fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> BResult<WriteOutcome> {
        self.write_parts(kind, name, &[data])
    }

    fn write_parts(&self, kind: FileKind, name: &str, parts: &[&[u8]]) -> BResult<WriteOutcome> {
        let r = self.inner.write_parts(kind, name, parts)?;
        if cached_kind(kind) {
            self.put(kind, name, parts);
        }
        Ok(r)
    }

    fn make_durable(&self, kind: FileKind, name: &str) -> BResult<()> {
        self.inner.make_durable(kind, name)
    }

    fn replace(&self, kind: FileKind, name: &str, data: &[u8]) -> BResult<()> {
        if cached_kind(kind) || kind == FileKind::Pack {
            let _ = fs::remove_file(self.path(kind, name));
        }
        self.inner.replace(kind, name, data)
    }

    fn latency_bound(&self) -> bool {
        self.inner.latency_bound()
    }

    fn retention_secs(&self) -> Option<i64> {
        self.inner.retention_secs()
    }

    fn extend_retention(&self, kind: FileKind, in_use: &dyn Fn(&str) -> bool) -> BResult<usize> {
        self.inner.extend_retention(kind, in_use)
    }

    fn wants_manifests(&self) -> bool {
        self.inner.wants_manifests()
    }

    fn remove(&self, kind: FileKind, name: &str) -> BResult<()> {
        if cached_kind(kind) || kind == FileKind::Pack {
            let _ = fs::remove_file(self.path(kind, name));
        }
        self.inner.remove(kind, name)
    }
}
