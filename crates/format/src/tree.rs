//! Trees: one directory's listing.
//!
//! A tree is the CBOR encoding of [`Tree`], stored as a blob of kind Tree whose id is the keyed
//! hash of that encoding — so an unchanged directory produces the same bytes, the same id, and
//! is stored once. Decoding enforces the invariants restore relies on:
//! - every name is non-empty, not `.` or `..`, and contains neither `/` nor NUL;
//! - names are strictly increasing (bytewise), so no name appears twice;
//! - a node's fields agree with its kind (only files have content, only dirs a subtree, ...).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::BlobId;
use crate::FormatError;

/// A file name as the file system gave it: arbitrary bytes except `/` and NUL.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Name(pub Vec<u8>);

impl Name {
    /// Check that the name is safe to create inside a directory.
    pub fn validate(&self) -> Result<(), FormatError> {
        let b = &self.0;
        let bad = if b.is_empty() {
            Some("empty name")
        } else if b == b"." || b == b".." {
            Some("name is . or ..")
        } else if b.contains(&b'/') {
            Some("name contains '/'")
        } else if b.contains(&0) {
            Some("name contains NUL")
        } else {
            None
        };
        match bad {
            Some(why) => Err(FormatError::malformed("tree", format!("{why}: {self}"))),
            None => Ok(()),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_ascii())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name(s.as_bytes().to_vec())
    }
}

/// Raw bytes that JSON shows as a string when they are UTF-8 and as `{"hex": ".."}` otherwise;
/// CBOR stores them as a byte string. Used for names, link targets and xattrs.
fn ser_bytes<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        match std::str::from_utf8(b) {
            Ok(t) => s.serialize_str(t),
            Err(_) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("hex", &hex::encode(b))?;
                m.end()
            }
        }
    } else {
        s.serialize_bytes(b)
    }
}

struct BytesVisitor;
impl<'de> serde::de::Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes, a string, or {\"hex\": ...}")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        Ok(v.as_bytes().to_vec())
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }
    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Vec<u8>, A::Error> {
        let mut v = Vec::new();
        while let Some(b) = a.next_element::<u8>()? {
            v.push(b);
        }
        Ok(v)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Vec<u8>, A::Error> {
        let (k, v): (String, String) = a
            .next_entry()?
            .ok_or_else(|| serde::de::Error::custom("empty map"))?;
        if k != "hex" {
            return Err(serde::de::Error::custom("expected key \"hex\""));
        }
        hex::decode(v).map_err(serde::de::Error::custom)
    }
}

fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    if d.is_human_readable() {
        d.deserialize_any(BytesVisitor)
    } else {
        d.deserialize_byte_buf(BytesVisitor)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_bytes(&self.0, s)
    }
}
impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_bytes(d).map(Name)
    }
}

/// Arbitrary bytes (link targets, xattr values) with the same JSON/CBOR mapping as [`Name`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}
impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_bytes(&self.0, s)
    }
}
impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_bytes(d).map(Bytes)
    }
}

/// A point in time with nanoseconds; seconds may be negative (before 1970).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    pub s: i64,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ns: u32,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Chardev,
    Blockdev,
}

/// One extended attribute (POSIX ACLs are stored as their `system.posix_acl_*` xattrs).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Xattr {
    pub name: Bytes,
    pub value: Bytes,
}

/// One directory entry with its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: Name,
    pub kind: NodeKind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub mtime: Timestamp,
    pub atime: Timestamp,
    pub ctime: Timestamp,
    /// File size in bytes (files), 0 otherwise.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub size: u64,
    /// Inode and device number: with `links > 1` they tie hardlinks together; with size and
    /// times they decide whether a file changed since the parent snapshot.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub inode: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub dev: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub links: u64,
    /// Device number of a character or block device.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub rdev: u64,
    /// File content, chunk by chunk.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<BlobId>,
    /// A directory's tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<BlobId>,
    /// A symlink's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
    /// Set when the file could not be read completely during backup; content may be partial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Node {
    /// A node with the given name and kind and empty metadata.
    pub fn new(name: Name, kind: NodeKind) -> Self {
        Node {
            name,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            mtime: Timestamp::default(),
            atime: Timestamp::default(),
            ctime: Timestamp::default(),
            size: 0,
            inode: 0,
            dev: 0,
            links: 0,
            rdev: 0,
            content: Vec::new(),
            subtree: None,
            target: None,
            xattrs: Vec::new(),
            error: None,
        }
    }

    fn validate(&self) -> Result<(), FormatError> {
        self.name.validate()?;
        let ok = match self.kind {
            NodeKind::File => self.subtree.is_none() && self.target.is_none(),
            NodeKind::Dir => self.subtree.is_some() && self.content.is_empty() && self.target.is_none(),
            NodeKind::Symlink => {
                self.target
                    .as_ref()
                    .is_some_and(|t| !t.0.is_empty() && !t.0.contains(&0))
                    && self.content.is_empty()
                    && self.subtree.is_none()
            }
            _ => self.content.is_empty() && self.subtree.is_none() && self.target.is_none(),
        };
        if !ok {
            return Err(FormatError::malformed(
                "tree",
                format!("node {} has fields that do not fit a {:?}", self.name, self.kind),
            ));
        }
        if self.mode > 0o7777 {
            return Err(FormatError::malformed(
                "tree",
                format!("node {} has mode {:o}", self.name, self.mode),
            ));
        }
        Ok(())
    }
}

