//! Opening, creating and reading a repository.
//!
//! [`Repository`] is an opened repository (key unwrapped, config read). Reading blobs needs
//! the index, so those methods live on [`IndexedRepository`], which only
//! [`Repository::load_index`] creates: code that forgot to load the index does not compile.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock};

use chrono::Local;
use coffer_format::{
    BlobId, BlobKind, Compression, Config, Id, IndexFile, IndexId, IndexPack, KeyFile, KeyId, ObjectKind,
    PackEntry, PackId, Place, Snapshot, SnapshotId, Tree, FORMAT_VERSION,
};

use crate::backend::{Backend, FileKind, WriteOutcome};
use crate::compress::{decode_blob, decode_blob_max, decode_bundle, encode_blob, CompressionSpec};
use crate::crypto::{random_bytes, seal_with, storage_id, unwrap_key_file, Credential, MasterKey, Unwrapped};
use crate::error::{Error, Result};
use crate::index::{BlobLocation, Index};
use crate::lease::Lease;
use coffer_format::ChunkerParams;

/// Largest plaintext accepted for an index, snapshot or config file.
const MAX_FILE_OBJECT: usize = 512 << 20;
/// Compression of index, snapshot and config files.
const META_COMPRESSION: CompressionSpec = CompressionSpec {
    algo: Compression::Zstd,
    level: 3,
};

/// Parity a new repository writes unless told otherwise: 1 % of each pack (docs/FORMAT.md
/// "Parity": a 16 MiB pack survives any 11 damaged 16 KiB stretches).
pub const DEFAULT_PARITY: u32 = 100;

/// Settings chosen at `init`.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub chunker: ChunkerParams,
    pub pack_size: u32,
    pub compression: CompressionSpec,
    /// Parity beside each pack, in basis points (100 = 1 %; 0: none).
    pub parity: u32,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerParams::default(),
            pack_size: 16 << 20,
            compression: CompressionSpec {
                algo: Compression::Zstd,
                level: 3,
            },
            parity: DEFAULT_PARITY,
        }
    }
}

/// An opened repository.
#[derive(Debug)]
pub struct Repository {
    backend: Arc<dyn Backend>,
    key: Arc<MasterKey>,
    key_id: KeyId,
    config: Config,
    /// Key files that were passed over at open (damaged, or out of bounds), one line each.
    skipped_keys: Vec<String>,
    /// Index files this client wrote itself (a write-only client's, from its change cache):
    /// trusted like vouched ones.
    own_index_files: std::collections::HashSet<IndexId>,
    /// Index files this process wrote.
    written_index_files: std::sync::Mutex<Vec<IndexId>>,
    /// Where the index's table goes past its memory budget (none: it stays in memory).
    index_spill: Option<crate::index::Spill>,
}

impl Repository {
    /// Create a new repository with a fresh master key wrapped by `password`.
    pub fn init(backend: Arc<dyn Backend>, password: &[u8], opts: &InitOptions) -> Result<Repository> {
        if backend.exists()? {
            return Err(Error::RepositoryExists {
                location: backend.location(),
            });
        }
        opts.chunker
            .validate()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        opts.compression.validate()?;
        if opts.parity > coffer_format::MAX_PARITY {
            return Err(Error::Invalid(format!(
                "parity {}% is more than the {}% a repository may hold",
                opts.parity as f64 / 100.0,
                coffer_format::MAX_PARITY / 100
            )));
        }
        if opts.pack_size < 1 << 20 || opts.pack_size > 512 << 20 {
            return Err(Error::Invalid(format!(
                "pack size {} must be between 1 MiB and 512 MiB",
                opts.pack_size
            )));
        }
        let mut rid = [0u8; 32];
        random_bytes(&mut rid);
        let config = Config {
            version: FORMAT_VERSION,
            id: Id(rid),
            created: Local::now().fixed_offset(),
            chunker: opts.chunker,
            pack_size: opts.pack_size,
            compression: opts.compression.algo,
            compression_level: opts.compression.level,
            parity: opts.parity,
        };
        if password.is_empty() {
            // before anything is created: a refused init leaves nothing behind
            return Err(Error::Usage("an empty password is not allowed".into()));
        }
        let key = Arc::new(MasterKey::generate());
        backend.create()?;
        // Key first, config last: a location with a config is a repository that opens.
        let key_id = write_key_file(&*backend, &key, password, &config.encode())?;
        let sealed = key.seal(
            ObjectKind::Config,
            b"",
            &encode_blob(META_COMPRESSION, &config.encode()),
        );
        if backend.write(FileKind::Config, "config", &sealed)? == WriteOutcome::Existed {
            return Err(Error::RepositoryExists {
                location: backend.location(),
            });
        }
        Ok(Repository {
            backend,
            key,
            key_id,
            config,
            skipped_keys: Vec::new(),
            own_index_files: Default::default(),
            written_index_files: Default::default(),
            index_spill: None,
        })
    }

    /// Open with a passphrase or a generated key (`coffer key generate`): try every key file
    /// of that kind until one unwraps.
    pub fn open(backend: Arc<dyn Backend>, password: &[u8]) -> Result<Repository> {
        Self::open_preferring(backend, password, &[])
    }

