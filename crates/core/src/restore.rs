//! Restore: write a snapshot's tree (or part of it) into a target directory.
//!
//! Safety rules, each against a known attack (tar, zip-slip, restic #1445, borg CVE-2026-62268):
//! - names were validated when the tree was decoded: no `..`, `/`, NUL, empty or `.` names;
//! - every operation is relative to an open directory handle and never follows a symlink:
//!   directories are entered with `openat(O_DIRECTORY|O_NOFOLLOW)`, files are created with
//!   `O_CREAT|O_EXCL|O_NOFOLLOW` after removing whatever was at that name, metadata is set
//!   through the open descriptor (`fchown`, `fchmod`, `futimens`) or with `AT_SYMLINK_NOFOLLOW`;
//! - an existing symlink or file where a directory must go is removed, never followed;
//! - within each directory, symlinks and hardlinks are created after everything else, and
//!   the directory's own metadata (mtime) is set last;
//! - a hardlink can only point at a file this restore created, found by a fresh
//!   no-follow walk from the target.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use coffer_format::{BlobId, Name, Node, NodeKind, Timestamp, Tree};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags, CWD};
use rustix::io::Errno;

use crate::chunker::Chunker;
use crate::error::{Error, Result};
use crate::filter::PathMatcher;
use crate::progress::{Progress, RestoreAction};
use crate::repo::IndexedRepository;
use crate::walk::{find_path, join, Found};
use crate::window::{Blobs, Fetch, WindowReader};

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Restore only paths matching one of these (and everything below a matching directory).
    pub includes: Vec<String>,
    pub excludes: Vec<String>,
    /// Only count (and report through progress) what would be restored.
    pub dry_run: bool,
    /// What to do with files that exist in the target already.
    pub overwrite: Overwrite,
    /// Remove what is in the target but not in the snapshot, only in directories at or below
    /// one of `delete_within` (never in a directory the snapshot holds only as the way to a
    /// backed-up path, never across a mount point, never next to a single restored file).
    pub delete: bool,
    /// The snapshot's backed-up paths (`Snapshot::paths`): where `delete` may act. A directory
    /// above them (`/`, `/var` for a backup of `/var/www`) holds more than the snapshot saw.
    pub delete_within: Vec<String>,
    /// The snapshot's exclude patterns (`Snapshot::excludes`): what matches them was never
    /// backed up, so `delete` leaves it.
    pub delete_keeps: Vec<String>,
    /// Read every restored file back and compare it with the snapshot.
    pub verify: bool,
    /// Restore owners by the stored numbers, ignoring user and group names.
    pub numeric_owner: bool,
    /// `target` is this directory and a path below it, and that path is made and opened one
    /// directory at a time, never through a symlink or into a file (a restore in place, or
    /// into a folder named after a path of the snapshot, must not be led elsewhere by a
    /// symlink someone put on the way).
    pub within: Option<PathBuf>,
}

/// When an existing file in the target is replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overwrite {
    /// Always (the default).
    #[default]
    Always,
    /// When its content differs from the snapshot's (compared chunk by chunk; only metadata is
    /// fixed when the content is the same).
    IfChanged,
    /// When the snapshot's version is newer (mtime).
    IfNewer,
    /// Never: existing files are left alone.
    Never,
}

impl std::str::FromStr for Overwrite {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "always" => Overwrite::Always,
            "if-changed" => Overwrite::IfChanged,
            "if-newer" => Overwrite::IfNewer,
            "never" => Overwrite::Never,
            _ => {
                return Err(Error::Invalid(format!(
                    "--overwrite {s:?}: use always, if-changed, if-newer or never"
                )))
            }
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub other: u64,
    pub bytes: u64,
    /// Existing files left as they were (--overwrite), and entries removed (--delete; every
    /// entry below a removed directory counts).
    pub skipped: u64,
    pub deleted: u64,
    /// Existing entries replaced by the snapshot's version.
    pub replaced: u64,
    /// Files read back and found identical (--verify).
    pub verified: u64,
    /// Entries whose owner could not be restored (restore not run as root).
    pub owner_skipped: u64,
    /// Items that could not be restored fully (each was reported through progress).
    pub errors: u64,
}

struct Restorer<'a> {
    repo: &'a IndexedRepository,
    includes: PathMatcher,
    excludes: PathMatcher,
    dry_run: bool,
    as_root: bool,
    stats: Mutex<RestoreStats>,
    progress: &'a dyn Progress,
    /// (dev, inode) of a multiply-linked file → its path relative to the target.
    links: Mutex<HashMap<(u64, u64), Vec<Name>>>,
    /// Content writing is handed to worker threads when set (None: write inline).
    jobs: Mutex<Option<crossbeam_channel::Sender<Job>>>,
    /// The target directory (None for a dry run).
    target: Option<OwnedFd>,
    opts: RestoreOptions,
    /// `--delete` in effect (not for a single restored file: its directory is not restored).
    delete: bool,
    /// What the backup excluded (`delete_keeps`): never deleted.
    kept_by_delete: PathMatcher,
    chunker: Chunker,
    /// User and group names resolved to ids on this system, once per name (a lookup reads
    /// /etc/passwd or asks nscd: four system calls, twice per restored entry otherwise).
    owners: Mutex<OwnerCache>,
    /// Small blobs through coalesced pack windows on latency-bound backends.
    reader: WindowReader<'a>,
}

#[derive(Default)]
struct OwnerCache {
    users: HashMap<String, Option<u32>>,
    groups: HashMap<String, Option<u32>>,
}

