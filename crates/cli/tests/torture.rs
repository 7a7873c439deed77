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
mod testfs;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::server::ServerProc;
use common::{code, digest_tree, pseudo_random, stderr, Env, Rng};

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

/// The server's retention, as the torture runs it: `keep-last 2`, no grace for unreferenced
/// packs and no time in the trash, so that every run removes snapshots and packs and purges
/// what the run before it trashed.
const RETENTION: [&str; 5] = ["--pack-grace", "0s", "--trash-for", "0s", "retention"];

/// The snapshots a repository lists.
fn listed(run: &dyn Fn(&[&str]) -> std::process::Output) -> std::collections::BTreeSet<String> {
    let o = run(&["snapshots", "--json"]);
    assert_eq!(code(&o), 0, "snapshots: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// After the server's retention (`keep-last 2`, perhaps killed): the two newest snapshots
/// received are all still listed; the ones it removed leave `expect` (and `order`).
fn after_retention(
    run: &dyn Fn(&[&str]) -> std::process::Output,
    expect: &mut BTreeMap<String, (PathBuf, Digest)>,
    order: &mut Vec<String>,
    what: &str,
) {
    let present = listed(run);
    for id in order.iter().rev().take(2) {
        assert!(
            present.contains(id),
            "{what}: snapshot {id}, one of the 2 newest, is gone after retention"
        );
    }
    order.retain(|id| present.contains(id));
    expect.retain(|id, _| present.contains(id));
}

/// kill -9 of the coffer server while clients upload, and during its retention (a real
/// policy, `keep-last 2`, with no grace and no trash time): each backup that reported a
/// snapshot restores unless retention removed it, the newest two always do, and the
/// repository checks clean after a restart.
#[test]
fn kill_9_of_the_server_during_uploads_and_retention() {
    let mut rng = rng("server");
    let e = Env::new();
    let mut s = ServerProc::start(&e.path("server"), &["--retention-every", "0"]);
    let token = s.add_client("web1", "web", "append");
    let read = s.add_client("reader", "web", "read");
    s.admin_ok(&["repo", "set", "web", "--keep-last", "2"]);
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
    let mut order = Vec::new();
    let mut killed = [0u32; 2];
    let mut removed = 0;
    // (the kills fall below the last uninterrupted run's time)
    let mut most = [Duration::from_millis(1500); 2];
    let run = |args: &[&str]| client(&read).args(args).output().unwrap();
    for round in 0..rounds() {
        change_source(&src, &mut rng);
        let digest = digest_tree(&src);
        let started = std::time::Instant::now();
        let child = client(&token)
            .args(["backup", "--json", src.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // the server dies at a random moment of the upload
        let until = started + Duration::from_micros(rng.below(most[0].as_micros() as u64));
        let mut child = child;
        while std::time::Instant::now() < until && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let finished = child.try_wait().unwrap().is_some();
        s.kill9();
        killed[0] += !finished as u32;
        if finished {
            most[0] = started.elapsed().max(Duration::from_millis(5));
        }
        // back at once: the client's retries may finish the backup against the new process
        s.restart();
        let o = child.wait_with_output().unwrap();
        if let Some(id) = saved(&o) {
            expect.insert(id.clone(), (src.clone(), digest.clone()));
            order.push(id);
        } else {
            assert_ne!(code(&o), 0, "no snapshot, and yet success: {}", stderr(&o));
        }
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
        let id = saved(&o).unwrap();
        expect.insert(id.clone(), (src.clone(), digest));
        order.push(id);
        // retention, killed at a random moment (nothing may go that a kept snapshot needs)
        let before = expect.len();
        let mut ret = s.admin_command(&RETENTION);
        ret.arg("--json");
        let (k, _) = kill_at_random(ret, &mut rng, &mut most[1]);
        killed[1] += k as u32;
        after_retention(
            &run,
            &mut expect,
            &mut order,
            &format!("round {round}, retention"),
        );
        // and one run to its end (with `keep-last 2`, from the third round on it removes)
        let o = s.admin(&RETENTION);
        assert_eq!(code(&o), 0, "round {round}: retention: {}", stderr(&o));
        after_retention(
            &run,
            &mut expect,
            &mut order,
            &format!("round {round}, retention"),
        );
        removed += before - expect.len();
        all_good(&run, &expect, &out, &format!("round {round}, server"));
    }
    println!(
        "server killed during {} of {} uploads; retention killed {} times, removed {removed} snapshots",
        killed[0],
        rounds(),
        killed[1]
    );
    assert!(
        rounds() < 3 || removed > 0,
        "retention removed nothing: the test proved nothing about it"
    );
}

/// The coffer server's data directory (catalog, certificate, repositories) on the test file
/// system: the server killed at a random moment of an upload and of its retention, then a
/// power cut (what it did not fsync is lost); a cut right after a backup it acknowledged; and
/// a full disk under an upload. Every snapshot the server acknowledged restores (unless its
/// retention removed it), the repository checks clean, a full disk fails the backup with one
/// line and commits nothing, and the next backup with room succeeds.
#[test]
fn power_cuts_and_a_full_disk_under_the_coffer_server() {
    let mut rng = rng("server-power");
    let e = Env::new();
    let mnt = e.path("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let t = testfs::TestFs::mount(&mnt);
    if !common::require(
        t.is_ok(),
        &format!("cannot mount the test FUSE file system: {:?}", t.as_ref().err()),
    ) {
        return;
    }
    let t = t.unwrap();
    let mut s = ServerProc::start_logged(
        &mnt.join("server"),
        &e.path("server.log"),
        &["--retention-every", "0"],
        &[],
    );
    let token = s.add_client("web1", "web", "append");
    let read = s.add_client("reader", "web", "read");
    s.admin_ok(&["repo", "set", "web", "--keep-last", "2"]);
    // the certificate, as the operator copied it to the clients
    let cacert = e.path("cacert.pem");
    fs::copy(&s.cacert, &cacert).unwrap();
    // what the operator was told is done (a certificate, tokens, a policy) survives a cut
    s.kill9();
    let mut lost = t.power_cut();
    s.restart();
    let url = s.url("web");
    let client = |token: &str| {
        let mut c = e.cmd();
        c.env("COFFER_REPOSITORY", &url)
            .env("COFFER_TOKEN", token)
            .env("COFFER_CACERT", &cacert);
        c
    };
    let o = client(&token).args(["init", "-q"]).output().unwrap();
    assert_eq!(code(&o), 0, "init after a cut: {}", stderr(&o));
    let src = e.path("src");
    let out = e.path("out");
    let mut expect: BTreeMap<String, (PathBuf, Digest)> = BTreeMap::new();
    let mut order = Vec::new();
    let mut killed = [0u32; 2];
    let mut full = 0;
    let mut most = [Duration::from_millis(1500); 2];
    let run = |args: &[&str]| client(&read).args(args).output().unwrap();
    let mut cut = |s: &mut ServerProc| {
        s.kill9();
        let (f, n) = t.power_cut();
        lost.0 += f;
        lost.1 += n;
        s.restart();
    };
    for round in 0..rounds() {
        // the server killed at a random moment of an upload, then the power goes
        change_source(&src, &mut rng);
        let digest = digest_tree(&src);
        let started = std::time::Instant::now();
        let mut child = client(&token)
            .args(["backup", "--json", src.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let until = started + Duration::from_micros(rng.below(most[0].as_micros() as u64));
        while std::time::Instant::now() < until && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let finished = child.try_wait().unwrap().is_some();
        killed[0] += !finished as u32;
        cut(&mut s);
        let o = child.wait_with_output().unwrap();
        if finished {
            most[0] = started.elapsed().max(Duration::from_millis(5));
        }
        if let Some(id) = saved(&o) {
            expect.insert(id.clone(), (src.clone(), digest.clone()));
            order.push(id);
        } else {
            assert_ne!(code(&o), 0, "no snapshot, and yet success: {}", stderr(&o));
        }
        all_good(
            &run,
            &expect,
            &out,
            &format!("round {round}, cut during an upload"),
        );

        // a backup the server acknowledged, then a cut at once: it is durable
        let o = client(&token)
            .args(["backup", "--json", src.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "round {round}: backup: {}", stderr(&o));
        let id = saved(&o).unwrap();
        expect.insert(id.clone(), (src.clone(), digest));
        order.push(id);
        cut(&mut s);
        all_good(&run, &expect, &out, &format!("round {round}, cut after a backup"));

        // retention killed at a random moment, then a cut
        let mut ret = s.admin_command(&RETENTION);
        ret.arg("--json");
        let (k, _) = kill_at_random(ret, &mut rng, &mut most[1]);
        killed[1] += k as u32;
        cut(&mut s);
        after_retention(
            &run,
            &mut expect,
            &mut order,
            &format!("round {round}, retention"),
        );
        all_good(
            &run,
            &expect,
            &out,
            &format!("round {round}, cut during retention"),
        );

        // a full disk under an upload: one line, nothing committed; with room, it succeeds
        change_source(&src, &mut rng);
        let digest = digest_tree(&src);
        let before = listed(&run);
        t.set_capacity(Some(t.used() + rng.below(2 << 20)));
        let o = client(&token)
            .args(["backup", "--json", src.to_str().unwrap()])
            .output()
            .unwrap();
        t.set_capacity(None);
        if let Some(id) = saved(&o) {
            // it fitted
            expect.insert(id.clone(), (src.clone(), digest.clone()));
            order.push(id);
        } else {
            full += 1;
            assert_eq!(
                code(&o),
                1,
                "round {round}: backup on a full disk: {}",
                stderr(&o)
            );
            let err = stderr(&o);
            // one line says why (before it, perhaps a request retried: a connection the server
            // closed after refusing an upload midway)
            let mut lines: Vec<&str> = err.trim().lines().collect();
            let last = lines.pop().unwrap_or_default();
            assert!(
                last.contains("storage is full") && lines.iter().all(|l| l.contains("retrying")),
                "round {round}: the backup says in one line that the server is out of space: {err}"
            );
            assert_eq!(listed(&run), before, "round {round}: nothing committed");
            let o = client(&token)
                .args(["backup", "--json", src.to_str().unwrap()])
                .output()
                .unwrap();
            assert_eq!(code(&o), 0, "round {round}: backup with room: {}", stderr(&o));
            let id = saved(&o).unwrap();
            expect.insert(id.clone(), (src.clone(), digest));
            order.push(id);
        }
        all_good(&run, &expect, &out, &format!("round {round}, full disk"));
    }
    println!(
        "server power cuts: killed mid-way: upload {}, retention {} of {} rounds; a full disk \
         stopped {full} backups; {} files lost unsynced data, {} names were not durable",
        killed[0],
        killed[1],
        rounds(),
        lost.0,
        lost.1,
    );
    assert!(
        killed[0] > 0 && full > 0 && lost.0 + lost.1 > 0,
        "no upload was cut mid-way, no backup met a full disk, or no cut lost anything: the \
         test proved nothing"
    );
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

// ---- clocks: leases that lapse, clients whose clocks are off

/// libfaketime's multi-threaded library, wherever this machine's architecture keeps it.
fn libfaketime() -> Option<PathBuf> {
    fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.exists())
}

/// `cmd` with its own clock: libfaketime reads the offset in `clock` ("+0", "-20m", "+20m") at
/// every call. The kernel's clock, and so the file times the repository's storage stamps, stay
/// real, as for a client on another machine whose clock is off.
fn on_clock(cmd: &mut Command, clock: &Path) {
    cmd.env("LD_PRELOAD", libfaketime().unwrap())
        .env("FAKETIME_TIMESTAMP_FILE", clock)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("NO_FAKE_STAT", "1");
}

fn signal(child: &Child, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

/// Flip bits (`mask`) of one byte of a random pack; the pack and its damaged bytes.
fn flip_a_pack(repo: &Path, rng: &mut Rng, mask: u8) -> (PathBuf, Vec<u8>) {
    let mut packs: Vec<PathBuf> = fs::read_dir(repo.join("data"))
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    packs.sort();
    let victim = packs[rng.below(packs.len() as u64) as usize].clone();
    let mut b = fs::read(&victim).unwrap();
    let at = rng.below(b.len() as u64) as usize;
    b[at] ^= mask;
    fs::write(&victim, &b).unwrap();
    (victim, b)
}

fn packs_in(repo: &Path) -> usize {
    fs::read_dir(repo.join("data"))
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .filter(|f| !f.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
        .count()
}

/// A snapshot of 4 MiB of new data (then forgotten by the caller): what the next backups
/// deduplicate against, and what a prune condemns.
fn old_data(e: &Env, dir: &Path, rng: &mut Rng) -> String {
    fs::create_dir_all(dir).unwrap();
    for i in 0..4 {
        fs::write(dir.join(format!("old{i}")), pseudo_random(rng.next(), 1 << 20)).unwrap();
    }
    e.backup_json(&[dir.to_str().unwrap()])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A source holding a copy of the files `old` names (they sort first, so they are
/// deduplicated before any new data is read) and `mib` MiB of new data.
fn with_copy_of(old: &Path, names: &[&str], src: &Path, mib: usize, rng: &mut Rng) {
    fs::create_dir_all(src.join("a")).unwrap();
    fs::create_dir_all(src.join("z")).unwrap();
    for n in names {
        fs::copy(old.join(n), src.join("a").join(n)).unwrap();
    }
    fs::write(src.join("z/new.bin"), pseudo_random(rng.next(), mib << 20)).unwrap();
}

/// Start a paced backup of `src` on `clock`; once it has written a pack of its own (its index
/// is read and it deduplicates against it), stop it with SIGSTOP. In a process group of its
/// own: when the group of whatever started the test is orphaned (its shell exits), the kernel
/// sends SIGHUP and SIGCONT to that group's stopped members, and the backup, woken, would give
/// up its lease and exit (seen in a long run started from a shell that exited).
fn started_and_stopped(e: &Env, src: &Path, clock: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    let before = packs_in(&e.repo);
    let mut cmd = e.cmd();
    cmd.process_group(0);
    on_clock(&mut cmd, clock);
    let mut child = cmd
        .args(["backup", "--json", "--limit-upload", "1M", src.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_until(
        "the backup's first pack",
        || packs_in(&e.repo) > before,
        || {
            child
                .try_wait()
                .unwrap()
                .map(|s| format!("the backup ended ({s})"))
        },
    );
    signal(&child, rustix::process::Signal::STOP);
    child
}

/// Forget the expected snapshots older than the newest `n`, and prune: a long run stays
/// bounded (every round restores every expected snapshot).
fn keep_newest(e: &Env, expect: &mut BTreeMap<String, (PathBuf, Digest)>, n: usize) {
    let list: serde_json::Value = serde_json::from_str(&e.ok(&["snapshots", "--json"])).unwrap();
    let ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .filter(|id| expect.contains_key(id))
        .collect();
    if ids.len() <= n {
        return;
    }
    for id in &ids[..ids.len() - n] {
        e.ok(&["forget", "-q", &id[..16]]);
        expect.remove(id);
    }
    prune_json(e);
}

/// A snapshot that stays (prune refuses to empty a repository whose listing came back empty).
fn anchor(e: &Env, expect: &mut BTreeMap<String, (PathBuf, Digest)>) {
    let keep = e.path("keep");
    fs::create_dir_all(&keep).unwrap();
    fs::write(keep.join("k"), b"kept all along").unwrap();
    let id = e.backup_json(&[keep.to_str().unwrap()])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    expect.insert(id, (keep.clone(), digest_tree(&keep)));
}

/// A prune run to its end. A prune killed just before may still hold its lease for
/// [`GONE_AFTER`](coffer_core::lease::GONE_AFTER) seconds: "another prune is running" is
/// waited out, as an operator would.
fn prune_json(e: &Env) -> serde_json::Value {
    loop {
        let o = e.run(&["prune", "--json", "--grace", "0h", "--max-unused", "0%"]);
        if code(&o) != 0 && stderr(&o).contains("another prune is running") {
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        assert_eq!(code(&o), 0, "prune: {}", stderr(&o));
        return serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap();
    }
}

/// Two clients whose clocks are 20 minutes behind and 20 minutes ahead of the others' (more
/// than a lease's 15 minutes) back up data a third client, on time, has just forgotten, while
/// it prunes. Their leases are judged by the storage's clock, so the prune waits for them, and
/// every snapshot restores afterwards.
#[test]
fn clients_whose_clocks_are_20_minutes_off_back_up_while_a_third_prunes() {
    if !common::require(
        libfaketime().is_some(),
        "libfaketime is not installed (apt-get install faketime)",
    ) {
        return;
    }
    let mut rng = rng("clocks");
    let e = Env::new();
    e.ok(&["init", "--pack-size", "1"]);
    let out = e.path("out");
    let mut expect: BTreeMap<String, (PathBuf, Digest)> = BTreeMap::new();
    anchor(&e, &mut expect);
    for round in 0..rounds() {
        let old = e.path(&format!("old{round}"));
        let id0 = old_data(&e, &old, &mut rng);
        let mut clients = Vec::new();
        // each its own share of the old data: what one uses, the other's snapshot does not keep
        for (name, offset, share) in [
            ("behind", "-20m", ["old0", "old1"]),
            ("ahead", "+20m", ["old2", "old3"]),
        ] {
            let src = e.path(&format!("{name}{round}"));
            with_copy_of(&old, &share, &src, 3, &mut rng);
            let clock = e.path(&format!("clock-{name}"));
            fs::write(&clock, offset).unwrap();
            let child = started_and_stopped(&e, &src, &clock);
            clients.push((name, child, src.clone(), digest_tree(&src)));
        }
        // the third client forgets the snapshot of the old data and prunes: its packs are
        // condemned, and the two backups using them are still running
        e.ok(&["forget", "-q", &id0[..16]]);
        let report = prune_json(&e);
        let deferred = report["deferred"].to_string();
        assert!(
            deferred.contains("still running"),
            "round {round}: the prune waits for both backups, whatever their clocks say: {report}"
        );
        let blockers: Vec<serde_json::Value> = fs::read_dir(e.repo.join("marks"))
            .unwrap()
            .map(|f| {
                serde_json::from_slice::<serde_json::Value>(&fs::read(f.unwrap().path()).unwrap()).unwrap()
            })
            .collect();
        assert!(
            blockers
                .iter()
                .any(|m| m["blockers"].as_array().map(Vec::len) == Some(2)),
            "round {round}: both backups block the mark: {blockers:?}"
        );
        // one finishes (ahead first in even rounds, behind first in odd ones); the prune
        // still waits for the other
        if round % 2 == 1 {
            clients.reverse();
        }
        for (i, (name, child, src, digest)) in clients.into_iter().enumerate() {
            signal(&child, rustix::process::Signal::CONT);
            let o = child.wait_with_output().unwrap();
            assert_eq!(code(&o), 0, "round {round}: the backup {name}: {}", stderr(&o));
            expect.insert(saved(&o).unwrap(), (src, digest));
            if i == 0 {
                let report = prune_json(&e);
                assert!(
                    report["deferred"].to_string().contains("still running"),
                    "round {round}: {name} finished, the prune still waits for the other: {report}"
                );
            }
        }
        // both have finished: this prune sweeps, keeping what their snapshots use
        prune_json(&e);
        all_good(&|a| e.run(a), &expect, &out, &format!("round {round}"));
        keep_newest(&e, &mut expect, 4);
    }
}

/// A backup suspended (SIGSTOP) past its lease: 20 minutes pass (the test file system's clock
/// and the prune's are moved on 20 minutes, so its lease file was last written 20 minutes
/// before the prune's), a prune
/// sweeps the data it deduplicated against, and when it resumes it refuses to write its
/// snapshot — whether its own clock moved on too (even rounds) or stood still, as a paused
/// VM's does (odd rounds: only the storage's clock tells). Nothing that was saved is lost.
/// Then a prune killed midway, a backup, and a prune: that backup restores.
#[test]
fn a_backup_suspended_past_its_lease_refuses_to_commit() {
    if !common::require(
        libfaketime().is_some(),
        "libfaketime is not installed (apt-get install faketime)",
    ) {
        return;
    }
    let mut rng = rng("lapse");
    let mut e = Env::new();
    // on the test file system, whose clock (the stamps it gives files) can be moved on
    let Some(t) = on_testfs(&mut e) else { return };
    e.ok(&["init", "--pack-size", "1"]);
    let out = e.path("out");
    let clock = e.path("clock");
    let mut expect: BTreeMap<String, (PathBuf, Digest)> = BTreeMap::new();
    let mut most = Duration::from_millis(1500);
    anchor(&e, &mut expect);
    for round in 0..rounds() {
        fs::write(&clock, "+0").unwrap();
        let old = e.path(&format!("old{round}"));
        let id0 = old_data(&e, &old, &mut rng);
        let src = e.path(&format!("src{round}"));
        with_copy_of(&old, &["old0", "old1", "old2", "old3"], &src, 3, &mut rng);
        let child = started_and_stopped(&e, &src, &clock);
        // 20 minutes pass for the storage and for the prune: the suspended backup's lease
        // file was last written 20 minutes before the prune's
        t.advance(Duration::from_secs(20 * 60));
        e.ok(&["forget", "-q", &id0[..16]]);
        let later = e.path("clock-later");
        fs::write(&later, "+20m").unwrap();
        let mut cmd = e.cmd();
        on_clock(&mut cmd, &later);
        let o = cmd
            .args(["prune", "--json", "--grace", "0h", "--max-unused", "0%"])
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let report: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap();
        assert!(
            report["deferred"].as_array().is_none_or(|d| d.is_empty()),
            "round {round}: a lease not refreshed for 20 minutes holds nothing back: {report}"
        );
        let snapshots = e.ok(&["snapshots", "--json"]);
        // the backup's own clock: 20 minutes on, or stood still
        if round % 2 == 0 {
            fs::write(&clock, "+20m").unwrap();
        }
        signal(&child, rustix::process::Signal::CONT);
        let o = child.wait_with_output().unwrap();
        assert_ne!(code(&o), 0, "round {round}: the backup must not commit");
        assert!(
            stderr(&o).contains("lease lapsed"),
            "round {round}: the backup says why: {}",
            stderr(&o)
        );
        if round % 2 == 1 {
            assert!(
                stderr(&o).contains("by the storage's clock: suspended"),
                "round {round}: with its own clock stood still, the storage's tells: {}",
                stderr(&o)
            );
        }
        assert!(saved(&o).is_none(), "round {round}: no snapshot reported");
        assert_eq!(
            e.ok(&["snapshots", "--json"]),
            snapshots,
            "round {round}: no snapshot written"
        );
        all_good(
            &|a| e.run(a),
            &expect,
            &out,
            &format!("round {round}, lapsed backup"),
        );

        // a prune killed midway, a backup, a prune
        fs::write(&clock, "+0").unwrap();
        e.ok(&["forget", "-q", "--keep-last", "2"]);
        let left = e.ok(&["snapshots", "--json"]);
        expect.retain(|id, _| left.contains(id.as_str()));
        let mut cmd = e.cmd();
        cmd.args(["prune", "--grace", "0h", "--max-unused", "0%"]);
        kill_at_random(cmd, &mut rng, &mut most);
        let o = e.run(&["backup", "--json", src.to_str().unwrap()]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        expect.insert(saved(&o).unwrap(), (src.clone(), digest_tree(&src)));
        prune_json(&e);
        all_good(
            &|a| e.run(a),
            &expect,
            &out,
            &format!("round {round}, killed prune"),
        );
    }
}

// ---- the FUSE layer: power cuts and I/O errors

/// `e`'s repository moved onto a fresh [`testfs::TestFs`] mounted in `e`'s directory.
fn on_testfs(e: &mut Env) -> Option<testfs::TestFs> {
    let mnt = e.path("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let t = testfs::TestFs::mount(&mnt);
    if !common::require(
        t.is_ok(),
        &format!("cannot mount the test FUSE file system: {:?}", t.as_ref().err()),
    ) {
        return None;
    }
    e.repo = mnt.join("repo");
    t.ok()
}

/// A power cut at a random moment of backup, prune and `repair packs` (each killed with -9 at a
/// random moment, then everything not fsynced is lost): the repository checks clean with
/// `--read-data` and every snapshot a run reported saved restores — a run that reported
/// success must have made its work durable.
#[test]
fn power_cuts_during_backup_prune_and_repair() {
    let mut rng = rng("power");
    let mut e = Env::new();
    let Some(t) = on_testfs(&mut e) else { return };
    e.ok(&["init", "--pack-size", "1"]);
    // what init reported done is durable
    t.power_cut();
    e.ok(&["check"]);
    let src = e.path("src");
    let out = e.path("out");
    let mut expect: BTreeMap<String, (PathBuf, Digest)> = BTreeMap::new();
    let mut most = [Duration::from_millis(1500); 3];
    let mut lost = (0, 0);
    let mut killed = [0u32; 3];
    let mut cut = |t: &testfs::TestFs| {
        let (f, n) = t.power_cut();
        lost.0 += f;
        lost.1 += n;
    };
    for round in 0..rounds() {
        change_source(&src, &mut rng);
        let digest = digest_tree(&src);
        let mut cmd = e.cmd();
        cmd.args(["backup", "--json", src.to_str().unwrap()]);
        let (k, o) = kill_at_random(cmd, &mut rng, &mut most[0]);
        killed[0] += k as u32;
        if let Some(id) = saved(&o) {
            expect.insert(id, (src.clone(), digest.clone()));
        }
        // the cut right after the kill, or only after the next backup (which may count on
        // what the killed one left: a pack it renamed into place but never made durable)
        if rng.below(2) == 0 {
            cut(&t);
            all_good(&|a| e.run(a), &expect, &out, &format!("round {round}, backup"));
        }
        // one that runs to its end, so that forget has something to remove; then a cut
        let o = e.run(&["backup", "--json", src.to_str().unwrap()]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        expect.insert(saved(&o).unwrap(), (src.clone(), digest));
        cut(&t);
        all_good(
            &|a| e.run(a),
            &expect,
            &out,
            &format!("round {round}, completed backup"),
        );

        if expect.len() > 3 {
            let list: serde_json::Value = serde_json::from_str(&e.ok(&["snapshots", "--json"])).unwrap();
            let oldest = list[0]["id"].as_str().unwrap().to_string();
            e.ok(&["forget", "-q", &oldest[..16]]);
            expect.remove(&oldest);
            t.sync_all();
        }
        let mut cmd = e.cmd();
        cmd.args(["prune", "--grace", "0h", "--max-unused", "0%"]);
        killed[1] += kill_at_random(cmd, &mut rng, &mut most[1]).0 as u32;
        cut(&t);
        all_good(&|a| e.run(a), &expect, &out, &format!("round {round}, prune"));
        // and one run to its end, then a cut: what it did is durable
        prune_json(&e);
        cut(&t);
        all_good(
            &|a| e.run(a),
            &expect,
            &out,
            &format!("round {round}, completed prune"),
        );

        // a damaged pack (the damage durable), its repair cut, then a repair run to its end
        // and a cut right after: what it reported repaired stays repaired
        flip_a_pack(&e.repo, &mut rng, 0x40);
        t.sync_all();
        let mut cmd = e.cmd();
        cmd.args(["repair", "packs"]);
        killed[2] += kill_at_random(cmd, &mut rng, &mut most[2]).0 as u32;
        cut(&t);
        e.ok(&["repair", "packs", "-q"]);
        cut(&t);
        all_good(&|a| e.run(a), &expect, &out, &format!("round {round}, repair"));
    }
    println!(
        "power cuts: killed mid-way: backup {}, prune {}, repair {} of {} rounds each; \
         {} files lost unsynced data, {} names were not durable",
        killed[0],
        killed[1],
        killed[2],
        rounds(),
        lost.0,
        lost.1,
    );
    assert!(
        killed.iter().sum::<u32>() > 0 && lost.0 + lost.1 > 0,
        "no run was cut mid-way, or no cut lost anything: the test proved nothing"
    );
}

/// I/O errors (EIO) under the repository, the source and the restore target: one clear error,
/// nothing incomplete committed, the repository checks clean, and the same run succeeds once
/// the device is healthy again.
#[test]
fn io_errors_under_the_repository_the_source_and_the_restore_target() {
    let mut rng = rng("eio");
    let mut e = Env::new();
    let Some(t) = on_testfs(&mut e) else { return };
    e.ok(&["init", "--pack-size", "1"]);
    let src = e.path("src");
    let out = e.path("out");
    let mut expect: BTreeMap<String, (PathBuf, Digest)> = BTreeMap::new();
    let mut fired = 0;
    for round in 0..rounds() {
        change_source(&src, &mut rng);
        let digest = digest_tree(&src);
        let before = e.ok(&["snapshots", "--json"]);
        // the repository: a write, or an fsync, of a pack fails
        let op = if rng.below(2) == 0 {
            testfs::Op::Write
        } else {
            testfs::Op::Fsync
        };
        let failures = t.failures();
        // (every write from then on: a failed write(2) that moved some bytes returns a short
        // count, and the rest is written again)
        t.fail(op, "/repo/data/", libc::EIO, rng.below(4), u64::MAX);
        let o = e.run(&["backup", "--json", src.to_str().unwrap()]);
        t.heal();
        // (a backup whose write or fsync failed never reports a snapshot)
        if t.failures() > failures {
            fired += 1;
            assert!(
                saved(&o).is_none(),
                "round {round}: saved despite {op:?} EIO: {}",
                stderr(&o)
            );
            assert_eq!(code(&o), 1, "round {round}: {op:?} EIO: exit 1: {}", stderr(&o));
            assert!(
                stderr(&o).contains("Input/output error"),
                "round {round}: {op:?} EIO said: {}",
                stderr(&o)
            );
            assert_eq!(
                e.ok(&["snapshots", "--json"]),
                before,
                "round {round}: nothing committed"
            );
        }
        all_good(
            &|a| e.run(a),
            &expect,
            &out,
            &format!("round {round}, {op:?} EIO under the repository"),
        );
        let o = e.run(&["backup", "--json", src.to_str().unwrap()]);
        assert_eq!(code(&o), 0, "round {round}: healthy again: {}", stderr(&o));
        let id = saved(&o).unwrap();
        expect.insert(id.clone(), (src.clone(), digest.clone()));

        // the repository: one read of a pack fails while restoring; it is read again, shard
        // by shard, and the restore is whole
        let failures = t.failures();
        t.fail(testfs::Op::Read, "/repo/data/", libc::EIO, rng.below(3), 1);
        let _ = fs::remove_dir_all(&out);
        let o = e.run(&["restore", &id[..16], "--target", out.to_str().unwrap()]);
        t.heal();
        assert!(t.failures() > failures, "round {round}: the read EIO fired");
        assert_eq!(
            code(&o),
            0,
            "round {round}: a read EIO is survived: {}",
            stderr(&o)
        );
        assert_eq!(
            digest_tree(&out.join(src.strip_prefix("/").unwrap())),
            digest,
            "round {round}: restored through a read EIO"
        );

        // the restore target: writes fail from some point on
        let target = t.mountpoint.join("target");
        let _ = fs::remove_dir_all(&target);
        t.fail(testfs::Op::Write, "/target/", libc::EIO, rng.below(8), u64::MAX);
        let o = e.run(&["restore", &id[..16], "--target", target.to_str().unwrap()]);
        t.heal();
        assert_eq!(
            code(&o),
            1,
            "round {round}: restore onto a failing disk: {}",
            stderr(&o)
        );
        assert!(
            stderr(&o).contains("Input/output error"),
            "round {round}: the restore says why: {}",
            stderr(&o)
        );
        let _ = fs::remove_dir_all(&target);
        e.ok(&["restore", &id[..16], "--target", target.to_str().unwrap()]);
        assert_eq!(digest_tree(&target.join(src.strip_prefix("/").unwrap())), digest);
        let _ = fs::remove_dir_all(&target);
        keep_newest(&e, &mut expect, 3);
    }
    println!("EIO under the repository hit {fired} of {} backups", rounds());
    assert!(fired > 0, "no fault fired: the test proved nothing");
    // the source: a file that does not read is reported, the rest is saved (exit 3)
    let fsrc = t.mountpoint.join("source");
    fs::create_dir_all(&fsrc).unwrap();
    fs::write(fsrc.join("good"), pseudo_random(1, 100_000)).unwrap();
    fs::write(fsrc.join("bad"), pseudo_random(2, 100_000)).unwrap();
    t.fail(testfs::Op::Read, "/source/bad", libc::EIO, 0, u64::MAX);
    let o = e.run(&["backup", "--json", fsrc.to_str().unwrap()]);
    t.heal();
    assert_eq!(
        code(&o),
        3,
        "a source file that does not read: exit 3: {}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("bad") && stderr(&o).contains("Input/output error"),
        "the backup names the file and the error: {}",
        stderr(&o)
    );
    let id = saved(&o).unwrap();
    let _ = fs::remove_dir_all(&out);
    // (a file that failed to read keeps what was read before the error, flagged: the
    // restore says so rather than passing it off as whole)
    let o = e.run(&["restore", &id[..16], "--target", out.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("bad: was incomplete when backed up"),
        "the restore warns that the file is incomplete: {}",
        stderr(&o)
    );
    let restored = out.join(fsrc.strip_prefix("/").unwrap());
    assert_eq!(
        fs::read(restored.join("good")).unwrap(),
        pseudo_random(1, 100_000)
    );
    e.ok(&["check", "--read-data"]);
}

/// Bit rot: each round one byte flipped in a random stored object — a pack, a parity file, an
/// index file or a snapshot — of a repository of some hundred packs. Every flip is detected
/// by `check --read-data` (a damaged parity file as a warning that names it); every flip in a
/// pack or a parity file is repaired by `repair packs`, in an index file by `repair index`; a
/// flipped snapshot is named (and put back by the test: nothing can rebuild it). Then the
/// repository checks clean and every snapshot restores byte-identical.
#[test]
fn bit_rot_in_random_stored_objects_is_detected_and_repaired() {
    let mut rng = rng("rot");
    let e = Env::new();
    e.ok(&["init", "--pack-size", "1"]);
    let out = e.path("out");
    let mut expect: BTreeMap<String, (PathBuf, Digest)> = BTreeMap::new();
    for i in 0..3 {
        let src = e.path(&format!("src{i}"));
        change_source(&src, &mut rng);
        let id = e.backup_json(&[src.to_str().unwrap()])["snapshot_id"]
            .as_str()
            .unwrap()
            .to_string();
        expect.insert(id, (src.clone(), digest_tree(&src)));
    }
    let files = |dir: &str| -> Vec<PathBuf> {
        let mut v = Vec::new();
        let mut stack = vec![e.repo.join(dir)];
        while let Some(d) = stack.pop() {
            for f in fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = f.path();
                if p.is_dir() {
                    stack.push(p);
                } else if !f.file_name().to_string_lossy().starts_with('.') {
                    v.push(p);
                }
            }
        }
        v.sort();
        v
    };
    let mut detected = BTreeMap::<&str, u32>::new();
    for round in 0..rounds() {
        let kind = match rng.below(10) {
            0..=5 => "data",
            6 => "parity",
            7 | 8 => "index",
            _ => "snapshots",
        };
        let candidates = files(kind);
        let victim = &candidates[rng.below(candidates.len() as u64) as usize];
        let name = victim.file_name().unwrap().to_string_lossy().into_owned();
        let original = fs::read(victim).unwrap();
        let mut b = original.clone();
        let at = rng.below(b.len() as u64) as usize;
        b[at] ^= 1 << rng.below(8);
        fs::write(victim, &b).unwrap();
        let o = e.run(&["check", "--read-data"]);
        let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
        if kind == "parity" {
            assert!(
                said.contains(&name[..8]) && said.contains("parity"),
                "round {round}: a flipped parity file is named: {said}"
            );
        } else {
            assert_eq!(
                code(&o),
                1,
                "round {round}: a flip in {kind}/{name} is detected: {said}"
            );
            assert!(
                said.contains(&name[..8]),
                "round {round}: {kind}/{name} is named: {said}"
            );
        }
        *detected.entry(kind).or_default() += 1;
        match kind {
            "data" | "parity" => {
                e.ok(&["repair", "packs", "-q"]);
            }
            "index" => {
                e.ok(&["repair", "index", "-q"]);
            }
            _ => fs::write(victim, &original).unwrap(),
        }
        if kind == "data" || kind == "parity" {
            assert!(
                fs::read(victim).unwrap() == original,
                "round {round}: {kind}/{name} repaired to its exact bytes"
            );
        }
        all_good(
            &|a| e.run(a),
            &expect,
            &out,
            &format!("round {round}, rot in {kind}"),
        );
    }
    println!("bit rot: flips detected and dealt with per kind: {detected:?}");
}

/// A full disk (the test file system's capacity) under the repository during prune and
/// `repair packs`: one clear line, nothing half done (the repository checks clean, the
/// damaged pack is still the damaged pack, not a partial copy), and the same run succeeds
/// once there is room.
#[test]
fn a_full_disk_under_the_repository_during_prune_and_repair() {
    let mut rng = rng("full-testfs");
    let mut e = Env::new();
    let Some(t) = on_testfs(&mut e) else { return };
    e.ok(&["init", "--pack-size", "1"]);
    let out = e.path("out");
    let mut expect: BTreeMap<String, (PathBuf, Digest)> = BTreeMap::new();
    for round in 0..rounds() {
        keep_newest(&e, &mut expect, 3);
        for _ in 0..2 {
            let src = e.path("src");
            change_source(&src, &mut rng);
            let id = e.backup_json(&[src.to_str().unwrap()])["snapshot_id"]
                .as_str()
                .unwrap()
                .to_string();
            expect.insert(id, (src.clone(), digest_tree(&src)));
        }
        let list: serde_json::Value = serde_json::from_str(&e.ok(&["snapshots", "--json"])).unwrap();
        let oldest = list[0]["id"].as_str().unwrap().to_string();
        e.ok(&["forget", "-q", &oldest[..16]]);
        expect.remove(&oldest);

        // prune on a full disk
        t.set_capacity(Some(t.used() + rng.below(64 << 10)));
        let o = e.run(&["prune", "--grace", "0h", "--max-unused", "0%"]);
        t.set_capacity(None);
        if code(&o) != 0 {
            assert_eq!(code(&o), 1, "round {round}: prune on a full disk: {}", stderr(&o));
            assert!(
                stderr(&o).contains("No space left on device"),
                "round {round}: prune says why: {}",
                stderr(&o)
            );
        }
        all_good(
            &|a| e.run(a),
            &expect,
            &out,
            &format!("round {round}, prune on a full disk"),
        );
        e.ok(&["prune", "-q", "--grace", "0h", "--max-unused", "0%"]);
        all_good(
            &|a| e.run(a),
            &expect,
            &out,
            &format!("round {round}, prune with room"),
        );
        // a pack the full disk left without its parity file (check warns) gets it now
        e.ok(&["repair", "packs", "-q"]);

        // repair on a full disk
        let (victim, b) = flip_a_pack(&e.repo, &mut rng, 0x08);
        t.set_capacity(Some(t.used()));
        let o = e.run(&["repair", "packs"]);
        t.set_capacity(None);
        assert_eq!(
            code(&o),
            1,
            "round {round}: repair on a full disk: {}",
            stderr(&o)
        );
        assert!(
            stderr(&o).contains("No space left on device"),
            "round {round}: repair says why: {}",
            stderr(&o)
        );
        assert_eq!(
            fs::read(victim).unwrap(),
            b,
            "round {round}: the damaged pack is left as it was"
        );
        e.ok(&["repair", "packs", "-q"]);
        all_good(
            &|a| e.run(a),
            &expect,
            &out,
            &format!("round {round}, repair with room"),
        );
    }
}
