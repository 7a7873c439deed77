//! One function per subcommand: resolve flags into library options, call the core, print.

pub mod agent;
pub mod backup;
pub mod cat;
pub mod config;
pub mod copy;
pub mod db;
pub mod drill;
pub mod find;
pub mod forget;
pub mod generate;
pub mod host;
pub mod image;
pub mod job;
pub mod managed;
pub mod monitor;
pub mod mount;
pub mod requests;
pub mod run;
pub mod server;
pub mod site;

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use coffer_core::diff::{diff_trees, ChangeKind};
use coffer_core::format::{Node, NodeKind, Snapshot, SnapshotId};
use coffer_core::walk::{find_path, walk, Found};
use coffer_core::{Backend, IndexedRepository, InitOptions, Repository, RestoreOptions};
use serde_json::json;

use crate::cli::{DiffArgs, Global, InitArgs, KeyCommand, LsArgs, RestoreArgs, SnapshotsArgs};
use crate::password::{new_password, repository_password};
use crate::ui::{bytes, local_time, CliProgress};

/// Write one line to stdout; a closed pipe surfaces as an error that main treats as success.
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*).context("writing to stdout")
    };
}
pub(crate) use outln;

/// The repository location as a local path, when it is one (not s3:, sftp: or https://).
fn local_path(g: &Global) -> Option<std::path::PathBuf> {
    let loc = g.repo.as_deref()?;
    let remote = ["s3:", "sftp:", "https://"].iter().any(|p| loc.starts_with(p));
    (!remote).then(|| std::path::PathBuf::from(loc))
}

/// Raise the soft open-file limit toward `want`, never past the hard one; the soft limit
/// it leaves.
pub fn raise_open_files(want: u64) -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    let soft = now.current.unwrap_or(u64::MAX);
    if soft >= want {
        return soft;
    }
    let new = want.min(now.maximum.unwrap_or(u64::MAX));
    let raised = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(new),
            maximum: now.maximum,
        },
    );
    if raised.is_ok() {
        new
    } else {
        soft
    }
}

pub fn backend(g: &Global) -> Result<Arc<dyn Backend>> {
    let Some(loc) = &g.repo else {
        bail!("no repository given: use -r/--repo or set COFFER_REPOSITORY");
    };
    let rest = coffer_backends::RestOptions {
        cacert: g.cacert.clone(),
        token_file: g.token_file.clone(),
        token_var: None,
    };
    let limit = g
        .limit_upload
        .map(|r| Arc::new(coffer_core::limit::RateLimit::new(r)));
    let b = coffer_backends::open_with(loc, &rest, limit)?;
    Ok(cached(g, limit_reads(g, b)))
}

/// Reads from `b` kept under `--limit-download`, if given. Goes under the cache: what the
/// cache holds is read at disk speed.
pub fn limit_reads(g: &Global, b: Arc<dyn Backend>) -> Arc<dyn Backend> {
    match g.limit_download {
        Some(r) => Arc::new(coffer_backends::DownloadLimited::new(
            b,
            Arc::new(coffer_core::limit::RateLimit::new(r)),
        )),
        None => b,
    }
}

/// A remote repository reads key, index and snapshot files and tree packs through the local
/// cache (unless `--no-cache`).
pub fn cached(g: &Global, b: Arc<dyn Backend>) -> Arc<dyn Backend> {
    match cache_dir() {
        Some(dir) if b.latency_bound() && !g.no_cache => {
            Arc::new(coffer_backends::CachedBackend::new(b, &dir))
        }
        _ => b,
    }
}

pub fn open(g: &Global) -> Result<Repository> {
    let b = backend(g)?;
    if let Some(p) = local_path(g).filter(|p| p.is_file()) {
        return Err(coffer_core::Error::Usage(format!(
            "repository {} is a file, not a repository directory",
            p.display()
        ))
        .into());
    }
    if !b.exists()? {
        return Err(coffer_core::Error::NoRepository {
            location: b.location(),
        }
        .into());
    }
    let pw = repository_password(g)?;
    // the key files that opened this repository before are tried first (and so are kept):
    // see `Repository::open_preferring`
    let pin = key_pin_path(&b.location());
    let known: Vec<String> = pin
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|s| coffer_core::format::Id::from_hex(s).is_ok())
        .map(String::from)
        .collect();
    let mut repo = Repository::open_preferring(b, &pw, &known)?;
    repo.set_index_spill(Some(index_spill(g)));
    for w in repo.skipped_keys() {
        eprintln!("warning: {w}");
    }
    let opened = repo.key_id().0.to_hex();
    if !known.is_empty() && !known.contains(&opened) {
        eprintln!(
            "warning: opened the repository with key file {}, which this client has not used before \
             (if nobody added a key or changed a password, someone may have added one that opens with \
             this password: see `coffer key list`)",
            &opened[..8]
        );
    }
    if let Some(path) = pin.filter(|_| known.first() != Some(&opened)) {
        let mut list = vec![opened.clone()];
        list.extend(known.into_iter().filter(|k| *k != opened).take(7));
        // (a cache that cannot be written costs this protection, not the run)
        let _ = path
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| std::fs::write(&path, list.join("\n") + "\n"));
    }
    Ok(repo)
}

/// Where the client notes which key file opened the repository at `location`.
fn key_pin_path(location: &str) -> Option<std::path::PathBuf> {
    let name = coffer_core::crypto::storage_id(location.as_bytes()).to_hex();
    cache_dir().map(|d| d.join("keys").join(&name[..32]))
}

/// How far in the future a snapshot's time may be (clock skew between hosts) and still be
/// `latest`: one dated further ahead (a wrong clock, or a forged snapshot) would stay `latest`
/// until that day.
const LATEST_MAX_SKEW_SECS: i64 = coffer_core::backup::MAX_CLOCK_SKEW_SECS;