impl OwnerCache {
    /// uid/gid for a node: by name if this system knows the name (unless `numeric`), else
    /// the stored number.
    fn ids(&mut self, node: &Node, numeric: bool) -> (rustix::fs::Uid, rustix::fs::Gid) {
        fn resolve(
            map: &mut HashMap<String, Option<u32>>,
            name: &Option<String>,
            stored: u32,
            lookup: impl FnOnce(&str) -> Option<u32>,
        ) -> u32 {
            match name {
                Some(n) => map
                    .entry(n.clone())
                    .or_insert_with(|| lookup(n))
                    .unwrap_or(stored),
                None => stored,
            }
        }
        if numeric {
            return (
                rustix::fs::Uid::from_raw(node.uid),
                rustix::fs::Gid::from_raw(node.gid),
            );
        }
        let uid = resolve(&mut self.users, &node.user, node.uid, |n| {
            uzers::get_user_by_name(n).map(|u| u.uid())
        });
        let gid = resolve(&mut self.groups, &node.group, node.gid, |n| {
            uzers::get_group_by_name(n).map(|g| g.gid())
        });
        (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid))
    }
}

fn errno_io(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.raw_os_error())
}

fn ts(t: Timestamp) -> Timespec {
    Timespec {
        tv_sec: t.s,
        tv_nsec: t.ns as _,
    }
}

