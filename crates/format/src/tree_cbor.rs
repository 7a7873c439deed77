//! A direct decoder for the CBOR that [`Tree::encode`] writes.
//!
//! Every backup compares the whole parent snapshot with the file system, so it decodes every
//! tree of that snapshot; through serde and ciborium that was the largest single cost of an
//! unchanged re-backup (field names matched as strings, a visitor call per value). This reads
//! the bytes the encoder produces straight into a [`Tree`].
//!
//! It is a fast path, not a second definition of the format: it accepts only the shapes the
//! encoder writes (definite lengths, struct fields as text keys, each field at most once,
//! no tags, no unknown fields, nothing after the tree) and returns `None` for anything else,
//! and the caller then decodes with ciborium, which stays the authority on what a tree is. So
//! whatever this accepts, ciborium decodes to the same tree (the property tests check that on
//! encoded trees and on mutations of them), and what it refuses costs only time.

use crate::id::{BlobId, Id, ID_LEN};
use crate::tree::{Bytes, Name, Node, NodeKind, Timestamp, Tree, Xattr};

const UINT: u8 = 0;
const NEGINT: u8 = 1;
const BYTES: u8 = 2;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;

/// Decode `b` as a tree if it has the encoder's shape; `None` otherwise (see the module doc).
pub(crate) fn decode(b: &[u8]) -> Option<Tree> {
    let mut c = Cursor { b, pos: 0 };
    let tree = c.tree()?;
    (c.pos == b.len()).then_some(tree)
}

/// Where the nodes of `b` start and how many there are, if `b` has the encoder's shape up to
/// its first node.
pub(crate) fn nodes_start(b: &[u8]) -> Option<(usize, usize)> {
    let mut c = Cursor { b, pos: 0 };
    let n = c.nodes_header()?;
    Some((c.pos, n))
}

