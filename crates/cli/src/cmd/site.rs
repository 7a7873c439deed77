//! `coffer restore-site SNAPSHOT SITE`: a site's files and databases restored from one
//! snapshot as one unit.
//!
//! A site is a `[site.NAME]` of the configuration (paths, MySQL and PostgreSQL databases), a
//! cPanel account the snapshot holds (`/var/cpanel/users/NAME`: the account's home directory
//! and its `NAME_*` databases), or paths and databases given with `--site-*`. Everything is
//! checked before anything changes: the snapshot must hold every path and database of the
//! site, and no database may be created over an existing one. Restoring in place
//! (`--in-place`) or replacing databases (`--replace-databases`) first saves what is there
//! now in a snapshot tagged `before-restore` (the undo); `latest` passes over those, so
//! running the same command again does not restore the state it replaced.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use coffer_core::format::{DatabaseItem, DatabaseItemKind, NodeKind, Snapshot, SnapshotId};
use coffer_core::source::{find_item_node, NodeReader};
use coffer_core::walk::{find_path, Found};
use coffer_core::{IndexedRepository, RestoreOptions};
use serde::Serialize;

use super::db::{mysql_conn, pg_conn};
use super::{open_indexed, outln, print_json};
use crate::cli::{BackupArgs, Global, RestoreSiteArgs};
use crate::ui::{bytes, local_time, CliProgress};

/// The tag of the snapshot that saves a site's state before a restore replaces it.
pub const BEFORE_RESTORE: &str = "before-restore";
/// The same, when what was restored was itself a before-restore snapshot (an undo): tagged
/// apart, so that undoing twice does not undo the undo.
pub const BEFORE_UNDO: &str = "before-undo";

/// Whether `latest` passes over a snapshot: one that saved what a restore replaced.
pub fn saved_by_a_restore(s: &Snapshot) -> bool {
    s.tags.iter().any(|t| t == BEFORE_RESTORE || t == BEFORE_UNDO)
}

/// What the site is made of, and where that came from.
#[derive(Debug, Clone, Serialize)]
struct SiteDef {
    name: String,
    /// `configuration`, `cPanel account` or `command line`.
    origin: &'static str,
    paths: Vec<String>,
    mysql: Vec<String>,
    postgres: Vec<String>,
}

/// One database of the plan.
#[derive(Debug, Clone, Serialize)]
struct DbPlan {
    /// `mysql/shop`.
    item: String,
    /// The database it is restored as.
    target: String,
    /// Whether a database of that name exists and is replaced.
    replaces: bool,
    #[serde(skip)]
    dump: DatabaseItem,
}

/// What `restore-site --json` prints.
#[derive(Debug, Serialize)]
struct Report {
    message_type: &'static str,
    dry_run: bool,
    snapshot_id: String,
    site: SiteDef,
    target: String,
    files: u64,
    dirs: u64,
    bytes: u64,
    replaced: u64,
    deleted: u64,
    errors: u64,
    databases: Vec<DbPlan>,
    /// The snapshot that saved what was there before (in place, or databases replaced).
    before_restore_snapshot: Option<String>,
    duration_seconds: f64,
}

#[derive(Parser)]
#[command(no_binary_name = true)]
struct BackupCommand {
    #[command(flatten)]
    args: BackupArgs,
}

fn usage(msg: String) -> anyhow::Error {
    coffer_core::Error::Usage(msg).into()
}

/// The contents of a small file in the snapshot (`/etc/passwd`), if it is there.
fn snapshot_file(repo: &IndexedRepository, snap: &Snapshot, path: &str) -> Option<Vec<u8>> {
    match find_path(repo, snap.tree, path).ok()? {
        Found::Node(n) if n.kind == NodeKind::File && n.size < 16 << 20 => {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut NodeReader::new(repo, &n), &mut out).ok()?;
            Some(out)
        }
        _ => None,
    }
}

