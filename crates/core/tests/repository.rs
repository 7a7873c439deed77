//! Repository-level tests on the in-memory backend: keys, integrity, backup/restore.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::sync::Arc;

use coffer_core::format::{BlobId, BlobKind, PackId, Place, SnapshotId};
use coffer_core::memory::MemoryBackend;
use coffer_core::{
    backup, backup_prescanned, restore, BackupOptions, Category, FileKind, InitOptions, NoProgress, Prescan,
    Repository, RestoreOptions,
};
use proptest::prelude::*;

fn init(b: &MemoryBackend) -> Repository {
    Repository::init(Arc::new(b.clone()), b"pw", &InitOptions::default()).unwrap()
}

fn sample_tree(dir: &Path) {
    fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    fs::write(dir.join("a.txt"), b"hello world\n".repeat(100)).unwrap();
    fs::write(
        dir.join("sub/b.bin"),
        (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    fs::write(dir.join("sub/deeper/empty"), b"").unwrap();
    std::os::unix::fs::symlink("../a.txt", dir.join("sub/link")).unwrap();
}

/// A repository with one snapshot of a small tree.
fn repo_with_snapshot() -> (MemoryBackend, tempfile::TempDir) {
    let b = MemoryBackend::new();
    let src = tempfile::tempdir().unwrap();
    sample_tree(src.path());
    let mut repo = init(&b).load_index().unwrap();
    let opts = BackupOptions {
        paths: vec![src.path().to_path_buf()],
        ..Default::default()
    };
    backup(&mut repo, &opts, &NoProgress).unwrap();
    (b, src)
}

#[test]
fn keys_open_add_remove_passwd() {
    let b = MemoryBackend::new();
    let repo = init(&b);
    let first = repo.key_id();
    let err = Repository::open(Arc::new(b.clone()), b"wrong").unwrap_err();
    assert_eq!(err.category(), Category::WrongPassword);
    let second = repo.add_key(b"other").unwrap();
    let mut r2 = Repository::open(Arc::new(b.clone()), b"other").unwrap();
    assert_eq!(r2.key_id(), second);
    assert_eq!(r2.config().id, repo.config().id);
    // the key in use cannot be removed, another one can
    assert!(r2.remove_key(&second).is_err());
    r2.remove_key(&first).unwrap();
    assert!(Repository::open(Arc::new(b.clone()), b"pw").is_err());
    // passwd: the new password works, the old does not
    r2.change_password(b"third").unwrap();
    assert!(Repository::open(Arc::new(b.clone()), b"other").is_err());
    assert_eq!(
        Repository::open(Arc::new(b.clone()), b"third")
            .unwrap()
            .list_keys()
            .unwrap()
            .len(),
        1
    );
}

/// A generated key opens only its own kind of key file, never runs argon2id, and a mistyped
/// one is an error of its own rather than a wrong password.
#[test]
fn generated_keys_open_their_key_files_without_argon2() {
    use coffer_core::crypto::{generate_key_text, parse_generated_key, GENERATED_KEY_KDF};
    use coffer_core::format::KeyFile;

    let b = MemoryBackend::new();
    let open = |credential: &[u8]| Repository::open(Arc::new(b.clone()), credential);
    let key = generate_key_text();
    assert!(parse_generated_key(key.as_bytes()).unwrap().is_some());
    assert!(parse_generated_key(b"correct horse battery staple")
        .unwrap()
        .is_none());
    let repo = Repository::init(Arc::new(b.clone()), key.as_bytes(), &InitOptions::default()).unwrap();
    let keys = repo.list_keys().unwrap();
    assert_eq!(keys.len(), 1);
    let kdf = &keys[0].1.kdf;
    assert_eq!(kdf.algorithm, GENERATED_KEY_KDF);
    assert_eq!((kdf.memory_kib, kdf.iterations, kdf.parallelism), (0, 0, 0));

    // the key as read from a file (trailing newline) opens it; another key does not
    let from_file = format!("{}\n", key.as_str());
    assert_eq!(open(from_file.as_bytes()).unwrap().key_id(), repo.key_id());
    let other = generate_key_text();
    let err = open(other.as_bytes()).unwrap_err();
    assert_eq!(err.category(), Category::WrongPassword);

    // one wrong digit: caught by the checksum, named as such
    let mut typo = key.as_bytes().to_vec();
    let i = "coffer-key-v1:".len() + 5;
    typo[i] = if typo[i] == b'0' { b'1' } else { b'0' };
    let err = open(&typo).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    assert_ne!(err.category(), Category::WrongPassword);

    // a passphrase slot beside it: each credential opens its own slot
    let pass = repo.add_key(b"a passphrase").unwrap();
    assert_eq!(open(b"a passphrase").unwrap().key_id(), pass);
    assert_eq!(open(key.as_bytes()).unwrap().key_id(), repo.key_id());

    // Make the passphrase slot's argon2 parameters unusable (0 lanes: out of bounds, and argon2
    // refuses them). A passphrase now finds no usable key file (said as such, not as a wrong
    // password); the generated key never derives it, so it still opens.
    let name = pass.to_hex();
    let mut kf = KeyFile::decode(&coffer_core::Backend::read(&b, FileKind::Key, &name).unwrap()).unwrap();
    kf.kdf.parallelism = 0;
    let bytes = kf.encode();
    let new_name = coffer_core::crypto::storage_id(&bytes).to_hex();
    coffer_core::Backend::write(&b, FileKind::Key, &new_name, &bytes).unwrap();
    coffer_core::Backend::remove(&b, FileKind::Key, &name).unwrap();
    let err = open(b"a passphrase").unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    assert_eq!(err.category(), Category::Integrity);
    assert_eq!(open(key.as_bytes()).unwrap().key_id(), repo.key_id());

    // a write-only key can be a generated one too
    let wo_key = generate_key_text();
    let wo = repo.add_write_only_key(wo_key.as_bytes()).unwrap();
    let opened = open(wo_key.as_bytes()).unwrap();
    assert_eq!(opened.key_id(), wo);
    assert!(!opened.key().can_read());
}

/// A key file that claims a generated key but carries stretching parameters, or names an
/// unknown derivation, is refused when decoded.
#[test]
fn key_files_with_inconsistent_kdf_parameters_are_refused() {
    use coffer_core::format::KeyFile;
    let b = MemoryBackend::new();
    let repo = init(&b);
    let good = coffer_core::Backend::read(&b, FileKind::Key, &repo.key_id().to_hex()).unwrap();
    let mut kf = KeyFile::decode(&good).unwrap();
    kf.kdf.algorithm = "coffer-key".into();
    assert!(
        KeyFile::decode(&kf.encode()).is_err(),
        "coffer-key with argon2 costs"
    );
    kf.kdf.algorithm = "scrypt".into();
    assert!(KeyFile::decode(&kf.encode()).is_err(), "unknown kdf");
    kf.kdf = KeyFile::decode(&good).unwrap().kdf;
    kf.kdf.memory_kib = 8 << 20;
    assert!(KeyFile::decode(&kf.encode()).is_err(), "8 GiB of argon2 memory");
}

#[test]
fn missing_repository_and_empty_password() {
    let b = MemoryBackend::new();
    let err = Repository::open(Arc::new(b.clone()), b"pw").unwrap_err();
    assert_eq!(err.category(), Category::NoRepository);
    assert!(Repository::init(Arc::new(b.clone()), b"", &InitOptions::default()).is_err());
    init(&b);
    assert!(
        Repository::init(Arc::new(b), b"pw", &InitOptions::default()).is_err(),
        "init over an existing repository"
    );
}

#[test]
fn backup_restore_round_trip_and_dedup() {
    let (b, src) = repo_with_snapshot();
    let repo = Repository::open(Arc::new(b.clone()), b"pw")
        .unwrap()
        .load_index()
        .unwrap();
    let (_, snap) = repo.find_snapshot("latest").unwrap();
    let out = tempfile::tempdir().unwrap();
    let opts = RestoreOptions {
        target: out.path().to_path_buf(),
        ..Default::default()
    };
    let stats = restore(
        &repo,
        snap.tree,
        &src.path().to_string_lossy(),
        &opts,
        &NoProgress,
    )
    .unwrap();
    assert_eq!(stats.files, 3);
    assert_eq!(stats.links, 1);
    assert_eq!(
        fs::read(out.path().join("sub/b.bin")).unwrap(),
        fs::read(src.path().join("sub/b.bin")).unwrap()
    );
    assert_eq!(
        fs::read_link(out.path().join("sub/link")).unwrap(),
        Path::new("../a.txt")
    );
    // a second backup of the same tree stores no new data blobs
    let mut repo = repo;
    let before = b.list(FileKind::Pack).len();
    let o = backup(
        &mut repo,
        &BackupOptions {
            paths: vec![src.path().to_path_buf()],
            ..Default::default()
        },
        &NoProgress,
    )
    .unwrap();
    assert_eq!(o.snapshot.summary.files_unchanged, 3);
    assert_eq!(o.snapshot.summary.bytes_read, 0);
    assert!(
        b.list(FileKind::Pack).len() <= before + 1,
        "only a tree pack may be added"
    );
}

/// The parent's trees are decoded ahead of the walk on another thread, in the order the walk
/// asks for them: with directories deleted, added, excluded, and names whose byte order is not
/// their alphabetical order, every tree still comes from the prefetch, and nothing is read again.
#[test]
fn parent_trees_are_prefetched_in_walk_order() {
    let b = MemoryBackend::new();
    let src = tempfile::tempdir().unwrap();
    let root = src.path();
    for d in ["B", "a/x/y", "a/z/q", "c", "c d/e", "c-e", "é/f", "Z/1/2/3"] {
        fs::create_dir_all(root.join(d)).unwrap();
        fs::write(root.join(d).join("file"), d.as_bytes()).unwrap();
    }
    fs::create_dir_all(root.join("empty1")).unwrap();
    fs::create_dir_all(root.join("empty2")).unwrap(); // the same tree as empty1
    let mut repo = init(&b).load_index().unwrap();
    let opts = |excludes: Vec<String>| BackupOptions {
        paths: vec![root.to_path_buf()],
        excludes,
        ..Default::default()
    };
    let first = backup(&mut repo, &opts(vec![]), &NoProgress).unwrap();
    assert_eq!(first.parent_tree_misses, 0, "no parent, no prefetch");
    // nothing to compare with: every file is read, and read ahead
    assert_eq!(first.read_ahead, 8);
    let unchanged = backup(&mut repo, &opts(vec![]), &NoProgress).unwrap();
    assert_eq!(unchanged.parent_tree_misses, 0);
    assert_eq!(unchanged.listing_misses, 0);
    assert_eq!(unchanged.snapshot.summary.files_unchanged, 8);
    assert_eq!(unchanged.snapshot.summary.bytes_read, 0);
    assert_eq!(unchanged.read_ahead, 0, "nothing is read: nothing is read ahead");
    // the levels above the backed-up directory (/tmp) change as other tests run: compare below
    let sub = |o: &coffer_core::BackupOutcome| subtree(&repo, o.snapshot.tree, root);
    assert_eq!(sub(&unchanged), sub(&first));

    fs::remove_dir_all(root.join("a/z")).unwrap();
    fs::create_dir_all(root.join("a/w")).unwrap();
    fs::write(root.join("a/w/new"), b"new").unwrap();
    fs::remove_dir_all(root.join("empty1")).unwrap();
    let changed = backup(
        &mut repo,
        &opts(vec![format!("{}/c d", root.display())]),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(changed.parent_tree_misses, 0);
    assert_eq!(changed.listing_misses, 0);
    let s = &changed.snapshot.summary;
    assert_eq!((s.files_new, s.files_unchanged, s.bytes_read), (1, 6, 3));
    // the new directory's file; not the excluded directory's
    assert_eq!(changed.read_ahead, 1);

    // a cache directory keeps only its tag, whether or not the walk-ahead saw it first
    fs::create_dir_all(root.join("cache/sub")).unwrap();
    fs::write(
        root.join("cache/CACHEDIR.TAG"),
        b"Signature: 8a477f597d28d172789f06886806bc55\n",
    )
    .unwrap();
    fs::write(root.join("cache/sub/junk"), b"junk").unwrap();
    let mut o = opts(vec![]);
    o.exclude_caches = true;
    let cached = backup(&mut repo, &o, &NoProgress).unwrap();
    assert_eq!((cached.parent_tree_misses, cached.listing_misses), (0, 0));
    let s = &cached.snapshot.summary;
    // new: the tag and "c d" (excluded last time); junk is left out
    assert_eq!((s.files_new, s.files_unchanged), (2, 7));
    let again = backup(&mut repo, &o, &NoProgress).unwrap();
    assert_eq!((again.parent_tree_misses, again.listing_misses), (0, 0));
    assert_eq!(
        subtree(&repo, again.snapshot.tree, root),
        subtree(&repo, cached.snapshot.tree, root)
    );
}

/// A directory of more entries than the prefetch decodes (4096) is compared with its parent
/// node by node from the parent's encoded tree: unchanged, it keeps its parent's tree (and
/// the prefetch still finds the trees below it); changed at its start, in its middle or only
/// by a deletion at its end, its new tree holds exactly what is on disk.
#[test]
fn a_large_directory_is_compared_with_its_encoded_parent() {
    let b = MemoryBackend::new();
    let src = tempfile::tempdir().unwrap();
    let big = src.path().join("big");
    fs::create_dir_all(big.join("m-sub/deeper")).unwrap();
    fs::write(big.join("m-sub/deeper/f"), b"below the large directory").unwrap();
    const N: usize = 4200;
    for i in 0..N {
        fs::write(big.join(format!("f{i:05}")), format!("file {i}")).unwrap();
    }
    let mut repo = init(&b).load_index().unwrap();
    let opts = BackupOptions {
        paths: vec![src.path().to_path_buf()],
        ..Default::default()
    };
    let names = |repo: &coffer_core::IndexedRepository, o: &coffer_core::BackupOutcome| -> Vec<String> {
        let t = repo.load_tree(&subtree(repo, o.snapshot.tree, &big)).unwrap();
        t.nodes.iter().map(|n| n.name.to_string()).collect()
    };
    // (the first difference, not two lists of 4200 names)
    let same_names = |got: Vec<String>, want: &[String]| {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        assert!(
            got.len() == want.len() && first.is_none(),
            "{} names, {} expected; first difference at {first:?}",
            got.len(),
            want.len()
        );
    };
    let first = backup(&mut repo, &opts, &NoProgress).unwrap();
    let unchanged = backup(&mut repo, &opts, &NoProgress).unwrap();
    let s = &unchanged.snapshot.summary;
    assert_eq!(
        (s.files_unchanged, s.files_new, s.bytes_read),
        (N as u64 + 1, 0, 0)
    );
    assert_eq!(
        subtree(&repo, unchanged.snapshot.tree, &big),
        subtree(&repo, first.snapshot.tree, &big)
    );
    assert_eq!(
        unchanged.parent_tree_misses, 1,
        "only the large tree is read by the walk"
    );

    // a new first entry, a changed one in the middle, a deleted one
    fs::write(big.join("a-first"), b"new").unwrap();
    fs::write(big.join("f02000"), b"changed, and longer").unwrap();
    fs::remove_file(big.join("f03000")).unwrap();
    let changed = backup(&mut repo, &opts, &NoProgress).unwrap();
    let s = &changed.snapshot.summary;
    assert_eq!(
        (s.files_new, s.files_changed, s.files_unchanged),
        (1, 1, N as u64 - 2 + 1)
    );
    let mut expected: Vec<String> = (0..N)
        .filter(|&i| i != 3000)
        .map(|i| format!("f{i:05}"))
        .collect();
    expected.push("a-first".into());
    expected.push("m-sub".into());
    expected.sort();
    same_names(names(&repo, &changed), &expected);
    let t = repo
        .load_tree(&subtree(&repo, changed.snapshot.tree, &big))
        .unwrap();
    let f = t.nodes.iter().find(|n| n.name.to_string() == "f02000").unwrap();
    assert_eq!(f.size, 19);
    let old = repo
        .load_tree(&subtree(&repo, first.snapshot.tree, &big))
        .unwrap();
    let unchanged_node =
        |t: &coffer_core::format::Tree| t.nodes.iter().find(|n| n.name.to_string() == "f04000").cloned();
    assert_eq!(unchanged_node(&t), unchanged_node(&old));

    // only the last entry deleted: the new tree is the parent's without it
    fs::remove_file(big.join(format!("f{:05}", N - 1))).unwrap();
    let shorter = backup(&mut repo, &opts, &NoProgress).unwrap();
    expected.retain(|n| *n != format!("f{:05}", N - 1));
    same_names(names(&repo, &shorter), &expected);
    let s = &shorter.snapshot.summary;
    assert_eq!((s.files_new, s.files_changed, s.bytes_read), (0, 0, 0));
}

/// A new or changed file's extended attributes are read from the descriptor its content is
/// read from, a second hard link's (whose content is the first link's) from its path, and an
/// unchanged file's come from the parent snapshot: every way gives the file's attributes.
#[test]
fn extended_attributes_are_read_on_every_path() {
    let b = MemoryBackend::new();
    let src = tempfile::tempdir().unwrap();
    let root = src.path();
    fs::write(root.join("a"), b"first").unwrap();
    fs::hard_link(root.join("a"), root.join("b")).unwrap();
    fs::write(root.join("plain"), b"no attributes").unwrap();
    xattr::set(root.join("a"), "user.origin", b"1").unwrap();
    let mut repo = init(&b).load_index().unwrap();
    let opts = BackupOptions {
        paths: vec![root.to_path_buf()],
        ..Default::default()
    };
    let attrs = |repo: &coffer_core::IndexedRepository, o: &coffer_core::BackupOutcome| {
        let t = repo.load_tree(&subtree(repo, o.snapshot.tree, root)).unwrap();
        t.nodes
            .iter()
            .map(|n| {
                let x: Vec<_> = n
                    .xattrs
                    .iter()
                    .map(|x| (x.name.0.clone(), x.value.0.clone()))
                    .collect();
                (n.name.to_string(), x)
            })
            .collect::<Vec<_>>()
    };
    let one = |v: &[u8]| vec![(b"user.origin".to_vec(), v.to_vec())];
    let want = |v: &[u8]| {
        vec![
            ("a".to_string(), one(v)),
            ("b".to_string(), one(v)),
            ("plain".to_string(), vec![]),
        ]
    };
    let first = backup(&mut repo, &opts, &NoProgress).unwrap();
    // (the second link's content is the first's: counted as unchanged)
    let s = &first.snapshot.summary;
    assert_eq!((s.files_new, s.files_unchanged), (2, 1));
    assert_eq!(attrs(&repo, &first), want(b"1"));
    let unchanged = backup(&mut repo, &opts, &NoProgress).unwrap();
    assert_eq!(unchanged.snapshot.summary.files_unchanged, 3);
    assert_eq!(attrs(&repo, &unchanged), want(b"1"));
    // an attribute changed (the ctime too): read again, with the content
    xattr::set(root.join("a"), "user.origin", b"2").unwrap();
    let changed = backup(&mut repo, &opts, &NoProgress).unwrap();
    assert_eq!(attrs(&repo, &changed), want(b"2"));
}

/// The tree id of directory `path` in the snapshot tree `root`.
fn subtree(repo: &coffer_core::IndexedRepository, root: BlobId, path: &Path) -> BlobId {
    use std::os::unix::ffi::OsStrExt;
    let mut id = root;
    for c in path.components().skip(1) {
        let t = repo.load_tree(&id).unwrap();
        let n = t
            .nodes
            .iter()
            .find(|n| n.name.0 == c.as_os_str().as_bytes())
            .unwrap();
        id = n.subtree.unwrap();
    }
    id
}

/// A walk-ahead that listed the tree before it changed (a directory replaced, a file
/// rewritten) stores nothing inconsistent: the walk checks each listed directory is the one it
/// opened (the new `d` is stored with its own content, not the old one's listing), and stats a
/// file again before reading it (`e/x`'s node describes the content read: no "changed while
/// read"). The test waits until the walk-ahead has listed the old tree.
#[test]
fn a_stale_walk_ahead_stores_nothing_inconsistent() {
    let b = MemoryBackend::new();
    let src = tempfile::tempdir().unwrap();
    let root = src.path();
    fs::create_dir_all(root.join("d")).unwrap();
    fs::create_dir_all(root.join("e")).unwrap();
    fs::write(root.join("d/old.txt"), b"old").unwrap();
    fs::write(root.join("e/x"), b"x").unwrap();
    let mut repo = init(&b).load_index().unwrap();
    let opts = BackupOptions {
        paths: vec![root.to_path_buf()],
        ..Default::default()
    };
    backup(&mut repo, &opts, &NoProgress).unwrap();
    fs::write(root.join("e/x"), b"second").unwrap(); // differs from the parent's
    let mut prescan = Prescan::start(&opts.paths, &[], false, false).unwrap();
    // the walk-ahead lists the tree as it is now (root, d, e) before it changes
    assert_eq!(prescan.wait_listed(3), 3);
    fs::rename(root.join("d"), root.join("d-moved")).unwrap();
    fs::create_dir(root.join("d")).unwrap();
    fs::write(root.join("d/new.txt"), b"new").unwrap();
    fs::write(root.join("e/x"), b"rewritten, and longer").unwrap();
    let o = backup_prescanned(
        &mut repo,
        &opts,
        Vec::new(),
        Vec::new(),
        Some(prescan),
        &NoProgress,
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let ropts = RestoreOptions {
        target: out.path().to_path_buf(),
        ..Default::default()
    };
    restore(
        &repo,
        o.snapshot.tree,
        &root.to_string_lossy(),
        &ropts,
        &NoProgress,
    )
    .unwrap();
    let r = out.path();
    assert_eq!(fs::read(r.join("d/new.txt")).unwrap(), b"new");
    assert!(!r.join("d/old.txt").exists());
    // the root's listing may predate the rename; if d-moved is there, it is whole
    if r.join("d-moved").exists() {
        assert_eq!(fs::read(r.join("d-moved/old.txt")).unwrap(), b"old");
    }
    assert_eq!(fs::read(r.join("e/x")).unwrap(), b"rewritten, and longer");
    assert_eq!(o.snapshot.summary.errors, 0, "no file changed while read");
}

trait ListExt {
    fn list(&self, k: FileKind) -> Vec<String>;
}
impl ListExt for MemoryBackend {
    fn list(&self, k: FileKind) -> Vec<String> {
        coffer_core::Backend::list(self, k)
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect()
    }
}

fn flip(b: &MemoryBackend, kind: FileKind, name: &str, bit: usize) {
    assert!(b.tamper(kind, name, |bytes| {
        let bit = bit % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
    }));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// A flipped bit anywhere in any stored object is detected when that object is read.
    #[test]
    fn flipped_bits_are_detected(bit in any::<usize>(), which in 0usize..4) {
        let (b, _src) = repo_with_snapshot();
        let kinds = [FileKind::Pack, FileKind::Index, FileKind::Snapshot, FileKind::Config];
        let kind = kinds[which];
        let names = if kind == FileKind::Config { vec!["config".to_string()] } else { b.list(kind) };
        let name = &names[bit % names.len()];
        flip(&b, kind, name, bit / 7);
        let open = Repository::open(Arc::new(b.clone()), b"pw");
        match kind {
            FileKind::Config => prop_assert!(open.is_err()),
            FileKind::Index => {
                let repo = open.unwrap();
                prop_assert!(repo.load_index_file(name).is_err());
                // left out with a message naming it (it costs deduplication only)
                let indexed = repo.load_index().unwrap();
                let skipped = indexed.index().skipped_files();
                prop_assert_eq!(skipped.len(), 1);
                prop_assert!(skipped[0].contains(&name[..8]), "{}", skipped[0]);
            }
            FileKind::Snapshot => {
                let repo = open.unwrap();
                prop_assert!(repo.load_snapshot(&name.parse::<SnapshotId>().unwrap()).is_err());
            }
            _ => {
                let repo = open.unwrap().load_index().unwrap();
                let err = repo.verify_pack(&name.parse::<PackId>().unwrap()).unwrap_err();
                prop_assert!(err.to_string().contains(&name[..8]), "error does not name the pack: {}", err);
            }
        }
    }
}

/// A new repository in `b` with 1 MiB packs (several packs from a little data), index loaded.
fn init_with_mib_packs(b: &MemoryBackend) -> coffer_core::IndexedRepository {
    let opts = InitOptions {
        pack_size: 1 << 20,
        ..InitOptions::default()
    };
    Repository::init(Arc::new(b.clone()), b"pw", &opts)
        .unwrap()
        .load_index()
        .unwrap()
}

/// Packs are written from one reused buffer per pack, with their envelopes in a shuffled
/// order: every blob reads back, each pack's header agrees with the index and covers the file
/// exactly, the envelopes of a pack are not laid out in the order they were stored, and small
/// blobs sit in bundles, each member located in the index at its bundle's envelope.
#[test]
fn packs_hold_their_blobs_whole_and_in_shuffled_order() {
    let b = MemoryBackend::new();
    let mut repo = init_with_mib_packs(&b);
    // incompressible blobs: 30 trees of ~145 KiB (trees have their own envelopes and packs:
    // several packs, so pack buffers are written and reused, and their order is seen), 30
    // small data blobs (bundled) and 2 data blobs over the bundle size of 2 MiB (own envelopes)
    let mut seed = 1u64;
    let kind = |i: u32| match i % 31 {
        0 => BlobKind::Data,
        _ if i % 2 == 1 => BlobKind::Data,
        _ => BlobKind::Tree,
    };
    let blobs: Vec<(BlobKind, Vec<u8>)> = (0..62u32)
        .map(|i| {
            let len = match (kind(i), i % 31) {
                (BlobKind::Tree, _) => (129 << 10) + (i as usize * 7919) % 33_000,
                (_, 0) => (2 << 20) + 1 + i as usize,
                _ => 1000 + (i as usize * 7919) % 9_000,
            };
            let data = (0..len)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 56) as u8
                })
                .collect();
            (kind(i), data)
        })
        .collect();
    let input = blobs.clone();
    let ids = coffer_core::store_blobs(&mut repo, input).unwrap();
    for (id, (kind, data)) in ids.iter().zip(&blobs) {
        assert_eq!(&repo.read_blob(id, *kind).unwrap(), data);
    }
    let packs = b.snapshot_all();
    let packs: Vec<_> = packs.iter().filter(|(k, _, _)| *k == FileKind::Pack).collect();
    assert!(packs.len() >= 3, "{} packs", packs.len());
    let (mut out_of_order, mut members) = (0, 0);
    for (_, name, bytes) in packs {
        let pack: PackId = name.parse().unwrap();
        let entries = repo.read_pack_header(&pack).unwrap();
        // the envelopes tile the pack up to its header
        let header_len = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap()) as usize;
        let mut end = 0;
        for (e, inside) in coffer_core::format::envelopes(&entries) {
            assert_eq!(e.offset as usize, end);
            end += e.length as usize;
            if inside.is_empty() {
                assert_eq!(e.place, Place::Own);
                let at = repo.index().get(&e.id).unwrap();
                assert_eq!(
                    (at.pack, at.offset, at.length, at.in_bundle),
                    (pack, e.offset, e.length, None)
                );
                assert!(
                    e.kind == BlobKind::Tree || e.raw_length as usize > 2 << 20,
                    "a data blob of at most 2 MiB in its own envelope"
                );
            } else {
                assert_eq!(e.place, Place::Bundle);
                assert!(inside.len() >= 2, "a bundle of one");
                for m in inside {
                    members += 1;
                    let at = repo.index().get(&m.id).unwrap();
                    assert_eq!(
                        (at.pack, at.offset, at.length, at.in_bundle, at.raw_length),
                        (pack, e.offset, e.length, Some(m.offset), m.length)
                    );
                }
            }
        }
        assert_eq!(end + header_len + 4, bytes.len());
        // stored order of the envelopes, by position in the input
        let order: Vec<usize> = coffer_core::format::envelopes(&entries)
            .map(|(e, inside)| {
                let first = inside.first().map_or(e.id, |m| m.id);
                ids.iter().position(|i| *i == first).unwrap()
            })
            .collect();
        if order.windows(2).any(|w| w[0] > w[1]) {
            out_of_order += 1;
        }
    }
    assert_eq!(members, 30, "every small data blob in a bundle");
    assert!(out_of_order >= 2, "only {out_of_order} packs shuffled");
}

