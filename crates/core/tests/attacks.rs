//! Hostile storage and stolen credentials (issue 24, docs/FORMAT.md "Threat model"): each test
//! plays one attacker against a repository and ends with every honest snapshot restoring byte
//! for byte. The attacks are the ones a review reproduced against earlier builds, where each
//! cost data while `check` said all was well.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

use coffer_core::backend::{Backend, FileKind};
use coffer_core::check::{check, CheckOptions, ReadData};
use coffer_core::crypto::storage_id;
use coffer_core::format::{IndexFile, IndexPack, KeyFile, PackId};
use coffer_core::memory::MemoryBackend;
use coffer_core::prune::{prune, PruneOptions};
use coffer_core::{
    backup, restore, BackupOptions, InitOptions, NoProgress, ParentChoice, Progress, Repository,
    RestoreOptions,
};

/// A generator the attacks draw their garbage from (xorshift, seeded).
struct Rng(u64);
impl Rng {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0 as u8
            })
            .collect()
    }
}

/// Collects warnings: what a forged object must produce.
#[derive(Default)]
struct Warnings(Mutex<Vec<String>>);
impl Progress for Warnings {
    fn warn(&self, msg: &str) {
        self.0.lock().unwrap().push(msg.to_string());
    }
}
impl Warnings {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

const PW: &[u8] = b"honest password";

fn init(mem: &MemoryBackend) -> Arc<dyn Backend> {
    let b: Arc<dyn Backend> = Arc::new(mem.clone());
    Repository::init(
        b.clone(),
        PW,
        &InitOptions {
            pack_size: 1 << 20,
            ..InitOptions::default()
        },
    )
    .unwrap();
    b
}

/// [`init`], and a write-only key (password `stolen`) for the thief; its key file's id.
fn init_with_stolen_key(mem: &MemoryBackend) -> (Arc<dyn Backend>, coffer_core::format::KeyId) {
    let b = init(mem);
    let wo = Repository::open(b.clone(), PW)
        .unwrap()
        .add_write_only_key(b"stolen")
        .unwrap();
    (b, wo)
}

/// A directory of files: some small (bundled), some large (chunked), all random.
fn source(dir: &Path, seed: u64, files: usize) -> BTreeMap<String, Vec<u8>> {
    let mut rng = Rng(seed * 2 + 1);
    let mut out = BTreeMap::new();
    fs::create_dir_all(dir).unwrap();
    for i in 0..files {
        let len = if i % 4 == 0 { 700_000 } else { 3_000 + i * 100 };
        let data = rng.bytes(len);
        let name = format!("s{seed}-f{i}");
        fs::write(dir.join(&name), &data).unwrap();
        out.insert(name, data);
    }
    out
}

fn backup_as(b: &Arc<dyn Backend>, pw: &[u8], dir: &Path, progress: &dyn Progress) {
    let mut repo = Repository::open(b.clone(), pw).unwrap().load_index().unwrap();
    let opts = BackupOptions {
        paths: vec![dir.to_path_buf()],
        parent: ParentChoice::None,
        ..Default::default()
    };
    backup(&mut repo, &opts, progress).unwrap();
}

/// Every snapshot restores, and every file it holds is byte-identical to `expect`'s.
fn every_snapshot_restores(b: &Arc<dyn Backend>, expect: &BTreeMap<String, Vec<u8>>) {
    let repo = Repository::open(b.clone(), PW).unwrap().load_index().unwrap();
    let snaps = repo.list_snapshots().unwrap();
    assert!(!snaps.is_empty());
    for (id, s) in &snaps {
        let out = tempfile::tempdir().unwrap();
        let opts = RestoreOptions {
            target: out.path().to_path_buf(),
            ..Default::default()
        };
        let st = restore(&repo, s.tree, "/", &opts, &NoProgress).unwrap();
        assert_eq!(st.errors, 0, "snapshot {}", id.short());
        let mut seen = 0;
        for f in walk(out.path()) {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let want = expect.get(&name).unwrap_or_else(|| panic!("unexpected {name}"));
            assert!(
                fs::read(&f).unwrap() == *want,
                "{name} differs in snapshot {}",
                id.short()
            );
            seen += 1;
        }
        assert!(seen > 0);
    }
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in fs::read_dir(p).unwrap().flatten() {
        if e.path().is_dir() {
            v.extend(walk(&e.path()));
        } else {
            v.push(e.path());
        }
    }
    v
}

fn check_read_data(b: &Arc<dyn Backend>) -> Vec<String> {
    let r = check(
        Repository::open(b.clone(), PW).unwrap(),
        &CheckOptions {
            read_data: Some(ReadData::All),
            cache_dir: None,
        },
        &NoProgress,
    )
    .unwrap();
    r.errors
}

fn prune_everything(b: &Arc<dyn Backend>, progress: &dyn Progress) {
    let opts = PruneOptions {
        max_unused: 0.0,
        ..Default::default()
    };
    prune(Repository::open(b.clone(), PW).unwrap(), &opts, progress).unwrap();
}

fn names(b: &Arc<dyn Backend>, kind: FileKind) -> Vec<String> {
    let mut v: Vec<String> = b.list(kind).unwrap().into_iter().map(|f| f.name).collect();
    v.sort();
    v
}

/// With the write-only key `stolen`: store a garbage pack as large as each real pack, and
/// write an index file, ground to sort before every honest one, that lists each real pack's
/// entries in its garbage twin (and, with `empty_real`, each real pack with no entries).
/// Returns the garbage packs' names.
fn lie_about_every_pack(b: &Arc<dyn Backend>, seed: u64, empty_real: bool) -> Vec<String> {
    let attacker = Repository::open(b.clone(), b"stolen")
        .unwrap()
        .load_index()
        .unwrap();
    let mut rng = Rng(seed);
    let mut lies = Vec::new();
    let mut garbage = Vec::new();
    for name in names(b, FileKind::Pack) {
        let id: PackId = name.parse().unwrap();
        let junk = rng.bytes(b.size(FileKind::Pack, &name).unwrap() as usize);
        let junk_name = storage_id(&junk).to_hex();
        b.write(FileKind::Pack, &junk_name, &junk).unwrap();
        garbage.push(junk_name.clone());
        lies.push(IndexPack {
            id: junk_name.parse().unwrap(),
            entries: attacker.read_pack_header(&id).unwrap(),
        });
        if empty_real {
            lies.push(IndexPack { id, entries: vec![] });
        }
    }
    let honest_index = names(b, FileKind::Index);
    loop {
        let (id, _) = attacker
            .save_index(&IndexFile {
                supersedes: vec![],
                packs: lies.clone(),
            })
            .unwrap();
        if id.to_hex() < honest_index[0] {
            break;
        }
        b.remove(FileKind::Index, &id.to_hex()).unwrap(); // (only to make the test certain)
    }
    garbage
}

/// Finding 1: whoever can write one object (an append token, write access to a bucket) stores
/// a pack whose sealed header is copied from a real pack and whose blob area is garbage, under
/// its hash, ground to sort before every real pack. Earlier builds adopted it as an
/// interrupted backup's orphan after reading its header only, and prune then kept it as the
/// canonical copy and deleted the real pack.
#[test]
fn a_forged_pack_with_a_copied_header_is_not_adopted_and_costs_nothing() {
    let mem = MemoryBackend::new();
    let b = init(&mem);
    let tmp = tempfile::tempdir().unwrap();
    let mut expect = source(&tmp.path().join("a"), 1, 24);
    backup_as(&b, PW, &tmp.path().join("a"), &NoProgress);

    // the attacker: a copy of every real pack's header over random bytes, named first
    let mut rng = Rng(77);
    let real = names(&b, FileKind::Pack);
    let mut forged = Vec::new();
    for name in &real {
        let bytes = b.read(FileKind::Pack, name).unwrap();
        let header_len = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap()) as usize;
        let blob_area = bytes.len() - 4 - header_len;
        let (fake, fake_name) = loop {
            let mut fake = rng.bytes(blob_area);
            fake.extend_from_slice(&bytes[blob_area..]);
            let n = storage_id(&fake).to_hex();
            if n < real[0] {
                break (fake, n);
            }
        };
        b.write(FileKind::Pack, &fake_name, &fake).unwrap();
        forged.push(fake_name);
    }

