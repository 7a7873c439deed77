//! Reading file-system metadata into nodes.

use std::collections::HashMap;
use std::path::Path;

use coffer_format::{Bytes, Name, Node, NodeKind, Timestamp, Xattr};

/// Caches uid/gid → name look-ups.
#[derive(Default)]
pub struct NameCache {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl NameCache {
    pub fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| uzers::get_user_by_uid(uid).map(|u| u.name().to_string_lossy().into_owned()))
            .clone()
    }
    pub fn group(&mut self, gid: u32) -> Option<String> {
        self.groups
            .entry(gid)
            .or_insert_with(|| uzers::get_group_by_gid(gid).map(|g| g.name().to_string_lossy().into_owned()))
            .clone()
    }
}

/// Extended attributes of `path` (not following a final symlink), sorted by name.
pub fn read_xattrs(path: &Path) -> std::io::Result<Vec<Xattr>> {
    collect_xattrs(xattr::list(path), |name| xattr::get(path, name))
}

/// Extended attributes of an open file, sorted by name: what [`read_xattrs`] reads from its
/// path, without resolving a path (a backup reads every new file's through the descriptor it
/// reads the content from).
pub fn read_file_xattrs(f: &std::fs::File) -> std::io::Result<Vec<Xattr>> {
    use xattr::FileExt;
    collect_xattrs(f.list_xattr(), |name| f.get_xattr(name))
}

fn collect_xattrs(
    names: std::io::Result<xattr::XAttrs>,
    get: impl Fn(&std::ffi::OsStr) -> std::io::Result<Option<Vec<u8>>>,
) -> std::io::Result<Vec<Xattr>> {
    let names = match names {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        if let Some(value) = get(&name)? {
            out.push(Xattr {
                name: Bytes(name.into_encoded_bytes()),
                value: Bytes(value),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The node kind of a `stat` result; `None` for sockets (not backed up).
pub fn kind_of_stat(st: &rustix::fs::Stat) -> Option<NodeKind> {
    use rustix::fs::FileType as T;
    Some(match T::from_raw_mode(st.st_mode) {
        T::RegularFile => NodeKind::File,
        T::Directory => NodeKind::Dir,
        T::Symlink => NodeKind::Symlink,
        T::Fifo => NodeKind::Fifo,
        T::CharacterDevice => NodeKind::Chardev,
        T::BlockDevice => NodeKind::Blockdev,
        _ => return None,
    })
}

/// A short path that names `name` inside the directory `dir` without resolving the long
/// path again: `/proc/self/fd/<dir>/<name>` (the full path where /proc is missing).
pub fn proc_path(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    full: &Path,
) -> std::path::PathBuf {
    use std::os::fd::AsRawFd;
    // checked once per process: this runs for every entry of a backup
    static HAVE_PROC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *HAVE_PROC.get_or_init(|| Path::new("/proc/self/fd").is_dir()) {
        std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
    } else {
        full.to_path_buf()
    }
}

/// Where [`node_from_stat`] leaves a node's extended attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Xattrs {
    /// Read (from the path, or the previous node's when nothing changed).
    Read,
    /// Not read: a regular file that changed, whose attributes the caller reads from the
    /// descriptor it opens to read the content ([`read_file_xattrs`]), or from the path
    /// ([`read_xattrs_at`]) if it does not open it.
    Pending,
}

/// Extended attributes of entry `name` of directory `dir`, a warning if they cannot be read.
pub fn read_xattrs_at(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &Name,
    full: &Path,
) -> Result<Vec<Xattr>, String> {
    use std::os::unix::ffi::OsStrExt;
    read_xattrs(&proc_path(dir, std::ffi::OsStr::from_bytes(&name.0), full))
        .map_err(|e| xattr_warning(full, &e))
}

/// The warning for attributes of `full` that cannot be read.
pub fn xattr_warning(full: &Path, e: &std::io::Error) -> String {
    format!("{}: cannot read extended attributes: {e}", full.display())
}

/// A node for entry `name` of directory `dir` from its `statat` result.
/// (The casts are no-ops on x86_64 but not on every Linux target.) Works at any path
/// length: nothing here resolves the full path. Content and subtree are left empty, and so
/// are a changed regular file's extended attributes (see [`Xattrs`]).
#[allow(clippy::unnecessary_cast)]
pub fn node_from_stat(
    name: Name,
    kind: NodeKind,
    st: &rustix::fs::Stat,
    dir: std::os::fd::BorrowedFd<'_>,
    full: &Path,
    names: &mut NameCache,
    previous: Option<&Node>,
) -> (Node, Option<String>, Xattrs) {
    use std::os::unix::ffi::OsStrExt;
    let mut n = Node::new(name, kind);
    n.mode = st.st_mode & 0o7777;
    n.uid = st.st_uid;
    n.gid = st.st_gid;
    n.user = names.user(n.uid);
    n.group = names.group(n.gid);
    n.mtime = Timestamp {
        s: st.st_mtime as i64,
        ns: st.st_mtime_nsec as u32,
    };
    n.atime = Timestamp {
        s: st.st_atime as i64,
        ns: st.st_atime_nsec as u32,
    };
    n.ctime = Timestamp {
        s: st.st_ctime as i64,
        ns: st.st_ctime_nsec as u32,
    };
    n.inode = st.st_ino as u64;
    n.dev = st.st_dev as u64;
    n.links = st.st_nlink as u64;
    let mut warning = None;
    // Extended attributes and a symlink's target cannot change without changing the ctime
    // (setxattr and every write of metadata update it), so a previous snapshot's node with the
    // same inode and ctime already holds them: no system calls for them on unchanged entries.
    let same =
        previous.filter(|p| p.kind == kind && p.inode == n.inode && p.ctime == n.ctime && p.error.is_none());
    match kind {
        NodeKind::File => n.size = st.st_size as u64,
        NodeKind::Chardev | NodeKind::Blockdev => n.rdev = st.st_rdev as u64,
        NodeKind::Symlink => match same.and_then(|p| p.target.clone()) {
            Some(t) => n.target = Some(t),
            None => match rustix::fs::readlinkat(dir, std::ffi::OsStr::from_bytes(&n.name.0), Vec::new()) {
                Ok(t) => n.target = Some(Bytes(t.into_bytes())),
                Err(e) => warning = Some(format!("{}: cannot read link target: {e}", full.display())),
            },
        },
        _ => {}
    }
    let mut xattrs = Xattrs::Read;
    if let Some(p) = same {
        n.xattrs = p.xattrs.clone();
    } else if kind == NodeKind::File {
        xattrs = Xattrs::Pending;
    } else if kind != NodeKind::Symlink {
        match read_xattrs_at(dir, &n.name, full) {
            Ok(x) => n.xattrs = x,
            Err(w) => warning = Some(w),
        }
    }
    (n, warning, xattrs)
}
