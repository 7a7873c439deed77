//! `coffer drill`: prove that restores work before they are needed. A random sample of the
//! snapshot's files is restored into a scratch directory and read back against the snapshot
//! (`restore --verify`), and every MySQL and PostgreSQL dump is restored into a scratch
//! database, dumped again and compared table by table with the dump (coffer-db's `drill`).
//! The scratch directory and databases are removed at the end. The run is reported (kind
//! `drill`, with the time it took: the measured recovery time), and a failed drill exits 1,
//! which the server turns into an incident like a failed backup.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use coffer_core::format::{DatabaseItemKind, NodeKind};
use coffer_core::source::{find_item_node, NodeReader};
use coffer_core::walk::walk;
use coffer_core::{IndexedRepository, RestoreOptions};
use serde::Serialize;

use super::{open_indexed, outln, print_json};
use crate::cli::{DrillArgs, Global};
use crate::ui::{bytes, local_time};

#[derive(Debug, Serialize)]
struct DbOut {
    item: String,
    ok: bool,
    tables: usize,
    rows: u64,
    bytes: u64,
    seconds: f64,
    problems: Vec<String>,
}

/// What `drill --json` prints.
#[derive(Debug, Serialize)]
struct Report {
    message_type: &'static str,
    ok: bool,
    snapshot_id: String,
    host: String,
    files_in_snapshot: u64,
    files_sampled: u64,
    files_verified: u64,
    bytes_restored: u64,
    databases: Vec<DbOut>,
    problems: Vec<String>,
    /// The whole drill, start to end: the measured recovery time of this sample.
    duration_seconds: f64,
}

