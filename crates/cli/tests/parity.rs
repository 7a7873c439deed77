//! Parity (docs/FORMAT.md "Parity"): packs damaged in storage are reported by `check
//! --read-data` as repairable, read through their parity by restore, and written back by
//! `repair packs`; damage beyond the parity, a pack without parity, a damaged parity file and
//! prune's cleanup are each said or done as documented.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{code, digest_tree, pseudo_random, stderr, Env};

/// Every file of a fanned-out namespace (`data`, `parity`), sorted.
fn files(repo: &Path, dir: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let Ok(rd) = fs::read_dir(repo.join(dir)) else {
        return v;
    };
    for d in rd {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if !p.file_name().unwrap().to_string_lossy().starts_with('.') {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn intact(p: &Path) -> bool {
    blake3::hash(&fs::read(p).unwrap()).to_hex().as_str() == name(p)
}

/// A seeded generator for the places damaged (xorshift).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn flip(p: &Path, at: usize) {
    let mut b = fs::read(p).unwrap();
    b[at] ^= 0x20;
    fs::write(p, b).unwrap();
}

fn json(out: &[u8]) -> serde_json::Value {
    let s = String::from_utf8_lossy(out);
    serde_json::from_str(s.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// Restore the latest snapshot, compare it with `expected`; returns what restore said on stderr.
fn restore_matches(
    e: &Env,
    src: &Path,
    expected: &std::collections::BTreeMap<Vec<u8>, (u64, String, u32)>,
) -> String {
    let out = e.path("out");
    let _ = fs::remove_dir_all(&out);
    let o = e.run(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        &digest_tree(&out.join(src.strip_prefix("/").unwrap())),
        expected,
        "the restore is byte-identical"
    );
    stderr(&o)
}

/// The "done when": 100 single-byte flips, at most one per pack, each reported and
/// repaired; the snapshot restores byte-identical before and after the repair.
#[test]
fn a_hundred_flipped_bytes_are_reported_read_through_and_repaired() {
    let e = Env::new();
    e.ok(&["init", "--pack-size", "1"]);
    let src = e.path("src");
    fs::create_dir_all(src.join("small")).unwrap();
    // incompressible content in packs of 1 to 2 MiB (a bundle or chunk of up to 2 MiB goes
    // whole into one): over a hundred packs, and small files in bundles
    for i in 0..96u64 {
        fs::write(src.join(format!("f{i}.bin")), pseudo_random(i, 2 << 20)).unwrap();
    }
    for i in 0..400u64 {
        fs::write(src.join(format!("small/s{i}.txt")), pseudo_random(1000 + i, 3000)).unwrap();
    }
    e.ok(&["backup", "-q", src.to_str().unwrap()]);
    let expected = digest_tree(&src);
    let packs = files(&e.repo, "data");
    let parity = files(&e.repo, "parity");
    assert!(packs.len() > 100, "{} packs", packs.len());
    assert_eq!(
        parity.iter().map(|p| name(p)).collect::<Vec<_>>(),
        packs.iter().map(|p| name(p)).collect::<Vec<_>>(),
        "every pack has its parity file, named as the pack"
    );

    // one flipped byte in each of 100 packs, at a random place (seeded)
    let seed = 0x5eed_2612u64;
    println!("damage seed {seed:#x}");
    let mut rng = Rng(seed);
    let mut order: Vec<usize> = (0..packs.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let damaged: Vec<&PathBuf> = order[..100].iter().map(|i| &packs[*i]).collect();
    for p in &damaged {
        let len = fs::metadata(p).unwrap().len();
        flip(p, rng.below(len) as usize);
        assert!(!intact(p));
    }

    // check names each damaged pack as repairable, and no snapshot as damaged
    let o = e.run(&["check", "--read-data", "--json"]);
    assert_eq!(code(&o), 1, "damage is an error until repaired: {}", stderr(&o));
    let r = json(&o.stdout);
    let repairable: Vec<String> = r["repairable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().rsplit('/').next().unwrap().to_string())
        .collect();
    let mut want: Vec<String> = damaged.iter().map(|p| name(p)).collect();
    want.sort();
    let mut got = repairable.clone();
    got.sort();
    assert_eq!(got, want, "each of the 100 damaged packs is named repairable");
    assert_eq!(r["errors"].as_array().unwrap().len(), 100);
    assert!(
        r["affected"].as_array().unwrap().is_empty(),
        "no snapshot lost anything: {}",
        r["affected"]
    );
    let human = e.run(&["check", "--read-data"]);
    assert!(
        stderr(&human).contains("its parity rebuilds it") && stderr(&human).contains("coffer repair packs"),
        "{}",
        stderr(&human)
    );

    // a restore reads through the parity before anything is repaired, and says so
    let said = restore_matches(&e, &src, &expected);
    assert!(
        said.contains("were read through their parity") && said.contains("coffer repair packs"),
        "{said}"
    );

    // --dry-run says what it would do and changes nothing
    let before: Vec<Vec<u8>> = damaged.iter().map(|p| fs::read(p).unwrap()).collect();
    let o = e.run(&["repair", "packs", "--dry-run", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = json(&o.stdout);
    assert_eq!(r["repaired"].as_array().unwrap().len(), 100);
    assert_eq!(r["dry_run"], true);
    for (p, b) in damaged.iter().zip(&before) {
        assert_eq!(&fs::read(p).unwrap(), b, "dry run left {} as it was", name(p));
    }

    // the repair writes each pack back under its own name
    let o = e.run(&["repair", "packs", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = json(&o.stdout);
    assert_eq!(r["repaired"].as_array().unwrap().len(), 100);
    assert!(r["unrepairable"].as_array().unwrap().is_empty());
    assert_eq!(
        (r["parity_written"].as_u64(), r["parity_rewritten"].as_u64()),
        (Some(0), Some(0))
    );
    for p in &packs {
        assert!(intact(p), "{} hashes to its name", name(p));
    }
    let out = e.ok(&["check", "--read-data"]);
    assert!(out.contains("no errors were found"), "{out}");
    let said = restore_matches(&e, &src, &expected);
    assert!(
        !said.contains("parity"),
        "nothing is read through parity any more: {said}"
    );
    // run again, it changes nothing
    let r = json(&e.run(&["repair", "packs", "--json"]).stdout);
    assert!(r["repaired"].as_array().unwrap().is_empty());
}

/// What parity cannot do is said: damage beyond it, a pack without parity; what it is asked
/// to do is scoped: `repair packs ID` touches only that pack; a missing or damaged parity
/// file is written again; `init --parity 0` writes none; prune removes parity with packs.
#[test]
fn limits_scope_and_upkeep_of_parity() {
    let e = Env::new();
    // bad values are refused while parsing
    for bad in ["51%", "-1", "x", "0.001%"] {
        let o = e.run(&["init", "--parity", bad]);
        assert_eq!(code(&o), 2, "--parity {bad}: {}", stderr(&o));
    }
    e.ok(&["init", "--pack-size", "1"]);
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..8u64 {
        fs::write(src.join(format!("f{i}.bin")), pseudo_random(50 + i, 1 << 20)).unwrap();
    }
    e.ok(&["backup", "-q", src.to_str().unwrap()]);
    let expected = digest_tree(&src);
    // the data packs, largest first
    let mut packs = files(&e.repo, "data");
    packs.sort_by_key(|p| std::cmp::Reverse(fs::metadata(p).unwrap().len()));
    assert!(packs.len() >= 5, "{} packs", packs.len());
    let parity_of = |p: &Path| e.repo.join("parity").join(&name(p)[..2]).join(name(p));

    // 1. beyond the parity: a quarter of the pack overwritten
    let beyond = &packs[0];
    let mut b = fs::read(beyond).unwrap();
    let n = b.len();
    b[n / 4..n / 2].iter_mut().for_each(|x| *x = !*x);
    fs::write(beyond, b).unwrap();
    // 2. damaged, and its parity file gone
    let orphaned = &packs[1];
    flip(orphaned, 100);
    fs::remove_file(parity_of(orphaned)).unwrap();
    let o = e.run(&["check", "--read-data"]);
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(
        err.contains("not repairable") && err.contains("parity repairs at most"),
        "{err}"
    );
    assert!(err.contains("has no parity file"), "{err}");
    assert!(
        err.contains("snapshot") && err.contains("is damaged"),
        "lost data is traced to the snapshot: {err}"
    );
    let o = e.run(&["repair", "packs"]);
    assert_eq!(code(&o), 1, "unrepairable damage is a failure");
    assert!(
        stderr(&o).contains(&name(beyond)) && stderr(&o).contains(&name(orphaned)),
        "{}",
        stderr(&o)
    );
    assert!(
        !intact(beyond) && !intact(orphaned),
        "nothing unrepairable was written over"
    );
    // 3. scope: two damaged packs, only the named one is repaired
    let (one, two) = (&packs[2], &packs[3]);
    flip(one, 7);
    flip(two, 7);
    let o = e.run(&["repair", "packs", &format!("data/{}", name(one))]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(intact(one) && !intact(two), "only the named pack was touched");
    let o = e.run(&["repair", "packs", "zz"]);
    assert_eq!(code(&o), 2, "not a pack id: {}", stderr(&o));

    // 4. a damaged parity file of an intact pack is written again
    let p4 = &packs[4];
    flip(&parity_of(p4), 200);
    let o = e.run(&["check", "--read-data"]);
    assert!(stderr(&o).contains("parity files are damaged"), "{}", stderr(&o));
    let r = json(
        &e.run(&["repair", "packs", &name(two), &name(p4), "--json"])
            .stdout,
    );
    assert_eq!(r["repaired"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["parity_rewritten"], 1, "{r}");
    assert!(intact(two));

    // 5. a missing parity file of an intact pack is written; then the repository holds only
    // the damage nothing can repair
    fs::remove_file(parity_of(one)).unwrap();
    let o = e.run(&["check"]);
    assert!(
        stderr(&o).contains("2 packs have no parity file"),
        "{}",
        stderr(&o)
    );
    let r = json(&e.run(&["repair", "packs", &name(one), "--json"]).stdout);
    assert_eq!(r["parity_written"], 1, "{r}");
    assert!(parity_of(one).exists());
    let _ = expected;

    // 6. forget and prune: each parity file goes with its pack
    let ep = Env::new();
    ep.ok(&["init", "--pack-size", "1"]);
    let a = ep.path("a");
    fs::create_dir_all(&a).unwrap();
    for round in 0..2u64 {
        for i in 0..3u64 {
            fs::write(
                a.join(format!("f{i}")),
                pseudo_random(700 + 10 * round + i, 900_000),
            )
            .unwrap();
        }
        ep.ok(&["backup", "-q", a.to_str().unwrap()]);
    }
    let packs_before = files(&ep.repo, "data").len();
    ep.ok(&["forget", "--keep-last", "1", "--prune"]);
    ep.ok(&["prune", "-q"]);
    let left: Vec<String> = files(&ep.repo, "data").iter().map(|p| name(p)).collect();
    let parity_left: Vec<String> = files(&ep.repo, "parity").iter().map(|p| name(p)).collect();
    assert!(
        left.len() < packs_before,
        "prune removed packs ({packs_before} -> {})",
        left.len()
    );
    assert_eq!(
        parity_left, left,
        "each pack keeps its parity, and no parity outlives its pack"
    );
    let out = ep.ok(&["check", "--read-data"]);
    assert!(out.contains("no errors were found"), "{out}");

    // 7. --parity 0 writes none
    let e0 = Env::new();
    e0.ok(&["init", "--parity", "0"]);
    e0.ok(&["backup", "-q", src.to_str().unwrap()]);
    assert!(files(&e0.repo, "parity").is_empty());
    let out = e0.ok(&["check", "--read-data"]);
    assert!(out.contains("no errors were found"), "{out}");
}
