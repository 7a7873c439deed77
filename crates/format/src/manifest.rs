//! Snapshot manifests: the plaintext list of packs a snapshot needs.
//!
//! A coffer server cannot read snapshots, yet applies retention on its own (docs/FORMAT.md
//! "Server-side retention"). For that a client writes, before each snapshot, the file
//! `manifests/<SnapshotId>` naming every pack that holds a blob the snapshot uses. The server
//! learns which packs each snapshot needs and nothing else: pack names are hashes of
//! ciphertext, so the list says nothing about content beyond how snapshots share data.

use serde::{Deserialize, Serialize};

use crate::error::FormatError;
use crate::id::{PackId, SnapshotId};

/// Manifests above this size are refused (4 MiB holds 60,000 packs, ~1 TB of 16 MiB packs;
/// the cap is far above that).
pub const MAX_MANIFEST: usize = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub snapshot: SnapshotId,
    /// Sorted, no duplicates.
    pub packs: Vec<PackId>,
}

impl Manifest {
    pub fn new(snapshot: SnapshotId, packs: impl IntoIterator<Item = PackId>) -> Manifest {
        let mut packs: Vec<PackId> = packs.into_iter().collect();
        packs.sort();
        packs.dedup();
        Manifest {
            version: 1,
            snapshot,
            packs,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // serializing plain ids and integers cannot fail
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decode and check a manifest stored under `name` (the snapshot id it belongs to).
    pub fn decode(bytes: &[u8], name: &str) -> Result<Manifest, FormatError> {
        const WHAT: &str = "manifest";
        if bytes.len() > MAX_MANIFEST {
            return Err(FormatError::malformed(
                WHAT,
                format!("{} bytes is too large", bytes.len()),
            ));
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| FormatError::Decode {
            what: WHAT,
            detail: e.to_string(),
        })?;
        if m.version != 1 {
            return Err(FormatError::Unsupported {
                what: WHAT,
                found: m.version.to_string(),
                supported: "1".into(),
            });
        }
        if m.snapshot.to_hex() != name {
            return Err(FormatError::malformed(
                WHAT,
                "names another snapshot than its file name",
            ));
        }
        if m.packs.windows(2).any(|w| w[0] >= w[1]) {
            return Err(FormatError::malformed(WHAT, "packs are not sorted and unique"));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;

    #[test]
    fn round_trip_and_checks() {
        let s = SnapshotId(Id([7; 32]));
        let m = Manifest::new(s, [PackId(Id([2; 32])), PackId(Id([1; 32])), PackId(Id([2; 32]))]);
        assert_eq!(m.packs.len(), 2);
        let b = m.encode();
        assert_eq!(Manifest::decode(&b, &s.to_hex()).unwrap(), m);
        assert!(Manifest::decode(&b, &"0".repeat(64)).is_err());
        let mut bad = m.clone();
        bad.packs.reverse();
        assert!(Manifest::decode(&bad.encode(), &s.to_hex()).is_err());
        assert!(Manifest::decode(b"{", &s.to_hex()).is_err());
    }
}