/// A cPanel account the snapshot holds: its home directory (from the snapshot's
/// `/etc/passwd`, else `/home/NAME`) and the databases of the snapshot cPanel prefixes with
/// `NAME_`. `root` is where the machine's `/` is in the snapshot (empty but in tests).
fn cpanel_account(repo: &IndexedRepository, snap: &Snapshot, root: &str, name: &str) -> Option<SiteDef> {
    if name.is_empty() || name.contains(['/', '\0', ':']) || name.starts_with('.') {
        return None;
    }
    match find_path(repo, snap.tree, &format!("{root}/var/cpanel/users/{name}")) {
        Ok(Found::Node(n)) if n.kind == NodeKind::File => {}
        _ => return None,
    }
    // a cPanel home is /home/NAME or /homeN/NAME, nothing else (the snapshot's passwd is the
    // snapshot's word: it must not make /etc an account's home)
    let is_home = |h: &str| {
        h.strip_suffix(&format!("/{name}"))
            .and_then(|d| d.strip_prefix("/home"))
            .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
    };
    let home = snapshot_file(repo, snap, &format!("{root}/etc/passwd"))
        .and_then(|p| {
            String::from_utf8_lossy(&p).lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 7 && f[0] == name && is_home(f[5])).then(|| f[5].to_string())
            })
        })
        .unwrap_or_else(|| format!("/home/{name}"));
    let home = format!("{root}{home}");
    let prefix = format!("{name}_");
    let dbs = |engine: &str| -> Vec<String> {
        snap.databases
            .iter()
            .filter(|d| d.engine == engine && d.kind == DatabaseItemKind::Database)
            .filter(|d| {
                (d.name == name || d.name.starts_with(&prefix)) && coffer_agent::database_name_ok(&d.name)
            })
            .map(|d| d.name.clone())
            .collect()
    };
    Some(SiteDef {
        name: name.to_string(),
        origin: "cPanel account",
        paths: vec![home],
        mysql: dbs("mysql"),
        postgres: dbs("postgres"),
    })
}

/// What the site is: given on the command line, a `[site.NAME]`, or a cPanel account.
fn resolve_site(
    g: &Global,
    a: &RestoreSiteArgs,
    repo: &IndexedRepository,
    snap: &Snapshot,
) -> Result<SiteDef> {
    if !a.site_path.is_empty() || !a.site_mysql.is_empty() || !a.site_postgres.is_empty() {
        return Ok(SiteDef {
            name: "site".into(),
            origin: "command line",
            paths: a.site_path.iter().map(|p| p.display().to_string()).collect(),
            mysql: a.site_mysql.clone(),
            postgres: a.site_postgres.clone(),
        });
    }
    let Some(name) = &a.site else {
        return Err(usage(
            "name a site (a [site.NAME] of the configuration, or a cPanel account), or give it with \
             --site-path/--site-mysql/--site-postgres"
                .into(),
        ));
    };
    // the configuration's, when there is one (a broken one is an error, not a fallback)
    let path = super::job::config_path(g);
    let mut configured: Vec<String> = Vec::new();
    if g.config.is_some() || path.exists() {
        let cfg = super::job::load(g)?;
        if let Some(s) = cfg.sites.get(name) {
            return Ok(SiteDef {
                name: name.clone(),
                origin: "configuration",
                paths: s.paths.iter().map(|p| p.display().to_string()).collect(),
                mysql: s.mysql.clone(),
                postgres: s.postgres.clone(),
            });
        }
        configured = cfg.sites.keys().cloned().collect();
    }
    if let Some(site) = cpanel_account(repo, snap, "", name) {
        return Ok(site);
    }
    Err(usage(format!(
        "no site {name:?}: {} and the snapshot holds no cPanel account of that name (/var/cpanel/users/{name})",
        if configured.is_empty() {
            format!("{} declares no [site.{name}]", path.display())
        } else {
            format!("{} declares sites {}", path.display(), configured.join(", "))
        }
    )))
}

/// A database name made of the original and a suffix, as each engine allows.
fn suffixed(name: &str, suffix: &str, engine: &str) -> Result<String> {
    let t = format!("{name}{suffix}");
    // MySQL: 64 characters; PostgreSQL: 63 bytes
    let max = if engine == "mysql" { 64 } else { 63 };
    if t.len() > max || suffix.contains(['/', '\0', '`', '"']) {
        return Err(usage(format!(
            "database {t:?}: too long for {engine} or holds a character names cannot; give another --db-suffix"
        )));
    }
    Ok(t)
}