/// A small fast random generator seeded from the OS (which files to take).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let mut b = [0u8; 8];
        coffer_core::crypto::random_bytes(&mut b);
        Rng(u64::from_le_bytes(b) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Up to `n` regular files of the snapshot, chosen uniformly (reservoir sampling), outside
/// `/.databases` and `/.images` (the databases are drilled whole; images are not files a
/// sample should stand for). Returns them and how many files there are.
fn sample(
    repo: &IndexedRepository,
    tree: coffer_core::format::BlobId,
    n: usize,
) -> Result<(Vec<(String, u64)>, u64)> {
    let mut rng = Rng::new();
    let mut chosen: Vec<(String, u64)> = Vec::new();
    let mut seen = 0u64;
    walk(repo, tree, b"", &mut |path, node| {
        if path == b"/.databases" || path == b"/.images" {
            return Ok(false);
        }
        if node.kind == NodeKind::File {
            // (a name that is not UTF-8 cannot be asked for by path: not a candidate)
            let Ok(p) = std::str::from_utf8(path) else {
                return Ok(true);
            };
            seen += 1;
            let p = (p.to_string(), node.size);
            if chosen.len() < n {
                chosen.push(p);
            } else {
                let j = rng.below(seen) as usize;
                if j < n {
                    chosen[j] = p;
                }
            }
        }
        Ok(true)
    })?;
    Ok((chosen, seen))
}

pub fn run(g: &Global, mut a: DrillArgs) -> Result<u8> {
    let clock = Instant::now();
    let mut filter = a.filter.clone();
    let mut g = g.clone();
    let g = &mut g;
    if let Some(name) = &a.job {
        // the job's newest snapshot of this host, its sample size, its database connections
        let cfg = super::job::load(g)?;
        let job = cfg
            .job(name)
            .map_err(|e| coffer_core::Error::Usage(e.to_string()))?;
        super::job::announce(&cfg, job);
        filter.host = vec![super::job::host(&cfg)];
        filter.tag = vec![job.tag()];
        if let Some(d) = &job.drill {
            a.files = d.files;
        }
        super::job::db_conn_args(&mut a.db, &job.db);
        super::job::job_rates(g, job);
    }
    let repo = open_indexed(g)?;
    // `latest` (said or not) is this machine's own unless --host says otherwise
    if filter.host.is_empty() && a.snapshot.as_deref().is_none_or(|s| s.starts_with("latest")) {
        filter.host.push(super::job::this_host(g));
    }
    let spec = a.snapshot.clone().unwrap_or_else(|| "latest".into());
    let (sid, snap) =
        super::resolve_snapshot_passing(&repo, &spec, &filter, super::site::saved_by_a_restore)?;
    let human = !g.quiet && !g.json;
    if human {
        outln!(
            "drill of snapshot {} ({}, {})",
            sid.short(),
            snap.hostname,
            local_time(&snap.time)
        )?;
    }
    let mut problems = Vec::new();

    // files: a sample restored into a scratch directory and read back
    // (a tree that does not read is what a drill is for: a finding, not the end of it)
    let (files, in_snapshot) = match sample(&repo, snap.tree, a.files as usize) {
        Ok(f) => f,
        Err(e) => {
            problems.push(format!("the snapshot's file tree: {e:#}"));
            (Vec::new(), 0)
        }
    };
    let scratch = scratch_dir()?;
    let files_clock = Instant::now();
    let (mut verified, mut restored_bytes) = (0u64, 0u64);
    for (i, (path, size)) in files.iter().enumerate() {
        let opts = RestoreOptions {
            target: scratch.join(i.to_string()),
            includes: Vec::new(),
            excludes: Vec::new(),
            dry_run: false,
            overwrite: coffer_core::restore::Overwrite::Always,
            delete: false,
            delete_within: Vec::new(),
            delete_keeps: Vec::new(),
            verify: true,
            numeric_owner: true,
            within: None,
        };
        match coffer_core::restore(&repo, snap.tree, path, &opts, &coffer_core::NoProgress) {
            Ok(s) if s.verified == 1 && s.errors == 0 => {
                verified += 1;
                restored_bytes += size;
                // (each one goes as soon as it is verified: a sample must not fill $TMPDIR)
                if let Err(e) = std::fs::remove_dir_all(scratch.join(i.to_string())) {
                    problems.push(format!("removing the restored sample {i}: {e}"));
                }
            }
            Ok(s) => problems.push(format!(
                "{path}: restored but not verified ({} errors, {} verified)",
                s.errors, s.verified
            )),
            Err(e) => problems.push(format!("{path}: {e}")),
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&scratch) {
        problems.push(format!("removing {}: {e}", scratch.display()));
    }
    // restorable, but the storage is damaged: said, not a failed drill
    super::warn_read_through_parity(&repo);
    if human {
        outln!(
            "files      {verified} of {} sampled from {in_snapshot} restored and verified ({}) in {:.1} s",
            files.len(),
            bytes(restored_bytes),
            files_clock.elapsed().as_secs_f64()
        )?;
    }

    // databases: each restored into a scratch database and compared with its dump
    let mut dbs = Vec::new();
    let drilled_dbs = snap
        .databases
        .iter()
        .any(|d| d.kind == DatabaseItemKind::Database && d.engine != "sqlite");
    if !a.no_databases && drilled_dbs && snap.sealed_by_write_only {
        // its dumps are that key's word, and restoring runs their SQL on this server
        problems.push(format!(
            "snapshot {} was sealed by a write-only key: its databases are not restored here (their SQL is that key's word)",
            sid.short()
        ));
    } else if !a.no_databases {
        let (my, pg) = (super::db::mysql_conn(&a.db), super::db::pg_conn(&a.db));
        for d in snap
            .databases
            .iter()
            .filter(|d| d.kind == DatabaseItemKind::Database && d.engine != "sqlite")
        {
            let t = Instant::now();
            let node = match find_item_node(&repo, snap.tree, &d.path) {
                Ok(n) => n,
                Err(e) => {
                    problems.push(format!("{}: {e}", d.id()));
                    continue;
                }
            };
            // (streamed from the repository twice: to restore it, and to compare with it)
            let mut open =
                || -> Box<dyn std::io::Read + Send + '_> { Box::new(NodeReader::new(&repo, &node)) };
            let result = match d.engine.as_str() {
                "mysql" => coffer_db::drill::drill_mysql(&my, d, &mut open),
                _ => coffer_db::drill::drill_postgres(&pg, d, &mut open),
            };
            let cleanup = result.as_ref().ok().and_then(|r| r.cleanup.clone());
            let out = match result {
                Ok(r) => DbOut {
                    item: d.id(),
                    ok: r.mismatched.is_empty() && r.bytes == d.size,
                    tables: r.tables,
                    rows: r.rows,
                    bytes: r.bytes,
                    seconds: t.elapsed().as_secs_f64(),
                    problems: if r.bytes != d.size {
                        vec![format!("restored {} bytes of a {}-byte dump", r.bytes, d.size)]
                    } else {
                        r.mismatched
                    },
                },
                Err(e) => DbOut {
                    item: d.id(),
                    ok: false,
                    tables: 0,
                    rows: 0,
                    bytes: 0,
                    seconds: t.elapsed().as_secs_f64(),
                    problems: vec![e.to_string()],
                },
            };
            for p in &out.problems {
                problems.push(format!("{}: {p}", out.item));
            }
            if let Some(c) = &cleanup {
                problems.push(format!("{}: {c}", out.item));
            }
            if human {
                outln!(
                    "database   {}: {} tables, {} rows {} ({:.1} s)",
                    out.item,
                    out.tables,
                    out.rows,
                    if out.ok {
                        "restored into a scratch database, identical to the dump"
                    } else {
                        "FAILED"
                    },
                    out.seconds
                )?;
            }
            dbs.push(out);
        }
    }
    // a drill that proved nothing did not pass
    let rows: u64 = dbs.iter().map(|d| d.rows).sum();
    let tables: usize = dbs.iter().map(|d| d.tables).sum();
    if verified == 0 && rows == 0 && tables == 0 && problems.is_empty() {
        problems.push(format!(
            "nothing was verified: snapshot {} gave no file to sample{} and no database with a table",
            sid.short(),
            if a.files == 0 { " (--files 0)" } else { "" }
        ));
    }
    let ok = problems.is_empty();
    crate::report::restored(&sid.to_hex(), verified, restored_bytes);
    for p in &problems {
        crate::report::error(p);
    }
    let r = Report {
        message_type: "summary",
        ok,
        snapshot_id: sid.to_hex(),
        host: snap.hostname.clone(),
        files_in_snapshot: in_snapshot,
        files_sampled: files.len() as u64,
        files_verified: verified,
        bytes_restored: restored_bytes,
        databases: dbs,
        problems,
        duration_seconds: clock.elapsed().as_secs_f64(),
    };
    if g.json {
        print_json(&r)?;
    } else if !g.quiet {
        for p in &r.problems {
            outln!("  problem: {p}")?;
        }
        outln!(
            "drill {} in {:.1} s",
            if r.ok { "passed" } else { "FAILED" },
            r.duration_seconds
        )?;
    }
    if !r.ok {
        anyhow::bail!(
            "drill failed: {}",
            r.problems.first().cloned().unwrap_or_default()
        );
    }
    Ok(0)
}

/// A new private directory for the restored sample (removed at the end).
fn scratch_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    let mut b = [0u8; 6];
    coffer_core::crypto::random_bytes(&mut b);
    let tag: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let dir = base.join(format!("coffer-drill-{tag}"));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("securing {}", dir.display()))?;
    Ok(dir)
}