/// A backend whose pack writes start failing after `ok` of them; `remote` says whether it
/// reports itself latency-bound (the packer then fills one buffer per writer, else one).
#[derive(Debug, Clone)]
struct FailingPacks {
    inner: MemoryBackend,
    ok: Arc<std::sync::atomic::AtomicUsize>,
    remote: bool,
}

impl coffer_core::Backend for FailingPacks {
    fn location(&self) -> String {
        "failing".into()
    }
    fn create(&self) -> coffer_core::backend::BResult<()> {
        self.inner.create()
    }
    fn exists(&self) -> coffer_core::backend::BResult<bool> {
        self.inner.exists()
    }
    fn list(&self, kind: FileKind) -> coffer_core::backend::BResult<Vec<coffer_core::FileInfo>> {
        coffer_core::Backend::list(&self.inner, kind)
    }
    fn read(&self, kind: FileKind, name: &str) -> coffer_core::backend::BResult<Vec<u8>> {
        self.inner.read(kind, name)
    }
    fn read_range(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: u32,
    ) -> coffer_core::backend::BResult<Vec<u8>> {
        self.inner.read_range(kind, name, offset, len)
    }
    fn size(&self, kind: FileKind, name: &str) -> coffer_core::backend::BResult<u64> {
        self.inner.size(kind, name)
    }
    fn write(
        &self,
        kind: FileKind,
        name: &str,
        data: &[u8],
    ) -> coffer_core::backend::BResult<coffer_core::WriteOutcome> {
        use std::sync::atomic::Ordering;
        if kind == FileKind::Pack
            && self
                .ok
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
        {
            return Err(coffer_core::BackendError::Io {
                location: "failing".into(),
                what: name.into(),
                detail: "injected".into(),
                transient: false,
            });
        }
        self.inner.write(kind, name, data)
    }
    fn remove(&self, kind: FileKind, name: &str) -> coffer_core::backend::BResult<()> {
        self.inner.remove(kind, name)
    }
    fn latency_bound(&self) -> bool {
        self.remote
    }
}