pub fn run(g: &Global, a: RestoreSiteArgs) -> Result<u8> {
    let clock = Instant::now();
    for n in a.site_mysql.iter().chain(&a.site_postgres) {
        if !coffer_agent::database_name_ok(n) {
            return Err(usage(format!("{n:?}: not one database name")));
        }
    }
    // --target naming the site's own place is in place, without the save: refused
    if let Some(t) = &a.target {
        if std::fs::canonicalize(t).is_ok_and(|c| c == Path::new("/")) {
            return Err(usage(format!(
                "--target {}: that is where the site lives; --in-place restores there (and saves what it replaces first)",
                t.display()
            )));
        }
    }
    let repo = open_indexed(g)?;
    // when the restore replaces anything, `latest` is this machine's own (unless --host says
    // otherwise); it is never the state a restore replaced (resolve_snapshot's rule)
    let mut filter = a.filter.clone();
    if (a.in_place || a.replace_databases) && filter.host.is_empty() {
        filter.host.push(super::job::this_host(g));
    }
    let (sid, snap) = super::resolve_snapshot(&repo, &a.snapshot, &filter)?;
    if snap.sealed_by_write_only && (a.in_place || a.replace_databases) {
        // what is restored in place, and what is dropped for it, is judged by the snapshot's
        // word, which any write-only key (a stolen one too) could have forged
        eprintln!(
            "warning: snapshot {} was sealed by a write-only key: what it replaces here is that key's word; \
             --dry-run shows the plan first",
            sid.short()
        );
    }
    let site = resolve_site(g, &a, &repo, &snap)?;
    if site.paths.is_empty() && site.mysql.is_empty() && site.postgres.is_empty() {
        bail!("site {}: nothing in it", site.name);
    }
    // every path and database is in the snapshot
    for p in &site.paths {
        if !p.starts_with('/') || p == "/" || p.split('/').any(|c| c == ".." || c == ".") {
            return Err(usage(format!(
                "site {}: path {p:?} must be absolute, not `/`, without . or ..",
                site.name
            )));
        }
        match find_path(&repo, snap.tree, p) {
            Ok(Found::Node(n)) if n.kind == NodeKind::Dir => {}
            Ok(Found::Node(_)) => {
                return Err(usage(format!(
                    "site {}: {p} is not a directory in snapshot {}; a site's paths are directories",
                    site.name,
                    sid.short()
                )))
            }
            _ => {
                return Err(usage(format!(
                "snapshot {} has no {p} (site {}): nothing was restored; the site's backups must include it",
                sid.short(),
                site.name
            )))
            }
        }
    }
    let mut dumps = Vec::new();
    for (engine, names) in [("mysql", &site.mysql), ("postgres", &site.postgres)] {
        for n in names {
            let item = snap
                .databases
                .iter()
                .find(|d| d.engine == engine && d.kind == DatabaseItemKind::Database && &d.name == n)
                .ok_or_else(|| {
                    usage(format!(
                        "snapshot {} holds no dump of {engine}/{n} (site {}): nothing was restored",
                        sid.short(),
                        site.name
                    ))
                })?;
            dumps.push(item.clone());
        }
    }
    // each database's target, checked against the server now
    let suffix = a.db_suffix.clone().unwrap_or_else(|| "_restored".into());
    let (my, pg) = (mysql_conn(&a.db), pg_conn(&a.db));
    let mut plan = Vec::new();
    for d in dumps {
        let target = if a.replace_databases {
            d.name.clone()
        } else {
            suffixed(&d.name, &suffix, &d.engine)?
        };
        let exists = match d.engine.as_str() {
            "mysql" => coffer_db::mysql_exists(&my, &target)?,
            _ => coffer_db::postgres_exists(&pg, &target)?,
        };
        if exists && !a.replace_databases {
            return Err(usage(format!(
                "{} database {target} exists: nothing was restored (another --db-suffix, or \
                 --replace-databases to replace the originals)",
                d.engine
            )));
        }
        plan.push(DbPlan {
            item: d.id(),
            target,
            replaces: exists,
            dump: d,
        });
    }
    let target_dir = a.target.clone().unwrap_or_else(|| PathBuf::from("/"));
    let restore_opts = |dest: PathBuf, dry_run: bool| -> Result<RestoreOptions> {
        Ok(RestoreOptions {
            target: dest,
            includes: Vec::new(),
            excludes: Vec::new(),
            dry_run,
            overwrite: a.overwrite.parse()?,
            delete: a.delete,
            delete_within: snap.paths.clone(),
            delete_keeps: snap.excludes.clone(),
            verify: false,
            numeric_owner: false,
            // the site's paths are the snapshot's word: no symlink on the way to them is
            // followed (in place, a user's symlink must not lead the restore out of the site)
            within: Some(if a.in_place {
                PathBuf::from("/")
            } else {
                target_dir.clone()
            }),
        })
    };
    let dest_of = |p: &str| -> PathBuf {
        if a.in_place {
            PathBuf::from(p)
        } else {
            target_dir.join(p.trim_start_matches('/'))
        }
    };

    // what was there before, saved first
    let mut before = None;
    if !a.dry_run {
        before = save_before(g, &a, &site, &plan, &snap)?;
    }
    let undo = before
        .map(|b| format!("; snapshot {} holds what was there before", b.short()))
        .unwrap_or_default();

    // each database to be replaced is restored under a scratch name first: proof that its
    // dump restores on this server (tools, character set, encoding) before anything is
    // dropped, and before the files change
    let mut staged: Vec<Option<String>> = vec![None; plan.len()];
    if !a.dry_run {
        for (i, d) in plan.iter().enumerate().filter(|(_, d)| d.replaces) {
            let scratch = coffer_db::drill::scratch_name().replace("drill", "new");
            let node = find_item_node(&repo, snap.tree, &d.dump.path)?;
            let mut reader = NodeReader::new(&repo, &node);
            let r = match d.dump.engine.as_str() {
                "mysql" => coffer_db::restore_mysql(&my, &d.dump, &scratch, &mut reader),
                _ => coffer_db::restore_postgres(&pg, &d.dump, &scratch, a.no_owner, &mut reader),
            };
            if let Err(e) = r {
                drop_staged(&plan, &staged, &my, &pg);
                return Err(anyhow::Error::from(e).context(format!(
                    "restoring {} under a scratch name first: nothing was replaced, no file changed{undo}",
                    d.item
                )));
            }
            staged[i] = Some(scratch);
        }
    }

    // the files
    let progress = CliProgress::new(!g.quiet && !g.json && !a.dry_run, "restored");
    let mut total = coffer_core::RestoreStats::default();
    for p in &site.paths {
        let stats = coffer_core::restore(
            &repo,
            snap.tree,
            p,
            &restore_opts(dest_of(p), a.dry_run)?,
            &progress,
        );
        let stats = match stats {
            Ok(s) => s,
            Err(e) => {
                progress.finish();
                drop_staged(&plan, &staged, &my, &pg);
                return Err(anyhow::Error::from(e).context(format!(
                    "restoring {p}{}",
                    before
                        .map(|b: SnapshotId| format!(" (snapshot {} holds what was there before)", b.short()))
                        .unwrap_or_default()
                )));
            }
        };
        total.files += stats.files;
        total.dirs += stats.dirs;
        total.bytes += stats.bytes;
        total.replaced += stats.replaced;
        total.deleted += stats.deleted;
        total.errors += stats.errors;
    }
    progress.finish();

    // then the databases
    if !a.dry_run {
        for (d, scratch) in plan.iter().zip(&staged) {
            let node = find_item_node(&repo, snap.tree, &d.dump.path)?;
            let mut reader = NodeReader::new(&repo, &node);
            if let Some(scratch) = scratch {
                let kept = format!("; the restored data is in database {scratch}{undo}");
                match d.dump.engine.as_str() {
                    "mysql" => coffer_db::mysql_drop(&my, &d.target),
                    _ => coffer_db::postgres_drop(&pg, &d.target),
                }
                .with_context(|| format!("replacing {}{kept}", d.target))?;
                if d.dump.engine != "mysql" {
                    // PostgreSQL renames: the proof becomes the database
                    coffer_db::postgres_rename(&pg, scratch, &d.target)
                        .with_context(|| format!("replacing {}{kept}", d.target))?;
                    continue;
                }
                let n = coffer_db::restore_mysql(&my, &d.dump, &d.target, &mut reader)
                    .with_context(|| format!("restoring {} as {}{kept}", d.item, d.target))?;
                let _ = coffer_db::mysql_drop(&my, scratch);
                if n != d.dump.size {
                    bail!(
                        "{}: restored {n} bytes but the dump had {}{undo}",
                        d.item,
                        d.dump.size
                    );
                }
                continue;
            }
            let n = match d.dump.engine.as_str() {
                "mysql" => coffer_db::restore_mysql(&my, &d.dump, &d.target, &mut reader),
                _ => coffer_db::restore_postgres(&pg, &d.dump, &d.target, a.no_owner, &mut reader),
            }
            .with_context(|| format!("restoring {} as {}{undo}", d.item, d.target))?;
            if n != d.dump.size {
                bail!(
                    "{}: restored {n} bytes but the dump had {}; the snapshot is damaged (run `coffer check --read-data`){undo}",
                    d.item,
                    d.dump.size
                );
            }
        }
    }
    crate::report::restored(&sid.to_hex(), total.files, total.bytes);

    let report = Report {
        message_type: "summary",
        dry_run: a.dry_run,
        snapshot_id: sid.to_hex(),
        target: if a.in_place {
            "in place".into()
        } else {
            target_dir.display().to_string()
        },
        files: total.files,
        dirs: total.dirs,
        bytes: total.bytes,
        replaced: total.replaced,
        deleted: total.deleted,
        errors: total.errors,
        databases: plan,
        before_restore_snapshot: before.map(|b| b.to_hex()),
        duration_seconds: clock.elapsed().as_secs_f64(),
        site,
    };
    if g.json {
        print_json(&report)?;
    } else if !g.quiet {
        print_report(&report, &snap)?;
    }
    if report.errors > 0 {
        return Ok(crate::EXIT_INCOMPLETE);
    }
    Ok(0)
}

