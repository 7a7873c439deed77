//! Streamed sources: content that is not a file on disk but the output of a producer (a
//! database dump), stored in the snapshot as a file below `/.databases`.
//!
//! The backup reads a source's stream straight into the chunker, so nothing is staged on
//! disk, and asks the source afterwards whether the producer succeeded. Only a source that
//! reports success gets a node in the tree and an entry in the snapshot's database list; a
//! failed one is a warning of the run (exit code 3), so no snapshot ever claims a dump that is
//! incomplete.

use std::fmt;
use std::io::Read;

use coffer_format::{DatabaseItem, Name, NodeKind};

use crate::error::Result;
use crate::repo::IndexedRepository;

/// The top-level directory of a snapshot's tree that holds streamed items.
pub const DATABASES_DIR: &str = ".databases";

/// Why a source failed, in one line that names the source and the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError(pub String);

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SourceError {}

/// A producer of one item's content.
pub trait StreamSource: Send {
    /// What this is, for messages: `mysql database shop`.
    fn describe(&self) -> String;
    /// Where the item goes, as path components below `/.databases`.
    fn location(&self) -> Vec<Name>;
    /// Start the producer and return its output.
    fn open(&mut self) -> std::result::Result<Box<dyn Read + Send>, SourceError>;
    /// After the output was read to its end (`complete`), or abandoned after a read error or
    /// a repository error (`!complete`: stop the producer): whether the producer succeeded,
    /// and the item's description. `size` is the number of bytes read.
    fn finish(&mut self, complete: bool, size: u64) -> std::result::Result<DatabaseItem, SourceError>;
}

/// Reads a file node's content from the repository, blob by blob.
pub struct NodeReader<'a> {
    repo: &'a IndexedRepository,
    blobs: std::slice::Iter<'a, coffer_format::BlobId>,
    buf: Vec<u8>,
    pos: usize,
}

impl<'a> NodeReader<'a> {
    pub fn new(repo: &'a IndexedRepository, node: &'a coffer_format::Node) -> Self {
        NodeReader {
            repo,
            blobs: node.content.iter(),
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for NodeReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(id) = self.blobs.next() else {
                return Ok(0);
            };
            self.buf = self
                .repo
                .read_blob(id, coffer_format::BlobKind::Data)
                .map_err(std::io::Error::other)?;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Find the file node of database item `path` (`/.databases/...`) in a snapshot's tree.
pub fn find_item_node(
    repo: &IndexedRepository,
    root: coffer_format::BlobId,
    path: &str,
) -> Result<coffer_format::Node> {
    match crate::walk::find_path(repo, root, path)? {
        crate::walk::Found::Node(n) if n.kind == NodeKind::File => Ok(*n),
        _ => Err(crate::Error::NotFound(format!(
            "{path}: the snapshot lists this dump but its tree has no such file (run `coffer check`)"
        ))),
    }
}

/// The path in the snapshot's tree of an item at `location`: `/.databases/mysql/shop.sql`.
pub fn item_path(location: &[Name]) -> String {
    let mut p = format!("/{DATABASES_DIR}");
    for c in location {
        p.push('/');
        p.push_str(&String::from_utf8_lossy(&c.0));
    }
    p
}

/// Escape a database name into one safe path component: `%`, `/` and a leading `.` are
/// percent-encoded, so every name maps to a distinct, valid file name.
pub fn escape_component(name: &str) -> Name {
    let mut out = String::with_capacity(name.len());
    for (i, c) in name.chars().enumerate() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '\0' => out.push_str("%00"),
            '.' if i == 0 => out.push_str("%2E"),
            c => out.push(c),
        }
    }
    if out.is_empty() {
        out.push('%');
    }
    Name::from(out.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_injective_and_safe() {
        let names = ["shop", "a/b", "a%2Fb", ".hidden", "..", ".", "%", "x.sql", ""];
        let mut seen = std::collections::HashSet::new();
        for n in names {
            let e = escape_component(n);
            assert!(!e.0.contains(&b'/'), "{n}");
            assert!(e.0 != b"." && e.0 != b".." && !e.0.is_empty(), "{n}");
            assert!(seen.insert(e.0.clone()), "{n} collides");
        }
    }
}