/// A pack write that fails stops the backup with that error (the packer does not wait for a
/// pack buffer the failed write never hands back), leaves no snapshot, and what was stored
/// before the failure is a consistent repository the next backup completes.
#[test]
fn a_failed_pack_write_stops_the_backup_cleanly() {
    let src = tempfile::tempdir().unwrap();
    let mut seed = 7u64;
    for i in 0..12 {
        let data: Vec<u8> = (0..700_000)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 56) as u8
            })
            .collect();
        fs::write(src.path().join(format!("f{i}")), data).unwrap();
    }
    let opts = BackupOptions {
        paths: vec![src.path().to_path_buf()],
        ..Default::default()
    };
    for remote in [false, true] {
        for ok in [0, 2] {
            let fail = FailingPacks {
                inner: MemoryBackend::new(),
                ok: Arc::new(std::sync::atomic::AtomicUsize::new(ok)),
                remote,
            };
            let init = InitOptions {
                pack_size: 1 << 20,
                ..InitOptions::default()
            };
            Repository::init(Arc::new(fail.clone()), b"pw", &init).unwrap();
            let mut repo = Repository::open(Arc::new(fail.clone()), b"pw")
                .unwrap()
                .load_index()
                .unwrap();
            let err = backup(&mut repo, &opts, &NoProgress).unwrap_err();
            assert!(err.to_string().contains("injected"), "{remote} {ok}: {err}");
            assert!(coffer_core::Backend::list(&fail.inner, FileKind::Snapshot)
                .unwrap()
                .is_empty());
            // the packs that were written are whole; a backup on a working backend completes
            let mut repo = Repository::open(Arc::new(fail.inner.clone()), b"pw")
                .unwrap()
                .load_index()
                .unwrap();
            backup(&mut repo, &opts, &NoProgress).unwrap();
            let check = coffer_core::check::CheckOptions {
                read_data: Some(coffer_core::check::ReadData::All),
                cache_dir: None,
            };
            let repo = Repository::open(Arc::new(fail.inner.clone()), b"pw").unwrap();
            let report = coffer_core::check::check(repo, &check, &NoProgress).unwrap();
            assert!(report.errors.is_empty(), "{remote} {ok}: {:?}", report.errors);
        }
    }
}

