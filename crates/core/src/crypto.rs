//! Keys, sealing and ids.
//!
//! - [`MasterKey`]: four independent random 256-bit keys — `data` seals blobs, snapshots and
//!   the config; `index` seals pack headers and index files; `id` keys the BLAKE3 blob ids;
//!   `chunker` derives the secret gear table of the chunker. A write-only key holds `id`,
//!   `index` and `chunker` and the repository's X25519 public key, but not `data`.
//! - Sealed envelope (scheme 1): `1 || nonce(24) || AES-256-GCM(subkey, nonce[12..24], ad, pt) || tag`,
//!   `subkey = BLAKE3-keyed(key, "coffer/v1/seal" || nonce[0..12])`. A fresh random 192-bit nonce per
//!   envelope makes a repeated (key, nonce) pair as likely as guessing a 96-bit value twice in a
//!   row, however many clients write at once; no counter is shared between machines.
//! - Scheme 2 (written by write-only keys): `2 || ephemeral X25519 public key(32) || nonce(24) ||
//!   ciphertext || tag`, the scheme-1 body under a session key derived from the X25519 shared
//!   secret of the process's ephemeral key and the repository public key; only a full key (which
//!   derives the matching private key from `data`) opens it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use coffer_format::{
    associated_data, BlobId, Id, KdfParams, ObjectKind, SEAL_NONCE_LEN, SEAL_OVERHEAD, SEAL_SCHEME_SESSION,
    SEAL_SCHEME_SYMMETRIC, SEAL_TAG_LEN,
};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

const KEY_LEN: usize = 32;

/// Fill `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) {
    // getrandom only fails if the OS has no entropy source at all; nothing safe can go on.
    #[allow(clippy::expect_used)]
    getrandom::fill(buf).expect("the operating system's random generator failed");
}

/// The repository's keys. Zeroized on drop; never printed.
///
/// A **full** key holds all four secret keys. A **write-only** key has no `data` key: it
/// holds `index`, `id` and `chunker` and the repository's X25519 public key, so it can
/// chunk, deduplicate against the index and seal new data (envelope scheme 2, to the public
/// key), but open no data blob, tree, snapshot or config (docs/FORMAT.md "Write-only keys").
pub struct MasterKey {
    data: Option<[u8; KEY_LEN]>,
    index: [u8; KEY_LEN],
    id: [u8; KEY_LEN],
    chunker: [u8; KEY_LEN],
    /// The repository's X25519 public key (derived from `data` for a full key).
    public: [u8; KEY_LEN],
    /// The Ed25519 public key index files are vouched with (derived from `data` for a full
    /// key; `None` for a write-only key made before vouching existed).
    vouch: Option<[u8; KEY_LEN]>,
    /// Sender side of scheme 2: this process's ephemeral key pair and session key.
    session: OnceLock<Session>,
    /// Receiver side of scheme 2: session keys by ephemeral public key.
    sessions: Mutex<HashMap<[u8; KEY_LEN], Zeroizing<[u8; KEY_LEN]>>>,
}

struct Session {
    ephemeral_public: [u8; KEY_LEN],
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        if let Some(d) = self.data.as_mut() {
            d.zeroize();
        }
        self.index.zeroize();
        self.id.zeroize();
        self.chunker.zeroize();
    }
}

