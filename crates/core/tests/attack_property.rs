//! Property (issue 24): any sequence of honest backups (full key and write-only key), forgets
//! and prunes, interleaved with what a thief writes — random bytes under a valid name, packs
//! with a copied header over garbage, replays of objects prune deleted, index files of a
//! stolen write-only key that lie about real blobs or claim content honest clients are about
//! to back up — leaves every honest snapshot restoring byte for byte.
//!
//! A seeded loop: `COFFER_ATTACK_CASES` cases (200 by default) from `COFFER_ATTACK_SEED`; a
//! failing case names its seed, and `COFFER_ATTACK_SEED=<seed> COFFER_ATTACK_CASES=1` replays it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use coffer_core::backend::{Backend, FileKind};
use coffer_core::crypto::{generate_key_text, storage_id};
use coffer_core::format::{BlobKind, IndexFile, IndexPack, PackEntry, PackId, SnapshotId};
use coffer_core::memory::MemoryBackend;
use coffer_core::prune::{prune, PruneOptions};
use coffer_core::sendlog::SendLog;
use coffer_core::{
    backup, restore, BackupOptions, InitOptions, NoProgress, ParentChoice, Repository, RestoreOptions,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        (!v.is_empty()).then(|| &v[self.below(v.len() as u64) as usize])
    }
}

type Files = BTreeMap<String, Vec<u8>>;

struct World {
    b: Arc<dyn Backend>,
    full: String,
    wo: String,
    thief: String,
    src: std::path::PathBuf,
    cache: std::path::PathBuf,
    files: Files,
    /// Content the next source changes will write (known to the thief in advance).
    coming: Vec<Vec<u8>>,
    honest: BTreeMap<SnapshotId, Files>,
    /// Every pack and index file the honest side ever stored, for replays.
    stored: Vec<(FileKind, String, Vec<u8>)>,
    prunes_refused: usize,
}

fn names(b: &Arc<dyn Backend>, kind: FileKind) -> Vec<String> {
    let mut v: Vec<String> = b.list(kind).unwrap().into_iter().map(|f| f.name).collect();
    v.sort();
    v
}

impl World {
    fn new(rng: &mut Rng, dir: &Path) -> World {
        let b: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let full = generate_key_text().to_string();
        Repository::init(
            b.clone(),
            full.as_bytes(),
            &InitOptions {
                pack_size: 1 << 20,
                ..InitOptions::default()
            },
        )
        .unwrap();
        let repo = Repository::open(b.clone(), full.as_bytes()).unwrap();
        let (wo, thief) = (generate_key_text().to_string(), generate_key_text().to_string());
        repo.add_write_only_key(wo.as_bytes()).unwrap();
        repo.add_write_only_key(thief.as_bytes()).unwrap();
        let src = dir.join("src");
        fs::create_dir_all(&src).unwrap();
        let coming = (0..6).map(|_| content(rng)).collect();
        World {
            b,
            full,
            wo,
            thief,
            src,
            cache: dir.join("cache"),
            files: Files::new(),
            coming,
            honest: BTreeMap::new(),
            stored: Vec::new(),
            prunes_refused: 0,
        }
    }

    fn remember_stored(&mut self) {
        for kind in [FileKind::Pack, FileKind::Index] {
            for n in names(&self.b, kind) {
                if !self.stored.iter().any(|(k, name, _)| *k == kind && *name == n) {
                    let bytes = self.b.read(kind, &n).unwrap();
                    self.stored.push((kind, n, bytes));
                }
            }
        }
    }

    /// Add, change and delete a few files; new content comes from `coming`.
    fn change_source(&mut self, rng: &mut Rng) {
        for _ in 0..1 + rng.below(3) {
            let data = self.coming.remove(0);
            self.coming.push(content(rng));
            let name = format!("f{}", rng.below(40));
            fs::write(self.src.join(&name), &data).unwrap();
            self.files.insert(name, data);
        }
        if self.files.len() > 3 && rng.below(3) == 0 {
            let victim = rng
                .pick(&self.files.keys().cloned().collect::<Vec<_>>())
                .unwrap()
                .clone();
            fs::remove_file(self.src.join(&victim)).unwrap();
            self.files.remove(&victim);
        }
    }

    fn backup(&mut self, rng: &mut Rng) {
        if self.files.is_empty() {
            return;
        }
        let write_only = rng.below(2) == 0;
        let pw = if write_only { &self.wo } else { &self.full };
        let mut repo = Repository::open(self.b.clone(), pw.as_bytes()).unwrap();
        let send_log = write_only.then(|| {
            let log = SendLog::open(&self.cache, &repo, std::slice::from_ref(&self.src));
            repo.trust_own_index_files(log.own_index_files().iter().copied());
            Arc::new(log)
        });
        let mut repo = repo.load_index().unwrap();
        let opts = BackupOptions {
            paths: vec![self.src.clone()],
            parent: ParentChoice::Auto,
            send_log,
            ..Default::default()
        };
        let out = backup(&mut repo, &opts, &NoProgress).unwrap();
        self.honest.insert(out.id, self.files.clone());
        self.remember_stored();
    }