/// A directory listing, sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// CBOR encoding; sorts the nodes first so equal directories give equal bytes.
    pub fn encode(&mut self) -> Vec<u8> {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = Vec::with_capacity(64 + self.nodes.len() * 128);
        // Writing to a Vec cannot fail and every field serializes.
        #[allow(clippy::expect_used)]
        ciborium::into_writer(&*self, &mut out).expect("tree serializes to a Vec");
        out
    }

    /// The direct decoder alone (`None`: not the encoder's own form), for the fuzzer's
    /// comparison with the reference. Not validated.
    #[doc(hidden)]
    pub fn decode_direct(b: &[u8]) -> Option<Self> {
        crate::tree_cbor::decode(b)
    }

    /// The reference decoder alone (ciborium), for the fuzzer's comparison. Not validated.
    #[doc(hidden)]
    pub fn decode_reference(b: &[u8]) -> Result<Self, FormatError> {
        ciborium::from_reader(b).map_err(|e| FormatError::Decode {
            what: "tree",
            detail: e.to_string(),
        })
    }

    /// Decode and validate (names safe, strictly sorted, fields consistent with kinds). The
    /// encoder's own output takes a direct decoder (`tree_cbor`); anything else goes through
    /// ciborium, the reference.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let t = match crate::tree_cbor::decode(b) {
            Some(t) => t,
            None => ciborium::from_reader(b).map_err(|e| FormatError::Decode {
                what: "tree",
                detail: e.to_string(),
            })?,
        };
        for (i, n) in t.nodes.iter().enumerate() {
            check_next(i.checked_sub(1).map(|p| &t.nodes[p].name), n)?;
        }
        Ok(t)
    }
}

/// Check node `n` of a tree whose node before it is named `prev`: valid, and named after it.
fn check_next(prev: Option<&Name>, n: &Node) -> Result<(), FormatError> {
    n.validate()?;
    if prev.is_some_and(|p| *p >= n.name) {
        return Err(FormatError::malformed(
            "tree",
            format!("names not strictly sorted at {}", n.name),
        ));
    }
    Ok(())
}

/// A tree kept in its encoding and decoded one node at a time, in name order: a directory of
/// many entries is compared with its parent snapshot's without holding every parent node
/// decoded (a decoded node takes about 300 bytes, its encoding about 235).
///
/// [`LazyTree::new`] checks what [`Tree::decode`] checks, so iterating cannot fail afterwards.
#[derive(Clone, Debug)]
pub struct LazyTree {
    bytes: Vec<u8>,
    /// Offset of the first node in `bytes`.
    start: usize,
    len: usize,
}

impl LazyTree {
    /// Check `bytes` as [`Tree::decode`] does, one node at a time. Bytes that are a valid tree
    /// but not in the encoder's own shape (coffer never writes them) are decoded whole and
    /// kept re-encoded.
    pub fn new(bytes: Vec<u8>) -> Result<Self, FormatError> {
        if let Some((start, len)) = Self::check(&bytes) {
            return Ok(LazyTree { bytes, start, len });
        }
        let bytes = Tree::decode(&bytes)?.encode();
        let (start, len) = Self::check(&bytes)
            .ok_or_else(|| FormatError::malformed("tree", "the re-encoded tree does not decode"))?;
        Ok(LazyTree { bytes, start, len })
    }

    /// Where the nodes start and how many there are, if `bytes` have the encoder's shape and
    /// every node is valid and in strict name order.
    fn check(bytes: &[u8]) -> Option<(usize, usize)> {
        let (start, len) = crate::tree_cbor::nodes_start(bytes)?;
        let mut pos = start;
        let mut last: Option<Name> = None;
        for _ in 0..len {
            let n = crate::tree_cbor::node_at(bytes, &mut pos)?;
            check_next(last.as_ref(), &n).ok()?;
            last = Some(n.name);
        }
        (pos == bytes.len()).then_some((start, len))
    }

