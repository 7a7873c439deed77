//! Prune: frees what no snapshot uses, keeps everything a snapshot uses, aborts on doubt,
//! and stays safe while backups run.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use coffer_core::backend::{BResult, Backend, BackendError, FileInfo, FileKind, WriteOutcome};
use coffer_core::check::{check, CheckOptions, ReadData};
use coffer_core::memory::MemoryBackend;
use coffer_core::prune::{prune, PruneOptions};
use coffer_core::{
    backup, restore, BackupOptions, InitOptions, NoProgress, ParentChoice, Repository, RestoreOptions,
};

fn rand_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2).wrapping_add(1); // distinct seeds, distinct streams
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn small_packs() -> InitOptions {
    InitOptions {
        pack_size: 1 << 20,
        ..InitOptions::default()
    }
}

fn open(b: &dyn Fn() -> Arc<dyn Backend>) -> Repository {
    Repository::open(b(), b"pw").unwrap()
}

/// Prune with no unused share allowed: every pack with unused data is repacked or freed.
fn try_prune_all_unused(
    b: &dyn Fn() -> Arc<dyn Backend>,
) -> coffer_core::Result<coffer_core::prune::PruneReport> {
    prune(
        open(b),
        &PruneOptions {
            max_unused: 0.0,
            ..Default::default()
        },
        &NoProgress,
    )
}

/// [`try_prune_all_unused`], which must succeed.
fn prune_all_unused(b: &dyn Fn() -> Arc<dyn Backend>) -> coffer_core::prune::PruneReport {
    try_prune_all_unused(b).unwrap()
}

/// The names of the packs `b` holds.
fn pack_names(b: &MemoryBackend) -> Vec<String> {
    b.list(FileKind::Pack)
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect()
}

fn backup_dir(b: Arc<dyn Backend>, dir: &Path) -> coffer_core::BackupOutcome {
    let mut repo = Repository::open(b, b"pw").unwrap().load_index().unwrap();
    let opts = BackupOptions {
        paths: vec![dir.to_path_buf()],
        parent: ParentChoice::None,
        ..Default::default()
    };
    backup(&mut repo, &opts, &NoProgress).unwrap()
}

/// Restore every snapshot and compare with the expected content of each file.
fn restore_all_ok(b: Arc<dyn Backend>, expect: &dyn Fn(&str) -> Option<Vec<u8>>) -> usize {
    let repo = Repository::open(b, b"pw").unwrap().load_index().unwrap();
    let snaps = repo.list_snapshots().unwrap();
    for (_, s) in &snaps {
        let out = tempfile::tempdir().unwrap();
        let opts = RestoreOptions {
            target: out.path().to_path_buf(),
            ..Default::default()
        };
        let st = restore(&repo, s.tree, "/", &opts, &NoProgress).unwrap();
        assert_eq!(st.errors, 0);
        for e in walk(out.path()) {
            let name = e.file_name().unwrap().to_string_lossy().into_owned();
            if let Some(want) = expect(&name) {
                assert_eq!(fs::read(&e).unwrap(), want, "{name}");
            }
        }
    }
    snaps.len()
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in fs::read_dir(p).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            v.extend(walk(&path));
        } else {
            v.push(path);
        }
    }
    v
}

fn stored(b: &MemoryBackend) -> u64 {
    b.snapshot_all()
        .iter()
        .filter(|(k, _, _)| *k == FileKind::Pack)
        .map(|(_, _, d)| d.len() as u64)
        .sum()
}

fn diagnose(b: &Arc<dyn Backend>, errors: &[String]) {
    let repo = Repository::open(b.clone(), b"pw").unwrap().load_index().unwrap();
    for e in errors {
        let Some(hex) = e.split_whitespace().nth(1) else {
            continue;
        };
        for f in b.list(FileKind::Pack).unwrap() {
            let id: coffer_core::format::PackId = f.name.parse().unwrap();
            if let Ok(h) = repo.read_pack_header(&id) {
                if h.iter().any(|x| x.id.to_hex().starts_with(hex)) {
                    eprintln!(
                        "DIAG: {hex} is in stored pack {} (indexed: {})",
                        id.short(),
                        repo.index().contains_pack(&id)
                    );
                }
            }
        }
        eprintln!("DIAG: marks {:?}", coffer_core::prune::list_marks(&**b).unwrap());
    }
}

