//! A repository in a local directory (or any mounted file system).
//!
//! `write` puts the bytes in a temporary file in the destination directory, fsyncs it,
//! renames it into place with `RENAME_NOREPLACE` (falling back to `link` + `unlink` where the
//! file system lacks it), then fsyncs the directory: the file appears whole or not at all, an
//! existing file is never replaced, and it survives a crash once `write` returns.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use coffer_core::limit::RateLimit;
use coffer_core::{Backend, BackendError, FileInfo, FileKind, WriteOutcome};
use rustix::fs::{renameat_with, RenameFlags, CWD};
use rustix::io::Errno;

type BResult<T> = Result<T, BackendError>;

#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
    /// Recently read packs, kept open: a restore of many small files reads many blobs from
    /// each pack, and opening the pack for each one cost one `openat` per blob.
    open_packs: Arc<Mutex<OpenPacks>>,
    /// Writes keep under this rate (`--limit-upload`: a repository on NFS or a NAS share).
    upload_limit: Option<Arc<RateLimit>>,
    /// Directories made on demand that this process made sure of: they exist and their
    /// parents were fsynced after (once per directory per process).
    durable_dirs: Arc<Mutex<std::collections::HashSet<PathBuf>>>,
}

/// Packs kept open by [`LocalBackend`] (most recently used last).
const OPEN_PACKS: usize = 32;

/// Open packs by name, least recently used first.
type OpenPacks = Vec<(String, Arc<File>)>;

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend {
            root: root.into(),
            open_packs: Arc::default(),
            upload_limit: None,
            durable_dirs: Arc::default(),
        }
    }

    /// Create `dir` (below the root) and its missing parents so that they survive a power
    /// cut: a new directory's name is durable only once its parent directory is fsynced, and
    /// a file written into a directory whose name was lost is lost with it. Each parent is
    /// synced whether this process or another one created the directory (that one may have
    /// died before syncing); once per directory per process.
    fn durable_dir(&self, dir: &Path) -> io::Result<()> {
        let known = |d: &Path| {
            self.durable_dirs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(d)
        };
        if dir == self.root || !dir.starts_with(&self.root) || known(dir) {
            return Ok(());
        }
        let parent = dir.parent().unwrap_or(&self.root);
        self.durable_dir(parent)?;
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        sync_dir(parent)?;
        self.durable_dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dir.to_path_buf());
        Ok(())
    }

    /// Writes keep under `limit`, 256 KiB at a time.
    pub fn with_upload_limit(mut self, limit: Option<Arc<RateLimit>>) -> Self {
        self.upload_limit = limit;
        self
    }

    /// Write `part`, in paced pieces under an upload limit.
    fn write_paced(&self, f: &mut File, part: &[u8]) -> io::Result<()> {
        match &self.upload_limit {
            None => f.write_all(part),
            Some(l) => part.chunks(crate::PACED_PIECE).try_for_each(|piece| {
                l.wait_blocking(piece.len());
                f.write_all(piece)
            }),
        }
    }

    fn open_packs(&self) -> std::sync::MutexGuard<'_, OpenPacks> {
        self.open_packs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An open pack from the cache, or opened and cached. Packs are immutable, so a cached
    /// descriptor always reads the right bytes.
    fn pack_file(&self, name: &str, path: &Path) -> io::Result<Arc<File>> {
        {
            let mut c = self.open_packs();
            if let Some(i) = c.iter().position(|(n, _)| n == name) {
                let e = c.remove(i);
                let f = e.1.clone();
                c.push(e);
                return Ok(f);
            }
        }
        let f = Arc::new(File::open(path)?);
        let mut c = self.open_packs();
        c.push((name.to_string(), f.clone()));
        if c.len() > OPEN_PACKS {
            c.remove(0);
        }
        Ok(f)
    }

    fn dir(&self, kind: FileKind, name: &str) -> PathBuf {
        match kind {
            k if k.fanned_out() && name.len() >= 2 => self.root.join(k.dir()).join(&name[..2]),
            _ => self.root.join(kind.dir()),
        }
    }

    fn path(&self, kind: FileKind, name: &str) -> BResult<PathBuf> {
        Ok(self
            .root
            .join(crate::relative_path(&self.location(), kind, name)?))
    }

    fn err(&self, what: &str, e: io::Error) -> BackendError {
        if e.kind() == ErrorKind::NotFound {
            return BackendError::NotFound {
                location: self.location(),
                what: what.to_string(),
            };
        }
        let transient = matches!(
            e.kind(),
            ErrorKind::Interrupted | ErrorKind::TimedOut | ErrorKind::WouldBlock
        );
        BackendError::Io {
            location: self.location(),
            what: what.to_string(),
            detail: e.to_string(),
            transient,
        }
    }

    fn what(kind: FileKind, name: &str) -> String {
        crate::display_name(kind, name)
    }
}