    /// How many nodes an encoded tree says it holds (read from its first bytes, nothing
    /// checked); `None` if it does not start as the encoder's trees do.
    pub fn announced_len(bytes: &[u8]) -> Option<usize> {
        crate::tree_cbor::nodes_start(bytes).map(|(_, n)| n)
    }

    /// How many nodes the tree holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The nodes in name order, each decoded as it is reached.
    pub fn nodes(&self) -> LazyNodes<'_> {
        LazyNodes {
            bytes: &self.bytes,
            pos: self.start,
            left: self.len,
        }
    }

    /// The whole tree decoded.
    pub fn into_tree(self) -> Tree {
        Tree {
            nodes: self.nodes().collect(),
        }
    }
}

/// The nodes of a [`LazyTree`].
pub struct LazyNodes<'a> {
    bytes: &'a [u8],
    pos: usize,
    left: usize,
}

impl Iterator for LazyNodes<'_> {
    type Item = Node;

    fn next(&mut self) -> Option<Node> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // checked in LazyTree::new: a failure here would end the iteration early
        crate::tree_cbor::node_at(self.bytes, &mut self.pos)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;

    fn file(name: &[u8]) -> Node {
        let mut n = Node::new(Name(name.to_vec()), NodeKind::File);
        n.mode = 0o644;
        n.content = vec![BlobId(Id([3; 32]))];
        n
    }

    #[test]
    fn encode_sorts_and_decodes() {
        let mut t = Tree {
            nodes: vec![file(b"b"), file(b"a\xff")],
        };
        let b = t.encode();
        let d = Tree::decode(&b).unwrap();
        assert_eq!(d.nodes[0].name.0, b"a\xff");
        assert_eq!(d, t);
    }

    #[test]
    fn hostile_names_rejected() {
        for bad in [&b".."[..], b".", b"", b"a/b", b"a\0b", b"/abs"] {
            let t = Tree {
                nodes: vec![file(bad)],
            };
            let mut b = Vec::new();
            ciborium::into_writer(&t, &mut b).unwrap();
            assert!(
                Tree::decode(&b).is_err(),
                "{:?} accepted",
                bad.escape_ascii().to_string()
            );
        }
    }

    #[test]
    fn duplicates_and_unsorted_rejected() {
        for names in [[&b"a"[..], b"a"], [b"b", b"a"]] {
            let t = Tree {
                nodes: names.iter().map(|n| file(n)).collect(),
            };
            let mut b = Vec::new();
            ciborium::into_writer(&t, &mut b).unwrap();
            assert!(Tree::decode(&b).is_err());
            assert!(LazyTree::new(b).is_err());
        }
    }

    #[test]
    fn lazy_tree_yields_what_decode_does() {
        let mut t = Tree {
            nodes: [&b"b"[..], b"a", b"c\xff"].iter().map(|n| file(n)).collect(),
        };
        t.nodes[1].content = vec![BlobId(Id::from_slice(&[7; 32]))];
        let b = t.encode();
        assert_eq!(LazyTree::announced_len(&b), Some(3));
        let lazy = LazyTree::new(b.clone()).unwrap();
        assert_eq!(lazy.len(), 3);
        assert_eq!(lazy.nodes().collect::<Vec<_>>(), Tree::decode(&b).unwrap().nodes);
        assert_eq!(lazy.into_tree(), Tree::decode(&b).unwrap());
        // a valid tree in another encoder's shape (indefinite-length array) is still read
        let mut other = vec![0xa1, 0x65];
        other.extend_from_slice(b"nodes");
        other.push(0x9f);
        for n in &t.nodes {
            ciborium::into_writer(n, &mut other).unwrap();
        }
        other.push(0xff);
        assert_eq!(LazyTree::new(other).unwrap().into_tree(), t);
        // a truncated encoding is refused, not read short
        assert!(LazyTree::new(b[..b.len() - 1].to_vec()).is_err());
        assert!(LazyTree::new(b"junk".to_vec()).is_err());
    }

    #[test]
    fn json_shows_non_utf8_as_hex() {
        let n = file(b"caf\xe9");
        let j = serde_json::to_value(&n).unwrap();
        assert_eq!(j["name"]["hex"], "636166e9");
        let back: Node = serde_json::from_value(j).unwrap();
        assert_eq!(back.name.0, b"caf\xe9");
    }
}