    // the next honest backup (with the same data again, and more) must not adopt them
    expect.extend(source(&tmp.path().join("a"), 2, 8));
    let w = Warnings::default();
    backup_as(&b, PW, &tmp.path().join("a"), &w);
    for f in &forged {
        assert!(
            w.all()
                .iter()
                .any(|m| m.contains(&f[..8]) && m.contains("does not verify")),
            "no warning names forged pack {}: {:?}",
            &f[..8],
            w.all()
        );
    }
    let repo = Repository::open(b.clone(), PW).unwrap().load_index().unwrap();
    for f in &forged {
        assert!(
            !repo.index().contains_pack(&f.parse::<PackId>().unwrap()),
            "forged pack {f} adopted"
        );
    }
    drop(repo);

    prune_everything(&b, &NoProgress);
    every_snapshot_restores(&b, &expect);
    assert_eq!(check_read_data(&b), Vec::<String>::new());
}

/// Finding 2: a stolen write-only key holds the `index` key, so it can write an index file,
/// named to sort first, that places every blob in a garbage pack of its own. Earlier builds
/// took the first location seen: restores failed, and prune kept the garbage and deleted the
/// real packs.
#[test]
fn a_lying_index_file_from_a_write_only_key_shadows_nothing() {
    let mem = MemoryBackend::new();
    let (b, _) = init_with_stolen_key(&mem);
    let tmp = tempfile::tempdir().unwrap();
    let mut expect = source(&tmp.path().join("a"), 3, 24);
    backup_as(&b, PW, &tmp.path().join("a"), &NoProgress);

    // the attacker, with the write-only key: a garbage pack for every real one, and an index
    // file listing the real packs' entries in the garbage packs, named before every other
    let garbage = lie_about_every_pack(&b, 99, false);

    // the lie is the first location of every blob now: reads fall back to the real copy
    {
        let repo = Repository::open(b.clone(), PW).unwrap().load_index().unwrap();
        let (_, any) = repo.index().iter().next().unwrap();
        assert!(
            garbage.contains(&any.pack.to_hex()),
            "the attack did not take the first place"
        );
    }
    every_snapshot_restores(&b, &expect);

    // an honest backup deduplicates against the real data, and prune keeps the real copies
    expect.extend(source(&tmp.path().join("a"), 4, 8));
    backup_as(&b, PW, &tmp.path().join("a"), &NoProgress);
    let errors = check_read_data(&b);
    assert!(
        !errors.is_empty(),
        "check --read-data must name the garbage packs"
    );
    for e in &errors {
        assert!(
            garbage.iter().any(|g| e.contains(&g[..8])),
            "an error that names no garbage pack: {e}"
        );
    }
    // (prune reads copies in pack order and keeps the first that verifies: whether it met a
    // garbage copy first depends on the random pack names, so no warning is asserted here)
    let w = Warnings::default();
    prune_everything(&b, &w);
    every_snapshot_restores(&b, &expect);
    // prune condemned the garbage (no used blob is kept there), superseded the lying index
    // file, and left the garbage unindexed (not its to delete on a guess): check is clean
    assert!(
        w.all().iter().any(|m| m.contains("left in place")),
        "{:?}",
        w.all()
    );
    assert_eq!(check_read_data(&b), Vec::<String>::new());
    let repo = Repository::open(b.clone(), PW).unwrap().load_index().unwrap();
    for g in &garbage {
        assert!(
            !repo.index().contains_pack(&g.parse().unwrap()),
            "garbage pack {g} still indexed"
        );
    }
}

