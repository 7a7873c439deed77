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
//! ```text
//! log   = "CSL1" || n_index:u32le || index_id:32 * n_index || n_files:u32le || file*
//! file  = path_len:u32le || path || size:u64le || mtime_s:i64le || mtime_ns:u32le
//!         || ctime_s:i64le || ctime_ns:u32le || inode:u64le || n_ids:u32le || blob_id:32 * n_ids
//! ```

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use coffer_format::{BlobId, Id, IndexId, ObjectKind, Timestamp};

use crate::compress::{decode_blob_max, encode_blob, CompressionSpec};
use crate::error::{Error, Result};
use crate::repo::Repository;

const MAGIC: &[u8; 4] = b"CSL1";
/// Largest send log accepted (decompressed): far beyond any real one.
const MAX_LOG: usize = 4 << 30;
const AD: &[u8] = b"coffer/v1 send log";

/// What the last run stored for one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub size: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub inode: u64,
    pub content: Vec<BlobId>,
}

/// The send log of one repository, key and set of paths.
pub struct SendLog {
    path: PathBuf,
    key: zeroize::Zeroizing<[u8; 32]>,
    own_index_files: Vec<IndexId>,
    files: HashMap<Vec<u8>, Sent>,
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
            discarded: None,
        };
        match std::fs::read(&log.path) {
            Ok(bytes) => {
                if let Err(e) = log.decode(&bytes) {
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

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Replace the log on disk with `files` (what this run stored) and `own_index_files`.
    pub fn save(&self, files: &HashMap<Vec<u8>, Sent>, own_index_files: &[IndexId]) -> Result<()> {
        let n_ids: usize = files.values().map(|s| s.content.len()).sum();
        let mut out = Vec::with_capacity(12 + own_index_files.len() * 32 + files.len() * 100 + n_ids * 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(own_index_files.len() as u32).to_le_bytes());
        for i in own_index_files {
            out.extend_from_slice(i.as_bytes());
        }
        out.extend_from_slice(&(files.len() as u32).to_le_bytes());
        for (path, s) in files {
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
        }
        let plain = encode_blob(
            CompressionSpec {
                algo: coffer_format::Compression::Zstd,
                level: 3,
            },
            &out,
        );
        drop(out);
        let sealed = crate::crypto::seal_with(&self.key, ObjectKind::Index, AD, &plain);
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let io = |e: std::io::Error| Error::Invalid(format!("change cache {}: {e}", self.path.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile_in(dir).map_err(io)?;
        tmp.1.write_all(&sealed).map_err(io)?;
        tmp.1.sync_all().map_err(io)?;
        std::fs::rename(&tmp.0, &self.path).map_err(io)?;
        Ok(())
    }

    fn decode(&mut self, sealed: &[u8]) -> Result<()> {
        let what = "change cache";
        let plain = crate::crypto::open_with(&self.key, ObjectKind::Index, AD, sealed, what)?;
        let b = decode_blob_max(plain, MAX_LOG, what)?;
        let bad = || Error::integrity(what, "malformed");
        let mut r = Reader { b: &b, pos: 0 };
        if r.take(4).ok_or_else(bad)? != MAGIC {
            return Err(bad());
        }
        let n = r.u32().ok_or_else(bad)? as usize;
        for _ in 0..n {
            self.own_index_files.push(IndexId(Id(r.id().ok_or_else(bad)?)));
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
            self.files.insert(
                path,
                Sent {
                    size,
                    mtime,
                    ctime,
                    inode,
                    content,
                },
            );
        }
        if r.left() != 0 {
            return Err(bad());
        }
        Ok(())
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
