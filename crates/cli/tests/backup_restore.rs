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
    if common::require(is_root(), "ownership, a device node and an ACL need root") {
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

/// A damaged pack read through the mount: the file is intact (rebuilt from the pack's parity)
/// and the mount says, once, which pack it read that way.
#[test]
fn a_mount_reads_a_damaged_pack_through_its_parity_and_says_so() {
    assert!(
        is_root() && Path::new("/dev/fuse").exists(),
        "this test mounts with FUSE: it needs root and /dev/fuse"
    );
    let e = Env::init();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    let data = pseudo_random(11, 3 << 20);
    fs::write(src.join("f.bin"), &data).unwrap();
    e.ok(&["backup", "-q", "--host", "web1", src.to_str().unwrap()]);
    // a flipped byte in the middle of the largest pack (the file's data)
    let pack = fs::read_dir(e.repo.join("data"))
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut b = fs::read(&pack).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x20;
    fs::write(&pack, b).unwrap();
    let mnt = e.path("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let mut mount = start_mount(&e, &mnt);
    let inside = mnt.join("latest/web1").join(src.strip_prefix("/").unwrap());
    let read = fs::read(inside.join("f.bin"));
    let again = fs::read(inside.join("f.bin"));
    let pid = rustix::process::Pid::from_child(&mount);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = mount.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        read.unwrap() == data && again.unwrap() == data,
        "the file reads intact"
    );
    let log = fs::read_to_string(mnt.with_extension("log")).unwrap();
    let name = pack.file_name().unwrap().to_string_lossy().into_owned();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("read through its parity"))
        .collect();
    assert!(
        said.len() == 1 && said[0].contains(&name[..8]) && said[0].contains("coffer repair packs"),
        "one warning naming the pack: {log}"
    );
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

/// A loop device over a file, detached (and unmounted, if mounted) when dropped.
struct Loop {
    dev: String,
    mnt: Option<std::path::PathBuf>,
}

impl Loop {
    fn over(file: &Path) -> Loop {
        let o = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Loop {
            dev: String::from_utf8_lossy(&o.stdout).trim().to_string(),
            mnt: None,
        }
    }

    fn mount(&mut self, at: &Path, opts: &str) {
        fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-o", opts, &self.dev])
            .arg(at)
            .status()
            .unwrap();
        assert!(ok.success(), "mount {}", self.dev);
        self.mnt = Some(at.to_path_buf());
    }

    fn umount(&mut self) {
        if let Some(m) = self.mnt.take() {
            assert!(Command::new("umount").arg(&m).status().unwrap().success());
        }
    }

    fn hash(&self, len: u64) -> String {
        self.hash_at(0, len)
    }

    fn hash_at(&self, at: u64, len: u64) -> String {
        let mut f = File::open(&self.dev).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(at)).unwrap();
        let mut h = blake3::Hasher::new();
        std::io::copy(&mut std::io::Read::take(&mut f, len), &mut h).unwrap();
        h.finalize().to_hex().to_string()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Some(m) = self.mnt.take() {
            let _ = Command::new("umount").arg(&m).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// `backup --device`: an ext4 file system on a loop device is stored as an image (its empty
/// space once), a second run after a change adds about what changed, and `restore --device`
/// writes it onto another device full of garbage so that fsck passes, the files match and the
/// image's bytes are the source's. A mounted, too small or non-device target is refused and
/// left untouched. `--stdin NAME` stores a stream that `dump` gives back (issue 25 item 4).
#[test]
fn a_block_device_is_imaged_and_written_back() {
    assert!(is_root(), "this test uses loop devices: it needs root");
    let e = Env::init();
    let size: u64 = 96 << 20;
    let a_file = e.path("a.img");
    File::create(&a_file).unwrap().set_len(size).unwrap();
    let mut a = Loop::over(&a_file);
    let mkfs = Command::new("mkfs.ext4").args(["-q", &a.dev]).status().unwrap();
    assert!(mkfs.success());
    let mnt = e.path("mnt-a");
    a.mount(&mnt, "rw");
    fs::write(mnt.join("big"), pseudo_random(1, 8 << 20)).unwrap();
    for i in 0..50 {
        fs::write(mnt.join(format!("small{i}")), format!("file {i}\n")).unwrap();
    }
    // mounted read-write: stored, with a warning in its record
    let j = e.backup_json(&["--device", &a.dev]);
    let img = &j["images"][0];
    assert_eq!(img["size"], size, "{j}");
    assert!(
        img["warnings"][0]
            .as_str()
            .unwrap_or("")
            .contains("mounted read-write"),
        "{j}"
    );
    a.umount();
    let j = e.backup_json(&["--device", &a.dev]);
    let img = j["images"][0].clone();
    let name = img["path"].as_str().unwrap().to_string();
    assert!(img["warnings"].is_null(), "{j}");
    // the empty space is one chunk, neither stored again nor counted as new
    let zeros = img["zero_bytes"].as_u64().unwrap();
    assert!(zeros > 60 << 20, "{j}");
    assert!(j["bytes_new"].as_u64().unwrap() < size - zeros + (2 << 20), "{j}");
    // a change of 1 MiB and a new file of 2 MiB: the next run adds about that
    a.mount(&mnt, "rw");
    // (in place: a rewritten file would move to other blocks, and its old ones keep the old
    // data, so twice its size would be new to the image)
    let big = fs::OpenOptions::new().write(true).open(mnt.join("big")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&big, &pseudo_random(2, 1 << 20), 3 << 20).unwrap();
    drop(big);
    fs::write(mnt.join("new"), pseudo_random(3, 2 << 20)).unwrap();
    fs::remove_file(mnt.join("small7")).unwrap();
    a.umount();
    let want = a.hash(size);
    let j = e.backup_json(&["--device", &a.dev]);
    // (stored: a chunk of zeros with one changed metadata block is new, but compresses to
    // next to nothing)
    let added = j["bytes_stored"].as_u64().unwrap();
    assert!(
        (3 << 20..6 << 20).contains(&added),
        "the second run stored {added} bytes for 3 MiB changed: {j}"
    );

    // a device full of garbage, larger than the image
    let b_file = e.path("b.img");
    fs::write(&b_file, pseudo_random(4, (size + (16 << 20)) as usize)).unwrap();
    let mut b = Loop::over(&b_file);
    let garbage = b.hash(size + (16 << 20));
    let tail = b.hash_at(size, 16 << 20);
    let o = e.run(&["restore", "latest", "--device", &b.dev, "--dry-run"]);
    assert_eq!(common::code(&o), 0, "{}", common::stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("would write"));
    assert_eq!(b.hash(size + (16 << 20)), garbage, "a dry run wrote");
    let out = e.ok(&["restore", &format!("latest:{name}"), "--device", &b.dev]);
    assert!(out.contains("zeroed"), "{out}");
    assert_eq!(b.hash(size), want, "the device holds other bytes than the image");
    assert_eq!(
        b.hash_at(size, 16 << 20),
        tail,
        "bytes past the image were written"
    );
    let fsck = Command::new("e2fsck").args(["-fn", &b.dev]).output().unwrap();
    assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));
    a.mount(&e.path("ro-a"), "ro");
    b.mount(&e.path("ro-b"), "ro");
    assert_eq!(
        common::digest_tree(&e.path("ro-a")),
        common::digest_tree(&e.path("ro-b"))
    );
    assert!(e.path("ro-b").join("new").exists() && !e.path("ro-b").join("small7").exists());

    // refused, and nothing written: a mounted device, one too small, a file
    let o = e.run(&["restore", "latest", "--device", &b.dev]);
    assert_eq!(common::code(&o), 2, "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("mounted"), "{}", common::stderr(&o));
    b.umount();
    let c_file = e.path("c.img");
    fs::write(&c_file, pseudo_random(5, 16 << 20)).unwrap();
    let c = Loop::over(&c_file);
    let before = c.hash(16 << 20);
    let o = e.run(&["restore", "latest", "--device", &c.dev]);
    assert_eq!(common::code(&o), 2, "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("smaller than the image"));
    assert_eq!(c.hash(16 << 20), before);
    let o = e.run(&["restore", "latest", "--device", c_file.to_str().unwrap()]);
    assert_eq!(common::code(&o), 2, "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("not a block device"));
    let o = e.run(&["backup", "--device", c_file.to_str().unwrap()]);
    assert_eq!(common::code(&o), 2, "{}", common::stderr(&o));

    // restored into a directory, the image is a sparse file with the same bytes
    let t = e.path("t");
    e.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    let restored = t.join(name.trim_start_matches('/'));
    assert_eq!(
        blake3::hash(&fs::read(&restored).unwrap()).to_hex().to_string(),
        want
    );
    use std::os::unix::fs::MetadataExt;
    assert!(
        fs::metadata(&restored).unwrap().blocks() * 512 < size / 2,
        "not sparse"
    );

    // --stdin NAME: a stream, given back by dump
    let data = pseudo_random(6, 3 << 20);
    let mut child = e
        .cmd()
        .args(["backup", "-q", "--stdin", "db.dump"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &data).unwrap();
    assert!(child.wait().unwrap().success());
    let o = e
        .cmd()
        .args(["dump", "latest", "/.images/db.dump"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(o.stdout == data, "dump gave other bytes");
    let o = e.run(&["backup", "--stdin", "a/b"]);
    assert_eq!(common::code(&o), 2, "{}", common::stderr(&o));
    e.ok(&["check", "--read-data"]);
}