/// Resolve SNAPSHOT for a command that reads one: `latest` is the newest readable snapshot
/// that matches the filter (never one dated more than 10 minutes in the future, which is
/// named in a warning), `latest~N` the one N before it; an id or unique prefix must match
/// the filter too.
pub fn resolve_snapshot(
    repo: &Repository,
    spec: &str,
    filter: &crate::cli::SnapshotFilter,
) -> Result<(coffer_core::format::SnapshotId, Snapshot)> {
    // `latest` is never the state a restore saved before it replaced it (a before-restore
    // snapshot), unless asked for with --tag
    let asked_before = filter
        .tag
        .iter()
        .any(|t| t == site::BEFORE_RESTORE || t == site::BEFORE_UNDO);
    resolve_snapshot_passing(repo, spec, filter, |s| {
        !asked_before && site::saved_by_a_restore(s)
    })
}

/// Set (non-empty) in the environment of a restore that replaces data in place for a request
/// of the server (the agent sets it): a snapshot sealed by a write-only key is refused then.
pub const REFUSE_WRITE_ONLY_VAR: &str = "COFFER_REFUSE_WRITE_ONLY";

/// [`resolve_snapshot`], with `latest` passing over the snapshots `skip` names too.
pub fn resolve_snapshot_passing(
    repo: &Repository,
    spec: &str,
    filter: &crate::cli::SnapshotFilter,
    skip: impl Fn(&Snapshot) -> bool,
) -> Result<(coffer_core::format::SnapshotId, Snapshot)> {
    let (id, snap) = resolve_any(repo, spec, filter, skip)?;
    if snap.sealed_by_write_only && std::env::var_os(REFUSE_WRITE_ONLY_VAR).is_some_and(|v| !v.is_empty()) {
        return Err(coffer_core::Error::Usage(format!(
            "snapshot {} was sealed by a write-only key (any holder of one, a stolen one too, can write such a snapshot): \
             not restored in place from a request of the server; restore it by hand after reading it",
            id.short()
        ))
        .into());
    }
    Ok((id, snap))
}

fn resolve_any(
    repo: &Repository,
    spec: &str,
    filter: &crate::cli::SnapshotFilter,
    skip: impl Fn(&Snapshot) -> bool,
) -> Result<(coffer_core::format::SnapshotId, Snapshot)> {
    let back = match spec.strip_prefix("latest~") {
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            coffer_core::Error::Usage(format!(
                "{spec:?}: latest~N takes a whole number (latest~1 is the one before latest)"
            ))
        })?),
        None if spec == "latest" => Some(0),
        None => None,
    };
    let Some(back) = back else {
        let (id, snap) = repo.find_snapshot(spec)?;
        if !filter.matches(&snap) {
            return Err(coffer_core::Error::Usage(format!(
                "snapshot {} (host {}, paths {}) does not match --host/--path/--tag",
                id.short(),
                snap.hostname,
                snap.paths.join(" ")
            ))
            .into());
        }
        return Ok((id, snap));
    };
    let (list, bad) = repo.list_snapshots_readable()?;
    if bad.is_empty() {
        watch_rollback(repo, &list, &[]);
    }
    for b in bad {
        eprintln!("warning: {b}");
    }
    let now = chrono::Utc::now().timestamp();
    let mut matching: Vec<_> = list
        .into_iter()
        .filter(|(_, s)| filter.matches(s) && !skip(s))
        .collect();
    matching.retain(|(id, s)| {
        let future = s.time.timestamp() > now + LATEST_MAX_SKEW_SECS;
        if future {
            eprintln!(
                "warning: snapshot {} is dated {} (in the future: a wrong clock, or forged); `latest` passes it over",
                id.short(),
                s.time.to_rfc3339()
            );
        }
        !future
    });
    let groups: std::collections::BTreeSet<(&str, Vec<String>)> = matching
        .iter()
        .map(|(_, s)| (s.hostname.as_str(), s.paths.clone()))
        .collect();
    if filter.is_empty() && groups.len() > 1 {
        eprintln!(
            "note: `latest` is the newest snapshot of any host and paths; this repository has {} \
             (see `coffer snapshots`): --host and --path choose one",
            groups.len()
        );
    }
    drop(groups);
    if back > 0 {
        let n = matching.len();
        return match n.checked_sub(back + 1) {
            Some(i) => Ok(matching.swap_remove(i)),
            None => Err(coffer_core::Error::NotFound(format!(
                "{spec}: only {n} snapshot(s){} in {}",
                if filter.is_empty() {
                    ""
                } else {
                    " match --host/--path/--tag"
                },
                repo.backend().location()
            ))
            .into()),
        };
    }
    matching.pop().ok_or_else(|| {
        let what = if filter.is_empty() {
            String::new()
        } else {
            " matching --host/--path/--tag".to_string()
        };
        coffer_core::Error::NotFound(format!(
            "no snapshot{what} in {} (`latest` needs one)",
            repo.backend().location()
        ))
        .into()
    })
}

pub fn open_indexed(g: &Global) -> Result<IndexedRepository> {
    Ok(open(g)?.load_index()?)
}

/// Open for writing: take a lease, then read the index under it (once: a run that loaded the
/// index before its lease would read it again).
pub fn open_leased(g: &Global, purpose: &str) -> Result<IndexedRepository> {
    Ok(open(g)?.load_index_leased(purpose)?)
}

pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let s = serde_json::to_string(v)?;
    outln!("{s}")
}

/// `zstd`, `zstd:19`, `none`, ... into a checked compression setting.
pub fn parse_compression(s: &str, level: Option<i32>) -> Result<coffer_core::CompressionSpec> {
    let (name, lvl) = match s.split_once(':') {
        Some((n, l)) => (
            n,
            Some(
                l.parse::<i32>()
                    .with_context(|| format!("compression level {l:?} is not a number"))?,
            ),
        ),
        None => (s, None),
    };
    if let (Some(a), Some(b)) = (lvl, level) {
        if a != b {
            return Err(coffer_core::Error::Usage(format!(
                "--compression {s} and --compression-level {b} disagree: give the level once"
            ))
            .into());
        }
    }
    let algo: coffer_core::format::Compression = name.parse().map_err(anyhow::Error::msg)?;
    let level = lvl
        .or(level)
        .unwrap_or_else(|| coffer_core::CompressionSpec::default_level(algo));
    let spec = coffer_core::CompressionSpec { algo, level };
    spec.validate()?;
    Ok(spec)
}