/// A variant of finding 2 (found by review): the lying index file also lists every real pack
/// with no entries, named first, so that a reader keeping one entry list per pack would see
/// the blobs only in the garbage packs; prune then had a single "copy" of each blob to keep.
#[test]
fn a_lying_index_file_cannot_empty_a_real_pack() {
    let mem = MemoryBackend::new();
    let (b, _) = init_with_stolen_key(&mem);
    let tmp = tempfile::tempdir().unwrap();
    let expect = source(&tmp.path().join("a"), 5, 16);
    backup_as(&b, PW, &tmp.path().join("a"), &NoProgress);

    lie_about_every_pack(&b, 1234, true);

    every_snapshot_restores(&b, &expect);
    prune_everything(&b, &NoProgress);
    every_snapshot_restores(&b, &expect);
    assert_eq!(check_read_data(&b), Vec::<String>::new());
}

/// Finding 8: a write-only key seals envelope scheme 2, which a full key opens; a config so
/// sealed (where storage lets `config` be replaced) would set every client's chunker,
/// compression and pack size. Only a config sealed by a full key opens.
#[test]
fn a_config_sealed_by_a_write_only_key_is_refused() {
    let mem = MemoryBackend::new();
    let (b, _) = init_with_stolen_key(&mem);
    let attacker = Repository::open(b.clone(), b"stolen").unwrap();
    let honest = b.read(FileKind::Config, "config").unwrap();
    // the attacker seals a config of its choosing (here: the same bytes) with its key
    let plain = {
        let full = Repository::open(b.clone(), PW).unwrap();
        full.key()
            .open(coffer_core::format::ObjectKind::Config, b"", &honest, "config")
            .unwrap()
    };
    let forged = attacker
        .key()
        .seal(coffer_core::format::ObjectKind::Config, b"", &plain);
    assert_eq!(forged[0], 2, "a write-only key seals scheme 2");
    b.remove(FileKind::Config, "config").unwrap();
    b.write(FileKind::Config, "config", &forged).unwrap();
    let err = Repository::open(b.clone(), PW).unwrap_err();
    assert!(err.to_string().contains("not sealed by a full key"), "{err}");
    b.remove(FileKind::Config, "config").unwrap();
    b.write(FileKind::Config, "config", &honest).unwrap();
    Repository::open(b.clone(), PW).unwrap();
}

