//! Constants of format v1. **Do not modify**: changing any of these values breaks every
//! existing repository. A new layout gets a new version number instead.

use crate::FormatError;

/// The repository format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Length of the random nonce in a sealed envelope.
pub const SEAL_NONCE_LEN: usize = 24;
/// Length of the AES-GCM tag in a sealed envelope.
pub const SEAL_TAG_LEN: usize = 16;
/// `scheme(1) || nonce(24) || ciphertext || tag(16)`: bytes a sealed envelope adds.
pub const SEAL_OVERHEAD: usize = 1 + SEAL_NONCE_LEN + SEAL_TAG_LEN;
/// Envelope scheme 1: AES-256-GCM under a per-envelope subkey derived from a symmetric
/// repository key and the nonce (see docs/FORMAT.md "Sealed envelopes").
pub const SEAL_SCHEME_SYMMETRIC: u8 = 1;
/// Envelope scheme 2: sealed by a write-only key to the repository's X25519 public key.
pub const SEAL_SCHEME_SESSION: u8 = 2;

/// Largest pack this build accepts (offsets are u32).
pub const MAX_PACK_SIZE: u64 = 1 << 30;
/// Largest single blob (plaintext) this build accepts.
pub const MAX_BLOB_SIZE: u32 = 64 << 20;
/// Upper bound on a bundle's uncompressed bytes that readers accept (writers stay far below).
pub const MAX_BUNDLE_SIZE: u32 = 4 << 20;

/// What an encrypted object is. The code goes into the AEAD's associated data, so an object
/// of one kind can never be decrypted as another (borg CVE-2023-36811).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ObjectKind {
    /// A chunk of file content, inside a pack.
    Data = 0x01,
    /// A directory listing, inside a pack.
    Tree = 0x02,
    /// Small data blobs compressed and sealed together, inside a pack.
    Bundle = 0x03,
    /// The encrypted table of contents at the end of a pack.
    PackHeader = 0x10,
    /// An index file.
    Index = 0x11,
    /// A snapshot file.
    Snapshot = 0x12,
    /// The repository config file.
    Config = 0x13,
    /// The master key material inside a key file.
    KeyWrap = 0x20,
}

impl ObjectKind {
    /// Decode a code read from storage.
    pub fn from_code(c: u8) -> Result<Self, FormatError> {
        Ok(match c {
            0x01 => ObjectKind::Data,
            0x02 => ObjectKind::Tree,
            0x03 => ObjectKind::Bundle,
            0x10 => ObjectKind::PackHeader,
            0x11 => ObjectKind::Index,
            0x12 => ObjectKind::Snapshot,
            0x13 => ObjectKind::Config,
            0x20 => ObjectKind::KeyWrap,
            _ => {
                return Err(FormatError::malformed(
                    "object kind",
                    format!("unknown code {c:#04x}"),
                ))
            }
        })
    }
}

/// The two kinds of blob a pack holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    Data,
    Tree,
}

impl BlobKind {
    /// The AEAD object kind of this blob kind.
    pub fn object_kind(self) -> ObjectKind {
        match self {
            BlobKind::Data => ObjectKind::Data,
            BlobKind::Tree => ObjectKind::Tree,
        }
    }
    pub(crate) fn code(self) -> u8 {
        self.object_kind() as u8
    }
    pub(crate) fn from_code(c: u8) -> Result<Self, FormatError> {
        match ObjectKind::from_code(c)? {
            ObjectKind::Data => Ok(BlobKind::Data),
            ObjectKind::Tree => Ok(BlobKind::Tree),
            other => Err(FormatError::malformed(
                "blob kind",
                format!("{other:?} is not a blob"),
            )),
        }
    }
}

/// Compression of a blob's plaintext; the code is the first plaintext byte of every blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Stored as is (also used whenever compressing did not pay off).
    None,
    Zstd,
    Lz4,
    Zlib,
    Lzma,
}

impl Compression {
    pub fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Zstd => 1,
            Compression::Lz4 => 2,
            Compression::Zlib => 3,
            Compression::Lzma => 4,
        }
    }
    pub fn from_code(c: u8) -> Result<Self, FormatError> {
        Ok(match c {
            0 => Compression::None,
            1 => Compression::Zstd,
            2 => Compression::Lz4,
            3 => Compression::Zlib,
            4 => Compression::Lzma,
            _ => {
                return Err(FormatError::malformed(
                    "blob",
                    format!("unknown compression code {c}"),
                ))
            }
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
            Compression::Zlib => "zlib",
            Compression::Lzma => "lzma",
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "none" | "off" => Compression::None,
            "zstd" | "auto" => Compression::Zstd,
            "lz4" => Compression::Lz4,
            "zlib" => Compression::Zlib,
            "lzma" | "xz" => Compression::Lzma,
            _ => {
                return Err(format!(
                    "unknown compression {s:?} (choose zstd, lz4, zlib, lzma or none)"
                ))
            }
        })
    }
}

/// Associated data for an envelope: `"coffer" || version || kind || extra` where `extra` is
/// the blob id for blobs and empty for whole-file objects.
pub fn associated_data(kind: ObjectKind, extra: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(11 + extra.len());
    ad.extend_from_slice(b"coffer");
    ad.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    ad.push(kind as u8);
    ad.extend_from_slice(extra);
    ad
}