impl Clone for MasterKey {
    fn clone(&self) -> Self {
        MasterKey::assemble(
            self.data,
            self.index,
            self.id,
            self.chunker,
            Some(self.public),
            self.vouch,
        )
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// 32 key bytes, serialized as a CBOR byte string; zeroized when dropped, and never copied
/// implicitly (it was `Copy`: copies outlived the zeroized original).
struct KeyBytes([u8; KEY_LEN]);

impl Drop for KeyBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Serialize for KeyBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for KeyBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = KeyBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("32 key bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<KeyBytes, E> {
                Ok(KeyBytes(
                    v.try_into().map_err(|_| E::invalid_length(v.len(), &self))?,
                ))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// What a key file wraps (CBOR). Full keys: `data`, `index`, `id`, `chunker`. Write-only
/// keys: no `data`; `public` and the repository's `config` (which is sealed with `data`).
#[derive(Serialize, Deserialize)]
struct KeyMaterial {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<KeyBytes>,
    index: KeyBytes,
    id: KeyBytes,
    chunker: KeyBytes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public: Option<KeyBytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<ByteVec>,
    /// Write-only keys: the full key's Ed25519 public key, to tell the index files a full key
    /// vouched for (absent from keys made before vouching: those trust only their own files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vouch: Option<KeyBytes>,
}

// (each KeyBytes zeroizes itself when the material is dropped)

/// Bytes serialized as a CBOR byte string (not an array of numbers).
struct ByteVec(Vec<u8>);

impl Serialize for ByteVec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ByteVec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteVec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<ByteVec, E> {
                Ok(ByteVec(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> std::result::Result<ByteVec, E> {
                Ok(ByteVec(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// The X25519 secret a full key derives from its `data` key: only full keys can open
/// scheme-2 envelopes.
fn recipient_secret(data: &[u8; KEY_LEN]) -> StaticSecret {
    let mut h = blake3::Hasher::new_derive_key("coffer/v1 x25519 recipient");
    h.update(data);
    StaticSecret::from(*h.finalize().as_bytes())
}

/// The scheme-2 session key for one ephemeral key and the repository public key.
fn session_key(
    shared: &[u8; KEY_LEN],
    ephemeral_public: &[u8; KEY_LEN],
    public: &[u8; KEY_LEN],
) -> Zeroizing<[u8; KEY_LEN]> {
    let mut h = blake3::Hasher::new_derive_key("coffer/v1 session key");
    h.update(shared);
    h.update(ephemeral_public);
    h.update(public);
    Zeroizing::new(*h.finalize().as_bytes())
}

/// The Ed25519 key a full key signs its index files with, derived from its `data` key: a
/// write-only key (which has no `data`) cannot vouch for an index file.
fn vouch_signing_key(data: &[u8; KEY_LEN]) -> ed25519_dalek::SigningKey {
    let mut h = blake3::Hasher::new_derive_key("coffer/v1 index vouch key");
    h.update(data);
    let seed = Zeroizing::new(*h.finalize().as_bytes());
    ed25519_dalek::SigningKey::from_bytes(&seed)
}

/// What a vouch signs: a digest of the repository's id and the index file's encoded body (a
/// vouch holds in one repository only, even where two share keys).
fn vouch_message(repo_id: &[u8], body: &[u8]) -> [u8; KEY_LEN] {
    *blake3::Hasher::new_derive_key("coffer/v1 index vouch message")
        .update(repo_id)
        .update(body)
        .finalize()
        .as_bytes()
}

/// Length of the scheme-2 prefix: scheme byte and ephemeral public key.
const SESSION_PREFIX: usize = 1 + KEY_LEN;
/// The most an envelope adds to its plaintext (a write-only key's session prefix, the
/// nonce, the tag).
pub const MAX_SEAL_OVERHEAD: usize = SESSION_PREFIX + SEAL_NONCE_LEN + SEAL_TAG_LEN;

impl MasterKey {
    fn assemble(
        data: Option<[u8; KEY_LEN]>,
        index: [u8; KEY_LEN],
        id: [u8; KEY_LEN],
        chunker: [u8; KEY_LEN],
        public: Option<[u8; KEY_LEN]>,
        vouch: Option<[u8; KEY_LEN]>,
    ) -> MasterKey {
        let public = match (&data, public) {
            (Some(d), _) => PublicKey::from(&recipient_secret(d)).to_bytes(),
            (None, Some(p)) => p,
            (None, None) => [0; KEY_LEN],
        };
        let vouch = match &data {
            Some(d) => Some(vouch_signing_key(d).verifying_key().to_bytes()),
            None => vouch,
        };
        MasterKey {
            data,
            index,
            id,
            chunker,
            public,
            vouch,
            session: OnceLock::new(),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Fresh random keys.
    pub fn generate() -> Self {
        let mut k = [[0u8; KEY_LEN]; 4];
        for part in k.iter_mut() {
            random_bytes(part);
        }
        let key = MasterKey::assemble(Some(k[0]), k[1], k[2], k[3], None, None);
        k.zeroize();
        key
    }

    /// Whether this key can read data, trees, snapshots and the config (a full key).
    pub fn can_read(&self) -> bool {
        self.data.is_some()
    }

    /// The write-only counterpart of this (full) key.
    pub fn write_only(&self) -> MasterKey {
        MasterKey::assemble(
            None,
            self.index,
            self.id,
            self.chunker,
            Some(self.public),
            self.vouch,
        )
    }

    /// A key for files this client keeps for itself (its change cache), derived from the
    /// index key that full and write-only keys share.
    pub fn local_cache_key(&self, purpose: &str) -> Zeroizing<[u8; KEY_LEN]> {
        let mut h = blake3::Hasher::new_derive_key("coffer/v1 local cache key");
        h.update(&self.index);
        h.update(purpose.as_bytes());
        Zeroizing::new(*h.finalize().as_bytes())
    }

    /// A full key's signature over an index file's encoded body (`None` for a write-only
    /// key): what makes readers trust the locations it lists (docs/FORMAT.md "Vouched index
    /// files").
    pub fn vouch(&self, repo_id: &[u8], body: &[u8]) -> Option<[u8; 64]> {
        use ed25519_dalek::Signer;
        let d = self.data.as_ref()?;
        Some(
            vouch_signing_key(d)
                .sign(&vouch_message(repo_id, body))
                .to_bytes(),
        )
    }

    /// Whether this key can tell a full key's vouch: false only for a write-only key made
    /// before vouching existed, which then deduplicates against nothing but its own listings.
    pub fn can_check_vouches(&self) -> bool {
        self.vouch.is_some()
    }

    /// Whether `sig` is a full key's vouch for `body` (always false for a write-only key made
    /// before vouching existed: it knows no public key to check with).
    pub fn is_vouched(&self, repo_id: &[u8], body: &[u8], sig: &[u8; 64]) -> bool {
        let Some(Ok(public)) = self.vouch.map(|v| ed25519_dalek::VerifyingKey::from_bytes(&v)) else {
            return false;
        };
        public
            .verify_strict(
                &vouch_message(repo_id, body),
                &ed25519_dalek::Signature::from_bytes(sig),
            )
            .is_ok()
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

    fn uses_index_key(kind: ObjectKind) -> bool {
        matches!(kind, ObjectKind::PackHeader | ObjectKind::Index)
    }

    fn write_only_error(what: &str) -> Error {
        Error::Invalid(format!(
            "{what}: this is a write-only key: it can back up, but not read data, file names or \
             snapshots; use a full key to list or restore"
        ))
    }

    fn session(&self) -> &Session {
        self.session.get_or_init(|| {
            let mut seed = Zeroizing::new([0u8; KEY_LEN]);
            random_bytes(&mut seed[..]);
            let eph = StaticSecret::from(*seed);
            let ephemeral_public = PublicKey::from(&eph).to_bytes();
            let shared = eph.diffie_hellman(&PublicKey::from(self.public));
            Session {
                key: session_key(shared.as_bytes(), &ephemeral_public, &self.public),
                ephemeral_public,
            }
        })
    }

    /// Seal `plaintext` as an object of `kind`; `extra_ad` is the blob id for blobs. A full key
    /// seals with scheme 1; a write-only key seals data, trees and snapshots with scheme 2.
    pub fn seal(&self, kind: ObjectKind, extra_ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        self.seal_parts(kind, extra_ad, &[plaintext])
    }

    /// [`MasterKey::seal`] of the concatenation of `parts`, without assembling it first (a
    /// blob's compression code and payload go straight into the envelope).
    pub fn seal_parts(&self, kind: ObjectKind, extra_ad: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new(); // sized by seal_body
        self.seal_parts_into(kind, extra_ad, parts, &mut out);
        out
    }

    /// [`MasterKey::seal_parts`] appended to `out` (a buffer that is reused, so that sealing
    /// allocates nothing once it has grown); returns the envelope's length.
    pub fn seal_parts_into(
        &self,
        kind: ObjectKind,
        extra_ad: &[u8],
        parts: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> usize {
        if Self::uses_index_key(kind) {
            return seal_body(&self.index, &[SEAL_SCHEME_SYMMETRIC], kind, extra_ad, parts, out);
        }
        match &self.data {
            Some(d) => seal_body(d, &[SEAL_SCHEME_SYMMETRIC], kind, extra_ad, parts, out),
            None => {
                let s = self.session();
                let mut prefix = [0u8; SESSION_PREFIX];
                prefix[0] = SEAL_SCHEME_SESSION;
                prefix[1..].copy_from_slice(&s.ephemeral_public);
                seal_body(&s.key, &prefix, kind, extra_ad, parts, out)
            }
        }
    }

    /// Open an envelope sealed by [`MasterKey::seal`] with the same kind and `extra_ad`.
    pub fn open(&self, kind: ObjectKind, extra_ad: &[u8], sealed: &[u8], what: &str) -> Result<Vec<u8>> {
        if Self::uses_index_key(kind) {
            return open_with(&self.index, kind, extra_ad, sealed, what);
        }
        let Some(data) = &self.data else {
            return Err(Self::write_only_error(what));
        };
        if sealed.first() != Some(&SEAL_SCHEME_SESSION) {
            return open_with(data, kind, extra_ad, sealed, what);
        }
        if sealed.len() < SESSION_PREFIX + SEAL_OVERHEAD {
            return Err(Error::integrity(
                what,
                format!("sealed object of {} bytes is too short", sealed.len()),
            ));
        }
        let mut eph = [0u8; KEY_LEN];
        eph.copy_from_slice(&sealed[1..SESSION_PREFIX]);
        let key = {
            let mut cache = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() > 4096 {
                cache.clear();
            }
            cache
                .entry(eph)
                .or_insert_with(|| {
                    let shared = recipient_secret(data).diffie_hellman(&PublicKey::from(eph));
                    session_key(shared.as_bytes(), &eph, &self.public)
                })
                .clone()
        };
        open_body(&key, SESSION_PREFIX, kind, extra_ad, sealed, what)
    }

    /// CBOR of the key material, for wrapping in a key file: a write-only key carries the
    /// repository config (encoded), which it could not open otherwise.
    pub(crate) fn to_bytes(&self, config: Option<&[u8]>) -> Zeroizing<Vec<u8>> {
        let m = KeyMaterial {
            data: self.data.map(KeyBytes),
            index: KeyBytes(self.index),
            id: KeyBytes(self.id),
            chunker: KeyBytes(self.chunker),
            public: self.data.is_none().then_some(KeyBytes(self.public)),
            config: if self.data.is_none() {
                config.map(|c| ByteVec(c.to_vec()))
            } else {
                None
            },
            vouch: self.data.is_none().then_some(self.vouch).flatten().map(KeyBytes),
        };
        let mut out = Zeroizing::new(Vec::with_capacity(256));
        #[allow(clippy::expect_used)]
        ciborium::into_writer(&m, &mut *out).expect("key serializes to a Vec");
        out
    }

    /// Decode key material; returns the key and, for a write-only key, the config it carries.
    pub(crate) fn from_bytes(b: &[u8], what: &str) -> Result<(Self, Option<Vec<u8>>)> {
        let mut m: KeyMaterial = ciborium::from_reader(b)
            .map_err(|e| Error::integrity(what, format!("key material does not decode: {e}")))?;
        if m.data.is_none() && (m.public.is_none() || m.config.is_none()) {
            return Err(Error::integrity(
                what,
                "write-only key without public key or config",
            ));
        }
        let key = MasterKey::assemble(
            m.data.as_ref().map(|k| k.0),
            m.index.0,
            m.id.0,
            m.chunker.0,
            m.public.as_ref().map(|k| k.0),
            m.vouch.as_ref().map(|k| k.0),
        );
        Ok((key, m.config.take().map(|c| c.0)))
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
    seal_symmetric(key, kind, extra_ad, &[plaintext])
}

/// Scheme 1: sealed under `key` itself.
fn seal_symmetric(key: &[u8; KEY_LEN], kind: ObjectKind, extra_ad: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new(); // sized by seal_body
    seal_body(key, &[SEAL_SCHEME_SYMMETRIC], kind, extra_ad, parts, &mut out);
    out
}

/// Append `prefix || nonce || AES-256-GCM(subkey, ...) || tag` to `out`; returns its length.
fn seal_body(
    key: &[u8; KEY_LEN],
    prefix: &[u8],
    kind: ObjectKind,
    extra_ad: &[u8],
    plaintext: &[&[u8]],
    out: &mut Vec<u8>,
) -> usize {
    let start = out.len();
    let len: usize = plaintext.iter().map(|p| p.len()).sum();
    out.reserve(prefix.len() + len + SEAL_OVERHEAD);
    out.extend_from_slice(prefix);
    let mut nonce = [0u8; SEAL_NONCE_LEN];
    random_bytes(&mut nonce);
    out.extend_from_slice(&nonce);
    let body = out.len();
    for p in plaintext {
        out.extend_from_slice(p);
    }
    let ad = associated_data(kind, extra_ad);
    let k = subkey(key, &nonce);
    // Sealing fails only for inputs over GCM's 64 GiB limit; blobs are capped far below.
    #[allow(clippy::expect_used)]
    let tag = k
        .seal_in_place_separate_tag(gcm_nonce(&nonce), Aad::from(&ad), &mut out[body..])
        .expect("plaintext within AES-GCM limits");
    out.extend_from_slice(tag.as_ref());
    out.len() - start
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
    open_body(key, 1, kind, extra_ad, sealed, what)
}

/// Open the part of an envelope after its `prefix_len`-byte prefix.
fn open_body(
    key: &[u8; KEY_LEN],
    prefix_len: usize,
    kind: ObjectKind,
    extra_ad: &[u8],
    sealed: &[u8],
    what: &str,
) -> Result<Vec<u8>> {
    let nonce = &sealed[prefix_len..prefix_len + SEAL_NONCE_LEN];
    let mut buf = sealed[prefix_len + SEAL_NONCE_LEN..].to_vec();
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
    debug_assert_eq!(n + SEAL_TAG_LEN + SEAL_NONCE_LEN + prefix_len, sealed.len());
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
fn default_kdf() -> KdfParams {
    let mut salt = vec![0u8; 32];
    random_bytes(&mut salt);
    KdfParams {
        algorithm: coffer_format::KDF_ARGON2ID.into(),
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
        salt,
    }
}

/// The `kdf.algorithm` of key files opened by a generated key instead of a passphrase.
pub use coffer_format::KDF_GENERATED_KEY as GENERATED_KEY_KDF;

/// How a generated key is written: `coffer-key-v1:<64 hex digits>:<8 hex digits of checksum>`.
const GENERATED_KEY_PREFIX: &str = "coffer-key-v1:";

/// A new generated key (`coffer key generate`): 256 random bits in their text form, for a
/// file that takes the place of a passphrase. It has a passphrase's strength ceiling and
/// more, so the key file it opens needs no slow, memory-hard derivation: opening costs one
/// BLAKE3 instead of argon2id's 64 MiB and ~0.15 s, on every run of every job.
pub fn generate_key_text() -> Zeroizing<String> {
    let mut secret = Zeroizing::new([0u8; KEY_LEN]);
    random_bytes(&mut secret[..]);
    let check = blake3::hash(&secret[..]);
    let mut text = Zeroizing::new(String::with_capacity(
        GENERATED_KEY_PREFIX.len() + 2 * KEY_LEN + 9,
    ));
    text.push_str(GENERATED_KEY_PREFIX);
    text.push_str(&Zeroizing::new(hex::encode(&secret[..])));
    text.push(':');
    text.push_str(&hex::encode(&check.as_bytes()[..4]));
    text
}

/// The secret of a generated key, if `credential` is one (surrounding whitespace allowed);
/// `None` for a passphrase. Text that starts like a generated key but does not check out is
/// an error, not a passphrase: a mistyped key would otherwise be tried as a passphrase and
/// reported as a wrong password.
pub fn parse_generated_key(credential: &[u8]) -> Result<Option<Zeroizing<[u8; KEY_LEN]>>> {
    let text = credential.trim_ascii();
    let Some(rest) = text.strip_prefix(GENERATED_KEY_PREFIX.as_bytes()) else {
        return Ok(None);
    };
    let bad = |why: &str| {
        Error::Invalid(format!(
            "the generated key ({GENERATED_KEY_PREFIX}…) {why}; copy it again from where it was saved"
        ))
    };
    let (hex_secret, hex_check) = match rest.iter().position(|&b| b == b':') {
        Some(i) if i == 2 * KEY_LEN && rest.len() == i + 9 => (&rest[..i], &rest[i + 1..]),
        _ => return Err(bad("is not 64 + 8 hex digits")),
    };
    let mut secret = Zeroizing::new([0u8; KEY_LEN]);
    let mut check = [0u8; 4];
    if hex::decode_to_slice(hex_secret, &mut secret[..]).is_err()
        || hex::decode_to_slice(hex_check, &mut check).is_err()
    {
        return Err(bad("has a character that is not a hex digit"));
    }
    if blake3::hash(&secret[..]).as_bytes()[..4] != check {
        return Err(bad("fails its checksum (a digit is wrong)"));
    }
    Ok(Some(secret))
}

/// What opens a key file: a passphrase, or a generated key's secret (parsed once). Not
/// `Debug`: it holds the secret.
pub enum Credential<'a> {
    Passphrase(&'a [u8]),
    Generated(Zeroizing<[u8; KEY_LEN]>),
}

impl<'a> Credential<'a> {
    /// A generated key if `text` is one (see [`parse_generated_key`]), else a passphrase.
    pub fn parse(text: &'a [u8]) -> Result<Self> {
        Ok(match parse_generated_key(text)? {
            Some(secret) => Credential::Generated(secret),
            None => Credential::Passphrase(text),
        })
    }

    /// A new key file's parameters (argon2id's defaults for a passphrase; for a generated key
    /// no stretching, only a fresh salt) and its wrapping key.
    pub fn new_slot(&self) -> Result<(KdfParams, Zeroizing<[u8; KEY_LEN]>)> {
        let mut kdf = default_kdf();
        let wrap = match self {
            Credential::Passphrase(p) => derive_wrapping_key(p, &kdf)?,
            Credential::Generated(secret) => {
                kdf.algorithm = GENERATED_KEY_KDF.into();
                kdf.memory_kib = 0;
                kdf.iterations = 0;
                kdf.parallelism = 0;
                generated_wrapping_key(secret, &kdf.salt)
            }
        };
        Ok((kdf, wrap))
    }

    /// The wrapping key of a key file with parameters `p`, or `None` when the file is of the
    /// other kind (a passphrase's file for a generated key, or the other way round): such a
    /// pair never matches, so no time is spent deriving.
    pub fn wrapping_key(&self, p: &KdfParams) -> Result<Option<Zeroizing<[u8; KEY_LEN]>>> {
        match (self, p.algorithm == GENERATED_KEY_KDF) {
            (Credential::Generated(secret), true) => Ok(Some(generated_wrapping_key(secret, &p.salt))),
            (Credential::Passphrase(pw), false) => derive_wrapping_key(pw, p).map(Some),
            _ => Ok(None),
        }
    }
}

/// What a key file gives a credential ([`unwrap_key_file`]). Not `Debug`: it holds the key.
/// The key is held by value, not boxed: moved out of a box, it would leave a copy in freed
/// memory that nothing zeroes.
#[allow(clippy::large_enum_variant)]
pub enum Unwrapped {
    /// A file of the other kind: a passphrase's, for a generated key, or the reverse.
    OtherKind,
    /// This credential does not open it (another passphrase's file, or a forged one).
    NotOpened,
    /// The master key and, for a write-only key, the config its file carries.
    Key(MasterKey, Option<Vec<u8>>),
    /// It opens with this credential but does not hold key material: only someone who knows
    /// the credential could have written it.
    Damaged(Error),
}

/// Unwrap a key file, as stored, with a credential. Errors when the file does not decode or
/// its KDF parameters are out of bounds (a hostile key file must not exhaust the machine).
/// Every byte of `bytes` may be forged.
pub fn unwrap_key_file(credential: &Credential, bytes: &[u8], what: &str) -> Result<Unwrapped> {
    let kf = coffer_format::KeyFile::decode(bytes).map_err(|e| Error::format(what, e))?;
    let Some(wrap) = credential.wrapping_key(&kf.kdf)? else {
        return Ok(Unwrapped::OtherKind);
    };
    let Ok(plain) = open_with(&wrap, ObjectKind::KeyWrap, b"", &kf.wrapped, what) else {
        return Ok(Unwrapped::NotOpened);
    };
    let plain = Zeroizing::new(plain);
    Ok(match MasterKey::from_bytes(&plain, what) {
        Ok((key, config)) => Unwrapped::Key(key, config),
        Err(e) => Unwrapped::Damaged(e),
    })
}

fn generated_wrapping_key(secret: &[u8; KEY_LEN], salt: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
    let mut h = blake3::Hasher::new_derive_key("coffer/v1/generated-key-wrap");
    h.update(salt);
    h.update(secret);
    Zeroizing::new(*h.finalize().as_bytes())
}

/// Derive the key-wrapping key from a passphrase.
pub fn derive_wrapping_key(password: &[u8], p: &KdfParams) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let params = argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, Some(KEY_LEN))
        .map_err(|e| Error::Invalid(format!("key file: bad argon2 parameters: {e}")))?;
    let mut memory = kdf_memory(params.block_count());
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    let r = a.hash_password_into_with_memory(password, &p.salt, &mut out[..], &mut memory[..]);
    memory.zeroize(); // it held values derived from the password
    r.map_err(|e| Error::Invalid(format!("key file: argon2 failed: {e}")))?;
    Ok(out)
}

/// argon2's working memory (64 MiB by default), on transparent huge pages where the kernel
/// gives them on request (THP mode `madvise`, the default of many distributions): the first
/// touch of 16k small pages cost about as much CPU as the hash itself, on every command that
/// opens a repository (`coffer snapshots`: 16.9k -> 1.0k page faults, 199 -> 134 ms).
fn kdf_memory(blocks: usize) -> Vec<argon2::Block> {
    let mut memory: Vec<argon2::Block> = Vec::with_capacity(blocks);
    advise_huge_pages(memory.as_mut_ptr().cast(), blocks * argon2::Block::SIZE);
    memory.resize(blocks, argon2::Block::default());
    memory
}

/// Ask for huge pages for the whole 2 MiB pages inside the allocation at `start` (`len` bytes,
/// not yet touched). Advice only: when it is refused, or THP is off, small pages serve.
#[allow(unsafe_code)]
fn advise_huge_pages(start: *mut u8, len: usize) {
    const HUGE: usize = 2 << 20;
    let skip = start.align_offset(HUGE);
    if skip >= len || len - skip < HUGE {
        return;
    }
    let whole = (len - skip) / HUGE * HUGE;
    // SAFETY: `start + skip .. + whole` lies inside one live allocation of `len` bytes that
    // the caller owns. MADV_HUGEPAGE only tells the kernel how to back that range; unlike
    // MADV_DONTNEED or MADV_FREE it never changes its contents or whether it is mapped, so no
    // reference to the memory, now or later, can observe it.
    let _ = unsafe {
        rustix::mm::madvise(
            start.wrapping_add(skip).cast(),
            whole,
            rustix::mm::Advice::LinuxHugepage,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Key files written before the working memory was allocated here still open: the
    /// derivation equals argon2's own allocating one, with memory large enough for huge pages.
    #[test]
    fn derivation_matches_argon2_reference() {
        for memory_kib in [64, 6 * 1024] {
            let p = KdfParams {
                algorithm: "argon2id".into(),
                memory_kib,
                iterations: 2,
                parallelism: 1,
                salt: vec![7; 32],
            };
            let params = argon2::Params::new(memory_kib, 2, 1, Some(KEY_LEN)).unwrap();
            let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let mut reference = [0u8; KEY_LEN];
            a.hash_password_into(b"pass", &p.salt, &mut reference).unwrap();
            assert_eq!(*derive_wrapping_key(b"pass", &p).unwrap(), reference);
            assert_ne!(*derive_wrapping_key(b"pas5", &p).unwrap(), reference);
        }
    }

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
        assert!(open_with(&k.data.unwrap(), ObjectKind::Index, b"", &si, "t").is_err());
    }

    #[test]
    fn only_a_full_key_vouches_and_every_key_of_the_repository_can_tell() {
        let full = MasterKey::generate();
        let (wo, _) = MasterKey::from_bytes(&full.write_only().to_bytes(Some(b"cfg")), "t").unwrap();
        let (body, repo) = (b"an index file's body", b"repository id");
        assert!(wo.vouch(repo, body).is_none());
        let sig = full.vouch(repo, body).unwrap();
        assert!(full.is_vouched(repo, body, &sig) && wo.is_vouched(repo, body, &sig));
        assert!(!wo.is_vouched(repo, b"another body", &sig));
        assert!(!wo.is_vouched(b"another repository", body, &sig));
        let mut forged = sig;
        forged[5] ^= 1;
        assert!(!wo.is_vouched(repo, body, &forged));
        // another repository's full key vouches for nothing here
        let other = MasterKey::generate();
        assert!(!wo.is_vouched(repo, body, &other.vouch(repo, body).unwrap()));
        assert!(full.can_check_vouches() && wo.can_check_vouches());
        // a write-only key made before vouching (no public key in its file) trusts no vouch,
        // and says so
        let mut before = full.write_only();
        before.vouch = None;
        let (before, _) = MasterKey::from_bytes(&before.to_bytes(Some(b"cfg")), "t").unwrap();
        assert!(!before.can_check_vouches());
        assert!(!before.is_vouched(repo, body, &sig));
    }

    #[test]
    fn write_only_keys_seal_for_the_full_key_only() {
        let full = MasterKey::generate();
        let wo = full.write_only();
        assert!(full.can_read() && !wo.can_read());
        // same ids and chunking: write-only backups deduplicate against full ones
        assert_eq!(full.blob_id(b"x"), wo.blob_id(b"x"));
        assert_eq!(full.gear_table(), wo.gear_table());
        let id = wo.blob_id(b"secret");
        let s = wo.seal(ObjectKind::Data, id.as_bytes(), b"secret");
        assert_eq!(s[0], SEAL_SCHEME_SESSION);
        assert!(!s.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            full.open(ObjectKind::Data, id.as_bytes(), &s, "t").unwrap(),
            b"secret"
        );
        // twice: the second open uses the cached session key
        assert_eq!(
            full.open(ObjectKind::Data, id.as_bytes(), &s, "t").unwrap(),
            b"secret"
        );
        // the write-only key cannot read what it wrote, nor what the full key wrote
        let e = wo.open(ObjectKind::Data, id.as_bytes(), &s, "t").unwrap_err();
        assert!(e.to_string().contains("write-only"), "{e}");
        let f = full.seal(ObjectKind::Tree, b"", b"names");
        assert!(wo.open(ObjectKind::Tree, b"", &f, "t").is_err());
        // kind, id and the ephemeral key are bound
        assert!(full.open(ObjectKind::Tree, id.as_bytes(), &s, "t").is_err());
        let mut t = s.clone();
        t[5] ^= 1;
        assert!(full.open(ObjectKind::Data, id.as_bytes(), &t, "t").is_err());
        // another repository's full key cannot open it
        assert!(MasterKey::generate()
            .open(ObjectKind::Data, id.as_bytes(), &s, "t")
            .is_err());
        // index objects stay readable by both
        let si = wo.seal(ObjectKind::Index, b"", b"idx");
        assert_eq!(full.open(ObjectKind::Index, b"", &si, "t").unwrap(), b"idx");
        assert_eq!(wo.open(ObjectKind::Index, b"", &si, "t").unwrap(), b"idx");
    }

    #[test]
    fn key_material_round_trips_and_reads_the_v1_layout() {
        let full = MasterKey::generate();
        let (back, cfg) = MasterKey::from_bytes(&full.to_bytes(Some(b"cfg")), "t").unwrap();
        assert!(back.can_read() && cfg.is_none());
        let s = full.seal(ObjectKind::Snapshot, b"", b"x");
        assert_eq!(back.open(ObjectKind::Snapshot, b"", &s, "t").unwrap(), b"x");
        let (wo, cfg) = MasterKey::from_bytes(&full.write_only().to_bytes(Some(b"cfg")), "t").unwrap();
        assert!(!wo.can_read());
        assert_eq!(cfg.as_deref(), Some(&b"cfg"[..]));
        let s = wo.seal(ObjectKind::Snapshot, b"", b"y");
        assert_eq!(full.open(ObjectKind::Snapshot, b"", &s, "t").unwrap(), b"y");
        // key files written before write-only keys existed: a map of four byte strings
        #[derive(Serialize)]
        struct V1<'a> {
            #[serde(with = "serde_bytes_ref")]
            data: &'a [u8],
            #[serde(with = "serde_bytes_ref")]
            index: &'a [u8],
            #[serde(with = "serde_bytes_ref")]
            id: &'a [u8],
            #[serde(with = "serde_bytes_ref")]
            chunker: &'a [u8],
        }
        mod serde_bytes_ref {
            pub fn serialize<S: serde::Serializer>(v: &&[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(v)
            }
        }
        let mut v1 = Vec::new();
        ciborium::into_writer(
            &V1 {
                data: &[1; 32],
                index: &[2; 32],
                id: &[3; 32],
                chunker: &[4; 32],
            },
            &mut v1,
        )
        .unwrap();
        let (k, _) = MasterKey::from_bytes(&v1, "t").unwrap();
        assert!(k.can_read());
        assert_eq!(k.index, [2; 32]);
        // a write-only key without its public key or config is refused
        let mut bad = Vec::new();
        ciborium::into_writer(
            &KeyMaterial {
                data: None,
                index: KeyBytes([2; 32]),
                id: KeyBytes([3; 32]),
                chunker: KeyBytes([4; 32]),
                public: None,
                config: None,
                vouch: None,
            },
            &mut bad,
        )
        .unwrap();
        assert!(MasterKey::from_bytes(&bad, "t").is_err());
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
        let b = k.to_bytes(None);
        let (k2, _) = MasterKey::from_bytes(&b, "t").unwrap();
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

        /// Sealing in parts is sealing the concatenation, for full and write-only keys.
        #[test]
        fn sealed_parts_open_as_their_concatenation(a in proptest::collection::vec(any::<u8>(), 0..600), b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let full = MasterKey::generate();
            let whole = [&a[..], &b[..]].concat();
            for k in [&full, &full.write_only()] {
                let s = k.seal_parts(ObjectKind::Data, b"id", &[&a, &[], &b]);
                prop_assert_eq!(s.len(), k.seal(ObjectKind::Data, b"id", &whole).len());
                prop_assert_eq!(&full.open(ObjectKind::Data, b"id", &s, "t").unwrap(), &whole);
                // appended after other bytes, the envelope is the same and they are untouched
                let mut buf = a.clone();
                let n = k.seal_parts_into(ObjectKind::Data, b"id", &[&b, &a], &mut buf);
                prop_assert_eq!(n, buf.len() - a.len());
                prop_assert_eq!(&buf[..a.len()], &a[..]);
                let swapped = [&b[..], &a[..]].concat();
                prop_assert_eq!(&full.open(ObjectKind::Data, b"id", &buf[a.len()..], "t").unwrap(), &swapped);
            }
        }
    }
}
