//! Backup: walk the given paths, store new content, write one snapshot.
//!
//! The walk runs on one thread (it reads, chunks and hashes, which is far faster than
//! compressing); new blobs go to the [`BlobPipeline`](crate::packer::BlobPipeline) whose workers
//! compress and seal them on the other cores. A file whose size, mtime, ctime and inode match
//! the parent snapshot's node is not read again: its chunk list is reused, after checking that
//! every chunk is still in the index. The parent snapshot's trees are decrypted and decoded
//! on another thread ([`ParentTrees`]), a bounded number ahead of the walk, in the order the
//! walk needs them.
//!
//! Errors on single files (unreadable, vanished, changed while read) are warnings: the file is
//! skipped or flagged, the run goes on, and the snapshot's `summary.errors` counts them.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::thread::Scope;

use rustix::fs::{AtFlags, Mode, OFlags};

use chrono::{DateTime, FixedOffset, Local};
use coffer_format::{
    BlobId, BlobKind, DatabaseItem, ImageItem, LazyNodes, LazyTree, Name, Node, NodeKind, PackId, Snapshot,
    SnapshotId, Summary, Timestamp, Tree, FORMAT_VERSION,
};
use crossbeam_channel::{bounded, Receiver, Sender};

use crate::chunker::Chunker;
use crate::error::{Error, Result};
use crate::filter::PathMatcher;
use crate::fsmeta::{
    kind_of_stat, node_from_stat, read_file_xattrs, read_xattrs_at, xattr_warning, NameCache, Xattrs,
};
use crate::image::{ImageInput, IMAGES_DIR};
use crate::packer::BlobPipeline;
use crate::progress::{FileStatus, Progress};
use crate::readahead::ReadAhead;
use crate::repo::IndexedRepository;
use crate::runset::RunSet;
use crate::sendlog::{SendLog, Sent};
use crate::source::{SourceError, StreamSource, DATABASES_DIR};

/// Which snapshot to compare against for change detection.
#[derive(Clone, Debug, Default)]
pub enum ParentChoice {
    /// The newest snapshot of this host with the same paths.
    #[default]
    Auto,
    /// Read every file (`--force`).
    None,
    Id(SnapshotId),
}

#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    /// Glob patterns: without `/` they match a name at any depth, with `/` the absolute path.
    pub excludes: Vec<String>,
    /// Skip the content of directories holding a valid `CACHEDIR.TAG`.
    pub exclude_caches: bool,
    /// Do not descend into other file systems.
    pub one_file_system: bool,
    pub tags: Vec<String>,
    pub hostname: Option<String>,
    pub parent: ParentChoice,
    /// Compression threads; 0 = one per core.
    pub threads: usize,
    /// Override the repository's compression for the blobs this run writes.
    pub compression: Option<crate::compress::CompressionSpec>,
    /// A write-only key's change cache: what stands in for the parent snapshot it cannot
    /// read; replaced with what this run stored when the snapshot is saved.
    pub send_log: Option<std::sync::Arc<crate::sendlog::SendLog>>,
    /// The caller uses the repository for nothing after this run (`coffer backup`): the
    /// in-memory index is not brought up to date with the run's packs, and their entries are
    /// not kept until the end. That is ~150 bytes per new blob less at the end of a first
    /// backup (a million small files: ~150 MB); a later read of a blob this run stored
    /// through the same repository value would not find it.
    pub last_use: bool,
}

/// Result of a backup run.
#[derive(Debug)]
pub struct BackupOutcome {
    pub id: SnapshotId,
    pub snapshot: Snapshot,
    /// Parent trees the walk decoded itself because the prefetch ([`ParentTrees`]) did not
    /// yield them in walk order: 0 unless the parent's trees are not in name order or a
    /// directory has more than 4096 entries.
    pub parent_tree_misses: u64,
    /// Directories the walk listed itself although the walk-ahead ([`Prescan`]) was
    /// running: 0 unless the file system changed under the run.
    pub listing_misses: u64,
    /// Files the walk handed to its read-ahead ([`crate::readahead`]): the regular files of
    /// directories it had nothing to compare with.
    pub read_ahead: u64,
}

/// Make `p` absolute and lexically clean (no `.`, `..` or repeated `/`).
pub fn absolute_clean(p: &Path) -> Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| Error::io(".", e))?.join(p)
    };
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The paths to back up as a trie of path components.
#[derive(Default)]
struct PathTrie {
    selected: bool,
    children: BTreeMap<Vec<u8>, PathTrie>,
}

impl PathTrie {
    fn insert(&mut self, p: &Path) {
        let mut t = self;
        for c in p.components() {
            if let Component::Normal(n) = c {
                if t.selected {
                    return; // an ancestor is backed up whole already
                }
                t = t.children.entry(n.as_bytes().to_vec()).or_default();
            }
        }
        t.selected = true;
        t.children.clear();
    }

    /// The backed-up paths below `dir`, in walk order.
    fn selected(&self, dir: &Path, out: &mut Vec<PathBuf>) {
        for (name, child) in &self.children {
            let p = dir.join(OsStr::from_bytes(name));
            if child.selected {
                out.push(p);
            } else {
                child.selected(&p, out);
            }
        }
    }
}

/// Open for reading without updating the access time (a backup should not disturb atime,
/// which tmp cleaners and mail readers use); `O_NOATIME` needs ownership or root, so fall
/// back to a plain open.
fn open_noatime(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    // never as a controlling terminal (a file replaced by a tty since its lstat)
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(rustix::io::Errno::PERM) => rustix::fs::openat(dir, name, flags, Mode::empty())?,
        r => r?,
    };
    Ok(File::from(fd))
}

/// The names in a directory (without `.` and `..`) in walk order (bytewise), read without
/// updating its atime.
fn list_dir(fd: BorrowedFd<'_>) -> io::Result<Vec<std::ffi::OsString>> {
    Ok(list_dir_typed(fd)?.into_iter().map(|(n, _)| n).collect())
}

/// [`list_dir`] with each entry's type as the directory gives it (`Unknown` on file systems
/// that do not say).
fn list_dir_typed(fd: BorrowedFd<'_>) -> io::Result<Vec<(std::ffi::OsString, rustix::fs::FileType)>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(fd)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push((OsStr::from_bytes(name).to_os_string(), entry.file_type()));
        }
    }
    names.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(names)
}

/// Open directory `name` in `dir` without following a symlink and without touching atime.
fn open_dir_at<Fd: AsFd>(dir: Fd, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(
        match rustix::fs::openat(&dir, name, flags | OFlags::NOATIME, Mode::empty()) {
            Err(rustix::io::Errno::PERM) => rustix::fs::openat(&dir, name, flags, Mode::empty())?,
            r => r?,
        },
    )
}

const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// Whether `dir` holds a cache directory tag. The tag is read without touching its atime:
/// otherwise the read would change the tag's node (its atime) from one run to the next.
fn is_cache_dir(dir: BorrowedFd<'_>) -> bool {
    let mut b = [0u8; 43];
    open_noatime(dir, OsStr::new("CACHEDIR.TAG"))
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
        && b == CACHEDIR_SIGNATURE
}

/// How many decoded parent trees [`ParentTrees`] keeps ready ahead of the walk...
const PARENT_TREES_AHEAD: usize = 16;
/// ...each of at most this many entries: a larger directory's tree is read by the walk itself
/// and kept encoded ([`ParentDir::Encoded`]), so the queue holds a few MiB at most.
const PREFETCH_MAX_NODES: usize = 4096;

/// A directory of the parent snapshot: decoded, or, past [`PREFETCH_MAX_NODES`] entries,
/// kept encoded and decoded node by node as the walk compares (a large directory is then not
/// held decoded beside its listing).
enum ParentDir {
    Decoded(Tree),
    Encoded(LazyTree),
}

impl ParentDir {
    /// Read tree `id`, decoded or kept encoded by its size.
    fn read(repo: &IndexedRepository, id: &BlobId) -> Result<Self> {
        let b = repo.read_blob(id, BlobKind::Tree)?;
        let what = || format!("tree {}", id.short());
        Ok(match LazyTree::announced_len(&b) {
            Some(n) if n > PREFETCH_MAX_NODES => {
                ParentDir::Encoded(LazyTree::new(b).map_err(|e| Error::format(what(), e))?)
            }
            _ => ParentDir::Decoded(Tree::decode(&b).map_err(|e| Error::format(what(), e))?),
        })
    }