pub fn init(g: &Global, a: InitArgs) -> Result<u8> {
    let b = backend(g)?;
    let opts = InitOptions {
        compression: parse_compression(&a.compression, a.compression_level)?,
        pack_size: a.pack_size.checked_mul(1 << 20).context("pack size too large")?,
        parity: a.parity,
        ..InitOptions::default()
    };
    if b.exists()? {
        return Err(coffer_core::Error::RepositoryExists {
            location: b.location(),
        }
        .into());
    }
    // a local directory that holds other things is almost surely the wrong place (a typo, a
    // missing path component): a repository is made in an empty or new directory
    if let Some(dir) = local_path(g) {
        if dir.is_file() {
            return Err(coffer_core::Error::Usage(format!(
                "{} is a file: a repository is a directory (give a new or empty one)",
                dir.display()
            ))
            .into());
        }
        // (a freshly made ext4 filesystem holds lost+found: a new disk is empty enough)
        let other = |d: std::fs::ReadDir| d.flatten().any(|e| e.file_name() != "lost+found");
        if std::fs::read_dir(&dir).is_ok_and(other) {
            return Err(coffer_core::Error::Usage(format!(
                "{} is not empty and holds no repository: give a new or empty directory",
                dir.display()
            ))
            .into());
        }
    }
    let pw = new_password(g, a.new_password_file.as_deref(), true)?;
    let repo = Repository::init(b, &pw, &opts)?;
    if g.json {
        print_json(
            &json!({"message_type": "initialized", "id": repo.config().id.to_hex(), "repository": repo.backend().location()}),
        )?;
    } else if !g.quiet {
        outln!(
            "created coffer repository {} at {}",
            repo.config().id.short(),
            repo.backend().location()
        )?;
        if coffer_core::crypto::parse_generated_key(&pw)?.is_some() {
            outln!("Keep a copy of the key file off this machine: without it the data cannot be recovered.")?;
        } else {
            outln!("Keep the password safe: without it the data cannot be recovered.")?;
        }
    }
    Ok(0)
}

/// Which key wrote a snapshot, as listings show it: the key file's short id (as the snapshot
/// says), `w/o` when a write-only key sealed it, `-` when it predates the record.
fn writer(s: &Snapshot) -> String {
    let key = s.key.map(|k| k.short()).unwrap_or_else(|| "-".into());
    if s.sealed_by_write_only {
        format!("{key} w/o")
    } else {
        key
    }
}

fn snapshot_json(id: &SnapshotId, s: &Snapshot) -> serde_json::Value {
    json!({
        "id": id.to_hex(),
        "short_id": id.short(),
        "time": s.time.to_rfc3339(),
        "hostname": s.hostname,
        "username": s.username,
        "paths": s.paths,
        "tags": s.tags,
        "tree": s.tree.to_hex(),
        "parent": s.parent.map(|p| p.to_hex()),
        "program_version": s.program_version,
        "key": s.key.map(|k| k.to_hex()),
        "sealed_by_write_only": s.sealed_by_write_only,
        "original": s.original.map(|o| o.to_hex()),
        "summary": s.summary,
    })
}

pub fn snapshots(g: &Global, a: SnapshotsArgs) -> Result<u8> {
    let repo = open(g)?;
    // damaged snapshots (or garbage a compromised client wrote) do not hide the others
    let (mut list, unreadable) = repo.list_snapshots_readable()?;
    if unreadable.is_empty() {
        watch_rollback(&repo, &list, &[]);
    }
    for w in &unreadable {
        eprintln!("coffer: error: {w}");
    }
    let code = if unreadable.is_empty() { 0 } else { 1 };
    list.retain(|(_, s)| a.filter.matches(s));
    if let Some(n) = a.latest {
        let skip = list.len().saturating_sub(n);
        list.drain(..skip);
    }
    if g.json {
        let v: Vec<_> = list.iter().map(|(id, s)| snapshot_json(id, s)).collect();
        return print_json(&v).map(|_| code);
    }
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|(id, s)| {
            [
                id.short(),
                local_time(&s.time),
                s.hostname.clone(),
                writer(s),
                s.tags.join(","),
                s.paths.join(" "),
                bytes(s.summary.bytes_total),
            ]
        })
        .collect();
    let head = ["ID", "Time", "Host", "Key", "Tags", "Paths", "Size"].map(String::from);
    let mut w = [0usize; 7];
    for r in std::iter::once(&head).chain(rows.iter()) {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |r: &[String; 7]| {
        format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {:<w4$}  {:<w5$}  {:>w6$}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4],
            w5 = w[5],
            w6 = w[6]
        )
    };
    outln!("{}", line(&head))?;
    outln!("{}", "-".repeat(w.iter().sum::<usize>() + 12))?;
    for r in &rows {
        outln!("{}", line(r))?;
    }
    outln!("{} snapshots", rows.len())?;
    Ok(code)
}

fn kind_char(k: NodeKind) -> char {
    match k {
        NodeKind::File => '-',
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Fifo => 'p',
        NodeKind::Chardev => 'c',
        NodeKind::Blockdev => 'b',
    }
}

fn mode_string(n: &Node) -> String {
    let m = n.mode;
    let mut s = String::with_capacity(10);
    s.push(kind_char(n.kind));
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o40, 'r'),
        (0o20, 'w'),
        (0o10, 'x'),
        (0o4, 'r'),
        (0o2, 'w'),
        (0o1, 'x'),
    ];
    for (i, (b, c)) in bits.iter().enumerate() {
        let special = match i {
            2 if m & 0o4000 != 0 => Some(if m & b != 0 { 's' } else { 'S' }),
            5 if m & 0o2000 != 0 => Some(if m & b != 0 { 's' } else { 'S' }),
            8 if m & 0o1000 != 0 => Some(if m & b != 0 { 't' } else { 'T' }),
            _ => None,
        };
        s.push(special.unwrap_or(if m & b != 0 { *c } else { '-' }));
    }
    s
}

