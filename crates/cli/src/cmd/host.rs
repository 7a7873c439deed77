//! `coffer restore-host HOST [SNAPSHOT] --target DIR`: a whole machine back from its snapshot,
//! the "VPS lost at the provider" recovery. Every backed-up path of the host's snapshot goes
//! below DIR (a mounted new root, or `/` on the new machine itself, with `--yes`); then the
//! database users and roles the snapshot holds are applied to this machine's running MariaDB
//! and PostgreSQL (existing ones kept), then every database is created and restored (one that
//! exists here already is skipped, and said so); SQLite copies replace the files the paths
//! restored. The plan is shown first (`--dry-run` shows only it); the report at the end says
//! what was restored, how long it took, and everything skipped and why (exit 3 if anything
//! was).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use coffer_core::format::{DatabaseItem, DatabaseItemKind, Snapshot};
use coffer_core::source::{find_item_node, NodeReader};
use coffer_core::RestoreOptions;
use serde::Serialize;

use super::db::{mysql_conn, pg_conn};
use super::{open_indexed, outln, print_json};
use crate::cli::{Global, RestoreHostArgs, SnapshotFilter};
use crate::ui::{bytes, local_time, CliProgress};

/// Files that belong to the machine rather than to what it serves: restored onto `/` only
/// with `--include-machine-files` (an old fstab or network setup can leave a new VPS
/// unbootable or unreachable).
const MACHINE_FILES: &[&str] = &[
    "/etc/fstab",
    "/etc/crypttab",
    "/etc/mtab",
    "/etc/machine-id",
    "/var/lib/dbus/machine-id",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/network/interfaces",
    "/etc/network/interfaces.d",
    "/etc/netplan",
    "/etc/systemd/network",
    "/etc/NetworkManager/system-connections",
    "/etc/cloud",
    "/etc/default/grub",
    "/boot",
];

/// Never written onto a running system's `/`: kernel file systems, and the data directories
/// of the database servers that are running (databases come back from their dumps).
const NEVER_ONTO_ROOT: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/var/lib/mysql",
    "/var/lib/postgresql",
    "/var/lib/pgsql",
];

#[derive(Debug, Serialize)]
struct DbOut {
    item: String,
    /// `restored`, `applied`, `skipped`, `failed` (in a dry run: `planned` or `skipped`).
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<String>,
    bytes: u64,
}

/// What `restore-host --json` prints.
#[derive(Debug, Serialize)]
struct Report {
    message_type: &'static str,
    dry_run: bool,
    host: String,
    snapshot_id: String,
    target: String,
    paths: Vec<String>,
    files: u64,
    dirs: u64,
    links: u64,
    bytes: u64,
    /// Paths left as this machine has them, and why.
    kept: Vec<String>,
    databases: Vec<DbOut>,
    /// Everything skipped or incomplete, one line each.
    skipped: Vec<String>,
    duration_seconds: f64,
}

/// Where a snapshot path lands below the target.
fn below(target: &Path, p: &str) -> PathBuf {
    target.join(p.trim_start_matches('/'))
}

/// Where an SQLite item (named by its absolute path) is written: below the target, its name
/// absolute and made of plain components only (a forged `..` stays out), and not one of the
/// places kept onto `/`.
fn sqlite_dest(target: &Path, onto_root: bool, name: &str) -> std::result::Result<PathBuf, String> {
    let p = Path::new(name);
    let plain = p.is_absolute()
        && p.components()
            .skip(1)
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        && p.components().count() > 1;
    if !plain {
        return Err(format!("{name:?} is not a plain absolute path: not written"));
    }
    if onto_root
        && NEVER_ONTO_ROOT
            .iter()
            .chain(MACHINE_FILES)
            .any(|k| p.starts_with(k))
    {
        return Err(format!(
            "{name} is in a place kept as this machine has it: not written"
        ));
    }
    Ok(below(target, name))
}

/// Globals first (users and roles the databases' grants name), then databases, each engine
/// in the snapshot's order.
fn db_order(snap: &Snapshot) -> Vec<&DatabaseItem> {
    let mut items: Vec<&DatabaseItem> = snap.databases.iter().collect();
    items.sort_by_key(|d| (d.kind != DatabaseItemKind::Globals, d.engine == "sqlite"));
    items
}