/// Prune and `repair index` write the listing of the whole repository: as files of at most
/// 65,536 entries (a pack whole), each of which a reader decodes and drops before the next,
/// not as one file as large as the repository's index.
#[test]
fn a_whole_listing_is_split_into_index_files_of_bounded_size() {
    use coffer_core::format::{Id, IndexId, IndexPack, PackEntry};
    let b = MemoryBackend::new();
    let repo = init(&b);
    let pack = |tag: u8, n: u32| IndexPack {
        id: PackId(Id([tag; 32])),
        entries: (0..n)
            .map(|i| {
                let mut id = [tag; 32];
                id[1..5].copy_from_slice(&i.to_be_bytes());
                PackEntry::own(BlobKind::Data, BlobId(Id(id)), i * 100, 100, 10)
            })
            .collect(),
    };
    let packs = vec![pack(1, 40_000), pack(2, 40_000), pack(3, 100_000), pack(4, 1)];
    let old = IndexId(Id([7; 32]));
    let ids = repo.save_index_split(vec![old], packs.clone()).unwrap();
    // 40k, then 40k more would pass 65,536: a file each; a pack larger than the bound alone
    assert_eq!(ids.len(), 4);
    let mut listed = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let file = repo.load_index_file(&id.to_hex()).unwrap();
        assert_eq!(
            file.supersedes,
            if i == 3 { vec![old] } else { vec![] },
            "file {i}"
        );
        listed.extend(file.packs);
    }
    assert_eq!(listed, packs);
    let repo = repo.load_index().unwrap();
    assert_eq!(repo.index().blob_count(), 180_001);
    assert_eq!(b.list(FileKind::Index).len(), 4);
    // an empty listing is still one file, which names what it supersedes
    let none = init(&MemoryBackend::new())
        .save_index_split(vec![old], vec![])
        .unwrap();
    assert_eq!(none.len(), 1);
    // an error part-way (prune reads the packs back from a file) stops before the file that
    // names what it supersedes
    let b2 = MemoryBackend::new();
    let repo2 = init(&b2);
    let streamed = repo2.save_index_streamed(
        vec![old],
        packs
            .iter()
            .take(2)
            .cloned()
            .map(Ok)
            .chain([Err(coffer_core::Error::Invalid("unreadable".into()))]),
    );
    assert!(streamed.is_err());
    let written = b2.list(FileKind::Index);
    assert_eq!(written.len(), 1, "the first pack's file only");
    for name in written {
        assert_eq!(repo2.load_index_file(&name).unwrap().supersedes, vec![]);
    }
}