    fn len(&self) -> usize {
        match self {
            ParentDir::Decoded(t) => t.nodes.len(),
            ParentDir::Encoded(t) => t.len(),
        }
    }

    fn nodes(&self) -> ParentNodes<'_> {
        match self {
            ParentDir::Decoded(t) => ParentNodes::Decoded(t.nodes.iter()),
            ParentDir::Encoded(t) => ParentNodes::Encoded(t.nodes()),
        }
    }

    fn into_tree(self) -> Tree {
        match self {
            ParentDir::Decoded(t) => t,
            ParentDir::Encoded(t) => t.into_tree(),
        }
    }
}

/// The nodes of a [`ParentDir`], in name order.
enum ParentNodes<'a> {
    Decoded(std::slice::Iter<'a, Node>),
    Encoded(LazyNodes<'a>),
}

impl<'a> Iterator for ParentNodes<'a> {
    type Item = Cow<'a, Node>;

    fn next(&mut self) -> Option<Cow<'a, Node>> {
        match self {
            ParentNodes::Decoded(i) => i.next().map(Cow::Borrowed),
            ParentNodes::Encoded(i) => i.next().map(Cow::Owned),
        }
    }
}

/// The first `n` nodes of `parent` (none without one), owned.
fn first_nodes(parent: Option<&ParentDir>, n: usize) -> impl Iterator<Item = Node> + '_ {
    parent
        .into_iter()
        .flat_map(ParentDir::nodes)
        .take(n)
        .map(Cow::into_owned)
}

/// `tree`, or `None` if it holds exactly the nodes of `parent` (as
/// [`Archiver::archive_dir_contents`] answers for a directory it walked).
fn unless_parent(tree: Tree, parent: Option<&ParentDir>) -> Option<Tree> {
    let same = parent
        .is_some_and(|p| p.len() == tree.nodes.len() && p.nodes().zip(&tree.nodes).all(|(a, b)| *a == *b));
    (!same).then_some(tree)
}

/// The parent snapshot's directory trees, decoded on a thread of their own in depth-first,
/// name order, which is the order in which the walk asks for them: an unchanged re-backup
/// spends as much time decoding its parent's trees as reading the directories, and the two
/// now run on different cores. The walk skips what it no longer needs (deleted or excluded
/// directories); a tree it asks for out of that order is decoded on the walk's own thread.
/// Trees are addressed by content, so whichever thread decodes one, it is the same tree.
struct ParentTrees {
    rx: Receiver<(BlobId, Option<Tree>)>,
    misses: u64,
}

impl ParentTrees {
    fn start<'scope>(s: &'scope Scope<'scope, '_>, repo: &'scope IndexedRepository, root: BlobId) -> Self {
        let (tx, rx) = bounded(PARENT_TREES_AHEAD);
        s.spawn(move || {
            let mut stack = vec![root];
            while let Some(id) = stack.pop() {
                let dir = ParentDir::read(repo, &id).ok(); // the walk reports a failure itself
                if let Some(d) = &dir {
                    let first = stack.len();
                    stack.extend(
                        d.nodes()
                            .filter(|n| n.kind == NodeKind::Dir)
                            .filter_map(|n| n.subtree),
                    );
                    stack[first..].reverse();
                }
                // a large directory is read again by the walk when it gets there
                let tree = match dir {
                    Some(ParentDir::Decoded(t)) => Some(t),
                    _ => None,
                };
                if tx.send((id, tree)).is_err() {
                    return; // the walk is over
                }
            }
        });
        ParentTrees { rx, misses: 0 }
    }

    /// Tree `id` if the prefetch yields it; the trees before it are ones the walk passed by.
    fn take(&mut self, id: &BlobId) -> Option<Tree> {
        let t = self.rx.iter().find(|(got, _)| got == id).and_then(|(_, t)| t);
        self.misses += t.is_none() as u64;
        t
    }
}

/// At most this many listed entries (~3.4 MiB, ~210 bytes each) wait for the walk. At ~300k
/// entries listed per second, that is what the walk-ahead lists while the index loads; a larger
/// budget did not make the walk faster, only the peak RSS higher (64k entries: +10 MiB).
const WALK_AHEAD_ENTRIES: usize = 16 << 10;

/// The walk-ahead's budget: how many listed entries wait for the walk (a directory counts one
/// more than its entries). The walk-ahead waits while [`WALK_AHEAD_ENTRIES`] or more do, and
/// the walk wakes it only once they have drained to half, so the two threads do not wake each
/// other for every directory.
#[derive(Default)]
struct Budget {
    state: std::sync::Mutex<BudgetState>,
    room: std::sync::Condvar,
}

#[derive(Default)]
struct BudgetState {
    queued: usize,
    waiting: bool,
    closed: bool,
}

impl BudgetState {
    fn full(&self) -> bool {
        self.queued >= WALK_AHEAD_ENTRIES
    }
}

/// What a directory listing of `entries` entries counts against the [`Budget`].
fn listing_cost(entries: usize) -> usize {
    1 + entries
}

