//! Black-box tests of commands, exit codes and bad input.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::Command;

use common::{code, digest_tree, stderr, Env};

/// An error is one line on stderr that names what failed.
fn assert_one_line_error(o: &std::process::Output, expect_code: i32, mentions: &str) {
    let err = stderr(o);
    assert_eq!(code(o), expect_code, "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(
        err.contains(mentions),
        "error {err:?} does not mention {mentions:?}"
    );
}

fn small_src(e: &Env) -> String {
    let src = e.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/file.txt"), "some content\n".repeat(100)).unwrap();
    fs::write(src.join("top.txt"), "top").unwrap();
    src.to_string_lossy().into_owned()
}

#[test]
fn missing_repository_is_exit_10() {
    let e = Env::new();
    let o = e.run(&["snapshots"]);
    assert_one_line_error(&o, 10, &e.repo.display().to_string());
    assert!(!e.repo.exists(), "opening created something");
    // a plain directory that is not a repository
    fs::create_dir_all(&e.repo).unwrap();
    assert_eq!(code(&e.run(&["snapshots"])), 10);
}

#[test]
fn wrong_password_is_exit_12_and_writes_nothing() {
    let e = Env::init();
    let src = small_src(&e);
    e.ok(&["backup", "-q", &src]);
    let before = digest_tree(&e.repo);
    fs::write(&e.pwfile, "not the password\n").unwrap();
    for args in [
        &["snapshots"][..],
        &["backup", &src],
        &["restore", "latest", "--target", "/tmp/never"],
        &["key", "list"],
    ] {
        let o = e.run(args);
        assert_one_line_error(&o, 12, "wrong password");
    }
    assert_eq!(before, digest_tree(&e.repo));
    assert!(!std::path::Path::new("/tmp/never").exists());
}

#[test]
fn unknown_snapshot_and_bad_usage() {
    let e = Env::init();
    let src = small_src(&e);
    e.ok(&["backup", "-q", &src]);
    let before = digest_tree(&e.repo);
    let o = e.run(&["ls", "deadbeef"]);
    assert_one_line_error(&o, 1, "deadbeef");
    let o = e.run(&["restore", "nothex!", "--target", "/tmp/x"]);
    assert_one_line_error(&o, 1, "nothex!");
    let o = e.run(&["ls", "latest", "/no/such/path"]);
    assert_one_line_error(&o, 1, "/no/such/path");
    let o = e.run(&["backup", "/definitely/not/here"]);
    assert_one_line_error(&o, 2, "/definitely/not/here");
    assert_eq!(code(&e.run(&["backup"])), 2, "usage errors exit 2");
    assert_eq!(code(&e.run(&["frobnicate"])), 2);
    let o = e.run(&["init"]);
    assert_one_line_error(&o, 1, "already exists");
    assert_eq!(
        before,
        digest_tree(&e.repo),
        "a failed command changed the repository"
    );
}