/// Decode the node at `*pos` of `b` and move `*pos` past it.
pub(crate) fn node_at(b: &[u8], pos: &mut usize) -> Option<Node> {
    let mut c = Cursor { b, pos: *pos };
    let n = c.node()?;
    *pos = c.pos;
    Some(n)
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// An item's major type and argument; `None` for indefinite lengths and reserved values.
    fn head(&mut self) -> Option<(u8, u64)> {
        let ib = *self.b.get(self.pos)?;
        self.pos += 1;
        let arg = match ib & 0x1f {
            ai @ 0..=23 => u64::from(ai),
            24 => u64::from(self.take(1)?[0]),
            25 => u64::from(u16::from_be_bytes(self.take(2)?.try_into().ok()?)),
            26 => u64::from(u32::from_be_bytes(self.take(4)?.try_into().ok()?)),
            27 => u64::from_be_bytes(self.take(8)?.try_into().ok()?),
            _ => return None,
        };
        Some((ib >> 5, arg))
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn expect(&mut self, major: u8) -> Option<u64> {
        let (m, arg) = self.head()?;
        (m == major).then_some(arg)
    }

    /// The length of an array or map: each element takes at least a byte, so a length beyond
    /// the bytes left is refused before anything is allocated for it.
    fn len(&mut self, major: u8) -> Option<usize> {
        let n = usize::try_from(self.expect(major)?).ok()?;
        (n <= self.b.len() - self.pos).then_some(n)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.expect(BYTES)?).ok()?;
        self.take(n)
    }

    fn text(&mut self) -> Option<&'a str> {
        let n = usize::try_from(self.expect(TEXT)?).ok()?;
        std::str::from_utf8(self.take(n)?).ok()
    }

    fn u64(&mut self) -> Option<u64> {
        self.expect(UINT)
    }

    fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.u64()?).ok()
    }

    fn i64(&mut self) -> Option<i64> {
        let (m, arg) = self.head()?;
        let v = i64::try_from(arg).ok()?;
        match m {
            UINT => Some(v),
            NEGINT => Some(-1 - v),
            _ => None,
        }
    }

    fn id(&mut self) -> Option<BlobId> {
        let b = self.bytes()?;
        (b.len() == ID_LEN).then(|| BlobId(Id::from_slice(b)))
    }

    /// A tree's start, `{"nodes": [`: the number of nodes.
    fn nodes_header(&mut self) -> Option<usize> {
        if self.len(MAP)? != 1 || self.text()? != "nodes" {
            return None;
        }
        self.len(ARRAY)
    }

    fn tree(&mut self) -> Option<Tree> {
        let n = self.nodes_header()?;
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            nodes.push(self.node()?);
        }
        Some(Tree { nodes })
    }

    fn timestamp(&mut self) -> Option<Timestamp> {
        let (mut s, mut ns) = (None, None);
        for _ in 0..self.len(MAP)? {
            match self.text()? {
                "s" if s.is_none() => s = Some(self.i64()?),
                "ns" if ns.is_none() => ns = Some(self.u32()?),
                _ => return None,
            }
        }
        Some(Timestamp {
            s: s?,
            ns: ns.unwrap_or(0),
        })
    }

    fn xattr(&mut self) -> Option<Xattr> {
        let (mut name, mut value) = (None, None);
        for _ in 0..self.len(MAP)? {
            match self.text()? {
                "name" if name.is_none() => name = Some(Bytes(self.bytes()?.to_vec())),
                "value" if value.is_none() => value = Some(Bytes(self.bytes()?.to_vec())),
                _ => return None,
            }
        }
        Some(Xattr {
            name: name?,
            value: value?,
        })
    }

    fn node(&mut self) -> Option<Node> {
        let mut n = Node::new(Name::default(), NodeKind::File);
        // one bit per field seen: a repeated field is left to ciborium (which refuses it)
        let mut seen = 0u32;
        for _ in 0..self.len(MAP)? {
            let key = self.text()?;
            let bit = 1u32 << FIELDS.iter().position(|f| *f == key)?;
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            match key {
                "name" => n.name = Name(self.bytes()?.to_vec()),
                "kind" => {
                    n.kind = match self.text()? {
                        "file" => NodeKind::File,
                        "dir" => NodeKind::Dir,
                        "symlink" => NodeKind::Symlink,
                        "fifo" => NodeKind::Fifo,
                        "chardev" => NodeKind::Chardev,
                        "blockdev" => NodeKind::Blockdev,
                        _ => return None,
                    }
                }
                "mode" => n.mode = self.u32()?,
                "uid" => n.uid = self.u32()?,
                "gid" => n.gid = self.u32()?,
                "user" => n.user = Some(self.text()?.to_owned()),
                "group" => n.group = Some(self.text()?.to_owned()),
                "mtime" => n.mtime = self.timestamp()?,
                "atime" => n.atime = self.timestamp()?,
                "ctime" => n.ctime = self.timestamp()?,
                "size" => n.size = self.u64()?,
                "inode" => n.inode = self.u64()?,
                "dev" => n.dev = self.u64()?,
                "links" => n.links = self.u64()?,
                "rdev" => n.rdev = self.u64()?,
                "content" => {
                    let len = self.len(ARRAY)?;
                    n.content.reserve_exact(len);
                    for _ in 0..len {
                        n.content.push(self.id()?);
                    }
                }
                "subtree" => n.subtree = Some(self.id()?),
                "target" => n.target = Some(Bytes(self.bytes()?.to_vec())),
                "xattrs" => {
                    let len = self.len(ARRAY)?;
                    n.xattrs.reserve_exact(len);
                    for _ in 0..len {
                        n.xattrs.push(self.xattr()?);
                    }
                }
                "error" => n.error = Some(self.text()?.to_owned()),
                _ => return None,
            }
        }
        // the fields without a default must all be there
        (seen & REQUIRED == REQUIRED).then_some(n)
    }
}

