//! 256-bit identifiers.
//!
//! Two kinds of id exist and the types keep them apart:
//! - **blob ids** ([`BlobId`]) are a *keyed* BLAKE3 hash of a blob's plaintext. Without the
//!   repository's id key they reveal nothing about content; with it they deduplicate.
//! - **storage names** ([`PackId`], [`IndexId`], [`SnapshotId`], [`KeyId`]) are the *unkeyed*
//!   BLAKE3 hash of the bytes stored in a file. Anyone (a server, a storage admin) can re-hash a
//!   file and compare with its name to verify integrity without any key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::FormatError;

/// Length of every id in bytes.
pub const ID_LEN: usize = 32;

/// Raw 32-byte id, shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; ID_LEN]);

impl Id {
    /// The id as hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex digits, as shown in listings.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// Parse 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, FormatError> {
        let mut out = [0u8; ID_LEN];
        if s.len() != 2 * ID_LEN {
            return Err(FormatError::BadId(s.to_string()));
        }
        hex::decode_to_slice(s, &mut out).map_err(|_| FormatError::BadId(s.to_string()))?;
        Ok(Id(out))
    }

    /// Read an id from the start of `b` (caller checked the length).
    pub(crate) fn from_slice(b: &[u8]) -> Self {
        let mut out = [0u8; ID_LEN];
        out.copy_from_slice(&b[..ID_LEN]);
        Id(out)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.short())
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 32-byte id")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Id, E> {
                Id::from_hex(v).map_err(E::custom)
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Id, E> {
                if v.len() != ID_LEN {
                    return Err(E::invalid_length(v.len(), &self));
                }
                Ok(Id::from_slice(v))
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(V)
        } else {
            d.deserialize_bytes(V)
        }
    }
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Id);

        impl $name {
            /// The id as 64 hex digits.
            pub fn to_hex(&self) -> String { self.0.to_hex() }
            /// The first 8 hex digits.
            pub fn short(&self) -> String { self.0.short() }
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; ID_LEN] { &(self.0).0 }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { fmt::Display::fmt(&self.0, f) }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.short())
            }
        }
        impl FromStr for $name {
            type Err = FormatError;
            fn from_str(s: &str) -> Result<Self, FormatError> { Id::from_hex(s).map($name) }
        }
    };
}

typed_id!(
    /// Keyed BLAKE3 of a blob's plaintext (data chunk or tree).
    BlobId
);
typed_id!(
    /// Unkeyed BLAKE3 of a pack file's bytes; the pack's storage name.
    PackId
);
typed_id!(
    /// Unkeyed BLAKE3 of an index file's bytes; its storage name.
    IndexId
);
typed_id!(
    /// Unkeyed BLAKE3 of a snapshot file's bytes; its storage name and the snapshot's id.
    SnapshotId
);
typed_id!(
    /// Unkeyed BLAKE3 of a key file's bytes; its storage name.
    KeyId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let id = Id([0xab; 32]);
        assert_eq!(Id::from_hex(&id.to_hex()).unwrap(), id);
        assert_eq!(id.short(), "abababab");
        assert!(Id::from_hex("abc").is_err());
        assert!(Id::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn serde_binary_and_text() {
        let id = BlobId(Id([7; 32]));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", "07".repeat(32)));
        let mut cbor = Vec::new();
        ciborium::into_writer(&id, &mut cbor).unwrap();
        assert_eq!(cbor.len(), 2 + 32); // bytes header + 32 bytes
        let back: BlobId = ciborium::from_reader(&cbor[..]).unwrap();
        assert_eq!(back, id);
    }
}
