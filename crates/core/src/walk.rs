//! Walking snapshot trees: path lookup and depth-first traversal (for ls, find, diff).

use std::path::{Component, Path};

use coffer_format::{BlobId, Name, Node, NodeKind};

use crate::error::{Error, Result};
use crate::repo::IndexedRepository;

/// What a path inside a snapshot names.
#[derive(Debug)]
pub enum Found {
    /// The snapshot root (path `/`).
    Root(BlobId),
    Node(Box<Node>),
}

/// Look up `path` (absolute, as in the snapshot) starting at root tree `root`.
pub fn find_path(repo: &IndexedRepository, root: BlobId, path: &str) -> Result<Found> {
    let mut tree_id = root;
    let mut found = Found::Root(root);
    for c in Path::new(path).components() {
        let name = match c {
            Component::Normal(n) => Name(n.as_encoded_bytes().to_vec()),
            Component::RootDir | Component::CurDir => continue,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::Invalid(format!("path {path:?} must not contain `..`")))
            }
        };
        if let Found::Node(n) = &found {
            match (n.kind, n.subtree) {
                (NodeKind::Dir, Some(s)) => tree_id = s,
                _ => {
                    return Err(Error::NotFound(format!(
                        "{path}: {} is not a directory in the snapshot",
                        n.name
                    )))
                }
            }
        }
        let tree = repo.load_tree(&tree_id)?;
        let node = tree
            .nodes
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| Error::NotFound(format!("{path}: not in the snapshot")))?;
        found = Found::Node(Box::new(node));
    }
    Ok(found)
}

/// Join a snapshot path and a name (bytes; names may not be UTF-8).
pub fn join(prefix: &[u8], name: &Name) -> Vec<u8> {
    let mut p = Vec::with_capacity(prefix.len() + 1 + name.0.len());
    p.extend_from_slice(prefix);
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(&name.0);
    p
}

/// Visit every node under tree `id` depth-first, parents before children. `prefix` is the
/// snapshot path of that tree. The visitor returns whether to descend into a directory.
pub fn walk(
    repo: &IndexedRepository,
    id: BlobId,
    prefix: &[u8],
    visit: &mut dyn FnMut(&[u8], &Node) -> Result<bool>,
) -> Result<()> {
    let tree = repo.load_tree(&id)?;
    for node in &tree.nodes {
        let path = join(prefix, &node.name);
        let descend = visit(&path, node)?;
        if descend && node.kind == NodeKind::Dir {
            if let Some(sub) = node.subtree {
                walk(repo, sub, &path, visit)?;
            }
        }
    }
    Ok(())
}