/// `repair index` writes a listing larger than one index file as several, removes the files
/// it read and none of those it wrote: every blob is found again afterwards.
#[test]
fn repair_index_of_a_large_listing_removes_only_the_files_it_read() {
    let b = MemoryBackend::new();
    let mut repo = init_with_mib_packs(&b);
    // 70,000 incompressible blobs of 64 bytes: ~5 packs, more entries than one file holds
    let blobs: Vec<(BlobKind, Vec<u8>)> = (0..70_000u32)
        .map(|i| {
            let h = blake3::hash(&i.to_le_bytes());
            (BlobKind::Data, [h.as_bytes().as_slice(), h.as_bytes()].concat())
        })
        .collect();
    let ids = coffer_core::store_blobs(&mut repo, blobs).unwrap();
    drop(repo);
    // one listing lost: the repair writes the whole listing again
    let before = b.list(FileKind::Index);
    coffer_core::backend::Backend::remove(&b, FileKind::Index, &before[0]).unwrap();
    let read: Vec<String> = before[1..].to_vec();
    let r =
        coffer_core::repair::repair_index(Repository::open(Arc::new(b.clone()), b"pw").unwrap(), &NoProgress)
            .unwrap();
    assert!(r.changed);
    let after = b.list(FileKind::Index);
    assert!(after.len() >= 2, "the listing was split: {after:?}");
    assert!(
        after.iter().all(|f| !before.contains(f)),
        "only new files: {after:?}"
    );
    let repo = Repository::open(Arc::new(b.clone()), b"pw")
        .unwrap()
        .load_index()
        .unwrap();
    assert_eq!(repo.index().blob_count(), 70_000);
    for id in ids.iter().step_by(997) {
        assert_eq!(repo.read_blob(id, BlobKind::Data).unwrap().len(), 64);
    }
    assert!(read.iter().all(|f| !after.contains(f)));
}