fn print_report(r: &Report, snap: &Snapshot) -> Result<()> {
    let (verb, dbverb) = if r.dry_run {
        ("would restore", "would be restored")
    } else {
        ("restored", "restored")
    };
    outln!(
        "{verb} {} from snapshot {} of {} ({}) {}",
        if r.site.origin == "command line" {
            "the site given".to_string()
        } else {
            format!("site {} ({})", r.site.name, r.site.origin)
        },
        &r.snapshot_id[..8],
        snap.hostname,
        local_time(&snap.time),
        if r.target == "in place" {
            "in place".to_string()
        } else {
            format!("to {}", r.target)
        }
    )?;
    outln!(
        "files:     {} in {}: {} files, {} directories, {}{}{}",
        r.site.paths.len(),
        r.site.paths.join(" "),
        r.files,
        r.dirs,
        bytes(r.bytes),
        if r.replaced > 0 {
            format!(", {} existing replaced", r.replaced)
        } else {
            String::new()
        },
        if r.deleted > 0 {
            format!(", {} not in the snapshot deleted", r.deleted)
        } else {
            String::new()
        }
    )?;
    for d in &r.databases {
        outln!(
            "database:  {} {dbverb} as {}{}",
            d.item,
            d.target,
            if d.replaces {
                " (replacing the current one)"
            } else {
                " (new)"
            }
        )?;
    }
    if let Some(b) = &r.before_restore_snapshot {
        outln!(
            "before:    snapshot {} (tag {BEFORE_RESTORE}) holds what was there before",
            &b[..8]
        )?;
    }
    if !r.dry_run {
        outln!("took:      {:.1} s", r.duration_seconds)?;
    }
    Ok(())
}

