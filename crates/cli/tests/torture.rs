//! The torture suite (issue 26 item 4), seeded: `kill -9` at random moments of backup, prune,
//! copy, `repair packs`, a coffer server receiving uploads and the server's retention, and a
//! full disk under the repository and under a restore target. After each round the repository
//! checks clean with `--read-data` and every snapshot a run reported as saved restores
//! byte-identical.
//!
//! `scripts/torture --seed N --rounds R` runs it long; here (CI) each scenario runs
//! `COFFER_TORTURE_ROUNDS` rounds (default 3) with `COFFER_TORTURE_SEED` (default: from the
//! clock, printed: a failure names the seed that reproduces its sequence of moments; the
//! moments themselves are times, so a rerun on another machine kills at other points).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::server::ServerProc;
use common::{code, digest_tree, pseudo_random, stderr, Env};

type Digest = BTreeMap<Vec<u8>, (u64, String, u32)>;

fn rounds() -> u64 {
    std::env::var("COFFER_TORTURE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// The seed of this run (printed), and a generator from it.
fn rng(scenario: &str) -> Rng {
    let seed = std::env::var("COFFER_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!(
        "torture {scenario}: seed {seed} (COFFER_TORTURE_SEED={seed} repeats it), {} rounds",
        rounds()
    );
    // each scenario its own stream from the one seed
    let salt = u64::from_le_bytes(
        blake3::hash(scenario.as_bytes()).as_bytes()[..8]
            .try_into()
            .unwrap(),
    );
    Rng((seed ^ salt) | 1)
}

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
}

/// New content for a round: a few files of new data, some changed, some small ones.
fn change_source(src: &Path, rng: &mut Rng) {
    fs::create_dir_all(src.join("small")).unwrap();
    for i in 0..3 {
        let len = 1 << 20 | rng.below(3 << 20) as usize;
        fs::write(src.join(format!("f{i}.bin")), pseudo_random(rng.next(), len)).unwrap();
    }
    for i in 0..40 {
        if rng.below(3) == 0 {
            fs::write(src.join(format!("small/s{i}")), pseudo_random(rng.next(), 2000)).unwrap();
        }
    }
}

/// Spawn coffer and kill it with SIGKILL after a random delay below `most`; whether it was
/// the kill that ended it, and its output. A run that ended before its kill sets `most` to
/// how long it took, so that the next kills of that step fall inside it on any machine.
fn kill_at_random(mut cmd: Command, rng: &mut Rng, most: &mut Duration) -> (bool, std::process::Output) {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let delay = Duration::from_micros(rng.below(most.as_micros() as u64));
    let (killed, out) = kill_after(child, delay);
    if !killed {
        *most = started.elapsed().max(Duration::from_millis(5));
    }
    (killed, out)
}

fn kill_after(mut child: Child, delay: Duration) -> (bool, std::process::Output) {
    let until = std::time::Instant::now() + delay;
    while std::time::Instant::now() < until {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let killed = std::os::unix::process::ExitStatusExt::signal(&out.status) == Some(9);
    (killed, out)
}

/// The snapshot id a `backup --json` run printed, if it saved one.
fn saved(out: &std::process::Output) -> Option<String> {
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.lines().last()?).ok()?;
    v["snapshot_id"].as_str().map(str::to_string)
}

/// `check --read-data` clean, and every snapshot in `expect` restores as recorded.
fn all_good(
    run: &dyn Fn(&[&str]) -> std::process::Output,
    expect: &BTreeMap<String, (PathBuf, Digest)>,
    out: &Path,
    what: &str,
) {
    let o = run(&["check", "--read-data"]);
    assert_eq!(
        code(&o),
        0,
        "{what}: check --read-data after the kill: {}",
        stderr(&o)
    );
    for (id, (src, digest)) in expect {
        let _ = fs::remove_dir_all(out);
        let o = run(&["restore", &id[..16], "--target", out.to_str().unwrap()]);
        assert_eq!(code(&o), 0, "{what}: restore of {id}: {}", stderr(&o));
        assert_eq!(
            &digest_tree(&out.join(src.strip_prefix("/").unwrap())),
            digest,
            "{what}: snapshot {id} restored differently"
        );
    }
    let _ = fs::remove_dir_all(out);
}

/// kill -9 during backup, prune (after forget), `repair packs` and `copy`.
#[test]
fn kill_9_at_random_moments_of_backup_prune_repair_and_copy() {
    let mut rng = rng("local");
    let e = Env::new();
    e.ok(&["init", "--pack-size", "1"]);
    let second = e.path("second");
    let run = |args: &[&str]| e.run(args);
    let src = e.path("src");
    let out = e.path("out");
    let mut expect: BTreeMap<String, (PathBuf, Digest)> = BTreeMap::new();
    let mut killed = [0u32; 4];
    // (each step's kills fall below its last uninterrupted run's time)
    let mut most = [Duration::from_millis(1500); 4];
    e.cmd()
        .args(["init", "-q", "-r", second.to_str().unwrap()])
        .status()
        .unwrap();
    for round in 0..rounds() {
        // backup
        change_source(&src, &mut rng);
        let digest = digest_tree(&src);
        let mut cmd = e.cmd();
        cmd.args(["backup", "--json", src.to_str().unwrap()]);
        let (k, o) = kill_at_random(cmd, &mut rng, &mut most[0]);
        killed[0] += k as u32;
        if let Some(id) = saved(&o) {
            expect.insert(id, (src.clone(), digest.clone()));
        }
        all_good(&run, &expect, &out, &format!("round {round}, backup"));
        // a complete backup, so that forget has something to remove
        let o = e.run(&["backup", "--json", src.to_str().unwrap()]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        expect.insert(saved(&o).unwrap(), (src.clone(), digest));

        // forget the oldest and prune
        if expect.len() > 3 {
            let list: serde_json::Value = serde_json::from_str(&e.ok(&["snapshots", "--json"])).unwrap();
            let oldest = list[0]["id"].as_str().unwrap().to_string();
            e.ok(&["forget", "-q", &oldest[..16]]);
            expect.remove(&oldest);
        }
        let mut cmd = e.cmd();
        cmd.args(["prune", "--grace", "0h", "--max-unused", "0%"]);
        let (k, _) = kill_at_random(cmd, &mut rng, &mut most[1]);
        killed[1] += k as u32;
        all_good(&run, &expect, &out, &format!("round {round}, prune"));

        // damage a pack, then kill its repair
        let packs: Vec<PathBuf> = fs::read_dir(e.repo.join("data"))
            .unwrap()
            .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
            .map(|f| f.unwrap().path())
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect();
        let victim = &packs[rng.below(packs.len() as u64) as usize];
        let mut b = fs::read(victim).unwrap();
        let at = rng.below(b.len() as u64) as usize;
        b[at] ^= 0x10;
        fs::write(victim, b).unwrap();
        let mut cmd = e.cmd();
        cmd.args(["repair", "packs"]);
        let (k, _) = kill_at_random(cmd, &mut rng, &mut most[2]);
        killed[2] += k as u32;
        // finished or not, the next repair completes it; then all is clean
        e.ok(&["repair", "packs", "-q"]);
        all_good(&run, &expect, &out, &format!("round {round}, repair"));

        // copy into a second repository, killed
        let mut cmd = e.cmd();
        cmd.env("COFFER_FROM_REPOSITORY", &e.repo)
            .env("COFFER_FROM_PASSWORD_FILE", &e.pwfile)
            .args(["-r", second.to_str().unwrap(), "copy", "-q"]);
        let (k, _) = kill_at_random(cmd, &mut rng, &mut most[3]);
        killed[3] += k as u32;
        let o = e
            .cmd()
            .args(["-r", second.to_str().unwrap(), "check", "--read-data"])
            .output()
            .unwrap();
        assert_eq!(
            code(&o),
            0,
            "round {round}, copy: the destination checks clean: {}",
            stderr(&o)
        );
    }
    println!(
        "killed mid-way: backup {}, prune {}, repair {}, copy {} of {} rounds each",
        killed[0],
        killed[1],
        killed[2],
        killed[3],
        rounds()
    );
    // the copy, run to its end, holds every snapshot
    let o = e
        .cmd()
        .env("COFFER_FROM_REPOSITORY", &e.repo)
        .env("COFFER_FROM_PASSWORD_FILE", &e.pwfile)
        .args(["-r", second.to_str().unwrap(), "copy", "-q"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// kill -9 of the coffer server while clients upload, and during its retention: each backup
/// that reported a snapshot restores; the repository checks clean after a restart.
#[test]
fn kill_9_of_the_server_during_uploads_and_retention() {
    let mut rng = rng("server");
    let e = Env::new();
    let mut s = ServerProc::start(&e.path("server"), &[]);
    let token = s.add_client("web1", "web", "append");
    let read = s.add_client("reader", "web", "read");
    let (url, cacert) = (s.url("web"), s.cacert.clone());
    let client = |token: &str| {
        let mut c = e.cmd();
        c.env("COFFER_REPOSITORY", &url)
            .env("COFFER_TOKEN", token)
            .env("COFFER_CACERT", &cacert);
        c
    };
    assert_eq!(
        client(&token).args(["init", "-q"]).status().unwrap().code(),
        Some(0)
    );
    let src = e.path("src");
    let out = e.path("out");
    let mut expect: BTreeMap<String, (PathBuf, Digest)> = BTreeMap::new();
    let mut killed = 0;
    for round in 0..rounds() {
        change_source(&src, &mut rng);
        let digest = digest_tree(&src);
        let child = client(&token)
            .args(["backup", "--json", src.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // the server dies at a random moment of the upload
        std::thread::sleep(Duration::from_micros(rng.below(1_500_000)));
        let alive_before = s.exited().is_none();
        s.kill9();
        killed += alive_before as u32;
        let o = child.wait_with_output().unwrap();
        if let Some(id) = saved(&o) {
            expect.insert(id, (src.clone(), digest.clone()));
        } else {
            assert_ne!(code(&o), 0, "no snapshot, and yet success: {}", stderr(&o));
        }
        s.restart();
        // retention, killed at a random moment (nothing may go that a kept snapshot needs)
        let mut ret = s.admin_command(&["retention", "--repo", "web"]);
        ret.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let delay = Duration::from_micros(rng.below(300_000));
        let (_, _) = kill_after(ret.spawn().unwrap(), delay);
        // the backup again, to its end
        let o = client(&token)
            .args(["backup", "--json", src.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(
            code(&o),
            0,
            "round {round}: backup after the restart: {}",
            stderr(&o)
        );
        expect.insert(saved(&o).unwrap(), (src.clone(), digest));
        let run = |args: &[&str]| client(&read).args(args).output().unwrap();
        all_good(&run, &expect, &out, &format!("round {round}, server"));
    }
    println!("server killed during {killed} of {} uploads", rounds());
}

/// A full disk under the repository during backup and prune, and under the restore target:
/// one clear error, nothing incomplete committed, the repository valid, and the next run
/// after freeing space succeeds.
#[test]
fn a_full_disk_under_the_repository_and_under_the_restore_target() {
    if !common::require(
        rustix::process::geteuid().is_root(),
        "mounting a small tmpfs needs root",
    ) {
        return;
    }
    let e = Env::new();
    let mnt = e.path("small");
    fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=24m",
            "coffer-torture",
            mnt.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a 24 MiB tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let repo = mnt.join("repo");
    let r = repo.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut a = vec!["-r", r];
        a.extend_from_slice(args);
        e.run(&a)
    };
    assert_eq!(code(&run(&["init", "-q", "--pack-size", "1"])), 0);
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    // 4 MiB fits; then the disk is filled by something else, and 8 MiB more of new data does
    // not fit
    fs::write(src.join("a.bin"), pseudo_random(1, 4 << 20)).unwrap();
    let o = run(&["backup", "--json", src.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let first = saved(&o).unwrap();
    let first_digest = digest_tree(&src);
    fs::write(mnt.join("filler"), vec![7u8; 16 << 20]).unwrap();
    fs::write(src.join("b.bin"), pseudo_random(2, 8 << 20)).unwrap();
    let o = run(&["backup", "--json", src.to_str().unwrap()]);
    assert_eq!(code(&o), 1, "a full disk fails the backup: {}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(
        err.trim().lines().filter(|l| l.contains("error")).count(),
        1,
        "one error line: {err}"
    );
    assert!(
        saved(&o).is_none(),
        "no snapshot of a backup that did not complete"
    );
    let o = run(&["check", "--read-data"]);
    assert_eq!(
        code(&o),
        0,
        "the repository is valid on a full disk: {}",
        stderr(&o)
    );
    let snaps: serde_json::Value =
        serde_json::from_str(&String::from_utf8_lossy(&run(&["snapshots", "--json"]).stdout)).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 1, "only the complete snapshot");
    // prune on the full disk: it fails or does nothing, and the repository stays valid
    let _ = run(&["prune", "--grace", "0h"]);
    assert_eq!(code(&run(&["check", "--read-data"])), 0);
    // space freed: the same backup again succeeds
    fs::remove_file(mnt.join("filler")).unwrap();
    let o = run(&["backup", "--json", src.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let second = saved(&o).unwrap();
    let mut expect = BTreeMap::new();
    expect.insert(first, (src.clone(), first_digest));
    expect.insert(second, (src.clone(), digest_tree(&src)));
    all_good(&run, &expect, &e.path("out"), "after the full disk");

    // the restore target full: one clear error, exit 1, nothing changed in the repository
    let tiny = e.path("tiny");
    fs::create_dir_all(&tiny).unwrap();
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=2m",
            "coffer-torture",
            tiny.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a 2 MiB tmpfs");
    let _tiny_guard = Unmount(tiny.clone());
    let o = run(&["restore", "latest", "--target", tiny.to_str().unwrap()]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("No space left on device"), "{}", stderr(&o));
    let o = run(&["check", "--read-data"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}