/// Finding 7: every snapshot records which key wrote it, readers see whether a write-only key
/// sealed it, and one a write-only key dated far ahead never becomes the parent of the honest
/// host's next backup (it would stay the parent until that day).
#[test]
fn snapshots_say_which_key_wrote_them_and_the_future_is_no_parent() {
    let mem = MemoryBackend::new();
    let (b, wo) = init_with_stolen_key(&mem);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    source(&dir, 9, 4);
    backup_as(&b, PW, &dir, &NoProgress);
    backup_as(&b, b"stolen", &dir, &NoProgress);
    let full = Repository::open(b.clone(), PW).unwrap();
    let snaps = full.list_snapshots().unwrap();
    assert_eq!(snaps.len(), 2);
    let (honest, by_wo): (Vec<_>, Vec<_>) = snaps.iter().partition(|(_, s)| !s.sealed_by_write_only);
    assert_eq!(honest[0].1.key, Some(full.key_id()));
    assert_eq!(by_wo[0].1.key, Some(wo));

    // the thief writes a snapshot of the honest host and paths, dated in ten years
    let attacker = Repository::open(b.clone(), b"stolen").unwrap();
    let mut forged = honest[0].1.clone();
    forged.time += chrono::Duration::days(3650);
    let (forged_id, _) = attacker.save_snapshot(&forged).unwrap();
    let w = Warnings::default();
    let mut repo = Repository::open(b.clone(), PW).unwrap().load_index().unwrap();
    let opts = BackupOptions {
        paths: vec![dir.clone()],
        hostname: Some(honest[0].1.hostname.clone()),
        ..Default::default()
    };
    let out = backup(&mut repo, &opts, &w).unwrap();
    assert!(
        w.all().iter().any(|m| m.contains("in the future")),
        "{:?}",
        w.all()
    );
    // the newest snapshot of that host and paths that a full key sealed and that is not from
    // the future (the write-only key's own backup is no parent either: see the next test)
    assert_ne!(out.snapshot.parent, Some(forged_id));
    assert_eq!(out.snapshot.parent, Some(honest[0].0));
}