/// A vouched index that lists every pack but one of them short of an entry (a full key's
/// listing gone stale or wrong) is not "the same" as what the packs hold: `repair index`
/// writes it again, and every blob is found afterwards.
#[test]
fn repair_index_rewrites_a_listing_short_of_an_entry() {
    let b = MemoryBackend::new();
    let mut repo = init_with_mib_packs(&b);
    // (tree blobs: each in its own envelope, so that a listing one short still decodes; a
    // data blob this small would be a member of a bundle whose id names every member)
    let blobs: Vec<(BlobKind, Vec<u8>)> = (0..100u32)
        .map(|i| (BlobKind::Tree, blake3::hash(&i.to_le_bytes()).as_bytes().to_vec()))
        .collect();
    let ids = coffer_core::store_blobs(&mut repo, blobs).unwrap();
    drop(repo);
    let repo = Repository::open(Arc::new(b.clone()), b"pw").unwrap();
    let files = b.list(FileKind::Index);
    let mut packs = Vec::new();
    for f in &files {
        packs.extend(repo.load_index_file(f).unwrap().packs);
    }
    let dropped = packs[0].entries.pop().unwrap();
    repo.save_index(&coffer_core::format::IndexFile {
        supersedes: vec![],
        packs,
    })
    .unwrap();
    for f in &files {
        coffer_core::backend::Backend::remove(&b, FileKind::Index, f).unwrap();
    }
    drop(repo);
    let open = || Repository::open(Arc::new(b.clone()), b"pw").unwrap();
    assert!(!open().load_index().unwrap().index().contains(&dropped.id));
    let r = coffer_core::repair::repair_index(open(), &NoProgress).unwrap();
    assert!(r.changed, "{r:?}");
    let repo = Repository::open(Arc::new(b.clone()), b"pw")
        .unwrap()
        .load_index()
        .unwrap();
    assert_eq!(repo.index().blob_count(), 100);
    for id in &ids {
        assert_eq!(repo.read_blob(id, BlobKind::Tree).unwrap().len(), 32);
    }
}