    fn forget(&mut self, rng: &mut Rng) {
        let ids: Vec<SnapshotId> = self.honest.keys().copied().collect();
        if let Some(id) = rng.pick(&ids).copied() {
            self.b.remove(FileKind::Snapshot, &id.to_hex()).unwrap();
            self.honest.remove(&id);
        }
    }

    fn prune(&mut self, rng: &mut Rng) {
        let opts = PruneOptions {
            max_unused: [0.0, 0.1, 0.5][rng.below(3) as usize],
            grace_secs: 0,
            dry_run: false,
        };
        // (prune keeps its packs' listings in a file under the spill directory, as the CLI's
        // prune does; the core's other prune tests keep them in memory)
        let spill = self.cache.join("spill");
        let open = || {
            let mut r = Repository::open(self.b.clone(), self.full.as_bytes()).unwrap();
            r.set_index_spill(Some(coffer_core::index::Spill::new(&spill, 0)));
            r
        };
        // a garbage index file stops prune before it deletes anything; the operator then runs
        // `repair index` (every pack verified whole) and prunes again
        let first = prune(open(), &opts, &Trace);
        if std::env::var_os("COFFER_ATTACK_TRACE").is_some() {
            eprintln!(
                "  prune {:?}",
                first.as_ref().map(|_| ()).map_err(|e| e.to_string())
            );
        }
        if first.is_err() {
            self.prunes_refused += 1;
            coffer_core::repair::repair_index(open(), &NoProgress).unwrap();
            let again = prune(open(), &opts, &NoProgress);
            // (with every snapshot forgotten, prune refuses to condemn everything)
            assert!(again.is_ok() || self.honest.is_empty(), "{again:?}");
        }
        self.remember_stored();
    }

    /// One thing the thief writes.
    fn attack(&mut self, rng: &mut Rng) {
        let thief = Repository::open(self.b.clone(), self.thief.as_bytes()).unwrap();
        let kind = rng.below(6);
        if std::env::var_os("COFFER_ATTACK_TRACE").is_some() {
            eprintln!("  attack {kind}");
        }
        match kind {
            // random bytes under their own hash
            0 => {
                let kind = [FileKind::Pack, FileKind::Pack, FileKind::Index][rng.below(3) as usize];
                let n = 1 + rng.below(50_000) as usize;
                let junk = rng.bytes(n);
                let _ = self.b.write(kind, &storage_id(&junk).to_hex(), &junk);
            }
            // a real pack's header over garbage
            1 => {
                let packs = names(&self.b, FileKind::Pack);
                if let Some(p) = rng.pick(&packs) {
                    let bytes = self.b.read(FileKind::Pack, p).unwrap();
                    if bytes.len() > 4 {
                        let header =
                            u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap()) as usize;
                        let area = bytes.len().saturating_sub(4 + header);
                        let mut fake = rng.bytes(area);
                        fake.extend_from_slice(&bytes[area..]);
                        let _ = self.b.write(FileKind::Pack, &storage_id(&fake).to_hex(), &fake);
                    }
                }
            }
            // a replay of a pack or index file prune deleted
            2 => {
                let gone: Vec<&(FileKind, String, Vec<u8>)> = self
                    .stored
                    .iter()
                    .filter(|(k, n, _)| !self.b.list(*k).unwrap().iter().any(|f| f.name == *n))
                    .collect();
                if let Some((k, n, bytes)) = rng.pick(&gone) {
                    let _ = self.b.write(*k, n, bytes);
                }
            }
            // an index file listing real blobs in a garbage pack, or in real packs at wrong
            // places, or real packs with no entries
            3 | 4 => {
                let Ok(repo) = thief.load_index() else { return };
                let blobs: Vec<_> = repo.index().iter().collect();
                if blobs.is_empty() {
                    return;
                }
                let junk = rng.bytes(64 << 10);
                let junk_id: PackId = storage_id(&junk).to_hex().parse().unwrap();
                let _ = self.b.write(FileKind::Pack, &junk_id.to_hex(), &junk);
                let mut packs: BTreeMap<PackId, Vec<PackEntry>> = BTreeMap::new();
                for _ in 0..1 + rng.below(20) {
                    let (id, loc) = *rng.pick(&blobs).unwrap();
                    let at = match rng.below(3) {
                        0 => junk_id,
                        _ => loc.pack,
                    };
                    let off = rng.below(60_000) as u32;
                    packs.entry(at).or_default().push(PackEntry::own(
                        loc.kind,
                        id,
                        off,
                        100 + rng.below(4000) as u32,
                        loc.raw_length,
                    ));
                }
                if rng.below(4) == 0 {
                    if let Some((_, l)) = rng.pick(&blobs) {
                        packs.insert(l.pack, Vec::new());
                    }
                }
                let file = IndexFile {
                    supersedes: vec![],
                    packs: packs
                        .into_iter()
                        .map(|(id, entries)| IndexPack { id, entries })
                        .collect(),
                };
                let _ = repo.save_index(&file);
            }
            // claims on content honest clients are about to back up
            _ => {
                let junk = rng.bytes(32 << 10);
                let junk_id: PackId = storage_id(&junk).to_hex().parse().unwrap();
                let _ = self.b.write(FileKind::Pack, &junk_id.to_hex(), &junk);
                let entries = self
                    .coming
                    .iter()
                    .filter(|c| c.len() < 100_000) // (one chunk: its id is the content's)
                    .enumerate()
                    .map(|(i, c)| {
                        PackEntry::own(
                            BlobKind::Data,
                            thief.key().blob_id(c),
                            i as u32 * 500,
                            500,
                            c.len() as u32 + 1,
                        )
                    })
                    .collect();
                let _ = thief.save_index(&IndexFile {
                    supersedes: vec![],
                    packs: vec![IndexPack { id: junk_id, entries }],
                });
            }
        }
    }

    /// Every honest snapshot restores, byte for byte.
    fn verify(&self, seed: u64, step: usize) {
        let repo = Repository::open(self.b.clone(), self.full.as_bytes())
            .unwrap()
            .load_index()
            .unwrap();
        for (id, want) in &self.honest {
            let s = repo.load_snapshot(id).unwrap();
            let out = tempfile::tempdir().unwrap();
            let opts = RestoreOptions {
                target: out.path().to_path_buf(),
                ..Default::default()
            };
            let st = restore(&repo, s.tree, "/", &opts, &Trace).unwrap_or_else(|e| {
                panic!(
                    "seed {seed} step {step}: snapshot {} does not restore: {e}",
                    id.short()
                )
            });
            assert_eq!(st.errors, 0, "seed {seed} step {step}: snapshot {}", id.short());
            let dir = out.path().join(self.src.strip_prefix("/").unwrap());
            let mut got = Files::new();
            for e in fs::read_dir(&dir).unwrap().flatten() {
                got.insert(
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                );
            }
            assert!(
                got == *want,
                "seed {seed} step {step}: snapshot {} restores other content",
                id.short()
            );
        }
    }
}

