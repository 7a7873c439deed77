//! Repository-level tests on the in-memory backend: keys, integrity, backup/restore.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::sync::Arc;

use coffer_core::format::{BlobId, PackId, SnapshotId};
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
    let unchanged = backup(&mut repo, &opts(vec![]), &NoProgress).unwrap();
    assert_eq!(unchanged.parent_tree_misses, 0);
    assert_eq!(unchanged.listing_misses, 0);
    assert_eq!(unchanged.snapshot.summary.files_unchanged, 8);
    assert_eq!(unchanged.snapshot.summary.bytes_read, 0);
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
    let o = backup_prescanned(&mut repo, &opts, Vec::new(), Some(prescan), &NoProgress).unwrap();
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
