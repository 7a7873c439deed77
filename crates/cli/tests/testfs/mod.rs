//! A FUSE file system for the torture suite (issue 26 item 4): what a real disk does that a
//! test on ext4 never sees.
//!
//! - **Power loss** (LazyFS's idea, strictest form): the file system is held in memory and
//!   keeps, apart from what processes see, what would survive a power cut: a file's content as
//!   of its last `fsync`, a directory's entries as of its last `fsync` (a created, renamed or
//!   removed name is durable only once its directory is synced). [`TestFs::power_cut`] throws
//!   away everything else, as a machine that loses power with nothing flushed would.
//! - **I/O errors**: [`TestFs::fail`] makes chosen operations on paths containing a fragment
//!   fail with an errno (EIO), after letting some pass.
//! - **A full disk**: [`TestFs::set_capacity`] makes writes past a number of bytes fail with
//!   ENOSPC.
//!
//! The kernel caches nothing: entries and attributes have no TTL and files are opened with
//! direct I/O, so after a power cut every process sees the surviving state.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
};

const TTL: Duration = Duration::ZERO;
const ROOT: u64 = fuser::FUSE_ROOT_ID;
const RENAME_NOREPLACE: u32 = 1;

/// The operations a fault can be put on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Fsync,
    Create,
    Rename,
}

#[derive(Clone, Debug)]
struct Rule {
    op: Op,
    fragment: String,
    errno: i32,
    /// matching operations still let through before failing
    skip: u64,
    /// failures still to give (u64::MAX: every one)
    left: u64,
}

enum Body {
    File {
        data: Vec<u8>,
        /// the content as of the last fsync (`None`: never synced, empty after a cut)
        durable: Option<Vec<u8>>,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        /// the entries as of the last fsync of this directory
        durable: BTreeMap<OsString, u64>,
    },
    Symlink(PathBuf),
}

struct Node {
    body: Body,
    mode: u16,
    uid: u32,
    gid: u32,
    nlink: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// where it was last linked, for fault rules' paths
    parent: u64,
    name: OsString,
}

struct State {
    nodes: HashMap<u64, Node>,
    next: u64,
    rules: Vec<Rule>,
    capacity: Option<u64>,
    /// failures given, for the tests' reports
    failed: u64,
    /// how far this file system's clock (the times it stamps) is ahead of the machine's
    ahead: Duration,
}

/// A handle on the mounted file system; unmounted when dropped.
pub struct TestFs {
    state: Arc<Mutex<State>>,
    session: Option<fuser::BackgroundSession>,
    pub mountpoint: PathBuf,
}