fn check_clean(b: Arc<dyn Backend>) {
    let r = check(
        Repository::open(b.clone(), b"pw").unwrap(),
        &CheckOptions {
            read_data: Some(ReadData::All),
            cache_dir: None,
        },
        &NoProgress,
    )
    .unwrap();
    if !r.ok() {
        diagnose(&b, &r.errors);
    }
    assert!(r.ok(), "check: {:?}", r.errors);
}

#[test]
fn prune_frees_forgotten_data_and_repacks() {
    let mem = MemoryBackend::new();
    let b = || -> Arc<dyn Backend> { Arc::new(mem.clone()) };
    Repository::init(b(), b"pw", &small_packs()).unwrap();
    let src = tempfile::tempdir().unwrap();
    // snapshot 1: a (3 MB) + shared (2 MB); snapshot 2: shared + b (1 MB)
    fs::write(src.path().join("shared"), rand_bytes(1, 2 << 20)).unwrap();
    fs::write(src.path().join("a"), rand_bytes(2, 3 << 20)).unwrap();
    let s1 = backup_dir(b(), src.path());
    fs::remove_file(src.path().join("a")).unwrap();
    fs::write(src.path().join("b"), rand_bytes(3, 1 << 20)).unwrap();
    backup_dir(b(), src.path());
    let before = stored(&mem);
    // nothing to free while both snapshots exist
    let r = prune(open(&b), &PruneOptions::default(), &NoProgress).unwrap();
    assert_eq!(r.packs_deleted, 0);
    assert_eq!(stored(&mem), before);
    // forget snapshot 1: a's 3 MB go
    b().remove(FileKind::Snapshot, &s1.id.to_hex()).unwrap();
    let r = prune_all_unused(&b);
    assert!(r.packs_deleted > 0, "{r:?}");
    let after = stored(&mem);
    assert!(
        before - after > 2_900_000,
        "freed only {} bytes (before {before}, after {after}): {r:?}",
        before - after
    );
    assert!(
        after < 3_300_000 + 300_000,
        "{after} bytes left for 3 MB of live data"
    );
    assert!(b().list(FileKind::Mark).unwrap().is_empty());
    check_clean(b());
    let expect = |n: &str| match n {
        "shared" => Some(rand_bytes(1, 2 << 20)),
        "b" => Some(rand_bytes(3, 1 << 20)),
        _ => None,
    };
    assert_eq!(restore_all_ok(b(), &expect), 1);
    // a second prune has nothing to do
    let r = prune_all_unused(&b);
    assert_eq!((r.packs_condemned, r.packs_deleted), (0, 0), "{r:?}");
}

/// A backend whose listings can be made to fail or come back empty.
#[derive(Debug, Clone)]
struct Flaky {
    inner: MemoryBackend,
    /// 0: fine, 1: list(Pack) fails, 2: list(Pack) empty, 3: list(Snapshot) empty, 4: list(Snapshot) fails
    mode: Arc<AtomicU8>,
    /// Packs the next listing of packs leaves out (then forgotten): as if they were written
    /// just after it.
    hide_once: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Flaky {
    fn new(inner: &MemoryBackend) -> Self {
        Flaky {
            inner: inner.clone(),
            mode: Arc::new(AtomicU8::new(0)),
            hide_once: Default::default(),
        }
    }
}

impl Backend for Flaky {
    fn location(&self) -> String {
        "flaky".into()
    }
    fn create(&self) -> BResult<()> {
        self.inner.create()
    }
    fn exists(&self) -> BResult<bool> {
        self.inner.exists()
    }
    fn list(&self, kind: FileKind) -> BResult<Vec<FileInfo>> {
        let err = || BackendError::Io {
            location: "flaky".into(),
            what: "list".into(),
            detail: "injected".into(),
            transient: true,
        };
        match (self.mode.load(Ordering::SeqCst), kind) {
            (1, FileKind::Pack) | (4, FileKind::Snapshot) => Err(err()),
            (2, FileKind::Pack) | (3, FileKind::Snapshot) => Ok(vec![]),
            (_, FileKind::Pack) => {
                let hide = std::mem::take(&mut *self.hide_once.lock().unwrap());
                let mut all = self.inner.list(kind)?;
                all.retain(|f| !hide.contains(&f.name));
                Ok(all)
            }
            _ => self.inner.list(kind),
        }
    }
    fn read(&self, kind: FileKind, name: &str) -> BResult<Vec<u8>> {
        self.inner.read(kind, name)
    }
    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u32) -> BResult<Vec<u8>> {
        self.inner.read_range(kind, name, offset, len)
    }
    fn size(&self, kind: FileKind, name: &str) -> BResult<u64> {
        self.inner.size(kind, name)
    }
    fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> BResult<WriteOutcome> {
        self.inner.write(kind, name, data)
    }
    fn remove(&self, kind: FileKind, name: &str) -> BResult<()> {
        self.inner.remove(kind, name)
    }
}