#[test]
fn corrupted_pack_is_named_and_nothing_is_written() {
    let e = Env::init();
    let src = small_src(&e);
    e.ok(&["backup", "-q", &src]);
    // flip one byte in the middle of every pack
    let mut packs = Vec::new();
    for d in fs::read_dir(e.repo.join("data")).unwrap() {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            packs.push(f.unwrap().path());
        }
    }
    assert!(!packs.is_empty());
    for p in &packs {
        let mut b = fs::read(p).unwrap();
        let mid = b.len() / 3;
        b[mid] ^= 0x40;
        fs::set_permissions(p, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(p, b).unwrap();
    }
    // without parity (a repository from before it): one flipped byte is beyond repair
    // (tests/parity.rs has the same damage read through and repaired)
    fs::remove_dir_all(e.repo.join("parity")).unwrap();
    let before = digest_tree(&e.repo);
    let out = e.path("out");
    // restore goes on past damaged items, names each one, and fails at the end
    let o = e.run(&["restore", "latest", "--target", out.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(code(&o), 1, "{err}");
    assert!(
        err.contains("integrity check failed") && err.contains("pack "),
        "{err}"
    );
    assert!(
        err.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("coffer: error: "),
        "{err}"
    );
    assert_eq!(before, digest_tree(&e.repo));
}

#[test]
fn corrupted_snapshot_file_is_a_one_line_error() {
    let e = Env::init();
    let src = small_src(&e);
    e.ok(&["backup", "-q", &src]);
    let snap = fs::read_dir(e.repo.join("snapshots"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut b = fs::read(&snap).unwrap();
    b[10] ^= 1;
    fs::write(&snap, b).unwrap();
    let before = digest_tree(&e.repo);
    let o = e.run(&["snapshots"]);
    let name = snap.file_name().unwrap().to_string_lossy().into_owned();
    assert_one_line_error(&o, 1, &name);
    assert!(stderr(&o).contains("does not match its name"), "{}", stderr(&o));
    assert_eq!(before, digest_tree(&e.repo));
}

#[test]
fn json_listings() {
    let e = Env::init();
    let src = small_src(&e);
    let s = e.backup_json(&["--tag", "web,nightly", "--host", "vps1", &src]);
    let id = s["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 64);
    assert_eq!(s["files_new"], 2);
    let out = e.ok(&["snapshots", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let snap = &v.as_array().unwrap()[0];
    assert_eq!(snap["id"], id.as_str());
    assert_eq!(snap["hostname"], "vps1");
    assert_eq!(snap["paths"][0], src.as_str());
    assert_eq!(snap["tags"], serde_json::json!(["web", "nightly"]));
    assert!(chrono::DateTime::parse_from_rfc3339(snap["time"].as_str().unwrap()).is_ok());
    // filters
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&e.ok(&["snapshots", "--json", "--host", "other"]))
            .unwrap(),
        serde_json::json!([])
    );
    // ls --json: one object per line with a path; prefixes of ids work
    let ls = e.ok(&["ls", "--json", &id[..8]]);
    let paths: Vec<String> = ls
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(paths.contains(&format!("{src}/d/file.txt")), "{paths:?}");
    // cat
    let cfg: serde_json::Value = serde_json::from_str(&e.ok(&["cat", "config"])).unwrap();
    assert_eq!(cfg["version"], 1);
    let tree: serde_json::Value =
        serde_json::from_str(&e.ok(&["cat", "tree", &format!("latest:{src}")])).unwrap();
    assert_eq!(tree["nodes"].as_array().unwrap().len(), 2);
    let st: serde_json::Value = serde_json::from_str(&e.ok(&["stats", "--json"])).unwrap();
    assert_eq!(st["snapshots"], 1);
    assert_eq!(st["snapshot_files"], 2);
}

#[test]
fn diff_and_ls_show_changes() {
    let e = Env::init();
    let src = small_src(&e);
    let a = e.backup_json(&[&src])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    fs::write(format!("{src}/d/file.txt"), "changed").unwrap();
    fs::write(format!("{src}/new.txt"), "new").unwrap();
    fs::remove_file(format!("{src}/top.txt")).unwrap();
    let b = e.backup_json(&[&src])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = e.ok(&["diff", &a, &b]);
    assert!(out.contains(&format!("M    {src}/d/file.txt")), "{out}");
    assert!(out.contains(&format!("+    {src}/new.txt")), "{out}");
    assert!(out.contains(&format!("-    {src}/top.txt")), "{out}");
    let long = e.ok(&["ls", "-l", "latest", &src]);
    assert!(
        long.lines()
            .any(|l| l.starts_with("-rw") && l.ends_with("/new.txt")),
        "{long}"
    );
}

#[test]
fn keys_via_cli() {
    let e = Env::init();
    let newpw = e.path("newpw");
    fs::write(&newpw, "second password\n").unwrap();
    e.ok(&["key", "add", "--new-password-file", newpw.to_str().unwrap()]);
    let keys: serde_json::Value = serde_json::from_str(&e.ok(&["key", "list", "--json"])).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 2);
    let other = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == false)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // the key in use cannot be removed
    let cur = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(code(&e.run(&["key", "remove", &cur[..10]])), 1);
    // open with the second password, then change it
    fs::write(&e.pwfile, "second password\n").unwrap();
    e.ok(&["snapshots"]);
    let third = e.path("third");
    fs::write(&third, "third password\n").unwrap();
    e.ok(&["key", "passwd", "--new-password-file", third.to_str().unwrap()]);
    assert_eq!(code(&e.run(&["snapshots"])), 12);
    fs::write(&e.pwfile, "third password\n").unwrap();
    e.ok(&["key", "remove", &cur]);
    let keys: serde_json::Value = serde_json::from_str(&e.ok(&["key", "list", "--json"])).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_ne!(keys[0]["id"], other.as_str());
}

/// `key generate` writes a new key to a private file, never over an existing one; the file
/// works as a password file from `init` on, its key file says so, and a damaged key is
/// named as damaged.
#[test]
fn generated_key_via_cli() {
    use std::os::unix::fs::PermissionsExt;
    let e = Env::new();
    let key = e.path("repo.key");
    e.ok(&["key", "generate", "-o", key.to_str().unwrap()]);
    assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let text = fs::read_to_string(&key).unwrap();
    assert!(
        text.starts_with("coffer-key-v1:") && text.ends_with('\n'),
        "{text}"
    );
    // never overwritten
    assert_eq!(code(&e.run(&["key", "generate", "-o", key.to_str().unwrap()])), 1);
    assert_eq!(fs::read_to_string(&key).unwrap(), text);
    // printed: another key each time
    let printed = e.ok(&["key", "generate"]);
    assert!(printed.starts_with("coffer-key-v1:") && printed != text);

    fs::copy(&key, &e.pwfile).unwrap();
    let init = e.ok(&["init"]);
    assert!(init.contains("key file"), "{init}");
    let src = e.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    e.ok(&["backup", src.to_str().unwrap()]);
    let keys: serde_json::Value = serde_json::from_str(&e.ok(&["key", "list", "--json"])).unwrap();
    assert_eq!(keys[0]["unlock"], "generated key");

    // a passphrase slot beside it; each opens the repository
    let pass = e.path("pass");
    fs::write(&pass, "a passphrase\n").unwrap();
    e.ok(&["key", "add", "--new-password-file", pass.to_str().unwrap()]);
    let list = e.ok(&["key", "list"]);
    assert!(
        list.contains("passphrase") && list.contains("generated key"),
        "{list}"
    );
    fs::copy(&pass, &e.pwfile).unwrap();
    e.ok(&["snapshots"]);

    // one digit changed: a one-line error that names the checksum, not "wrong password"
    let mut damaged = text.into_bytes();
    damaged[20] = if damaged[20] == b'a' { b'b' } else { b'a' };
    fs::write(&e.pwfile, &damaged).unwrap();
    let o = e.run(&["snapshots"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("checksum"), "{}", stderr(&o));
}

#[test]
fn password_sources() {
    let e = Env::init();
    // COFFER_PASSWORD and a file both: one would silently win; refused, naming both
    let o = e
        .cmd()
        .args(["snapshots"])
        .env("COFFER_PASSWORD", "nope")
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "COFFER_PASSWORD and the password file");
    let o = e
        .cmd()
        .env_remove("COFFER_PASSWORD_FILE")
        .args(["snapshots"])
        .env("COFFER_PASSWORD", "nope")
        .output()
        .unwrap();
    assert_eq!(code(&o), 12, "a wrong password is still that");
    // an empty password is said to be empty, not wrong
    let o = e
        .cmd()
        .env_remove("COFFER_PASSWORD_FILE")
        .env("COFFER_PASSWORD", "")
        .args(["snapshots"])
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "empty password from COFFER_PASSWORD");
    let empty = e.path("empty-pw");
    fs::write(&empty, "\n").unwrap();
    let o = e
        .cmd()
        .env("COFFER_PASSWORD_FILE", &empty)
        .args(["snapshots"])
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "empty password from the password file");
    // init with an empty password leaves nothing behind
    let fresh = e.path("fresh");
    let o = e
        .cmd()
        .env("COFFER_PASSWORD_FILE", &empty)
        .args(["-r", fresh.to_str().unwrap(), "init"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        !fresh.exists(),
        "init with an empty password created {}",
        fresh.display()
    );
    // key add without a new password names where one comes from
    let o = e.cmd().args(["key", "add"]).output().unwrap();
    assert_one_line_error(&o, 1, "COFFER_NEW_PASSWORD or --new-password-file");
    // --password-command
    let o = e
        .cmd()
        .env_remove("COFFER_PASSWORD_FILE")
        .args([
            "snapshots",
            "--password-command",
            "echo correct horse battery staple",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // no source and no terminal: a clear error
    let o = e
        .cmd()
        .env_remove("COFFER_PASSWORD_FILE")
        .args(["snapshots"])
        .output()
        .unwrap();
    assert_one_line_error(&o, 1, "no password given");
}

#[test]
fn existing_symlink_in_target_is_not_followed() {
    let e = Env::init();
    let src = e.path("src");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/passwd"), "from backup").unwrap();
    e.ok(&["backup", "-q", src.to_str().unwrap()]);
    // the target already holds symlinks pointing outside it, at the places restore writes to
    let outside = e.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("passwd"), "precious").unwrap();
    let target = e.path("target");
    fs::create_dir_all(&target).unwrap();
    symlink(&outside, target.join("etcdir")).unwrap();
    let restore_root = target.clone();
    fs::create_dir_all(restore_root.join("x")).unwrap();
    symlink(&outside, restore_root.join("x/etc")).unwrap(); // a directory path that is a symlink
    symlink(outside.join("passwd"), restore_root.join("passwd")).unwrap(); // a file path that is a symlink
    let before = digest_tree(&outside);
    e.ok(&[
        "restore",
        &format!("latest:{}/etc", src.display()),
        "--target",
        restore_root.to_str().unwrap(),
    ]);
    let mut args = vec!["restore".to_string(), "latest".into(), "--target".into()];
    let t2 = e.path("t2");
    fs::create_dir_all(t2.join(src.strip_prefix("/").unwrap())).unwrap();
    symlink(&outside, t2.join(src.strip_prefix("/").unwrap()).join("etc")).unwrap();
    args.push(t2.to_string_lossy().into_owned());
    e.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(before, digest_tree(&outside), "restore wrote through a symlink");
    assert_eq!(
        fs::read_to_string(restore_root.join("passwd")).unwrap(),
        "from backup"
    );
    assert!(!fs::symlink_metadata(restore_root.join("passwd"))
        .unwrap()
        .file_type()
        .is_symlink());
    let etc = t2.join(src.strip_prefix("/").unwrap()).join("etc");
    assert!(fs::symlink_metadata(&etc).unwrap().is_dir());
    assert_eq!(fs::read_to_string(etc.join("passwd")).unwrap(), "from backup");
}

#[test]
fn unreadable_file_gives_exit_3_and_a_snapshot() {
    // As root every file is readable, so run coffer as `nobody` through setpriv.
    if !common::require(
        rustix::process::geteuid().is_root(),
        "needs root to switch to an unprivileged user",
    ) {
        return;
    }
    let e = Env::new();
    let base = e.dir.path();
    fs::set_permissions(base, fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(&e.pwfile, fs::Permissions::from_mode(0o644)).unwrap();
    let src = base.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("ok.txt"), "readable").unwrap();
    fs::write(src.join("secret.txt"), "unreadable").unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(src.join("ok.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(src.join("secret.txt"), fs::Permissions::from_mode(0o000)).unwrap();
    let run = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(common::world_executable_coffer(base))
            .args(args)
            .env("COFFER_REPOSITORY", &e.repo)
            .env("COFFER_PASSWORD_FILE", &e.pwfile)
            .env("HOME", base)
            .current_dir(base);
        c.output().unwrap()
    };
    assert_eq!(code(&run(&["init", "-q"])), 0);
    let o = run(&["backup", "--json", src.to_str().unwrap()]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("secret.txt"), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert_eq!(v["errors"], 1);
    let out = base.join("out");
    let o = run(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = out.join(src.strip_prefix("/").unwrap());
    assert_eq!(fs::read_to_string(r.join("ok.txt")).unwrap(), "readable");
    assert!(!r.join("secret.txt").exists());
}

#[test]
fn excludes_and_caches() {
    let e = Env::init();
    let src = e.path("src");
    fs::create_dir_all(src.join("cache")).unwrap();
    fs::create_dir_all(src.join("keep")).unwrap();
    fs::write(
        src.join("cache/CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n",
    )
    .unwrap();
    fs::write(src.join("cache/blob"), "cached").unwrap();
    fs::write(src.join("keep/a.log"), "log").unwrap();
    fs::write(src.join("keep/a.txt"), "txt").unwrap();
    let ex = e.path("excludes");
    fs::write(&ex, "# comment\n\n*.log\n").unwrap();
    e.ok(&[
        "backup",
        "-q",
        "--exclude-caches",
        "--exclude-file",
        ex.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    let ls = e.ok(&["ls", "latest"]);
    let s = src.display();
    assert!(ls.contains(&format!("{s}/keep/a.txt")));
    assert!(!ls.contains("a.log"), "{ls}");
    assert!(ls.contains(&format!("{s}/cache/CACHEDIR.TAG")));
    assert!(!ls.contains("cache/blob"), "{ls}");
}

#[test]
fn compression_choices_round_trip() {
    for (init, run) in [
        ("lz4", None),
        ("zstd:19", Some("none")),
        ("zlib", Some("lzma:6")),
        ("none", Some("zstd")),
    ] {
        let e = Env::new();
        e.ok(&["init", "--compression", init]);
        let src = small_src(&e);
        fs::write(format!("{src}/big.txt"), "compressible line\n".repeat(100_000)).unwrap();
        let mut args = vec!["backup", "-q"];
        if let Some(c) = run {
            args.extend(["--compression", c]);
        }
        args.push(&src);
        e.ok(&args);
        let out = e.path("out");
        e.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
        let restored = out.join(src.trim_start_matches('/'));
        assert_eq!(
            digest_tree(std::path::Path::new(&src)),
            digest_tree(&restored),
            "{init} / {run:?}"
        );
        let st: serde_json::Value = serde_json::from_str(&e.ok(&["stats", "--json"])).unwrap();
        let stored = st["stored_bytes"].as_u64().unwrap();
        let compressed = run.map_or(init, |r| r) != "none";
        assert_eq!(
            stored < 200_000,
            compressed,
            "{init}/{run:?}: {stored} bytes stored"
        );
    }
    let e = Env::new();
    let o = e.run(&["init", "--compression", "zstd:99"]);
    assert_one_line_error(&o, 2, "level 99");
    assert!(!e.repo.exists());
    let o = e.run(&["init", "--compression", "brotli"]);
    assert_one_line_error(&o, 2, "brotli");
}

#[test]
fn one_file_system_stops_at_mount_points() {
    let e = Env::init();
    let src = e.path("src");
    let mnt = src.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    fs::write(src.join("here.txt"), "same fs").unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "coffer-test", mnt.to_str().unwrap()])
        .status();
    if !common::require(
        mounted.is_ok_and(|s| s.success()),
        "cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)",
    ) {
        return;
    }
    fs::write(mnt.join("other.txt"), "other fs").unwrap();
    let r1 = e.run(&["backup", "-q", "--one-file-system", src.to_str().unwrap()]);
    let r2 = e.run(&["backup", "-q", src.to_str().unwrap()]);
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(code(&r1), 0, "{}", stderr(&r1));
    assert_eq!(code(&r2), 0, "{}", stderr(&r2));
    let snaps: serde_json::Value = serde_json::from_str(&e.ok(&["snapshots", "--json"])).unwrap();
    let first = snaps[0]["id"].as_str().unwrap().to_string();
    let second = snaps[1]["id"].as_str().unwrap().to_string();
    let l1 = e.ok(&["ls", &first]);
    let l2 = e.ok(&["ls", &second]);
    // the mount point itself is kept (as an empty directory), its contents are not
    assert!(l1.contains("/mnt\n") && !l1.contains("other.txt"), "{l1}");
    assert!(l1.contains("here.txt"));
    assert!(l2.contains("other.txt"), "{l2}");
}

/// A mistyped URL is refused with the forms that work (exit 2), instead of becoming a local
/// directory named `ftp:` or `https` beside the user (issue 23 item 5).
#[test]
fn a_location_that_looks_like_a_url_but_is_none_is_refused() {
    let e = Env::new();
    for bad in [
        "ftp://x/y",
        "https//backup.example.net:8443/web1",
        "http://127.0.0.1:1/r",
    ] {
        let o = e
            .cmd()
            .current_dir(e.path(""))
            .args(["-r", bad, "init"])
            .output()
            .unwrap();
        assert_eq!(code(&o), 2, "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("sftp:[USER@]HOST:/PATH"), "{}", stderr(&o));
    }
    let left: Vec<_> = fs::read_dir(e.path(""))
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .collect();
    assert!(
        left.iter().all(|n| n != "ftp:" && n != "https" && n != "http:"),
        "a directory was created: {left:?}"
    );
    // a directory whose name has a colon is still reachable, written as a path
    let o = e
        .cmd()
        .current_dir(e.path(""))
        .args(["-r", "./backup:2026", "init"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(e.path("backup:2026/config").is_file());
}

/// `latest` is the newest snapshot of any host and paths unless --host/--path/--tag say
/// which: two hosts and two jobs in one repository, and each command that reads a snapshot
/// picks the right one (issue 23 item 2).
#[test]
fn latest_is_chosen_by_host_path_and_tag() {
    let e = Env::init();
    let www = e.path("www");
    let etc = e.path("etc");
    fs::create_dir_all(&www).unwrap();
    fs::create_dir_all(&etc).unwrap();
    fs::write(www.join("index.html"), "web1 site").unwrap();
    fs::write(etc.join("hosts"), "web1 hosts").unwrap();
    let (www_s, etc_s) = (www.to_str().unwrap(), etc.to_str().unwrap());
    e.ok(&["backup", "-q", "--host", "web1", "--tag", "site", www_s]);
    e.ok(&["backup", "-q", "--host", "web1", etc_s]);
    fs::write(www.join("index.html"), "db1 site").unwrap();
    e.ok(&["backup", "-q", "--host", "db1", www_s]);

    let dump = |extra: &[&str]| {
        let file = www.join("index.html");
        let mut args = vec!["dump", "latest", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        e.run(&args)
    };
    // no filter: the newest of any host, and a note that says so
    let o = dump(&[]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "db1 site");
    assert!(
        stderr(&o).contains("newest snapshot of any host"),
        "{}",
        stderr(&o)
    );
    let o = dump(&["--host", "web1", "--path", www_s]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "web1 site");
    assert!(!stderr(&o).contains("note:"), "{}", stderr(&o));
    let o = dump(&["--host", "web1", "--tag", "site"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "web1 site");
    // web1's newest snapshot is the etc job: it has no www file
    let o = dump(&["--host", "web1"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let o = dump(&["--host", "nosuch"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("no snapshot matching"), "{}", stderr(&o));

    let t = e.path("t");
    let out = e.ok(&[
        "restore",
        "latest",
        "--host",
        "web1",
        "--path",
        etc_s,
        "--target",
        t.to_str().unwrap(),
    ]);
    assert!(out.contains(" of web1 "), "{out}");
    assert!(t.join(etc.strip_prefix("/").unwrap()).join("hosts").is_file());
    let ls = e.ok(&["ls", "latest", "--host", "db1"]);
    assert!(ls.contains("index.html") && !ls.contains("hosts"), "{ls}");

    // an id that the filter excludes is a usage error, not a silent choice
    let snaps: serde_json::Value = serde_json::from_str(&e.ok(&["snapshots", "--json"])).unwrap();
    let db1 = snaps[2]["id"].as_str().unwrap().to_string();
    let o = e.run(&["ls", &db1, "--host", "web1"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
}

/// Bad flag values are usage errors, refused while parsing with exit code 2 (issue 23 item 8),
/// and they leave nothing behind.
#[test]
fn bad_flag_values_exit_2() {
    let e = Env::init();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    let s = src.to_str().unwrap();
    let t = e.path("t");
    let t = t.to_str().unwrap();
    let other = e.path("other");
    let o = other.to_str().unwrap();
    for args in [
        vec!["backup", "--exclude", "a[", s],
        vec!["backup", "--compression", "brotli", s],
        vec!["check", "--read-data-subset", "150%"],
        vec!["check", "--read-data-subset", "3/2"],
        vec!["restore", "latest", "--target", t, "--overwrite", "sometimes"],
        vec!["restore", "latest", "--target", t, "--include", "[x"],
        vec!["prune", "--max-unused", "150%"],
        vec!["prune", "--grace", "soon"],
        vec!["forget", "--keep-within", "6m"],
        vec!["forget", "--keep-last", "1", "--group-by", "hosts"],
        vec!["-r", o, "init", "--pack-size", "0"],
        vec![
            "-r",
            o,
            "init",
            "--compression",
            "zstd:19",
            "--compression-level",
            "1",
        ],
        vec![
            "server", "--data", o, "client", "add", "web1", "--repo", "web", "--role", "boss",
        ],
    ] {
        let out = e.run(&args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
    }
    assert!(!other.exists(), "a refused command created {o}");
    assert!(!e.path("t").exists());
}

/// Ctrl-C during a backup: one line that says where things stand, exit code 130, and a
/// repository that checks clean and takes the next backup (issue 23 item 8).
#[test]
fn ctrl_c_says_what_it_left_and_exits_130() {
    let e = Env::init();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    // a large sparse file: seconds of reading (its zeros are neither chunked nor hashed), no disk space
    let big = fs::File::create(src.join("disk.img")).unwrap();
    big.set_len(64 << 30).unwrap();
    let mut child = e
        .cmd()
        .args(["backup", "-q", src.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // wait for the run's lease: the backup is under way (ended early, it never will be); a
    // `.tmp-` file is a lease being written, not one yet
    let leases = || -> Vec<std::ffi::OsString> {
        fs::read_dir(e.repo.join("locks"))
            .map(|d| {
                d.map(|f| f.unwrap().file_name())
                    .filter(|n| !n.to_string_lossy().starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    };
    common::wait_until(
        "the backup's lease",
        || !leases().is_empty(),
        || {
            child
                .try_wait()
                .unwrap()
                .map(|s| format!("the backup ended early ({s})"))
        },
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("interrupted")).count(),
        1,
        "one line: {err}"
    );
    assert!(
        err.contains("a snapshot exists only if the run said it saved one"),
        "{err}"
    );
    // and it took its lease with it: a prune right after is not refused or deferred for the
    // 15 minutes a lease counts (an agent restarted during a prune hit that)
    let left = leases();
    assert!(left.is_empty(), "leases left behind: {left:?}");
    fs::remove_file(src.join("disk.img")).unwrap();
    fs::write(src.join("a.txt"), "after").unwrap();
    e.ok(&["backup", "-q", src.to_str().unwrap()]);
    e.ok(&["check", "--read-data"]);
}

/// Inputs that are probably mistakes get a clear answer (issue 23 item 9).
#[test]
fn probable_mistakes_are_named() {
    let e = Env::init();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "a").unwrap();
    let s = src.to_str().unwrap();
    // a second path that does not exist: nothing saved, and said so
    let missing = e.path("no-such-dir");
    let o = e.run(&["backup", s, missing.to_str().unwrap()]);
    assert_one_line_error(&o, 2, "nothing was backed up");
    assert!(!e.ok(&["snapshots"]).contains(s));
    // excludes that leave nothing: a warning and exit 3
    let o = e.run(&["backup", "-q", "--exclude", "*.txt", s]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("left no file to back up"), "{}", stderr(&o));
    // init into a directory that holds other things, or onto a file
    let busy = e.path("busy");
    fs::create_dir_all(&busy).unwrap();
    fs::write(busy.join("notes.txt"), "mine").unwrap();
    let o = e.run(&["-r", busy.to_str().unwrap(), "init"]);
    assert_one_line_error(&o, 2, "is not empty and holds no repository");
    let o = e.run(&["-r", busy.join("notes.txt").to_str().unwrap(), "init"]);
    assert_one_line_error(&o, 2, "is a file");
    let o = e.run(&["-r", busy.join("notes.txt").to_str().unwrap(), "snapshots"]);
    assert_one_line_error(&o, 2, "is a file, not a repository directory");
    // a restore target that is a file
    let o = e.run(&[
        "restore",
        "latest",
        "--target",
        busy.join("notes.txt").to_str().unwrap(),
    ]);
    assert_one_line_error(&o, 2, "is a file");
    assert_eq!(fs::read_to_string(busy.join("notes.txt")).unwrap(), "mine");
    // forget by one hex digit
    let o = e.run(&["forget", "a"]);
    assert_one_line_error(&o, 2, "at least 4 digits");
}

/// `-v` lists new and changed files as a backup finds them, `-vv` unchanged ones too (issue
/// 23 item 7); without it, nothing per file.
#[test]
fn verbose_backup_lists_files() {
    let e = Env::init();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "a").unwrap();
    fs::write(src.join("b.txt"), "b").unwrap();
    let s = src.to_str().unwrap();
    let out = e.ok(&["backup", "-v", s]);
    assert!(out.contains(&format!("new       {s}/a.txt")), "{out}");
    assert!(out.contains(&format!("new       {s}/b.txt")), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(src.join("b.txt"), "bb").unwrap();
    let out = e.ok(&["backup", "-v", s]);
    assert!(out.contains(&format!("changed   {s}/b.txt")), "{out}");
    assert!(!out.contains("a.txt"), "-v leaves unchanged files out: {out}");
    let out = e.ok(&["backup", "-vv", s]);
    assert!(out.contains(&format!("unchanged {s}/a.txt")), "{out}");
    let out = e.ok(&["backup", s]);
    assert!(!out.contains("a.txt"), "{out}");
}

/// A key file planted for a known write-only password (another repository's keys, named to be
/// tried first) is not opened by a client that has used its own key file before: its backups
/// stay readable by the real full key, and it says nothing is wrong. A client meeting a key
/// file it never used while it knows others warns.
#[test]
fn a_client_sticks_to_the_key_files_it_used_before() {
    let e = Env::init();
    let src = small_src(&e);
    let wo_pw = e.path("wo-pw");
    fs::write(&wo_pw, "write only\n").unwrap();
    e.ok(&[
        "key",
        "add",
        "--write-only",
        "--new-password-file",
        wo_pw.to_str().unwrap(),
    ]);
    let wo = |args: &[&str]| {
        e.cmd()
            .env("COFFER_PASSWORD_FILE", &wo_pw)
            .args(args)
            .output()
            .unwrap()
    };
    let first = wo(&["backup", "-q", &src]);
    assert!(first.status.success(), "{}", stderr(&first));
    // the thief's repository, with a key file of the same password, planted first in order
    let keys = e.path("repo/keys");
    let real_first = fs::read_dir(&keys)
        .unwrap()
        .flatten()
        .map(|f| f.file_name())
        .min()
        .unwrap();
    let other = e.path("other");
    loop {
        let _ = fs::remove_dir_all(&other);
        let o = e
            .cmd()
            .env("COFFER_REPOSITORY", &other)
            .args(["init", "-q"])
            .output()
            .unwrap();
        assert!(o.status.success());
        let o = e
            .cmd()
            .env("COFFER_REPOSITORY", &other)
            .args([
                "key",
                "add",
                "--write-only",
                "--new-password-file",
                wo_pw.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let planted = fs::read_dir(other.join("keys"))
            .unwrap()
            .flatten()
            .filter(|f| f.file_name() < real_first)
            .find(|f| fs::read_to_string(f.path()).unwrap().contains("write-only"));
        if let Some(p) = planted {
            fs::copy(p.path(), keys.join(p.file_name())).unwrap();
            break;
        }
    }
    let second = wo(&["backup", "-q", &src]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(!stderr(&second).contains("warning"), "{}", stderr(&second));
    // the full key reads both snapshots (one sealed to the thief's key would not open)
    let v: serde_json::Value = serde_json::from_str(&e.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    e.ok(&["check", "--read-data"]);
    // a client that has used other key files before, meeting one it never used, warns
    let pins = e.path("cache/keys");
    for f in fs::read_dir(&pins).unwrap().flatten() {
        fs::write(f.path(), format!("{}\n", "ab".repeat(32))).unwrap();
    }
    let third = wo(&["backup", "-q", &src]);
    assert!(
        stderr(&third).contains("has not used before"),
        "{}",
        stderr(&third)
    );
}

/// Rollback detection (issue 26 item 6): storage that hides a host's newest snapshot while
/// older ones remain is named by the next command that lists snapshots, once; the client's
/// own forget of its newest snapshot is not.
#[test]
fn a_hidden_newest_snapshot_is_noticed_and_a_forget_is_not() {
    let e = Env::init();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        fs::write(src.join("f"), format!("version {i}")).unwrap();
        let s = e.backup_json(&[src.to_str().unwrap()]);
        ids.push(s["snapshot_id"].as_str().unwrap().to_string());
    }
    let o = e.run(&["snapshots"]);
    assert!(!stderr(&o).contains("rolled back"), "{}", stderr(&o));
    // the storage goes back to before the third backup
    fs::remove_file(e.repo.join("snapshots").join(&ids[2])).unwrap();
    let o = e.run(&["snapshots"]);
    assert_eq!(code(&o), 0);
    let err = stderr(&o);
    assert!(
        err.contains(&ids[2][..8]) && err.contains("rolled back"),
        "the hidden snapshot is named: {err}"
    );
    // said once
    assert!(!stderr(&e.run(&["snapshots"])).contains("rolled back"));
    // this client forgets its newest on purpose: nothing to say
    e.ok(&["forget", "-q", &ids[1][..12]]);
    let o = e.run(&["restore", "latest", "--target", e.path("out").to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stderr(&o).contains("rolled back"), "{}", stderr(&o));
}
