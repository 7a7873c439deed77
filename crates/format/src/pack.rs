//! Pack files and their table of contents.
//!
//! ```text
//! pack      = blob_0 || blob_1 || ... || blob_n-1 || sealed(header) || header_len:u32le
//! blob_i    = sealed envelope of (compression:u8 || payload), kind Data or Tree, AD bound to its id
//! header    = "CPH1" || count:u32le || entry * count
//! entry     = kind:u8 || id:32 || offset:u32le || length:u32le || raw_length:u32le   (45 bytes)
//! ```
//! `offset`/`length` locate the sealed blob in the pack; `raw_length` is the plaintext length
//! of the uncompressed content (the chunk size). Entries are in pack order and never overlap.
//!
//! A *bundle* (entry kind 3) is one envelope holding several small data blobs compressed
//! together; the member entries (kind 4) that follow it locate each blob in the bundle's
//! uncompressed bytes (`offset`, and `length` = `raw_length`), in order and without gaps.

use crate::id::{BlobId, Id, ID_LEN};
use crate::layout::{BlobKind, MAX_BLOB_SIZE, MAX_BUNDLE_SIZE, MAX_PACK_SIZE, SEAL_OVERHEAD};
use crate::FormatError;

const HEADER_MAGIC: &[u8; 4] = b"CPH1";
/// Bytes one entry takes in a pack header and in an index file.
pub const ENTRY_LEN: usize = 1 + ID_LEN + 4 + 4 + 4;

/// Entry kind code of a bundle. A bundle's plaintext is
/// `compression:u8 || raw_length:u32le || payload` (its members' bytes back to back, compressed).
const BUNDLE_CODE: u8 = 3;
/// Entry kind code of a data blob inside the bundle before it.
const MEMBER_CODE: u8 = 4;

/// How a pack entry's blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Place {
    /// In its own envelope: `offset`/`length` locate the envelope in the pack.
    Own,
    /// A bundle: an envelope (object kind Bundle) holding the members that follow it. `kind`
    /// is Data, `id` the keyed hash of the members' ids ([`bundle_id_input`]), `raw_length`
    /// the length of the members' bytes together.
    Bundle,
    /// A data blob inside the bundle entry before it: `offset` is where its bytes start in
    /// the bundle's uncompressed bytes, `length` and `raw_length` its size.
    Member,
}

/// Where one blob sits in its pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub kind: BlobKind,
    pub id: BlobId,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
    pub place: Place,
}

/// What a bundle's id is the keyed hash of (with the blob id key): a domain tag, then its
/// members' ids in order. The tag keeps it apart from any data blob's id.
pub fn bundle_id_input<'a>(members: impl IntoIterator<Item = &'a BlobId>) -> Vec<u8> {
    let mut b = BUNDLE_ID_TAG.to_vec();
    for id in members {
        b.extend_from_slice(id.as_bytes());
    }
    b
}

const BUNDLE_ID_TAG: &[u8] = b"coffer/v1/bundle\0";

impl PackEntry {
    /// An entry for a blob in its own envelope.
    pub fn own(kind: BlobKind, id: BlobId, offset: u32, length: u32, raw_length: u32) -> Self {
        PackEntry {
            kind,
            id,
            offset,
            length,
            raw_length,
            place: Place::Own,
        }
    }

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(match self.place {
            Place::Own => self.kind.code(),
            Place::Bundle => BUNDLE_CODE,
            Place::Member => MEMBER_CODE,
        });
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.raw_length.to_le_bytes());
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let (kind, place) = match b[0] {
            BUNDLE_CODE => (BlobKind::Data, Place::Bundle),
            MEMBER_CODE => (BlobKind::Data, Place::Member),
            c => (BlobKind::from_code(c)?, Place::Own),
        };
        let id = BlobId(Id::from_slice(&b[1..]));
        let u = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let e = PackEntry {
            kind,
            id,
            offset: u(1 + ID_LEN),
            length: u(5 + ID_LEN),
            raw_length: u(9 + ID_LEN),
            place,
        };
        let sizes_ok = match place {
            Place::Own => e.length as usize > SEAL_OVERHEAD,
            Place::Bundle => e.length as usize > SEAL_OVERHEAD && e.raw_length <= MAX_BUNDLE_SIZE,
            Place::Member => e.length == e.raw_length,
        };
        if !sizes_ok || e.raw_length > MAX_BLOB_SIZE {
            return Err(FormatError::malformed(
                "pack entry",
                format!(
                    "blob {} has impossible sizes {}/{}",
                    e.id.short(),
                    e.length,
                    e.raw_length
                ),
            ));
        }
        Ok(e)
    }

    /// End offset of the blob in the pack (of a member: in its bundle's bytes).
    pub fn end(&self) -> u64 {
        self.offset as u64 + self.length as u64
    }
}

