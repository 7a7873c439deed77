//! Index files: which blob is in which pack.
//!
//! ```text
//! index   = "CIX1" || n_supersedes:u32le || index_id:32 * n_supersedes
//!                  || n_packs:u32le || pack*
//! pack    = pack_id:32 || n_entries:u32le || entry * n_entries     (entry: see pack.rs)
//! ```
//! The plaintext is compressed and sealed (kind Index) before storage. `supersedes` names index
//! files whose content this one fully contains, so that a rebuild or compaction can write the
//! new file first and delete the old ones afterwards.
//!
//! A file a full key wrote ends with a *vouch*: `0x01 || signature:64`, the full key's Ed25519
//! signature over everything before the `0x01` (docs/FORMAT.md "Vouched index files"). Write-only
//! keys can seal index files (they hold the index key) but cannot vouch: readers trust the
//! locations only vouched files list (or files they wrote themselves) for deduplication.

use crate::id::{Id, IndexId, PackId, ID_LEN};
use crate::pack::{check_bundles, PackEntry, ENTRY_LEN};
use crate::FormatError;

const MAGIC: &[u8; 4] = b"CIX1";

/// One pack's entries in an index file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexPack {
    pub id: PackId,
    pub entries: Vec<PackEntry>,
}

/// The decoded plaintext of an index file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexFile {
    pub supersedes: Vec<IndexId>,
    pub packs: Vec<IndexPack>,
}

impl IndexFile {
    pub fn encode(&self) -> Vec<u8> {
        let n: usize = self.packs.iter().map(|p| p.entries.len()).sum();
        let mut out =
            Vec::with_capacity(12 + self.supersedes.len() * ID_LEN + self.packs.len() * 36 + n * ENTRY_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.supersedes.len() as u32).to_le_bytes());
        for s in &self.supersedes {
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            out.extend_from_slice(p.id.as_bytes());
            out.extend_from_slice(&(p.entries.len() as u32).to_le_bytes());
            for e in &p.entries {
                e.encode_into(&mut out);
            }
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        const WHAT: &str = "index";
        let mut r = Reader { b, pos: 0 };
        let magic = r.take(4)?;
        if magic != MAGIC {
            return Err(FormatError::Unsupported {
                what: WHAT,
                found: format!("{:?}", String::from_utf8_lossy(magic)),
                supported: "CIX1".into(),
            });
        }
        let ns = r.u32()? as usize;
        let mut supersedes = Vec::with_capacity(ns.min(r.left() / ID_LEN));
        for _ in 0..ns {
            supersedes.push(IndexId(Id::from_slice(r.take(ID_LEN)?)));
        }
        let np = r.u32()? as usize;
        let mut packs = Vec::with_capacity(np.min(r.left() / (ID_LEN + 4)));
        for _ in 0..np {
            let id = PackId(Id::from_slice(r.take(ID_LEN)?));
            let ne = r.u32()? as usize;
            let mut entries = Vec::with_capacity(ne.min(r.left() / ENTRY_LEN));
            for _ in 0..ne {
                entries.push(PackEntry::decode(r.take(ENTRY_LEN)?)?);
            }
            check_bundles(WHAT, &entries)?;
            packs.push(IndexPack { id, entries });
        }
        if r.left() != 0 {
            return Err(FormatError::malformed(
                WHAT,
                format!("{} trailing bytes", r.left()),
            ));
        }
        Ok(IndexFile { supersedes, packs })
    }

    /// The plaintext of a vouched file: the body and its vouch.
    pub fn encode_vouched(body: Vec<u8>, signature: &[u8; VOUCH_LEN]) -> Vec<u8> {
        let mut out = body;
        out.push(VOUCH_MARK);
        out.extend_from_slice(signature);
        out
    }

    /// Decode a plaintext that may end with a vouch: the file, the body the vouch signs and
    /// the signature (`None` for a file without one).
    pub fn decode_vouched(b: &[u8]) -> Result<(Self, &[u8], Option<Vouch>), FormatError> {
        if let Some(split) = b.len().checked_sub(VOUCH_LEN + 1) {
            if b[split] == VOUCH_MARK {
                if let Ok(file) = Self::decode(&b[..split]) {
                    let mut sig = [0u8; VOUCH_LEN];
                    sig.copy_from_slice(&b[split + 1..]);
                    return Ok((file, &b[..split], Some(sig)));
                }
            }
        }
        Ok((Self::decode(b)?, b, None))
    }
}

/// Length of an index file's vouch signature.
pub const VOUCH_LEN: usize = 64;
/// A vouch: a full key's Ed25519 signature.
pub type Vouch = [u8; VOUCH_LEN];
const VOUCH_MARK: u8 = 0x01;

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.left() < n {
            return Err(FormatError::Truncated {
                what: "index",
                got: self.b.len(),
                need: self.pos + n,
            });
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::BlobId;
    use crate::layout::BlobKind;

    #[test]
    fn round_trip_and_truncation() {
        let f = IndexFile {
            supersedes: vec![IndexId(Id([9; 32]))],
            packs: vec![IndexPack {
                id: PackId(Id([1; 32])),
                entries: vec![PackEntry::own(BlobKind::Tree, BlobId(Id([2; 32])), 0, 77, 30)],
            }],
        };
        let b = f.encode();
        assert_eq!(IndexFile::decode(&b).unwrap(), f);
        for cut in 0..b.len() {
            assert!(
                IndexFile::decode(&b[..cut]).is_err(),
                "truncated at {cut} accepted"
            );
        }
        let mut huge = b.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(IndexFile::decode(&huge).is_err());
    }
}