/// Save what a restore in place or a database replacement will change: the site's paths that
/// exist now and the databases to be replaced, in one snapshot tagged `before-restore`.
/// Nothing to save (a new machine): `None`. A save that fails stops the restore before it
/// changed anything.
/// Drop the scratch databases a failed restore staged.
fn drop_staged(
    plan: &[DbPlan],
    staged: &[Option<String>],
    my: &coffer_db::MysqlConnection,
    pg: &coffer_db::PgConnection,
) {
    for (d, s) in plan.iter().zip(staged) {
        if let Some(s) = s {
            let _ = match d.dump.engine.as_str() {
                "mysql" => coffer_db::mysql_drop(my, s),
                _ => coffer_db::postgres_drop(pg, s),
            };
        }
    }
}

fn save_before(
    g: &Global,
    a: &RestoreSiteArgs,
    site: &SiteDef,
    plan: &[DbPlan],
    snap: &Snapshot,
) -> Result<Option<SnapshotId>> {
    let tag = if saved_by_a_restore(snap) {
        BEFORE_UNDO
    } else {
        BEFORE_RESTORE
    };
    let mut args: Vec<String> = vec!["--tag".into(), tag.into()];
    let mut anything = false;
    if a.in_place {
        for p in &site.paths {
            if Path::new(p).symlink_metadata().is_ok() {
                args.push(p.clone());
                anything = true;
            }
        }
    }
    for (engine, flag) in [("mysql", "--mysql"), ("postgres", "--postgres")] {
        let names: Vec<&str> = plan
            .iter()
            .filter(|d| d.replaces && d.dump.engine == engine)
            .map(|d| d.target.as_str())
            .collect();
        if !names.is_empty() {
            args.push(flag.into());
            args.push(names.join(","));
            anything = true;
        }
    }
    if !anything {
        return Ok(None);
    }
    let mut backup = BackupCommand::try_parse_from(&args)
        .map_err(|e| usage(format!("saving the site's current state: {e}")))?
        .args;
    // the connections the restore uses
    backup.db = a.db.clone();
    if !g.quiet && !g.json {
        outln!("saving what the restore replaces first (snapshot tagged {tag}) ...")?;
    }
    let mut quiet = g.clone();
    quiet.quiet = true;
    quiet.json = false;
    let (code, id) = super::backup::saved(&quiet, backup)
        .context("saving the site's current state before restoring: nothing was restored")?;
    if code != 0 {
        bail!(
            "the snapshot of the site's current state ({}) is incomplete (exit {code}): nothing was restored",
            id.short()
        );
    }
    std::io::stdout().flush().ok();
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use coffer_core::memory::MemoryBackend;
    use coffer_core::{Backend, BackupOptions, InitOptions, NoProgress, Repository};

    use super::*;

    /// A cPanel account is found from the snapshot alone: its home from the snapshot's
    /// /etc/passwd, its databases by cPanel's NAME_ prefix (not another account's, not one
    /// that merely starts with the name); no account, or a name that is a path, is none.
    #[test]
    fn a_cpanel_account_is_a_site_without_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (p, content) in [
            ("var/cpanel/users/bob", "DNS=bob.example\n"),
            ("var/cpanel/users/eve", "DNS=eve.example\n"),
            (
                "etc/passwd",
                "root:x:0:0::/root:/bin/bash\nbob:x:1001:1001::/home2/bob:/bin/bash\neve:x:1002:1002::/etc:/bin/sh\n",
            ),
            ("home2/bob/public_html/index.html", "hi\n"),
        ] {
            std::fs::create_dir_all(root.join(p).parent().unwrap()).unwrap();
            std::fs::write(root.join(p), content).unwrap();
        }
        let b: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        Repository::init(b.clone(), b"pw", &InitOptions::default()).unwrap();
        let mut repo = Repository::open(b, b"pw").unwrap().load_index().unwrap();
        let opts = BackupOptions {
            paths: vec![root.to_path_buf()],
            ..Default::default()
        };
        let mut snap = coffer_core::backup(&mut repo, &opts, &NoProgress)
            .unwrap()
            .snapshot;
        let item = |engine: &str, name: &str| DatabaseItem {
            engine: engine.into(),
            kind: DatabaseItemKind::Database,
            name: name.into(),
            path: String::new(),
            format: String::new(),
            server_version: String::new(),
            tool: String::new(),
            options: vec![],
            start: chrono::Local::now().fixed_offset(),
            end: chrono::Local::now().fixed_offset(),
            size: 0,
            properties: Default::default(),
            warnings: vec![],
        };
        snap.databases = vec![
            item("mysql", "bob_wp"),
            item("mysql", "bobby_wp"),
            item("mysql", "alice_wp"),
            item("postgres", "bob_app"),
        ];
        let r = root.to_str().unwrap();
        let site = cpanel_account(&repo, &snap, r, "bob").unwrap();
        assert_eq!(site.paths, [format!("{r}/home2/bob")]);
        assert_eq!(site.mysql, ["bob_wp"]);
        assert_eq!(site.postgres, ["bob_app"]);
        assert!(cpanel_account(&repo, &snap, r, "alice").is_none());
        // a home that is not /home*/NAME is not taken from the snapshot's word
        let eve = cpanel_account(&repo, &snap, r, "eve").unwrap();
        assert_eq!(eve.paths, [format!("{r}/home/eve")]);
        assert!(cpanel_account(&repo, &snap, r, "../../etc/passwd").is_none());
        assert!(cpanel_account(&repo, &snap, r, "").is_none());
    }
}
