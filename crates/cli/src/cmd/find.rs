//! `coffer find PATTERN...`: which snapshots hold an entry whose name matches (`*.sql`,
//! `wp-config.php`), or, for a pattern with `/`, whose whole path does
//! (`/var/www/*/wp-config.php`): the grammar of `--exclude`. Oldest snapshot first, each match
//! as `ls -l` shows it; `--json` gives one object per match with its snapshot.
//!
//! A directory tree in which nothing matched is not walked again (trees are shared between
//! snapshots: a year of nightly snapshots costs little more than one). With a pattern that
//! names a path the same tree can match at one path and not at another, so then a tree is
//! skipped only where it was searched before: at the same path.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use std::io::Write;

use anyhow::{Context, Result};
use coffer_core::filter::PathMatcher;
use coffer_core::format::{BlobId, Node, NodeKind};
use coffer_core::IndexedRepository;
use serde_json::json;

use super::{node_json, open_indexed, outln, print_json, print_node};
use crate::cli::{FindArgs, Global};

/// Trees known to hold no match: by id alone for name patterns, by id and path when a
/// pattern names a path.
struct Barren {
    by_path: bool,
    seen: HashSet<(BlobId, Vec<u8>)>,
}

impl Barren {
    fn key(&self, tree: BlobId, prefix: &[u8]) -> (BlobId, Vec<u8>) {
        (tree, if self.by_path { prefix.to_vec() } else { Vec::new() })
    }
}

/// The entries below `tree` (whose path is `prefix`) that `m` matches; false when there is
/// none (and `tree` joins `barren`).
fn search(
    repo: &IndexedRepository,
    tree: BlobId,
    prefix: &[u8],
    m: &PathMatcher,
    barren: &mut Barren,
    out: &mut Vec<(Vec<u8>, Node)>,
    damaged: &mut usize,
) -> Result<bool> {
    if barren.seen.contains(&barren.key(tree, prefix)) {
        return Ok(false);
    }
    let t = match repo.load_tree(&tree) {
        Ok(t) => t,
        Err(e) => {
            // the rest is searched; the command fails at the end
            eprintln!(
                "coffer: error: {}: cannot be read: {e}",
                String::from_utf8_lossy(if prefix.is_empty() { b"/" } else { prefix })
            );
            *damaged += 1;
            return Ok(false);
        }
    };
    let mut any = false;
    for n in t.nodes {
        let mut path = prefix.to_vec();
        path.push(b'/');
        path.extend_from_slice(&n.name.0);
        let sub = n.subtree.filter(|_| n.kind == NodeKind::Dir);
        if m.matches(Path::new(OsStr::from_bytes(&path))) {
            out.push((path.clone(), n));
            any = true;
        }
        if let Some(sub) = sub {
            any |= search(repo, sub, &path, m, barren, out, damaged)?;
        }
    }
    if !any {
        let k = barren.key(tree, prefix);
        barren.seen.insert(k);
    }
    Ok(any)
}

pub fn run(g: &Global, a: FindArgs) -> Result<u8> {
    let m = PathMatcher::new(&a.patterns).map_err(|e| coffer_core::Error::Usage(e.to_string()))?;
    let repo = open_indexed(g)?;
    let (mut snaps, unreadable) = repo.list_snapshots_readable()?;
    for u in &unreadable {
        eprintln!("coffer: warning: {u} (not searched)");
    }
    snaps.retain(|(_, s)| a.filter.matches(s));
    if !a.snapshots.is_empty() {
        let mut wanted = HashSet::new();
        for spec in &a.snapshots {
            wanted.insert(super::resolve_snapshot(&repo, spec, &a.filter)?.0);
        }
        snaps.retain(|(id, _)| wanted.contains(id));
    }
    // (PathMatcher's rule: a pattern with '/', bar a trailing one, is a path)
    let mut barren = Barren {
        by_path: a
            .patterns
            .iter()
            .any(|p| p.len() > 1 && p.trim_end_matches('/').contains('/')),
        seen: HashSet::new(),
    };
    let (mut matches, mut holding, mut damaged) = (0usize, 0usize, 0usize);
    for (id, s) in &snaps {
        let mut found = Vec::new();
        search(&repo, s.tree, b"", &m, &mut barren, &mut found, &mut damaged)?;
        if found.is_empty() {
            continue;
        }
        holding += 1;
        matches += found.len();
        if g.json {
            for (path, n) in &found {
                let mut v = node_json(path, n);
                if let Some(o) = v.as_object_mut() {
                    o.insert(
                        "snapshot".into(),
                        json!({"id": id.to_hex(), "time": s.time, "hostname": s.hostname, "tags": s.tags}),
                    );
                }
                print_json(&v)?;
            }
        } else {
            outln!(
                "snapshot {} of {} ({}):",
                id.short(),
                s.time.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S"),
                s.hostname
            )?;
            for (path, n) in &found {
                print_node(g, true, path, n)?;
            }
        }
    }
    if !g.quiet && !g.json {
        eprintln!(
            "{matches} matches in {holding} of {} snapshots searched",
            snaps.len()
        );
    }
    if damaged > 0 {
        anyhow::bail!(
            "{damaged} directories could not be read (coffer check says more); the rest was searched"
        );
    }
    Ok(0)
}
