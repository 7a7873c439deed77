//! A write-only client's change cache (the "send log", after bupstash's).
//!
//! A full key compares each file with the parent snapshot and reuses the chunk list of every
//! file whose size, mtime, ctime and inode match. A write-only key cannot read snapshots, so
//! without this it would read every file on every run. The send log is that parent, kept on
//! the client: for each file the last run stored, its metadata and chunk ids, and the index
//! files the client wrote itself. Those files are trusted like vouched ones
//! ([`crate::Repository::trust_own_index_files`]): a write-only client deduplicates against
//! what a full key vouched for and what it stored itself, never against another write-only
//! client's claims (docs/FORMAT.md "Vouched index files").
//!
//! It lives in the client's cache directory, one file per repository, key and set of backed-up
//! paths, sealed with a key derived from the repository key (paths are not left in the clear
//! on disk) and replaced atomically at the end of each successful run. A missing, damaged or
//! foreign file costs speed only: the run reads every file and writes a new one.
//!
//! Two files, both sealed: the files' records, rewritten when a file changed, and the list
//! of index files, rewritten when the run wrote one (so that a run which only stored a few
//! new directory trees does not rewrite some MiB of records). The list is written first: a
//! crash between the two leaves records whose content is in listed index files.
//!
//! ```text
//! log   = "CSL2" || n_files:u32le || file*                     (NAME)
//! own   = "CSO1" || n_index:u32le || index_id:32 * n_index     (NAME.own)
//! file  = path_len:u32le || path || size:u64le || mtime_s:i64le || mtime_ns:u32le
//!         || ctime_s:i64le || ctime_ns:u32le || inode:u64le || n_ids:u32le || blob_id:32 * n_ids
//!         || n_xattrs:u32le || (name_len:u32le || name || value_len:u32le || value) * n_xattrs
//! ```
//!
//! A file's extended attributes are kept too: they cannot change without changing its ctime,
//! so an unchanged file costs no system call for them (as with a full key's parent). A log of
//! the first format ("CSL1": the index list first, no attributes) is read as one whose files'
//! attributes are unknown: they are read again once.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use coffer_format::{BlobId, Bytes, Id, IndexId, ObjectKind, Timestamp, Xattr};

use crate::compress::{decode_blob_max, encode_blob, CompressionSpec};
use crate::error::{Error, Result};
use crate::repo::Repository;

const MAGIC: &[u8; 4] = b"CSL2";
const MAGIC_V1: &[u8; 4] = b"CSL1";
const MAGIC_OWN: &[u8; 4] = b"CSO1";
/// Largest send log accepted (decompressed): far beyond any real one.
const MAX_LOG: usize = 4 << 30;
const AD: &[u8] = b"coffer/v1 send log";
const AD_OWN: &[u8] = b"coffer/v1 send log: own index files";

/// What the last run stored for one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub size: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub inode: u64,
    pub content: Vec<BlobId>,
    /// The extended attributes (`None`: not known, from a log of the older format).
    pub xattrs: Option<Vec<Xattr>>,
}

/// The send log of one repository, key and set of paths.
pub struct SendLog {
    path: PathBuf,
    key: zeroize::Zeroizing<[u8; 32]>,
    own_index_files: Vec<IndexId>,
    files: HashMap<Vec<u8>, Sent>,
    /// Read from a log of the first format (rewritten at the end of the run).
    v1: bool,
    /// Why the log on disk was not used, if it was not (a warning for the run).
    pub discarded: Option<String>,
}

impl std::fmt::Debug for SendLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendLog")
            .field("path", &self.path)
            .field("files", &self.files.len())
            .field("own_index_files", &self.own_index_files.len())
            .finish()
    }
}

