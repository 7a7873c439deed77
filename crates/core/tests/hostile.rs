//! Validly encrypted but hostile snapshots must not make restore write outside its target.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::sync::Arc;

use coffer_core::format::{BlobKind, Bytes, Name, Node, NodeKind, Snapshot, Summary, Tree, FORMAT_VERSION};
use coffer_core::memory::MemoryBackend;
use coffer_core::{
    restore, store_blobs, IndexedRepository, InitOptions, NoProgress, Repository, RestoreOptions,
    RestoreStats,
};

fn cbor(t: &Tree) -> Vec<u8> {
    // encode as given: no sorting, no validation (that is what an attacker would write)
    let mut out = Vec::new();
    ciborium::into_writer(t, &mut out).unwrap();
    out
}

fn file(name: &[u8], content: &[u8], repo: &mut IndexedRepository) -> Node {
    let ids = store_blobs(repo, vec![(BlobKind::Data, content.to_vec())]).unwrap();
    let mut n = Node::new(Name(name.to_vec()), NodeKind::File);
    n.mode = 0o644;
    n.size = content.len() as u64;
    n.content = ids;
    n
}

fn dir(name: &[u8], tree: &Tree, repo: &mut IndexedRepository) -> Node {
    let ids = store_blobs(repo, vec![(BlobKind::Tree, cbor(tree))]).unwrap();
    let mut n = Node::new(Name(name.to_vec()), NodeKind::Dir);
    n.mode = 0o755;
    n.subtree = Some(ids[0]);
    n
}

fn symlink(name: &[u8], target: &[u8]) -> Node {
    let mut n = Node::new(Name(name.to_vec()), NodeKind::Symlink);
    n.mode = 0o777;
    n.target = Some(Bytes(target.to_vec()));
    n
}

/// Store `root` as a snapshot and restore it into `base/target`: the restore's statistics,
/// or its error.
fn restore_hostile(repo: &mut IndexedRepository, root: Tree, base: &Path) -> Result<RestoreStats, String> {
    let id = store_blobs(repo, vec![(BlobKind::Tree, cbor(&root))]).unwrap()[0];
    let snap = Snapshot {
        version: FORMAT_VERSION,
        time: chrono::Local::now().fixed_offset(),
        hostname: "evil".into(),
        username: String::new(),
        paths: vec!["/".into()],
        tags: vec![],
        excludes: vec![],
        tree: id,
        parent: None,
        program_version: "test".into(),
        summary: Summary::default(),
        databases: vec![],
        images: vec![],
        original: None,
        key: None,
        sealed_by_write_only: false,
    };
    repo.save_snapshot(&snap).unwrap();
    let opts = RestoreOptions {
        target: base.join("target"),
        ..Default::default()
    };
    restore(repo, id, "/", &opts, &NoProgress).map_err(|e| e.to_string())
}

fn digest(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in walk(p) {
        let data = fs::read(&e).unwrap_or_default();
        out.push((e.display().to_string(), data));
    }
    out.sort();
    out
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            v.push(path.clone());
            if fs::symlink_metadata(&path).map(|m| m.is_dir()).unwrap_or(false) {
                v.extend(walk(&path));
            }
        }
    }
    v
}

