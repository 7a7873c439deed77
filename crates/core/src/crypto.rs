//! Keys, sealing and ids.
//!
//! - [`MasterKey`]: four independent random 256-bit keys — `data` seals blobs, snapshots and
//!   the config; `index` seals pack headers and index files; `id` keys the BLAKE3 blob ids;
//!   `chunker` derives the secret gear table of the chunker. They are kept apart so that a
//!   future write-only key can hold `id`, `index` and `chunker` but not `data`.
//! - Sealed envelope (scheme 1): `1 || nonce(24) || AES-256-GCM(subkey, nonce[12..24], ad, pt) || tag`,
//!   `subkey = BLAKE3-keyed(key, "coffer/v1/seal" || nonce[0..12])`. A fresh random 192-bit nonce per
//!   envelope makes a repeated (key, nonce) pair as likely as guessing a 96-bit value twice in a
//!   row, however many clients write at once; no counter is shared between machines.

use std::fmt;

use coffer_format::{
    associated_data, BlobId, Id, KdfParams, ObjectKind, SEAL_NONCE_LEN, SEAL_OVERHEAD, SEAL_SCHEME_SYMMETRIC,
    SEAL_TAG_LEN,
};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};

const KEY_LEN: usize = 32;

/// Fill `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) {
    // getrandom only fails if the OS has no entropy source at all; nothing safe can go on.
    #[allow(clippy::expect_used)]
    getrandom::fill(buf).expect("the operating system's random generator failed");
}

/// The repository's secret keys. Zeroized on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop, Serialize, Deserialize)]
pub struct MasterKey {
    #[serde(with = "key_bytes")]
    data: [u8; KEY_LEN],
    #[serde(with = "key_bytes")]
    index: [u8; KEY_LEN],
    #[serde(with = "key_bytes")]
    id: [u8; KEY_LEN],
    #[serde(with = "key_bytes")]
    chunker: [u8; KEY_LEN],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

mod key_bytes {
    use serde::{Deserializer, Serializer};
    pub fn serialize<S: Serializer>(k: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(k)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = [u8; 32];
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("32 key bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<[u8; 32], E> {
                v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V)
    }
}

impl MasterKey {
    /// Fresh random keys.
    pub fn generate() -> Self {
        let mut k = MasterKey {
            data: [0; 32],
            index: [0; 32],
            id: [0; 32],
            chunker: [0; 32],
        };
        random_bytes(&mut k.data);
        random_bytes(&mut k.index);
        random_bytes(&mut k.id);
        random_bytes(&mut k.chunker);
        k
    }

    /// The keyed id of a blob's plaintext.
    pub fn blob_id(&self, plaintext: &[u8]) -> BlobId {
        BlobId(Id(*blake3::keyed_hash(&self.id, plaintext).as_bytes()))
    }

    /// The chunker's secret gear table: 256 words from BLAKE3's XOF under the chunker key.
    pub fn gear_table(&self) -> Box<[u64; 256]> {
        let mut bytes = Zeroizing::new([0u8; 256 * 8]);
        blake3::Hasher::new_derive_key("coffer/v1 chunker gear table")
            .update(&self.chunker)
            .finalize_xof()
            .fill(&mut bytes[..]);
        let mut t = Box::new([0u64; 256]);
        for (i, w) in t.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            *w = u64::from_le_bytes(b);
        }
        t
    }

    fn key_for(&self, kind: ObjectKind) -> &[u8; KEY_LEN] {
        match kind {
            ObjectKind::PackHeader | ObjectKind::Index => &self.index,
            _ => &self.data,
        }
    }

    /// Seal `plaintext` as an object of `kind`; `extra_ad` is the blob id for blobs.
    pub fn seal(&self, kind: ObjectKind, extra_ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        seal_with(self.key_for(kind), kind, extra_ad, plaintext)
    }

    /// Open an envelope sealed by [`MasterKey::seal`] with the same kind and `extra_ad`.
    pub fn open(&self, kind: ObjectKind, extra_ad: &[u8], sealed: &[u8], what: &str) -> Result<Vec<u8>> {
        open_with(self.key_for(kind), kind, extra_ad, sealed, what)
    }

    /// CBOR of the key material, for wrapping in a key file.
    pub(crate) fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(160));
        #[allow(clippy::expect_used)]
        ciborium::into_writer(self, &mut *out).expect("key serializes to a Vec");
        out
    }

    pub(crate) fn from_bytes(b: &[u8], what: &str) -> Result<Self> {
        ciborium::from_reader(b)
            .map_err(|e| Error::integrity(what, format!("key material does not decode: {e}")))
    }
}

fn subkey(key: &[u8; KEY_LEN], nonce: &[u8]) -> LessSafeKey {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"coffer/v1/seal");
    h.update(&nonce[..12]);
    let mut k = *h.finalize().as_bytes();
    // AES-256 keys are 32 bytes; UnboundKey::new only fails on a wrong length.
    #[allow(clippy::expect_used)]
    let unbound = UnboundKey::new(&AES_256_GCM, &k).expect("32-byte AES-256 key");
    k.zeroize();
    LessSafeKey::new(unbound)
}

fn gcm_nonce(nonce: &[u8]) -> Nonce {
    let mut n = [0u8; 12];
    n.copy_from_slice(&nonce[12..24]);
    Nonce::assume_unique_for_key(n)
}

