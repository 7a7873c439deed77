//! Databases: the sources of `coffer backup --mysql/--postgres/--sqlite`, `coffer ls
//! --databases` and `coffer restore-db`.

use std::io::Write;

use anyhow::{bail, Context, Result};
use coffer_core::format::{DatabaseItem, DatabaseItemKind, Snapshot, SnapshotId};
use coffer_core::source::{find_item_node, NodeReader, StreamSource};
use coffer_db::{MysqlConnection, PgConnection, Selection};
use serde_json::json;

use super::{open_indexed, outln, print_json};
use crate::cli::{BackupArgs, DbConnArgs, Global, RestoreDbArgs};
use crate::ui::bytes;

/// The MySQL/MariaDB connection the flags describe.
pub(crate) fn mysql_conn(a: &DbConnArgs) -> MysqlConnection {
    MysqlConnection {
        host: a.mysql_host.clone(),
        port: a.mysql_port,
        socket: a.mysql_socket.clone(),
        user: a.mysql_user.clone(),
        defaults_file: a.mysql_defaults_file.clone(),
    }
}

/// The PostgreSQL connection the flags describe.
pub(crate) fn pg_conn(a: &DbConnArgs) -> PgConnection {
    PgConnection {
        host: a.pg_host.clone(),
        port: a.pg_port,
        user: a.pg_user.clone(),
    }
}

/// The database sources a backup asked for, each checked (tool, connection, database).
pub fn sources(a: &BackupArgs) -> Result<Vec<Box<dyn StreamSource>>> {
    let mut out = Vec::new();
    if let Some(sel) = &a.mysql {
        out.extend(coffer_db::mysql_sources(
            &mysql_conn(&a.db),
            &Selection::parse(sel),
            a.mysql_users,
        )?);
    }
    if let Some(sel) = &a.postgres {
        out.extend(coffer_db::postgres_sources(
            &pg_conn(&a.db),
            &Selection::parse(sel),
        )?);
    }
    if !a.sqlite.is_empty() {
        out.extend(coffer_db::sqlite_sources(&a.sqlite)?);
    }
    Ok(out)
}

fn item_json(i: &DatabaseItem) -> serde_json::Value {
    json!({
        "id": i.id(),
        "engine": i.engine,
        "kind": i.kind,
        "name": i.name,
        "path": i.path,
        "format": i.format,
        "size": i.size,
        "server_version": i.server_version,
        "tool": i.tool,
        "options": i.options,
        "start": i.start,
        "end": i.end,
        "properties": i.properties,
        "warnings": i.warnings,
    })
}

/// `coffer ls SNAPSHOT --databases`.
pub fn list(g: &Global, id: &SnapshotId, snap: &Snapshot) -> Result<u8> {
    if g.json {
        print_json(&snap.databases.iter().map(item_json).collect::<Vec<_>>())?;
        return Ok(0);
    }
    if snap.databases.is_empty() {
        outln!("snapshot {} holds no database dumps", id.short())?;
        return Ok(0);
    }
    for i in &snap.databases {
        let secs = (i.end - i.start).num_milliseconds() as f64 / 1000.0;
        outln!(
            "{:<32} {:>10}  {}  {:.1} s  {} (server {})",
            i.id(),
            bytes(i.size),
            i.start.format("%Y-%m-%d %H:%M:%S"),
            secs,
            i.tool,
            i.server_version
        )?;
    }
    Ok(0)
}

/// Find `spec` among the snapshot's dumps (`sqlite//abs/path` and `sqlite/abs/path` both work).
fn find_item<'a>(snap: &'a Snapshot, spec: &str) -> Result<&'a DatabaseItem> {
    let norm = |s: &str| -> String {
        match s.split_once('/') {
            Some((e, rest)) => format!("{e}/{}", rest.trim_start_matches('/')),
            None => s.to_string(),
        }
    };
    let want = norm(spec);
    if let Some(i) = snap.databases.iter().find(|i| norm(&i.id()) == want) {
        return Ok(i);
    }
    let have: Vec<String> = snap.databases.iter().map(DatabaseItem::id).collect();
    if have.is_empty() {
        bail!("{spec}: the snapshot holds no database dumps");
    }
    bail!(
        "{spec}: no such dump in the snapshot; it holds: {}",
        have.join(", ")
    )
}

/// Create `path` (refusing to overwrite), or stdout for `-`.
fn output_file(path: &std::path::Path) -> Result<Box<dyn Write>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdout().lock()));
    }
    Ok(Box::new(std::io::BufWriter::new(super::create_private(path)?)))
}

/// `coffer restore-db SNAPSHOT ITEM [--as NAME | --to-file FILE]`.
pub fn restore_db(g: &Global, a: RestoreDbArgs) -> Result<u8> {
    let repo = open_indexed(g)?;
    let (sid, snap) = crate::cmd::resolve_snapshot(&repo, &a.snapshot, &a.filter)?;
    let item = find_item(&snap, &a.item)?;
    let node = find_item_node(&repo, snap.tree, &item.path)?;
    let mut reader = NodeReader::new(&repo, &node);
    let (n, target) = if let Some(path) = &a.to_file {
        let mut out = output_file(path)?;
        let n =
            std::io::copy(&mut reader, &mut out).with_context(|| format!("writing {}", path.display()))?;
        out.flush()
            .with_context(|| format!("writing {}", path.display()))?;
        (n, path.display().to_string())
    } else {
        match (item.engine.as_str(), item.kind) {
            (_, DatabaseItemKind::Globals) => bail!(
                "{}: server-wide definitions are not applied automatically (they would change \
                 existing roles or users); write them out with --to-file FILE, review, and apply \
                 with psql or mariadb",
                item.id()
            ),
            ("mysql", _) => {
                let target = a.as_name.clone().unwrap_or_else(|| item.name.clone());
                let n = coffer_db::restore_mysql(&mysql_conn(&a.db), item, &target, &mut reader)?;
                (n, format!("mysql database {target}"))
            }
            ("postgres", _) => {
                let target = a.as_name.clone().unwrap_or_else(|| item.name.clone());
                let n = coffer_db::restore_postgres(&pg_conn(&a.db), item, &target, a.no_owner, &mut reader)?;
                (n, format!("postgres database {target}"))
            }
            ("sqlite", _) => {
                if a.as_name.is_some() {
                    bail!("--as names a server database; for SQLite use --to-file FILE");
                }
                let target = std::path::PathBuf::from(&item.name);
                let n = coffer_db::restore_sqlite(&target, &mut reader)?;
                (n, target.display().to_string())
            }
            (e, _) => bail!("{}: unknown database engine {e:?}", item.id()),
        }
    };
    if n != item.size {
        bail!(
            "{}: restored {n} bytes but the dump had {}; the snapshot is damaged (run `coffer check --read-data`)",
            item.id(),
            item.size
        );
    }
    if g.json {
        print_json(&json!({
            "snapshot": sid.to_hex(),
            "item": item.id(),
            "target": target,
            "bytes": n,
        }))?;
    } else if !g.quiet && a.to_file.as_deref() != Some(std::path::Path::new("-")) {
        outln!(
            "restored {} from snapshot {} to {target} ({})",
            item.id(),
            sid.short(),
            bytes(n)
        )?;
    }
    Ok(0)
}