/// Encode a pack header's plaintext.
pub fn encode_header(entries: &[PackEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + entries.len() * ENTRY_LEN);
    out.extend_from_slice(HEADER_MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        e.encode_into(&mut out);
    }
    out
}

/// Decode a pack header's plaintext and check that the entries tile the first
/// `data_len` bytes of the pack without overlapping, and that each bundle's members follow it
/// and tile its uncompressed bytes.
pub fn decode_header(b: &[u8], data_len: u64) -> Result<Vec<PackEntry>, FormatError> {
    const WHAT: &str = "pack header";
    if b.len() < 8 {
        return Err(FormatError::Truncated {
            what: WHAT,
            got: b.len(),
            need: 8,
        });
    }
    if &b[..4] != HEADER_MAGIC {
        return Err(FormatError::Unsupported {
            what: WHAT,
            found: format!("{:?}", String::from_utf8_lossy(&b[..4])),
            supported: "CPH1".into(),
        });
    }
    let n = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
    if b.len() != 8 + n * ENTRY_LEN {
        return Err(FormatError::malformed(
            WHAT,
            format!("{n} entries but {} bytes", b.len()),
        ));
    }
    let mut out = Vec::with_capacity(n);
    let mut expect = 0u64;
    for i in 0..n {
        let e = PackEntry::decode(&b[8 + i * ENTRY_LEN..8 + (i + 1) * ENTRY_LEN])?;
        if e.place != Place::Member {
            if e.offset as u64 != expect {
                return Err(FormatError::malformed(
                    WHAT,
                    format!("entry {i} at {} expected {expect}", e.offset),
                ));
            }
            expect = e.end();
        }
        out.push(e);
    }
    check_bundles(WHAT, &out)?;
    if expect != data_len {
        return Err(FormatError::malformed(
            WHAT,
            format!("entries cover {expect} bytes, pack holds {data_len}"),
        ));
    }
    Ok(out)
}

/// The envelopes of a pack's entries, in order: each blob in its own envelope with no members,
/// each bundle with its member entries. Entries must have passed [`decode_header`]'s checks
/// (members follow their bundle); a member without one is skipped.
pub fn envelopes(entries: &[PackEntry]) -> impl Iterator<Item = (&PackEntry, &[PackEntry])> {
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < entries.len() {
            let e = &entries[i];
            let n = entries[i + 1..]
                .iter()
                .take_while(|m| m.place == Place::Member)
                .count();
            let at = i;
            i += 1 + n;
            if e.place != Place::Member {
                return Some((e, &entries[at + 1..at + 1 + n]));
            }
        }
        None
    })
}

/// Check that every member entry follows a bundle entry (or another member) and that each
/// bundle's members tile its uncompressed bytes from 0 to its `raw_length`, in order.
pub(crate) fn check_bundles(what: &'static str, entries: &[PackEntry]) -> Result<(), FormatError> {
    // the bundle being tiled: (entry number, its length, bytes its members cover so far)
    let mut bundle: Option<(usize, u64, u64)> = None;
    let done = |bundle: Option<(usize, u64, u64)>| match bundle {
        Some((at, len, covered)) if covered != len || len == 0 => Err(FormatError::malformed(
            what,
            format!("the members of bundle entry {at} cover {covered} of its {len} bytes"),
        )),
        _ => Ok(()),
    };
    for (i, e) in entries.iter().enumerate() {
        match (e.place, bundle.as_mut()) {
            (Place::Member, Some((_, _, covered))) if e.offset as u64 == *covered => {
                *covered = e.end();
            }
            (Place::Member, _) => {
                return Err(FormatError::malformed(
                    what,
                    format!("member entry {i} at {} does not follow its bundle", e.offset),
                ))
            }
            (place, _) => {
                done(bundle.take())?;
                if place == Place::Bundle {
                    bundle = Some((i, e.raw_length as u64, 0));
                }
            }
        }
    }
    done(bundle)
}

