//! Restore options and exact restores of what a Linux server holds (issue 4).

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use common::{digest_tree, pseudo_random, stderr, Env};

fn set_mtime(p: &Path, t: std::time::SystemTime) {
    let f = fs::File::options().write(true).open(p).unwrap();
    f.set_times(fs::FileTimes::new().set_modified(t)).unwrap();
}

/// A source tree, backed up; returns the env, the source and where it lands under a target.
fn backed_up() -> (Env, PathBuf) {
    let e = Env::init();
    let src = e.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("a.txt"), "alpha\n").unwrap();
    fs::write(src.join("b.txt"), "bravo\n").unwrap();
    fs::write(src.join("d/c.bin"), pseudo_random(3, 200_000)).unwrap();
    set_mtime(
        &src.join("a.txt"),
        UNIX_EPOCH + Duration::from_secs(1_600_000_000),
    );
    set_mtime(
        &src.join("b.txt"),
        UNIX_EPOCH + Duration::from_secs(1_600_000_000),
    );
    e.ok(&["backup", "-q", src.to_str().unwrap()]);
    (e, src)
}

fn restore(e: &Env, target: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "restore",
        "latest",
        "--json",
        "--target",
        target.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(e.ok(&args).trim()).unwrap()
}

#[test]
fn overwrite_modes() {
    let (e, src) = backed_up();
    let t = e.path("t");
    restore(&e, &t, &[]);
    let base = t.join(src.strip_prefix("/").unwrap());
    let prepare = || {
        fs::write(base.join("a.txt"), "local edit\n").unwrap(); // differs, older
        set_mtime(
            &base.join("a.txt"),
            UNIX_EPOCH + Duration::from_secs(1_500_000_000),
        );
        fs::write(base.join("b.txt"), "newer local\n").unwrap(); // differs, newer
        set_mtime(
            &base.join("b.txt"),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        );
        fs::set_permissions(base.join("d/c.bin"), fs::Permissions::from_mode(0o600)).unwrap();
        // same content
    };
    prepare();
    let ino = fs::metadata(base.join("d/c.bin")).unwrap().ino();
    let v = restore(&e, &t, &["--overwrite", "never"]);
    assert_eq!(v["skipped"], 3, "{v}");
    assert_eq!(fs::read_to_string(base.join("a.txt")).unwrap(), "local edit\n");

    let v = restore(&e, &t, &["--overwrite", "if-newer"]);
    assert_eq!(
        fs::read_to_string(base.join("a.txt")).unwrap(),
        "alpha\n",
        "older local file is replaced"
    );
    assert_eq!(
        fs::read_to_string(base.join("b.txt")).unwrap(),
        "newer local\n",
        "newer local file is kept"
    );
    assert!(v["skipped"].as_u64().unwrap() >= 1);

    prepare();
    let v = restore(&e, &t, &["--overwrite", "if-changed"]);
    assert_eq!(fs::read_to_string(base.join("a.txt")).unwrap(), "alpha\n");
    assert_eq!(fs::read_to_string(base.join("b.txt")).unwrap(), "bravo\n");
    // same content: not rewritten (same inode), but the mode is restored
    let m = fs::metadata(base.join("d/c.bin")).unwrap();
    assert_eq!(m.ino(), ino);
    assert_eq!(
        m.mode() & 0o777,
        fs::metadata(src.join("d/c.bin")).unwrap().mode() & 0o777
    );
    assert_eq!(v["skipped"], 1, "{v}");

    prepare();
    restore(&e, &t, &["--overwrite", "always"]);
    assert_eq!(digest_tree(&src), digest_tree(&base));
    let o = e.run(&[
        "restore",
        "latest",
        "--target",
        t.to_str().unwrap(),
        "--overwrite",
        "sometimes",
    ]);
    assert_eq!(o.status.code(), Some(2), "a bad flag value is a usage error");
    assert!(stderr(&o).contains("sometimes"));
}