    /// [`Repository::open`], trying the key files named in `preferred` first, in that order:
    /// those that opened the repository before (the client remembers them). Anyone who knows
    /// a password and can add a key file can add one that unwraps with it to keys of their
    /// choosing (a write-only key's public key, which new data is sealed to, and its vouch
    /// key), named to be tried first; a client that sticks to its key files never opens it.
    pub fn open_preferring(
        backend: Arc<dyn Backend>,
        password: &[u8],
        preferred: &[String],
    ) -> Result<Repository> {
        let location = backend.location();
        if !backend.exists()? {
            return Err(Error::NoRepository { location });
        }
        let mut keys = backend.list(FileKind::Key)?;
        keys.sort_by_key(|k| preferred.iter().position(|p| *p == k.name).unwrap_or(usize::MAX));
        if keys.is_empty() {
            return Err(Error::NoKeys { location });
        }
        let credential = Credential::parse(password)?;
        let mut found = None;
        let mut skipped = Vec::new();
        let mut tried = 0;
        for k in &keys {
            let what = format!("key {}", k.name);
            let bytes = backend.read(FileKind::Key, &k.name)?;
            // A damaged key file, or one whose KDF parameters are out of bounds (anyone who can
            // add a file can write one), must not lock out the others (check reports it).
            let short = k.name[..8.min(k.name.len())].to_string();
            let unwrapped = if storage_id(&bytes).to_hex() != k.name {
                Err(match KeyFile::decode(&bytes) {
                    Err(e) => e.to_string(),
                    Ok(_) => "content does not match its name".to_string(),
                })
            } else {
                unwrap_key_file(&credential, &bytes, &what).map_err(|e| e.to_string())
            };
            match unwrapped {
                // a passphrase never opens a generated key's file, nor the reverse
                Ok(Unwrapped::OtherKind) => {}
                Ok(Unwrapped::NotOpened) => tried += 1,
                Ok(Unwrapped::Key(key, carried_config)) => {
                    let id = KeyId(Id::from_hex(&k.name).map_err(|e| Error::format(&what, e))?);
                    found = Some((id, key, carried_config));
                    break;
                }
                Ok(Unwrapped::Damaged(e)) => return Err(e),
                Err(why) => skipped.push(format!("key file {short} skipped: {why}")),
            }
        }
        let (key_id, key, carried_config) = match found {
            Some(f) => f,
            None if skipped.len() == keys.len() => {
                return Err(Error::integrity(
                    format!("keys in {location}"),
                    format!("every key file is damaged ({})", skipped.join("; ")),
                ))
            }
            // no key file of this credential's kind was usable: not a wrong password
            None if tried == 0 && !skipped.is_empty() => {
                return Err(Error::integrity(
                    format!("keys in {location}"),
                    format!("no usable key file for this credential: {}", skipped.join("; ")),
                ))
            }
            None => return Err(Error::WrongPassword { location }),
        };
        let config = match carried_config {
            // a write-only key cannot open the config; its key file carries a copy
            Some(c) if !key.can_read() => c,
            _ => {
                let sealed = backend.read(FileKind::Config, "config")?;
                // Only a full key seals the config (scheme 1): a write-only key can seal scheme 2,
                // and one that could replace `config` in storage would choose the compression,
                // chunker and pack size of every client.
                if sealed.first() != Some(&coffer_format::SEAL_SCHEME_SYMMETRIC) {
                    return Err(Error::integrity(
                        "config",
                        "not sealed by a full key (forged with a write-only key?)",
                    ));
                }
                let plain = key.open(ObjectKind::Config, b"", &sealed, "config")?;
                decode_blob_max(plain, 1 << 20, "config")?
            }
        };
        let config = Config::decode(&config).map_err(|e| Error::format("config", e))?;
        Ok(Repository {
            backend,
            key: Arc::new(key),
            key_id,
            config,
            skipped_keys: skipped,
            own_index_files: Default::default(),
            written_index_files: Default::default(),
            index_spill: None,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
    /// Key files passed over when the repository was opened (damaged or out of bounds), one
    /// message each: worth a warning, since anyone who can add a file can add one.
    pub fn skipped_keys(&self) -> &[String] {
        &self.skipped_keys
    }
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
    pub fn key(&self) -> &Arc<MasterKey> {
        &self.key
    }
    /// The key file this repository was opened with.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }
    pub fn compression(&self) -> CompressionSpec {
        CompressionSpec {
            algo: self.config.compression,
            level: self.config.compression_level,
        }
    }

    // ---- keys

    /// All key files with their metadata.
    pub fn list_keys(&self) -> Result<Vec<(KeyId, KeyFile)>> {
        let mut out = Vec::new();
        for k in self.backend.list(FileKind::Key)? {
            let what = format!("key {}", k.name);
            let kf = KeyFile::decode(&self.backend.read(FileKind::Key, &k.name)?)
                .map_err(|e| Error::format(&what, e))?;
            out.push((
                KeyId(Id::from_hex(&k.name).map_err(|e| Error::format(&what, e))?),
                kf,
            ));
        }
        out.sort_by_key(|(_, k)| k.created);
        Ok(out)
    }

    /// Add a key slot for another passphrase (write-only if the key in use is).
    pub fn add_key(&self, password: &[u8]) -> Result<KeyId> {
        write_key_file(&*self.backend, &self.key, password, &self.config.encode())
    }

    /// Add a write-only key for `password`: it backs up and deduplicates, but cannot read
    /// any data, tree, file name or snapshot (docs/FORMAT.md "Write-only keys").
    pub fn add_write_only_key(&self, password: &[u8]) -> Result<KeyId> {
        if !self.key.can_read() {
            return Err(Error::Invalid(
                "a write-only key can only add write-only keys; this one is already".into(),
            ));
        }
        write_key_file(
            &*self.backend,
            &self.key.write_only(),
            password,
            &self.config.encode(),
        )
    }

    /// Remove a key slot. The key in use cannot be removed (use [`Repository::change_password`]).
    pub fn remove_key(&self, id: &KeyId) -> Result<()> {
        if *id == self.key_id {
            return Err(Error::Invalid(format!(
                "key {} is the one in use; open the repository with another key to remove it",
                id.short()
            )));
        }
        self.backend.remove(FileKind::Key, &id.to_hex())?;
        Ok(())
    }

    /// Replace the key in use by one for `password`: the new slot is written before the old
    /// one is removed, so an interruption leaves at least one working key.
    pub fn change_password(&mut self, password: &[u8]) -> Result<KeyId> {
        let new = self.add_key(password)?;
        self.backend.remove(FileKind::Key, &self.key_id.to_hex())?;
        self.key_id = new;
        Ok(new)
    }

    /// Resolve a key id or unique prefix.
    pub fn find_key(&self, spec: &str) -> Result<KeyId> {
        let names: Vec<String> = self
            .backend
            .list(FileKind::Key)?
            .into_iter()
            .map(|f| f.name)
            .collect();
        let id = unique_prefix(&names, spec, "key")?;
        Ok(KeyId(Id::from_hex(&id).map_err(|e| Error::format("key", e))?))
    }

    // ---- whole-file objects (index, snapshots)

    /// Compress, seal and store a whole-file object; returns its storage name.
    pub(crate) fn save_file_object(
        &self,
        kind: FileKind,
        okind: ObjectKind,
        plain: &[u8],
    ) -> Result<(Id, u64)> {
        let sealed = self.key.seal(okind, b"", &encode_blob(META_COMPRESSION, plain));
        let id = storage_id(&sealed);
        self.backend.write(kind, &id.to_hex(), &sealed)?;
        Ok((id, sealed.len() as u64))
    }

    /// Read, verify (name = hash of bytes), open and decompress a whole-file object.
    pub(crate) fn load_file_object(&self, kind: FileKind, okind: ObjectKind, name: &str) -> Result<Vec<u8>> {
        Ok(self.load_file_object_scheme(kind, okind, name)?.0)
    }

    /// [`Repository::load_file_object`] and the envelope scheme it was sealed with.
    fn load_file_object_scheme(
        &self,
        kind: FileKind,
        okind: ObjectKind,
        name: &str,
    ) -> Result<(Vec<u8>, u8)> {
        let what = format!("{}/{name}", kind.dir());
        let bytes = self.backend.read(kind, name)?;
        if storage_id(&bytes).to_hex() != name {
            return Err(Error::integrity(
                &what,
                "content does not match its name (file damaged)",
            ));
        }
        let plain = self.key.open(okind, b"", &bytes, &what)?;
        Ok((decode_blob_max(plain, MAX_FILE_OBJECT, &what)?, bytes[0]))
    }
    /// Read `pack` and its parity file and rebuild the pack's bytes (no key needed). An intact
    /// pack comes back as read with `damaged_shards == 0`.
    pub fn repair_pack(&self, pack: &PackId) -> Result<crate::parity::Repaired> {
        let name = pack.to_hex();
        let what = format!("pack {}", pack.short());
        let parity = match self.backend.read(FileKind::Parity, &name) {
            Ok(p) => p,
            Err(e) if e.is_not_found() => {
                return Err(Error::integrity(
                    &what,
                    "damaged, and it has no parity file to repair it from",
                ))
            }
            Err(e) => return Err(e.into()),
        };
        // a parity file claiming a pack larger than this repository makes is forged or damaged:
        // refused before anything that size is allocated
        let most = (self.config.pack_size as u64 + coffer_format::MAX_BLOB_SIZE as u64 + (8 << 20))
            .min(coffer_format::MAX_PACK_SIZE);
        let h = crate::parity::header(pack, &parity).map_err(|e| Error::integrity(&what, e.to_string()))?;
        if h.pack_len > most {
            return Err(Error::integrity(
                &what,
                format!(
                    "its parity file claims a {}-byte pack; packs here are at most {most}",
                    h.pack_len
                ),
            ));
        }
        let stored = match self.read_for_repair(pack, &h) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        crate::parity::repair(pack, &stored, &parity).map_err(|e| Error::integrity(&what, e.to_string()))
    }

    /// A damaged pack's bytes for a repair: read whole, or, when that fails (a bad sector gives
    /// EIO, not wrong bytes), shard by shard, with the shards that do not read left as zeros
    /// (their checks then fail and the parity rebuilds them).
    fn read_for_repair(
        &self,
        pack: &PackId,
        h: &coffer_format::ParityHeader,
    ) -> crate::backend::BResult<Vec<u8>> {
        let name = pack.to_hex();
        let first = match self.backend.read(FileKind::Pack, &name) {
            Ok(b) => return Ok(b),
            Err(e) if e.is_not_found() => return Err(e),
            Err(e) => e,
        };
        let mut out = vec![0u8; h.pack_len as usize];
        let mut any = false;
        for (i, piece) in out.chunks_mut(h.shard_len as usize).enumerate() {
            let at = i as u64 * h.shard_len as u64;
            if let Ok(b) = self
                .backend
                .read_range(FileKind::Pack, &name, at, piece.len() as u32)
            {
                piece.copy_from_slice(&b);
                any = true;
            }
        }
        if any {
            Ok(out)
        } else {
            Err(first)
        }
    }

    /// Store an index file, vouched for when this is a full key (one that lists only packs
    /// this process wrote or verified, or read from vouched listings: see
    /// [`Repository::save_index_unvouched`] for the others).
    pub fn save_index(&self, file: &IndexFile) -> Result<(IndexId, u64)> {
        let body = file.encode();
        let plain = match self.key.vouch(&self.config.id.0, &body) {
            Some(sig) => IndexFile::encode_vouched(body, &sig),
            None => body,
        };
        self.save_index_plain(&plain, true)
    }

    /// Store `packs` as vouched index files of at most 65,536 entries each (a pack is never
    /// split; one file when there are none), the last one naming `supersedes`. Readers decode
    /// an index file whole, so the listing of a whole repository in one file (what prune and
    /// `repair index` wrote before) cost every later run its whole decoded size at once: ~900
    /// MB for 11 million small files. No reader acts on `supersedes`: a crash part-way leaves
    /// the old files next to some new ones, which list the same packs again (harmless; the
    /// next prune writes them once).
    pub fn save_index_split(&self, supersedes: Vec<IndexId>, packs: Vec<IndexPack>) -> Result<Vec<IndexId>> {
        self.save_index_streamed(supersedes, packs.into_iter().map(Ok))
    }

    /// [`Repository::save_index_split`] from packs read one at a time (prune reads them back
    /// from a file): at most one file's worth of listings in memory. An error from `packs`
    /// stops it before the last file, the one naming `supersedes`, is written.
    pub fn save_index_streamed(
        &self,
        supersedes: Vec<IndexId>,
        packs: impl IntoIterator<Item = Result<IndexPack>>,
    ) -> Result<Vec<IndexId>> {
        let mut ids = Vec::new();
        let mut chunk: Vec<IndexPack> = Vec::new();
        let mut entries = 0;
        for p in packs {
            let p = p?;
            let n = p.entries.len();
            if entries + n > crate::packer::INDEX_ENTRIES && !chunk.is_empty() {
                let packs = std::mem::take(&mut chunk);
                ids.push(
                    self.save_index(&IndexFile {
                        supersedes: Vec::new(),
                        packs,
                    })?
                    .0,
                );
                entries = 0;
            }
            entries += n;
            chunk.push(p);
        }
        // the last file names what it supersedes
        ids.push(
            self.save_index(&IndexFile {
                supersedes,
                packs: chunk,
            })?
            .0,
        );
        Ok(ids)
    }

    /// Store an index file without vouching for it: listings passed on without verifying
    /// them (packs prune could not verify, condemned packs listed again from their headers).
    /// Not counted among [`Repository::written_index_files`]: a write-only client never
    /// trusts these as its own.
    pub fn save_index_unvouched(&self, file: &IndexFile) -> Result<(IndexId, u64)> {
        self.save_index_plain(&file.encode(), false)
    }

    fn save_index_plain(&self, plain: &[u8], own: bool) -> Result<(IndexId, u64)> {
        let (id, n) = self.save_file_object(FileKind::Index, ObjectKind::Index, plain)?;
        let id = IndexId(id);
        if own {
            if let Ok(mut w) = self.written_index_files.lock() {
                w.push(id);
            }
        }
        Ok((id, n))
    }

    /// The index files this process has written so far of the packs it wrote or verified.
    pub fn written_index_files(&self) -> Vec<IndexId> {
        self.written_index_files
            .lock()
            .map(|w| w.clone())
            .unwrap_or_default()
    }

    /// Trust the listings of these index files (ones this client wrote: a write-only
    /// client's change cache remembers them) as if a full key had vouched for them.
    pub fn trust_own_index_files(&mut self, ids: impl IntoIterator<Item = IndexId>) {
        self.own_index_files.extend(ids);
    }

    pub fn load_index_file(&self, name: &str) -> Result<IndexFile> {
        Ok(self.load_index_file_vouched(name)?.0)
    }

    /// An index file and whether its listings are trusted for deduplication: a full key
    /// vouched for it, or this client wrote it.
    pub fn load_index_file_vouched(&self, name: &str) -> Result<(IndexFile, bool)> {
        let what = format!("index/{name}");
        let plain = self.load_file_object(FileKind::Index, ObjectKind::Index, name)?;
        let (file, body, sig) = IndexFile::decode_vouched(&plain).map_err(|e| Error::format(&what, e))?;
        let vouched = sig.is_some_and(|sig| self.key.is_vouched(&self.config.id.0, body, &sig))
            || Id::from_hex(name).is_ok_and(|id| self.own_index_files.contains(&IndexId(id)));
        Ok((file, vouched))
    }

    /// Store a snapshot. Where the backend wants manifests (a coffer server), use
    /// [`Repository::save_snapshot_needing`] instead, or the server refuses the snapshot.
    pub fn save_snapshot(&self, s: &Snapshot) -> Result<(SnapshotId, u64)> {
        let (id, n) = self.save_file_object(FileKind::Snapshot, ObjectKind::Snapshot, &s.encode())?;
        Ok((SnapshotId(id), n))
    }

    /// Store a snapshot whose blobs are all in `packs`; where the backend wants manifests,
    /// `manifests/<id>` listing those packs is written first (docs/FORMAT.md "Server-side
    /// retention"). `packs` may be a superset; it must not miss a pack the snapshot needs.
    pub fn save_snapshot_needing(
        &self,
        s: &Snapshot,
        packs: impl IntoIterator<Item = PackId>,
    ) -> Result<(SnapshotId, u64)> {
        if !self.backend.wants_manifests() {
            return self.save_snapshot(s);
        }
        let sealed = self.key.seal(
            ObjectKind::Snapshot,
            b"",
            &encode_blob(META_COMPRESSION, &s.encode()),
        );
        let id = SnapshotId(storage_id(&sealed));
        let manifest = coffer_format::Manifest::new(id, packs);
        self.backend
            .write(FileKind::Manifest, &id.to_hex(), &manifest.encode())?;
        self.backend.write(FileKind::Snapshot, &id.to_hex(), &sealed)?;
        Ok((id, sealed.len() as u64))
    }

    pub fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let name = id.to_hex();
        let (plain, scheme) =
            self.load_file_object_scheme(FileKind::Snapshot, ObjectKind::Snapshot, &name)?;
        let mut s =
            Snapshot::decode(&plain).map_err(|e| Error::format(format!("snapshot {}", id.short()), e))?;
        s.sealed_by_write_only = scheme == coffer_format::SEAL_SCHEME_SESSION;
        Ok(s)
    }

    /// Every snapshot, oldest first.
    pub fn list_snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>> {
        let mut out = Vec::new();
        for f in self.backend.list(FileKind::Snapshot)? {
            // a stray file that is not a snapshot's hash is no snapshot (listings skip it too)
            let Ok(id) = Id::from_hex(&f.name).map(SnapshotId) else {
                continue;
            };
            out.push((id, self.load_snapshot(&id)?));
        }
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// Every snapshot that can be read, oldest first, and one message per snapshot file that
    /// cannot (does not decrypt or decode: damage, or garbage written by a compromised
    /// client). For listings and choosing a parent; prune and forget use the strict
    /// [`Repository::list_snapshots`]. A snapshot removed between the listing and its read
    /// is left out; other storage errors still fail.
    pub fn list_snapshots_readable(&self) -> Result<(SnapshotList, Vec<String>)> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for f in self.backend.list(FileKind::Snapshot)? {
            // a stray file (not a snapshot's hash) hides no snapshot
            let Ok(id) = Id::from_hex(&f.name).map(SnapshotId) else {
                bad.push(format!(
                    "snapshots/{} skipped: not a snapshot name",
                    f.name.escape_debug()
                ));
                continue;
            };
            match self.load_snapshot(&id) {
                Ok(s) => out.push((id, s)),
                // forgotten by another client since the listing: as if listed a moment later
                // (a storage that hides a snapshot can leave it out of the listing anyway)
                Err(Error::Backend(e)) if e.is_not_found() => continue,
                Err(e) if e.category() == crate::Category::Integrity => {
                    bad.push(format!("snapshot {} skipped: {e}", id.short()))
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok((out, bad))
    }

    /// Resolve `latest`, a full id or a unique id prefix.
    pub fn find_snapshot(&self, spec: &str) -> Result<(SnapshotId, Snapshot)> {
        if spec == "latest" {
            return self.list_snapshots_readable()?.0.pop().ok_or_else(|| {
                Error::NotFound(format!(
                    "no snapshot in {} (`latest` needs one)",
                    self.backend.location()
                ))
            });
        }
        let names: Vec<String> = self
            .backend
            .list(FileKind::Snapshot)?
            .into_iter()
            .map(|f| f.name)
            .collect();
        let name = unique_prefix(&names, spec, "snapshot")?;
        let id = SnapshotId(Id::from_hex(&name).map_err(|e| Error::format("snapshots/", e))?);
        Ok((id, self.load_snapshot(&id)?))
    }

    /// Read every index file into memory.
    pub fn load_index(self) -> Result<IndexedRepository> {
        let index = self.read_all_index()?;
        Ok(IndexedRepository::new(self, index, None))
    }

    /// Take a lease first, then read the index: what backups and prunes do, so that a prune
    /// knows about every run that may deduplicate against the index it is about to change.
    pub fn load_index_leased(self, purpose: &str) -> Result<IndexedRepository> {
        let lease = Lease::acquire(self.backend.clone(), purpose)?;
        let index = self.read_all_index()?;
        Ok(IndexedRepository::new(self, index, Some(lease)))
    }

    /// Read the index files that can be read, skipping damaged ones (for repair).
    pub fn load_index_skipping_damaged(self) -> Result<IndexedRepository> {
        let mut index = self.new_index();
        if let Ok(listed) = self.backend.list(FileKind::Index) {
            // read one at a time, as the index asks for them
            let files = listed.iter().filter_map(|f| {
                let id = IndexId(Id::from_hex(&f.name).ok()?);
                let (file, vouched) = self.load_index_file_vouched(&f.name).ok()?;
                Some((id, file, vouched))
            });
            index.add_files(files, |_| true)?;
        }
        Ok(IndexedRepository::new(self, index, None))
    }

    /// Keep the index's table under `spill`'s memory budget, in files past it.
    pub fn set_index_spill(&mut self, spill: Option<crate::index::Spill>) {
        self.index_spill = spill;
    }

    /// Where the index's table, and a backup's set of queued blobs, go past their memory
    /// budgets.
    pub(crate) fn spill_dir(&self) -> Option<std::path::PathBuf> {
        self.index_spill.as_ref().map(|s| s.dir().to_path_buf())
    }

    /// An empty index under this repository's memory budget.
    pub(crate) fn new_index(&self) -> Index {
        Index::with_spill(self.index_spill.clone())
    }

    /// An indexed repository from an index the caller has read (check reads the index files
    /// itself, to report damaged ones).
    pub(crate) fn with_index(self, index: Index) -> IndexedRepository {
        IndexedRepository::new(self, index, None)
    }

    /// A lease and an empty index, for prune, which reads the index itself after listing the
    /// snapshots (reading it here as well would only repeat the I/O).
    pub(crate) fn leased_without_index(self, purpose: &str) -> Result<IndexedRepository> {
        let lease = Lease::acquire(self.backend.clone(), purpose)?;
        let index = self.new_index();
        Ok(IndexedRepository::new(self, index, Some(lease)))
    }

    fn read_all_index(&self) -> Result<Index> {
        let mut index = self.new_index();
        // A coffer server removes packs by its own retention but cannot edit the (encrypted)
        // index files that list them: there, only packs the server still has count.
        let present: Option<std::collections::HashSet<String>> = if self.backend.wants_manifests() {
            Some(
                self.backend
                    .list(FileKind::Pack)?
                    .into_iter()
                    .map(|f| f.name)
                    .collect(),
            )
        } else {
            None
        };
        // each file is read as the index asks for it and dropped once its entries are in
        let listed = self.backend.list(FileKind::Index)?;
        let mut failed: Option<Error> = None;
        let mut skipped = Vec::new();
        let files = listed.iter().map_while(|f| {
            let file = match self.load_index_file_vouched(&f.name) {
                Ok(file) => file,
                // superseded and deleted by a prune since the listing
                Err(Error::Backend(e)) if e.is_not_found() => return Some(None),
                // An index file that does not open costs deduplication only (its packs are
                // adopted again by the next backup); one damaged or hostile file must not stop
                // every backup. Prune reads the index itself and stops on it; check reports it.
                Err(e) if e.category() == crate::Category::Integrity => {
                    skipped.push(format!(
                        "index file {} skipped: {e}",
                        &f.name[..8.min(f.name.len())]
                    ));
                    return Some(None);
                }
                Err(e) => {
                    failed = Some(e);
                    return None;
                }
            };
            match Id::from_hex(&f.name) {
                Ok(id) => Some(Some((IndexId(id), file.0, file.1))),
                Err(e) => {
                    failed = Some(Error::format("index/", e));
                    None
                }
            }
        });
        index.add_files(files.flatten(), |pack| match &present {
            Some(p) => p.contains(&pack.to_hex()),
            None => true,
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        for message in skipped {
            index.skip_file(message);
        }
        Ok(index)
    }
}

fn write_key_file(backend: &dyn Backend, key: &MasterKey, password: &[u8], config: &[u8]) -> Result<KeyId> {
    if password.is_empty() {
        return Err(Error::Invalid("an empty password is not allowed".into()));
    }
    let (kdf, wrap) = Credential::parse(password)?.new_slot()?;
    // A key file is plaintext to whoever stores it: it names no host and no user (files of
    // earlier builds did; their fields stay readable)
    let (hostname, username) = (String::new(), String::new());
    let kf = KeyFile {
        version: FORMAT_VERSION,
        created: Local::now().fixed_offset(),
        hostname,
        username,
        kind: if key.can_read() { "full" } else { "write-only" }.into(),
        wrapped: seal_with(&wrap, ObjectKind::KeyWrap, b"", &key.to_bytes(Some(config))),
        kdf,
    };
    let bytes = kf.encode();
    let id = storage_id(&bytes);
    backend.write(FileKind::Key, &id.to_hex(), &bytes)?;
    Ok(KeyId(id))
}

/// The one name in `names` that starts with `spec`.
fn unique_prefix(names: &[String], spec: &str, what: &str) -> Result<String> {
    if spec.is_empty() || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Invalid(format!(
            "{spec:?} is not a {what} id (hex digits or `latest`)"
        )));
    }
    let spec = spec.to_ascii_lowercase();
    let hits: Vec<&String> = names.iter().filter(|n| n.starts_with(&spec)).collect();
    match hits.len() {
        0 => Err(Error::NotFound(format!("no {what} with id {spec}"))),
        1 => Ok(hits[0].clone()),
        n => Err(Error::Invalid(format!(
            "{what} id prefix {spec} is ambiguous ({n} matches); give more digits"
        ))),
    }
}

/// Snapshots with their ids, oldest first.
pub type SnapshotList = Vec<(SnapshotId, Snapshot)>;

/// A repository with its index loaded: blobs can be read and deduplicated against.
#[derive(Debug)]
pub struct IndexedRepository {
    repo: Repository,
    index: Index,
    lease: Option<Lease>,
    bundles: BundleCache,
    /// Packs repaired from their parity while reading (or found beyond repair), the last few
    /// kept: a damaged pack is read and rebuilt once, not once per blob.
    repaired: Mutex<VecDeque<(PackId, RepairedPack)>>,
    /// Every pack read through its parity by this process.
    read_through_parity: Mutex<std::collections::BTreeSet<PackId>>,
    /// Held while a pack is rebuilt from its parity.
    rebuilding: Mutex<()>,
}

/// A pack rebuilt from its parity, or why it could not be.
type RepairedPack = std::result::Result<Arc<Vec<u8>>, String>;

/// Packs kept rebuilt in memory.
const REPAIRED_CACHE: usize = 2;

/// Bundles kept decoded after a read.
const BUNDLE_CACHE: usize = 16;

/// The bundles read last, decoded, shared by every thread reading through the repository: a
/// restore reads a directory's small files one after another, and a large file's chunks, and
/// they share bundles. Least recently used goes first; a bundle several threads want at once
/// is read and decoded once (the others wait for it).
#[derive(Default)]
struct BundleCache(Mutex<VecDeque<(BundleKey, BundleSlot)>>);

/// A bundle: its pack and where its envelope starts.
type BundleKey = (PackId, u32);

/// A bundle being decoded or decoded (`None`: decoding it failed).
type BundleSlot = Arc<OnceLock<Option<Arc<Vec<u8>>>>>;

impl std::fmt::Debug for BundleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BundleCache")
    }
}

impl BundleCache {
    fn recent(&self) -> std::sync::MutexGuard<'_, VecDeque<(BundleKey, BundleSlot)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bundle `key`, from the cache or decoded by `decode` (once, however many threads
    /// ask for it meanwhile).
    fn get_or_decode(&self, key: BundleKey, decode: impl Fn() -> Result<Vec<u8>>) -> Result<Arc<Vec<u8>>> {
        let slot = {
            let mut recent = self.recent();
            let found = recent.iter().position(|(k, _)| *k == key);
            let entry = found.and_then(|i| recent.remove(i)).unwrap_or_else(|| {
                if recent.len() == BUNDLE_CACHE {
                    recent.pop_front();
                }
                (key, BundleSlot::default())
            });
            let slot = entry.1.clone();
            recent.push_back(entry);
            slot
        };
        let mut failed = None;
        let decoded = slot.get_or_init(|| decode().map_err(|e| failed = Some(e)).ok().map(Arc::new));
        match (decoded, failed) {
            (Some(b), _) => Ok(b.clone()),
            (None, Some(e)) => {
                self.recent().retain(|(k, _)| *k != key);
                Err(e)
            }
            // another thread's decoding failed: ours reports its own error
            (None, None) => decode().map(Arc::new),
        }
    }
}

impl Deref for IndexedRepository {
    type Target = Repository;
    fn deref(&self) -> &Repository {
        &self.repo
    }
}

impl IndexedRepository {
    fn new(repo: Repository, index: Index, lease: Option<Lease>) -> Self {
        IndexedRepository {
            repo,
            index,
            lease,
            bundles: BundleCache::default(),
            repaired: Mutex::new(VecDeque::new()),
            read_through_parity: Mutex::new(std::collections::BTreeSet::new()),
            rebuilding: Mutex::new(()),
        }
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn index_mut(&mut self) -> &mut Index {
        &mut self.index
    }

    /// The lease this repository was opened under, if any.
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// Take a lease (if none is held) and read the index again under it.
    pub fn ensure_lease(&mut self, purpose: &str) -> Result<()> {
        if self.lease.is_none() {
            self.lease = Some(Lease::acquire(self.backend().clone(), purpose)?);
            self.index = self.repo.new_index(); // not both in memory at once
            self.index = self.repo.read_all_index()?;
        }
        Ok(())
    }

    /// Where a blob is, or a `NotFound` naming it.
    pub fn locate(&self, id: &BlobId) -> Result<BlobLocation> {
        self.index
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("blob {} is not in the index", id.short())))
    }

    /// Read, open, decompress and verify one blob: from its primary location, or, when that
    /// fails (a damaged pack, or one a hostile writer listed), from the next one that verifies.
    /// The error is the primary location's.
    pub fn read_blob(&self, id: &BlobId, kind: BlobKind) -> Result<Vec<u8>> {
        let loc = self.locate(id)?;
        let first = match self.read_blob_at(id, kind, &loc) {
            Ok(data) => return Ok(data),
            Err(e) => e,
        };
        for alt in self.index.locations(id).iter().skip(1) {
            if let Ok(data) = self.read_blob_at(id, kind, alt) {
                return Ok(data);
            }
        }
        // damage: rebuild a pack from its parity and read the blob from that
        for l in self.index.locations(id) {
            if let Ok(data) = self.read_blob_repaired(id, kind, &l) {
                return Ok(data);
            }
        }
        Err(first)
    }

    /// A blob read from its pack as rebuilt from the pack's parity file.
    fn read_blob_repaired(&self, id: &BlobId, kind: BlobKind, loc: &BlobLocation) -> Result<Vec<u8>> {
        let bytes = self.repaired_pack(&loc.pack)?;
        let what = format!(
            "{:?} blob {} in pack {} (repaired)",
            kind,
            id.short(),
            loc.pack.short()
        )
        .to_lowercase();
        if loc.kind != kind {
            return Err(Error::integrity(&what, "listed as another kind"));
        }
        let sealed = bytes
            .get(loc.offset as usize..loc.offset as usize + loc.length as usize)
            .ok_or_else(|| Error::integrity(&what, "lies outside its pack"))?;
        let data = self.decode_blob_bytes(id, loc, sealed.to_vec(), &what)?;
        self.read_through_parity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(loc.pack);
        Ok(data)
    }

    /// The bytes of `pack` rebuilt from its parity (once per pack; the last few are kept).
    pub fn repaired_pack(&self, pack: &PackId) -> Result<Arc<Vec<u8>>> {
        let what = format!("pack {}", pack.short());
        let cached = || {
            let c = self.repaired.lock().unwrap_or_else(|p| p.into_inner());
            c.iter().find(|(p, _)| p == pack).map(|(_, r)| r.clone())
        };
        let r = match cached() {
            Some(r) => r,
            None => {
                // one rebuild at a time: the threads of a restore that meet the same damaged
                // pack wait for it instead of each holding a rebuild in memory
                let _one = self.rebuilding.lock().unwrap_or_else(|p| p.into_inner());
                match cached() {
                    Some(r) => r,
                    None => match self.repo.repair_pack(pack) {
                        // (a storage hiccup is not remembered: the next read tries again)
                        Err(e) if e.is_transient() => return Err(e),
                        r => {
                            let r = r.map(|r| Arc::new(r.bytes)).map_err(|e| e.to_string());
                            let mut c = self.repaired.lock().unwrap_or_else(|p| p.into_inner());
                            c.push_back((*pack, r.clone()));
                            if c.len() > REPAIRED_CACHE {
                                c.pop_front();
                            }
                            r
                        }
                    },
                }
            }
        };
        r.map_err(|e| Error::integrity(&what, e))
    }

    /// How many packs [`Self::read_through_parity`] lists (cheap: for a check on every read).
    pub fn read_through_parity_count(&self) -> usize {
        self.read_through_parity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Packs this process found damaged and read blobs from as rebuilt from their parity.
    pub fn read_through_parity(&self) -> Vec<PackId> {
        let c = self.read_through_parity.lock().unwrap_or_else(|p| p.into_inner());
        c.iter().copied().collect()
    }

    /// [`IndexedRepository::read_blob`] from one location.
    pub fn read_blob_at(&self, id: &BlobId, kind: BlobKind, loc: &BlobLocation) -> Result<Vec<u8>> {
        let loc = *loc;
        let what = format!("{:?} blob {} in pack {}", kind, id.short(), loc.pack.short()).to_lowercase();
        if loc.kind != kind {
            return Err(Error::integrity(
                &what,
                format!("index lists it as a {:?} blob", loc.kind),
            ));
        }
        let pack = loc.pack.to_hex();
        if let Some(at) = loc.in_bundle {
            let bundle = self.bundles.get_or_decode((loc.pack, loc.offset), || {
                let sealed =
                    self.backend()
                        .read_range(FileKind::Pack, &pack, loc.offset as u64, loc.length)?;
                self.open_bundle(&sealed, &what)
            })?;
            return self.member(&bundle, id, at, loc.raw_length, &what);
        }
        let sealed = if kind == BlobKind::Tree {
            self.backend()
                .read_tree_range(&pack, loc.offset as u64, loc.length)?
        } else {
            self.backend()
                .read_range(FileKind::Pack, &pack, loc.offset as u64, loc.length)?
        };
        self.decode_blob_bytes(id, &loc, sealed, &what)
    }

    /// Open a bundle's envelope and decode its members' bytes.
    pub(crate) fn open_bundle(&self, sealed: &[u8], what: &str) -> Result<Vec<u8>> {
        let plain = self.key().open(ObjectKind::Bundle, b"", sealed, what)?;
        decode_bundle(&plain, what)
    }

    /// The blob `id` at `at..at + len` of a decoded bundle, verified against its id.
    pub(crate) fn member(
        &self,
        bundle: &[u8],
        id: &BlobId,
        at: u32,
        len: u32,
        what: &str,
    ) -> Result<Vec<u8>> {
        let data = bundle
            .get(at as usize..at as usize + len as usize)
            .ok_or_else(|| Error::integrity(what, "lies outside its bundle"))?;
        if self.key().blob_id(data) != *id {
            return Err(Error::integrity(what, "content does not hash to its id"));
        }
        Ok(data.to_vec())
    }

    /// Open and verify the sealed bytes of a blob read from `loc` (for a blob in a bundle,
    /// the bundle's envelope).
    pub fn decode_blob_bytes(
        &self,
        id: &BlobId,
        loc: &BlobLocation,
        sealed: Vec<u8>,
        what: &str,
    ) -> Result<Vec<u8>> {
        if let Some(at) = loc.in_bundle {
            let bundle = self.open_bundle(&sealed, what)?;
            return self.member(&bundle, id, at, loc.raw_length, what);
        }
        let plain = self
            .key()
            .open(loc.kind.object_kind(), id.as_bytes(), &sealed, what)?;
        let data = decode_blob(plain, loc.raw_length as usize, what)?;
        if self.key().blob_id(&data) != *id {
            return Err(Error::integrity(what, "content does not hash to its id"));
        }
        Ok(data)
    }

    /// Every pack holding a blob reachable from `tree` (trees included).
    pub fn packs_of_tree(&self, tree: &BlobId) -> Result<std::collections::HashSet<PackId>> {
        let mut packs = std::collections::HashSet::new();
        let mut seen = std::collections::HashSet::new();
        let mut todo = vec![*tree];
        while let Some(t) = todo.pop() {
            if !seen.insert(t) {
                continue;
            }
            // every location: a server keeps only the packs a manifest names, and the primary
            // one may be a copy that does not verify
            let mut note = |id: &BlobId| -> Result<()> {
                self.locate(id)?;
                packs.extend(self.index.locations(id).iter().map(|l| l.pack));
                Ok(())
            };
            note(&t)?;
            for node in self.load_tree(&t)?.nodes {
                for id in &node.content {
                    note(id)?;
                }
                todo.extend(node.subtree);
            }
        }
        Ok(packs)
    }

    /// [`Repository::save_snapshot_needing`] for a snapshot whose packs the caller did not
    /// track: where a manifest is wanted, they are found by walking its trees.
    pub fn save_snapshot_walked(&self, s: &Snapshot) -> Result<(SnapshotId, u64)> {
        if !self.backend().wants_manifests() {
            return self.save_snapshot(s);
        }
        let packs = self.packs_of_tree(&s.tree)?;
        self.save_snapshot_needing(s, packs)
    }

    pub fn load_tree(&self, id: &BlobId) -> Result<Tree> {
        let b = self.read_blob(id, BlobKind::Tree)?;
        Tree::decode(&b).map_err(|e| Error::format(format!("tree {}", id.short()), e))
    }

    /// Decode a pack's header (its table of contents) straight from the pack.
    pub fn read_pack_header(&self, pack: &PackId) -> Result<Vec<PackEntry>> {
        let name = pack.to_hex();
        let what = format!("pack {}", pack.short());
        let size = self.backend().size(FileKind::Pack, &name)?;
        let tail =
            self.backend()
                .read_range(FileKind::Pack, &name, size.saturating_sub(4), 4.min(size as u32))?;
        let (off, len) = coffer_format::split_trailer(size, &tail).map_err(|e| Error::format(&what, e))?;
        let sealed = self.backend().read_range(FileKind::Pack, &name, off, len)?;
        let plain = self.key().open(ObjectKind::PackHeader, b"", &sealed, &what)?;
        coffer_format::decode_header(&plain, off).map_err(|e| Error::format(&what, e))
    }

    /// Read a whole pack and verify everything in it: the file hashes to its name, the
    /// header decrypts and tiles the pack, and every blob opens, decompresses and hashes
    /// to its id. Returns the header's entries.
    pub fn verify_pack(&self, pack: &PackId) -> Result<Vec<PackEntry>> {
        let bytes = self.backend().read(FileKind::Pack, &pack.to_hex())?;
        self.verify_pack_bytes(pack, &bytes)
    }

    /// [`IndexedRepository::verify_pack`] of a pack's bytes the caller has read (and goes on
    /// to use).
    pub(crate) fn verify_pack_bytes(&self, pack: &PackId, bytes: &[u8]) -> Result<Vec<PackEntry>> {
        let what = format!("pack {}", pack.short());
        if storage_id(bytes) != pack.0 {
            return Err(Error::integrity(
                &what,
                "content does not match its name (file damaged)",
            ));
        }
        let n = bytes.len() as u64;
        let tail = &bytes[bytes.len().saturating_sub(4)..];
        let (off, len) = coffer_format::split_trailer(n, tail).map_err(|e| Error::format(&what, e))?;
        let header = &bytes[off as usize..off as usize + len as usize];
        let plain = self.key().open(ObjectKind::PackHeader, b"", header, &what)?;
        let entries = coffer_format::decode_header(&plain, off).map_err(|e| Error::format(&what, e))?;
        for (e, members) in coffer_format::envelopes(&entries) {
            let sealed = &bytes[e.offset as usize..e.end() as usize];
            if e.place == Place::Own {
                let loc = BlobLocation {
                    pack: *pack,
                    kind: e.kind,
                    offset: e.offset,
                    length: e.length,
                    raw_length: e.raw_length,
                    in_bundle: None,
                };
                let what = format!("{what}, blob {}", e.id.short());
                self.decode_blob_bytes(&e.id, &loc, sealed.to_vec(), &what)?;
                continue;
            }
            let what = format!("{what}, bundle {}", e.id.short());
            let bundle = self.open_bundle(sealed, &what)?;
            let expect = self
                .key()
                .blob_id(&coffer_format::bundle_id_input(members.iter().map(|m| &m.id)));
            if bundle.len() != e.raw_length as usize || expect != e.id {
                return Err(Error::integrity(
                    &what,
                    "does not match its entry (length or members)",
                ));
            }
            for m in members {
                let what = format!("{what}, blob {}", m.id.short());
                self.member(&bundle, &m.id, m.offset, m.length, &what)?;
            }
        }
        Ok(entries)
    }
}