impl SendLog {
    /// The send log for `repo`'s key and these backed-up `paths`, under `cache_dir`; empty
    /// when there is none yet or it cannot be used (then `discarded` says why).
    pub fn open(cache_dir: &Path, repo: &Repository, paths: &[PathBuf]) -> SendLog {
        let mut h = blake3::Hasher::new_derive_key("coffer/v1 send log name");
        h.update(&repo.config().id.0);
        h.update(&repo.key_id().0 .0);
        let mut sorted: Vec<&PathBuf> = paths.iter().collect();
        sorted.sort();
        for p in sorted {
            h.update(p.as_os_str().as_encoded_bytes());
            h.update(&[0]);
        }
        let name = h.finalize().to_hex();
        let mut log = SendLog {
            path: cache_dir.join("sendlog").join(&name[..32]),
            key: repo.key().local_cache_key("send log"),
            own_index_files: Vec::new(),
            files: HashMap::new(),
            v1: false,
            discarded: None,
        };
        let own_path = log.own_path();
        match std::fs::read(&log.path).and_then(|b| Ok((b, read_if_exists(&own_path)?))) {
            Ok((bytes, own)) => {
                let decoded = log.decode(&bytes).and_then(|()| match own {
                    Some(own) => log.decode_own(&own),
                    None => Ok(()),
                });
                if let Err(e) = decoded {
                    log.discarded = Some(format!(
                        "change cache {} not used, every file is read again: {e}",
                        log.path.display()
                    ));
                    log.own_index_files.clear();
                    log.files.clear();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                log.discarded = Some(format!(
                    "change cache {} not readable, every file is read again: {e}",
                    log.path.display()
                ))
            }
        }
        log
    }

    /// Keep the index files but not the files' records: every file is read again (`--force`).
    pub fn forget_files(&mut self) {
        self.files.clear();
    }

    /// The index files this client wrote, as the log remembers them.
    pub fn own_index_files(&self) -> &[IndexId] {
        &self.own_index_files
    }

    /// What the last run stored for the file at `path`.
    pub fn get(&self, path: &Path) -> Option<&Sent> {
        self.files.get(path.as_os_str().as_encoded_bytes())
    }

    /// [`Self::get`], with the log's own copy of the path (for [`Recorder::keep`]).
    pub fn get_entry(&self, path: &Path) -> Option<(&[u8], &Sent)> {
        self.files
            .get_key_value(path.as_os_str().as_encoded_bytes())
            .map(|(k, v)| (k.as_slice(), v))
    }

    /// A recorder of what a run stores, to be saved with [`Self::save_run`].
    pub fn recorder(&self) -> Recorder<'_> {
        Recorder {
            kept: Vec::with_capacity(self.files.len()),
            fresh: Vec::new(),
        }
    }

    fn own_path(&self) -> PathBuf {
        self.path.with_extension("own")
    }

    /// Save what the run recorded: the index list if it changed, then the files' records if
    /// any file is new, changed or gone. Returns how many of the two files were written.
    pub fn save_run(&self, rec: Recorder<'_>, own_index_files: &[IndexId]) -> Result<usize> {
        let mut written = 0;
        if self.own_index_files != own_index_files || !self.own_path().exists() {
            let mut out = Vec::with_capacity(8 + own_index_files.len() * 32);
            out.extend_from_slice(MAGIC_OWN);
            out.extend_from_slice(&(own_index_files.len() as u32).to_le_bytes());
            for i in own_index_files {
                out.extend_from_slice(i.as_bytes());
            }
            self.replace(&self.own_path(), AD_OWN, &out)?;
            written += 1;
        }
        if !rec.fresh.is_empty() || rec.kept.len() != self.files.len() || self.v1 {
            let kept = rec.kept.iter().filter_map(|k| self.files.get_key_value(*k));
            let fresh = rec.fresh.iter().map(|(k, v)| (k, v));
            self.write(kept.chain(fresh))?;
            written += 1;
        }
        Ok(written)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    fn write<'f>(&self, files: impl Iterator<Item = (&'f Vec<u8>, &'f Sent)>) -> Result<()> {
        let mut out = Vec::with_capacity(8 + self.files.len() * 140);
        out.extend_from_slice(MAGIC);
        let count_at = out.len();
        out.extend_from_slice(&0u32.to_le_bytes());
        let mut count = 0u32;
        for (path, s) in files {
            count += 1;
            out.extend_from_slice(&(path.len() as u32).to_le_bytes());
            out.extend_from_slice(path);
            out.extend_from_slice(&s.size.to_le_bytes());
            for t in [s.mtime, s.ctime] {
                out.extend_from_slice(&t.s.to_le_bytes());
                out.extend_from_slice(&t.ns.to_le_bytes());
            }
            out.extend_from_slice(&s.inode.to_le_bytes());
            out.extend_from_slice(&(s.content.len() as u32).to_le_bytes());
            for id in &s.content {
                out.extend_from_slice(id.as_bytes());
            }
            let xattrs = s.xattrs.as_deref().unwrap_or_default();
            out.extend_from_slice(&(xattrs.len() as u32).to_le_bytes());
            for x in xattrs {
                for part in [&x.name.0, &x.value.0] {
                    out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                    out.extend_from_slice(part);
                }
            }
        }
        out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
        self.replace(&self.path, AD, &out)
    }

