//! Round trips through the real binary: every file kind, incremental behaviour, dedup.

#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use common::{dir_size, pseudo_random, Env};

fn set_mtime(p: &Path, secs: u64, nanos: u32) {
    let t = UNIX_EPOCH + Duration::new(secs, nanos);
    let f = File::options()
        .write(true)
        .open(p)
        .or_else(|_| File::open(p))
        .unwrap();
    f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A tree with every kind of entry `backup` captures.
fn build_tree(src: &Path) {
    fs::create_dir_all(src.join("etc/conf.d")).unwrap();
    fs::create_dir_all(src.join("var/empty")).unwrap();
    fs::create_dir_all(src.join("tmp")).unwrap();
    fs::write(src.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    fs::write(src.join("etc/conf.d/empty.conf"), "").unwrap();
    fs::write(src.join("var/big.bin"), pseudo_random(7, 5 << 20)).unwrap();
    fs::write(src.join("var/text.log"), "GET /index.html 200\n".repeat(50_000)).unwrap();
    fs::write(
        src.join(OsStr::from_bytes(b"var/caf\xe9-latin1")),
        "non-UTF-8 name",
    )
    .unwrap();
    // symlinks: relative, absolute, dangling
    symlink("hosts", src.join("etc/hosts.link")).unwrap();
    symlink("/etc/passwd", src.join("etc/abs.link")).unwrap();
    symlink("does/not/exist", src.join("var/dangling")).unwrap();
    symlink(OsStr::from_bytes(b"caf\xe9-target"), src.join("var/latin1-link")).unwrap();
    // hardlinks
    fs::write(src.join("var/h1"), "hardlinked content").unwrap();
    fs::hard_link(src.join("var/h1"), src.join("etc/h2")).unwrap();
    // modes: setuid, sticky dir, private file
    fs::write(src.join("etc/suid"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("etc/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(src.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(src.join("var/empty"), fs::Permissions::from_mode(0o2775)).unwrap();
    fs::set_permissions(src.join("etc/hosts"), fs::Permissions::from_mode(0o600)).unwrap();
    // xattrs on a file and a directory
    xattr::set(src.join("etc/hosts"), "user.origin", b"test").unwrap();
    xattr::set(src.join("var"), "user.dir", b"\x00\x01binary").unwrap();
    // a FIFO
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("var/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    if is_root() {
        // ownership, a device node and a POSIX ACL (stored as its xattr)
        std::os::unix::fs::lchown(src.join("etc/hosts"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(src.join("etc/hosts.link"), Some(4321), Some(8765)).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            src.join("var/null"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        // system.posix_acl_access: v2; USER_OBJ rw-, USER 1000 r--, GROUP_OBJ r--, MASK r--, OTHER ---
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 4, 1000),
            (4, 4, u32::MAX),
            (0x10, 4, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        xattr::set(src.join("var/text.log"), "system.posix_acl_access", &acl).unwrap();
    }
    // times with nanoseconds, set last (after all children were created)
    for (p, s) in [
        ("etc/hosts", 1_000_000_000u64),
        ("var/big.bin", 1_500_000_000),
        ("etc/conf.d", 1_600_000_000),
        ("etc", 1_200_000_000),
    ] {
        set_mtime(&src.join(p), s, 123_456_789);
    }
}

fn rsync_diff(src: &Path, dst: &Path) -> String {
    let out = Command::new("rsync")
        .args([
            "-aHAX",
            "--numeric-ids",
            "--checksum",
            "--dry-run",
            "--itemize-changes",
        ])
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .output()
        .expect("rsync is installed (the CI script installs it)");
    assert!(
        out.status.success(),
        "rsync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_file_kind_round_trips() {
    let e = Env::init();
    let src = e.path("src");
    build_tree(&src);
    let s = e.backup_json(&[src.to_str().unwrap()]);
    assert_eq!(s["errors"], 0, "{s}");
    let out = e.path("out");
    e.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    let restored = out.join(src.strip_prefix("/").unwrap());
    let d = rsync_diff(&src, &restored);
    assert!(d.trim().is_empty(), "rsync sees differences:\n{d}");
    // hardlinks came back as links, not copies
    use std::os::unix::fs::MetadataExt;
    let a = fs::metadata(restored.join("var/h1")).unwrap();
    let b = fs::metadata(restored.join("etc/h2")).unwrap();
    assert_eq!(a.ino(), b.ino());
    // nanosecond mtimes
    assert_eq!(
        fs::metadata(restored.join("etc/hosts")).unwrap().mtime_nsec(),
        123_456_789
    );
}

/// `coffer find`: which snapshots hold a name or a path, as JSON lines with their snapshot;
/// a directory without a match is skipped in later snapshots, without changing the answer.
#[test]
fn find_lists_each_snapshot_holding_a_match() {
    let e = Env::init();
    let src = e.path("src");
    build_tree(&src);
    e.ok(&["backup", "-q", src.to_str().unwrap()]);
    e.ok(&["backup", "-q", "--tag", "second", src.to_str().unwrap()]);
    fs::remove_file(src.join("etc/hosts")).unwrap();
    e.ok(&["backup", "-q", src.to_str().unwrap()]);
    let find = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut a = vec!["find", "--json"];
        a.extend_from_slice(args);
        e.ok(&a)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let hosts = find(&["hosts"]);
    assert_eq!(hosts.len(), 2, "in the first two snapshots only: {hosts:?}");
    assert!(hosts
        .iter()
        .all(|h| h["path"].as_str().unwrap().ends_with("/etc/hosts") && h["kind"] == "file"));
    assert_ne!(hosts[0]["snapshot"]["id"], hosts[1]["snapshot"]["id"]);
    // a pattern with / matches whole paths; several patterns add up
    let p = format!("{}/var/*.log", src.display());
    let found = find(&[&p, "h1", "h2"]);
    assert_eq!(found.len(), 9, "text.log, h1 and h2 in each of 3: {found:?}");
    assert_eq!(find(&["--tag", "second", "hosts"]).len(), 1);
    assert!(find(&["--snapshot", "latest", "hosts"]).is_empty());
    assert!(find(&["no-such-name"]).is_empty());
    // the same directory tree at two paths: skipped where nothing matched, searched where a
    // pattern with its path matches
    fs::create_dir_all(src.join("a/conf")).unwrap();
    fs::create_dir_all(src.join("b/conf")).unwrap();
    // (one file linked twice: equal nodes, so equal trees)
    fs::write(src.join("a/conf/x"), "same").unwrap();
    fs::hard_link(src.join("a/conf/x"), src.join("b/conf/x")).unwrap();
    e.ok(&["backup", "-q", src.to_str().unwrap()]);
    let p = format!("{}/b/conf/x", src.display());
    assert_eq!(find(&[&p]).len(), 1, "found below the second copy of the tree");
    let o = e.run(&["find", "["]);
    assert_eq!(o.status.code(), Some(2), "a bad pattern is a usage error");
}

/// `coffer mount MNT`, once its layout is there (its stderr in MNT.log).
fn start_mount(e: &Env, mnt: &Path) -> std::process::Child {
    let log = mnt.with_extension("log");
    let mut mount = e
        .cmd()
        .arg("mount")
        .arg(mnt)
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    common::wait_until(
        "the mount's layout",
        || mnt.join("hosts").exists(),
        || common::exit_report("coffer mount", &mut mount, &log),
    );
    mount
}

/// Unmounting takes away this run's mount and nothing else: a file system that was mounted on
/// the directory before stays, with its files.
#[test]
fn unmounting_leaves_what_was_mounted_below_alone() {
    assert!(
        is_root() && Path::new("/dev/fuse").exists(),
        "this test mounts with FUSE: it needs root and /dev/fuse"
    );
    let e = Env::init();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), "a\n").unwrap();
    e.ok(&["backup", "-q", "--host", "web1", src.to_str().unwrap()]);
    let mnt = e.path("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let tmpfs = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(tmpfs.success());
    fs::write(mnt.join("keep"), "kept").unwrap();
    let mut mount = start_mount(&e, &mnt);
    assert!(!mnt.join("keep").exists(), "the mount covers the directory");
    let pid = rustix::process::Pid::from_child(&mount);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = mount.wait().unwrap();
    let kept = fs::read_to_string(mnt.join("keep"));
    let _ = Command::new("umount").arg(&mnt).status();
    assert!(status.success(), "{status}");
    assert_eq!(kept.unwrap(), "kept", "the tmpfs below is still mounted");
}

/// `coffer mount`: what rsync sees through the mount is the source, every kind of entry, ACLs
/// and hard links included; the layout names each snapshot by host, id, tag and latest; a
/// SIGTERM unmounts. (Root and /dev/fuse, as in CI.)
#[test]
fn a_mounted_snapshot_is_its_source_for_rsync() {
    assert!(
        is_root() && Path::new("/dev/fuse").exists(),
        "this test mounts with FUSE: it needs root and /dev/fuse"
    );
    let e = Env::init();
    let src = e.path("src");
    build_tree(&src);
    e.ok(&["backup", "-q", "--host", "web1", src.to_str().unwrap()]);
    e.ok(&[
        "backup",
        "-q",
        "--host",
        "web1",
        "--tag",
        "nightly",
        src.to_str().unwrap(),
    ]);
    let mnt = e.path("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let mut mount = start_mount(&e, &mnt);
    let latest = mnt.join("latest/web1");
    let ok = std::panic::catch_unwind(|| {
        let inside = latest.join(src.strip_prefix("/").unwrap());
        let d = rsync_diff(&src, &inside);
        assert!(d.trim().is_empty(), "rsync sees differences:\n{d}");
        use std::os::unix::fs::MetadataExt;
        let a = fs::symlink_metadata(inside.join("var/h1")).unwrap();
        let b = fs::symlink_metadata(inside.join("etc/h2")).unwrap();
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "hard links share an inode");
        let names = |p: &str| -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(mnt.join(p))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(""), ["hosts", "latest", "snapshots", "tags"]);
        assert_eq!(names("hosts/web1").len(), 2);
        assert_eq!(names("snapshots").len(), 2);
        assert_eq!(names("tags/nightly/web1").len(), 1);
        // by time (UTC); two in one second: the second one's id tells them apart
        let by_time = names("hosts/web1");
        assert!(
            by_time[0].len() == 20 && by_time[0].ends_with('Z'),
            "named by time: {by_time:?}"
        );
        let newest = by_time[1].clone();
        assert_eq!(
            fs::read_link(&latest).unwrap(),
            Path::new("../hosts/web1").join(&newest)
        );
        // read-only
        assert!(fs::write(inside.join("etc/new"), "x").is_err());
        // a file's bytes, read through it
        assert_eq!(
            fs::read(inside.join("var/big.bin")).unwrap(),
            fs::read(src.join("var/big.bin")).unwrap()
        );
    });
    let pid = rustix::process::Pid::from_child(&mount);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = mount.wait().unwrap();
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    if let Err(p) = ok {
        std::panic::resume_unwind(p);
    }
    assert!(status.success(), "{status}");
    assert!(
        !mounts.contains(mnt.to_str().unwrap()),
        "SIGTERM unmounts: {mounts}"
    );
}

/// The second backup takes unchanged entries' metadata from the parent snapshot; a change
/// of extended attributes alone (content, size and mtime untouched) must still be seen.
#[test]
fn metadata_only_changes_are_seen_by_the_next_backup() {
    let e = Env::init();
    let src = e.path("src");
    build_tree(&src);
    e.ok(&["backup", "-q", src.to_str().unwrap()]);
    xattr::set(src.join("etc/hosts"), "user.origin", b"changed").unwrap();
    xattr::set(src.join("var"), "user.added", b"new").unwrap();
    xattr::remove(src.join("var"), "user.dir").unwrap();
    let s = e.backup_json(&[src.to_str().unwrap()]);
    // the file whose ctime moved is read again (as restic does); nothing else is
    assert_eq!(s["files_changed"], 1, "{s}");
    let out = e.path("out");
    e.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    let restored = out.join(src.strip_prefix("/").unwrap());
    let d = rsync_diff(&src, &restored);
    assert!(d.trim().is_empty(), "rsync sees differences:\n{d}");
    assert_eq!(
        xattr::get(restored.join("etc/hosts"), "user.origin")
            .unwrap()
            .unwrap(),
        b"changed"
    );
    assert!(xattr::get(restored.join("var"), "user.dir").unwrap().is_none());
}

#[test]
fn subpath_restore_filters_and_dry_run() {
    let e = Env::init();
    let src = e.path("src");
    build_tree(&src);
    e.ok(&["backup", "-q", src.to_str().unwrap()]);
    let s = src.to_str().unwrap();
    // SNAPSHOT:PATH puts the directory's contents into the target
    let out = e.path("sub");
    e.ok(&[
        "restore",
        &format!("latest:{s}/etc"),
        "--target",
        out.to_str().unwrap(),
    ]);
    assert_eq!(fs::read_to_string(out.join("conf.d/empty.conf")).unwrap(), "");
    assert!(out.join("hosts").exists() && !out.join("var").exists());
    // --include / --exclude
    let out = e.path("inc");
    e.ok(&[
        "restore",
        "latest",
        "--target",
        out.to_str().unwrap(),
        "--include",
        "*.log",
        "--include",
        &format!("{s}/etc/conf.d"),
    ]);
    let base = out.join(src.strip_prefix("/").unwrap());
    assert!(base.join("var/text.log").exists());
    assert!(base.join("etc/conf.d/empty.conf").exists());
    assert!(!base.join("var/big.bin").exists() && !base.join("etc/hosts").exists());
    assert!(
        !base.join("tmp").exists(),
        "an unselected empty directory was created"
    );
    let out = e.path("exc");
    e.ok(&[
        "restore",
        "latest",
        "--target",
        out.to_str().unwrap(),
        "--exclude",
        "var",
    ]);
    let base = out.join(src.strip_prefix("/").unwrap());
    assert!(base.join("etc/hosts").exists() && !base.join("var").exists());
    // --dry-run writes nothing but reports counts
    let out = e.path("dry");
    let j = e.ok(&[
        "restore",
        "latest",
        "--target",
        out.to_str().unwrap(),
        "--dry-run",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(j.trim()).unwrap();
    assert!(v["files_restored"].as_u64().unwrap() >= 8, "{v}");
    assert!(!out.exists());
}

#[test]
fn incremental_backups_add_little() {
    let e = Env::init();
    let src = e.path("src");
    fs::create_dir_all(src.join("dir/inner")).unwrap();
    let mut big = pseudo_random(1, 24 << 20);
    fs::write(src.join("big.bin"), &big).unwrap();
    for i in 0..50 {
        fs::write(
            src.join(format!("dir/inner/f{i}")),
            pseudo_random(100 + i, 10_000),
        )
        .unwrap();
    }
    let s1 = e.backup_json(&[src.to_str().unwrap()]);
    assert_eq!(s1["files_new"], 51);

    // nothing changed: nothing read, no new data
    let s2 = e.backup_json(&[src.to_str().unwrap()]);
    assert_eq!(s2["files_unchanged"], 51);
    assert_eq!(s2["bytes_read"], 0);
    // only tree blobs can be new: the temp dir's parents (/tmp) change as other tests run
    assert!(s2["bytes_new"].as_u64().unwrap() < 2048, "{s2}");

    // one byte of a 24 MiB file: about one chunk (max chunk 4 MiB) plus trees
    big[12 << 20] ^= 0xff;
    fs::write(src.join("big.bin"), &big).unwrap();
    let s3 = e.backup_json(&[src.to_str().unwrap()]);
    assert_eq!(s3["files_changed"], 1);
    let new = s3["bytes_new"].as_u64().unwrap();
    assert!(
        new > 0 && new <= (4 << 20) + (64 << 10),
        "a 1-byte change added {new} bytes"
    );

    // renaming a directory: only trees are new
    fs::rename(src.join("dir"), src.join("renamed")).unwrap();
    let before = dir_size(&e.repo);
    let s4 = e.backup_json(&[src.to_str().unwrap()]);
    let new = s4["bytes_new"].as_u64().unwrap();
    assert!(new < 16 << 10, "a rename added {new} bytes of new data");
    assert!(dir_size(&e.repo) - before < 64 << 10);
}

#[test]
fn same_gigabyte_twice_grows_repository_by_under_one_percent() {
    let e = Env::init();
    let a = e.path("a");
    fs::create_dir_all(&a).unwrap();
    let data = pseudo_random(42, 1 << 30);
    fs::write(a.join("one.img"), &data).unwrap();
    e.ok(&["backup", "-q", a.to_str().unwrap()]);
    let first = dir_size(&e.repo);
    assert!(first > 1 << 30, "random data should not compress: {first}");
    // the same bytes under another directory and name
    let b = e.path("b/elsewhere");
    fs::create_dir_all(&b).unwrap();
    fs::write(b.join("copy.img"), &data).unwrap();
    drop(data);
    fs::remove_dir_all(&a).unwrap();
    e.ok(&["backup", "-q", b.to_str().unwrap()]);
    let second = dir_size(&e.repo);
    let growth = (second - first) as f64 / first as f64;
    assert!(growth < 0.01, "repository grew by {:.3}%", growth * 100.0);
}