pub(crate) fn node_json(path: &[u8], n: &Node) -> serde_json::Value {
    let mut v = serde_json::to_value(n).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("path".into(), json!(String::from_utf8_lossy(path)));
        o.remove("content");
    }
    v
}

pub(crate) fn print_node(g: &Global, long: bool, path: &[u8], n: &Node) -> Result<()> {
    if g.json {
        return print_json(&node_json(path, n));
    }
    let p = String::from_utf8_lossy(path);
    if !long {
        return outln!("{p}");
    }
    let t = chrono::DateTime::from_timestamp(n.mtime.s, n.mtime.ns)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default();
    let link = n
        .target
        .as_ref()
        .map(|t| format!(" -> {}", String::from_utf8_lossy(&t.0)))
        .unwrap_or_default();
    outln!(
        "{} {:>8} {:>8} {:>12} {t} {p}{link}",
        mode_string(n),
        n.user.clone().unwrap_or_else(|| n.uid.to_string()),
        n.group.clone().unwrap_or_else(|| n.gid.to_string()),
        n.size
    )
}

pub fn ls(g: &Global, a: LsArgs) -> Result<u8> {
    let repo = open_indexed(g)?;
    let (id, snap) = resolve_snapshot(&repo, &a.snapshot, &a.filter)?;
    if a.databases {
        return db::list(g, &id, &snap);
    }
    let start = match find_path(&repo, snap.tree, &a.path)? {
        Found::Root(id) => Some(id),
        Found::Node(n) if n.kind == NodeKind::Dir => n.subtree,
        Found::Node(n) => {
            print_node(g, a.long, a.path.trim_end_matches('/').as_bytes(), &n)?;
            None
        }
    };
    if let Some(id) = start {
        let prefix = a.path.trim_end_matches('/').as_bytes().to_vec();
        let recursive = !a.no_recursive;
        let mut err = None;
        walk(&repo, id, &prefix, &mut |p, n| {
            if let Err(e) = print_node(g, a.long, p, n) {
                err = Some(e);
                return Err(coffer_core::Error::Interrupted);
            }
            Ok(recursive)
        })
        .or_else(|e| if err.is_some() { Ok(()) } else { Err(e) })?;
        if let Some(e) = err {
            return Err(e);
        }
    }
    Ok(0)
}

pub fn restore(g: &Global, a: RestoreArgs) -> Result<u8> {
    let target = match (&a.target, &a.device) {
        (_, Some(dev)) => return image::restore_device(g, &a, dev),
        (Some(t), None) => t.clone(),
        (None, None) => bail!("restore needs --target DIR (or --device DEVICE for an image)"),
    };
    let (spec, path) = match a.snapshot.split_once(':') {
        Some((s, p)) => (
            s.to_string(),
            if p.is_empty() {
                "/".to_string()
            } else {
                p.to_string()
            },
        ),
        None => (a.snapshot.clone(), "/".to_string()),
    };
    let repo = open_indexed(g)?;
    let (id, snap) = resolve_snapshot(&repo, &spec, &a.filter)?;
    // --full-path: PATH lands at TARGET/PATH (a directory's contents there, a file in
    // TARGET/its directory)
    let base = target.clone();
    let target = match a
        .full_path
        .then(|| find_path(&repo, snap.tree, &path))
        .transpose()?
    {
        Some(Found::Node(n)) => {
            let rel = std::path::Path::new(path.trim_start_matches('/'));
            match (n.kind == NodeKind::Dir, rel.parent()) {
                (true, _) => target.join(rel),
                (false, Some(parent)) => target.join(parent),
                (false, None) => target,
            }
        }
        _ => target,
    };
    let opts = RestoreOptions {
        target: target.clone(),
        includes: a.include,
        excludes: a.exclude,
        dry_run: a.dry_run,
        overwrite: a.overwrite.parse()?,
        delete: a.delete,
        delete_within: snap.paths.clone(),
        delete_keeps: snap.excludes.clone(),
        verify: a.verify,
        numeric_owner: a.numeric_owner,
        // (what --full-path adds below the target is the snapshot's: no symlink on it is followed)
        within: a.full_path.then_some(base),
    };
    if a.delete && snap.sealed_by_write_only {
        // what --delete removes is judged by the snapshot's paths and trees, which any
        // write-only key (a stolen one too) could have forged
        eprintln!(
            "warning: snapshot {} was sealed by a write-only key: --delete removes what it lacks; `--dry-run -v` shows what first",
            id.short()
        );
    }
    let progress = CliProgress::new(!g.quiet && !g.json, "restored")
        .listing_actions(g.verbose > 0 && !g.json && !g.quiet, a.dry_run);
    let stats = coffer_core::restore(&repo, snap.tree, &path, &opts, &progress);
    progress.finish();
    let stats = stats?;
    if g.json {
        print_json(
            &json!({"message_type": "summary", "snapshot_id": id.to_hex(), "dry_run": a.dry_run,
            "files_restored": stats.files, "dirs_restored": stats.dirs, "links_restored": stats.links,
            "other_restored": stats.other, "bytes_restored": stats.bytes, "errors": stats.errors,
            "skipped": stats.skipped, "replaced": stats.replaced, "deleted": stats.deleted, "verified": stats.verified,
            "owner_not_restored": stats.owner_skipped}),
        )?;
    } else if !g.quiet {
        let verb = if a.dry_run { "would restore" } else { "restored" };
        outln!(
            "{verb} snapshot {} of {} ({}) to {}: {} files, {} directories, {} links, {}",
            id.short(),
            snap.hostname,
            local_time(&snap.time),
            target.display(),
            stats.files,
            stats.dirs,
            stats.links,
            bytes(stats.bytes)
        )?;
    }
    if !g.json && !g.quiet {
        let (replaced, kept, deleted) = if a.dry_run {
            ("would be replaced", "would be kept", "would be deleted")
        } else {
            ("replaced", "kept", "deleted")
        };
        if stats.replaced > 0 {
            outln!("{} existing entries in the target {replaced}", stats.replaced)?;
        }
        if stats.skipped > 0 {
            outln!(
                "{} existing files {kept} (--overwrite {})",
                stats.skipped,
                a.overwrite
            )?;
        }
        if stats.deleted > 0 {
            outln!(
                "{} entries not in the snapshot {deleted} (--delete)",
                stats.deleted
            )?;
        }
        if stats.verified > 0 {
            outln!("{} files verified", stats.verified)?;
        }
        if a.dry_run && g.verbose == 0 && stats.replaced + stats.deleted > 0 {
            outln!("(-v lists every path the restore would create, replace, keep or delete)")?;
        }
    }
    if stats.owner_skipped > 0 {
        eprintln!(
            "warning: not running as root: the owner of {} entries was not restored (they belong to the user running the restore)",
            stats.owner_skipped
        );
    }
    warn_read_through_parity(&repo);
    if stats.errors > 0 {
        bail!(
            "{} item(s) could not be restored (see the warnings above)",
            stats.errors
        );
    }
    Ok(0)
}

