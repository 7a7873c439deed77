//! `coffer mount DIR`: the repository's snapshots as a read-only file system (FUSE), to browse
//! and copy out with ordinary tools (`ls`, `cp -a`, `rsync -aHAX`, `grep -r`, `tar`):
//!
//! ```text
//! DIR/hosts/HOST/2026-12-04T02:30:00Z/...    each host's snapshots by time (UTC)
//! DIR/snapshots/ID/...                       by short id
//! DIR/tags/TAG/HOST/TIME/...                 by tag
//! DIR/latest/HOST -> ../hosts/HOST/TIME      each host's newest
//! ```
//!
//! Below a snapshot, files show the sizes, modes, owners, times, links, device numbers and
//! extended attributes (POSIX ACLs among them) they were backed up with; hard links share an
//! inode. Reads go chunk by chunk through the repository's bundle cache, each open file keeping
//! the chunk it read last, so a sequential read decodes every chunk once. The snapshots are
//! those present when the mount starts. SIGINT or SIGTERM unmounts.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use coffer_core::format::{BlobId, BlobKind, Node, NodeKind, Snapshot, SnapshotId, Timestamp};
use coffer_core::IndexedRepository;
use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, MountOption, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEntry, ReplyOpen, ReplyXattr, Request,
};

use super::open_indexed;
use crate::cli::{Global, MountArgs};

/// The snapshots do not change while mounted: the kernel may keep what it was told.
const TTL: Duration = Duration::from_secs(3600);

/// What an inode stands for.
#[derive(Clone)]
enum Entry {
    /// A directory of the layout (`/`, `hosts`, `hosts/HOST`, ...): its entries by name.
    Dir(BTreeMap<Vec<u8>, u64>),
    /// `latest/HOST`: a link to the host's newest snapshot.
    Link(Vec<u8>),
    /// A snapshot's root.
    Snapshot(usize),
    /// A node of a snapshot's tree.
    Node(usize, Arc<Node>),
}

/// A directory's entries, (name, inode), sorted by name (trees are; the layout's maps too).
type Listing = Arc<Vec<(Vec<u8>, u64)>>;

/// A name from a snapshot's fields (host, tag) as a directory entry: `/`, NUL and `%` are
/// percent-encoded, an empty name, `.` and `..` too, and a long one is cut (a name the kernel
/// refuses would make it refuse the whole listing).
fn entry_name(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '/' => o.push_str("%2F"),
            '\0' => o.push_str("%00"),
            '%' => o.push_str("%25"),
            c => o.push(c),
        }
    }
    match o.as_str() {
        "" => "%".into(),
        "." => "%2E".into(),
        ".." => "%2E%2E".into(),
        _ if o.len() > 200 => {
            let mut end = 200;
            while !o.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}%…", &o[..end])
        }
        _ => o,
    }
}

/// Entry `k` of a listing of directory `ino`: 0 is ".", 1 is "..", then the children. It is
/// sent with offset k + 1, and a listing call starts where the last one stopped.
fn entry_at(children: &Listing, ino: u64, parent: u64, k: usize) -> (u64, &[u8]) {
    match k {
        0 => (ino, b"."),
        1 => (parent, b".."),
        _ => {
            let (name, child) = &children[k - 2];
            (*child, name)
        }
    }
}

/// At most this many files' chunk lists are kept (a few MiB for files of a few chunks).
const OPEN_FILES: usize = 4096;

/// An open file: its chunks (where each starts) and the one read last.
struct Open {
    chunks: Vec<(u64, BlobId)>,
    /// The sum of the chunks' lengths.
    data_len: u64,
    size: u64,
    last: Option<(usize, Arc<Vec<u8>>)>,
}