pub fn run(g: &Global, a: RestoreHostArgs) -> Result<u8> {
    let clock = Instant::now();
    let repo = open_indexed(g)?;
    let filter = SnapshotFilter {
        host: vec![a.host.clone()],
        tag: Vec::new(),
        path: Vec::new(),
    };
    let spec = a.snapshot.clone().unwrap_or_else(|| "latest".into());
    let (sid, snap) = super::resolve_snapshot_passing(&repo, &spec, &filter, super::site::saved_by_a_restore)
        .map_err(|e| {
            if spec == "latest" {
                e.context(format!(
                    "no snapshot of host {:?} (`coffer snapshots` lists the hosts)",
                    a.host
                ))
            } else {
                e
            }
        })?;
    // `/` by what it is, not how it is written (`--target .` in /, `/mnt/..`)
    let onto_root =
        a.target == Path::new("/") || std::fs::canonicalize(&a.target).is_ok_and(|c| c == Path::new("/"));
    if snap.sealed_by_write_only && !a.apply_globals {
        // every file restored is that key's word (a stolen key could have written it)
        eprintln!(
            "warning: snapshot {} was sealed by a write-only key: what it restores is that key's word; read the plan (--dry-run) first",
            sid.short()
        );
    }
    if a.apply_globals && snap.sealed_by_write_only {
        return Err(coffer_core::Error::Usage(format!(
            "snapshot {} was sealed by a write-only key: its users, grants and roles are that key's word \
             (a stolen key could make itself a superuser); they are not applied. Review them with \
             `coffer restore-db {} mysql-globals --to-file -` and apply them by hand",
            sid.short(),
            sid.short()
        ))
        .into());
    }
    let mut excludes: Vec<String> = Vec::new();
    let mut kept = Vec::new();
    if onto_root {
        let present = |p: &str| {
            snap.paths.iter().any(|s| {
                p == s
                    || p.starts_with(&format!("{}/", s.trim_end_matches('/')))
                    || s.starts_with(&format!("{p}/"))
            })
        };
        for p in NEVER_ONTO_ROOT {
            excludes.push(p.to_string());
            if present(p) {
                kept.push(format!(
                    "{p} (a running system's; databases come from their dumps)"
                ));
            }
        }
        if !a.include_machine_files {
            for p in MACHINE_FILES {
                excludes.push(p.to_string());
                if present(p) {
                    kept.push(format!(
                        "{p} (this machine's; --include-machine-files restores it)"
                    ));
                }
            }
        }
    }
    let opts = |dry_run: bool| RestoreOptions {
        target: a.target.clone(),
        includes: Vec::new(),
        excludes: excludes.clone(),
        dry_run,
        overwrite: coffer_core::restore::Overwrite::Always,
        delete: false,
        delete_within: snap.paths.clone(),
        delete_keeps: snap.excludes.clone(),
        verify: false,
        numeric_owner: false,
        within: None,
    };

    // the plan: what the files come to, what each database would do
    let plan = coffer_core::restore(&repo, snap.tree, "/", &opts(true), &coffer_core::NoProgress)?;
    let (my, pg) = (mysql_conn(&a.db), pg_conn(&a.db));
    let mut dbs: Vec<(&DatabaseItem, Option<String>)> = Vec::new();
    if !a.no_databases {
        for d in db_order(&snap) {
            // (a server that is not there, a tool missing: that item is not done, the rest is)
            let exists = match (d.engine.as_str(), d.kind) {
                (_, DatabaseItemKind::Globals) if !a.apply_globals => Err(
                    "users, grants and roles are not applied without --apply-globals (review them first: \
                     `coffer restore-db SNAPSHOT ITEM --to-file -`)"
                        .to_string(),
                ),
                (_, DatabaseItemKind::Globals) => Ok(false),
                ("mysql", _) => {
                    coffer_db::mysql_exists(&my, &d.name).map_err(|e| format!("cannot check the server: {e}"))
                }
                ("postgres", _) => coffer_db::postgres_exists(&pg, &d.name)
                    .map_err(|e| format!("cannot check the server: {e}")),
                ("sqlite", _) => sqlite_dest(&a.target, onto_root, &d.name).map(|_| false),
                (e, _) => Err(format!("unknown database engine {e:?}")),
            };
            dbs.push((
                d,
                match exists {
                    Ok(true) => Some("exists on this server (kept as it is)".to_string()),
                    Ok(false) => None,
                    Err(why) => Some(why),
                },
            ));
        }
    }
    let human = !g.quiet && !g.json;
    if human || (a.dry_run && !g.json) {
        outln!(
            "restore-host {}: snapshot {} of {} ({}), paths {}",
            a.host,
            sid.short(),
            snap.hostname,
            local_time(&snap.time),
            snap.paths.join(" ")
        )?;
        outln!(
            "  files      {} files, {} directories, {} links, {} -> {}",
            plan.files,
            plan.dirs,
            plan.links,
            bytes(plan.bytes),
            a.target.display()
        )?;
        for k in &kept {
            outln!("  kept       {k}")?;
        }
        for (d, skip) in &dbs {
            let what = match d.kind {
                DatabaseItemKind::Globals => {
                    "apply (users, grants and roles created; existing PostgreSQL roles altered as the dump says)"
                        .to_string()
                }
                _ if d.engine == "sqlite" => format!("copy to {}", below(&a.target, &d.name).display()),
                _ => "create and restore".to_string(),
            };
            match skip {
                Some(why) => outln!("  database   {}: skip: {why}", d.id())?,
                None => outln!("  database   {}: {what}", d.id())?,
            }
        }
        if a.no_databases && !snap.databases.is_empty() {
            outln!("  databases  {} left out (--no-databases)", snap.databases.len())?;
        }
    }
    if a.dry_run {
        if g.json {
            let planned = dbs
                .iter()
                .map(|(d, skip)| DbOut {
                    item: d.id(),
                    outcome: if skip.is_some() { "skipped" } else { "planned" },
                    why: skip.clone(),
                    bytes: d.size,
                })
                .collect();
            print_json(&report(
                &a,
                &sid,
                &snap,
                &plan,
                kept,
                planned,
                Vec::new(),
                clock,
                true,
            ))?;
        }
        return Ok(0);
    }
    if onto_root && !a.yes {
        return Err(coffer_core::Error::Usage(
            "restoring onto / replaces this machine's files with the snapshot's: read the plan above \
             (--dry-run shows it alone), then add --yes"
                .into(),
        )
        .into());
    }

    // the files
    let progress = CliProgress::new(human, "restored");
    let stats = coffer_core::restore(&repo, snap.tree, "/", &opts(false), &progress);
    progress.finish();
    let stats = stats?;
    let mut skipped = Vec::new();
    if stats.errors > 0 {
        skipped.push(format!(
            "{} files or directories not restored completely (see the warnings above)",
            stats.errors
        ));
    }

    // then users and roles, then databases
    let mut out = Vec::new();
    for (d, skip) in dbs {
        let id = d.id();
        if let Some(why) = skip {
            skipped.push(format!("{id}: {why}"));
            out.push(DbOut {
                item: id,
                outcome: "skipped",
                why: Some(why),
                bytes: 0,
            });
            continue;
        }
        let result: Result<(u64, &'static str, Option<String>)> = (|| {
            let node = find_item_node(&repo, snap.tree, &d.path)?;
            let mut reader = NodeReader::new(&repo, &node);
            let restored = |n: u64| -> Result<(u64, &'static str, Option<String>)> {
                if n != d.size {
                    anyhow::bail!(
                        "restored {n} bytes but the dump had {}; run `coffer check --read-data`",
                        d.size
                    );
                }
                Ok((n, "restored", None))
            };
            match (d.engine.as_str(), d.kind) {
                ("mysql", DatabaseItemKind::Globals) | ("postgres", DatabaseItemKind::Globals) => {
                    let r = if d.engine == "mysql" {
                        coffer_db::apply_mysql_globals(&my, d, &mut reader)?
                    } else {
                        coffer_db::apply_postgres_globals(&pg, d, &mut reader)?
                    };
                    let why = (!r.errors.is_empty()).then(|| {
                        format!(
                            "{} statement(s) failed, first: {}",
                            r.errors.len(),
                            r.errors.first().cloned().unwrap_or_default()
                        )
                    });
                    Ok((r.bytes, "applied", why))
                }
                ("mysql", _) => restored(coffer_db::restore_mysql(&my, d, &d.name, &mut reader)?),
                ("postgres", _) => restored(coffer_db::restore_postgres(
                    &pg,
                    d,
                    &d.name,
                    a.no_owner,
                    &mut reader,
                )?),
                ("sqlite", _) => {
                    // the consistent copy replaces what the paths restored (a live file's copy)
                    let dest = sqlite_dest(&a.target, onto_root, &d.name).map_err(anyhow::Error::msg)?;
                    let tmp = dest.with_file_name(format!(
                        ".{}.coffer-restore",
                        dest.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
                    ));
                    if let Some(dir) = dest.parent() {
                        std::fs::create_dir_all(dir)
                            .with_context(|| format!("creating {}", dir.display()))?;
                    }
                    // (what the files restored may hold symlinks: the place must still be below the target)
                    let inside = |p: &Path| match (std::fs::canonicalize(p), std::fs::canonicalize(&a.target))
                    {
                        (Ok(p), Ok(t)) => p.starts_with(t),
                        _ => false,
                    };
                    if !dest.parent().is_some_and(inside) {
                        anyhow::bail!(
                            "{} leads outside {} (through a symlink): not written",
                            dest.display(),
                            a.target.display()
                        );
                    }
                    let _ = std::fs::remove_file(&tmp);
                    let n = coffer_db::restore_sqlite(&tmp, &mut reader)?;
                    std::fs::rename(&tmp, &dest)
                        .with_context(|| format!("renaming into {}", dest.display()))?;
                    restored(n)
                }
                (e, _) => anyhow::bail!("unknown database engine {e:?}"),
            }
        })();
        match result {
            Ok((n, outcome, why)) => {
                if let Some(w) = &why {
                    skipped.push(format!("{id}: {w}"));
                }
                if human {
                    outln!(
                        "{outcome} {id} ({}){}",
                        bytes(n),
                        why.as_deref().map(|w| format!(": {w}")).unwrap_or_default()
                    )?;
                }
                out.push(DbOut {
                    item: id,
                    outcome,
                    why,
                    bytes: n,
                });
            }
            Err(e) => {
                // one database that does not restore does not stop the others
                let why = format!("{e:#}");
                eprintln!("coffer: {id}: {why}");
                crate::report::warning(&format!("{id}: restore failed"));
                skipped.push(format!("{id}: failed: {why}"));
                out.push(DbOut {
                    item: id,
                    outcome: "failed",
                    why: Some(why),
                    bytes: 0,
                });
            }
        }
    }
    crate::report::restored(&sid.to_hex(), stats.files, stats.bytes);
    let r = report(&a, &sid, &snap, &stats, kept, out, skipped, clock, false);
    if g.json {
        print_json(&r)?;
    } else if !g.quiet {
        outln!(
            "restored host {} from snapshot {} in {:.1} s: {} files, {} directories, {} links, {}; {} database item(s)",
            r.host,
            sid.short(),
            r.duration_seconds,
            r.files,
            r.dirs,
            r.links,
            bytes(r.bytes),
            r.databases.iter().filter(|d| d.outcome != "skipped" && d.outcome != "failed").count()
        )?;
        for s in &r.skipped {
            outln!("  not done: {s}")?;
        }
    }
    Ok(if r.skipped.is_empty() {
        0
    } else {
        crate::EXIT_INCOMPLETE
    })
}

#[allow(clippy::too_many_arguments)]
fn report(
    a: &RestoreHostArgs,
    sid: &coffer_core::format::SnapshotId,
    snap: &Snapshot,
    stats: &coffer_core::RestoreStats,
    kept: Vec<String>,
    databases: Vec<DbOut>,
    skipped: Vec<String>,
    clock: Instant,
    dry_run: bool,
) -> Report {
    Report {
        message_type: "summary",
        dry_run,
        host: a.host.clone(),
        snapshot_id: sid.to_hex(),
        target: a.target.display().to_string(),
        paths: snap.paths.clone(),
        files: stats.files,
        dirs: stats.dirs,
        links: stats.links,
        bytes: stats.bytes,
        kept,
        databases,
        skipped,
        duration_seconds: clock.elapsed().as_secs_f64(),
    }
}