/// Say which damaged packs a command read through their parity (the data it gave is intact;
/// the packs in storage are still damaged).
pub fn warn_read_through_parity(repo: &coffer_core::IndexedRepository) {
    let packs = repo.read_through_parity();
    if packs.is_empty() {
        return;
    }
    let names: Vec<String> = packs.iter().map(|p| p.short()).collect();
    eprintln!(
        "warning: {} damaged pack(s) were read through their parity ({}): the data is intact, the stored packs are not; run `coffer repair packs`",
        packs.len(),
        names.join(", ")
    );
}

pub fn diff(g: &Global, a: DiffArgs) -> Result<u8> {
    let repo = open_indexed(g)?;
    let (id1, s1) = resolve_snapshot(&repo, &a.snapshot1, &a.filter)?;
    let (id2, s2) = resolve_snapshot(&repo, &a.snapshot2, &a.filter)?;
    if !g.json && !g.quiet {
        outln!("comparing snapshot {} to {}:", id1.short(), id2.short())?;
    }
    let mut counts = [0u64; 5];
    let mut out_err = None;
    diff_trees(&repo, s1.tree, s2.tree, &mut |p, k, _n| {
        counts[k as usize] += 1;
        if k == ChangeKind::Metadata && !a.metadata {
            return;
        }
        let r = if g.json {
            print_json(
                &json!({"message_type": "change", "path": String::from_utf8_lossy(p), "modifier": k.marker().to_string(), "change": k}),
            )
        } else {
            outln!(
                "{}    {}",
                k.marker(),
                std::ffi::OsStr::from_bytes(p).to_string_lossy()
            )
        };
        if let Err(e) = r {
            out_err.get_or_insert(e);
        }
    })?;
    if let Some(e) = out_err {
        return Err(e);
    }
    let [added, removed, modified, metadata, typechanged] = counts;
    if g.json {
        print_json(
            &json!({"message_type": "statistics", "added": added, "removed": removed, "modified": modified,
            "metadata": metadata, "type_changed": typechanged}),
        )?;
    } else if !g.quiet {
        outln!("\n{added} added, {removed} removed, {modified} modified, {typechanged} changed type, {metadata} metadata only")?;
    }
    Ok(0)
}

/// Create `path` for secrets or dumps: readable by its owner only, never over an existing file.
pub fn create_private(path: &std::path::Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))
}

/// `coffer key generate`: a new generated key, into a new file readable by its owner only
/// or on standard output.
fn generate_key(g: &Global, output: Option<&std::path::Path>) -> Result<u8> {
    let text = coffer_core::crypto::generate_key_text();
    let Some(path) = output else {
        outln!("{}", text.as_str())?;
        return Ok(0);
    };
    let mut f = create_private(path)?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write key file {}", path.display()))?;
    if g.json {
        print_json(&json!({"message_type": "key_generated", "path": path.display().to_string()}))?;
    } else if !g.quiet {
        outln!(
            "wrote a new key to {}: use it as --password-file (or COFFER_PASSWORD_FILE) for init or key add, and keep a copy off this machine",
            path.display()
        )?;
    }
    Ok(0)
}

/// How a key file is unlocked, for listings.
fn unlocked_by(kf: &coffer_core::format::KeyFile) -> &'static str {
    if kf.kdf.algorithm == coffer_core::crypto::GENERATED_KEY_KDF {
        "generated key"
    } else {
        "passphrase"
    }
}