struct SnapshotFs {
    repo: IndexedRepository,
    snaps: Vec<(SnapshotId, Snapshot)>,
    entries: Vec<Entry>,
    /// Each inode's parent (for `..`).
    parents: Vec<u64>,
    /// The children of a directory, once listed: (name, inode) in name order.
    listed: HashMap<u64, Listing>,
    /// Hard links of one snapshot: (snapshot, device, inode) → our inode.
    links: HashMap<(usize, u64, u64), u64>,
    /// Files being read, by inode (the kernel opens files without asking: no open, no
    /// release; see `init`): made at the first read, dropped all at once past
    /// [`OPEN_FILES`].
    open: HashMap<u64, Open>,
    uid: u32,
    gid: u32,
    /// Damaged packs read through their parity so far, and said (a warning for each).
    parity_said: std::collections::BTreeSet<coffer_core::format::PackId>,
}

fn time(t: &Timestamp) -> SystemTime {
    if t.s >= 0 {
        UNIX_EPOCH + Duration::new(t.s as u64, t.ns.min(999_999_999))
    } else {
        UNIX_EPOCH - Duration::from_secs(t.s.unsigned_abs())
    }
}

fn kind_of(k: NodeKind) -> FileType {
    match k {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Chardev => FileType::CharDevice,
        NodeKind::Blockdev => FileType::BlockDevice,
    }
}