/// Symlinks follow --overwrite like files: if-changed keeps a link that points where the
/// snapshot's does (not counted as replaced) and replaces one that points elsewhere; never
/// keeps both.
#[test]
fn overwrite_modes_apply_to_symlinks() {
    let e = Env::init();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "alpha\n").unwrap();
    symlink("a.txt", src.join("same")).unwrap();
    symlink("a.txt", src.join("moved")).unwrap();
    e.ok(&["backup", "-q", src.to_str().unwrap()]);
    let t = e.path("t");
    restore(&e, &t, &[]);
    let base = t.join(src.strip_prefix("/").unwrap());
    fs::remove_file(base.join("moved")).unwrap();
    symlink("elsewhere", base.join("moved")).unwrap();
    let ino = fs::symlink_metadata(base.join("same")).unwrap().ino();

    let v = restore(&e, &t, &["--overwrite", "never"]);
    assert_eq!(v["replaced"], 0, "{v}");
    assert_eq!(fs::read_link(base.join("moved")).unwrap(), Path::new("elsewhere"));

    let v = restore(&e, &t, &["--overwrite", "if-changed"]);
    assert_eq!(v["replaced"], 1, "only the link that points elsewhere: {v}");
    assert_eq!(fs::read_link(base.join("moved")).unwrap(), Path::new("a.txt"));
    assert_eq!(
        fs::symlink_metadata(base.join("same")).unwrap().ino(),
        ino,
        "kept"
    );
}

#[test]
fn delete_makes_the_target_match_and_verify_reads_back() {
    let (e, src) = backed_up();
    let t = e.path("t");
    restore(&e, &t, &[]);
    let base = t.join(src.strip_prefix("/").unwrap());
    // extra entries, including a symlink to a directory outside the target
    let outside = e.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("keep"), "must survive").unwrap();
    fs::write(base.join("extra.txt"), "x").unwrap();
    fs::create_dir_all(base.join("d/extra-dir/sub")).unwrap();
    fs::write(base.join("d/extra-dir/sub/f"), "y").unwrap();
    symlink(&outside, base.join("d/link-out")).unwrap();
    let v = restore(&e, &t, &["--delete", "--verify"]);
    // extra.txt, link-out, and extra-dir with sub and f: every entry removed counts
    assert_eq!(v["deleted"], 5, "{v}");
    assert_eq!(v["verified"], 3, "{v}");
    assert_eq!(digest_tree(&src), digest_tree(&base));
    assert_eq!(fs::read_to_string(outside.join("keep")).unwrap(), "must survive");
    let o = e.run(&[
        "restore",
        "latest",
        "--target",
        t.to_str().unwrap(),
        "--delete",
        "--include",
        "*.txt",
    ]);
    assert_eq!(o.status.code(), Some(2), "--delete with filters is refused");
}