/// [`Node`]'s fields as serde names them, in declaration order.
const FIELDS: [&str; 20] = [
    "name", "kind", "mode", "uid", "gid", "user", "group", "mtime", "atime", "ctime", "size", "inode", "dev",
    "links", "rdev", "content", "subtree", "target", "xattrs", "error",
];
/// name, kind, mode, uid, gid, mtime, atime and ctime.
const REQUIRED: u32 = 0b11111 | 0b111 << 7;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cbor<T: serde::Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    }

    fn ciborium_tree(b: &[u8]) -> Option<Tree> {
        ciborium::from_reader(b).ok()
    }

    fn node() -> impl Strategy<Value = Node> {
        let kinds = prop_oneof![
            Just(NodeKind::File),
            Just(NodeKind::Dir),
            Just(NodeKind::Symlink),
            Just(NodeKind::Fifo),
            Just(NodeKind::Chardev),
            Just(NodeKind::Blockdev),
        ];
        let ts =
            (any::<i64>(), prop_oneof![Just(0u32), any::<u32>()]).prop_map(|(s, ns)| Timestamp { s, ns });
        let small = || prop_oneof![Just(0u64), 1u64..300, any::<u64>()];
        let id = any::<[u8; 32]>().prop_map(|b| BlobId(Id(b)));
        let bytes = || proptest::collection::vec(any::<u8>(), 0..12);
        (
            (
                proptest::collection::vec(any::<u8>(), 1..16),
                kinds,
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
            ),
            (proptest::option::of(".{0,8}"), proptest::option::of(".{0,8}")),
            (ts.clone(), ts.clone(), ts),
            (small(), small(), small(), small(), small()),
            (
                proptest::collection::vec(id.clone(), 0..4),
                proptest::option::of(id),
                proptest::option::of(bytes()),
                proptest::collection::vec((bytes(), bytes()), 0..3),
                proptest::option::of(".{0,12}"),
            ),
        )
            .prop_map(
                |((name, kind, mode, uid, gid), (user, group), (mtime, atime, ctime), sizes, rest)| {
                    let (content, subtree, target, xattrs, error) = rest;
                    let mut n = Node::new(Name(name), kind);
                    (n.mode, n.uid, n.gid, n.user, n.group) = (mode, uid, gid, user, group);
                    (n.mtime, n.atime, n.ctime) = (mtime, atime, ctime);
                    (n.size, n.inode, n.dev, n.links, n.rdev) = sizes;
                    n.content = content;
                    n.subtree = subtree;
                    n.target = target.map(Bytes);
                    n.xattrs = xattrs
                        .into_iter()
                        .map(|(name, value)| Xattr {
                            name: Bytes(name),
                            value: Bytes(value),
                        })
                        .collect();
                    n.error = error;
                    n
                },
            )
    }

    fn tree() -> impl Strategy<Value = Tree> {
        proptest::collection::vec(node(), 0..6).prop_map(|nodes| Tree { nodes })
    }

    proptest! {
        /// Everything the encoder writes takes the fast path, and gives what ciborium gives.
        #[test]
        fn encoded_trees_decode_as_with_ciborium(t in tree()) {
            let b = cbor(&t);
            prop_assert_eq!(decode(&b), Some(t.clone()));
            prop_assert_eq!(ciborium_tree(&b), Some(t));
        }

        /// Damaged encodings: whatever the fast path accepts, ciborium decodes the same way.
        #[test]
        fn accepted_damage_decodes_as_with_ciborium(
            t in tree(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
        ) {
            let mut b = cbor(&t);
            for (at, byte, op) in edits {
                if b.is_empty() {
                    break;
                }
                let i = at.index(b.len());
                match op {
                    0 => b[i] = byte,
                    1 => b.insert(i, byte),
                    _ => b.truncate(i),
                }
            }
            if let Some(fast) = decode(&b) {
                prop_assert_eq!(ciborium_tree(&b), Some(fast));
            }
        }
    }

    /// Shapes the encoder does not write are left to ciborium, which accepts or refuses them.
    #[test]
    fn other_shapes_fall_back() {
        let mut n = Node::new(Name::from("a"), NodeKind::File);
        n.mode = 0o644;
        let t = Tree { nodes: vec![n] };
        let plain = cbor(&t);
        assert!(decode(&plain).is_some());

        // an unknown field (serde ignores it)
        let mut v: ciborium::Value = ciborium::from_reader(&plain[..]).unwrap();
        let nodes = v.as_map_mut().unwrap()[0].1.as_array_mut().unwrap();
        let node = nodes[0].as_map_mut().unwrap();
        node.push(("future".into(), 1.into()));
        let b = cbor(&v);
        assert!(decode(&b).is_none());
        assert_eq!(ciborium_tree(&b), Some(t.clone()));

        // a field given twice (serde refuses it)
        let mut v: ciborium::Value = ciborium::from_reader(&plain[..]).unwrap();
        let node = v.as_map_mut().unwrap()[0].1.as_array_mut().unwrap()[0]
            .as_map_mut()
            .unwrap();
        node.push(("mode".into(), 1.into()));
        let b = cbor(&v);
        assert!(decode(&b).is_none());
        assert!(ciborium_tree(&b).is_none());

        // a missing required field
        let mut v: ciborium::Value = ciborium::from_reader(&plain[..]).unwrap();
        let node = v.as_map_mut().unwrap()[0].1.as_array_mut().unwrap()[0]
            .as_map_mut()
            .unwrap();
        node.retain(|(k, _)| k.as_text() != Some("uid"));
        let b = cbor(&v);
        assert!(decode(&b).is_none());
        assert!(ciborium_tree(&b).is_none());

        // an indefinite-length array of nodes (0x9f .. 0xff)
        let mut b = plain.clone();
        let at = b.iter().position(|&x| x == 0x81).unwrap(); // array(1)
        b[at] = 0x9f;
        b.push(0xff);
        assert!(decode(&b).is_none());
        assert_eq!(ciborium_tree(&b), Some(t.clone()));

        // trailing bytes
        let mut b = plain.clone();
        b.push(0);
        assert!(decode(&b).is_none());

        // a length far beyond the input is refused before allocating
        assert!(decode(&[
            0xa1, 0x65, b'n', b'o', b'd', b'e', b's', 0x9b, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0
        ])
        .is_none());
    }
}