fn display(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Writing one file's content: done by a worker thread while the walk goes on.
struct Job {
    dir: OwnedFd,
    file: File,
    node: Node,
    path: Vec<u8>,
}

impl Restorer<'_> {
    fn st(&self) -> std::sync::MutexGuard<'_, RestoreStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lk(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), Vec<Name>>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn warn(&self, msg: String) {
        self.st().errors += 1;
        self.progress.warn(&msg);
    }

    /// Report an action on `name` in the target directory `rel`.
    fn act(&self, action: RestoreAction, rel: &[Name], name: &[u8]) {
        let mut p = self.opts.target.clone();
        for c in rel {
            p.push(OsStr::from_bytes(&c.0));
        }
        p.push(OsStr::from_bytes(name));
        self.progress.restore_action(action, &p);
    }

    /// Whether `--delete` may act in the directory at `snap` (its path in the snapshot):
    /// only at or below a path the snapshot backed up.
    fn may_delete_in(&self, snap: &[u8]) -> bool {
        self.delete
            && self.opts.delete_within.iter().any(|p| {
                let p = p.trim_end_matches('/').as_bytes();
                p.is_empty() || snap == p || (snap.starts_with(p) && snap.get(p.len()) == Some(&b'/'))
            })
    }

    /// In a dry run: what restoring `node` would do to what is at its name in `dir`.
    fn dry_action(&self, dir: Option<BorrowedFd<'_>>, node: &Node) -> RestoreAction {
        let Some(dir) = dir else {
            return RestoreAction::Create;
        };
        let name = OsStr::from_bytes(&node.name.0);
        if rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_err() {
            return RestoreAction::Create;
        }
        if !matches!(node.kind, NodeKind::File | NodeKind::Symlink) {
            return RestoreAction::Replace;
        }
        match self.keep_existing(dir, node) {
            None => RestoreAction::Replace,
            Some(_) => RestoreAction::Keep,
        }
    }

    /// Restore the nodes of `tree` into `dir`. `rel` is the directory's path below the target
    /// (for hardlinks), `snap` its path in the snapshot (for filters and messages).
    /// Returns how many items were restored below it.
    /// `complete`: the backup listed this directory whole (its node has no `error`: it was
    /// entered, not a mount point it stopped at or one it could not open), so `--delete` may
    /// judge what else is in it.
    fn restore_tree(
        &self,
        tree: &Tree,
        dir: Option<BorrowedFd<'_>>,
        rel: &[Name],
        snap: &[u8],
        selected: bool,
        complete: bool,
    ) -> Result<u64> {
        let mut restored = 0;
        let mut deferred: Vec<&Node> = Vec::new();
        for node in &tree.nodes {
            let path = join(snap, &node.name);
            let p = Path::new(OsStr::from_bytes(&path));
            if self.excludes.matches(p) {
                continue;
            }
            let sel = selected || self.includes.is_empty() || self.includes.matches(p);
            if node.kind == NodeKind::Dir {
                restored += self.restore_dir(node, dir, rel, &path, sel)?;
                continue;
            }
            if !sel {
                continue;
            }
            if node.error.is_some() {
                self.progress.warn(&format!(
                    "{}: was incomplete when backed up; restoring what was stored",
                    display(&path)
                ));
            }
            let is_link = node.kind == NodeKind::Symlink
                || (node.kind == NodeKind::File
                    && node.links > 1
                    && self.lk().contains_key(&(node.dev, node.inode)));
            if is_link {
                deferred.push(node);
                continue;
            }
            restored += 1;
            if self.dry_run {
                self.dry_count(dir, rel, node);
                continue;
            }
            let Some(dfd) = dir else { continue };
            let r = match node.kind {
                NodeKind::File => self.restore_file(dfd, node, &path, rel),
                _ => self.restore_special(dfd, node, rel),
            };
            match r {
                Ok(()) => {
                    self.count(node);
                    if node.kind == NodeKind::File && node.links > 1 {
                        let mut r = rel.to_vec();
                        r.push(node.name.clone());
                        self.lk().insert((node.dev, node.inode), r);
                    }
                }
                Err(e) => self.warn(format!("{}: {e}", display(&path))),
            }
        }
        for node in deferred {
            let path = join(snap, &node.name);
            restored += 1;
            if self.dry_run {
                self.dry_count(dir, rel, node);
                continue;
            }
            let Some(dfd) = dir else { continue };
            let linked = node.links > 1 && self.lk().contains_key(&(node.dev, node.inode));
            let r = if linked {
                self.restore_hardlink(dfd, node, rel)
            } else {
                self.restore_symlink(dfd, node, rel)
            };
            match r {
                Ok(()) => {
                    self.count(node);
                    if !linked && node.links > 1 {
                        let mut r = rel.to_vec();
                        r.push(node.name.clone());
                        self.lk().insert((node.dev, node.inode), r);
                    }
                }
                Err(e) => self.warn(format!("{}: {e}", display(&path))),
            }
        }
        // a cache directory (--exclude-caches) was saved as its tag alone
        let cache = tree.nodes.iter().any(|n| n.name.0 == b"CACHEDIR.TAG");
        if complete && !cache && self.may_delete_in(snap) {
            if let Some(dfd) = dir {
                self.delete_extra(dfd, tree, rel, snap);
            }
        }
        Ok(restored)
    }

    /// A dry run's accounting of one entry: counted, and its action reported.
    fn dry_count(&self, dir: Option<BorrowedFd<'_>>, rel: &[Name], node: &Node) {
        let action = self.dry_action(dir, node);
        match action {
            RestoreAction::Replace => self.st().replaced += 1,
            RestoreAction::Keep => self.st().skipped += 1,
            _ => {}
        }
        self.act(action, rel, &node.name.0);
        self.count(node);
    }

    /// Remove what is in `dir` but not in `tree` (`--delete`), never following symlinks and
    /// never entering another filesystem (a mount point is left with a warning). In a dry
    /// run, only report what would go.
    fn delete_extra(&self, dir: BorrowedFd<'_>, tree: &Tree, rel: &[Name], snap: &[u8]) {
        let names: std::collections::HashSet<&[u8]> =
            tree.nodes.iter().map(|n| n.name.0.as_slice()).collect();
        let Ok(fd) = rustix::fs::openat(
            dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return;
        };
        let Ok(here) = mount_of(fd.as_fd(), ".") else {
            return;
        };
        // A directory that is itself a mount point (another filesystem a backup with
        // --one-file-system recorded, not entered, if it was older than that marker, or a bind
        // mount): nothing in it is the snapshot's to judge. The target itself may be one.
        if !rel.is_empty() && mount_of(fd.as_fd(), "..").is_ok_and(|m| m != here) {
            self.progress.warn(&format!(
                "{}: nothing deleted inside: it is the mount point of another filesystem",
                display(snap)
            ));
            return;
        }
        let Ok(entries) = rustix::fs::Dir::read_from(&fd) else {
            return;
        };
        let mut extra = Vec::new();
        for e in entries.flatten() {
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." && !names.contains(n) {
                let p = join(snap, &Name(n.to_vec()));
                // what the backup excluded was never in it: not the snapshot's to delete
                if !self.kept_by_delete.matches(Path::new(OsStr::from_bytes(&p))) {
                    extra.push(n.to_vec());
                }
            }
        }
        extra.sort();
        for n in extra {
            let mut on = |sub: &[u8]| {
                self.st().deleted += 1;
                self.act(RestoreAction::Delete, rel, sub);
            };
            match remove_tree_at(dir, OsStr::from_bytes(&n), here, self.dry_run, &n, &mut on) {
                Ok(()) => {}
                // another filesystem mounted there is not the snapshot's to judge: left, said
                Err(Errno::XDEV) => self.progress.warn(&format!(
                    "{}: not deleted (what -v listed below it was): it is or holds the mount point of another filesystem",
                    display(&join(snap, &Name(n)))
                )),
                Err(e) => {
                    let p = join(snap, &Name(n));
                    self.warn(format!("{}: cannot delete: {}", display(&p), errno_io(e)))
                }
            }
        }
    }

    fn count(&self, node: &Node) {
        match node.kind {
            NodeKind::File if node.links > 1 && self.lk().contains_key(&(node.dev, node.inode)) => {
                self.st().links += 1
            }
            NodeKind::File => {
                self.st().files += 1;
                self.st().bytes += node.size;
            }
            NodeKind::Symlink => self.st().links += 1,
            NodeKind::Dir => self.st().dirs += 1,
            _ => self.st().other += 1,
        }
        self.progress.files(1);
    }

    fn restore_dir(
        &self,
        node: &Node,
        parent: Option<BorrowedFd<'_>>,
        rel: &[Name],
        path: &[u8],
        sel: bool,
    ) -> Result<u64> {
        let Some(sub) = node.subtree else { return Ok(0) };
        let tree = match self.repo.load_tree(&sub) {
            Ok(t) => t,
            Err(e) => {
                self.warn(format!(
                    "{}: directory listing unreadable, skipped: {e}",
                    display(path)
                ));
                return Ok(0);
            }
        };
        let parent_rel = rel;
        let mut rel = rel.to_vec();
        rel.push(node.name.clone());
        if self.dry_run || parent.is_none() {
            // a dry run looks into what the target holds already, never writing
            let existing = parent.and_then(|p| open_existing_dir(p, &node.name));
            let complete = node.error.is_none();
            let n = self.restore_tree(
                &tree,
                existing.as_ref().map(|f| f.as_fd()),
                &rel,
                path,
                sel,
                complete,
            )?;
            if sel || n > 0 {
                if existing.is_none() {
                    let action = self.dry_action(parent, node);
                    if action == RestoreAction::Replace {
                        self.st().replaced += 1;
                    }
                    self.act(action, parent_rel, &node.name.0);
                }
                self.count(node);
            }
            return Ok(n + sel as u64);
        }
        let Some(pfd) = parent else { return Ok(0) };
        let (fd, created) = match make_dir(pfd, &node.name) {
            Ok(x) => x,
            Err(e) => {
                self.warn(format!(
                    "{}: cannot create directory: {}",
                    display(path),
                    errno_io(e)
                ));
                return Ok(0);
            }
        };
        if created {
            self.act(RestoreAction::Create, parent_rel, &node.name.0);
        }
        let n = self.restore_tree(&tree, Some(fd.as_fd()), &rel, path, sel, node.error.is_none())?;
        if !sel && n == 0 {
            // Created only in case something below was selected; nothing was.
            if created {
                let _ = rustix::fs::unlinkat(pfd, OsStr::from_bytes(&node.name.0), AtFlags::REMOVEDIR);
            }
            return Ok(0);
        }
        if let Err(e) = self.set_meta_fd(&fd, node) {
            self.warn(format!("{}: {e}", display(path)));
        }
        self.count(node);
        Ok(n + 1)
    }

    /// Chunk ids of a regular file at `name` (not following links), or None if it is not one.
    fn existing_ids(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Option<Vec<BlobId>> {
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        self.ids_of(fd)
    }

    /// Chunk ids of the regular file open at `fd`.
    fn ids_of(&self, fd: OwnedFd) -> Option<Vec<BlobId>> {
        let st = rustix::fs::fstat(&fd).ok()?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return None;
        }
        let mut f = File::from(fd);
        let mut ids = Vec::new();
        let mut buf = Vec::new();
        // (the zero chunk is always the same bytes: hashed once)
        let mut zero_id = None;
        self.chunker
            .chunk_reader::<_, std::io::Error>(&mut f, &mut buf, |c, zero| {
                let id = match zero_id.filter(|_| zero) {
                    Some(id) => id,
                    None => self.repo.key().blob_id(c),
                };
                if zero {
                    zero_id = Some(id);
                }
                ids.push(id);
                Ok(())
            })
            .ok()?;
        Some(ids)
    }

    /// Decide about an existing entry at the node's name: Some(true) = leave its content
    /// (only metadata is set), Some(false) = skip entirely, None = write the file.
    fn keep_existing(&self, dir: BorrowedFd<'_>, node: &Node) -> Option<bool> {
        let name = OsStr::from_bytes(&node.name.0);
        let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        match self.opts.overwrite {
            Overwrite::Always => None,
            Overwrite::Never => Some(false),
            Overwrite::IfNewer => {
                let theirs = (st.st_mtime as i64, st.st_mtime_nsec as u32);
                ((node.mtime.s, node.mtime.ns) <= theirs).then_some(false)
            }
            // a link that points where the snapshot's does is left as it is, owner and time
            // included (setting them by name could reach whatever replaced it meanwhile)
            Overwrite::IfChanged if node.kind == NodeKind::Symlink => {
                let same = FileType::from_raw_mode(st.st_mode) == FileType::Symlink
                    && rustix::fs::readlinkat(dir, name, Vec::new())
                        .is_ok_and(|t| Some(t.as_bytes()) == node.target.as_ref().map(|t| t.0.as_slice()));
                same.then_some(false)
            }
            Overwrite::IfChanged => {
                let same = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                    && st.st_size as u64 == node.size
                    && self
                        .existing_ids(dir, name)
                        .is_some_and(|ids| ids == node.content);
                same.then_some(true)
            }
        }
    }

    fn restore_file(&self, dir: BorrowedFd<'_>, node: &Node, path: &[u8], rel: &[Name]) -> Result<()> {
        self.progress.item(Path::new(OsStr::from_bytes(path)));
        // Into an empty target (the usual case) the exclusive create just works: no lookups
        // of names that are not there (two failing stats per file otherwise).
        let fd = match create_exclusive(dir, OsStr::from_bytes(&node.name.0)) {
            Ok(fd) => {
                self.act(RestoreAction::Create, rel, &node.name.0);
                fd
            }
            Err(Errno::EXIST) => match self.replace_existing(dir, node, path)? {
                Some(fd) => {
                    self.st().replaced += 1;
                    self.act(RestoreAction::Replace, rel, &node.name.0);
                    fd
                }
                None => {
                    self.act(RestoreAction::Keep, rel, &node.name.0);
                    return Ok(());
                }
            },
            Err(e) => return Err(Error::io(display(path), errno_io(e))),
        };
        let f = File::from(fd);
        let job = Job {
            dir: rustix::io::dup(dir).map_err(|e| Error::io(display(path), errno_io(e)))?,
            file: f,
            node: node.clone(),
            path: path.to_vec(),
        };
        let tx = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match tx {
            Some(tx) => tx.send(job).map_err(|_| Error::Interrupted),
            None => self.write_content(job, None),
        }
    }

    /// Something is at the node's name already: keep it (`None`; its metadata is brought in
    /// line when its content is the same), or remove it and create the file anew.
    fn replace_existing(&self, dir: BorrowedFd<'_>, node: &Node, path: &[u8]) -> Result<Option<OwnedFd>> {
        let name = OsStr::from_bytes(&node.name.0);
        match self.keep_existing(dir, node) {
            Some(false) => {
                self.st().skipped += 1;
                return Ok(None);
            }
            Some(true) => {
                // same content: only bring the metadata in line
                self.st().skipped += 1;
                let fd = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| Error::io(display(path), errno_io(e)))?;
                self.set_meta_fd(&fd, node)
                    .map_err(|e| Error::io(display(path), e))?;
                return Ok(None);
            }
            None => {}
        }
        remove_existing(dir, name).map_err(|e| Error::io(display(path), errno_io(e)))?;
        let fd = create_exclusive(dir, name).map_err(|e| Error::io(display(path), errno_io(e)))?;
        Ok(Some(fd))
    }

    /// Write a created file's content (holes for zero blocks), then its metadata, then verify.
    /// `fetch`: the read-ahead threads (remote repositories), which read a large file's next
    /// blobs while this thread writes.
    fn write_content(&self, job: Job, fetch: Option<&crossbeam_channel::Sender<Fetch>>) -> Result<()> {
        let Job {
            dir,
            file: mut f,
            node,
            path,
        } = job;
        let path = &path[..];
        let name = OsStr::from_bytes(&node.name.0);
        let mut pos = 0u64;
        let mut sparse_tail = false;
        for data in Blobs::new(&self.reader, &node.content, fetch) {
            let data = data?;
            // leave holes for all-zero 4 KiB blocks (aligned to the file offset), so sparse
            // files come back sparse; runs of data blocks are written with one call
            let mut off = 0usize;
            let mut run_start = 0usize;
            while off < data.len() {
                let abs = pos + off as u64;
                let n = ((4096 - (abs % 4096)) as usize).min(data.len() - off);
                if n == 4096 && data[off..off + n].iter().all(|&b| b == 0) {
                    if run_start < off {
                        f.write_all(&data[run_start..off])
                            .map_err(|e| Error::io(display(path), e))?;
                    }
                    f.seek(SeekFrom::Current(4096))
                        .map_err(|e| Error::io(display(path), e))?;
                    sparse_tail = true;
                    run_start = off + n;
                } else {
                    sparse_tail = false;
                }
                off += n;
            }
            if run_start < data.len() {
                f.write_all(&data[run_start..])
                    .map_err(|e| Error::io(display(path), e))?;
            }
            pos += data.len() as u64;
            self.progress.bytes(data.len() as u64);
        }
        if sparse_tail {
            f.set_len(pos).map_err(|e| Error::io(display(path), e))?;
        }
        if pos != node.size {
            self.warn(format!(
                "{}: restored {pos} bytes, snapshot says {}",
                display(path),
                node.size
            ));
        }
        let fd = OwnedFd::from(f);
        self.set_meta_fd(&fd, &node)
            .map_err(|e| Error::io(display(path), e))?;
        if self.opts.verify {
            // read back through the descriptor we wrote (the directory may no longer be
            // searchable once its own mode is restored)
            use std::os::fd::AsRawFd;
            let proc = std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            let reread = rustix::fs::openat(CWD, &proc, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .ok()
                .and_then(|rfd| self.ids_of(rfd))
                .or_else(|| self.existing_ids(dir.as_fd(), name));
            match reread {
                Some(ids) if ids == node.content => self.st().verified += 1,
                _ => self.warn(format!(
                    "{}: verification failed: the restored file differs from the snapshot",
                    display(path)
                )),
            }
        }
        Ok(())
    }

    /// Remove what is at the node's name, reporting whether it replaces something.
    fn clear(&self, dir: BorrowedFd<'_>, node: &Node, rel: &[Name]) -> std::result::Result<(), Errno> {
        let replaced = remove_existing(dir, OsStr::from_bytes(&node.name.0))?;
        if replaced {
            self.st().replaced += 1;
        }
        let action = if replaced {
            RestoreAction::Replace
        } else {
            RestoreAction::Create
        };
        self.act(action, rel, &node.name.0);
        Ok(())
    }

    fn restore_special(&self, dir: BorrowedFd<'_>, node: &Node, rel: &[Name]) -> Result<()> {
        let name = OsStr::from_bytes(&node.name.0);
        let Some(ft) = special_type(node.kind) else {
            return Ok(());
        };
        let io = |e: Errno| Error::io(node.name.to_string(), errno_io(e));
        self.clear(dir, node, rel).map_err(io)?;
        rustix::fs::mknodat(dir, name, ft, Mode::from_raw_mode(0o600), node.rdev).map_err(io)?;
        self.set_meta_path(dir, node)
            .map_err(|e| Error::io(node.name.to_string(), e))
    }

    fn restore_symlink(&self, dir: BorrowedFd<'_>, node: &Node, rel: &[Name]) -> Result<()> {
        let name = OsStr::from_bytes(&node.name.0);
        let io = |e: Errno| Error::io(node.name.to_string(), errno_io(e));
        let target = node.target.as_ref().map(|t| t.0.as_slice()).unwrap_or_default();
        // --overwrite if-changed / if-newer / never: the same link (or one to be left) stays
        if let Some(set_meta) = self.keep_existing(dir, node) {
            self.act(RestoreAction::Keep, rel, &node.name.0);
            self.st().skipped += 1;
            if set_meta {
                self.set_meta_path(dir, node)
                    .map_err(|e| Error::io(node.name.to_string(), e))?;
            }
            return Ok(());
        }
        self.clear(dir, node, rel).map_err(io)?;
        rustix::fs::symlinkat(OsStr::from_bytes(target), dir, name).map_err(io)?;
        self.set_meta_path(dir, node)
            .map_err(|e| Error::io(node.name.to_string(), e))
    }

    fn restore_hardlink(&self, dir: BorrowedFd<'_>, node: &Node, rel: &[Name]) -> Result<()> {
        let io = |e: Errno| Error::io(node.name.to_string(), errno_io(e));
        let Some(first) = self.lk().get(&(node.dev, node.inode)).cloned() else {
            return Ok(());
        };
        let (last, parents) = first
            .split_last()
            .ok_or_else(|| Error::Invalid("empty link path".into()))?;
        let Some(target) = &self.target else { return Ok(()) };
        let src_dir = open_rel_dir(target.as_fd(), parents).map_err(io)?;
        let name = OsStr::from_bytes(&node.name.0);
        self.clear(dir, node, rel).map_err(io)?;
        rustix::fs::linkat(
            src_dir.as_fd(),
            OsStr::from_bytes(&last.0),
            dir,
            name,
            AtFlags::empty(),
        )
        .map_err(io)
    }

    fn owner_ids(&self, node: &Node) -> (rustix::fs::Uid, rustix::fs::Gid) {
        let mut cache = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        cache.ids(node, self.opts.numeric_owner)
    }

    /// Count an entry whose owner a non-root restore cannot set (it differs from ours).
    fn note_owner(&self, node: &Node) {
        let me = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        if (node.uid, node.gid) != me {
            self.st().owner_skipped += 1;
        }
    }

    /// Owner, mode, xattrs and times through an open descriptor.
    fn set_meta_fd(&self, fd: &OwnedFd, node: &Node) -> std::io::Result<()> {
        if self.as_root {
            let (uid, gid) = self.owner_ids(node);
            rustix::fs::fchown(fd, Some(uid), Some(gid)).map_err(errno_io)?;
        } else {
            self.note_owner(node);
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(node.mode)).map_err(errno_io)?;
        for x in &node.xattrs {
            let name = OsStr::from_bytes(&x.name.0);
            if let Err(e) = rustix::fs::fsetxattr(fd, name, &x.value.0, XattrFlags::empty()) {
                // security.* and trusted.* need privileges a non-root restore lacks
                if self.as_root || !(e == Errno::PERM || e == Errno::ACCESS) {
                    return Err(errno_io(e));
                }
            }
        }
        let t = Timestamps {
            last_access: ts(node.atime),
            last_modification: ts(node.mtime),
        };
        rustix::fs::futimens(fd, &t).map_err(errno_io)
    }

    /// Owner, mode and times of a node that cannot be opened (symlink, device) by name.
    fn set_meta_path(&self, dir: BorrowedFd<'_>, node: &Node) -> std::io::Result<()> {
        let name = OsStr::from_bytes(&node.name.0);
        if !self.as_root {
            self.note_owner(node);
        }
        if self.as_root {
            let (uid, gid) = self.owner_ids(node);
            rustix::fs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(errno_io)?;
        }
        if node.kind != NodeKind::Symlink {
            // chmod by name follows a symlink that replaced the node since it was made (a
            // target someone else can write); through an O_PATH descriptor of the node itself
            // it cannot (and a device is never opened for reading or writing)
            let fd = rustix::fs::openat(
                dir,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno_io)?;
            let st = rustix::fs::fstat(&fd).map_err(errno_io)?;
            if Some(FileType::from_raw_mode(st.st_mode)) != special_type(node.kind) {
                return Err(std::io::Error::other(
                    "replaced by something else while being restored",
                ));
            }
            use std::os::fd::AsRawFd;
            let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
            let mode = Mode::from_raw_mode(node.mode);
            match rustix::fs::chmodat(CWD, proc.as_str(), mode, AtFlags::empty()) {
                Ok(()) => {}
                // no /proc: a chmod that does not follow links (fchmodat2, Linux 6.6), else by
                // name, after the check above (the window is the one system call)
                Err(Errno::NOENT) => match rustix::fs::chmodat(dir, name, mode, AtFlags::SYMLINK_NOFOLLOW) {
                    Err(Errno::NOTSUP | Errno::INVAL) => {
                        rustix::fs::chmodat(dir, name, mode, AtFlags::empty()).map_err(errno_io)?
                    }
                    r => r.map_err(errno_io)?,
                },
                Err(e) => return Err(errno_io(e)),
            }
        }
        let t = Timestamps {
            last_access: ts(node.atime),
            last_modification: ts(node.mtime),
        };
        rustix::fs::utimensat(dir, name, &t, AtFlags::SYMLINK_NOFOLLOW).map_err(errno_io)
    }
}