/// Split a pack's trailer: returns (offset of the sealed header, its length).
pub fn split_trailer(pack_len: u64, last4: &[u8]) -> Result<(u64, u32), FormatError> {
    const WHAT: &str = "pack trailer";
    if pack_len > MAX_PACK_SIZE {
        return Err(FormatError::malformed(
            WHAT,
            format!("pack of {pack_len} bytes is larger than any coffer writes"),
        ));
    }
    if pack_len < 4 || last4.len() != 4 {
        return Err(FormatError::Truncated {
            what: WHAT,
            got: pack_len as usize,
            need: 4,
        });
    }
    let hlen = u32::from_le_bytes([last4[0], last4[1], last4[2], last4[3]]);
    if (hlen as u64) + 4 > pack_len || (hlen as usize) < SEAL_OVERHEAD + 8 {
        return Err(FormatError::malformed(
            WHAT,
            format!("header length {hlen} in a pack of {pack_len} bytes"),
        ));
    }
    Ok((pack_len - 4 - hlen as u64, hlen))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u8, off: u32, len: u32) -> PackEntry {
        PackEntry::own(BlobKind::Data, BlobId(Id([i; 32])), off, len, 100)
    }

    fn with(e: PackEntry, place: Place, raw: u32) -> PackEntry {
        PackEntry {
            place,
            raw_length: raw,
            ..e
        }
    }

    #[test]
    fn bundles_and_their_members_round_trip_and_tile() {
        let bundle = with(entry(9, 100, 60), Place::Bundle, 30);
        let m = |i, off, len| with(entry(i, off, len), Place::Member, len);
        let es = vec![
            entry(1, 0, 100),
            bundle,
            m(2, 0, 10),
            m(3, 10, 20),
            entry(4, 160, 50),
        ];
        let b = encode_header(&es);
        assert_eq!(decode_header(&b, 210).unwrap(), es);
        // members that leave a gap, overlap, fall short or come without a bundle are refused
        for bad in [
            vec![entry(1, 0, 100), bundle, m(2, 0, 10), m(3, 11, 19)],
            vec![entry(1, 0, 100), bundle, m(2, 0, 10), m(3, 5, 25)],
            vec![entry(1, 0, 100), bundle, m(2, 0, 10)],
            vec![entry(1, 0, 100), bundle],
            vec![
                entry(1, 0, 100),
                m(2, 0, 10),
                with(entry(5, 100, 60), Place::Bundle, 0),
            ],
            vec![entry(1, 0, 100), bundle, m(2, 0, 10), m(3, 10, 30)],
        ] {
            let total = 160;
            assert!(decode_header(&encode_header(&bad), total).is_err(), "{bad:?}");
        }
        // a member's length and raw length must agree
        let mut odd = m(2, 0, 30);
        odd.raw_length = 31;
        assert!(decode_header(&encode_header(&[entry(1, 0, 100), bundle, odd]), 160).is_err());
    }

    #[test]
    fn header_round_trip() {
        let es = vec![entry(1, 0, 100), entry(2, 100, 50)];
        let b = encode_header(&es);
        assert_eq!(decode_header(&b, 150).unwrap(), es);
        // gaps, overlaps and wrong totals are refused
        assert!(decode_header(&b, 151).is_err());
        let bad = encode_header(&[entry(1, 0, 100), entry(2, 90, 60)]);
        assert!(decode_header(&bad, 150).is_err());
        assert!(decode_header(&b[..b.len() - 1], 150).is_err());
    }

    #[test]
    fn trailer_bounds() {
        assert!(split_trailer(3, &[0, 0, 0]).is_err());
        assert!(split_trailer(100, &200u32.to_le_bytes()).is_err());
        assert_eq!(split_trailer(1000, &100u32.to_le_bytes()).unwrap(), (896, 100));
    }
}