/// Prints restore warnings (what a failing case needs to be understood).
struct Trace;
impl coffer_core::Progress for Trace {
    fn warn(&self, msg: &str) {
        eprintln!("warning: {msg}");
    }
}

/// A file's content: mostly small (one chunk, bundled), sometimes large (several chunks).
fn content(rng: &mut Rng) -> Vec<u8> {
    match rng.below(5) {
        0 => {
            let n = 150_000 + rng.below(200_000) as usize;
            rng.bytes(n)
        }
        _ => {
            let n = 200 + rng.below(6_000) as usize;
            rng.bytes(n)
        }
    }
}

#[test]
fn no_sequence_of_attacks_costs_an_honest_snapshot() {
    let cases: u64 = std::env::var("COFFER_ATTACK_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let first: u64 = std::env::var("COFFER_ATTACK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_0000);
    let (mut prunes_refused, mut snapshots) = (0, 0);
    for seed in first..first + cases {
        let tmp = tempfile::tempdir().unwrap();
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut w = World::new(&mut rng, tmp.path());
        let steps = 8 + rng.below(8) as usize;
        let trace = std::env::var_os("COFFER_ATTACK_TRACE").is_some();
        for step in 0..steps {
            let what = rng.below(10);
            if trace {
                eprintln!(
                    "step {step}: {what} (snapshots {:?})",
                    w.honest.keys().map(|i| i.short()).collect::<Vec<_>>()
                );
            }
            match what {
                0..=2 => {
                    w.change_source(&mut rng);
                    w.backup(&mut rng);
                }
                3 => w.forget(&mut rng),
                4 | 5 => {
                    w.prune(&mut rng);
                    w.verify(seed, step);
                }
                _ => w.attack(&mut rng),
            }
        }
        // a last honest backup on top of every attack, then a prune
        w.change_source(&mut rng);
        w.backup(&mut rng);
        if std::env::var_os("COFFER_ATTACK_TRACE").is_some() {
            w.verify(seed, steps);
            eprintln!("  (verified before the last prune)");
        }
        w.prune(&mut rng);
        w.verify(seed, steps);
        prunes_refused += w.prunes_refused;
        snapshots += w.honest.len();
    }
    eprintln!("{cases} cases: {snapshots} honest snapshots restored at the end; {prunes_refused} prunes refused (a garbage index file) until `repair index`");
    assert!(snapshots >= cases as usize);
}