/// The file type `mknod` makes for a node (fifos and devices), `None` for any other kind.
fn special_type(kind: NodeKind) -> Option<FileType> {
    match kind {
        NodeKind::Fifo => Some(FileType::Fifo),
        NodeKind::Chardev => Some(FileType::CharacterDevice),
        NodeKind::Blockdev => Some(FileType::BlockDevice),
        _ => None,
    }
}

/// Create a new file `name` in `dir`, private until its metadata is set; fails if anything
/// is there (never follows or reuses an entry).
fn create_exclusive(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
}

/// Remove whatever is at `name` in `dir` (file, symlink, or an empty directory) without
/// following it; whether something was there. A non-empty directory stays and the caller's
/// create fails.
fn remove_existing(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<bool> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map(|()| true)
        }
        Ok(_) => rustix::fs::unlinkat(dir, name, AtFlags::empty()).map(|()| true),
    }
}

/// Open the directory `name` in `dir` if there is one (never through a symlink).
fn open_existing_dir(dir: BorrowedFd<'_>, name: &Name) -> Option<OwnedFd> {
    rustix::fs::openat(
        dir,
        OsStr::from_bytes(&name.0),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

/// The mount an entry of `dir` is on (not following links): its mount id where the kernel
/// tells it (Linux 5.8), else its device. A bind mount of a directory of the same filesystem
/// has the device of its parent and a mount id of its own.
fn mount_of(dir: BorrowedFd<'_>, name: impl rustix::path::Arg) -> rustix::io::Result<(u64, u64)> {
    use rustix::fs::StatxFlags;
    let st = rustix::fs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
    )?;
    let dev = rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor);
    let mnt = if StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::MNT_ID) {
        st.stx_mnt_id
    } else {
        0
    };
    Ok((dev, mnt))
}

