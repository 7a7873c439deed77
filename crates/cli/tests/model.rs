//! Model-based stress test (issue 26 item 5, after Kopia's robustness engine): random
//! sequences of backup, forget, prune, copy, damage with `repair packs`, and kill -9 of backup,
//! prune and copy, run against a model of what each snapshot must hold — the source as it was
//! when that backup read it. After every step the repository's snapshots are exactly the
//! model's, `check` is clean, and the snapshots the step could have touched restore
//! byte-identical (every one after a forget, prune, damage or copy); the copy's destination
//! holds every snapshot copied to it and checks clean with `--read-data`. A failing sequence
//! is shrunk to a shorter one that still fails, printed with its seed.
//!
//! `scripts/stress --seed N --sequences K --steps L` runs it long; here (CI) one sequence of
//! `COFFER_MODEL_STEPS` (default 24) steps with `COFFER_MODEL_SEED` (default from the clock,
//! printed). A kill's moment is a fraction of that step's last uninterrupted time, so a rerun
//! kills at comparable but not identical points.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{code, digest_tree, pseudo_random, stderr, Env, Rng};

type Digest = BTreeMap<Vec<u8>, (u64, String, u32)>;

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The generator of a sequence's seed.
fn seeded(seed: u64) -> Rng {
    Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
}

/// One step of a sequence. Numbers are seeds or fractions (per mille), so that a sequence
/// with steps removed (shrinking) still means something.
#[derive(Clone, Debug)]
enum Op {
    /// Change the source: files added, rewritten, deleted, from this seed.
    Change(u64),
    Backup,
    /// Backup killed at this per mille of the last uninterrupted backup's time.
    BackupKilled(u32),
    /// Forget the snapshot at this position (modulo their number, oldest first).
    Forget(u32),
    Prune,
    PruneKilled(u32),
    /// Copy every snapshot into the second repository.
    Copy,
    CopyKilled(u32),
    /// Flip one byte of a pack chosen by this seed, then `repair packs`.
    Rot(u64),
}

fn random_op(rng: &mut Rng) -> Op {
    let per_mille = |rng: &mut Rng| rng.below(1000) as u32;
    match rng.below(100) {
        0..=21 => Op::Change(rng.next()),
        22..=41 => Op::Backup,
        42..=51 => Op::BackupKilled(per_mille(rng)),
        52..=61 => Op::Forget(rng.below(64) as u32),
        62..=71 => Op::Prune,
        72..=79 => Op::PruneKilled(per_mille(rng)),
        80..=85 => Op::Copy,
        86..=91 => Op::CopyKilled(per_mille(rng)),
        _ => Op::Rot(rng.next()),
    }
}

fn sequence(seed: u64, steps: u64) -> Vec<Op> {
    let mut rng = seeded(seed);
    let mut ops = vec![Op::Change(rng.next()), Op::Backup];
    while (ops.len() as u64) < steps {
        ops.push(random_op(&mut rng));
    }
    ops
}

/// The repositories, the source and the model.
struct World {
    e: Env,
    second: PathBuf,
    src: PathBuf,
    out: PathBuf,
    /// snapshot id → the source as that backup read it
    model: BTreeMap<String, Digest>,
    /// in the second repository: original snapshot id → content
    copied: BTreeMap<String, Digest>,
    forgotten: BTreeSet<String>,
    /// the last uninterrupted time of backup, prune and copy (kills fall inside them)
    took: [Duration; 3],
}

impl World {
    fn new() -> World {
        let e = Env::new();
        e.ok(&["init", "--pack-size", "1"]);
        let second = e.path("second");
        e.ok(&["init", "-r", second.to_str().unwrap()]);
        let src = e.path("src");
        fs::create_dir_all(&src).unwrap();
        World {
            out: e.path("out"),
            e,
            second,
            src,
            model: BTreeMap::new(),
            copied: BTreeMap::new(),
            forgotten: BTreeSet::new(),
            took: [Duration::from_millis(800); 3],
        }
    }

