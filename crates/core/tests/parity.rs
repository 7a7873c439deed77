//! Parity in the engine: a pack that does not read at all (EIO over one of its shards, as a bad
//! sector gives) is rebuilt shard by shard; a parity file that claims a pack far larger than
//! the repository makes is refused before anything that size is allocated; a read falls back
//! to the rebuilt pack.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::sync::{Arc, Mutex};

use coffer_core::backend::BResult;
use coffer_core::format::{BlobKind, Id, PackId};
use coffer_core::memory::MemoryBackend;
use coffer_core::{
    backup, BackendError, BackupOptions, FileInfo, FileKind, InitOptions, NoProgress, Repository,
};

/// A backend whose reads of one pack fail with EIO: the whole file, and any range that
/// touches `bad` (a bad sector).
#[derive(Debug, Clone)]
struct BadSector {
    inner: MemoryBackend,
    pack: Arc<Mutex<Option<BadRange>>>,
}

/// A pack's name and the bytes of it that do not read.
type BadRange = (String, std::ops::Range<u64>);

impl BadSector {
    fn eio(&self, name: &str) -> BackendError {
        BackendError::Io {
            location: "bad-sector".into(),
            what: name.into(),
            detail: "Input/output error (os error 5)".into(),
            transient: false,
        }
    }
    fn hits(&self, kind: FileKind, name: &str, range: std::ops::Range<u64>) -> bool {
        kind == FileKind::Pack
            && self
                .pack
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|(n, bad)| n == name && range.start < bad.end && bad.start < range.end)
    }
}

impl coffer_core::Backend for BadSector {
    fn location(&self) -> String {
        "bad-sector".into()
    }
    fn create(&self) -> BResult<()> {
        self.inner.create()
    }
    fn exists(&self) -> BResult<bool> {
        self.inner.exists()
    }
    fn list(&self, kind: FileKind) -> BResult<Vec<FileInfo>> {
        coffer_core::Backend::list(&self.inner, kind)
    }
    fn read(&self, kind: FileKind, name: &str) -> BResult<Vec<u8>> {
        if self.hits(kind, name, 0..u64::MAX) {
            return Err(self.eio(name));
        }
        self.inner.read(kind, name)
    }
    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u32) -> BResult<Vec<u8>> {
        if self.hits(kind, name, offset..offset + len as u64) {
            return Err(self.eio(name));
        }
        self.inner.read_range(kind, name, offset, len)
    }
    fn size(&self, kind: FileKind, name: &str) -> BResult<u64> {
        self.inner.size(kind, name)
    }
    fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> BResult<coffer_core::WriteOutcome> {
        self.inner.write(kind, name, data)
    }
    fn replace(&self, kind: FileKind, name: &str, data: &[u8]) -> BResult<()> {
        // the disk remapped the sector: the rewritten file reads again
        if kind == FileKind::Pack {
            self.pack.lock().unwrap().take();
        }
        self.inner.replace(kind, name, data)
    }
    fn remove(&self, kind: FileKind, name: &str) -> BResult<()> {
        self.inner.remove(kind, name)
    }
}

fn source() -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    let mut x = 99u64;
    for i in 0..4 {
        let data: Vec<u8> = (0..900_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fs::write(src.path().join(format!("f{i}")), data).unwrap();
    }
    src
}

/// A new repository on `backend` with one backup of [`source`] in it.
fn backed_up(backend: &Arc<dyn coffer_core::Backend>) -> coffer_core::IndexedRepository {
    let src = source();
    let mut repo = Repository::init(backend.clone(), b"pw", &InitOptions::default())
        .unwrap()
        .load_index()
        .unwrap();
    let opts = BackupOptions {
        paths: vec![src.path().to_path_buf()],
        ..Default::default()
    };
    backup(&mut repo, &opts, &NoProgress).unwrap();
    repo
}

