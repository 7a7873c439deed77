//! Comparing two snapshot trees.
//!
//! Subtrees with equal ids are skipped without being read: equal ids mean equal content,
//! so diffing two snapshots of a mostly unchanged machine reads only the changed directories.

use coffer_format::{BlobId, Node, NodeKind, Tree};
use serde::Serialize;

use crate::error::Result;
use crate::repo::IndexedRepository;
use crate::walk::join;

/// How a path differs between the two snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Removed,
    /// Same kind, different content (or link target).
    Modified,
    /// Same kind and content, different metadata (mode, owner, times, xattrs).
    Metadata,
    /// A different kind of node (file became directory, ...).
    TypeChanged,
}

impl ChangeKind {
    /// restic's one-letter marker.
    pub fn marker(self) -> char {
        match self {
            ChangeKind::Added => '+',
            ChangeKind::Removed => '-',
            ChangeKind::Modified => 'M',
            ChangeKind::Metadata => 'U',
            ChangeKind::TypeChanged => 'T',
        }
    }
}

/// Compare trees `a` and `b`, calling `f` for each difference in path order. A directory
/// that exists only on one side is reported once, with its contents.
pub fn diff_trees(
    repo: &IndexedRepository,
    a: BlobId,
    b: BlobId,
    f: &mut dyn FnMut(&[u8], ChangeKind, &Node),
) -> Result<()> {
    diff_level(repo, Some(a), Some(b), b"", f)
}

fn load(repo: &IndexedRepository, id: Option<BlobId>) -> Result<Tree> {
    match id {
        Some(id) => repo.load_tree(&id),
        None => Ok(Tree::default()),
    }
}

fn report_all(
    repo: &IndexedRepository,
    node: &Node,
    path: &[u8],
    kind: ChangeKind,
    f: &mut dyn FnMut(&[u8], ChangeKind, &Node),
) -> Result<()> {
    f(path, kind, node);
    if node.kind == NodeKind::Dir {
        for n in load(repo, node.subtree)?.nodes {
            report_all(repo, &n, &join(path, &n.name), kind, f)?;
        }
    }
    Ok(())
}

fn diff_level(
    repo: &IndexedRepository,
    a: Option<BlobId>,
    b: Option<BlobId>,
    prefix: &[u8],
    f: &mut dyn FnMut(&[u8], ChangeKind, &Node),
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let (ta, tb) = (load(repo, a)?, load(repo, b)?);
    let (mut i, mut j) = (0, 0);
    while i < ta.nodes.len() || j < tb.nodes.len() {
        let order = match (ta.nodes.get(i), tb.nodes.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                let n = &ta.nodes[i];
                report_all(repo, n, &join(prefix, &n.name), ChangeKind::Removed, f)?;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let n = &tb.nodes[j];
                report_all(repo, n, &join(prefix, &n.name), ChangeKind::Added, f)?;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (&ta.nodes[i], &tb.nodes[j]);
                let path = join(prefix, &y.name);
                if x.kind != y.kind {
                    f(&path, ChangeKind::TypeChanged, y);
                } else if x.kind == NodeKind::Dir {
                    if !same_meta(x, y) {
                        f(&path, ChangeKind::Metadata, y);
                    }
                    diff_level(repo, x.subtree, y.subtree, &path, f)?;
                } else if x.content != y.content || x.target != y.target || x.rdev != y.rdev {
                    f(&path, ChangeKind::Modified, y);
                } else if !same_meta(x, y) {
                    f(&path, ChangeKind::Metadata, y);
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

/// Metadata a user would call a change (atime and ctime excluded: reading or backing up a
/// file changes them).
fn same_meta(x: &Node, y: &Node) -> bool {
    x.mode == y.mode
        && x.uid == y.uid
        && x.gid == y.gid
        && x.mtime == y.mtime
        && x.xattrs == y.xattrs
        && x.size == y.size
}
