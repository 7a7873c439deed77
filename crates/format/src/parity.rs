//! Parity files: Reed–Solomon recovery data for one pack (docs/FORMAT.md "Parity").
//!
//! ```text
//! parity = "CPA1" || pack id:32 || pack_len:u64le || shard_len:u32le
//!          || data_shards:u32le || parity_shards:u32le
//!          || check:16 * (data_shards + parity_shards) || header_check:16
//!          || parity shard_0 || … || parity shard_(parity_shards-1)       (shard_len each)
//! ```
//!
//! The pack's bytes are cut into `data_shards` shards of `shard_len` bytes (the last one
//! zero-padded). A check is the first 16 bytes of the BLAKE3 hash of one shard; it says which
//! shards are damaged, so that Reed–Solomon decoding treats them as erasures. `header_check`
//! covers every byte before it. This crate only lays the bytes out; `coffer-core` computes
//! and uses them. Nothing here is secret or sealed: parity repairs packs without any key.

use crate::id::{Id, PackId, ID_LEN};
use crate::FormatError;

pub const PARITY_MAGIC: &[u8; 4] = b"CPA1";
/// Length of one shard's check and of the header's check.
pub const CHECK_LEN: usize = 16;
/// Most data shards a pack is cut into (the shard length grows with the pack instead).
pub const MAX_DATA_SHARDS: u32 = 1024;
/// Shard lengths are multiples of this (the Reed–Solomon code works on 64-byte blocks).
pub const SHARD_ALIGN: u32 = 64;
/// Bytes before the checks.
const FIXED: usize = 4 + ID_LEN + 8 + 4 + 4 + 4;

/// How a pack of `pack_len` bytes is cut: `(shard_len, data_shards)`.
pub fn shard_layout(pack_len: u64) -> (u32, u32) {
    let per = pack_len.div_ceil(MAX_DATA_SHARDS as u64).max(1);
    let shard_len = per.div_ceil(SHARD_ALIGN as u64) * SHARD_ALIGN as u64;
    let data = pack_len.div_ceil(shard_len).max(1);
    (shard_len as u32, data as u32)
}

/// Parity shards for `data_shards` at `rate` (basis points: 100 = 1 %): at least 2, so a
/// damaged stretch that crosses a shard boundary is repaired too; never more than the data.
pub fn parity_shards(data_shards: u32, rate: u32) -> u32 {
    let want = (data_shards as u64 * rate as u64).div_ceil(10_000) as u32;
    want.max(2).min(data_shards.max(2))
}

/// A parity file's header: what it repairs and how the shards are cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParityHeader {
    pub pack: PackId,
    pub pack_len: u64,
    pub shard_len: u32,
    pub data_shards: u32,
    pub parity_shards: u32,
    /// One check per data shard, then one per parity shard.
    pub checks: Vec<[u8; CHECK_LEN]>,
}

impl ParityHeader {
    /// Bytes of the header including its own check: where the parity shards start.
    pub fn header_len(&self) -> usize {
        header_len(self.data_shards, self.parity_shards)
    }

    /// The whole file's length.
    pub fn file_len(&self) -> u64 {
        self.header_len() as u64 + self.parity_shards as u64 * self.shard_len as u64
    }