fn sync_dir(p: &Path) -> io::Result<()> {
    File::open(p)?.sync_all()
}

/// Create `dir` and its missing parents so that they survive a power cut: each directory this
/// call makes has its parent fsynced at once (a new directory's name is durable only then, and
/// a file written into a directory whose name was lost is lost with it).
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.is_dir() {
        missing.push(d);
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => d = p,
            _ => break,
        }
    }
    for m in missing.into_iter().rev() {
        match fs::create_dir(m) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let parent = m.parent().filter(|p| !p.as_os_str().is_empty());
        sync_dir(parent.unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

/// Put `data` at `dest` in place of what is there, in one step: written to `tmp` (a new file
/// in `dest`'s directory), `fsync`, renamed over `dest`, the directory `fsync`ed. The old file
/// stays until the new one is durable (a repair never removes the damaged copy first).
pub fn replace_file(tmp: &Path, dest: &Path, data: &[u8]) -> io::Result<()> {
    let res = (|| -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(tmp, dest)?;
        sync_dir(dest.parent().unwrap_or(Path::new(".")))
    })();
    if res.is_err() {
        let _ = fs::remove_file(tmp);
    }
    res
}

fn tmp_name() -> String {
    let mut r = [0u8; 8];
    // without an entropy source the process id still separates concurrent writers
    if getrandom::fill(&mut r).is_err() {
        r = (std::process::id() as u64).to_le_bytes();
    }
    format!(".tmp-{}", hex::encode(r))
}

impl LocalBackend {
    /// Create file `name` of `kind` through a temporary file that `body` fills, then `fsync`,
    /// rename without replacing, and `fsync` the directory (the guarantees of
    /// [`Backend::write`]). `body` is dropped before the wait for `fsync`.
    fn write_with(
        &self,
        kind: FileKind,
        name: &str,
        body: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> BResult<WriteOutcome> {
        let what = Self::what(kind, name);
        let dest = self.path(kind, name)?;
        let dir = self.dir(kind, name);
        if dest.exists() {
            // its writer may have been killed between its rename and its directory's fsync:
            // the name this write counts on is made durable here
            sync_dir(&dir).map_err(|e| self.err(&what, e))?;
            return Ok(WriteOutcome::Existed);
        }
        if kind.made_on_demand() {
            self.durable_dir(&dir).map_err(|e| self.err(&what, e))?;
        }
        let tmp = dir.join(tmp_name());
        let res = (|| -> io::Result<WriteOutcome> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            body(&mut f)?;
            f.sync_all()?;
            drop(f);
            let outcome = match renameat_with(CWD, &tmp, CWD, &dest, RenameFlags::NOREPLACE) {
                Ok(()) => WriteOutcome::Created,
                Err(Errno::EXIST) => WriteOutcome::Existed,
                Err(Errno::INVAL) | Err(Errno::NOSYS) => match fs::hard_link(&tmp, &dest) {
                    Ok(()) => WriteOutcome::Created,
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => WriteOutcome::Existed,
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(io::Error::from_raw_os_error(e.raw_os_error())),
            };
            let _ = fs::remove_file(&tmp);
            sync_dir(&dir)?;
            Ok(outcome)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res.map_err(|e| self.err(&what, e))
    }
}

/// A file's modification time in seconds since the epoch (the storage's clock: the kernel's).
fn mtime(m: &fs::Metadata) -> Option<i64> {
    use std::os::unix::fs::MetadataExt;
    Some(m.mtime())
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn create(&self) -> BResult<()> {
        if self.root.join("config").exists() {
            return Err(BackendError::Io {
                location: self.location(),
                what: "config".into(),
                detail: "a repository exists here already".into(),
                transient: false,
            });
        }
        // every directory's name durable before the repository is used: each parent synced
        // after its children were made (a power cut must not take `data/00` from a
        // repository whose packs are written into it)
        let mk = |p: PathBuf| fs::create_dir_all(&p).map_err(|e| self.err(&p.display().to_string(), e));
        // the root and any parents it lacks, each made durable (`-r /backup/new/repo`)
        create_dir_durable(&self.root).map_err(|e| self.err("", e))?;
        for k in FileKind::INIT_DIRS {
            mk(self.root.join(k.dir()))?;
        }
        for i in 0..256 {
            mk(self.root.join("data").join(format!("{i:02x}")))?;
        }
        sync_dir(&self.root.join("data")).map_err(|e| self.err("data", e))?;
        sync_dir(&self.root).map_err(|e| self.err("", e))?;
        // (and the root's own name, when it was there already: made by `mkdir` just before)
        if let Some(parent) = self.root.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent).map_err(|e| self.err("", e))?;
        }
        Ok(())
    }

    fn exists(&self) -> BResult<bool> {
        match fs::symlink_metadata(self.root.join("config")) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory => Ok(false),
            Err(e) => Err(self.err("config", e)),
        }
    }

    fn list(&self, kind: FileKind) -> BResult<Vec<FileInfo>> {
        if kind == FileKind::Config {
            return Ok(match fs::metadata(self.root.join("config")) {
                Ok(m) => vec![FileInfo {
                    name: "config".into(),
                    size: m.len(),
                    modified: mtime(&m),
                }],
                Err(e) if e.kind() == ErrorKind::NotFound => vec![],
                Err(e) => return Err(self.err("config", e)),
            });
        }
        let base = self.root.join(kind.dir());
        let dirs: Vec<PathBuf> = if kind.made_on_demand() && !base.exists() {
            return Ok(Vec::new()); // repositories from before these namespaces existed
        } else if kind.fanned_out() {
            let mut v = Vec::new();
            for e in fs::read_dir(&base).map_err(|e| self.err(kind.dir(), e))? {
                let e = e.map_err(|e| self.err(kind.dir(), e))?;
                if e.file_type().map_err(|e| self.err(kind.dir(), e))?.is_dir() {
                    v.push(e.path());
                }
            }
            v
        } else {
            vec![base]
        };
        let mut out = Vec::new();
        for d in dirs {
            for e in fs::read_dir(&d).map_err(|e| self.err(&d.display().to_string(), e))? {
                let e = e.map_err(|e| self.err(&d.display().to_string(), e))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue; // temporary files of writes in progress or interrupted
                }
                let m = e.metadata().map_err(|e| self.err(&name, e))?;
                if m.is_file() {
                    out.push(FileInfo {
                        name,
                        size: m.len(),
                        modified: mtime(&m),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read(&self, kind: FileKind, name: &str) -> BResult<Vec<u8>> {
        let what = Self::what(kind, name);
        fs::read(self.path(kind, name)?).map_err(|e| self.err(&what, e))
    }

    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u32) -> BResult<Vec<u8>> {
        let what = Self::what(kind, name);
        let path = self.path(kind, name)?;
        let f = if kind == FileKind::Pack {
            self.pack_file(name, &path)
        } else {
            File::open(&path).map(Arc::new)
        }
        .map_err(|e| self.err(&what, e))?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset).map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                self.err(
                    &what,
                    io::Error::new(
                        ErrorKind::UnexpectedEof,
                        format!("file too short for {len} bytes at {offset}"),
                    ),
                )
            } else {
                self.err(&what, e)
            }
        })?;
        Ok(buf)
    }

    fn size(&self, kind: FileKind, name: &str) -> BResult<u64> {
        let what = Self::what(kind, name);
        fs::metadata(self.path(kind, name)?)
            .map(|m| m.len())
            .map_err(|e| self.err(&what, e))
    }

    fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> BResult<WriteOutcome> {
        self.write_parts(kind, name, &[data])
    }

    fn write_parts(&self, kind: FileKind, name: &str, parts: &[&[u8]]) -> BResult<WriteOutcome> {
        self.write_with(kind, name, |f| {
            parts.iter().try_for_each(|p| self.write_paced(f, p))
        })
    }

    fn write_ranges(
        &self,
        kind: FileKind,
        name: &str,
        buf: Vec<u8>,
        ranges: &[Range<usize>],
        reuse: &dyn Fn(Vec<u8>),
    ) -> BResult<WriteOutcome> {
        // the buffer goes back once written, before the wait for fsync
        self.write_with(kind, name, move |f| {
            for r in ranges {
                let part = buf
                    .get(r.clone())
                    .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "range outside the buffer"))?;
                self.write_paced(f, part)?;
            }
            reuse(buf);
            Ok(())
        })
    }

    fn make_durable(&self, kind: FileKind, name: &str) -> BResult<()> {
        let what = Self::what(kind, name);
        let path = self.path(kind, name)?;
        File::open(&path)
            .and_then(|f| f.sync_all())
            .and_then(|()| sync_dir(&self.dir(kind, name)))
            .map_err(|e| self.err(&what, e))
    }

    fn replace(&self, kind: FileKind, name: &str, data: &[u8]) -> BResult<()> {
        let what = Self::what(kind, name);
        let dest = self.path(kind, name)?;
        let dir = self.dir(kind, name);
        if kind.made_on_demand() {
            self.durable_dir(&dir).map_err(|e| self.err(&what, e))?;
        }
        let res = replace_file(&dir.join(tmp_name()), &dest, data);
        if kind == FileKind::Pack {
            self.open_packs().retain(|(n, _)| n != name);
        }
        res.map_err(|e| self.err(&what, e))
    }

    fn remove(&self, kind: FileKind, name: &str) -> BResult<()> {
        let what = Self::what(kind, name);
        let p = self.path(kind, name)?;
        if kind == FileKind::Pack {
            // a removed pack must read as missing, not through a cached descriptor
            self.open_packs().retain(|(n, _)| n != name);
        }
        fs::remove_file(&p).map_err(|e| self.err(&what, e))?;
        sync_dir(&self.dir(kind, name)).map_err(|e| self.err(&what, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_never_overwrites_and_lists() {
        let d = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(d.path().join("repo"));
        assert!(!b.exists().unwrap());
        b.create().unwrap();
        let name = "ab".repeat(32);
        assert_eq!(
            b.write(FileKind::Pack, &name, b"one").unwrap(),
            WriteOutcome::Created
        );
        assert_eq!(
            b.write(FileKind::Pack, &name, b"two").unwrap(),
            WriteOutcome::Existed
        );
        assert_eq!(b.read(FileKind::Pack, &name).unwrap(), b"one");
        assert_eq!(b.read_range(FileKind::Pack, &name, 1, 2).unwrap(), b"ne");
        assert!(b.read_range(FileKind::Pack, &name, 2, 5).is_err());
        assert_eq!(
            b.list(FileKind::Pack).unwrap(),
            vec![FileInfo {
                name: name.clone(),
                size: 3,
                modified: mtime(&fs::metadata(b.path(FileKind::Pack, &name).unwrap()).unwrap()),
            }]
        );
        assert!(b.read(FileKind::Snapshot, &name).unwrap_err().is_not_found());
        // a pack handed over as ranges of a buffer: written in the ranges' order, the buffer
        // comes back, and an existing file is never written over
        let other = "cd".repeat(32);
        let back = std::cell::RefCell::new(Vec::new());
        let reuse = |v: Vec<u8>| back.borrow_mut().push(v);
        assert_eq!(
            b.write_ranges(
                FileKind::Pack,
                &other,
                b"rtspa!".to_vec(),
                &[3..5, 5..5, 0..3],
                &reuse
            )
            .unwrap(),
            WriteOutcome::Created
        );
        assert_eq!(back.borrow().as_slice(), [b"rtspa!".to_vec()]);
        assert_eq!(
            b.write_ranges(FileKind::Pack, &other, b"x".to_vec(), &[0..1, 1..1], &reuse)
                .unwrap(),
            WriteOutcome::Existed
        );
        let third = "ef".repeat(32);
        assert!(b
            .write_ranges(FileKind::Pack, &third, b"x".to_vec(), &[0..1, 1..2], &reuse)
            .is_err());
        assert!(b.read(FileKind::Pack, &third).unwrap_err().is_not_found());
        assert_eq!(b.read(FileKind::Pack, &other).unwrap(), b"parts");
        b.remove(FileKind::Pack, &other).unwrap();
        // names that could escape the directory are refused
        assert!(b.write(FileKind::Snapshot, "../x", b"z").is_err());
        b.remove(FileKind::Pack, &name).unwrap();
        assert!(b.list(FileKind::Pack).unwrap().is_empty());
        // the pack was read through a cached descriptor; once removed it reads as missing
        assert!(b
            .read_range(FileKind::Pack, &name, 0, 1)
            .unwrap_err()
            .is_not_found());
        // no temporary files remain
        let left: Vec<_> = fs::read_dir(d.path().join("repo/data/ab")).unwrap().collect();
        assert!(left.is_empty());
    }

    #[test]
    fn open_pack_cache_is_bounded_and_reads_each_pack_right() {
        let d = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(d.path().join("repo"));
        b.create().unwrap();
        let names: Vec<String> = (0..OPEN_PACKS as u8 + 8)
            .map(|i| format!("{i:02x}").repeat(32))
            .collect();
        for (i, n) in names.iter().enumerate() {
            b.write(FileKind::Pack, n, &[i as u8; 8]).unwrap();
        }
        for _ in 0..2 {
            for (i, n) in names.iter().enumerate() {
                assert_eq!(b.read_range(FileKind::Pack, n, 3, 2).unwrap(), vec![i as u8; 2]);
            }
        }
        assert_eq!(b.open_packs().len(), OPEN_PACKS);
    }
}
