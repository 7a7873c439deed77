//! `coffer backup`.

use std::io::{IsTerminal, Write};

use anyhow::{Context, Result};
use coffer_core::{BackupOptions, ParentChoice};
use serde_json::json;

use super::{outln, print_json};
use crate::cli::{BackupArgs, Global};
use crate::ui::{bytes, CliProgress};
use crate::EXIT_INCOMPLETE;

/// Patterns from an exclude file: one per line, blank lines and `#` comments ignored.
fn read_exclude_file(p: &std::path::Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(p).with_context(|| format!("cannot read exclude file {}", p.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

pub fn run(g: &Global, a: BackupArgs) -> Result<u8> {
    Ok(saved(g, a)?.0)
}

/// [`run`], and the id of the snapshot it saved.
pub fn saved(g: &Global, a: BackupArgs) -> Result<(u8, coffer_core::format::SnapshotId)> {
    // a deep tree holds a descriptor per level in the walk and another in the walk-ahead, and
    // the read-ahead a few more: where the soft limit is 1024, no file may be left out of a
    // snapshot as "cannot open"
    super::raise_open_files(1 << 16);
    // a job's retention removes that job's snapshots: a hand-made one must not pass for one
    if let (None, Some(t)) = (&a.job, a.tag.iter().find(|t| t.starts_with("job:"))) {
        return Err(coffer_core::Error::Usage(format!(
            "tag {t:?}: job:... tags mark the snapshots of configured jobs (`backup --job NAME`)"
        ))
        .into());
    }
    let mut excludes = a.exclude.clone();
    for f in &a.exclude_file {
        excludes.extend(read_exclude_file(f)?);
    }
    // The file system is listed while the key is derived and the index loaded (a re-backup's
    // walk then only compares); a failure here is reported by the backup itself.
    let prescan = (!a.force && !a.paths.is_empty())
        .then(|| coffer_core::Prescan::start(&a.paths, &excludes, a.exclude_caches, a.one_file_system).ok())
        .flatten();
    let mut repo = super::open(g)?;
    // A write-only key cannot read the parent snapshot: its change cache stands in for it,
    // and names the index files it wrote itself (trusted for deduplication like vouched ones).
    if !repo.key().can_read() && !repo.key().can_check_vouches() {
        eprintln!(
            "warning: this write-only key predates vouched index files: it deduplicates only against what it stored itself; \
             replace it (`coffer key add --write-only` with a full key, then `coffer key remove` of this one)"
        );
    }
    let send_log = match (repo.key().can_read(), super::cache_dir()) {
        (false, Some(dir)) => {
            let abs = a
                .paths
                .iter()
                .map(|p| coffer_core::backup::absolute_clean(p))
                .collect::<coffer_core::Result<Vec<_>>>()?;
            let mut log = coffer_core::sendlog::SendLog::open(&dir, &repo, &abs);
            if let Some(w) = &log.discarded {
                eprintln!("warning: {w}");
            }
            if a.force {
                log.forget_files();
            }
            repo.trust_own_index_files(log.own_index_files().iter().copied());
            Some(std::sync::Arc::new(log))
        }
        _ => None,
    };
    let cached_files = send_log.as_ref().map_or(0, |l| l.len());
    let mut repo = repo.load_index_leased("backup")?;
    crate::release_free_memory();
    // every database source is checked (tool, server, database) before anything is stored,
    // and every device opened
    let sources = super::db::sources(&a)?;
    let mut images = Vec::new();
    for d in &a.device {
        images.push(coffer_core::image::ImageInput::device(d)?);
    }
    if let Some(name) = &a.stdin {
        if std::io::stdin().is_terminal() {
            return Err(coffer_core::Error::Usage(format!(
                "--stdin {name}: standard input is a terminal; pipe the stream in (`cmd | coffer backup --stdin {name}`)"
            ))
            .into());
        }
        images.push(coffer_core::image::ImageInput::stream(
            name,
            Box::new(std::io::stdin()),
        )?);
    }
    let parent = if a.force {
        ParentChoice::None
    } else if let Some(p) = &a.parent {
        ParentChoice::Id(repo.find_snapshot(p)?.0)
    } else {
        ParentChoice::Auto
    };
    let opts = BackupOptions {
        paths: a.paths.clone(),
        excludes,
        exclude_caches: a.exclude_caches,
        one_file_system: a.one_file_system,
        tags: a.tag.iter().filter(|t| !t.is_empty()).cloned().collect(),
        hostname: a.host.clone(),
        parent,
        threads: a.threads,
        compression: a
            .compression
            .as_deref()
            .map(|c| super::parse_compression(c, None))
            .transpose()?,
        send_log,
        // (the process ends after this run)
        last_use: true,
    };
    let progress = CliProgress::new(!g.quiet && !g.json, "backed up").listing_files(if g.json || g.quiet {
        0
    } else {
        g.verbose
    });
    let r = coffer_core::backup_prescanned(&mut repo, &opts, sources, images, prescan, &progress);
    progress.finish();
    let out = r?;
    // the repository as it is after this backup, against what this client saw before (a
    // write-only key reads no snapshot: nothing to compare)
    if repo.key().can_read() {
        if let Ok((list, bad)) = repo.list_snapshots_readable() {
            if bad.is_empty() {
                super::watch_rollback(&repo, &list, &[]);
            }
        }
    }
    let s = &out.snapshot.summary;
    crate::report::backup(
        &out.id.to_hex(),
        s.files_new + s.files_changed + s.files_unchanged,
        s.bytes_read,
        s.bytes_stored,
        s.bytes_total,
    );
    // files changed in place (not new ones: a new photo gallery is not an attack), unless
    // --force read every file again
    if !a.force {
        crate::report::backup_changes(s.files_changed, s.bytes_new_raw);
    }
    let secs = match (s.start, s.end) {
        (Some(a), Some(b)) => (b - a).num_milliseconds() as f64 / 1000.0,
        _ => 0.0,
    };
    if g.json {
        print_json(&json!({
            "message_type": "summary",
            "snapshot_id": out.id.to_hex(),
            "parent": out.snapshot.parent.map(|p| p.to_hex()),
            "files_new": s.files_new,
            "files_changed": s.files_changed,
            "files_unchanged": s.files_unchanged,
            "dirs": s.dirs,
            "errors": s.errors,
            "bytes_read": s.bytes_read,
            "bytes_total": s.bytes_total,
            "blobs_new": s.blobs_new,
            "bytes_new": s.bytes_new_raw,
            "bytes_stored": s.bytes_stored,
            "duration_seconds": secs,
            "databases": out.snapshot.databases.iter().map(|d| d.id()).collect::<Vec<_>>(),
            "images": out.snapshot.images,
        }))?;
    } else if !g.quiet {
        if let Some(p) = out.snapshot.parent {
            outln!("using parent snapshot {}", p.short())?;
        } else if cached_files > 0 {
            outln!("using the change cache of the last run ({cached_files} files)")?;
        }
        outln!(
            "files:  {} new, {} changed, {} unchanged ({} directories)",
            s.files_new,
            s.files_changed,
            s.files_unchanged,
            s.dirs
        )?;
        outln!(
            "read:   {} of {} total",
            bytes(s.bytes_read),
            bytes(s.bytes_total)
        )?;
        outln!(
            "added:  {} new data, {} stored after compression",
            bytes(s.bytes_new_raw),
            bytes(s.bytes_stored)
        )?;
        if !out.snapshot.databases.is_empty() {
            let list: Vec<String> = out
                .snapshot
                .databases
                .iter()
                .map(|d| format!("{} ({})", d.id(), bytes(d.size)))
                .collect();
            outln!("dumped: {}", list.join(", "))?;
        }
        for i in &out.snapshot.images {
            outln!(
                "image:  {} from {}: {} ({} of it zeros)",
                i.path,
                i.source,
                bytes(i.size),
                bytes(i.zero_bytes)
            )?;
        }
        outln!("took:   {secs:.1} s")?;
        outln!("snapshot {} saved", out.id.short())?;
    }
    if s.errors > 0 {
        eprintln!(
            "warning: {} files, directories, databases or images could not be read completely; the snapshot lacks them",
            s.errors
        );
        return Ok((EXIT_INCOMPLETE, out.id));
    }
    // excludes that leave no file (e.g. `--exclude '*'`) are almost surely a mistake: the
    // snapshot is saved, and the exit code says it is not what was wanted
    let files = s.files_new + s.files_changed + s.files_unchanged;
    if files == 0
        && out.snapshot.databases.is_empty()
        && out.snapshot.images.is_empty()
        && !out.snapshot.excludes.is_empty()
    {
        eprintln!(
            "warning: the excludes ({}) left no file to back up; snapshot {} holds directories only",
            out.snapshot.excludes.join(", "),
            out.id.short()
        );
        return Ok((EXIT_INCOMPLETE, out.id));
    }
    Ok((0, out.id))
}