/// A backup running beside a prune writes packs and an index file listing them between the
/// prune's listing of the packs and its reading of the index: the prune lists again instead of
/// calling those packs missing (it used to stop with "listed in the index but missing from
/// storage; run `coffer repair index`", seen in the concurrency test below), and takes nothing
/// of that backup.
#[test]
fn packs_written_during_a_prune_are_not_missing_to_it() {
    let mem = MemoryBackend::new();
    let flaky = Flaky::new(&mem);
    let b = || -> Arc<dyn Backend> { Arc::new(flaky.clone()) };
    Repository::init(b(), b"pw", &small_packs()).unwrap();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("x"), rand_bytes(21, 1 << 20)).unwrap();
    let old = backup_dir(b(), src.path());
    let before = pack_names(&mem);
    fs::write(src.path().join("x"), rand_bytes(22, 1 << 20)).unwrap();
    backup_dir(b(), src.path());
    let new: Vec<String> = pack_names(&mem)
        .into_iter()
        .filter(|n| !before.contains(n))
        .collect();
    assert!(!new.is_empty());
    mem.remove(FileKind::Snapshot, &old.id.to_hex()).unwrap(); // something to prune
    *flaky.hide_once.lock().unwrap() = new.clone();
    let r = prune_all_unused(&b);
    assert!(r.packs_condemned > 0, "{r:?}");
    let after = pack_names(&mem);
    assert!(
        new.iter().all(|n| after.contains(n)),
        "the new backup's packs stay"
    );
    let expect = |_: &str| Some(rand_bytes(22, 1 << 20));
    assert_eq!(restore_all_ok(b(), &expect), 1);
    check_clean(b());
    // a pack that is really gone is still said, and nothing is deleted (a data pack: the
    // largest of the new ones; without a tree pack the prune would stop earlier)
    let largest = mem
        .list(FileKind::Pack)
        .unwrap()
        .into_iter()
        .filter(|f| new.contains(&f.name))
        .max_by_key(|f| f.size)
        .unwrap();
    mem.remove(FileKind::Pack, &largest.name).unwrap();
    let files_before = mem.snapshot_all();
    let e = try_prune_all_unused(&b).unwrap_err();
    assert!(e.to_string().contains("missing from storage"), "{e}");
    let after: Vec<(FileKind, String)> = mem.snapshot_all().into_iter().map(|(k, n, _)| (k, n)).collect();
    assert!(
        files_before
            .iter()
            .all(|(k, n, _)| after.contains(&(*k, n.clone()))),
        "a refused prune deleted something"
    );
}

#[test]
fn failing_or_empty_listings_abort_prune() {
    let mem = MemoryBackend::new();
    let flaky = Flaky::new(&mem);
    let b = || -> Arc<dyn Backend> { Arc::new(flaky.clone()) };
    Repository::init(b(), b"pw", &small_packs()).unwrap();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("x"), rand_bytes(9, 1 << 20)).unwrap();
    let s = backup_dir(b(), src.path());
    fs::write(src.path().join("y"), rand_bytes(10, 1 << 20)).unwrap();
    backup_dir(b(), src.path());
    mem.remove(FileKind::Snapshot, &s.id.to_hex()).unwrap(); // make something prunable
    let files_before = mem.snapshot_all();
    for mode in 1..=4u8 {
        flaky.mode.store(mode, Ordering::SeqCst);
        let r = try_prune_all_unused(&b);
        assert!(r.is_err(), "mode {mode}: prune went ahead: {r:?}");
        flaky.mode.store(0, Ordering::SeqCst);
        let now: Vec<_> = mem
            .snapshot_all()
            .into_iter()
            .filter(|(k, _, _)| *k != FileKind::Lock)
            .collect();
        let was: Vec<_> = files_before
            .iter()
            .filter(|(k, _, _)| *k != FileKind::Lock)
            .cloned()
            .collect();
        assert_eq!(now, was, "mode {mode}: prune changed the repository");
    }
    // and with a healthy backend it works
    let r = prune_all_unused(&b);
    assert!(r.packs_deleted > 0);
}