/// `2026-12-04T02:30:00Z`
fn snapshot_name(s: &Snapshot) -> String {
    s.time
        .with_timezone(&chrono::Utc)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl SnapshotFs {
    fn new(repo: IndexedRepository, snaps: Vec<(SnapshotId, Snapshot)>) -> SnapshotFs {
        let mut fs = SnapshotFs {
            repo,
            snaps,
            // inode 0 is no inode; 1 is the root
            entries: vec![Entry::Dir(BTreeMap::new()), Entry::Dir(BTreeMap::new())],
            parents: vec![0, 1],
            listed: HashMap::new(),
            links: HashMap::new(),
            open: HashMap::new(),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            parity_said: Default::default(),
        };
        fs.layout();
        fs
    }

    fn add(&mut self, parent: u64, entry: Entry) -> u64 {
        self.entries.push(entry);
        self.parents.push(parent);
        (self.entries.len() - 1) as u64
    }

    /// A directory `name` of the layout below `parent` (made on first use).
    fn dir(&mut self, parent: u64, name: &str) -> u64 {
        if let Entry::Dir(m) = &self.entries[parent as usize] {
            if let Some(&ino) = m.get(name.as_bytes()) {
                return ino;
            }
        }
        let ino = self.add(parent, Entry::Dir(BTreeMap::new()));
        self.link(parent, name.as_bytes(), ino);
        ino
    }

    fn link(&mut self, parent: u64, name: &[u8], ino: u64) {
        if let Entry::Dir(m) = &mut self.entries[parent as usize] {
            m.insert(name.to_vec(), ino);
        }
    }

    /// Put snapshot `i` below `parent` as `name`, or as `name-ID` when that is taken.
    fn place(&mut self, parent: u64, name: String, i: usize) -> String {
        let taken = |fs: &Self, n: &str| matches!(&fs.entries[parent as usize], Entry::Dir(m) if m.contains_key(n.as_bytes()));
        let short = format!("{name}-{}", self.snaps[i].0.short());
        let name = if !taken(self, &name) {
            name
        } else if !taken(self, &short) {
            short
        } else {
            format!("{name}-{}", self.snaps[i].0.to_hex())
        };
        let ino = self.add(parent, Entry::Snapshot(i));
        self.link(parent, name.as_bytes(), ino);
        name
    }

    fn layout(&mut self) {
        let hosts = self.dir(1, "hosts");
        let by_id = self.dir(1, "snapshots");
        let tags = self.dir(1, "tags");
        let latest = self.dir(1, "latest");
        // oldest first: the newest of each host is the last placed
        let mut newest: BTreeMap<String, String> = BTreeMap::new();
        for i in 0..self.snaps.len() {
            let (id, s) = (&self.snaps[i].0, &self.snaps[i].1);
            let (host, name, short, tags_of) = (
                entry_name(&s.hostname),
                snapshot_name(s),
                id.short(),
                s.tags.iter().map(|t| entry_name(t)).collect::<Vec<_>>(),
            );
            let h = self.dir(hosts, &host);
            let placed = self.place(h, name.clone(), i);
            // latest/HOST passes over a snapshot dated in the future, as `latest` does (a
            // wrong clock, or a forged snapshot that would stay "latest" for years)
            let future = self.snaps[i].1.time.timestamp()
                > chrono::Utc::now().timestamp() + coffer_core::backup::MAX_CLOCK_SKEW_SECS;
            if future {
                eprintln!(
                    "coffer: warning: snapshot {short} is dated in the future: latest/{host} passes it over"
                );
            } else {
                newest.insert(host.clone(), placed);
            }
            self.place(by_id, short, i);
            for t in tags_of {
                let tag = self.dir(tags, &t);
                let th = self.dir(tag, &host);
                self.place(th, name.clone(), i);
            }
        }
        for (host, name) in newest {
            let ino = self.add(
                latest,
                Entry::Link(format!("../hosts/{host}/{name}").into_bytes()),
            );
            self.link(latest, host.as_bytes(), ino);
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        // the layout's directories carry the newest snapshot's time
        let t = self
            .snaps
            .last()
            .map_or(UNIX_EPOCH, |(_, s)| SystemTime::from(s.time));
        let base = FileAttr {
            ino,
            size: 0,
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        Some(match self.entries.get(ino as usize)? {
            Entry::Dir(_) => base,
            Entry::Link(target) => FileAttr {
                kind: FileType::Symlink,
                perm: 0o777,
                nlink: 1,
                size: target.len() as u64,
                ..base
            },
            Entry::Snapshot(i) => {
                let t: SystemTime = self.snaps[*i].1.time.into();
                FileAttr {
                    atime: t,
                    mtime: t,
                    ctime: t,
                    crtime: t,
                    perm: 0o755,
                    uid: 0,
                    gid: 0,
                    ..base
                }
            }
            Entry::Node(_, n) => FileAttr {
                size: match n.kind {
                    NodeKind::File => n.size.min(i64::MAX as u64),
                    NodeKind::Symlink => n.target.as_ref().map_or(0, |t| t.0.len() as u64),
                    _ => 0,
                },
                blocks: n.size.div_ceil(512),
                atime: time(&n.atime),
                mtime: time(&n.mtime),
                ctime: time(&n.ctime),
                crtime: time(&n.mtime),
                kind: kind_of(n.kind),
                perm: (n.mode & 0o7777) as u16,
                nlink: if n.kind == NodeKind::Dir {
                    2
                } else {
                    u32::try_from(n.links.max(1)).unwrap_or(u32::MAX)
                },
                uid: n.uid,
                gid: n.gid,
                rdev: u32::try_from(n.rdev).unwrap_or(0),
                ..base
            },
        })
    }

    /// The tree a directory inode lists, if it is one of a snapshot.
    fn tree_of(&self, ino: u64) -> Option<(usize, BlobId)> {
        match self.entries.get(ino as usize)? {
            Entry::Snapshot(i) => Some((*i, self.snaps[*i].1.tree)),
            Entry::Node(i, n) if n.kind == NodeKind::Dir => Some((*i, n.subtree?)),
            _ => None,
        }
    }

    /// The entries of a directory: name and inode, in name order.
    fn children(&mut self, ino: u64) -> std::result::Result<Listing, i32> {
        if let Some(c) = self.listed.get(&ino) {
            return Ok(c.clone());
        }
        if let Some(Entry::Dir(m)) = self.entries.get(ino as usize) {
            let l: Listing = Arc::new(m.iter().map(|(k, v)| (k.clone(), *v)).collect());
            self.listed.insert(ino, l.clone());
            return Ok(l);
        }
        let Some((snap, tree)) = self.tree_of(ino) else {
            return Err(libc::ENOTDIR);
        };
        let tree = self.repo.load_tree(&tree).map_err(|e| {
            tracing::warn!(
                "mount: a directory of snapshot {} cannot be read: {e}",
                self.snaps[snap].0.short()
            );
            libc::EIO
        })?;
        let mut out = Vec::with_capacity(tree.nodes.len());
        for node in tree.nodes {
            let name = node.name.0.clone();
            let hard = (node.kind != NodeKind::Dir && node.links > 1 && node.inode != 0)
                .then_some((snap, node.dev, node.inode));
            // a link of a file seen before: the same inode, if it is the same file (a forged
            // node claiming another file's inode number keeps its own)
            let same = |fs: &Self, i: u64| {
                matches!(fs.entries.get(i as usize), Some(Entry::Node(_, n))
                    if n.kind == node.kind && n.size == node.size && n.mode == node.mode
                        && n.content == node.content && n.target == node.target)
            };
            let child = match hard
                .and_then(|k| self.links.get(&k).copied())
                .filter(|&i| same(self, i))
            {
                Some(existing) => existing,
                None => {
                    let c = self.add(ino, Entry::Node(snap, Arc::new(node)));
                    if let Some(k) = hard {
                        self.links.entry(k).or_insert(c);
                    }
                    c
                }
            };
            out.push((name, child));
        }
        let out: Listing = Arc::new(out);
        self.listed.insert(ino, out.clone());
        Ok(out)
    }

    /// A directory's children and its parent (for `..`), for a listing.
    fn listing(&mut self, ino: u64) -> std::result::Result<(Listing, u64), i32> {
        let children = self.children(ino)?;
        let parent = self.parents.get(ino as usize).copied().unwrap_or(1).max(1);
        Ok((children, parent))
    }

    fn node(&self, ino: u64) -> Option<&Arc<Node>> {
        match self.entries.get(ino as usize)? {
            Entry::Node(_, n) => Some(n),
            _ => None,
        }
    }

    /// What reading file `ino` needs: each chunk's place in it.
    fn open_file(&self, ino: u64) -> std::result::Result<Open, i32> {
        let Some(n) = self.node(ino) else {
            return Err(libc::EISDIR);
        };
        if n.kind != NodeKind::File {
            return Err(libc::EINVAL);
        }
        let mut chunks = Vec::with_capacity(n.content.len());
        let mut at = 0u64;
        for id in &n.content {
            match self.repo.locate(id) {
                Ok(loc) if loc.raw_length == 0 => {}
                Ok(loc) => {
                    chunks.push((at, *id));
                    at += u64::from(loc.raw_length);
                }
                Err(e) => {
                    tracing::warn!("mount: a chunk of a file is not in the index: {e}");
                    return Err(libc::EIO);
                }
            }
        }
        Ok(Open {
            chunks,
            data_len: at,
            // (reads past the chunks fail: the file was not read whole when backed up)
            size: n.size,
            last: None,
        })
    }

    fn read_at(&mut self, ino: u64, offset: u64, size: u32) -> std::result::Result<Vec<u8>, i32> {
        if !self.open.contains_key(&ino) {
            let f = self.open_file(ino)?;
            if self.open.len() >= OPEN_FILES {
                self.open.clear();
            }
            self.open.insert(ino, f);
        }
        let Some(f) = self.open.get_mut(&ino) else {
            return Err(libc::EBADF);
        };
        let end = (offset + u64::from(size)).min(f.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            // the chunk holding `at`
            let i = match f.chunks.binary_search_by(|(start, _)| start.cmp(&at)) {
                Ok(i) => i,
                Err(i) => i.saturating_sub(1),
            };
            let Some(&(start, id)) = f.chunks.get(i) else {
                return Err(libc::EIO); // (the node says it is larger than its chunks)
            };
            let slot = f.chunks.get(i + 1).map_or(f.data_len, |c| c.0) - start;
            let data = match &f.last {
                Some((j, d)) if *j == i => d.clone(),
                _ => {
                    let d = Arc::new(self.repo.read_blob(&id, BlobKind::Data).map_err(|e| {
                        tracing::warn!("mount: chunk {} cannot be read: {e}", id.short());
                        libc::EIO
                    })?);
                    f.last = Some((i, d.clone()));
                    d
                }
            };
            // a chunk of another length than the index said would shift every byte after it
            if data.len() as u64 != slot {
                tracing::warn!("mount: chunk {} is not the length the index gives", id.short());
                return Err(libc::EIO);
            }
            let from = (at - start) as usize;
            let n = (data.len() - from).min((end - at) as usize);
            out.extend_from_slice(&data[from..from + n]);
            at += n as u64;
        }
        self.say_parity_reads();
        Ok(out)
    }

    /// Warn of each damaged pack the mount has read through its parity, once: the files read
    /// are intact, the stored pack is not (a restore says so at its end; a mount runs on).
    fn say_parity_reads(&mut self) {
        if self.repo.read_through_parity_count() == self.parity_said.len() {
            return;
        }
        for p in self.repo.read_through_parity() {
            if self.parity_said.insert(p) {
                tracing::warn!(
                    "mount: pack {} is damaged: read through its parity (the data is intact, the stored pack is not; run `coffer repair packs`)",
                    p.short()
                );
            }
        }
    }
}

impl Filesystem for SnapshotFs {
    fn init(
        &mut self,
        _req: &Request<'_>,
        config: &mut KernelConfig,
    ) -> std::result::Result<(), libc::c_int> {
        // ACLs come from the stored system.posix_acl_* attributes; the kernel checks them
        let _ = config.add_capabilities(fuser::consts::FUSE_POSIX_ACL);
        // fewer requests per file: listings carry attributes (no lookup per entry), and files
        // open without asking (see `open`); each one that the kernel lacks is simply not used
        let _ = config.add_capabilities(fuser::consts::FUSE_DO_READDIRPLUS);
        let _ = config.add_capabilities(fuser::consts::FUSE_NO_OPEN_SUPPORT);
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.children(parent) {
            Ok(c) => match c
                .binary_search_by(|(n, _)| n.as_slice().cmp(name.as_bytes()))
                .ok()
                .map(|i| &c[i])
            {
                Some((_, ino)) => match self.attr(*ino) {
                    Some(a) => reply.entry(&TTL, &a, 0),
                    None => reply.error(libc::ENOENT),
                },
                None => reply.error(libc::ENOENT),
            },
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(libc::ENOENT),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.entries.get(ino as usize) {
            Some(Entry::Link(t)) => reply.data(t),
            Some(Entry::Node(_, n)) if n.kind == NodeKind::Symlink => {
                reply.data(n.target.as_ref().map_or(&[][..], |t| &t.0))
            }
            _ => reply.error(libc::EINVAL),
        }
    }

    fn open(&mut self, _req: &Request<'_>, _ino: u64, _flags: i32, reply: ReplyOpen) {
        // "no open": the kernel then opens every file without asking (and never releases),
        // with its page cache kept across opens: two requests fewer per file. The mount is
        // read-only, so the kernel refuses writing opens itself; a read makes the file's
        // chunk list (read_at).
        reply.error(libc::ENOSYS);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        match self.read_at(ino, offset.max(0) as u64, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let (children, parent) = match self.listing(ino) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        for k in offset.max(0) as usize..children.len() + 2 {
            let (child, name) = entry_at(&children, ino, parent, k);
            let kind = match k {
                0 | 1 => FileType::Directory,
                _ => self.attr(child).map_or(FileType::RegularFile, |a| a.kind),
            };
            if reply.add(child, (k + 1) as i64, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    /// READDIR and LOOKUP in one (`init` asks the kernel for it): each entry comes with its
    /// attributes, so listing a directory and then opening its files takes no lookup each.
    fn readdirplus(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: fuser::ReplyDirectoryPlus,
    ) {
        let (children, parent) = match self.listing(ino) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        for k in offset.max(0) as usize..children.len() + 2 {
            let (child, name) = entry_at(&children, ino, parent, k);
            let Some(attr) = self.attr(child) else {
                continue;
            };
            if reply.add(child, (k + 1) as i64, OsStr::from_bytes(name), &TTL, &attr, 0) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&mut self, _req: &Request<'_>, ino: u64, name: &OsStr, size: u32, reply: ReplyXattr) {
        let value = self
            .node(ino)
            .and_then(|n| n.xattrs.iter().find(|x| x.name.0 == name.as_bytes()))
            .map(|x| x.value.0.clone());
        match value {
            None => reply.error(libc::ENODATA),
            Some(v) if size == 0 => reply.size(v.len() as u32),
            Some(v) if v.len() > size as usize => reply.error(libc::ERANGE),
            Some(v) => reply.data(&v),
        }
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        let mut list = Vec::new();
        if let Some(n) = self.node(ino) {
            for x in &n.xattrs {
                list.extend_from_slice(&x.name.0);
                list.push(0);
            }
        }
        if size == 0 {
            reply.size(list.len() as u32);
        } else if list.len() > size as usize {
            reply.error(libc::ERANGE);
        } else {
            reply.data(&list);
        }
    }
}

/// `dir` as /proc/self/mountinfo writes mount points (absolute, spaces as `\040`).
fn mountinfo_path(dir: &std::path::Path) -> Result<String> {
    let abs = std::fs::canonicalize(dir).with_context(|| format!("mount point {}", dir.display()))?;
    Ok(abs.to_string_lossy().replace(' ', "\\040"))
}

/// The id of the newest coffer mount (file system type `fuse.coffer`) on `at`: this run's,
/// read right after it mounted. Lines of mountinfo: `ID PARENT DEV ROOT MOUNTPOINT ... - TYPE ...`.
fn coffer_mount_id(at: &str) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .rfind(|l| {
            l.split(' ').nth(4) == Some(at)
                && l.split(" - ").nth(1).and_then(|t| t.split(' ').next()) == Some("fuse.coffer")
        })
        .and_then(|l| l.split(' ').next())
        .map(String::from)
}

/// Whether the mount with this id is still there.
fn still_mounted(id: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').next() == Some(id)))
        .unwrap_or(false)
}

/// `coffer mount DIR`: mount, then wait for SIGINT/SIGTERM and unmount.
pub fn run(g: &Global, a: MountArgs) -> Result<u8> {
    let meta = std::fs::metadata(&a.mountpoint)
        .with_context(|| format!("mount point {}", a.mountpoint.display()))?;
    if !meta.is_dir() {
        return Err(coffer_core::Error::Usage(format!(
            "mount point {} is not a directory",
            a.mountpoint.display()
        ))
        .into());
    }
    let repo = open_indexed(g)?;
    let (snaps, unreadable) = repo.list_snapshots_readable()?;
    for u in &unreadable {
        eprintln!("coffer: warning: {u} (not shown)");
    }
    let count = snaps.len();
    let fs = SnapshotFs::new(repo, snaps);
    let mut options = vec![
        MountOption::RO,
        MountOption::FSName("coffer".into()),
        MountOption::Subtype("coffer".into()),
        // the kernel checks each file's mode and ACL: what a user could not read on the
        // machine, they cannot read here (with --allow-other)
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if a.allow_other {
        options.push(MountOption::AllowOther);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("setting the signal handler")?;
    let at = mountinfo_path(&a.mountpoint)?;
    let session = fuser::spawn_mount2(fs, &a.mountpoint, &options).with_context(|| {
        format!(
            "mounting on {} (FUSE: /dev/fuse, root or fusermount3)",
            a.mountpoint.display()
        )
    })?;
    // (this mount, not whatever the directory was before: that is never touched)
    let ours = coffer_mount_id(&at);
    if !g.quiet {
        eprintln!(
            "{count} snapshots mounted on {} (read-only): hosts/, snapshots/, tags/, latest/; Ctrl-C or SIGTERM unmounts",
            a.mountpoint.display()
        );
    }
    // until a signal, or the session ends by itself (`umount` from outside)
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !session.guard.is_finished() => {}
            _ => break,
        }
    }
    drop(session);
    // a busy mount point is not unmounted by the session's end: detach it, and say so
    if ours.as_deref().is_some_and(still_mounted) {
        rustix::mount::unmount(&a.mountpoint, rustix::mount::UnmountFlags::DETACH).with_context(|| {
            format!(
                "{} is still mounted and cannot be detached",
                a.mountpoint.display()
            )
        })?;
        eprintln!(
            "coffer: warning: {} was busy: detached (it goes away when its last user leaves)",
            a.mountpoint.display()
        );
    }
    if !g.quiet {
        eprintln!("unmounted {}", a.mountpoint.display());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use coffer_core::format::{Id, Summary, FORMAT_VERSION};
    use coffer_core::memory::MemoryBackend;
    use coffer_core::{Backend, InitOptions, Repository};

    use super::*;

    fn snap(host: &str, time: chrono::DateTime<chrono::FixedOffset>, tags: &[&str]) -> Snapshot {
        Snapshot {
            version: FORMAT_VERSION,
            time,
            hostname: host.into(),
            username: String::new(),
            paths: vec!["/srv".into()],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            excludes: vec![],
            tree: BlobId(Id([0; 32])),
            parent: None,
            program_version: "test".into(),
            summary: Summary::default(),
            databases: vec![],
            images: vec![],
            original: None,
            key: None,
            sealed_by_write_only: false,
        }
    }

    fn names(fs: &mut SnapshotFs, path: &[&str]) -> Vec<String> {
        let mut ino = 1;
        for p in path {
            let c = fs.children(ino).unwrap();
            ino = c.iter().find(|(n, _)| n.as_slice() == p.as_bytes()).unwrap().1;
        }
        fs.children(ino)
            .unwrap()
            .iter()
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect()
    }

    /// What a write-only key could put in a snapshot's host and tags becomes safe entry
    /// names, and `latest/HOST` passes over a snapshot dated in the future.
    #[test]
    fn hostile_names_are_encoded_and_latest_is_not_from_the_future() {
        let b: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let repo = Repository::init(b, b"pw", &InitOptions::default())
            .unwrap()
            .load_index()
            .unwrap();
        let now = chrono::Utc::now().fixed_offset();
        let hour_ago = now - chrono::Duration::hours(1);
        let snaps = vec![
            (SnapshotId(Id([1; 32])), snap("web1", hour_ago, &["a/b"])),
            (
                SnapshotId(Id([2; 32])),
                snap("web1", now + chrono::Duration::days(3650), &[]),
            ),
            (SnapshotId(Id([3; 32])), snap("", now, &[".."])),
            (SnapshotId(Id([4; 32])), snap("../x", now, &[])),
        ];
        let mut fs = SnapshotFs::new(repo, snaps);
        assert_eq!(names(&mut fs, &["hosts"]), ["%", "..%2Fx", "web1"]);
        assert_eq!(names(&mut fs, &["tags"]), ["%2E%2E", "a%2Fb"]);
        assert_eq!(names(&mut fs, &["hosts", "web1"]).len(), 2);
        assert_eq!(names(&mut fs, &["latest"]), ["%", "..%2Fx", "web1"]);
        let latest = names(&mut fs, &["latest"]);
        let latest_dir = fs.children(1).unwrap()[1].1;
        let ino = fs.children(latest_dir).unwrap()[latest.len() - 1].1;
        match &fs.entries[ino as usize] {
            Entry::Link(t) => assert_eq!(
                String::from_utf8_lossy(t),
                format!("../hosts/web1/{}", snapshot_name(&snap("web1", hour_ago, &[])))
            ),
            _ => panic!("latest/web1 is a link"),
        }
    }
}