/// What `--delete` did before it was scoped (issue 23): restoring a backup of `etc`,
/// `var/www` and `home` over the root it came from deleted `usr` and `var/lib` too. Now it
/// deletes only inside what was backed up, never across a mount point and never beside a
/// single restored file; `--dry-run -v` lists exactly what would go, and writes nothing.
#[test]
fn delete_acts_only_inside_the_backed_up_paths() {
    let e = Env::init();
    let root = e.path("root");
    let r = |p: &str| root.join(p);
    for d in [
        "etc/nginx",
        "var/www/site",
        "home/ann",
        "usr/bin",
        "var/lib/mysql",
    ] {
        fs::create_dir_all(r(d)).unwrap();
    }
    fs::write(r("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    fs::write(r("etc/nginx/nginx.conf"), "worker_processes 2;\n").unwrap();
    fs::write(r("var/www/site/index.html"), "<h1>shop</h1>\n").unwrap();
    fs::write(r("home/ann/notes"), "n\n").unwrap();
    fs::write(r("usr/bin/tool"), "binary").unwrap();
    fs::write(r("var/lib/mysql/ibdata1"), "the database").unwrap();
    fs::write(r("top-level-file"), "outside every backed-up path").unwrap();
    let arg = |p: &str| r(p).to_str().unwrap().to_string();
    e.ok(&["backup", "-q", &arg("etc"), &arg("var/www"), &arg("home")]);

    // what changed on the machine since: stale files inside backed-up paths, an edit
    fs::write(r("etc/stale.conf"), "stale").unwrap();
    fs::create_dir_all(r("var/www/site/old/css")).unwrap();
    fs::write(r("var/www/site/old/css/a.css"), "a").unwrap();
    fs::write(r("etc/hosts"), "edited\n").unwrap();
    let outside_before = digest_tree(&r("usr"));
    let lib_before = digest_tree(&r("var/lib"));

    let spec = format!("latest:{}", root.display());
    let root_s = root.to_str().unwrap();
    let o = e.run(&[
        "restore",
        &spec,
        "--target",
        root_s,
        "--delete",
        "--dry-run",
        "-v",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let mut deletes: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("would delete "))
        .collect();
    deletes.sort();
    let want = [
        arg("etc/stale.conf"),
        arg("var/www/site/old"),
        arg("var/www/site/old/css"),
        arg("var/www/site/old/css/a.css"),
    ];
    assert_eq!(
        deletes,
        want.iter().map(String::as_str).collect::<Vec<_>>(),
        "{out}"
    );
    assert!(
        out.contains(&format!("would replace {}", arg("etc/hosts"))),
        "{out}"
    );
    assert!(
        out.contains("4 entries not in the snapshot would be deleted"),
        "{out}"
    );
    // the dry run wrote nothing
    assert!(r("etc/stale.conf").exists() && r("var/www/site/old/css/a.css").exists());
    assert_eq!(fs::read_to_string(r("etc/hosts")).unwrap(), "edited\n");

    // a filesystem mounted inside a backed-up path is never entered
    let mnt = r("etc/mnt");
    fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs", mnt.to_str().unwrap()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    // (without the mount the rest runs; the mount point's case is then said skipped)
    let mounted = common::require(mounted, "cannot mount a tmpfs here: the mount point case");
    if mounted {
        fs::write(mnt.join("on-another-fs"), "keep").unwrap();
    }

    let o = e.run(&["restore", &spec, "--target", root_s, "--delete", "--verify"]);
    let err = stderr(&o);
    if mounted {
        let _ = Command::new("umount").arg(&mnt).status();
        assert!(err.contains("mount point"), "{err}");
    }
    assert!(o.status.success(), "{err}");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    // --overwrite always (the default) replaces every file that exists: it says how many
    assert!(out.contains("4 existing entries in the target replaced"), "{out}");
    assert!(
        out.contains("4 entries not in the snapshot deleted (--delete)"),
        "{out}"
    );
    assert!(!r("etc/stale.conf").exists() && !r("var/www/site/old").exists());
    assert_eq!(
        fs::read_to_string(r("etc/hosts")).unwrap(),
        "127.0.0.1 localhost\n"
    );
    assert_eq!(
        digest_tree(&r("usr")),
        outside_before,
        "outside the backup: untouched"
    );
    assert_eq!(
        digest_tree(&r("var/lib")),
        lib_before,
        "a sibling of a backed-up path: untouched"
    );
    assert_eq!(
        fs::read_to_string(r("top-level-file")).unwrap(),
        "outside every backed-up path"
    );
    if mounted {
        assert_eq!(
            fs::read_to_string(mnt.join("on-another-fs")).ok(),
            None,
            "unmounted now"
        );
    }

    // the whole snapshot into a target that holds other things: only the backed-up paths'
    // contents are judged
    let t = e.path("t");
    fs::create_dir_all(t.join("unrelated")).unwrap();
    fs::write(t.join("unrelated/f"), "mine").unwrap();
    e.ok(&[
        "restore",
        "latest",
        "--target",
        t.to_str().unwrap(),
        "--delete",
        "-q",
    ]);
    assert_eq!(fs::read_to_string(t.join("unrelated/f")).unwrap(), "mine");

    // one file restored with --delete deletes nothing beside it
    let etc = r("etc");
    fs::write(etc.join("local.conf"), "local").unwrap();
    let one = format!("latest:{}", etc.join("hosts").display());
    e.ok(&[
        "restore",
        &one,
        "--target",
        etc.to_str().unwrap(),
        "--delete",
        "-q",
    ]);
    assert_eq!(fs::read_to_string(etc.join("local.conf")).unwrap(), "local");
}

/// What a backup did not look at is not the snapshot's to delete: a mount point a
/// --one-file-system backup stopped at, what --exclude and --exclude-caches left out; and a
/// target above the restored path (`latest:/home/alice --target /home`) is refused.
#[test]
fn delete_leaves_what_the_backup_did_not_see_and_refuses_a_target_above_the_path() {
    let e = Env::init();
    let src = e.path("src");
    for d in ["alice", "bob", "cache", "mnt"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    fs::write(src.join("alice/notes"), "alice").unwrap();
    fs::write(src.join("bob/notes"), "bob").unwrap();
    fs::write(src.join("work.tmp"), "scratch").unwrap();
    fs::write(
        src.join("cache/CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n",
    )
    .unwrap();
    fs::write(src.join("cache/blob"), "cached").unwrap();
    let mnt = src.join("mnt");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs", mnt.to_str().unwrap()])
        .status()
        .is_ok_and(|s| s.success());
    let mounted = common::require(mounted, "cannot mount a tmpfs here: the mount point case");
    if mounted {
        fs::write(mnt.join("on-another-fs"), "keep").unwrap();
    }
    let s = src.to_str().unwrap();
    let o = e.run(&[
        "backup",
        "-q",
        "--one-file-system",
        "--exclude",
        "*.tmp",
        "--exclude-caches",
        s,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let spec = format!("latest:{s}");
    let o = e.run(&["restore", &spec, "--target", s, "--delete", "--dry-run", "-v"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !out.contains("would delete"),
        "nothing is the snapshot's to delete: {out}"
    );
    let o = e.run(&["restore", &spec, "--target", s, "--delete"]);
    let err = stderr(&o);
    if mounted {
        let _ = Command::new("umount").arg(&mnt).status();
    }
    assert!(o.status.success(), "{err}");
    assert_eq!(fs::read_to_string(src.join("work.tmp")).unwrap(), "scratch");
    assert_eq!(fs::read_to_string(src.join("cache/blob")).unwrap(), "cached");
    if mounted {
        // (unmounted now: what was on it is gone from view; the marker kept it while mounted)
        assert!(!err.contains("cannot delete"), "{err}");
    }

    // alice's directory restored "into" its parent would delete bob
    let alice = format!("latest:{s}/alice");
    let o = e.run(&["restore", &alice, "--target", s, "--delete"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("is above"), "{}", stderr(&o));
    assert_eq!(fs::read_to_string(src.join("bob/notes")).unwrap(), "bob");
    let o = e.run(&["restore", &alice, "--target", &format!("{s}/alice"), "--delete"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A bind mount of a directory of the same filesystem is a mount point too (found by review:
/// `st_dev` does not tell it apart): `--delete` never deletes through it.
#[test]
fn delete_never_deletes_through_a_bind_mount() {
    let e = Env::init();
    let src = e.path("src");
    fs::create_dir_all(src.join("data")).unwrap();
    fs::write(src.join("data/a.txt"), "a").unwrap();
    let s = src.to_str().unwrap();
    e.ok(&["backup", "-q", s]);
    // elsewhere on the same filesystem: precious files, bound into the backed-up tree
    let elsewhere = e.path("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::write(elsewhere.join("precious"), "keep me").unwrap();
    let bound = src.join("data/bound");
    fs::create_dir_all(&bound).unwrap();
    let mounted = Command::new("mount")
        .args(["--bind", elsewhere.to_str().unwrap(), bound.to_str().unwrap()])
        .status()
        .is_ok_and(|s| s.success());
    if !common::require(mounted, "cannot bind-mount here (needs root)") {
        return;
    }
    let o = e.run(&["restore", &format!("latest:{s}"), "--target", s, "--delete"]);
    let _ = Command::new("umount").arg(&bound).status();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("mount point"), "{}", stderr(&o));
    assert_eq!(fs::read_to_string(elsewhere.join("precious")).unwrap(), "keep me");
}

#[test]
fn dump_writes_one_file_to_stdout() {
    let (e, src) = backed_up();
    let o = e.run(&["dump", "latest", &format!("{}/d/c.bin", src.display())]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, pseudo_random(3, 200_000));
    let o = e.run(&["dump", "latest", &format!("{}/d", src.display())]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a file"));
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn sparse_files_links_and_extreme_times_round_trip() {
    let e = Env::init();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    // a sparse file: 64 MiB with 4 KiB of data in the middle
    let f = fs::File::create(src.join("sparse.img")).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&pseudo_random(1, 4096), 32 << 20).unwrap();
    drop(f);
    // a hardlinked symlink, a 255-byte name, timestamps before 1970 and after 2038
    symlink("target-of-link", src.join("sl1")).unwrap();
    fs::hard_link(src.join("sl1"), src.join("sl2")).unwrap();
    let long = "n".repeat(255);
    fs::write(src.join(&long), "long name").unwrap();
    fs::write(src.join("old"), "1960").unwrap();
    set_mtime(&src.join("old"), UNIX_EPOCH - Duration::from_secs(300_000_000));
    fs::write(src.join("future"), "2100").unwrap();
    set_mtime(
        &src.join("future"),
        UNIX_EPOCH + Duration::from_secs(4_102_444_800),
    );
    // a socket is skipped and reported
    let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    let o = e.run(&["backup", src.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("sock: socket skipped"), "{}", stderr(&o));
    let t = e.path("t");
    e.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    let base = t.join(src.strip_prefix("/").unwrap());
    let m = fs::metadata(base.join("sparse.img")).unwrap();
    assert_eq!(m.len(), 64 << 20);
    assert!(
        m.blocks() * 512 < 4 << 20,
        "restored sparse file uses {} bytes on disk",
        m.blocks() * 512
    );
    let a = fs::symlink_metadata(base.join("sl1")).unwrap();
    let b = fs::symlink_metadata(base.join("sl2")).unwrap();
    assert!(
        a.file_type().is_symlink() && a.ino() == b.ino(),
        "hardlinked symlinks came back separate"
    );
    assert_eq!(fs::read_to_string(base.join(&long)).unwrap(), "long name");
    assert_eq!(fs::metadata(base.join("old")).unwrap().mtime(), -300_000_000);
    assert_eq!(fs::metadata(base.join("future")).unwrap().mtime(), 4_102_444_800);
    assert!(!base.join("sock").exists());
    let out = Command::new("rsync")
        .args([
            "-aHAXS",
            "--numeric-ids",
            "--checksum",
            "--dry-run",
            "--itemize-changes",
            "--exclude",
            "sock",
        ])
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", base.display()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "rsync: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn numeric_owner_and_non_root_restores() {
    if !common::require(is_root(), "needs root") {
        return;
    }
    let e = Env::init();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("owned"), "x").unwrap();
    std::os::unix::fs::lchown(src.join("owned"), Some(1234), Some(5678)).unwrap();
    e.ok(&["backup", "-q", src.to_str().unwrap()]);
    let t = e.path("t");
    e.ok(&[
        "restore",
        "latest",
        "--numeric-owner",
        "--target",
        t.to_str().unwrap(),
    ]);
    let m = fs::metadata(t.join(src.strip_prefix("/").unwrap()).join("owned")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    // as an unprivileged user: owners are skipped with one summary warning
    let base = e.dir.path();
    fs::set_permissions(base, fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(&e.pwfile, fs::Permissions::from_mode(0o644)).unwrap();
    for f in common::digest_tree(&e.repo).keys() {
        let p = e.repo.join(std::str::from_utf8(f).unwrap());
        let _ = fs::set_permissions(
            &p,
            fs::Permissions::from_mode(if p.is_dir() { 0o755 } else { 0o644 }),
        );
    }
    let _ = fs::set_permissions(&e.repo, fs::Permissions::from_mode(0o777));
    let out = base.join("nobody-out");
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(common::world_executable_coffer(base))
        .args(["restore", "latest", "--target", out.to_str().unwrap()])
        .env("COFFER_REPOSITORY", &e.repo)
        .env("COFFER_PASSWORD_FILE", &e.pwfile)
        .env("HOME", base)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let warnings: Vec<&str> = std::str::from_utf8(&o.stderr)
        .unwrap()
        .lines()
        .filter(|l| l.contains("owner"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("not running as root"));
}

#[test]
fn files_changing_or_failing_during_backup_give_exit_3() {
    let e = Env::init();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    let grow = src.join("growing.log");
    fs::write(&grow, pseudo_random(5, 64 << 20)).unwrap();
    fs::write(src.join("steady"), "steady").unwrap();
    // a writer appends while the backup runs
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let g2 = grow.clone();
    let writer = std::thread::spawn(move || {
        let mut f = fs::OpenOptions::new().append(true).open(&g2).unwrap();
        use std::io::Write;
        while !s2.load(std::sync::atomic::Ordering::SeqCst) {
            f.write_all(&[b'x'; 65536]).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let o = e.run(&["backup", "--json", src.to_str().unwrap()]);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("growing.log"), "{}", stderr(&o));
    // the snapshot still restores
    let t = e.path("t");
    e.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert_eq!(
        fs::read_to_string(t.join(src.strip_prefix("/").unwrap()).join("steady")).unwrap(),
        "steady"
    );
    // a read error (EIO): /proc/self/mem fails to read at offset 0
    let o = e.run(&["backup", "/proc/self/mem"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("/proc/self/mem"), "{}", stderr(&o));
}

#[test]
fn paths_longer_than_path_max_round_trip() {
    use rustix::fs::{mkdirat, openat, Mode, OFlags};
    let e = Env::init();
    let src = e.path("deep");
    fs::create_dir_all(&src).unwrap();
    // 30 levels of 200-byte names: a path of over 6000 bytes
    let comp = "d".repeat(200);
    let mut fd = openat(
        rustix::fs::CWD,
        &src,
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    for _ in 0..30 {
        mkdirat(&fd, comp.as_str(), Mode::from_raw_mode(0o755)).unwrap();
        fd = openat(
            &fd,
            comp.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
    }
    let f = openat(
        &fd,
        "bottom.txt",
        OFlags::WRONLY | OFlags::CREATE,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    rustix::io::write(&f, b"at the bottom").unwrap();
    drop(f);
    let s = e.backup_json(&[src.to_str().unwrap()]);
    assert_eq!(s["errors"], 0, "{s}");
    assert_eq!(s["files_new"], 1);
    let t = e.path("t");
    e.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    let mut fd = openat(
        rustix::fs::CWD,
        t.join(src.strip_prefix("/").unwrap()),
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    for _ in 0..30 {
        fd = openat(
            &fd,
            comp.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .unwrap();
    }
    let f = openat(&fd, "bottom.txt", OFlags::RDONLY, Mode::empty()).unwrap();
    let mut buf = [0u8; 64];
    let n = rustix::io::read(&f, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"at the bottom");
    // the test's temp dir cannot be removed by path this deep: remove it bottom-up by fd
    for root in [src.clone(), t.clone()] {
        let _ = Command::new("rm").arg("-rf").arg(&root).status();
    }
}

/// `--delete` with a snapshot a write-only key sealed says so first: that key (a stolen one
/// too) wrote the paths and trees that decide what goes.
#[test]
fn delete_warns_about_a_snapshot_a_write_only_key_sealed() {
    let e = Env::init();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "a").unwrap();
    let s = src.to_str().unwrap();
    let wo_pw = e.path("wo-pw");
    fs::write(&wo_pw, "write only\n").unwrap();
    let o = e
        .cmd()
        .env("COFFER_NEW_PASSWORD", "write only")
        .args(["key", "add", "--write-only"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = e
        .cmd()
        .env("COFFER_PASSWORD_FILE", &wo_pw)
        .args(["backup", "-q", s])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let t = e.path("t");
    let o = e.run(&["restore", "latest", "--target", t.to_str().unwrap(), "--delete"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("sealed by a write-only key"),
        "{}",
        stderr(&o)
    );
}