#[test]
fn running_backup_defers_deletion_and_keeps_what_it_uses() {
    let mem = MemoryBackend::new();
    let b = || -> Arc<dyn Backend> { Arc::new(mem.clone()) };
    Repository::init(b(), b"pw", &small_packs()).unwrap();
    let other = tempfile::tempdir().unwrap();
    fs::write(other.path().join("other"), rand_bytes(6, 100_000)).unwrap();
    backup_dir(b(), other.path());
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("old"), rand_bytes(5, 2 << 20)).unwrap();
    let s1 = backup_dir(b(), src.path());
    // a backup starts: it holds a lease and has read the index, which lists `old`'s data
    let mut running = Repository::open(b(), b"pw")
        .unwrap()
        .load_index_leased("backup")
        .unwrap();
    // meanwhile the snapshot is forgotten and a prune runs: `old`'s packs are condemned,
    // but the running backup is a blocker, so nothing is deleted yet
    b().remove(FileKind::Snapshot, &s1.id.to_hex()).unwrap();
    let before = stored(&mem);
    let r = prune(open(&b), &PruneOptions::default(), &NoProgress).unwrap();
    assert!(r.packs_condemned > 0);
    assert_eq!(r.packs_deleted, 0, "{r:?}");
    assert_eq!(r.deferred.len(), 1, "{r:?}");
    assert_eq!(stored(&mem), before);
    // the running backup now finishes, deduplicating against the condemned data
    let opts = BackupOptions {
        paths: vec![src.path().to_path_buf()],
        ..Default::default()
    };
    let out = backup(&mut running, &opts, &NoProgress).unwrap();
    assert_eq!(out.snapshot.summary.bytes_read, 2 << 20);
    assert!(
        out.snapshot.summary.bytes_new_raw < 64 << 10,
        "the data was uploaded again instead of deduplicated"
    );
    drop(running);
    // its snapshot is restorable right away (the condemned packs were listed again) ...
    let expect = |n: &str| match n {
        "old" => Some(rand_bytes(5, 2 << 20)),
        "other" => Some(rand_bytes(6, 100_000)),
        _ => None,
    };
    assert_eq!(restore_all_ok(b(), &expect), 2);
    check_clean(b());
    // ... and the next prune keeps that data
    let r = prune(open(&b), &PruneOptions::default(), &NoProgress).unwrap();
    assert!(r.deferred.is_empty(), "{r:?}");
    assert_eq!(restore_all_ok(b(), &expect), 2);
    check_clean(b());
    assert!(b().list(FileKind::Mark).unwrap().is_empty());
}

/// Backup rounds per client in the concurrency test.
const ROUNDS: u64 = 20;