    fn copy_cmd(&self) -> Command {
        let mut c = self.e.cmd();
        c.env("COFFER_FROM_REPOSITORY", &self.e.repo)
            .env("COFFER_FROM_PASSWORD_FILE", &self.e.pwfile)
            .args(["-r", self.second.to_str().unwrap(), "copy", "-q"]);
        c
    }

    /// Run `cmd` to its end (`slot`: which time to remember) or kill it at `per_mille` of
    /// that time; whether the kill ended it.
    fn run(&mut self, mut cmd: Command, slot: usize, kill: Option<u32>) -> (bool, std::process::Output) {
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        if let Some(pm) = kill {
            let until = started + self.took[slot] * pm / 1000;
            while Instant::now() < until && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let killed = std::os::unix::process::ExitStatusExt::signal(&out.status) == Some(9);
        if !killed {
            self.took[slot] = started.elapsed().max(Duration::from_millis(5));
        }
        (killed, out)
    }

    /// Snapshot ids and originals in a repository (`None`: the first), oldest first.
    fn listing(&self, repo: Option<&Path>) -> Vec<(String, Option<String>)> {
        let mut c = self.e.cmd();
        if let Some(r) = repo {
            c.args(["-r", r.to_str().unwrap()]);
        }
        let o = c.args(["snapshots", "--json"]).output().unwrap();
        assert_eq!(code(&o), 0, "snapshots: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_string(),
                    s["original"].as_str().map(str::to_string),
                )
            })
            .collect()
    }

    fn change(&self, seed: u64) {
        let mut rng = seeded(seed);
        let dir = self.src.join(format!("d{}", rng.below(4)));
        fs::create_dir_all(&dir).unwrap();
        for _ in 0..1 + rng.below(6) {
            let f = dir.join(format!("f{}", rng.below(12)));
            match rng.below(5) {
                0 if f.exists() => fs::remove_file(&f).unwrap(),
                1 => fs::write(&f, pseudo_random(rng.next(), 1 + rng.below(2000) as usize)).unwrap(),
                _ => fs::write(
                    &f,
                    pseudo_random(rng.next(), (1 << 17) + rng.below(1 << 20) as usize),
                )
                .unwrap(),
            }
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        let backup = |w: &World| {
            let mut c = w.e.cmd();
            c.args(["backup", "--json", w.src.to_str().unwrap()]);
            c
        };
        let prune = |w: &World| {
            let mut c = w.e.cmd();
            c.args(["prune", "-q", "--grace", "0h", "--max-unused", "0%"]);
            c
        };
        let mut touched_all = false;
        match *op {
            Op::Change(seed) => self.change(seed),
            Op::Backup | Op::BackupKilled(_) => {
                let digest = digest_tree(&self.src);
                let kill = if let Op::BackupKilled(pm) = *op {
                    Some(pm)
                } else {
                    None
                };
                let (killed, o) = self.run(backup(self), 0, kill);
                if !killed && code(&o) != 0 {
                    return Err(format!("backup failed: {}", stderr(&o)));
                }
                let new: Vec<String> = self
                    .listing(None)
                    .into_iter()
                    .map(|(id, _)| id)
                    .filter(|id| !self.model.contains_key(id))
                    .collect();
                if killed {
                    // killed after writing its snapshot: it saved one of this source; more
                    // than one new snapshot, or a forgotten one back, is an error
                    if new.len() > 1 || new.iter().any(|id| self.forgotten.contains(id)) {
                        return Err(format!("after a killed backup, unexpected snapshots {new:?}"));
                    }
                } else {
                    let v: serde_json::Value =
                        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or(""))
                            .map_err(|e| format!("backup --json: {e}"))?;
                    let id = v["snapshot_id"].as_str().unwrap_or("").to_string();
                    if new != [id.clone()] {
                        return Err(format!("the backup reported {id}, the listing has new {new:?}"));
                    }
                }
                for id in new {
                    self.model.insert(id, digest.clone());
                }
            }
            Op::Forget(i) => {
                let list = self.listing(None);
                if !list.is_empty() {
                    let id = list[i as usize % list.len()].0.clone();
                    let o = self.e.run(&["forget", "-q", &id]);
                    if code(&o) != 0 {
                        return Err(format!("forget failed: {}", stderr(&o)));
                    }
                    self.model.remove(&id);
                    self.forgotten.insert(id);
                }
                touched_all = true;
            }
            Op::Prune | Op::PruneKilled(_) => {
                let kill = if let Op::PruneKilled(pm) = *op {
                    Some(pm)
                } else {
                    None
                };
                let (mut killed, mut o) = self.run(prune(self), 1, kill);
                // a prune killed just before holds its lease a few seconds more
                while !killed && code(&o) != 0 && stderr(&o).contains("another prune is running") {
                    std::thread::sleep(Duration::from_millis(500));
                    (killed, o) = self.run(prune(self), 1, kill);
                }
                // every snapshot forgotten: prune refuses to condemn everything (documented)
                let refused_empty =
                    self.model.is_empty() && stderr(&o).contains("the snapshot listing is empty");
                if !killed && code(&o) != 0 && !refused_empty {
                    return Err(format!("prune failed: {}", stderr(&o)));
                }
                touched_all = true;
            }
            Op::Copy | Op::CopyKilled(_) => {
                let kill = if let Op::CopyKilled(pm) = *op {
                    Some(pm)
                } else {
                    None
                };
                let (killed, o) = self.run(self.copy_cmd(), 2, kill);
                if !killed && code(&o) != 0 {
                    return Err(format!("copy failed: {}", stderr(&o)));
                }
                let listing = self.listing(Some(&self.second.clone()));
                for (_, original) in listing {
                    let Some(original) = original else {
                        return Err("a copied snapshot does not name its original".into());
                    };
                    if let Some(d) = self.model.get(&original) {
                        self.copied.entry(original).or_insert_with(|| d.clone());
                    }
                }
                if !killed {
                    for (id, d) in &self.model {
                        self.copied.entry(id.clone()).or_insert_with(|| d.clone());
                    }
                }
                touched_all = true;
            }
            Op::Rot(seed) => {
                let mut rng = seeded(seed);
                let mut packs: Vec<PathBuf> = fs::read_dir(self.e.repo.join("data"))
                    .unwrap()
                    .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
                    .map(|f| f.unwrap().path())
                    .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                    .collect();
                packs.sort();
                if !packs.is_empty() {
                    let victim = &packs[rng.below(packs.len() as u64) as usize];
                    let mut b = fs::read(victim).unwrap();
                    let at = rng.below(b.len() as u64) as usize;
                    b[at] ^= 1 << rng.below(8);
                    fs::write(victim, b).unwrap();
                    let o = self.e.run(&["repair", "packs", "-q"]);
                    if code(&o) != 0 {
                        return Err(format!("repair packs failed: {}", stderr(&o)));
                    }
                }
                touched_all = true;
            }
        }
        self.verify(touched_all)
    }

    /// The repository against the model.
    fn verify(&self, all: bool) -> Result<(), String> {
        let ids: BTreeSet<String> = self.listing(None).into_iter().map(|(id, _)| id).collect();
        let want: BTreeSet<String> = self.model.keys().cloned().collect();
        if ids != want {
            return Err(format!(
                "snapshots differ from the model: listed and not expected {:?}, expected and not listed {:?}",
                ids.difference(&want).collect::<Vec<_>>(),
                want.difference(&ids).collect::<Vec<_>>()
            ));
        }
        let check = if all {
            vec!["check", "--read-data"]
        } else {
            vec!["check"]
        };
        let o = self.e.run(&check);
        if code(&o) != 0 {
            return Err(format!("{check:?}: {}", stderr(&o)));
        }
        // every snapshot after a step that could touch any; else the newest
        let newest = self.listing(None).last().map(|(id, _)| id.clone());
        for (id, digest) in &self.model {
            if all || Some(id) == newest.as_ref() {
                self.restores(None, id, digest)?;
            }
        }
        if all && !self.copied.is_empty() {
            // the copy is a repository of its own: it checks clean, its data read
            let o = self
                .e
                .cmd()
                .args(["-r", self.second.to_str().unwrap(), "check", "--read-data"])
                .output()
                .unwrap();
            if code(&o) != 0 {
                return Err(format!("the copy: check --read-data: {}", stderr(&o)));
            }
            let listing = self.listing(Some(&self.second));
            let by_original: BTreeMap<String, String> =
                listing.into_iter().filter_map(|(id, o)| Some((o?, id))).collect();
            for (original, digest) in &self.copied {
                let Some(id) = by_original.get(original) else {
                    return Err(format!("the copy lost snapshot {original}"));
                };
                self.restores(Some(&self.second), id, digest)?;
            }
        }
        Ok(())
    }

    fn restores(&self, repo: Option<&Path>, id: &str, digest: &Digest) -> Result<(), String> {
        let _ = fs::remove_dir_all(&self.out);
        let mut c = self.e.cmd();
        if let Some(r) = repo {
            c.args(["-r", r.to_str().unwrap()]);
        }
        let o = c
            .args(["restore", id, "--target", self.out.to_str().unwrap()])
            .output()
            .unwrap();
        if code(&o) != 0 {
            return Err(format!("restore of {id}: {}", stderr(&o)));
        }
        let got = digest_tree(&self.out.join(self.src.strip_prefix("/").unwrap()));
        if &got != digest {
            return Err(format!(
                "snapshot {id} restored differently from what was backed up"
            ));
        }
        Ok(())
    }
}