    /// The header's bytes without `header_check` (the caller appends it).
    pub fn encode_unchecked(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header_len());
        out.extend_from_slice(PARITY_MAGIC);
        out.extend_from_slice(self.pack.as_bytes());
        out.extend_from_slice(&self.pack_len.to_le_bytes());
        out.extend_from_slice(&self.shard_len.to_le_bytes());
        out.extend_from_slice(&self.data_shards.to_le_bytes());
        out.extend_from_slice(&self.parity_shards.to_le_bytes());
        for c in &self.checks {
            out.extend_from_slice(c);
        }
        out
    }

    /// Decode the header at the start of a parity file. The caller verifies `header_check`
    /// (returned with the header's covered length) with its hash function.
    pub fn decode(b: &[u8]) -> Result<(Self, [u8; CHECK_LEN], usize), FormatError> {
        const WHAT: &str = "parity file";
        if b.len() < FIXED + CHECK_LEN {
            return Err(FormatError::Truncated {
                what: WHAT,
                got: b.len(),
                need: FIXED + CHECK_LEN,
            });
        }
        if &b[..4] != PARITY_MAGIC {
            return Err(FormatError::Unsupported {
                what: WHAT,
                found: format!("{:?}", String::from_utf8_lossy(&b[..4])),
                supported: "CPA1".into(),
            });
        }
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&b[4..4 + ID_LEN]);
        let mut at = 4 + ID_LEN;
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&b[at..at + 8]);
        let pack_len = u64::from_le_bytes(len8);
        at += 8;
        let shard_len = u32_at(at);
        let data_shards = u32_at(at + 4);
        let parity_shards = u32_at(at + 8);
        // only the layout this build writes: anything else is damage or a forgery
        if pack_len == 0
            || pack_len > crate::MAX_PACK_SIZE
            || shard_layout(pack_len) != (shard_len, data_shards)
        {
            return Err(FormatError::malformed(
                WHAT,
                format!("{pack_len}-byte pack cut into {data_shards} shards of {shard_len} bytes"),
            ));
        }
        if parity_shards == 0 || parity_shards > parity_shards_max(data_shards) {
            return Err(FormatError::malformed(
                WHAT,
                format!("{parity_shards} parity shards for {data_shards} data shards"),
            ));
        }
        let covered = header_len(data_shards, parity_shards) - CHECK_LEN;
        if b.len() < covered + CHECK_LEN {
            return Err(FormatError::Truncated {
                what: WHAT,
                got: b.len(),
                need: covered + CHECK_LEN,
            });
        }
        let checks = b[FIXED..covered]
            .chunks_exact(CHECK_LEN)
            .map(|c| {
                let mut a = [0u8; CHECK_LEN];
                a.copy_from_slice(c);
                a
            })
            .collect();
        let mut check = [0u8; CHECK_LEN];
        check.copy_from_slice(&b[covered..covered + CHECK_LEN]);
        Ok((
            ParityHeader {
                pack: PackId(Id(id)),
                pack_len,
                shard_len,
                data_shards,
                parity_shards,
                checks,
            },
            check,
            covered,
        ))
    }
}

/// The most parity shards a writer makes for `data_shards` (at [`crate::MAX_PARITY`]).
fn parity_shards_max(data_shards: u32) -> u32 {
    parity_shards(data_shards, crate::MAX_PARITY)
}

fn header_len(data_shards: u32, parity_shards: u32) -> usize {
    FIXED + (data_shards as usize + parity_shards as usize) * CHECK_LEN + CHECK_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_are_cut_into_at_most_1024_aligned_shards_that_cover_them() {
        for len in [1u64, 63, 64, 65, 4096, 100_000, 16 << 20, (16 << 20) + 1, 1 << 30] {
            let (s, d) = shard_layout(len);
            assert!(s % SHARD_ALIGN == 0 && s > 0, "{len}");
            assert!((1..=MAX_DATA_SHARDS).contains(&d), "{len}");
            assert!(s as u64 * d as u64 >= len, "{len}: shards cover the pack");
            assert!((s as u64) * (d as u64 - 1) < len, "{len}: no empty shard");
        }
        assert_eq!(shard_layout(16 << 20), (16 << 10, 1024));
        assert_eq!(parity_shards(1024, 100), 11);
        assert_eq!(parity_shards(1, 100), 2);
        assert_eq!(parity_shards(16, 100), 2);
        assert_eq!(parity_shards(1024, crate::MAX_PARITY), 512);
    }

    #[test]
    fn a_header_round_trips_and_forged_layouts_are_refused() {
        let (shard_len, data_shards) = shard_layout(100_000);
        let h = ParityHeader {
            pack: PackId(Id([7; 32])),
            pack_len: 100_000,
            shard_len,
            data_shards,
            parity_shards: 3,
            checks: (0..data_shards + 3).map(|i| [i as u8; CHECK_LEN]).collect(),
        };
        let mut b = h.encode_unchecked();
        let covered = b.len();
        b.extend_from_slice(&[9; CHECK_LEN]);
        assert_eq!(b.len(), h.header_len());
        let (back, check, at) = ParityHeader::decode(&b).unwrap();
        assert_eq!((back, check, at), (h.clone(), [9; CHECK_LEN], covered));
        // a shard length that is not the one the pack's length gives
        let mut forged = b.clone();
        forged[4 + 32 + 8] ^= 0x40;
        assert!(ParityHeader::decode(&forged).is_err());
        // more parity shards than the most parity a repository may hold
        let mut forged = b.clone();
        forged[4 + 32 + 16..4 + 32 + 20].copy_from_slice(&(data_shards / 2 + 2).to_le_bytes());
        assert!(ParityHeader::decode(&forged).is_err());
        assert!(ParityHeader::decode(&b[..b.len() - 1]).is_err());
        assert!(ParityHeader::decode(b"CPA2").is_err());
    }
}