fn lock(s: &Arc<Mutex<State>>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl TestFs {
    /// Mount an empty file system at `mountpoint` (a directory that exists).
    pub fn mount(mountpoint: &Path) -> std::io::Result<TestFs> {
        let now = SystemTime::now();
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                body: Body::Dir {
                    entries: BTreeMap::new(),
                    durable: BTreeMap::new(),
                },
                mode: 0o755,
                uid: 0,
                gid: 0,
                nlink: 2,
                atime: now,
                mtime: now,
                ctime: now,
                parent: ROOT,
                name: OsString::new(),
            },
        );
        let state = Arc::new(Mutex::new(State {
            nodes,
            next: ROOT + 1,
            rules: Vec::new(),
            capacity: None,
            failed: 0,
            ahead: Duration::ZERO,
        }));
        let fs = Fs {
            state: state.clone(),
            dirs: HashMap::new(),
            next_fh: 1,
        };
        let session = fuser::spawn_mount2(
            fs,
            mountpoint,
            &[MountOption::FSName("coffer-testfs".into()), MountOption::RW],
        )?;
        Ok(TestFs {
            state,
            session: Some(session),
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    /// Make `op` on paths containing `fragment` fail with `errno`, after `skip` such operations
    /// went through, `times` times (`u64::MAX`: from then on).
    pub fn fail(&self, op: Op, fragment: &str, errno: i32, skip: u64, times: u64) {
        lock(&self.state).rules.push(Rule {
            op,
            fragment: fragment.into(),
            errno,
            skip,
            left: times,
        });
    }

    /// Remove every fault rule.
    pub fn heal(&self) {
        lock(&self.state).rules.clear();
    }

    /// How many operations failed on purpose so far.
    pub fn failures(&self) -> u64 {
        lock(&self.state).failed
    }

    /// Writes that would take the file system past `bytes` fail with ENOSPC (`None`: no limit).
    pub fn set_capacity(&self, bytes: Option<u64>) {
        lock(&self.state).capacity = bytes;
    }

    /// Move this file system's clock on: files written from now are stamped `by` later (the
    /// storage's clock passing, for a process suspended meanwhile).
    pub fn advance(&self, by: Duration) {
        lock(&self.state).ahead += by;
    }

    /// Bytes of file content held.
    pub fn used(&self) -> u64 {
        used(&lock(&self.state))
    }

    /// Everything is durable now (`sync`).
    pub fn sync_all(&self) {
        for n in lock(&self.state).nodes.values_mut() {
            match &mut n.body {
                Body::File { data, durable } => *durable = Some(data.clone()),
                Body::Dir { entries, durable } => *durable = entries.clone(),
                Body::Symlink(_) => {}
            }
        }
    }

    /// A power cut: every file's content goes back to its last fsync, every directory's
    /// entries to its last fsync. Returns how many files and names lost something.
    pub fn power_cut(&self) -> (usize, usize) {
        let mut st = lock(&self.state);
        let (mut files, mut names) = (0, 0);
        for n in st.nodes.values_mut() {
            match &mut n.body {
                Body::File { data, durable } => {
                    let keep = durable.clone().unwrap_or_default();
                    if *data != keep {
                        files += 1;
                        *data = keep;
                    }
                }
                Body::Dir { entries, durable } => {
                    if entries != durable {
                        names += entries.iter().filter(|(k, v)| durable.get(*k) != Some(v)).count()
                            + durable.keys().filter(|k| !entries.contains_key(*k)).count();
                        *entries = durable.clone();
                    }
                }
                Body::Symlink(_) => {}
            }
        }
        // names counted again: a file whose unlink was not durable is back, one whose
        // creation was not is gone (and takes no room)
        let mut links: HashMap<u64, u32> = HashMap::new();
        for n in st.nodes.values() {
            if let Body::Dir { entries, .. } = &n.body {
                for i in entries.values() {
                    *links.entry(*i).or_default() += 1;
                }
            }
        }
        for (ino, n) in st.nodes.iter_mut() {
            if let Body::File { data, .. } = &mut n.body {
                n.nlink = links.get(ino).copied().unwrap_or(0);
                if n.nlink == 0 {
                    *data = Vec::new();
                }
            }
        }
        (files, names)
    }

    /// Unmount (also done on drop).
    pub fn unmount(&mut self) {
        if let Some(s) = self.session.take() {
            s.join();
        }
    }
}

impl Drop for TestFs {
    fn drop(&mut self) {
        self.unmount();
    }
}

fn used(st: &State) -> u64 {
    st.nodes
        .values()
        .map(|n| match &n.body {
            Body::File { data, .. } => data.len() as u64,
            _ => 0,
        })
        .sum()
}

struct Fs {
    state: Arc<Mutex<State>>,
    /// open directory handles: the listing taken at opendir (entries removed meanwhile are
    /// still listed, none is skipped, as on a real file system)
    dirs: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    next_fh: u64,
}

impl State {
    fn path(&self, mut ino: u64) -> PathBuf {
        let mut parts = Vec::new();
        while ino != ROOT {
            let Some(n) = self.nodes.get(&ino) else { break };
            parts.push(n.name.clone());
            ino = n.parent;
        }
        let mut p = PathBuf::from("/");
        for x in parts.iter().rev() {
            p.push(x);
        }
        p
    }

    /// The errno a rule gives this operation on `ino` (and `name` under it), if any.
    fn fault(&mut self, op: Op, ino: u64, name: Option<&OsStr>) -> Option<i32> {
        if self.rules.is_empty() {
            return None;
        }
        let mut path = self.path(ino);
        if let Some(n) = name {
            path.push(n);
        }
        let path = path.to_string_lossy().into_owned();
        for r in &mut self.rules {
            if r.op == op && r.left > 0 && path.contains(&r.fragment) {
                if r.skip > 0 {
                    r.skip -= 1;
                    return None;
                }
                if r.left != u64::MAX {
                    r.left -= 1;
                }
                self.failed += 1;
                return Some(r.errno);
            }
        }
        None
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let n = self.nodes.get(&ino)?;
        let (kind, size) = match &n.body {
            Body::File { data, .. } => (FileType::RegularFile, data.len() as u64),
            Body::Dir { entries, .. } => (FileType::Directory, entries.len() as u64),
            Body::Symlink(t) => (FileType::Symlink, t.as_os_str().len() as u64),
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.ctime,
            crtime: n.ctime,
            kind,
            perm: n.mode,
            nlink: n.nlink,
            uid: n.uid,
            gid: n.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn entries(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, i32> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.body) {
            Some(Body::Dir { entries, .. }) => Ok(entries),
            Some(_) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    fn child(&mut self, parent: u64, name: &OsStr) -> Result<u64, i32> {
        self.entries(parent)?.get(name).copied().ok_or(libc::ENOENT)
    }

    fn add(
        &mut self,
        parent: u64,
        name: &OsStr,
        body: Body,
        mode: u32,
        req: &Request<'_>,
    ) -> Result<u64, i32> {
        if self.entries(parent)?.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next;
        self.next += 1;
        let now = SystemTime::now() + self.ahead;
        let dir = matches!(body, Body::Dir { .. });
        self.nodes.insert(
            ino,
            Node {
                body,
                mode: (mode & 0o7777) as u16,
                uid: req.uid(),
                gid: req.gid(),
                nlink: if dir { 2 } else { 1 },
                atime: now,
                mtime: now,
                ctime: now,
                parent,
                name: name.to_os_string(),
            },
        );
        self.entries(parent)?.insert(name.to_os_string(), ino);
        self.touch(parent);
        Ok(ino)
    }

    /// One name fewer for `ino`; with none left its content no longer takes room (what
    /// survives a cut is kept apart, and comes back if the unlink was not durable).
    fn unlinked(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.nlink = n.nlink.saturating_sub(1);
            if n.nlink == 0 {
                if let Body::File { data, .. } = &mut n.body {
                    *data = Vec::new();
                }
            }
        }
    }

    fn touch(&mut self, ino: u64) {
        let now = SystemTime::now() + self.ahead;
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.mtime = now;
            n.ctime = now;
        }
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

/// Files are opened with direct I/O: the kernel caches nothing, every read and write comes
/// here. Except SQLite's WAL index (`*-shm`, the coffer server's catalog): it is shared memory
/// that SQLite maps, which direct I/O forbids (this fuser speaks too old a protocol to allow
/// it), and it is rebuilt from the WAL when the database is next opened, so what a power cut
/// leaves of it does not matter.
fn open_flags(path: &Path) -> u32 {
    if path.to_string_lossy().ends_with("-shm") {
        0
    } else {
        fuser::consts::FOPEN_DIRECT_IO
    }
}

impl Filesystem for Fs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let mut st = lock(&self.state);
        match st.child(parent, name) {
            Ok(ino) => reply.entry(&TTL, &st.attr(ino).unwrap(), 0),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match lock(&self.state).attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(libc::ENOENT),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut st = lock(&self.state);
        let Some(n) = st.nodes.get_mut(&ino) else {
            return reply.error(libc::ENOENT);
        };
        if let Some(m) = mode {
            n.mode = (m & 0o7777) as u16;
        }
        if let Some(u) = uid {
            n.uid = u;
        }
        if let Some(g) = gid {
            n.gid = g;
        }
        if let Some(t) = atime {
            n.atime = time(t);
        }
        if let Some(t) = mtime {
            n.mtime = time(t);
        }
        n.ctime = SystemTime::now();
        if let Some(len) = size {
            match &mut n.body {
                Body::File { data, .. } => data.resize(len as usize, 0),
                _ => return reply.error(libc::EISDIR),
            }
        }
        reply.attr(&TTL, &st.attr(ino).unwrap());
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match lock(&self.state).nodes.get(&ino).map(|n| &n.body) {
            Some(Body::Symlink(t)) => reply.data(t.as_os_str().as_encoded_bytes()),
            _ => reply.error(libc::EINVAL),
        }
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = lock(&self.state);
        if let Some(e) = st.fault(Op::Create, parent, Some(name)) {
            return reply.error(e);
        }
        let body = Body::Dir {
            entries: BTreeMap::new(),
            durable: BTreeMap::new(),
        };
        match st.add(parent, name, body, mode & !umask, req) {
            Ok(ino) => reply.entry(&TTL, &st.attr(ino).unwrap(), 0),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, link: &Path, reply: ReplyEntry) {
        let mut st = lock(&self.state);
        match st.add(parent, name, Body::Symlink(link.to_path_buf()), 0o777, req) {
            Ok(ino) => reply.entry(&TTL, &st.attr(ino).unwrap(), 0),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut st = lock(&self.state);
        match st.child(parent, name) {
            Ok(ino) if matches!(st.nodes[&ino].body, Body::Dir { .. }) => reply.error(libc::EISDIR),
            Ok(ino) => {
                st.entries(parent).unwrap().remove(name);
                st.unlinked(ino);
                st.touch(parent);
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut st = lock(&self.state);
        match st.child(parent, name) {
            Ok(ino) => match st.entries(ino) {
                Ok(e) if !e.is_empty() => reply.error(libc::ENOTEMPTY),
                Ok(_) => {
                    st.entries(parent).unwrap().remove(name);
                    st.touch(parent);
                    reply.ok()
                }
                Err(e) => reply.error(e),
            },
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let mut st = lock(&self.state);
        if flags & !RENAME_NOREPLACE != 0 {
            return reply.error(libc::EINVAL);
        }
        if let Some(e) = st.fault(Op::Rename, newparent, Some(newname)) {
            return reply.error(e);
        }
        let ino = match st.child(parent, name) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        match st.entries(newparent) {
            Ok(e) if flags & RENAME_NOREPLACE != 0 && e.contains_key(newname) => {
                return reply.error(libc::EEXIST)
            }
            Ok(_) => {}
            Err(e) => return reply.error(e),
        }
        if let Ok(old) = st.child(newparent, newname) {
            st.unlinked(old);
        }
        st.entries(parent).unwrap().remove(name);
        st.entries(newparent).unwrap().insert(newname.to_os_string(), ino);
        if let Some(n) = st.nodes.get_mut(&ino) {
            n.parent = newparent;
            n.name = newname.to_os_string();
        }
        st.touch(parent);
        st.touch(newparent);
        reply.ok()
    }

    fn link(&mut self, _req: &Request<'_>, ino: u64, newparent: u64, newname: &OsStr, reply: ReplyEntry) {
        let mut st = lock(&self.state);
        match st.entries(newparent) {
            Ok(e) if e.contains_key(newname) => return reply.error(libc::EEXIST),
            Ok(e) => {
                e.insert(newname.to_os_string(), ino);
            }
            Err(e) => return reply.error(e),
        }
        if let Some(n) = st.nodes.get_mut(&ino) {
            n.nlink += 1;
        }
        reply.entry(&TTL, &st.attr(ino).unwrap(), 0)
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let mut st = lock(&self.state);
        let Some(n) = st.nodes.get_mut(&ino) else {
            return reply.error(libc::ENOENT);
        };
        if flags & libc::O_TRUNC != 0 {
            if let Body::File { data, .. } = &mut n.body {
                data.clear();
            }
        }
        let flags = open_flags(&st.path(ino));
        reply.opened(0, flags)
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = lock(&self.state);
        if let Some(e) = st.fault(Op::Create, parent, Some(name)) {
            return reply.error(e);
        }
        if let Ok(ino) = st.child(parent, name) {
            if flags & libc::O_EXCL != 0 {
                return reply.error(libc::EEXIST);
            }
            if let Some(Node {
                body: Body::File { data, .. },
                ..
            }) = st.nodes.get_mut(&ino)
            {
                if flags & libc::O_TRUNC != 0 {
                    data.clear();
                }
            }
            return reply.created(&TTL, &st.attr(ino).unwrap(), 0, 0, open_flags(Path::new(name)));
        }
        let body = Body::File {
            data: Vec::new(),
            durable: None,
        };
        match st.add(parent, name, body, mode & !umask, req) {
            Ok(ino) => reply.created(&TTL, &st.attr(ino).unwrap(), 0, 0, open_flags(Path::new(name))),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let mut st = lock(&self.state);
        if let Some(e) = st.fault(Op::Read, ino, None) {
            return reply.error(e);
        }
        match st.nodes.get(&ino).map(|n| &n.body) {
            Some(Body::File { data, .. }) => {
                let start = (offset as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                reply.data(&data[start..end])
            }
            Some(_) => reply.error(libc::EISDIR),
            None => reply.error(libc::ENOENT),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        buf: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let mut st = lock(&self.state);
        if let Some(e) = st.fault(Op::Write, ino, None) {
            return reply.error(e);
        }
        let end = offset as usize + buf.len();
        let grows = match st.nodes.get(&ino).map(|n| &n.body) {
            Some(Body::File { data, .. }) => end.saturating_sub(data.len()) as u64,
            _ => return reply.error(libc::EBADF),
        };
        if let Some(cap) = st.capacity {
            if used(&st) + grows > cap {
                return reply.error(libc::ENOSPC);
            }
        }
        if let Some(Body::File { data, .. }) = st.nodes.get_mut(&ino).map(|n| &mut n.body) {
            if data.len() < end {
                data.resize(end, 0);
            }
            data[offset as usize..end].copy_from_slice(buf);
        }
        st.touch(ino);
        reply.written(buf.len() as u32)
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lock_owner: u64, reply: ReplyEmpty) {
        reply.ok()
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let mut st = lock(&self.state);
        if let Some(e) = st.fault(Op::Fsync, ino, None) {
            return reply.error(e);
        }
        if let Some(Body::File { data, durable }) = st.nodes.get_mut(&ino).map(|n| &mut n.body) {
            *durable = Some(data.clone());
        }
        reply.ok()
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let mut st = lock(&self.state);
        let parent = st.nodes.get(&ino).map(|n| n.parent).unwrap_or(ROOT);
        let list: Vec<(u64, OsString)> = match st.entries(ino) {
            Ok(e) => e.iter().map(|(k, v)| (*v, k.clone())).collect(),
            Err(e) => return reply.error(e),
        };
        let mut all = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (parent, FileType::Directory, OsString::from("..")),
        ];
        for (i, name) in list {
            let kind = st.attr(i).map_or(FileType::RegularFile, |a| a.kind);
            all.push((i, kind, name));
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        self.dirs.insert(fh, all);
        reply.opened(fh, 0)
    }

    fn readdir(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let Some(all) = self.dirs.get(&fh) else {
            return reply.error(libc::EBADF);
        };
        for (n, (i, kind, name)) in all.iter().enumerate().skip(offset as usize) {
            if reply.add(*i, (n + 1) as i64, *kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _flags: i32, reply: ReplyEmpty) {
        self.dirs.remove(&fh);
        reply.ok()
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let mut st = lock(&self.state);
        if let Some(e) = st.fault(Op::Fsync, ino, None) {
            return reply.error(e);
        }
        if let Some(Body::Dir { entries, durable }) = st.nodes.get_mut(&ino).map(|n| &mut n.body) {
            *durable = entries.clone();
        }
        reply.ok()
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let st = lock(&self.state);
        let total = st.capacity.unwrap_or(1 << 40) / 4096;
        let free = total.saturating_sub(used(&st) / 4096);
        reply.statfs(total, free, free, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn getxattr(&mut self, _req: &Request<'_>, _ino: u64, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(libc::ENODATA)
    }

    fn listxattr(&mut self, _req: &Request<'_>, _ino: u64, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0)
        } else {
            reply.data(&[])
        }
    }
}