    /// Compress, seal and atomically replace the file at `path`.
    fn replace(&self, path: &Path, ad: &[u8], plain: &[u8]) -> Result<()> {
        // (a local cache: zstd's fastest level, the file's size hardly matters)
        let compressed = encode_blob(
            CompressionSpec {
                algo: coffer_format::Compression::Zstd,
                level: 1,
            },
            plain,
        );
        let sealed = crate::crypto::seal_with(&self.key, ObjectKind::Index, ad, &compressed);
        drop(compressed);
        let dir = path.parent().unwrap_or(Path::new("."));
        let io = |e: std::io::Error| Error::Invalid(format!("change cache {}: {e}", path.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile_in(dir).map_err(io)?;
        tmp.1.write_all(&sealed).map_err(io)?;
        tmp.1.sync_all().map_err(io)?;
        std::fs::rename(&tmp.0, path).map_err(io)?;
        Ok(())
    }

    fn decode_own(&mut self, sealed: &[u8]) -> Result<()> {
        let what = "change cache's index list";
        let plain = crate::crypto::open_with(&self.key, ObjectKind::Index, AD_OWN, sealed, what)?;
        let b = decode_blob_max(plain, MAX_LOG, what)?;
        let bad = || Error::integrity(what, "malformed");
        let mut r = Reader { b: &b, pos: 0 };
        if r.take(4).ok_or_else(bad)? != MAGIC_OWN {
            return Err(bad());
        }
        let n = r.u32().ok_or_else(bad)? as usize;
        for _ in 0..n {
            self.own_index_files.push(IndexId(Id(r.id().ok_or_else(bad)?)));
        }
        if r.left() != 0 {
            return Err(bad());
        }
        self.own_index_files.sort();
        self.own_index_files.dedup();
        Ok(())
    }

    fn decode(&mut self, sealed: &[u8]) -> Result<()> {
        let what = "change cache";
        let plain = crate::crypto::open_with(&self.key, ObjectKind::Index, AD, sealed, what)?;
        let b = decode_blob_max(plain, MAX_LOG, what)?;
        let bad = || Error::integrity(what, "malformed");
        let mut r = Reader { b: &b, pos: 0 };
        let v1 = match r.take(4).ok_or_else(bad)? {
            m if m == MAGIC => false,
            m if m == MAGIC_V1 => true,
            _ => return Err(bad()),
        };
        self.v1 = v1;
        if v1 {
            let n = r.u32().ok_or_else(bad)? as usize;
            for _ in 0..n {
                self.own_index_files.push(IndexId(Id(r.id().ok_or_else(bad)?)));
            }
            self.own_index_files.sort();
        }
        let n = r.u32().ok_or_else(bad)? as usize;
        self.files.reserve(n.min(b.len() / 64));
        for _ in 0..n {
            let len = r.u32().ok_or_else(bad)? as usize;
            let path = r.take(len).ok_or_else(bad)?.to_vec();
            let size = r.u64().ok_or_else(bad)?;
            let mut ts = || -> Option<Timestamp> {
                Some(Timestamp {
                    s: r.u64()? as i64,
                    ns: r.u32()?,
                })
            };
            let (mtime, ctime) = (ts().ok_or_else(bad)?, ts().ok_or_else(bad)?);
            let inode = r.u64().ok_or_else(bad)?;
            let k = r.u32().ok_or_else(bad)? as usize;
            let mut content = Vec::with_capacity(k.min(r.left() / 32));
            for _ in 0..k {
                content.push(BlobId(Id(r.id().ok_or_else(bad)?)));
            }
            let xattrs = if v1 {
                None
            } else {
                let n = r.u32().ok_or_else(bad)? as usize;
                let mut xattrs = Vec::with_capacity(n.min(r.left() / 8));
                for _ in 0..n {
                    let mut part = || -> Option<Bytes> {
                        let len = r.u32()? as usize;
                        Some(Bytes(r.take(len)?.to_vec()))
                    };
                    let (name, value) = (part().ok_or_else(bad)?, part().ok_or_else(bad)?);
                    xattrs.push(Xattr { name, value });
                }
                Some(xattrs)
            };
            self.files.insert(
                path,
                Sent {
                    size,
                    mtime,
                    ctime,
                    inode,
                    content,
                    xattrs,
                },
            );
        }
        if r.left() != 0 {
            return Err(bad());
        }
        Ok(())
    }
}

/// What a run stores, for the next run's log: files kept as the log had them (by the log's
/// own copy of their path) and files stored anew.
pub struct Recorder<'a> {
    kept: Vec<&'a [u8]>,
    fresh: Vec<(Vec<u8>, Sent)>,
}

impl<'a> Recorder<'a> {
    /// A file found exactly as the log has it (`path` from [`SendLog::get_entry`]).
    pub fn keep(&mut self, path: &'a [u8]) {
        self.kept.push(path);
    }

    /// A file stored anew, or changed.
    pub fn record(&mut self, path: &Path, sent: Sent) {
        self.fresh
            .push((path.as_os_str().as_encoded_bytes().to_vec(), sent));
    }
}

/// The index files to remember after a run: those remembered before that still exist, and
/// those the run wrote.
pub fn own_files_after(before: &[IndexId], existing: &[IndexId], written: &[IndexId]) -> Vec<IndexId> {
    let existing: HashSet<&IndexId> = existing.iter().collect();
    let mut out: Vec<IndexId> = before.iter().filter(|i| existing.contains(i)).copied().collect();
    out.extend(written.iter().copied());
    out.sort();
    out.dedup();
    out
}

fn read_if_exists(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut rnd = [0u8; 8];
    crate::crypto::random_bytes(&mut rnd);
    let p = dir.join(format!(".tmp-{}", u64::from_le_bytes(rnd)));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)?;
    Ok((p, f))
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn id(&mut self) -> Option<[u8; 32]> {
        self.take(32)?.try_into().ok()
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn left(&self) -> usize {
        self.b.len() - self.pos
    }
}