#[test]
fn concurrent_backups_and_prunes_lose_nothing() {
    let finished = std::sync::atomic::AtomicUsize::new(0);
    let finished = &finished;
    let mem = MemoryBackend::new();
    let b = move || -> Arc<dyn Backend> { Arc::new(mem.clone()) };
    Repository::init(b(), b"pw", &small_packs()).unwrap();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    std::thread::scope(|s| {
        for (c, d) in dirs.iter().enumerate() {
            let b = b.clone();
            s.spawn(move || {
                for round in 0..ROUNDS {
                    // each round: one file changes, one stays, data shared across clients
                    fs::write(d.path().join("stable"), rand_bytes(100, 300_000)).unwrap();
                    fs::write(
                        d.path().join("changing"),
                        rand_bytes(1000 * c as u64 + round, 400_000),
                    )
                    .unwrap();
                    let mut repo = Repository::open(b(), b"pw").unwrap().load_index().unwrap();
                    let opts = BackupOptions {
                        paths: vec![d.path().to_path_buf()],
                        hostname: Some(format!("c{c}")),
                        ..Default::default()
                    };
                    backup(&mut repo, &opts, &NoProgress).unwrap();
                }
                finished.fetch_add(1, Ordering::SeqCst);
            });
        }
        let b = b.clone();
        s.spawn(move || {
            // forget + prune in a loop for as long as the backups run (bounded)
            for _ in 0..500 {
                if finished.load(Ordering::SeqCst) == 2 {
                    break;
                }
                let repo = Repository::open(b(), b"pw").unwrap();
                let snaps = repo.list_snapshots().unwrap();
                let policy = coffer_core::forget::KeepPolicy {
                    last: 2,
                    ..Default::default()
                };
                for g in coffer_core::forget::apply_grouped(&snaps, &policy, Default::default()) {
                    for d in g.snapshots.iter().filter(|d| !d.keep) {
                        let _ = b().remove(FileKind::Snapshot, &d.id.to_hex());
                    }
                }
                if let Err(e) = prune(
                    repo,
                    &PruneOptions {
                        max_unused: 0.0,
                        ..Default::default()
                    },
                    &NoProgress,
                ) {
                    // the only acceptable failure is a concurrent-prune refusal
                    assert!(e.to_string().contains("another prune"), "{e}");
                }
            }
        });
    });
    // every remaining snapshot restores byte-identical, and the data checks clean
    check_clean(b());
    let repo = Repository::open(b(), b"pw").unwrap().load_index().unwrap();
    for (id, s) in repo.list_snapshots().unwrap() {
        let out = tempfile::tempdir().unwrap();
        let st = restore(
            &repo,
            s.tree,
            "/",
            &RestoreOptions {
                target: out.path().to_path_buf(),
                ..Default::default()
            },
            &NoProgress,
        )
        .unwrap();
        assert_eq!(st.errors, 0, "snapshot {}", id.short());
        let files = walk(out.path());
        let stable = files.iter().find(|p| p.ends_with("stable")).unwrap();
        assert_eq!(fs::read(stable).unwrap(), rand_bytes(100, 300_000));
        let changing = files.iter().find(|p| p.ends_with("changing")).unwrap();
        let data = fs::read(changing).unwrap();
        let valid = (0..2u64)
            .flat_map(|c| (0..ROUNDS).map(move |r| 1000 * c + r))
            .any(|seed| data == rand_bytes(seed, 400_000));
        assert!(
            valid,
            "snapshot {}: `changing` has content no backup wrote",
            id.short()
        );
    }
    // a final prune with no backups running leaves no marks behind
    prune(
        Repository::open(b(), b"pw").unwrap(),
        &PruneOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert!(b().list(FileKind::Mark).unwrap().is_empty());
    check_clean(b());
}

/// Data blobs are stored in bundles, several to an envelope. Prune frees the unused members of
/// a bundle that still holds used ones: it bundles the used ones again and drops the old
/// bundle. Everything left restores and checks clean.
#[test]
fn prune_frees_unused_members_of_bundles_and_bundles_the_used_again() {
    let mem = MemoryBackend::new();
    let b = || -> Arc<dyn Backend> { Arc::new(mem.clone()) };
    Repository::init(b(), b"pw", &small_packs()).unwrap();
    let src = tempfile::tempdir().unwrap();
    // 20 KB incompressible files, "a" ones (2 MB, only in snapshot 1) and "b" ones (2 MB, in
    // both) in turn, so that every bundle holds both kinds
    let content = |kind: char, i: u64| rand_bytes(if kind == 'a' { 1000 + i } else { 2000 + i }, 20_000);
    for i in 0..100 {
        for kind in ['a', 'b'] {
            fs::write(src.path().join(format!("f{i:03}{kind}")), content(kind, i)).unwrap();
        }
    }
    let s1 = backup_dir(b(), src.path());
    let repo = Repository::open(b(), b"pw").unwrap().load_index().unwrap();
    let bundled = repo.index().iter().filter(|(_, l)| l.in_bundle.is_some()).count();
    assert_eq!(bundled, 200, "every file in a bundle");
    for i in 0..100 {
        fs::remove_file(src.path().join(format!("f{i:03}a"))).unwrap();
    }
    backup_dir(b(), src.path());
    let before = stored(&mem);
    b().remove(FileKind::Snapshot, &s1.id.to_hex()).unwrap();
    let r = prune_all_unused(&b);
    let after = stored(&mem);
    // a's 2 MB go although every bundle they were in also held some of b
    assert!(
        before - after > 1_900_000,
        "freed only {} of a's 2 MB: {r:?}",
        before - after
    );
    assert!(after > 2_000_000, "b's 2 MB are gone: {after} bytes left");
    assert!(after < 2_300_000, "{after} bytes left for b's 2 MB");
    assert_eq!(r.bytes_rebundled, 2_000_000, "{r:?}");
    // every blob b uses was kept on its own merits, none rescued by prune's last check
    assert_eq!(r.packs_rescued, 0, "{r:?}");
    check_clean(b());
    let expect = |n: &str| {
        let i: u64 = n.get(1..4)?.parse().ok()?;
        n.ends_with('b').then(|| content('b', i))
    };
    assert_eq!(restore_all_ok(b(), &expect), 1);
    let repo = Repository::open(b(), b"pw").unwrap().load_index().unwrap();
    let bundled = repo.index().iter().filter(|(_, l)| l.in_bundle.is_some()).count();
    assert_eq!(bundled, 100, "b's files, bundled again");
    // a second prune has nothing to do
    let r = prune_all_unused(&b);
    assert_eq!((r.packs_condemned, r.bytes_rebundled), (0, 0), "{r:?}");
}

/// A bundle of compressible files holds far more bytes than its envelope, and than the pack
/// it is in: check must measure a pack by its envelopes, not by where members end inside
/// their bundles. Every file restores.
#[test]
fn compressible_small_files_check_clean_and_restore() {
    let mem = MemoryBackend::new();
    let b = || -> Arc<dyn Backend> { Arc::new(mem.clone()) };
    Repository::init(b(), b"pw", &small_packs()).unwrap();
    let src = tempfile::tempdir().unwrap();
    let content = |i: u64| {
        format!("file {i}: GET /index.html 200\n")
            .repeat(500)
            .into_bytes()
    };
    for i in 0..100 {
        fs::write(src.path().join(format!("f{i:03}")), content(i)).unwrap();
    }
    backup_dir(b(), src.path());
    let packs: u64 = b().list(FileKind::Pack).unwrap().iter().map(|f| f.size).sum();
    assert!(packs < 500_000, "1.6 MB of text stored in {packs} bytes of packs");
    check_clean(b());
    let expect = |n: &str| Some(content(n.strip_prefix('f')?.parse().ok()?));
    assert_eq!(restore_all_ok(b(), &expect), 1);
}

/// A used file whose bytes are a sliver of a bundle that compresses to almost nothing (its
/// share of the envelope rounds to 0 bytes) still keeps its pack: prune must not condemn the
/// only copy of a used blob. With a grace period nothing is swept, so the index prune wrote
/// alone must serve the snapshot left.
#[test]
fn a_used_sliver_of_a_highly_compressed_bundle_keeps_its_pack() {
    let mem = MemoryBackend::new();
    let b = || -> Arc<dyn Backend> { Arc::new(mem.clone()) };
    Repository::init(b(), b"pw", &small_packs()).unwrap();
    let src = tempfile::tempdir().unwrap();
    let sliver = rand_bytes(77, 100);
    fs::write(src.path().join("zeros"), vec![0u8; 1_900_000]).unwrap();
    fs::write(src.path().join("sliver"), &sliver).unwrap();
    let s1 = backup_dir(b(), src.path());
    let repo = Repository::open(b(), b"pw").unwrap().load_index().unwrap();
    let bundles: Vec<_> = repo
        .index()
        .iter()
        .filter(|(_, l)| l.in_bundle.is_some())
        .collect();
    assert_eq!(bundles.len(), 2, "both files in one bundle: {bundles:?}");
    assert!(
        (bundles[0].1.length as u64) * 100 < 1_900_000,
        "the bundle compresses to {} bytes",
        bundles[0].1.length
    );
    fs::remove_file(src.path().join("zeros")).unwrap();
    backup_dir(b(), src.path());
    b().remove(FileKind::Snapshot, &s1.id.to_hex()).unwrap();
    let r = prune(
        open(&b),
        &PruneOptions {
            max_unused: 0.0,
            grace_secs: 3600,
            ..Default::default()
        },
        &NoProgress,
    )
    .unwrap();
    assert_eq!(r.packs_deleted, 0, "{r:?}");
    check_clean(b());
    let expect = |n: &str| (n == "sliver").then(|| sliver.clone());
    assert_eq!(restore_all_ok(b(), &expect), 1);
}
