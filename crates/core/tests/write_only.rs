//! A write-only client's change cache (the send log): an unchanged re-backup reads no file
//! and stores nothing, deduplication trusts the client's own index files and what a full key
//! vouched for, never another write-only client's claims, and a damaged cache costs speed only.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use coffer_core::backend::{Backend, FileKind};
use coffer_core::crypto::storage_id;
use coffer_core::format::{BlobKind, IndexFile, IndexPack, PackEntry, PackId};
use coffer_core::memory::MemoryBackend;
use coffer_core::sendlog::SendLog;
use coffer_core::{backup, restore, BackupOptions, InitOptions, NoProgress, Repository, RestoreOptions};

const PW: &[u8] = b"full key";
const WO: &[u8] = b"write-only";

fn data(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed * 2 + 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Back up `dir` with the write-only key as the CLI does: the change cache under `cache`.
fn backup_wo(b: &Arc<dyn Backend>, dir: &Path, cache: &Path) -> coffer_core::format::Snapshot {
    let mut repo = Repository::open(b.clone(), WO).unwrap();
    assert!(!repo.key().can_read());
    let log = SendLog::open(cache, &repo, &[dir.to_path_buf()]);
    repo.trust_own_index_files(log.own_index_files().iter().copied());
    let mut repo = repo.load_index().unwrap();
    let opts = BackupOptions {
        paths: vec![dir.to_path_buf()],
        send_log: Some(Arc::new(log)),
        ..Default::default()
    };
    backup(&mut repo, &opts, &NoProgress).unwrap().snapshot
}

fn restores(b: &Arc<dyn Backend>, expect: &BTreeMap<String, Vec<u8>>) {
    let repo = Repository::open(b.clone(), PW).unwrap().load_index().unwrap();
    for (id, s) in repo.list_snapshots().unwrap() {
        let out = tempfile::tempdir().unwrap();
        let opts = RestoreOptions {
            target: out.path().to_path_buf(),
            ..Default::default()
        };
        let st = restore(&repo, s.tree, "/", &opts, &NoProgress).unwrap();
        assert_eq!(st.errors, 0, "snapshot {}", id.short());
        let mut stack = vec![out.path().to_path_buf()];
        while let Some(p) = stack.pop() {
            for e in fs::read_dir(&p).unwrap().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let want = expect.get(&name).unwrap_or_else(|| panic!("unexpected {name}"));
                    assert!(fs::read(e.path()).unwrap() == *want, "{name} differs");
                }
            }
        }
    }
}