/// Found by review: a parent's chunk lists are reused for every file whose metadata matches,
/// so a snapshot a stolen write-only key forged for the honest host and paths, dated now,
/// whose tree gives a file another file's chunks, would have put that content into the next
/// honest snapshot. A full key takes its parent only among snapshots a full key sealed.
#[test]
fn a_forged_parent_cannot_put_its_content_into_an_honest_backup() {
    use coffer_core::format::{BlobId, BlobKind};
    let mem = MemoryBackend::new();
    let (b, _) = init_with_stolen_key(&mem);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let expect = source(&dir, 11, 4);
    backup_as(&b, PW, &dir, &NoProgress);
    let full = Repository::open(b.clone(), PW).unwrap().load_index().unwrap();
    let (_, honest) = full.list_snapshots().unwrap().pop().unwrap();

    // the forged tree: the same as the honest one, but s11-f1 has s11-f2's chunks, stored
    // bottom-up with the write-only key
    fn store(
        full: &coffer_core::IndexedRepository,
        attacker: &mut coffer_core::IndexedRepository,
        id: BlobId,
    ) -> BlobId {
        let mut t = full.load_tree(&id).unwrap();
        let f2 = t
            .nodes
            .iter()
            .find(|n| n.name.0 == b"s11-f2")
            .map(|n| n.content.clone());
        for n in &mut t.nodes {
            if let Some(sub) = n.subtree {
                n.subtree = Some(store(full, attacker, sub));
            }
            if n.name.0 == b"s11-f1" {
                n.content = f2.clone().unwrap();
            }
        }
        coffer_core::store_blobs(attacker, vec![(BlobKind::Tree, t.encode())]).unwrap()[0]
    }
    let mut attacker = Repository::open(b.clone(), b"stolen")
        .unwrap()
        .load_index()
        .unwrap();
    let root = store(&full, &mut attacker, honest.tree);
    let mut forged = honest.clone();
    forged.tree = root;
    forged.time = chrono::Local::now().fixed_offset();
    attacker.save_snapshot(&forged).unwrap();
    drop(full);

    // the honest host backs up again, nothing changed on disk, and its snapshot restores
    let mut repo = Repository::open(b.clone(), PW).unwrap().load_index().unwrap();
    let opts = BackupOptions {
        paths: vec![dir.clone()],
        hostname: Some(honest.hostname.clone()),
        ..Default::default()
    };
    let out = backup(&mut repo, &opts, &NoProgress).unwrap();
    let restored = tempfile::tempdir().unwrap();
    let ropts = RestoreOptions {
        target: restored.path().to_path_buf(),
        ..Default::default()
    };
    restore(&repo, out.snapshot.tree, "/", &ropts, &NoProgress).unwrap();
    for f in walk(restored.path()) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            fs::read(&f).unwrap() == expect[&name],
            "{name} took the forged parent's content"
        );
    }
}