pub fn key(g: &Global, k: KeyCommand) -> Result<u8> {
    let mut repo = match &k {
        KeyCommand::Generate { output } => return generate_key(g, output.as_deref()),
        _ => open(g)?,
    };
    match k {
        KeyCommand::Generate { .. } => {} // needs no repository: handled above
        KeyCommand::List => {
            let keys = repo.list_keys()?;
            if g.json {
                let v: Vec<_> = keys
                    .iter()
                    .map(|(id, kf)| json!({"id": id.to_hex(), "current": *id == repo.key_id(), "created": kf.created.to_rfc3339(),
                        "hostname": kf.hostname, "username": kf.username, "kind": kf.kind, "unlock": unlocked_by(kf)}))
                    .collect();
                return print_json(&v).map(|_| 0);
            }
            outln!(
                " {:<8}  {:<10}  {:<19}  {:<16}  {:<10}  {}",
                "ID",
                "User",
                "Created",
                "Host",
                "Kind",
                "Unlocked by"
            )?;
            for (id, kf) in keys {
                let cur = if id == repo.key_id() { '*' } else { ' ' };
                outln!(
                    "{cur}{:<8}  {:<10}  {:<19}  {:<16}  {:<10}  {}",
                    id.short(),
                    kf.username,
                    local_time(&kf.created),
                    kf.hostname,
                    kf.kind,
                    unlocked_by(&kf)
                )?;
            }
        }
        KeyCommand::Add {
            new_password_file,
            write_only,
        } => {
            let pw = new_password(g, new_password_file.as_deref(), false)?;
            let id = if write_only {
                repo.add_write_only_key(&pw)?
            } else {
                repo.add_key(&pw)?
            };
            let kind = if write_only { "write-only " } else { "" };
            if g.json {
                print_json(&json!({"id": id.to_hex(), "write_only": write_only}))?;
            } else if !g.quiet {
                outln!("added {kind}key {}", id.short())?;
            }
        }
        KeyCommand::Remove { id } => {
            let kid = repo.find_key(&id)?;
            repo.remove_key(&kid)?;
            if !g.quiet {
                outln!("removed key {}", kid.short())?;
            }
        }
        KeyCommand::Passwd { new_password_file } => {
            let pw = new_password(g, new_password_file.as_deref(), false)?;
            let id = repo.change_password(&pw)?;
            if !g.quiet {
                outln!("password changed; the key in use is now {}", id.short())?;
            }
        }
    }
    Ok(0)
}

pub fn stats(g: &Global) -> Result<u8> {
    let repo = open_indexed(g)?;
    let s = coffer_core::stats::repo_stats(&repo)?;
    if g.json {
        let mut v = serde_json::to_value(&s)?;
        v["dedup_ratio"] = json!(s.dedup_ratio());
        v["compression_ratio"] = json!(s.compression_ratio());
        return print_json(&v).map(|_| 0);
    }
    outln!(
        "repository {} at {}",
        repo.config().id.short(),
        repo.backend().location()
    )?;
    outln!("  snapshots:         {}", s.snapshots)?;
    outln!(
        "  files (all snaps): {} files, {}",
        s.snapshot_files,
        bytes(s.snapshot_bytes)
    )?;
    outln!(
        "  unique data:       {} in {} chunks ({} trees)",
        bytes(s.unique_bytes),
        s.data_blobs,
        s.tree_blobs
    )?;
    outln!(
        "  stored:            {} in {} packs, {} index files",
        bytes(s.stored_bytes),
        s.packs,
        s.index_files
    )?;
    if s.parity_bytes > 0 {
        outln!(
            "  parity:            {} ({:.1}% of the packs)",
            bytes(s.parity_bytes),
            s.parity_bytes as f64 * 100.0 / s.stored_bytes.max(1) as f64
        )?;
    }
    outln!(
        "  deduplication:     {:.2}x    compression: {:.2}x",
        s.dedup_ratio(),
        s.compression_ratio()
    )?;
    Ok(0)
}

pub fn parse_percent(s: &str) -> Result<f64> {
    let v: f64 = s
        .trim_end_matches('%')
        .trim()
        .parse()
        .with_context(|| format!("{s:?} is not a percentage"))?;
    if !(0.0..=100.0).contains(&v) {
        bail!("{s:?}: a percentage must be between 0% and 100%");
    }
    Ok(v / 100.0)
}

pub fn prune(g: &Global, a: &crate::cli::PruneArgs) -> Result<u8> {
    let repo = open(g)?;
    let opts = coffer_core::prune::PruneOptions {
        max_unused: parse_percent(&a.max_unused)?,
        grace_secs: coffer_core::duration::parse(&a.grace, "--grace")?.as_secs() as i64,
        dry_run: a.dry_run,
    };
    let progress = CliProgress::new(!g.quiet && !g.json, "pruned");
    let r = coffer_core::prune::prune(repo, &opts, &progress);
    progress.finish();
    let r = r?;
    if g.json {
        print_json(&r)?;
        return Ok(0);
    }
    if !g.quiet {
        outln!(
            "{} snapshots use {} blobs; {} blobs ({}) are unused",
            r.snapshots,
            r.blobs_used,
            r.blobs_unused,
            bytes(r.bytes_unused)
        )?;
        let verb = if a.dry_run { "would condemn" } else { "condemned" };
        outln!(
            "{verb} {} packs ({} to repack, {} copied, {} bundled again)",
            r.packs_condemned,
            r.packs_repacked,
            bytes(r.bytes_repacked),
            bytes(r.bytes_rebundled)
        )?;
        if !a.dry_run {
            outln!(
                "deleted {} packs ({}), rescued {}",
                r.packs_deleted,
                bytes(r.bytes_deleted),
                r.packs_rescued
            )?;
        }
        for d in &r.deferred {
            outln!("deferred: {d}")?;
        }
        if r.packs_locked > 0 {
            outln!(
                "{} condemned packs ({}) are locked until {} (S3 Object Lock): left in place, a prune after that deletes them",
                r.packs_locked,
                bytes(r.bytes_locked),
                r.locked_until.as_deref().unwrap_or("?")
            )?;
        }
        if r.locks_extended > 0 {
            outln!(
                "extended the retention lock of {} files still in use",
                r.locks_extended
            )?;
        }
        if r.packs_vouched > 0 {
            outln!(
                "{} packs only write-only keys had listed were verified and are now vouched for (every client may deduplicate against them)",
                r.packs_vouched
            )?;
        }
        if r.packs_unverified > 0 {
            outln!(
                "{} packs only write-only keys list did not verify: kept as listed, not vouched for (see the warnings; `coffer check --read-data` names them)",
                r.packs_unverified
            )?;
        }
        if r.packs_unindexed > 0 {
            outln!("{} packs are in no index (a backup in progress, or an interrupted one; the next backup adopts them)", r.packs_unindexed)?;
        }
    }
    Ok(0)
}