/// Seal under an explicit key (used for key files, whose key comes from the passphrase).
pub fn seal_with(key: &[u8; KEY_LEN], kind: ObjectKind, extra_ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
    out.push(SEAL_SCHEME_SYMMETRIC);
    let mut nonce = [0u8; SEAL_NONCE_LEN];
    random_bytes(&mut nonce);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let ad = associated_data(kind, extra_ad);
    let k = subkey(key, &nonce);
    // Sealing fails only for inputs over GCM's 64 GiB limit; blobs are capped far below.
    #[allow(clippy::expect_used)]
    let tag = k
        .seal_in_place_separate_tag(gcm_nonce(&nonce), Aad::from(&ad), &mut out[1 + SEAL_NONCE_LEN..])
        .expect("plaintext within AES-GCM limits");
    out.extend_from_slice(tag.as_ref());
    out
}

/// Open an envelope; any change to it, its kind or its id is an integrity error.
pub fn open_with(
    key: &[u8; KEY_LEN],
    kind: ObjectKind,
    extra_ad: &[u8],
    sealed: &[u8],
    what: &str,
) -> Result<Vec<u8>> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(Error::integrity(
            what,
            format!("sealed object of {} bytes is too short", sealed.len()),
        ));
    }
    if sealed[0] != SEAL_SCHEME_SYMMETRIC {
        return Err(Error::integrity(
            what,
            format!("unknown envelope scheme {}", sealed[0]),
        ));
    }
    let nonce = &sealed[1..1 + SEAL_NONCE_LEN];
    let mut buf = sealed[1 + SEAL_NONCE_LEN..].to_vec();
    let ad = associated_data(kind, extra_ad);
    let k = subkey(key, nonce);
    let n = k
        .open_in_place(gcm_nonce(nonce), Aad::from(&ad), &mut buf)
        .map_err(|_| {
            Error::integrity(
                what,
                "authentication failed (data damaged, or not what it claims to be)",
            )
        })?
        .len();
    buf.truncate(n);
    debug_assert_eq!(n + SEAL_TAG_LEN + SEAL_NONCE_LEN + 1, sealed.len());
    Ok(buf)
}

/// The unkeyed BLAKE3 hash that names stored files.
pub fn storage_id(bytes: &[u8]) -> Id {
    Id(*blake3::hash(bytes).as_bytes())
}

/// [`storage_id`] of the concatenation of `parts`.
pub fn storage_id_parts(parts: &[&[u8]]) -> Id {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p);
    }
    Id(*h.finalize().as_bytes())
}

/// Default argon2id cost: 64 MiB, 3 passes, 1 lane (fits a 1 GB VPS; ~0.2 s here).
pub fn default_kdf() -> KdfParams {
    let mut salt = vec![0u8; 32];
    random_bytes(&mut salt);
    KdfParams {
        algorithm: "argon2id".into(),
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
        salt,
    }
}

/// Derive the key-wrapping key from a passphrase.
pub fn derive_wrapping_key(password: &[u8], p: &KdfParams) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let params = argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, Some(KEY_LEN))
        .map_err(|e| Error::Invalid(format!("key file: bad argon2 parameters: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    a.hash_password_into(password, &p.salt, &mut out[..])
        .map_err(|e| Error::Invalid(format!("key file: argon2 failed: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kinds_and_ids_are_bound() {
        let k = MasterKey::generate();
        let id = k.blob_id(b"hello");
        let s = k.seal(ObjectKind::Data, id.as_bytes(), b"hello");
        assert_eq!(
            k.open(ObjectKind::Data, id.as_bytes(), &s, "t").unwrap(),
            b"hello"
        );
        // same bytes, other kind: refused (borg CVE-2023-36811)
        assert!(k.open(ObjectKind::Tree, id.as_bytes(), &s, "t").is_err());
        // other id: refused
        let other = k.blob_id(b"other");
        assert!(k.open(ObjectKind::Data, other.as_bytes(), &s, "t").is_err());
        // other key: refused
        assert!(MasterKey::generate()
            .open(ObjectKind::Data, id.as_bytes(), &s, "t")
            .is_err());
        // index objects use the index key, not the data key
        let si = k.seal(ObjectKind::Index, b"", b"x");
        assert!(open_with(&k.data, ObjectKind::Index, b"", &si, "t").is_err());
    }

    #[test]
    fn ids_are_keyed() {
        let a = MasterKey::generate();
        let b = MasterKey::generate();
        assert_ne!(a.blob_id(b"x"), b.blob_id(b"x"));
        assert_eq!(a.blob_id(b"x"), a.blob_id(b"x"));
        assert_ne!(*a.gear_table(), *b.gear_table());
    }

    #[test]
    fn debug_is_redacted() {
        let k = MasterKey::generate();
        assert_eq!(format!("{k:?}"), "MasterKey(<redacted>)");
    }

    #[test]
    fn key_material_round_trip() {
        let k = MasterKey::generate();
        let b = k.to_bytes();
        let k2 = MasterKey::from_bytes(&b, "t").unwrap();
        assert_eq!(k.blob_id(b"q"), k2.blob_id(b"q"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn seal_round_trip_and_bit_flips(data in proptest::collection::vec(any::<u8>(), 0..4096), flip in any::<usize>()) {
            let k = MasterKey::generate();
            let s = k.seal(ObjectKind::Snapshot, b"", &data);
            prop_assert_eq!(s.len(), data.len() + SEAL_OVERHEAD);
            prop_assert_eq!(&k.open(ObjectKind::Snapshot, b"", &s, "t").unwrap(), &data);
            let mut bad = s.clone();
            let bit = flip % (bad.len() * 8);
            bad[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(k.open(ObjectKind::Snapshot, b"", &bad, "t").is_err());
        }
    }
}
