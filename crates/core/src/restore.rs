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

use coffer_format::{BlobKind, Name, Node, NodeKind, Timestamp, Tree};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags, CWD};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::filter::PathMatcher;
use crate::progress::Progress;
use crate::repo::IndexedRepository;
use crate::walk::{find_path, join, Found};

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Restore only paths matching one of these (and everything below a matching directory).
    pub includes: Vec<String>,
    pub excludes: Vec<String>,
    /// Only count (and report through progress) what would be restored.
    pub dry_run: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub other: u64,
    pub bytes: u64,
    /// Items that could not be restored fully (each was reported through progress).
    pub errors: u64,
}

struct Restorer<'a> {
    repo: &'a IndexedRepository,
    includes: PathMatcher,
    excludes: PathMatcher,
    dry_run: bool,
    as_root: bool,
    stats: RestoreStats,
    progress: &'a dyn Progress,
    /// (dev, inode) of a multiply-linked file → its path relative to the target.
    links: HashMap<(u64, u64), Vec<Name>>,
    /// The target directory (None for a dry run).
    target: Option<OwnedFd>,
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

impl Restorer<'_> {
    fn warn(&mut self, msg: String) {
        self.stats.errors += 1;
        self.progress.warn(&msg);
    }

    /// Restore the nodes of `tree` into `dir`. `rel` is the directory's path below the target
    /// (for hardlinks), `snap` its path in the snapshot (for filters and messages).
    /// Returns how many items were restored below it.
    fn restore_tree(
        &mut self,
        tree: &Tree,
        dir: Option<BorrowedFd<'_>>,
        rel: &[Name],
        snap: &[u8],
        selected: bool,
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
                    && self.links.contains_key(&(node.dev, node.inode)));
            if is_link {
                deferred.push(node);
                continue;
            }
            restored += 1;
            if self.dry_run {
                self.count(node);
                continue;
            }
            let Some(dfd) = dir else { continue };
            let r = match node.kind {
                NodeKind::File => self.restore_file(dfd, node, &path),
                _ => self.restore_special(dfd, node),
            };
            match r {
                Ok(()) => {
                    self.count(node);
                    if node.kind == NodeKind::File && node.links > 1 {
                        let mut r = rel.to_vec();
                        r.push(node.name.clone());
                        self.links.insert((node.dev, node.inode), r);
                    }
                }
                Err(e) => self.warn(format!("{}: {e}", display(&path))),
            }
        }
        for node in deferred {
            let path = join(snap, &node.name);
            restored += 1;
            if self.dry_run {
                self.count(node);
                continue;
            }
            let Some(dfd) = dir else { continue };
            let r = if node.kind == NodeKind::Symlink {
                self.restore_symlink(dfd, node)
            } else {
                self.restore_hardlink(dfd, node)
            };
            match r {
                Ok(()) => self.count(node),
                Err(e) => self.warn(format!("{}: {e}", display(&path))),
            }
        }
        Ok(restored)
    }

    fn count(&mut self, node: &Node) {
        match node.kind {
            NodeKind::File if node.links > 1 && self.links.contains_key(&(node.dev, node.inode)) => {
                self.stats.links += 1
            }
            NodeKind::File => {
                self.stats.files += 1;
                self.stats.bytes += node.size;
            }
            NodeKind::Symlink => self.stats.links += 1,
            NodeKind::Dir => self.stats.dirs += 1,
            _ => self.stats.other += 1,
        }
        self.progress.files(1);
    }

    fn restore_dir(
        &mut self,
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
        let mut rel = rel.to_vec();
        rel.push(node.name.clone());
        if self.dry_run || parent.is_none() {
            let n = self.restore_tree(&tree, None, &rel, path, sel)?;
            if sel || n > 0 {
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
        let n = self.restore_tree(&tree, Some(fd.as_fd()), &rel, path, sel)?;
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

    fn restore_file(&mut self, dir: BorrowedFd<'_>, node: &Node, path: &[u8]) -> Result<()> {
        self.progress.item(Path::new(OsStr::from_bytes(path)));
        let name = OsStr::from_bytes(&node.name.0);
        remove_existing(dir, name).map_err(|e| Error::io(display(path), errno_io(e)))?;
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| Error::io(display(path), errno_io(e)))?;
        let mut f = File::from(fd);
        let mut pos = 0u64;
        let mut sparse_tail = false;
        for id in &node.content {
            let data = self.repo.read_blob(id, BlobKind::Data)?;
            if data.len() >= 4096 && data.iter().all(|&b| b == 0) {
                // leave a hole
                f.seek(SeekFrom::Current(data.len() as i64))
                    .map_err(|e| Error::io(display(path), e))?;
                sparse_tail = true;
            } else {
                f.write_all(&data).map_err(|e| Error::io(display(path), e))?;
                sparse_tail = false;
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
        self.set_meta_fd(&fd, node)
            .map_err(|e| Error::io(display(path), e))
    }

    fn restore_special(&mut self, dir: BorrowedFd<'_>, node: &Node) -> Result<()> {
        let name = OsStr::from_bytes(&node.name.0);
        let ft = match node.kind {
            NodeKind::Fifo => FileType::Fifo,
            NodeKind::Chardev => FileType::CharacterDevice,
            NodeKind::Blockdev => FileType::BlockDevice,
            _ => return Ok(()),
        };
        let io = |e: Errno| Error::io(node.name.to_string(), errno_io(e));
        remove_existing(dir, name).map_err(io)?;
        rustix::fs::mknodat(dir, name, ft, Mode::from_raw_mode(0o600), node.rdev).map_err(io)?;
        self.set_meta_path(dir, node)
            .map_err(|e| Error::io(node.name.to_string(), e))
    }

    fn restore_symlink(&mut self, dir: BorrowedFd<'_>, node: &Node) -> Result<()> {
        let name = OsStr::from_bytes(&node.name.0);
        let io = |e: Errno| Error::io(node.name.to_string(), errno_io(e));
        let target = node.target.as_ref().map(|t| t.0.as_slice()).unwrap_or_default();
        remove_existing(dir, name).map_err(io)?;
        rustix::fs::symlinkat(OsStr::from_bytes(target), dir, name).map_err(io)?;
        self.set_meta_path(dir, node)
            .map_err(|e| Error::io(node.name.to_string(), e))
    }

    fn restore_hardlink(&mut self, dir: BorrowedFd<'_>, node: &Node) -> Result<()> {
        let io = |e: Errno| Error::io(node.name.to_string(), errno_io(e));
        let Some(first) = self.links.get(&(node.dev, node.inode)).cloned() else {
            return Ok(());
        };
        let (last, parents) = first
            .split_last()
            .ok_or_else(|| Error::Invalid("empty link path".into()))?;
        let Some(target) = &self.target else { return Ok(()) };
        let src_dir = open_rel_dir(target.as_fd(), parents).map_err(io)?;
        let name = OsStr::from_bytes(&node.name.0);
        remove_existing(dir, name).map_err(io)?;
        rustix::fs::linkat(
            src_dir.as_fd(),
            OsStr::from_bytes(&last.0),
            dir,
            name,
            AtFlags::empty(),
        )
        .map_err(io)
    }

    /// Owner, mode, xattrs and times through an open descriptor.
    fn set_meta_fd(&self, fd: &OwnedFd, node: &Node) -> std::io::Result<()> {
        if self.as_root {
            let (uid, gid) = owner_ids(node);
            rustix::fs::fchown(fd, Some(uid), Some(gid)).map_err(errno_io)?;
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
        if self.as_root {
            let (uid, gid) = owner_ids(node);
            rustix::fs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(errno_io)?;
        }
        if node.kind != NodeKind::Symlink {
            rustix::fs::chmodat(dir, name, Mode::from_raw_mode(node.mode), AtFlags::empty())
                .map_err(errno_io)?;
        }
        let t = Timestamps {
            last_access: ts(node.atime),
            last_modification: ts(node.mtime),
        };
        rustix::fs::utimensat(dir, name, &t, AtFlags::SYMLINK_NOFOLLOW).map_err(errno_io)
    }
}

/// uid/gid for a node: by name if this system knows the name, else the stored number.
fn owner_ids(node: &Node) -> (rustix::fs::Uid, rustix::fs::Gid) {
    let uid = node
        .user
        .as_deref()
        .and_then(uzers::get_user_by_name)
        .map_or(node.uid, |u| u.uid());
    let gid = node
        .group
        .as_deref()
        .and_then(uzers::get_group_by_name)
        .map_or(node.gid, |g| g.gid());
    (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid))
}

/// Remove whatever is at `name` in `dir` (file, symlink, or an empty directory) without
/// following it. A non-empty directory stays and the caller's create fails.
fn remove_existing(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
        }
        Ok(_) => rustix::fs::unlinkat(dir, name, AtFlags::empty()),
    }
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

/// Restore `path` of the snapshot whose root tree is `root` into `opts.target`.
/// A directory's *contents* land in the target (`/srv/www` → `TARGET/...`); restoring `/`
/// recreates the backed-up absolute paths under the target (`/srv/www/a` → `TARGET/srv/www/a`).
pub fn restore(
    repo: &IndexedRepository,
    root: coffer_format::BlobId,
    path: &str,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreStats> {
    let found = find_path(repo, root, path)?;
    let target = if opts.dry_run {
        None
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
    let mut r = Restorer {
        repo,
        includes: PathMatcher::new(&opts.includes)?,
        excludes: PathMatcher::new(&opts.excludes)?,
        dry_run: opts.dry_run,
        as_root: rustix::process::geteuid().is_root(),
        stats: RestoreStats::default(),
        progress,
        links: HashMap::new(),
        target,
    };
    let target = r
        .target
        .as_ref()
        .map(rustix::io::dup)
        .transpose()
        .map_err(|e| Error::io(&opts.target, errno_io(e)))?;
    let dir = target.as_ref().map(|t| t.as_fd());
    let prefix = path.trim_end_matches('/').as_bytes().to_vec();
    match found {
        Found::Root(id) => {
            let tree = repo.load_tree(&id)?;
            r.restore_tree(&tree, dir, &[], b"", false)?;
        }
        Found::Node(node) => {
            if node.kind == NodeKind::Dir {
                let tree = match node.subtree {
                    Some(s) => repo.load_tree(&s)?,
                    None => Tree::default(),
                };
                r.restore_tree(&tree, dir, &[], &prefix, false)?;
            } else {
                let parent = prefix[..prefix.iter().rposition(|&b| b == b'/').unwrap_or(0)].to_vec();
                r.restore_tree(&Tree { nodes: vec![*node] }, dir, &[], &parent, false)?;
            }
        }
    }
    Ok(r.stats)
}