/// Rollback detection: compare a complete snapshot listing with what this client saw before
/// (coffer_core::seen) and say what is missing; then remember the listing. `forgot`: the
/// snapshots this client's own forget just removed (not said).
pub fn watch_rollback(
    repo: &Repository,
    listing: &[(coffer_core::format::SnapshotId, Snapshot)],
    forgot: &[coffer_core::format::SnapshotId],
) {
    let Some(dir) = cache_dir() else { return };
    let path = coffer_core::seen::record_path(&dir, &repo.config().id);
    let mut seen = coffer_core::seen::Seen::load(&path);
    let now = chrono::Utc::now().timestamp();
    for w in seen.forgotten(listing, forgot, now) {
        eprintln!("warning: {w}");
        crate::report::warning(&w);
    }
    // (a record that cannot be written only means the next run has less to compare with)
    let _ = seen.save(&path);
}

/// The index's memory budget (`--index-memory`, 256 MiB unless given): past it, its table
/// moves to unlinked files under the cache directory (else straight in the temporary
/// directory: no name there another user could take first).
pub fn index_spill(g: &Global) -> coffer_core::index::Spill {
    const DEFAULT: u64 = 256 << 20;
    let dir = cache_dir().map_or_else(std::env::temp_dir, |d| d.join("index"));
    let memory = g.index_memory.unwrap_or(DEFAULT);
    tracing::debug!(target: "coffer_limits", "index kept in memory under {memory} bytes");
    coffer_core::index::Spill::new(dir, memory)
}

/// Local cache directory: `$COFFER_CACHE_DIR`, else `$XDG_CACHE_HOME/coffer`, else `~/.cache/coffer`.
pub fn cache_dir() -> Option<std::path::PathBuf> {
    if let Some(d) = std::env::var_os("COFFER_CACHE_DIR") {
        return Some(d.into());
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(std::path::PathBuf::from(d).join("coffer"));
    }
    std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/coffer"))
}

pub fn check(g: &Global, a: crate::cli::CheckArgs) -> Result<u8> {
    use coffer_core::check::{CheckOptions, ReadData};
    let repo = open(g)?;
    let read_data = if a.read_data {
        Some(ReadData::All)
    } else {
        a.read_data_subset
            .as_deref()
            .map(str::parse::<ReadData>)
            .transpose()?
    };
    let opts = CheckOptions {
        read_data,
        cache_dir: cache_dir(),
    };
    let progress = CliProgress::new(!g.quiet && !g.json, "checked");
    let r = coffer_core::check::check(repo, &opts, &progress);
    progress.finish();
    let r = r?;
    for e in &r.errors {
        crate::report::error(e);
    }
    if g.json {
        print_json(&r)?;
    } else {
        for w in &r.warnings {
            eprintln!("warning: {w}");
        }
        for e in &r.errors {
            eprintln!("error: {e}");
        }
        for af in &r.affected {
            eprintln!("snapshot {} is damaged:", &af.snapshot[..8]);
            for p in &af.paths {
                eprintln!("  {p}");
            }
        }
        if !g.quiet {
            outln!(
                "checked {} snapshots, {} trees, {} packs; read {} packs ({})",
                r.snapshots,
                r.trees,
                r.packs,
                r.packs_read,
                bytes(r.bytes_read)
            )?;
            if let Some(c) = r.coverage {
                let age = r
                    .oldest_verification_secs
                    .map(|s| format!(", oldest verification {} h ago", s / 3600))
                    .unwrap_or_default();
                outln!("data verified so far: {:.0}% of packs{age}", c * 100.0)?;
            }
            if r.ok() {
                outln!("no errors were found")?;
            }
        }
    }
    if !r.ok() {
        bail!(
            "check found {} errors; damaged: {}",
            r.errors.len(),
            r.damaged.join(", ")
        );
    }
    Ok(0)
}

/// `coffer repair undelete`: needs neither the password nor a readable repository (its
/// config and keys may be what is hidden).
fn undelete(g: &Global) -> Result<u8> {
    let Some(loc) = g.repo.as_deref() else {
        bail!("no repository given: use -r/--repo or set COFFER_REPOSITORY");
    };
    let Some(rest) = loc.strip_prefix("s3:") else {
        bail!("{loc}: `repair undelete` is for S3 repositories (delete markers of a versioned bucket)");
    };
    let s3 = coffer_backends::S3Location::parse(rest)
        .and_then(coffer_backends::S3Backend::open)
        .map_err(|e| anyhow::anyhow!("repository {loc:?}: {e}"))?;
    let back = s3.undelete()?;
    if g.json {
        print_json(
            &back
                .iter()
                .map(|(k, n)| coffer_backends::display_name(*k, n))
                .collect::<Vec<_>>(),
        )?;
    } else if !g.quiet {
        for (k, n) in &back {
            outln!("undeleted {}", coffer_backends::display_name(*k, n))?;
        }
        outln!("{} files brought back", back.len())?;
        if back.iter().any(|(k, _)| *k == coffer_core::FileKind::Pack) {
            outln!("if index files were deleted too, run `coffer repair index` next")?;
        }
    }
    Ok(0)
}