impl Budget {
    fn state(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queue `n` entries, after waiting for room; false once the walk is over.
    fn take(&self, n: usize) -> bool {
        let mut s = self.state();
        while s.full() && !s.closed {
            s.waiting = true;
            s = self
                .room
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        s.queued += n;
        !s.closed
    }

    /// `n` queued entries were taken by the walk.
    fn give(&self, n: usize) {
        let mut s = self.state();
        s.queued = s.queued.saturating_sub(n);
        if s.waiting && s.queued < WALK_AHEAD_ENTRIES / 2 {
            s.waiting = false;
            self.room.notify_one();
        }
    }

    /// The walk is over: the walk-ahead stops.
    fn close(&self) {
        self.state().closed = true;
        self.room.notify_one();
    }
}

/// A directory's entries, sorted by name, each with its `lstat` (`None`: excluded, not
/// looked at).
type Listing = io::Result<Vec<(std::ffi::OsString, Option<rustix::io::Result<rustix::fs::Stat>>)>>;

/// A directory listed and stat'ed ahead of the walk. `entries` is `None` for a cache
/// directory (the walk stores only its tag); `dev` and `ino` identify the directory read, so
/// the walk uses the listing only for that same directory.
struct ScannedDir {
    path: PathBuf,
    dev: u64,
    ino: u64,
    entries: Option<Listing>,
    /// What the listing counts against the [`Budget`].
    cost: usize,
}

/// Lists and stats the directories to back up on a thread of its own, depth first in name
/// order, with the walk's descent rules (excludes, one file system, cache directories), ahead
/// of the walk. It starts before the repository is unlocked (see [`Prescan`]), so the
/// key derivation and the index load on one core overlap the file system's system calls on the
/// other, and then the walk compares with the parent snapshot while the rest is listed. The walk
/// takes each directory's listing by path, after opening the directory itself and checking it
/// is the one listed; what the walk-ahead skipped or got out of step on (a directory created,
/// replaced or made unreadable in between) the walk lists itself, so a difference between the
/// two can only cost time. A file the walk is about to read is stat'ed again first (see
/// [`Archiver::archive_entry`]), so its node describes what is read.
pub struct Prescan {
    rx: Receiver<ScannedDir>,
    budget: std::sync::Arc<Budget>,
    /// Listings received from the walk-ahead and not yet passed by the walk.
    ready: std::collections::VecDeque<ScannedDir>,
    misses: u64,
}

/// Depth-first name order of two paths: component by component, bytewise.
fn walk_order(a: &Path, b: &Path) -> std::cmp::Ordering {
    a.components()
        .map(|c| c.as_os_str().as_bytes())
        .cmp(b.components().map(|c| c.as_os_str().as_bytes()))
}

impl Prescan {
    /// Start listing what a backup of `paths` with these rules will walk. Dropping the
    /// result stops the thread.
    pub fn start(paths: &[PathBuf], excludes: &[String], exclude_caches: bool, one_fs: bool) -> Result<Self> {
        let mut trie = PathTrie::default();
        for p in paths {
            trie.insert(&absolute_clean(p)?);
        }
        let mut roots = Vec::new();
        trie.selected(Path::new("/"), &mut roots);
        let excluder = PathMatcher::new(excludes)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let budget = std::sync::Arc::new(Budget::default());
        let scan_budget = budget.clone();
        std::thread::Builder::new()
            .name("coffer-scan".into())
            .stack_size(64 << 20)
            .spawn(move || {
                let scan = Scan {
                    tx,
                    budget: scan_budget,
                    excluder,
                    exclude_caches,
                    one_fs,
                };
                for root in roots {
                    if !scan.root(&root) {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("thread", e))?;
        Ok(Prescan {
            rx,
            budget,
            ready: Default::default(),
            misses: 0,
        })
    }

    /// Wait until `n` directories are listed, or the walk-ahead has finished; returns how many
    /// are listed. For tests that change the file system once the walk-ahead has seen it.
    pub fn wait_listed(&mut self, n: usize) -> usize {
        while self.ready.len() < n {
            match self.rx.recv() {
                Ok(item) => self.ready.push_back(item),
                Err(_) => break,
            }
        }
        self.ready.len()
    }

    /// The listing of `path`, the directory `dir` (open), if the walk-ahead has it; the
    /// listings before it in walk order are of directories the walk does not enter.
    /// `None` also for a cache directory, which the walk reads itself.
    #[allow(clippy::unnecessary_cast)] // stat field types differ between targets
    fn take(&mut self, path: &Path, dir: BorrowedFd<'_>) -> Option<Listing> {
        loop {
            let item = match self.ready.pop_front() {
                Some(i) => i,
                None => match self.rx.recv() {
                    Ok(i) => i,
                    Err(_) => break,
                },
            };
            match walk_order(&item.path, path) {
                std::cmp::Ordering::Less => self.budget.give(item.cost),
                std::cmp::Ordering::Equal => {
                    self.budget.give(item.cost);
                    let same = rustix::fs::fstat(dir)
                        .is_ok_and(|st| (st.st_dev as u64, st.st_ino as u64) == (item.dev, item.ino));
                    if same {
                        return item.entries;
                    }
                    break;
                }
                std::cmp::Ordering::Greater => {
                    self.ready.push_front(item);
                    break;
                }
            }
        }
        self.misses += 1;
        None
    }
}

impl Drop for Prescan {
    fn drop(&mut self) {
        self.budget.close();
    }
}

/// The walk-ahead's thread.
struct Scan {
    tx: Sender<ScannedDir>,
    budget: std::sync::Arc<Budget>,
    excluder: PathMatcher,
    exclude_caches: bool,
    one_fs: bool,
}

impl Scan {
    /// Scan a backed-up path (not following it if it is a symlink); false once the walk is over.
    #[allow(clippy::unnecessary_cast)] // stat field types differ between targets
    fn root(&self, root: &Path) -> bool {
        if self.excluder.matches(root) {
            return true;
        }
        let Ok(st) = rustix::fs::lstat(root) else {
            return true;
        };
        if kind_of_stat(&st) != Some(NodeKind::Dir) {
            return true;
        }
        match open_dir_at(rustix::fs::CWD, root.as_os_str()) {
            Ok(fd) => self.enter(fd, root, st.st_dev as u64),
            Err(_) => true, // the walk reports it
        }
    }

    /// Hand over a listing, within the budget; false once the walk is over.
    fn send(&self, mut item: ScannedDir) -> bool {
        let n = match &item.entries {
            Some(Ok(v)) => v.len(),
            _ => 0,
        };
        item.cost = listing_cost(n);
        self.budget.take(item.cost) && self.tx.send(item).is_ok()
    }

    /// Scan directory `fd` (on device `dev`, the backed-up path's) unless it is a cache
    /// directory, which is handed over unlisted.
    #[allow(clippy::unnecessary_cast)]
    fn enter(&self, fd: OwnedFd, path: &Path, dev: u64) -> bool {
        let Ok(st) = rustix::fs::fstat(&fd) else {
            return true;
        };
        let mut item = ScannedDir {
            path: path.to_path_buf(),
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            entries: None,
            cost: 0,
        };
        if self.exclude_caches && is_cache_dir(fd.as_fd()) {
            return self.send(item);
        }
        let entries = list_dir(fd.as_fd()).map(|names| {
            names
                .into_iter()
                .map(|n| {
                    let excluded = !self.excluder.is_empty() && self.excluder.matches(&path.join(&n));
                    let st = (!excluded).then(|| rustix::fs::statat(&fd, &n, AtFlags::SYMLINK_NOFOLLOW));
                    (n, st)
                })
                .collect::<Vec<_>>()
        });
        let subdirs: Vec<std::ffi::OsString> = match &entries {
            Ok(v) => v
                .iter()
                .filter(|(_, st)| {
                    matches!(st, Some(Ok(st)) if kind_of_stat(st) == Some(NodeKind::Dir)
                        && !(self.one_fs && st.st_dev as u64 != dev))
                })
                .map(|(n, _)| n.clone())
                .collect(),
            Err(_) => Vec::new(),
        };
        item.entries = Some(entries);
        if !self.send(item) {
            return false;
        }
        for n in subdirs {
            let Ok(sub) = open_dir_at(&fd, &n) else {
                continue; // the walk reports it
            };
            if !self.enter(sub, &path.join(&n), dev) {
                return false;
            }
        }
        true
    }
}

/// Whether the parent snapshot's node `p` holds the content of a file with this size, mtime,
/// ctime and inode (the change detection rule).
fn same_content(p: &Node, size: u64, mtime: Timestamp, ctime: Timestamp, inode: u64) -> bool {
    p.kind == NodeKind::File
        && p.error.is_none()
        && p.size == size
        && p.mtime == mtime
        && p.ctime == ctime
        && p.inode == inode
}

/// Whether a stat matches what the change cache recorded for the file.
#[allow(clippy::unnecessary_cast)]
fn same_as_logged(st: &rustix::fs::Stat, l: &Sent) -> bool {
    let ts = |s: i64, ns: u64| Timestamp { s, ns: ns as u32 };
    l.size == st.st_size as u64
        && l.mtime == ts(st.st_mtime as i64, st.st_mtime_nsec as u64)
        && l.ctime == ts(st.st_ctime as i64, st.st_ctime_nsec as u64)
        && l.inode == st.st_ino as u64
}

/// [`same_content`] on a stat.
#[allow(clippy::unnecessary_cast)]
fn same_file(st: &rustix::fs::Stat, parent: Option<&Node>) -> bool {
    let ts = |s: i64, ns: u64| Timestamp { s, ns: ns as u32 };
    parent.is_some_and(|p| {
        same_content(
            p,
            st.st_size as u64,
            ts(st.st_mtime as i64, st.st_mtime_nsec as u64),
            ts(st.st_ctime as i64, st.st_ctime_nsec as u64),
            st.st_ino as u64,
        )
    })
}

/// An entry of a directory as the read-ahead sees it ([`Archiver::read_ahead_kinds`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AheadKind {
    /// A file the walk will read.
    File,
    /// A directory the walk enters (the files after it are read after its own).
    Boundary,
    /// Neither.
    Other,
}

struct Archiver<'a, 'p, 'l> {
    repo: &'a IndexedRepository,
    parent_trees: Option<ParentTrees>,
    ahead: Option<Prescan>,
    pipe: &'a BlobPipeline<'p>,
    chunker: &'a Chunker,
    buf: Vec<u8>,
    /// The blobs this run queued ([`RunSet`]).
    session: RunSet,
    excluder: PathMatcher,
    exclude_caches: bool,
    root_dev: Option<u64>,
    one_fs: bool,
    names: NameCache,
    hardlinks: HashMap<(u64, u64), (Vec<BlobId>, u64)>,
    /// Packs holding blobs this run uses without having uploaded them, by their position in
    /// the index (a bitmap: every reused chunk notes its pack).
    referenced: Vec<bool>,
    /// A write-only key's change cache from the last run, and what this run stores.
    sent: Option<&'l SendLog>,
    sent_next: Option<crate::sendlog::Recorder<'l>>,
    summary: Summary,
    progress: &'a dyn Progress,
    /// The id of the chunk cut from a run of zeros, once stored (it is always the same).
    zero_blob: Option<BlobId>,
    /// Bytes read in such chunks.
    zero_bytes: u64,
    /// Asks the kernel for the files the walk reads next ([`crate::readahead`]).
    read_ahead: Option<ReadAhead>,
}

impl<'l> Archiver<'_, '_, 'l> {
    fn warn(&mut self, msg: String) {
        self.summary.errors += 1;
        self.progress.warn(&msg);
    }

    /// Store a blob unless the repository or this run has it already.
    fn save_blob(&mut self, kind: BlobKind, data: &[u8]) -> Result<BlobId> {
        let id = self.repo.key().blob_id(data);
        if self.is_new(&id, data.len())? {
            let mut buf = self.pipe.buffer(data.len());
            buf.extend_from_slice(data);
            self.pipe.submit(kind, id, buf)?;
        }
        Ok(id)
    }

    /// [`Self::save_blob`] of a buffer the caller gives up: it goes to the pipeline as is.
    fn save_blob_owned(&mut self, kind: BlobKind, data: Vec<u8>) -> Result<BlobId> {
        let id = self.repo.key().blob_id(&data);
        if self.is_new(&id, data.len())? {
            self.pipe.submit(kind, id, data)?;
        }
        Ok(id)
    }

    /// Whether blob `id` (of `len` bytes) is neither in the repository nor already queued in
    /// this run; counts it as new if so.
    fn is_new(&mut self, id: &BlobId, len: usize) -> Result<bool> {
        let new = self.reuse_blob(id).is_none() && self.session.insert(id)?;
        if new {
            self.summary.blobs_new += 1;
            self.summary.bytes_new_raw += len as u64;
        }
        Ok(new)
    }

    /// Use a blob the repository has (recording its pack, as [`Self::save_blob`] does);
    /// `None` if the index does not hold it in a vouched pack: a blob only an unvouched
    /// listing claims (another write-only client's, which could be a stolen key's lie) is
    /// stored again rather than referenced.
    fn reuse_blob(&mut self, id: &BlobId) -> Option<BlobId> {
        let index = self.repo.index();
        if !index.vouched(id) {
            return None;
        }
        let pos = index.pack_position(id)?;
        // sized for the index at the start; grown if it ever held more (the set must be complete)
        let mut note = |pos: u32| {
            let pos = pos as usize;
            if pos >= self.referenced.len() {
                self.referenced.resize(pos + 1, false);
            }
            self.referenced[pos] = true;
        };
        note(pos);
        // every copy: the primary one may not verify (a server keeps only named packs)
        if index.has_alternatives() {
            index.alternative_positions(id).for_each(note);
        }
        Some(*id)
    }

    /// Read a node's extended attributes from its path if [`node_from_stat`] left them.
    fn pending_xattrs(&mut self, xattrs: Xattrs, dir: BorrowedFd<'_>, path: &Path, node: &mut Node) {
        if xattrs == Xattrs::Pending {
            match read_xattrs_at(dir, &node.name, path) {
                Ok(x) => node.xattrs = x,
                Err(w) => self.warn(w),
            }
        }
    }

    fn save_tree(&mut self, mut tree: Tree) -> Result<BlobId> {
        let bytes = tree.encode();
        drop(tree); // a large directory's nodes are not kept beside their encoding
        self.save_blob_owned(BlobKind::Tree, bytes)
    }

    fn load_parent_tree(&mut self, id: Option<BlobId>) -> Option<ParentDir> {
        let id = id?;
        if let Some(t) = self.parent_trees.as_mut().and_then(|p| p.take(&id)) {
            return Some(ParentDir::Decoded(t));
        }
        match ParentDir::read(self.repo, &id) {
            Ok(t) => Some(t),
            Err(e) => {
                // Not fatal: the files are read again instead of compared.
                self.progress.warn(&format!(
                    "parent tree {} unreadable, reading files again: {e}",
                    id.short()
                ));
                None
            }
        }
    }

    /// Read a file's content into chunks. Returns the chunk ids and bytes read; a read error
    /// after the open is recorded in the node (partial content) and warned about.
    fn read_file(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        node: &mut Node,
        xattrs: &mut Xattrs,
    ) -> Result<Option<Vec<BlobId>>> {
        let mut f = match open_noatime(dir, name) {
            Ok(f) => f,
            Err(e) => {
                self.warn(format!("{}: cannot open: {e}", path.display()));
                return Ok(None);
            }
        };
        if *xattrs == Xattrs::Pending {
            match read_file_xattrs(&f) {
                Ok(x) => node.xattrs = x,
                Err(e) => self.warn(xattr_warning(path, &e)),
            }
            *xattrs = Xattrs::Read;
        }
        self.progress.item(path);
        let (res, ids, got) = self.chunk_stream(&mut f);
        let read = match res {
            Ok(n) => n,
            Err(ChunkErr::Repo(e)) => return Err(e),
            Err(ChunkErr::Io(e)) => {
                node.error = Some(format!("read error: {e}"));
                self.warn(format!(
                    "{}: read error, content stored up to the error: {e}",
                    path.display()
                ));
                got
            }
        };
        self.summary.bytes_read += read;
        if node.error.is_none() && read != node.size {
            node.error = Some(format!(
                "size changed while reading (was {}, read {read})",
                node.size
            ));
            self.warn(format!(
                "{}: changed while being read (size was {}, read {read})",
                path.display(),
                node.size
            ));
        }
        node.size = read;
        Ok(Some(ids))
    }

    /// Chunk and store everything `r` yields: the outcome, the chunk ids and the bytes read
    /// (also when reading failed part-way).
    fn chunk_stream<R: Read>(&mut self, r: &mut R) -> (Result<u64, ChunkErr>, Vec<BlobId>, u64) {
        let mut ids = Vec::new();
        let mut got = 0u64;
        let mut buf = std::mem::take(&mut self.buf);
        let chunker = self.chunker;
        let res = chunker.chunk_reader::<_, ChunkErr>(r, &mut buf, |chunk, zero| {
            let id = match self.zero_blob.filter(|_| zero) {
                Some(id) => id,
                None => self.save_blob(BlobKind::Data, chunk).map_err(ChunkErr::Repo)?,
            };
            if zero {
                self.zero_blob = Some(id);
                self.zero_bytes += chunk.len() as u64;
            }
            ids.push(id);
            got += chunk.len() as u64;
            self.progress.bytes(chunk.len() as u64);
            Ok(())
        });
        self.buf = buf;
        (res, ids, got)
    }

    /// Store one streamed source. A failed source is a warning and yields `None`; only a
    /// repository error stops the run.
    fn archive_source(
        &mut self,
        src: &mut dyn StreamSource,
    ) -> Result<Option<(Vec<Name>, Node, DatabaseItem)>> {
        let what = src.describe();
        let location = src.location();
        self.progress.item(Path::new(&what));
        let mut reader = match src.open() {
            Ok(r) => r,
            Err(e) => {
                self.warn(format!("{e}; the snapshot does not include it"));
                return Ok(None);
            }
        };
        let (res, ids, got) = self.chunk_stream(&mut reader);
        drop(reader);
        let item = match res {
            Ok(n) => src.finish(true, n),
            Err(ChunkErr::Repo(e)) => {
                // stop the producer before reporting the repository's error
                let _ = src.finish(false, got);
                return Err(e);
            }
            Err(ChunkErr::Io(e)) => match src.finish(false, got) {
                Err(f) => Err(f),
                Ok(_) => Err(SourceError(format!("{what}: reading its output failed: {e}"))),
            },
        };
        let item = match item {
            Ok(i) => i,
            Err(e) => {
                self.warn(format!("{e}; the snapshot does not include it"));
                return Ok(None);
            }
        };
        for w in &item.warnings {
            self.progress.warn(&format!("{what}: {w}"));
        }
        self.summary.bytes_read += got;
        self.summary.bytes_total += got;
        let Some(name) = location.last().cloned() else {
            return Err(Error::Invalid(format!(
                "{what}: the source has an empty location"
            )));
        };
        let mut node = synthetic_node(name, NodeKind::File, item.end);
        node.size = got;
        node.content = ids;
        Ok(Some((location[..location.len() - 1].to_vec(), node, item)))
    }

    /// Store one image. A source that fails or ends short is a warning and yields `None`;
    /// only a repository error stops the run.
    fn archive_image(&mut self, img: ImageInput) -> Result<Option<(Node, ImageItem)>> {
        let what = format!("image {} ({})", img.name, img.source);
        self.progress.item(Path::new(&img.source));
        let start = Local::now().fixed_offset();
        let ImageInput {
            name,
            kind,
            source,
            mut reader,
            expected,
            warnings,
        } = img;
        for w in &warnings {
            self.progress.warn(&format!("{what}: {w}"));
        }
        let zeros_before = self.zero_bytes;
        let (res, ids, got) = self.chunk_stream(&mut reader);
        drop(reader);
        let failed = match res {
            Ok(_) => expected
                .filter(|&e| e != got)
                .map(|e| format!("{what}: read {got} bytes of {e}")),
            Err(ChunkErr::Repo(e)) => return Err(e),
            Err(ChunkErr::Io(e)) => Some(format!("{what}: read error after {got} bytes: {e}")),
        };
        if let Some(f) = failed {
            self.warn(format!("{f}; the snapshot does not include it"));
            return Ok(None);
        }
        self.summary.bytes_read += got;
        self.summary.bytes_total += got;
        let end = Local::now().fixed_offset();
        let mut node = synthetic_node(Name::from(name.as_str()), NodeKind::File, end);
        node.size = got;
        node.content = ids;
        let item = ImageItem {
            path: crate::image::image_path(&name),
            name,
            kind: kind.into(),
            source,
            size: got,
            zero_bytes: self.zero_bytes - zeros_before,
            start,
            end,
            warnings,
        };
        Ok(Some((node, item)))
    }

    /// Build a top-level directory (`.databases`, `.images`) from stored items' nodes.
    fn items_tree(
        &mut self,
        top: &str,
        items: Vec<(Vec<Name>, Node)>,
        now: DateTime<FixedOffset>,
    ) -> Result<Node> {
        #[derive(Default)]
        struct Dir {
            dirs: BTreeMap<Name, Dir>,
            files: Vec<Node>,
        }
        fn save(a: &mut Archiver<'_, '_, '_>, d: Dir, now: DateTime<FixedOffset>) -> Result<Tree> {
            let mut tree = Tree { nodes: d.files };
            for (name, sub) in d.dirs {
                let mut node = synthetic_node(name, NodeKind::Dir, now);
                let t = save(a, sub, now)?;
                node.subtree = Some(a.save_tree(t)?);
                tree.nodes.push(node);
            }
            Ok(tree)
        }
        let mut root = Dir::default();
        for (dirs, node) in items {
            let mut d = &mut root;
            for c in dirs {
                d = d.dirs.entry(c).or_default();
            }
            if d.files.iter().any(|f| f.name == node.name) || d.dirs.contains_key(&node.name) {
                return Err(Error::Usage(format!(
                    "two items of /{top} want the same name {}; nothing was backed up",
                    node.name
                )));
            }
            d.files.push(node);
        }
        let mut node = synthetic_node(Name::from(top), NodeKind::Dir, now);
        let t = save(self, root, now)?;
        node.subtree = Some(self.save_tree(t)?);
        Ok(node)
    }

    /// [`Self::unchanged`] against the change cache's record of the file.
    fn unchanged_logged(&mut self, node: &Node, sent: Option<&Sent>) -> Option<Vec<BlobId>> {
        let p = sent?;
        if !(p.size == node.size && p.mtime == node.mtime && p.ctime == node.ctime && p.inode == node.inode) {
            return None;
        }
        for id in &p.content {
            // (a set that cannot be read says no: the file is read again, and storing its
            // blobs meets the error)
            if self.reuse_blob(id).is_none() && !self.session.contains(id).unwrap_or(false) {
                return None;
            }
        }
        Some(p.content.clone())
    }

    fn unchanged(&mut self, node: &Node, parent: Option<&Node>) -> Option<Vec<BlobId>> {
        let p = parent?;
        if !same_content(p, node.size, node.mtime, node.ctime, node.inode) {
            return None;
        }
        for id in &p.content {
            // (a set that cannot be read says no: the file is read again, and storing its
            // blobs meets the error)
            if self.reuse_blob(id).is_none() && !self.session.contains(id).unwrap_or(false) {
                return None;
            }
        }
        Some(p.content.clone())
    }

    /// Archive one directory entry. `Ok(None)` means it is skipped (excluded, socket, error).
    /// Archive entry `name` of the open directory `dir`; `path` is its full path (for
    /// messages and excludes only: every system call is relative to `dir`, so paths of any
    /// length work).
    fn archive_entry(
        &mut self,
        dir: BorrowedFd<'_>,
        path: &Path,
        name: Name,
        parent: Option<&Node>,
        scanned: Option<rustix::io::Result<rustix::fs::Stat>>,
    ) -> Result<Option<Node>> {
        if self.excluder.matches(path) {
            return Ok(None);
        }
        // the name as the system calls take it: the last component of `path` (no copy)
        let owned;
        let cname: &OsStr = match path.file_name() {
            Some(f) if f.as_bytes() == &name.0[..] => f,
            _ => {
                owned = OsStr::from_bytes(&name.0).to_os_string();
                &owned
            }
        };
        let ahead = scanned.is_some();
        // without a parent, a write-only key's change cache stands in for it
        let logged_entry = match parent {
            None => self.sent.and_then(|l| l.get_entry(path)),
            Some(_) => None,
        };
        let logged = logged_entry.map(|(_, l)| l);
        let stat = || rustix::fs::statat(dir, cname, AtFlags::SYMLINK_NOFOLLOW);
        let mut st = scanned.unwrap_or_else(stat);
        // A file about to be read is described as it is now, not as the walk-ahead saw it a
        // moment ago (what is read and its size, mtime and ctime must agree).
        #[allow(clippy::unnecessary_cast)]
        let refresh = |s: &rustix::fs::Stat| {
            kind_of_stat(s) == Some(NodeKind::File)
                && !same_file(s, parent)
                && logged.is_none_or(|l| !same_as_logged(s, l))
                && !(s.st_nlink > 1 && self.hardlinks.contains_key(&(s.st_dev as u64, s.st_ino as u64)))
        };
        if ahead && st.as_ref().is_ok_and(refresh) {
            st = stat();
        }
        let st = match st {
            Ok(m) => m,
            Err(e) => {
                self.warn(format!("{}: cannot stat: {}", path.display(), io::Error::from(e)));
                return Ok(None);
            }
        };
        let Some(kind) = kind_of_stat(&st) else {
            self.progress.warn(&format!("{}: socket skipped", path.display()));
            return Ok(None);
        };
        let (mut node, warning, mut xattrs) =
            node_from_stat(name, kind, &st, dir, path, &mut self.names, parent);
        if let Some(w) = warning {
            self.warn(w);
        }
        // the change cache's record holds the attributes when the ctime says they are the same
        let mut xattrs_logged = false;
        if let Some(l) =
            logged.filter(|l| xattrs == Xattrs::Pending && l.inode == node.inode && l.ctime == node.ctime)
        {
            if let Some(x) = &l.xattrs {
                node.xattrs = x.clone();
                xattrs = Xattrs::Read;
                xattrs_logged = true;
            }
        }
        match kind {
            NodeKind::File => {
                self.summary.bytes_total += node.size;
                let key = (node.dev, node.inode);
                // the file is exactly as the change cache has it (content and attributes)
                let mut kept_as_logged = false;
                let errors_before = self.summary.errors;
                let reuse = if node.links > 1 {
                    self.hardlinks.get(&key).cloned()
                } else {
                    None
                };
                let content = if let Some((ids, size)) = reuse {
                    node.size = size;
                    self.summary.files_unchanged += 1;
                    self.progress.file_status(FileStatus::Unchanged, path);
                    ids
                } else if let Some(ids) = self.unchanged(&node, parent).or_else(|| {
                    let ids = self.unchanged_logged(&node, logged)?;
                    kept_as_logged = xattrs_logged;
                    Some(ids)
                }) {
                    self.summary.files_unchanged += 1;
                    self.progress.bytes(node.size);
                    self.progress.file_status(FileStatus::Unchanged, path);
                    ids
                } else {
                    match self.read_file(dir, cname, path, &mut node, &mut xattrs)? {
                        Some(ids) => {
                            // (a write-only key's change cache stands for the parent here too)
                            if parent.is_some_and(|p| p.kind == NodeKind::File) || logged.is_some() {
                                self.summary.files_changed += 1;
                                self.progress.file_status(FileStatus::Changed, path);
                            } else {
                                self.summary.files_new += 1;
                                self.progress.file_status(FileStatus::New, path);
                            }
                            ids
                        }
                        None => return Ok(None),
                    }
                };
                // what the content's read did not take from the open file (a second hard link)
                self.pending_xattrs(xattrs, dir, path, &mut node);
                if node.links > 1 {
                    self.hardlinks.insert(key, (content.clone(), node.size));
                }
                if let Some(next) = self.sent_next.as_mut().filter(|_| node.error.is_none()) {
                    match logged_entry.filter(|_| kept_as_logged) {
                        Some((logged_path, _)) => next.keep(logged_path),
                        None => next.record(
                            path,
                            Sent {
                                size: node.size,
                                mtime: node.mtime,
                                ctime: node.ctime,
                                inode: node.inode,
                                content: content.clone(),
                                // (attributes that could not be read are read again next time)
                                xattrs: (self.summary.errors == errors_before).then(|| node.xattrs.clone()),
                            },
                        ),
                    }
                }
                node.content = content;
                self.progress.files(1);
            }
            NodeKind::Dir => {
                self.summary.dirs += 1;
                let ptree =
                    self.load_parent_tree(parent.filter(|p| p.kind == NodeKind::Dir).and_then(|p| p.subtree));
                // another file system's mount point is recorded, not entered
                let other_fs = self.one_fs && self.root_dev.is_some_and(|d| d != st.st_dev as u64);
                // A directory not entered is marked (`error`), so that nothing ever reads its
                // empty listing as "empty": restore --delete leaves what is in it.
                let sub = match other_fs {
                    true => {
                        node.error = Some("mount point of another filesystem: not entered".into());
                        None
                    }
                    false => match open_dir_at(dir, cname) {
                        Ok(fd) => Some(fd),
                        Err(e) => {
                            self.warn(format!("{}: cannot open directory: {e}", path.display()));
                            node.error = Some(format!("cannot open directory: {e}"));
                            None
                        }
                    },
                };
                let listing = match (&sub, self.ahead.as_mut()) {
                    (Some(fd), Some(a)) => a.take(path, fd.as_fd()),
                    _ => None,
                };
                // `None`: the same entries as the parent's tree
                let tree = match sub {
                    None => unless_parent(Tree::default(), ptree.as_ref()),
                    Some(sub) => {
                        if self.exclude_caches && is_cache_dir(sub.as_fd()) {
                            let tag = self.archive_entry(
                                sub.as_fd(),
                                &path.join("CACHEDIR.TAG"),
                                Name::from("CACHEDIR.TAG"),
                                None,
                                None,
                            )?;
                            let nodes = tag.into_iter().collect();
                            unless_parent(Tree { nodes }, ptree.as_ref())
                        } else {
                            self.archive_dir_contents(sub.as_fd(), path, ptree.as_ref(), listing)?
                        }
                    }
                };
                // an unchanged directory keeps its parent's tree blob: no encoding or hashing
                let reused = parent
                    .and_then(|p| p.subtree)
                    .filter(|_| tree.is_none())
                    .and_then(|id| self.reuse_blob(&id));
                node.subtree = Some(match reused {
                    Some(id) => id,
                    // (a large directory's old listing is not kept while the new one is stored)
                    None => self.save_tree(
                        tree.or_else(|| ptree.map(ParentDir::into_tree))
                            .unwrap_or_default(),
                    )?,
                });
            }
            _ => self.summary.other_nodes += 1,
        }
        Ok(Some(node))
    }

    /// Archive the entries of directory `dirfd`. `None` when they are exactly the entries of
    /// `parent`: an unchanged directory's new nodes are compared with its parent's as they come
    /// and dropped, so a large directory is not held twice (its parent's decoded tree and its
    /// own), and the tree is built only from the first difference on.
    fn archive_dir_contents(
        &mut self,
        dirfd: BorrowedFd<'_>,
        dir: &Path,
        parent: Option<&ParentDir>,
        listing: Option<Listing>,
    ) -> Result<Option<Tree>> {
        // the entries' types where the walk lists the directory itself (the walk-ahead's
        // listing has each entry's lstat instead)
        let mut types = Vec::new();
        let listing = listing.unwrap_or_else(|| {
            list_dir_typed(dirfd).map(|names| {
                names
                    .into_iter()
                    .map(|(n, t)| {
                        types.push(t);
                        (n, None)
                    })
                    .collect()
            })
        });
        let entries = match listing {
            Ok(n) => n,
            Err(e) => {
                self.warn(format!("{}: cannot list: {e}", dir.display()));
                Vec::new()
            }
        };
        // what the read-ahead may be handed (nothing where there is a parent to compare with)
        let kinds = self.read_ahead_kinds(dir, parent, &entries, &types);
        let mut entries = entries;
        let mut pnodes = parent.map(ParentDir::nodes);
        // the parent's node at position `pi` (the first not before the current name)
        let mut pcur = pnodes.as_mut().and_then(Iterator::next);
        let mut pi = 0;
        // Until `tree` exists, the entries so far are exactly the parent's first `same`.
        let mut tree: Option<Tree> = None;
        let mut same = 0;
        let capacity = entries.len();
        // The files planned, by position, and where the next run of files starts: a run ends
        // at a directory, which the walk enters before it reads the files after it, so the
        // read-ahead numbers files in the order they are read.
        let mut planned = std::collections::VecDeque::new();
        let mut next_run = 0;
        for i in 0..entries.len() {
            if i >= next_run && !kinds.is_empty() {
                let end = kinds[i..]
                    .iter()
                    .position(|k| *k == AheadKind::Boundary)
                    .map_or(kinds.len(), |p| i + p);
                let at: Vec<usize> = (i..end).filter(|&j| kinds[j] == AheadKind::File).collect();
                if let Some(ra) = self.read_ahead.as_mut() {
                    let names = at.iter().map(|&j| entries[j].0.clone()).collect();
                    planned.extend(at.into_iter().zip(ra.plan(dirfd, names)));
                }
                next_run = end + 1;
            }
            let (n, scanned) = (std::mem::take(&mut entries[i].0), entries[i].1.take());
            let path = dir.join(&n);
            let name = Name(n.into_vec());
            // both lists are sorted: walk the parent alongside
            while pcur.as_ref().is_some_and(|p| p.name < name) {
                pcur = pnodes.as_mut().and_then(Iterator::next);
                pi += 1;
            }
            let pnode = pcur.as_deref().filter(|p| p.name == name);
            let node = self.archive_entry(dirfd, &path, name, pnode, scanned)?;
            if planned.front().is_some_and(|(at, _)| *at == i) {
                if let (Some((_, seq)), Some(ra)) = (planned.pop_front(), &self.read_ahead) {
                    ra.passed(seq);
                }
            }
            let Some(node) = node else {
                continue;
            };
            match &mut tree {
                Some(t) => t.nodes.push(node),
                None if pi == same && pnode == Some(&node) => same += 1,
                None => {
                    let mut nodes = Vec::with_capacity(capacity);
                    nodes.extend(first_nodes(parent, same));
                    nodes.push(node);
                    tree = Some(Tree { nodes });
                }
            }
        }
        Ok(match (tree, parent) {
            (Some(t), _) => Some(t),
            (None, Some(p)) if same == p.len() => None,
            (None, p) => Some(Tree {
                nodes: first_nodes(p, same).collect(),
            }),
        })
    }

    /// What each entry of a directory is to the read-ahead: a file the walk will read (a
    /// regular file, not excluded, where there is nothing to compare with: no parent
    /// directory, no change cache), a directory the walk will enter (or an entry whose type
    /// the file system does not give), or neither. Empty when nothing is read ahead here.
    #[allow(clippy::type_complexity)]
    fn read_ahead_kinds(
        &self,
        dir: &Path,
        parent: Option<&ParentDir>,
        entries: &[(std::ffi::OsString, Option<rustix::io::Result<rustix::fs::Stat>>)],
        types: &[rustix::fs::FileType],
    ) -> Vec<AheadKind> {
        if parent.is_some() || self.sent.is_some() || self.read_ahead.is_none() {
            return Vec::new();
        }
        use rustix::fs::FileType as T;
        entries
            .iter()
            .enumerate()
            .map(|(i, (n, scanned))| {
                let kind = match (scanned, types.get(i)) {
                    (Some(Ok(st)), _) => match kind_of_stat(st) {
                        Some(NodeKind::File) if st.st_size > 0 => AheadKind::File,
                        Some(NodeKind::Dir) => AheadKind::Boundary,
                        _ => AheadKind::Other,
                    },
                    // the walk-ahead excluded it, or could not stat it
                    (Some(Err(_)), _) | (None, None) => AheadKind::Other,
                    (None, Some(T::RegularFile)) => AheadKind::File,
                    // never opened here: it may be a directory, a device or a FIFO
                    (None, Some(T::Directory | T::Unknown)) => AheadKind::Boundary,
                    (None, Some(_)) => AheadKind::Other,
                };
                if kind == AheadKind::File && !self.excluder.is_empty() && self.excluder.matches(&dir.join(n))
                {
                    AheadKind::Other
                } else {
                    kind
                }
            })
            .collect()
    }

    /// Build the tree for one level of the path trie.
    fn archive_trie(&mut self, trie: &PathTrie, dir: &Path, parent: Option<&ParentDir>) -> Result<Tree> {
        let mut tree = Tree::default();
        // the levels above the backed-up paths are the user's choice: follow symlinks there
        let dirfd = rustix::fs::openat(
            rustix::fs::CWD,
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(dir, e.into()))?;
        for (name, child) in &trie.children {
            let cname = OsStr::from_bytes(name);
            let path = dir.join(cname);
            let flags = if child.selected {
                AtFlags::SYMLINK_NOFOLLOW
            } else {
                AtFlags::empty()
            };
            let st = rustix::fs::statat(&dirfd, cname, flags).map_err(|e| Error::io(&path, e.into()))?;
            let name = Name(name.clone());
            let pnode = parent.and_then(|t| t.nodes().find(|n| n.name == name));
            let pnode = pnode.as_deref();
            if child.selected {
                self.root_dev = Some(st.st_dev as u64);
                if let Some(n) = self.archive_entry(dirfd.as_fd(), &path, name, pnode, None)? {
                    tree.nodes.push(n);
                }
                continue;
            }
            let (mut node, warning, _) = node_from_stat(
                name,
                NodeKind::Dir,
                &st,
                dirfd.as_fd(),
                &path,
                &mut self.names,
                pnode,
            );
            if let Some(w) = warning {
                self.warn(w);
            }
            let ptree =
                self.load_parent_tree(pnode.filter(|p| p.kind == NodeKind::Dir).and_then(|p| p.subtree));
            let sub = self.archive_trie(child, &path, ptree.as_ref())?;
            node.subtree = Some(self.save_tree(sub)?);
            tree.nodes.push(node);
        }
        Ok(tree)
    }
}

/// A node for an item that is not on disk: owned by the user running the backup, mode 0600
/// (files) or 0700 (directories), all times `time`.
fn synthetic_node(name: Name, kind: NodeKind, time: DateTime<FixedOffset>) -> Node {
    let mut n = Node::new(name, kind);
    n.mode = if kind == NodeKind::Dir { 0o700 } else { 0o600 };
    n.uid = rustix::process::getuid().as_raw();
    n.gid = rustix::process::getgid().as_raw();
    let t = Timestamp {
        s: time.timestamp(),
        ns: time.timestamp_subsec_nanos(),
    };
    n.mtime = t;
    n.atime = t;
    n.ctime = t;
    n
}

enum ChunkErr {
    Io(io::Error),
    Repo(Error),
}
impl From<io::Error> for ChunkErr {
    fn from(e: io::Error) -> Self {
        ChunkErr::Io(e)
    }
}

/// Pick the parent snapshot for change detection.
/// How far ahead of this machine's clock a snapshot's time may be (other hosts' clocks) and
/// still count as past.
pub const MAX_CLOCK_SKEW_SECS: i64 = 600;

fn choose_parent(
    repo: &IndexedRepository,
    opts: &BackupOptions,
    host: &str,
    paths: &[String],
    progress: &dyn Progress,
) -> Result<Option<(SnapshotId, Snapshot)>> {
    if !repo.key().can_read() {
        // a write-only key cannot read old snapshots: every file is read again, and its
        // chunks are deduplicated against the index
        return Ok(None);
    }
    match &opts.parent {
        ParentChoice::None => Ok(None),
        ParentChoice::Id(id) => Ok(Some((*id, repo.load_snapshot(id)?))),
        ParentChoice::Auto => {
            let (mut snaps, unreadable) = repo.list_snapshots_readable()?;
            for w in unreadable {
                progress.warn(&w);
            }
            snaps.retain(|(_, s)| s.hostname == host && s.paths == paths);
            // one dated ahead (a wrong clock, or a forged snapshot) would stay the parent of
            // every run until that day
            let now = Local::now().timestamp();
            snaps.retain(|(id, s)| {
                let future = s.time.timestamp() > now + MAX_CLOCK_SKEW_SECS;
                if future {
                    progress.warn(&format!(
                        "snapshot {} is dated {} (in the future): not used as the parent",
                        id.short(),
                        s.time.to_rfc3339()
                    ));
                }
                !future
            });
            // Only a snapshot a full key sealed: a parent's chunk lists are reused for every
            // file whose metadata matches, so one a stolen write-only key forged (any host,
            // any paths, content ids of its choosing) would put its content into honest
            // snapshots. (A write-only key takes no parent at all.)
            snaps.retain(|(_, s)| !s.sealed_by_write_only);
            Ok(snaps.pop())
        }
    }
}

/// Back up `opts.paths` into the repository and write a snapshot.
pub fn backup(
    repo: &mut IndexedRepository,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupOutcome> {
    backup_with_sources(repo, opts, Vec::new(), progress)
}

/// Back up `opts.paths` and the streamed `sources` (database dumps, stored below
/// `/.databases`) into the repository and write one snapshot.
pub fn backup_with_sources(
    repo: &mut IndexedRepository,
    opts: &BackupOptions,
    sources: Vec<Box<dyn StreamSource>>,
    progress: &dyn Progress,
) -> Result<BackupOutcome> {
    backup_prescanned(repo, opts, sources, Vec::new(), None, progress)
}

/// [`backup_with_sources`] with disk images and streams (stored below `/.images`), and a
/// walk-ahead started earlier by the caller (before unlocking the repository) with the same
/// paths, excludes and descent options as `opts`; used only if the run has a parent snapshot
/// to compare with.
pub fn backup_prescanned(
    repo: &mut IndexedRepository,
    opts: &BackupOptions,
    mut sources: Vec<Box<dyn StreamSource>>,
    images: Vec<ImageInput>,
    prescan: Option<Prescan>,
    progress: &dyn Progress,
) -> Result<BackupOutcome> {
    if opts.paths.is_empty() && sources.is_empty() && images.is_empty() {
        return Err(Error::Invalid(
            "nothing to back up: give at least one path".into(),
        ));
    }
    let mut names = HashSet::<&str>::default();
    if let Some(dup) = images.iter().find(|i| !names.insert(i.name())) {
        return Err(Error::Usage(format!(
            "two images are named {:?}; nothing was backed up",
            dup.name()
        )));
    }
    drop(names);
    // A lease before the index is read, so a concurrent prune defers deleting anything this
    // run may deduplicate against; then take in packs an interrupted run left unindexed.
    repo.ensure_lease("backup")?;
    for w in repo.index().skipped_files() {
        progress.warn(w);
    }
    let adopted = crate::prune::adopt_orphans(repo, progress)?;
    if adopted > 0 {
        // (a backup of another job running at the same time leaves them too: not a problem)
        progress.note(&format!(
            "{adopted} packs in no index (an interrupted or concurrent backup's) were verified and added to the index"
        ));
    }
    let start = Local::now().fixed_offset();
    let mut trie = PathTrie::default();
    let mut paths = Vec::new();
    for p in &opts.paths {
        let abs = absolute_clean(p)?;
        // every path given must be there: a snapshot missing one that was asked for would
        // look complete (restic saves the rest; coffer saves nothing and says so)
        fs::symlink_metadata(&abs).map_err(|e| {
            Error::Usage(format!(
                "{}: {e}; nothing was backed up (fix the list of paths and run again)",
                abs.display()
            ))
        })?;
        trie.insert(&abs);
        paths.push(abs.to_string_lossy().into_owned());
    }
    paths.sort();
    paths.dedup();
    let host = match &opts.hostname {
        Some(h) => h.clone(),
        None => rustix::system::uname().nodename().to_string_lossy().into_owned(),
    };
    let parent = choose_parent(repo, opts, &host, &paths, progress)?;
    let parent_id = parent.as_ref().map(|(id, _)| *id);
    let excluder = PathMatcher::new(&opts.excludes)?;
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.threads
    };
    let chunker = Chunker::new(repo.config().chunker, repo.key().gear_table());
    let spec = opts.compression.unwrap_or_else(|| repo.compression());
    spec.validate()?;

    let repo_ref: &IndexedRepository = repo;
    let sources = &mut sources;
    let (
        tree_id,
        mut summary,
        mut stats,
        referenced,
        (databases, images),
        (parent_tree_misses, listing_misses, read_ahead),
        sent,
    ) = std::thread::scope(|s| -> Result<_> {
        let pipe = BlobPipeline::start_with(s, repo_ref, threads, spec, !opts.last_use);
        let parent_trees = parent
            .as_ref()
            .map(|(_, p)| ParentTrees::start(s, repo_ref, p.tree));
        // A first backup walks ahead too: from a cold cache the listing and the inodes it
        // reads ahead save the walk waiting for the disk (docs/PERFORMANCE.md "Read-ahead").
        let ahead = match prescan {
            Some(p) => Some(p),
            None => Some(Prescan::start(
                &opts.paths,
                &opts.excludes,
                opts.exclude_caches,
                opts.one_file_system,
            )?),
        };
        std::thread::Builder::new()
            .name("coffer-walk".into())
            .stack_size(64 << 20)
            .spawn_scoped(s, move || -> Result<_> {
                let walked = {
                    let mut a = Archiver {
                        repo: repo_ref,
                        parent_trees,
                        ahead,
                        pipe: &pipe,
                        chunker: &chunker,
                        buf: Vec::new(),
                        session: RunSet::new(repo_ref.spill_dir()),
                        excluder,
                        exclude_caches: opts.exclude_caches,
                        root_dev: None,
                        one_fs: opts.one_file_system,
                        names: NameCache::default(),
                        hardlinks: HashMap::new(),
                        referenced: vec![false; repo_ref.index().pack_count()],
                        sent: opts.send_log.as_deref(),
                        sent_next: opts.send_log.as_deref().map(|l| l.recorder()),
                        summary: Summary::default(),
                        progress,
                        zero_blob: None,
                        zero_bytes: 0,
                        read_ahead: ReadAhead::start(),
                    };
                    let ptree = a.load_parent_tree(parent.as_ref().map(|(_, p)| p.tree));
                    let walked = a
                        .archive_trie(&trie, Path::new("/"), ptree.as_ref())
                        .and_then(|mut root| {
                            let mut items = Vec::new();
                            let mut nodes = Vec::new();
                            for src in sources.iter_mut() {
                                if let Some((dirs, node, item)) = a.archive_source(src.as_mut())? {
                                    nodes.push((dirs, node));
                                    items.push(item);
                                }
                            }
                            let mut image_nodes = Vec::new();
                            let mut image_items = Vec::new();
                            for img in images {
                                if let Some((node, item)) = a.archive_image(img)? {
                                    image_nodes.push((Vec::new(), node));
                                    image_items.push(item);
                                }
                            }
                            for (top, nodes, what) in [
                                (DATABASES_DIR, nodes, "database dumps"),
                                (IMAGES_DIR, image_nodes, "images"),
                            ] {
                                if nodes.is_empty() {
                                    continue;
                                }
                                if root.nodes.iter().any(|n| n.name.0 == top.as_bytes()) {
                                    return Err(Error::Invalid(format!(
                                        "/{top} exists in the backed-up files and would clash with \
                                         the {what}; exclude it or back up {what} in a separate run"
                                    )));
                                }
                                let now = Local::now().fixed_offset();
                                root.nodes.push(a.items_tree(top, nodes, now)?);
                            }
                            Ok((root, (items, image_items)))
                        })
                        .and_then(|(root, items)| Ok((a.save_tree(root)?, items)))
                        .map(|(id, items)| (id, a.summary, a.referenced, items, a.sent_next));
                    let misses = (
                        a.parent_trees.map_or(0, |p| p.misses),
                        a.ahead.map_or(0, |w| w.misses),
                        a.read_ahead.map_or(0, ReadAhead::finish),
                    );
                    walked.map(|w| (w, misses))
                };
                // Finish the pipeline even when the walk failed: if the walk stopped because
                // the pipeline broke, the pipeline's error is the one worth reporting.
                let stats = pipe.finish()?;
                let ((id, summary, referenced, databases, sent), misses) = walked?;
                Ok((id, summary, stats, referenced, databases, misses, sent))
            })
            .map_err(|e| Error::io("thread", e))?
            .join()
            .map_err(|_| Error::Invalid("the walker thread panicked".into()))?
    })?;

    for p in &stats.packs {
        repo.index_mut().add_pack(p, true);
    }
    drop(std::mem::take(&mut stats.packs));
    summary.bytes_stored = stats.bytes_stored;
    summary.start = Some(start);
    summary.end = Some(Local::now().fixed_offset());
    let (user, uid_name) = (rustix::process::getuid().as_raw(), uzers::get_current_username());
    let snapshot = Snapshot {
        version: FORMAT_VERSION,
        time: start,
        hostname: host,
        username: uid_name
            .map(|u| u.to_string_lossy().into_owned())
            .unwrap_or_else(|| user.to_string()),
        paths,
        tags: opts.tags.clone(),
        excludes: opts.excludes.clone(),
        tree: tree_id,
        parent: parent_id,
        program_version: concat!("coffer ", env!("CARGO_PKG_VERSION")).into(),
        summary,
        databases,
        images,
        original: None,
        key: Some(repo.key_id()),
        sealed_by_write_only: false,
    };
    if let Some(lease) = repo.lease() {
        lease.ensure_held()?;
    }
    // this run's own packs can have been condemned too (a prune saw their index file before
    // this snapshot existed): relist those as well
    let mut referenced: HashSet<PackId> = (0u32..)
        .zip(referenced)
        .filter(|&(_, used)| used)
        .map(|(pos, _)| repo.index().pack_at(pos))
        .collect();
    referenced.extend(stats.pack_ids.iter().copied());
    crate::prune::relist_condemned(repo, &referenced)?;
    let (id, _) = repo.save_snapshot_needing(&snapshot, referenced)?;
    if let (Some(log), Some(sent)) = (&opts.send_log, sent) {
        let own = crate::sendlog::own_files_after(
            log.own_index_files(),
            repo.index().index_files(),
            &repo.written_index_files(),
        );
        // the snapshot is saved: a cache that cannot be written costs the next run speed only
        if let Err(e) = log.save_run(sent, &own) {
            progress.warn(&format!("{e}; the next run reads every file again"));
        }
    }
    Ok(BackupOutcome {
        id,
        snapshot,
        parent_tree_misses,
        listing_misses,
        read_ahead,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk-ahead's budget counts entries, not directories: 1000 directories of two
    /// entries each (3000 entries, far below the 16k budget) leave room for more. Its first
    /// budget, one token per directory out of 256, was full after 256 directories and left a
    /// core idle while the repository was being unlocked.
    #[test]
    fn the_walk_ahead_budget_counts_entries() {
        let b = Budget::default();
        for i in 0..1000 {
            assert!(!b.state().full(), "full after {i} directories");
            assert!(b.take(listing_cost(2)));
        }
        assert_eq!(b.state().queued, 3000);
        b.give(3000);
        assert!(b.take(WALK_AHEAD_ENTRIES));
        assert!(b.state().full());
        // once the walk is over, the walk-ahead is told to stop instead of waiting for room
        b.close();
        assert!(!b.take(1));
    }
}
