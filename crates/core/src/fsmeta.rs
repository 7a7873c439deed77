//! Reading file-system metadata into nodes.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
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

/// The node kind of a file type; `None` for sockets (not backed up).
pub fn kind_of(m: &Metadata) -> Option<NodeKind> {
    let t = m.file_type();
    Some(if t.is_file() {
        NodeKind::File
    } else if t.is_dir() {
        NodeKind::Dir
    } else if t.is_symlink() {
        NodeKind::Symlink
    } else if t.is_fifo() {
        NodeKind::Fifo
    } else if t.is_char_device() {
        NodeKind::Chardev
    } else if t.is_block_device() {
        NodeKind::Blockdev
    } else {
        return None;
    })
}

/// A node for `path` from its `lstat` metadata; content and subtree are left empty.
/// Symlink targets and xattrs are read here; a failure to read them is returned as a warning.
pub fn node_from_meta(
    name: Name,
    kind: NodeKind,
    m: &Metadata,
    path: &Path,
    names: &mut NameCache,
) -> (Node, Option<String>) {
    let mut n = Node::new(name, kind);
    n.mode = m.mode() & 0o7777;
    n.uid = m.uid();
    n.gid = m.gid();
    n.user = names.user(n.uid);
    n.group = names.group(n.gid);
    n.mtime = Timestamp {
        s: m.mtime(),
        ns: m.mtime_nsec() as u32,
    };
    n.atime = Timestamp {
        s: m.atime(),
        ns: m.atime_nsec() as u32,
    };
    n.ctime = Timestamp {
        s: m.ctime(),
        ns: m.ctime_nsec() as u32,
    };
    n.inode = m.ino();
    n.dev = m.dev();
    n.links = m.nlink();
    let mut warning = None;
    match kind {
        NodeKind::File => n.size = m.size(),
        NodeKind::Chardev | NodeKind::Blockdev => n.rdev = m.rdev(),
        NodeKind::Symlink => match std::fs::read_link(path) {
            Ok(t) => n.target = Some(Bytes(t.into_os_string().into_encoded_bytes())),
            Err(e) => warning = Some(format!("{}: cannot read link target: {e}", path.display())),
        },
        _ => {}
    }
    if kind != NodeKind::Symlink {
        match read_xattrs(path) {
            Ok(x) => n.xattrs = x,
            Err(e) => {
                warning = Some(format!(
                    "{}: cannot read extended attributes: {e}",
                    path.display()
                ))
            }
        }
    }
    (n, warning)
}

/// Extended attributes of `path` (not following a final symlink), sorted by name.
pub fn read_xattrs(path: &Path) -> std::io::Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        if let Some(value) = xattr::get(path, &name)? {
            out.push(Xattr {
                name: Bytes(name.into_encoded_bytes()),
                value: Bytes(value),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
