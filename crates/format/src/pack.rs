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

use crate::id::{BlobId, Id, ID_LEN};
use crate::layout::{BlobKind, MAX_BLOB_SIZE, MAX_PACK_SIZE, SEAL_OVERHEAD};
use crate::FormatError;

const HEADER_MAGIC: &[u8; 4] = b"CPH1";
/// Bytes one entry takes in a pack header and in an index file.
pub const ENTRY_LEN: usize = 1 + ID_LEN + 4 + 4 + 4;

/// Where one blob sits in its pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub kind: BlobKind,
    pub id: BlobId,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
}

impl PackEntry {
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.kind.code());
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.raw_length.to_le_bytes());
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let kind = BlobKind::from_code(b[0])?;
        let id = BlobId(Id::from_slice(&b[1..]));
        let u = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let e = PackEntry {
            kind,
            id,
            offset: u(1 + ID_LEN),
            length: u(5 + ID_LEN),
            raw_length: u(9 + ID_LEN),
        };
        if (e.length as usize) < SEAL_OVERHEAD + 1 || e.raw_length > MAX_BLOB_SIZE {
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

    /// End offset of the blob in the pack.
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
/// `data_len` bytes of the pack without overlapping.
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
        if e.offset as u64 != expect {
            return Err(FormatError::malformed(
                WHAT,
                format!("entry {i} at {} expected {expect}", e.offset),
            ));
        }
        expect = e.end();
        out.push(e);
    }
    if expect != data_len {
        return Err(FormatError::malformed(
            WHAT,
            format!("entries cover {expect} bytes, pack holds {data_len}"),
        ));
    }
    Ok(out)
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
        PackEntry {
            kind: BlobKind::Data,
            id: BlobId(Id([i; 32])),
            offset: off,
            length: len,
            raw_length: 100,
        }
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