#[test]
fn a_pack_with_a_bad_sector_is_read_through_and_rebuilt_shard_by_shard() {
    let inner = MemoryBackend::new();
    let b = BadSector {
        inner: inner.clone(),
        pack: Arc::new(Mutex::new(None)),
    };
    let backend: Arc<dyn coffer_core::Backend> = Arc::new(b.clone());
    backed_up(&backend);
    // the largest pack gets a bad sector of 1000 bytes in its middle
    let pack = coffer_core::Backend::list(&inner, FileKind::Pack)
        .unwrap()
        .into_iter()
        .max_by_key(|f| f.size)
        .unwrap();
    let mid = pack.size / 2;
    *b.pack.lock().unwrap() = Some((pack.name.clone(), mid..mid + 1000));
    let id = PackId(Id::from_hex(&pack.name).unwrap());

    // every blob of the pack reads, through the parity
    let repo = Repository::open(backend.clone(), b"pw")
        .unwrap()
        .load_index()
        .unwrap();
    let blobs: Vec<_> = repo
        .index()
        .iter()
        .filter(|(_, l)| l.pack == id && l.kind == BlobKind::Data)
        .map(|(id, _)| id)
        .collect();
    assert!(!blobs.is_empty());
    for blob in &blobs {
        repo.read_blob(blob, BlobKind::Data).unwrap();
    }
    assert_eq!(repo.read_through_parity(), vec![id]);

    // check names it repairable; repair packs rebuilds it from the shards that read
    let r = coffer_core::check::check(
        Repository::open(backend.clone(), b"pw").unwrap(),
        &coffer_core::check::CheckOptions {
            read_data: Some(coffer_core::check::ReadData::All),
            cache_dir: None,
        },
        &NoProgress,
    )
    .unwrap();
    assert_eq!(
        r.repairable,
        vec![format!("data/{}", pack.name)],
        "{:?}",
        r.errors
    );
    assert!(r.affected.is_empty());
    let rep = coffer_core::repair::repair_packs(
        Repository::open(backend.clone(), b"pw").unwrap(),
        &[],
        false,
        &NoProgress,
    )
    .unwrap();
    assert_eq!(rep.repaired, vec![format!("data/{}", pack.name)]);
    assert!(rep.unrepairable.is_empty());
    let stored = coffer_core::Backend::read(&inner, FileKind::Pack, &pack.name).unwrap();
    assert_eq!(
        coffer_core::crypto::storage_id(&stored),
        id.0,
        "written back whole"
    );
    let r = coffer_core::check::check(
        Repository::open(backend, b"pw").unwrap(),
        &coffer_core::check::CheckOptions {
            read_data: Some(coffer_core::check::ReadData::All),
            cache_dir: None,
        },
        &NoProgress,
    )
    .unwrap();
    assert!(r.ok(), "{:?}", r.errors);
}

#[test]
fn a_parity_file_claiming_a_huge_pack_is_refused_before_it_is_read() {
    let b = MemoryBackend::new();
    let backend: Arc<dyn coffer_core::Backend> = Arc::new(b.clone());
    let repo = backed_up(&backend);
    let pack = coffer_core::Backend::list(&b, FileKind::Pack).unwrap().remove(0);
    let id = PackId(Id::from_hex(&pack.name).unwrap());
    // a well-formed parity header for a 900 MiB pack of that name (its own check right), and
    // the pack damaged
    let pack_len = 900u64 << 20;
    let (shard_len, data_shards) = coffer_core::format::shard_layout(pack_len);
    let h = coffer_core::format::ParityHeader {
        pack: id,
        pack_len,
        shard_len,
        data_shards,
        parity_shards: 2,
        checks: vec![[0u8; 16]; data_shards as usize + 2],
    };
    let mut forged = h.encode_unchecked();
    let check = blake3::hash(&forged);
    forged.extend_from_slice(&check.as_bytes()[..16]);
    coffer_core::parity::header(&id, &forged).expect("the forged header itself is well-formed");
    coffer_core::Backend::replace(&b, FileKind::Parity, &pack.name, &forged).unwrap();
    b.tamper(FileKind::Pack, &pack.name, |p| p[10] ^= 1);
    let err = repo.repair_pack(&id).unwrap_err().to_string();
    assert!(err.contains("claims a 943718400-byte pack"), "{err}");
}