/// Finding 3: anyone who can add a key file (an append token) adds one with parameters argon2
/// refuses, or that would take gigabytes: earlier builds failed to open the repository for
/// every passphrase, or allocated what the file asked.
#[test]
fn a_key_file_out_of_bounds_is_skipped_with_a_warning() {
    let mem = MemoryBackend::new();
    let b = init(&mem);
    let real = names(&b, FileKind::Key);
    let bytes = b.read(FileKind::Key, &real[0]).unwrap();
    let honest: KeyFile = serde_json::from_slice(&bytes).unwrap();
    for (memory_kib, iterations, parallelism) in [(65536, 0, 1), (4 << 20, 100, 1), (65536, 3, 200)] {
        let mut k = honest.clone();
        k.kdf.memory_kib = memory_kib;
        k.kdf.iterations = iterations;
        k.kdf.parallelism = parallelism;
        let mut json = serde_json::to_vec(&k).unwrap();
        // named to sort before the real key file, so it is tried first
        let name = loop {
            let n = storage_id(&json).to_hex();
            if n < real[0] {
                break n;
            }
            json.push(b' ');
        };
        b.write(FileKind::Key, &name, &json).unwrap();
        let repo = Repository::open(b.clone(), PW).unwrap();
        assert!(
            repo.skipped_keys().iter().any(|m| m.contains(&name[..8])),
            "{:?}",
            repo.skipped_keys()
        );
        b.remove(FileKind::Key, &name).unwrap();
    }
}

/// A stolen write-only key holds the id key: it can compute the blob id of content it expects
/// honest clients to back up (a distribution's stock files, a popular library) and claim, in an
/// index file, that the blob is already stored, in a pack of garbage. Earlier builds
/// deduplicated against the claim: the honest snapshots referenced garbage and never restored.
/// Now only vouched listings (a full key's, verified; or a client's own) serve deduplication.
#[test]
fn a_claimed_blob_of_known_content_is_not_reused() {
    let mem = MemoryBackend::new();
    let (b, _) = init_with_stolen_key(&mem);
    Repository::open(b.clone(), PW)
        .unwrap()
        .add_write_only_key(b"honest write-only")
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // the content honest clients will back up (small files: one blob each)
    let content: Vec<Vec<u8>> = (0..12)
        .map(|i| Rng(500 + i).bytes(2_000 + i as usize * 300))
        .collect();

    // the thief claims each of those blobs in a garbage pack, before anyone stored them
    let attacker = Repository::open(b.clone(), b"stolen").unwrap();
    let junk = Rng(4242).bytes(64 << 10);
    let junk_id: PackId = storage_id(&junk).to_hex().parse().unwrap();
    b.write(FileKind::Pack, &junk_id.to_hex(), &junk).unwrap();
    let entries = content
        .iter()
        .enumerate()
        .map(|(i, c)| {
            coffer_core::format::PackEntry::own(
                coffer_core::format::BlobKind::Data,
                attacker.key().blob_id(c),
                i as u32 * 4096,
                4096,
                c.len() as u32 + 1,
            )
        })
        .collect();
    attacker
        .save_index(&IndexFile {
            supersedes: vec![],
            packs: vec![IndexPack { id: junk_id, entries }],
        })
        .unwrap();

    // a full-key client and an honest write-only client back up that content
    let mut expect = BTreeMap::new();
    for (who, pw) in [("full", PW), ("wo", b"honest write-only".as_slice())] {
        let dir = tmp.path().join(who);
        fs::create_dir_all(&dir).unwrap();
        for (i, c) in content.iter().enumerate() {
            let name = format!("{who}-{i}");
            fs::write(dir.join(&name), c).unwrap();
            expect.insert(name, c.clone());
        }
        backup_as(&b, pw, &dir, &NoProgress);
    }
    every_snapshot_restores(&b, &expect);
    // the claim is known (a restore would try it) but vouched for by nobody
    let repo = Repository::open(b.clone(), PW).unwrap().load_index().unwrap();
    let claimed = attacker.key().blob_id(&content[0]);
    assert!(repo.index().locations(&claimed).iter().any(|l| l.pack == junk_id));
    assert!(repo.index().vouched(&claimed));
    assert!(repo.index().unvouched_pack_count() >= 1);
    drop(repo);

    // prune verifies what only unvouched files list before it vouches for anything: the
    // garbage does not verify and is named; every snapshot still restores
    let w = Warnings::default();
    prune_everything(&b, &w);
    assert!(
        w.all()
            .iter()
            .any(|m| m.contains(&junk_id.short()) && m.contains("does not verify")),
        "{:?}",
        w.all()
    );
    every_snapshot_restores(&b, &expect);
    let errors = check_read_data(&b);
    assert!(errors.iter().all(|e| e.contains(&junk_id.short())), "{errors:?}");
}