pub fn repair(g: &Global, c: crate::cli::RepairCommand) -> Result<u8> {
    let progress = CliProgress::new(!g.quiet && !g.json, "repaired");
    match c {
        crate::cli::RepairCommand::Index => {
            let r = coffer_core::repair::repair_index(open(g)?, &progress);
            progress.finish();
            let r = r?;
            if g.json {
                print_json(&r)?;
            } else if !g.quiet {
                if r.changed {
                    outln!(
                        "index rebuilt from {} packs; {} old index files removed",
                        r.packs,
                        r.index_files_removed
                    )?;
                } else {
                    outln!("the index matches the {} packs; nothing changed", r.packs)?;
                }
                if !r.packs_unreadable.is_empty() {
                    outln!(
                        "{} packs are damaged and were left out; run `coffer repair snapshots`",
                        r.packs_unreadable.len()
                    )?;
                }
            }
        }
        crate::cli::RepairCommand::Snapshots { dry_run, forget } => {
            let mut repo = open(g)?.load_index()?;
            let r = coffer_core::repair::repair_snapshots(&mut repo, dry_run, forget, &progress);
            progress.finish();
            let r = r?;
            if g.json {
                print_json(&r)?;
            } else if !g.quiet {
                for d in &r.damaged_paths {
                    outln!("damaged: {d}")?;
                }
                let verb = if dry_run { "would repair" } else { "repaired" };
                outln!("{verb} {} of {} snapshots", r.repaired.len(), r.snapshots)?;
                if !r.unreadable.is_empty() {
                    let what = if forget && !dry_run {
                        "removed"
                    } else {
                        "left in place (use --forget to remove)"
                    };
                    outln!("{} unreadable snapshot files {what}", r.unreadable.len())?;
                }
            }
        }
        crate::cli::RepairCommand::Packs { dry_run, packs } => {
            let only: Vec<coffer_core::format::PackId> = packs
                .iter()
                .filter_map(|p| coffer_core::format::Id::from_hex(p).ok())
                .map(coffer_core::format::PackId)
                .collect();
            let r = coffer_core::repair::repair_packs(open(g)?, &only, dry_run, &progress);
            progress.finish();
            let r = r?;
            if g.json {
                print_json(&r)?;
            } else if !g.quiet {
                let would = |done: &str, would: &str| {
                    if dry_run {
                        would.to_string()
                    } else {
                        done.to_string()
                    }
                };
                for p in &r.repaired {
                    outln!("{} {p} from its parity", would("repaired", "would repair"))?;
                }
                for p in &r.unrepairable {
                    eprintln!("error: {p}");
                }
                outln!(
                    "{} packs read: {} {}, {} not repairable; parity files {}: {}, {}: {}",
                    r.packs,
                    r.repaired.len(),
                    would("repaired", "to repair"),
                    r.unrepairable.len(),
                    would("written", "to write"),
                    r.parity_written,
                    would("rewritten", "to rewrite"),
                    r.parity_rewritten
                )?;
            }
            if !r.ok() {
                bail!(
                    "{} damaged packs cannot be repaired from parity; `coffer repair snapshots` salvages what the snapshots still hold",
                    r.unrepairable.len()
                );
            }
        }
        // the password is not needed (nor maybe readable): config and keys may be hidden
        crate::cli::RepairCommand::Undelete => {
            progress.finish();
            return undelete(g);
        }
    }
    Ok(0)
}

pub fn dump(g: &Global, a: crate::cli::DumpArgs) -> Result<u8> {
    let repo = open_indexed(g)?;
    let (_, snap) = resolve_snapshot(&repo, &a.snapshot, &a.filter)?;
    let node = match find_path(&repo, snap.tree, &a.path)? {
        Found::Node(n) if n.kind == NodeKind::File => n,
        _ => bail!(
            "{}: not a file in the snapshot (use `coffer restore` for directories)",
            a.path
        ),
    };
    let mut out = std::io::stdout().lock();
    for id in &node.content {
        let data = repo.read_blob(id, coffer_core::format::BlobKind::Data)?;
        out.write_all(&data).context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")?;
    warn_read_through_parity(&repo);
    if let Some(e) = &node.error {
        eprintln!("warning: {}: {e}", a.path);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use coffer_core::format::{Snapshot, Summary, FORMAT_VERSION};
    use coffer_core::memory::MemoryBackend;
    use coffer_core::{Backend, InitOptions, Repository};

    use super::resolve_snapshot;
    use crate::cli::SnapshotFilter;

    /// A snapshot dated in the future (a wrong clock, or one a write-only key forged) would
    /// stay `latest` until that day: it is passed over.
    #[test]
    fn latest_passes_over_a_snapshot_from_the_future() {
        let b: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let repo = Repository::init(b, b"pw", &InitOptions::default()).unwrap();
        let snap = |time: chrono::DateTime<chrono::FixedOffset>, host: &str| Snapshot {
            version: FORMAT_VERSION,
            time,
            hostname: host.into(),
            username: String::new(),
            paths: vec!["/srv".into()],
            tags: vec![],
            excludes: vec![],
            tree: coffer_core::format::BlobId(coffer_core::format::Id([0; 32])),
            parent: None,
            program_version: "test".into(),
            summary: Summary::default(),
            databases: vec![],
            images: vec![],
            original: None,
            key: None,
            sealed_by_write_only: false,
        };
        let now = chrono::Utc::now().fixed_offset();
        let (honest, _) = repo
            .save_snapshot(&snap(now - chrono::Duration::hours(1), "web1"))
            .unwrap();
        repo.save_snapshot(&snap(now + chrono::Duration::days(3650), "web1"))
            .unwrap();
        repo.save_snapshot(&snap(now + chrono::Duration::minutes(2), "db1"))
            .unwrap();
        let web1 = SnapshotFilter {
            host: vec!["web1".into()],
            ..Default::default()
        };
        let (id, _) = resolve_snapshot(&repo, "latest", &web1).unwrap();
        assert_eq!(id, honest);
        // within the allowed skew, the newest is still latest
        let (_, s) = resolve_snapshot(&repo, "latest", &SnapshotFilter::default()).unwrap();
        assert_eq!(s.hostname, "db1");
        // latest~N counts back among the matching ones (the future one is not counted)
        let (id, _) = resolve_snapshot(&repo, "latest~1", &SnapshotFilter::default()).unwrap();
        assert_eq!(id, honest);
        let (id, _) = resolve_snapshot(&repo, "latest~0", &web1).unwrap();
        assert_eq!(id, honest);
        let e = resolve_snapshot(&repo, "latest~1", &web1).unwrap_err();
        assert!(e.to_string().contains("only 1 snapshot(s) match"), "{e}");
        let e = resolve_snapshot(&repo, "latest~x", &web1).unwrap_err();
        assert!(e.to_string().contains("whole number"), "{e}");
    }
}