/// Remove `name` in `dir` and, for a directory, everything below it, without following links
/// and without entering a directory on another mount than `mount` (`EXDEV`, before anything
/// below it is touched). `rel` is `name`'s path for `on`, which is told of every entry removed
/// (or, with `dry_run`, that would be: nothing is removed then).
fn remove_tree_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    mount: (u64, u64),
    dry_run: bool,
    rel: &[u8],
    on: &mut dyn FnMut(&[u8]),
) -> rustix::io::Result<()> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        if !dry_run {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
        }
        on(rel);
        return Ok(());
    }
    if mount_of(dir, name)? != mount {
        return Err(Errno::XDEV);
    }
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(&sub)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    names.sort();
    for n in names {
        let mut p = rel.to_vec();
        p.push(b'/');
        p.extend_from_slice(&n);
        remove_tree_at(sub.as_fd(), OsStr::from_bytes(&n), mount, dry_run, &p, on)?;
    }
    if !dry_run {
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    }
    on(rel);
    Ok(())
}

/// Create (or reuse) directory `name` in `dir` and open it without following symlinks.
/// Returns the descriptor and whether it was created now.
fn make_dir(dir: BorrowedFd<'_>, name: &Name) -> rustix::io::Result<(OwnedFd, bool)> {
    let n = OsStr::from_bytes(&name.0);
    let mut created = false;
    match rustix::fs::mkdirat(dir, n, Mode::from_raw_mode(0o700)) {
        Ok(()) => created = true,
        Err(Errno::EXIST) => {
            let st = rustix::fs::statat(dir, n, AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                // a file or a symlink (maybe pointing outside): remove it, never follow it
                rustix::fs::unlinkat(dir, n, AtFlags::empty())?;
                rustix::fs::mkdirat(dir, n, Mode::from_raw_mode(0o700))?;
                created = true;
            }
        }
        Err(e) => return Err(e),
    }
    let fd = rustix::fs::openat(
        dir,
        n,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok((fd, created))
}

/// Open a directory below `root` by walking `comps` one no-follow step at a time.
fn open_rel_dir(root: BorrowedFd<'_>, comps: &[Name]) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut fd = rustix::fs::openat(root, ".", flags, Mode::empty())?;
    for c in comps {
        fd = rustix::fs::openat(&fd, OsStr::from_bytes(&c.0), flags, Mode::empty())?;
    }
    Ok(fd)
}

/// `restore SNAP:/home/alice --target /home --delete` would put alice's files into `/home`
/// and delete every other home directory there: the contents of PATH land in the target, so
/// a target that is PATH's parent (or above) is a slip, refused before anything happens.
fn refuse_delete_above(path: &str, opts: &RestoreOptions) -> Result<()> {
    let restored = Path::new(path.trim_end_matches('/'));
    if !opts.delete || restored.as_os_str().is_empty() {
        return Ok(());
    }
    let Ok(target) = std::fs::canonicalize(&opts.target) else {
        return Ok(()); // not there yet: nothing in it to delete
    };
    if restored != target && restored.starts_with(&target) {
        return Err(Error::Usage(format!(
            "--target {} is above {path}: the contents of {path} would land in it and --delete \
             would remove everything else there; give --target {}",
            opts.target.display(),
            restored.display()
        )));
    }
    Ok(())
}

/// Restore `path` of the snapshot whose root tree is `root` into `opts.target`.
/// A directory's *contents* land in the target (`/srv/www` → `TARGET/...`); restoring `/`
/// recreates the backed-up absolute paths under the target (`/srv/www/a` → `TARGET/srv/www/a`).
/// Open `target`, which is `base` and a path below it: `base` as it is (made if missing), then
/// each directory below it made if missing and opened without following a symlink. A dry run
/// makes nothing, and gets no directory where one is missing.
fn open_within(base: &Path, target: &Path, dry_run: bool) -> Result<Option<OwnedFd>> {
    let rel = target
        .strip_prefix(base)
        .map_err(|_| Error::Usage(format!("{} is not below {}", target.display(), base.display())))?;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir = if dry_run {
        match rustix::fs::openat(CWD, base, flags, Mode::empty()) {
            Ok(d) => d,
            Err(_) => return Ok(None),
        }
    } else {
        std::fs::create_dir_all(base).map_err(|e| Error::io(base, e))?;
        rustix::fs::openat(CWD, base, flags, Mode::empty()).map_err(|e| Error::io(base, errno_io(e)))?
    };
    let mut at = base.to_path_buf();
    for c in rel.components() {
        let std::path::Component::Normal(name) = c else {
            return Err(Error::Usage(format!(
                "{}: only plain names below {}",
                target.display(),
                base.display()
            )));
        };
        at.push(name);
        if !dry_run {
            match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(Error::io(&at, errno_io(e))),
            }
        }
        dir = match rustix::fs::openat(&dir, name, flags | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(d) => d,
            Err(rustix::io::Errno::NOENT) if dry_run => return Ok(None),
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                return Err(Error::Usage(format!(
                    "nothing restored: {} is a symlink or not a directory here (a restore to {} is not led elsewhere)",
                    at.display(),
                    target.display()
                )))
            }
            Err(e) => return Err(Error::io(&at, errno_io(e))),
        };
    }
    Ok(Some(dir))
}