/// Run `ops` on a new world; the first failure, with the step it happened at.
fn run_sequence(ops: &[Op]) -> Result<(), (usize, String)> {
    let mut w = World::new();
    for (i, op) in ops.iter().enumerate() {
        let r = catch_unwind(AssertUnwindSafe(|| w.step(op))).unwrap_or_else(|p| {
            Err(p
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "panic".into()))
        });
        if let Err(why) = r {
            return Err((i, why));
        }
    }
    Ok(())
}

/// A shorter sequence that still fails: drop windows of steps, halving their size (ddmin).
/// Runs are not exactly repeatable (kills are timed), so at most `budget` tries.
fn shrink(mut ops: Vec<Op>, mut why: String, budget: usize) -> (Vec<Op>, String) {
    let mut tries = 0;
    let mut n = ops.len() / 2;
    while n >= 1 && tries < budget {
        let mut i = 0;
        let mut dropped = false;
        while i + n <= ops.len() && tries < budget {
            let mut cand = ops.clone();
            cand.drain(i..i + n);
            tries += 1;
            if let Err((at, w)) = run_sequence(&cand) {
                cand.truncate(at + 1);
                ops = cand;
                why = w;
                dropped = true;
            } else {
                i += n;
            }
        }
        if !dropped {
            n /= 2;
        }
    }
    (ops, why)
}

#[test]
fn random_sequences_keep_every_snapshot_the_model_says_exists() {
    let seed = var(
        "COFFER_MODEL_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    let sequences = var("COFFER_MODEL_SEQUENCES", 1);
    let steps = var("COFFER_MODEL_STEPS", 24);
    println!(
        "model: seed {seed} (COFFER_MODEL_SEED={seed} repeats it), {sequences} sequence(s) of {steps} steps"
    );
    for k in 0..sequences {
        let s = seed.wrapping_add(k);
        let ops = sequence(s, steps);
        println!("sequence {k} (seed {s}): {ops:?}");
        if let Err((at, why)) = run_sequence(&ops) {
            let failing = ops[..=at].to_vec();
            println!(
                "sequence {k} failed at step {at} ({:?}): {why}\nshrinking…",
                ops[at]
            );
            let (small, small_why) = shrink(failing, why.clone(), 40);
            panic!(
                "seed {s}: failed at step {at} ({:?}): {why}\nshortest failing sequence found ({} steps): {small:?}\n  which failed with: {small_why}",
                ops[at],
                small.len()
            );
        }
    }
}