#[test]
fn hostile_trees_cannot_escape_the_target() {
    let b = MemoryBackend::new();
    let mut repo = Repository::init(Arc::new(b), b"pw", &InitOptions::default())
        .unwrap()
        .load_index()
        .unwrap();
    let base = tempfile::tempdir().unwrap();
    let outside = base.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("passwd"), "precious").unwrap();

    let cases: Vec<(&str, Tree)> = vec![
        (
            "dot-dot",
            Tree {
                nodes: vec![file(b"..", b"x", &mut repo)],
            },
        ),
        (
            "dot-dot-slash",
            Tree {
                nodes: vec![file(b"../outside/passwd", b"pwned", &mut repo)],
            },
        ),
        (
            "absolute",
            Tree {
                nodes: vec![file(b"/tmp/pwned", b"pwned", &mut repo)],
            },
        ),
        (
            "slash",
            Tree {
                nodes: vec![file(b"a/b", b"pwned", &mut repo)],
            },
        ),
        (
            "nul",
            Tree {
                nodes: vec![file(b"a\0b", b"pwned", &mut repo)],
            },
        ),
        (
            "empty",
            Tree {
                nodes: vec![file(b"", b"pwned", &mut repo)],
            },
        ),
        // a symlink to the outside, then a directory of the same name holding a file
        ("symlink-then-dir", {
            let inner = Tree {
                nodes: vec![file(b"passwd", b"pwned", &mut repo)],
            };
            Tree {
                nodes: vec![
                    symlink(b"evil", outside.as_os_str().as_encoded_bytes()),
                    dir(b"evil", &inner, &mut repo),
                ],
            }
        }),
        // a directory, then a symlink of the same name
        ("dir-then-symlink", {
            let inner = Tree {
                nodes: vec![file(b"passwd", b"pwned", &mut repo)],
            };
            Tree {
                nodes: vec![
                    dir(b"evil", &inner, &mut repo),
                    symlink(b"evil", outside.as_os_str().as_encoded_bytes()),
                ],
            }
        }),
        // the hostile name one level down
        ("nested", {
            let inner = Tree {
                nodes: vec![file(b"..", b"pwned", &mut repo)],
            };
            Tree {
                nodes: vec![dir(b"sub", &inner, &mut repo)],
            }
        }),
    ];
    for (what, tree) in cases {
        let before = digest(base.path().join("outside").as_path());
        let r = restore_hostile(&mut repo, tree, base.path());
        assert!(
            !matches!(&r, Ok(stats) if stats.errors == 0),
            "{what}: restore reported success"
        );
        if what.contains("-then-") {
            // two entries of one name never reach the restore: the tree decoder refuses them
            // (the restore's own handling of a symlink in the way is tested below)
            let e = r.unwrap_err();
            assert!(e.contains("not strictly sorted"), "{what}: {e}");
        }
        assert_eq!(
            before,
            digest(&outside),
            "{what}: something outside the target changed"
        );
        assert!(!Path::new("/tmp/pwned").exists(), "{what}");
        let _ = fs::remove_dir_all(base.path().join("target"));
    }

    // a symlink pointing outside is restored as a symlink, and nothing is written through it
    let inner = Tree {
        nodes: vec![file(b"passwd", b"pwned", &mut repo)],
    };
    let t = Tree {
        nodes: vec![
            dir(b"a", &inner, &mut repo),
            symlink(b"b", outside.as_os_str().as_encoded_bytes()),
        ],
    };
    let r = restore_hostile(&mut repo, t, base.path()).unwrap();
    assert_eq!(r.errors, 0);
    assert_eq!(fs::read_to_string(outside.join("passwd")).unwrap(), "precious");
    assert!(fs::symlink_metadata(base.path().join("target/b"))
        .unwrap()
        .file_type()
        .is_symlink());
    // ...and a second snapshot restored into the same target, with a directory `b` holding
    // `passwd` where the symlink now is: the restore meets the symlink on disk and must not
    // write through it
    let before = digest(&outside);
    let t = Tree {
        nodes: vec![dir(b"b", &inner, &mut repo)],
    };
    let r = restore_hostile(&mut repo, t, base.path());
    assert_eq!(fs::read_to_string(outside.join("passwd")).unwrap(), "precious");
    assert_eq!(before, digest(&outside), "nothing outside the target changed");
    if let Ok(stats) = &r {
        if stats.errors == 0 {
            // it replaced the symlink with the directory
            let b = base.path().join("target/b");
            assert!(fs::symlink_metadata(&b).unwrap().is_dir(), "{r:?}");
            assert_eq!(fs::read_to_string(b.join("passwd")).unwrap(), "pwned");
        }
    }
}