pub fn restore(
    repo: &IndexedRepository,
    root: coffer_format::BlobId,
    path: &str,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreStats> {
    if opts.target.exists() && !opts.target.is_dir() {
        return Err(Error::Usage(format!(
            "--target {} is a file: restore writes into a directory",
            opts.target.display()
        )));
    }
    let found = find_path(repo, root, path)?;
    if !matches!(&found, Found::Node(n) if n.kind != NodeKind::Dir) {
        refuse_delete_above(path, opts)?;
    }
    let target = if let Some(base) = &opts.within {
        open_within(base, &opts.target, opts.dry_run)?
    } else if opts.dry_run {
        // a dry run reads what the target holds (to say what would be replaced or deleted)
        // and writes nothing
        rustix::fs::openat(
            CWD,
            &opts.target,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
    } else {
        std::fs::create_dir_all(&opts.target).map_err(|e| Error::io(&opts.target, e))?;
        Some(
            rustix::fs::openat(
                CWD,
                &opts.target,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::io(&opts.target, errno_io(e)))?,
        )
    };
    let r = Restorer {
        repo,
        includes: PathMatcher::new(&opts.includes)?,
        excludes: PathMatcher::new(&opts.excludes)?,
        dry_run: opts.dry_run,
        as_root: rustix::process::geteuid().is_root(),
        stats: Mutex::new(RestoreStats::default()),
        progress,
        links: Mutex::new(HashMap::new()),
        jobs: Mutex::new(None),
        target,
        opts: opts.clone(),
        // restoring one file restores no directory: nothing beside it is the snapshot's to judge
        delete: opts.delete && !matches!(&found, Found::Node(n) if n.kind != NodeKind::Dir),
        kept_by_delete: PathMatcher::new(&opts.delete_keeps)?,
        chunker: Chunker::new(repo.config().chunker, repo.key().gear_table()),
        owners: Mutex::new(OwnerCache::default()),
        reader: WindowReader::new(repo),
    };
    if opts.delete && (!opts.includes.is_empty() || !opts.excludes.is_empty()) {
        return Err(Error::Usage(
            "--delete cannot be combined with --include or --exclude".into(),
        ));
    }
    let target = r
        .target
        .as_ref()
        .map(rustix::io::dup)
        .transpose()
        .map_err(|e| Error::io(&opts.target, errno_io(e)))?;
    let dir = target.as_ref().map(|t| t.as_fd());
    let prefix = path.trim_end_matches('/').as_bytes().to_vec();
    let r = &r;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // A remote backend answers each read after a round trip: more files in flight hide it.
    let threads = if repo.backend().latency_bound() {
        (cores * 4).max(8)
    } else {
        cores
    };
    // The walk creates every entry in order; file contents are written by worker threads.
    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(threads * 4);
        // read-ahead threads for large files on a remote backend (none otherwise): as many as
        // the file writers, so that each writer's file can have a read in flight besides its own
        let (ftx, frx) = crossbeam_channel::bounded::<Fetch>(threads);
        let remote = repo.backend().latency_bound();
        let fetchers: Vec<_> = (0..if remote { threads } else { 0 })
            .map(|_| {
                let frx = frx.clone();
                s.spawn(move || r.reader.serve(frx))
            })
            .collect();
        drop(frx);
        // (a dry run writes nothing: the sender is dropped at once and the workers end)
        *r.jobs.lock().unwrap_or_else(|e| e.into_inner()) = (!opts.dry_run).then_some(tx);
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let rx = rx.clone();
                let ftx = remote.then(|| ftx.clone());
                s.spawn(move || {
                    for job in rx {
                        let p = job.path.clone();
                        if let Err(e) = r.write_content(job, ftx.as_ref()) {
                            r.warn(format!("{}: {e}", display(&p)));
                        }
                    }
                })
            })
            .collect();
        drop((rx, ftx));
        let walked = match found {
            Found::Root(id) => repo
                .load_tree(&id)
                .and_then(|tree| r.restore_tree(&tree, dir, &[], b"", false, true)),
            Found::Node(node) if node.kind == NodeKind::Dir => {
                let tree = match node.subtree {
                    Some(sub) => repo.load_tree(&sub),
                    None => Ok(Tree::default()),
                };
                let complete = node.error.is_none();
                tree.and_then(|tree| r.restore_tree(&tree, dir, &[], &prefix, false, complete))
            }
            Found::Node(node) => {
                let parent = prefix[..prefix.iter().rposition(|&b| b == b'/').unwrap_or(0)].to_vec();
                r.restore_tree(&Tree { nodes: vec![*node] }, dir, &[], &parent, false, false)
            }
        };
        // close the queue and wait for every file to be written, whatever the walk returned
        r.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        // (the read-ahead threads end once the workers, the last to hold their queue, have)
        for w in workers.into_iter().chain(fetchers) {
            if w.join().is_err() {
                return Err(Error::Invalid("a restore worker panicked".into()));
            }
        }
        walked.map(|_| ())
    })?;
    let stats = r.st().clone();
    Ok(stats)
}
