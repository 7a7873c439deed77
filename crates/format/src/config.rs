//! The repository config and key files.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::id::Id;
use crate::layout::Compression;
use crate::FormatError;

/// Content-defined chunking parameters (FastCDC 2020, normalization level 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkerParams {
    /// 128 KiB / 512 KiB / 2 MiB: see docs/FORMAT.md "Chunking" for the measurements.
    fn default() -> Self {
        ChunkerParams {
            min_size: 128 << 10,
            avg_size: 512 << 10,
            max_size: 2 << 20,
        }
    }
}

impl ChunkerParams {
    pub fn validate(&self) -> Result<(), FormatError> {
        let ok = self.min_size >= 64
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size
            && self.avg_size.is_power_of_two()
            && self.min_size.is_multiple_of(2)
            && self.max_size.is_multiple_of(2)
            && self.avg_size <= 4 << 20
            && self.min_size <= 1 << 20
            && self.max_size <= 16 << 20;
        if ok {
            Ok(())
        } else {
            Err(FormatError::malformed(
                "config",
                format!("chunker parameters {self:?} out of range"),
            ))
        }
    }
}

/// The repository config, stored sealed (kind Config) under the fixed name `config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub version: u32,
    /// Random repository id; caches are keyed by it.
    pub id: Id,
    pub created: DateTime<FixedOffset>,
    pub chunker: ChunkerParams,
    /// Packs are closed once they reach this many bytes.
    pub pack_size: u32,
    pub compression: Compression,
    /// Compression level (zstd 1–22, zlib/lzma 0–9; ignored by lz4 and none).
    pub compression_level: i32,
    /// Reed–Solomon parity written beside each pack, in basis points of the pack (100 = 1 %;
    /// 0: none). Absent in configs from before parity (2026-12-06): none.
    #[serde(default)]
    pub parity: u32,
}

impl Config {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        #[allow(clippy::expect_used)]
        ciborium::into_writer(self, &mut out).expect("config serializes to a Vec");
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let c: Config = ciborium::from_reader(b).map_err(|e| FormatError::Decode {
            what: "config",
            detail: e.to_string(),
        })?;
        if c.version != crate::FORMAT_VERSION {
            return Err(FormatError::Unsupported {
                what: "config",
                found: c.version.to_string(),
                supported: "1".into(),
            });
        }
        c.chunker.validate()?;
        if c.pack_size < 1 << 20 || c.pack_size as u64 > crate::layout::MAX_PACK_SIZE / 2 {
            return Err(FormatError::malformed(
                "config",
                format!("pack size {} out of range", c.pack_size),
            ));
        }
        if c.parity > MAX_PARITY {
            return Err(FormatError::malformed(
                "config",
                format!(
                    "parity {} basis points out of range (at most {MAX_PARITY})",
                    c.parity
                ),
            ));
        }
        Ok(c)
    }
}

/// The most parity a repository may ask for, in basis points (50 %).
pub const MAX_PARITY: u32 = 5_000;

/// `KdfParams::algorithm` of a passphrase's key file.
pub const KDF_ARGON2ID: &str = "argon2id";
/// The most memory an argon2id key file may ask for (1 GiB): a hostile key file must not make
/// opening a repository exhaust a small machine.
pub const KDF_MAX_MEMORY_KIB: u32 = 1 << 20;
/// The most passes an argon2id key file may ask for.
pub const KDF_MAX_ITERATIONS: u32 = 10;
/// The most lanes an argon2id key file may ask for.
pub const KDF_MAX_PARALLELISM: u32 = 16;
/// `KdfParams::algorithm` of a generated key's file (256 random bits: no stretching).
pub const KDF_GENERATED_KEY: &str = "coffer-key";

/// How a key file's wrapping key is derived: argon2id for a passphrase, or `coffer-key` (a
/// generated 256-bit key, no parameters but the salt).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub algorithm: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    #[serde(with = "b64")]
    pub salt: Vec<u8>,
}

/// A key file (plain JSON under `keys/`): the master key material wrapped by a passphrase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub version: u32,
    pub created: DateTime<FixedOffset>,
    pub hostname: String,
    pub username: String,
    /// `full` today; `write-only` is reserved (docs/FORMAT.md "Write-only keys").
    pub kind: String,
    pub kdf: KdfParams,
    /// Sealed envelope (kind KeyWrap) of the master key material, base64.
    #[serde(with = "b64")]
    pub wrapped: Vec<u8>,
}

impl KeyFile {
    pub fn encode(&self) -> Vec<u8> {
        #[allow(clippy::expect_used)]
        let mut v = serde_json::to_vec_pretty(self).expect("key file serializes");
        v.push(b'\n');
        v
    }

    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let k: KeyFile = serde_json::from_slice(b).map_err(|e| FormatError::Decode {
            what: "key file",
            detail: e.to_string(),
        })?;
        if k.version != crate::FORMAT_VERSION {
            return Err(FormatError::Unsupported {
                what: "key file",
                found: k.version.to_string(),
                supported: "1".into(),
            });
        }
        let kdf = &k.kdf;
        let in_range = match kdf.algorithm.as_str() {
            // Refuse parameters that would make opening a hostile key file exhaust memory or time.
            // Bounds: at most 1 GiB and 10 passes (the default is 64 MiB and 3), 1 to 16 lanes,
            // and the 8 KiB per lane argon2 itself needs.
            KDF_ARGON2ID => {
                (1..=KDF_MAX_ITERATIONS).contains(&kdf.iterations)
                    && (1..=KDF_MAX_PARALLELISM).contains(&kdf.parallelism)
                    && (8 * kdf.parallelism..=KDF_MAX_MEMORY_KIB).contains(&kdf.memory_kib)
            }
            // A generated key (256 random bits) is not stretched: there is nothing to tune.
            KDF_GENERATED_KEY => kdf.memory_kib == 0 && kdf.iterations == 0 && kdf.parallelism == 0,
            other => {
                return Err(FormatError::Unsupported {
                    what: "key file kdf",
                    found: other.to_string(),
                    supported: format!("{KDF_ARGON2ID}, {KDF_GENERATED_KEY}"),
                })
            }
        };
        if !in_range || kdf.salt.len() < 16 {
            return Err(FormatError::malformed("key file", "kdf parameters out of range"));
        }
        Ok(k)
    }
}

mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}