/// Hostile storage replays an index file a full key vouched for, after prune deleted the
/// packs it lists (the property test in `attack_property.rs` found this). An honest backup of
/// the same content deduplicated against the replayed listing and referenced packs that no
/// longer exist. Now only packs storage holds serve deduplication.
#[test]
fn a_replayed_index_file_naming_deleted_packs_is_not_deduplicated_against() {
    let mem = MemoryBackend::new();
    let b = init(&mem);
    let tmp = tempfile::tempdir().unwrap();
    let expect = source(&tmp.path().join("a"), 8, 8);
    backup_as(&b, PW, &tmp.path().join("a"), &NoProgress);
    let old: Vec<(String, Vec<u8>)> = names(&b, FileKind::Index)
        .into_iter()
        .map(|n| {
            let bytes = b.read(FileKind::Index, &n).unwrap();
            (n, bytes)
        })
        .collect();
    // the snapshot is forgotten and pruned: its packs are deleted
    for s in names(&b, FileKind::Snapshot) {
        b.remove(FileKind::Snapshot, &s).unwrap();
    }
    // (prune refuses an empty repository: a second snapshot of other data keeps it company)
    let other = tmp.path().join("other");
    source(&other, 9, 1);
    backup_as(&b, PW, &other, &NoProgress);
    let opts = PruneOptions {
        max_unused: 0.0,
        grace_secs: 0,
        dry_run: false,
    };
    prune(Repository::open(b.clone(), PW).unwrap(), &opts, &NoProgress).unwrap();
    for (n, _) in &old {
        assert!(!names(&b, FileKind::Index).contains(n), "prune left {n}");
    }
    // storage replays the old, vouched index files
    for (n, bytes) in &old {
        b.write(FileKind::Index, n, bytes).unwrap();
    }
    // the same content again: stored again, and it restores
    backup_as(&b, PW, &tmp.path().join("a"), &NoProgress);
    let mut all = expect.clone();
    all.extend(source(&other, 9, 1));
    every_snapshot_restores(&b, &all);
}

/// A thief who knows a write-only key's password (stolen from the host that uses it) and can
/// add a key file adds one that unwraps with that password to keys of its own (another
/// repository's: its public key, which new data is sealed to, and its vouch key), named to be
/// tried first. A client that opens the first key file its password unwraps would seal its
/// next backups to the thief (the real full key could not read them) and trust the thief's
/// vouches. A client that tries the key files it used before first never opens it.
#[test]
fn a_planted_key_file_for_a_known_password_is_not_opened_by_a_client_that_remembers_its_own() {
    let mem = MemoryBackend::new();
    let (b, real) = init_with_stolen_key(&mem);
    // the thief's own repository, with a write-only key of the same password
    let planted = loop {
        let theirs = MemoryBackend::new();
        let tb = init(&theirs);
        let id = Repository::open(tb.clone(), PW)
            .unwrap()
            .add_write_only_key(b"stolen")
            .unwrap();
        if id.0.to_hex() < real.0.to_hex() {
            let bytes = tb.read(FileKind::Key, &id.0.to_hex()).unwrap();
            b.write(FileKind::Key, &id.0.to_hex(), &bytes).unwrap();
            break id;
        }
    };
    // without a memory of its key file, the client opens the planted one
    assert_eq!(Repository::open(b.clone(), b"stolen").unwrap().key_id(), planted);
    // remembering it, the client opens its own, whatever sorts first
    let repo = Repository::open_preferring(b.clone(), b"stolen", &[real.0.to_hex()]).unwrap();
    assert_eq!(repo.key_id(), real);
    assert_eq!(
        repo.config().id,
        Repository::open(b.clone(), PW).unwrap().config().id
    );
}