#[test]
fn an_unchanged_re_backup_with_a_write_only_key_reads_nothing() {
    let mem = MemoryBackend::new();
    let b: Arc<dyn Backend> = Arc::new(mem.clone());
    Repository::init(b.clone(), PW, &InitOptions::default()).unwrap();
    Repository::open(b.clone(), PW)
        .unwrap()
        .add_write_only_key(WO)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (src, cache) = (tmp.path().join("src"), tmp.path().join("cache"));
    fs::create_dir_all(src.join("sub")).unwrap();
    let mut expect = BTreeMap::new();
    for i in 0..20u64 {
        let d = data(
            i,
            if i % 5 == 0 {
                900_000
            } else {
                1_000 + i as usize * 700
            },
        );
        let name = format!("file-{i}");
        let at = if i % 2 == 0 {
            src.join(&name)
        } else {
            src.join("sub").join(&name)
        };
        fs::write(at, &d).unwrap();
        expect.insert(name, d);
    }

    // extended attributes come from the cache while the ctime says they are unchanged
    xattr::set(src.join("file-2"), "user.coffer-test", b"one").unwrap();
    let xattr_of = |snap: &coffer_core::format::Snapshot| {
        let repo = Repository::open(b.clone(), PW).unwrap().load_index().unwrap();
        let path = format!("{}/file-2", src.display());
        match coffer_core::walk::find_path(&repo, snap.tree, &path).unwrap() {
            coffer_core::walk::Found::Node(n) => {
                n.xattrs.iter().map(|x| x.value.0.clone()).collect::<Vec<_>>()
            }
            _ => panic!("file-2 is a file"),
        }
    };
    // the change cache's records (not the list of index files beside them)
    let records = || {
        fs::read(
            fs::read_dir(cache.join("sendlog"))
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_none())
                .unwrap(),
        )
        .unwrap()
    };

    let first = backup_wo(&b, &src, &cache);
    assert_eq!(first.summary.files_new, 20);
    assert!(first.summary.bytes_read > 0);
    assert_eq!(xattr_of(&first), vec![b"one".to_vec()]);
    let records_first = records();

    // unchanged: nothing read, nothing new but the trees of the temporary directories above
    // the source (the cache beside it changed them)
    let second = backup_wo(&b, &src, &cache);
    assert_eq!(second.summary.files_unchanged, 20, "{:?}", second.summary);
    assert_eq!(second.summary.bytes_read, 0);
    assert!(second.summary.bytes_new_raw < 4_000, "{:?}", second.summary);
    assert_eq!(xattr_of(&second), vec![b"one".to_vec()]);
    // nothing changed: the records are not rewritten (a rewrite seals with a new nonce)
    assert!(
        records() == records_first,
        "the unchanged run rewrote the change cache"
    );

    // a changed attribute changes the ctime: it is read again (the content is not)
    xattr::set(src.join("file-2"), "user.coffer-test", b"two").unwrap();
    let changed = backup_wo(&b, &src, &cache);
    assert_eq!(xattr_of(&changed), vec![b"two".to_vec()]);
    assert!(records() != records_first);

    // a touched file (900 kB) is read again, and its content is found among the client's own
    // blobs: nothing of it is stored again
    let f = src.join("file-10");
    let t = fs::metadata(&f).unwrap().modified().unwrap() + std::time::Duration::from_secs(5);
    fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(t)
        .unwrap();
    let third = backup_wo(&b, &src, &cache);
    assert_eq!(third.summary.files_unchanged, 19);
    assert_eq!(third.summary.bytes_read, 900_000);
    assert!(third.summary.bytes_new_raw < 4_000, "{:?}", third.summary);

    // the cache on disk is sealed: no file name in the clear
    let logs: Vec<_> = fs::read_dir(cache.join("sendlog"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(logs.len(), 2, "{logs:?}"); // the records and the list of index files
    for log in &logs {
        let bytes = fs::read(log).unwrap();
        assert!(!bytes.windows(6).any(|w| w == b"file-1"));
    }

    // a damaged cache (either file) costs one full read, not the backup
    let records_path = logs.iter().find(|p| p.extension().is_none()).unwrap();
    fs::write(records_path, b"damaged").unwrap();
    let repo = Repository::open(b.clone(), WO).unwrap();
    assert!(SendLog::open(&cache, &repo, std::slice::from_ref(&src))
        .discarded
        .is_some());
    let fourth = backup_wo(&b, &src, &cache);
    assert_eq!(fourth.summary.files_new, 20);
    fs::write(records_path.with_extension("own"), b"damaged").unwrap();
    assert!(SendLog::open(&cache, &repo, std::slice::from_ref(&src))
        .discarded
        .is_some());
    let fifth = backup_wo(&b, &src, &cache);
    assert_eq!(fifth.summary.files_new, 20);
    restores(&b, &expect);
}

/// Another write-only client (a thief with a stolen key) claims, in its own index file, the
/// blob of content this client is about to store: this client stores it anyway.
#[test]
fn a_write_only_client_trusts_only_its_own_and_vouched_listings() {
    let mem = MemoryBackend::new();
    let b: Arc<dyn Backend> = Arc::new(mem.clone());
    Repository::init(b.clone(), PW, &InitOptions::default()).unwrap();
    let full = Repository::open(b.clone(), PW).unwrap();
    full.add_write_only_key(WO).unwrap();
    full.add_write_only_key(b"thief").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (src, cache) = (tmp.path().join("src"), tmp.path().join("cache"));
    fs::create_dir_all(&src).unwrap();
    let mut expect = BTreeMap::new();
    fs::write(src.join("first"), data(1, 5_000)).unwrap();
    expect.insert("first".to_string(), data(1, 5_000));
    backup_wo(&b, &src, &cache);

    let thief = Repository::open(b.clone(), b"thief").unwrap();
    let coming = data(2, 6_000);
    let junk = data(99, 32 << 10);
    let junk_id: PackId = storage_id(&junk).to_hex().parse().unwrap();
    b.write(FileKind::Pack, &junk_id.to_hex(), &junk).unwrap();
    thief
        .save_index(&IndexFile {
            supersedes: vec![],
            packs: vec![IndexPack {
                id: junk_id,
                entries: vec![PackEntry::own(
                    BlobKind::Data,
                    thief.key().blob_id(&coming),
                    0,
                    8_000,
                    6_001,
                )],
            }],
        })
        .unwrap();
    fs::write(src.join("second"), &coming).unwrap();
    expect.insert("second".to_string(), coming);
    let s = backup_wo(&b, &src, &cache);
    assert_eq!(s.summary.files_unchanged, 1);
    assert!(s.summary.blobs_new >= 1, "{:?}", s.summary);
    restores(&b, &expect);
}
