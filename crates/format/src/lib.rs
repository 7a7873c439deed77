//! # coffer repository format, version 1
//!
//! Types and byte layouts of everything coffer stores, with no I/O and no cryptography: the
//! `coffer-core` crate seals and opens these bytes; this crate only says what they are.
//! docs/FORMAT.md is the prose version of this crate and of the invariants the core keeps.
//!
//! ```text
//! config                 sealed(Config)                            fixed name
//! keys/<KeyId>           KeyFile (JSON), wraps the master key      name = blake3(file)
//! data/<2 hex>/<PackId>  blobs || sealed(pack header) || u32       name = blake3(file)
//! index/<IndexId>        sealed(zstd(IndexFile))                   name = blake3(file)
//! snapshots/<SnapshotId> sealed(zstd(Snapshot))                    name = blake3(file)
//! manifests/<SnapshotId> JSON: the packs a snapshot needs           (server repositories)
//! parity/<2 hex>/<PackId> Reed–Solomon parity of that pack           no key needed
//! ```
//! Every decoder treats its input as hostile and returns [`FormatError`] instead of panicking.

mod config;
mod error;
mod id;
mod index;
mod layout;
mod manifest;
mod pack;
mod parity;
mod snapshot;
mod tree;
mod tree_cbor;

pub use config::{
    ChunkerParams, Config, KdfParams, KeyFile, KDF_ARGON2ID, KDF_GENERATED_KEY, KDF_MAX_ITERATIONS,
    KDF_MAX_MEMORY_KIB, KDF_MAX_PARALLELISM, MAX_PARITY,
};
pub use error::FormatError;
pub use id::{BlobId, Id, IndexId, KeyId, PackId, SnapshotId, ID_LEN};
pub use index::{IndexFile, IndexPack};
pub use layout::{
    associated_data, BlobKind, Compression, ObjectKind, FORMAT_VERSION, MAX_BLOB_SIZE, MAX_BUNDLE_SIZE,
    MAX_PACK_SIZE, SEAL_NONCE_LEN, SEAL_OVERHEAD, SEAL_SCHEME_SESSION, SEAL_SCHEME_SYMMETRIC, SEAL_TAG_LEN,
};
pub use manifest::{Manifest, MAX_MANIFEST};
pub use pack::{
    bundle_id_input, decode_header, encode_header, envelopes, split_trailer, PackEntry, Place, ENTRY_LEN,
};
pub use parity::{
    parity_shards, shard_layout, ParityHeader, CHECK_LEN as PARITY_CHECK_LEN, MAX_DATA_SHARDS, PARITY_MAGIC,
    SHARD_ALIGN,
};
pub use snapshot::{DatabaseItem, DatabaseItemKind, ImageItem, Snapshot, Summary};
pub use tree::{Bytes, LazyNodes, LazyTree, Name, Node, NodeKind, Timestamp, Tree, Xattr};
