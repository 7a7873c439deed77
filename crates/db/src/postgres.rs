//! PostgreSQL: `pg_dump` per database, `pg_dumpall --globals-only` for roles and tablespaces,
//! restored with `pg_restore` into a new database.
//!
//! Why the custom format, uncompressed (`--format=custom --compress=0`): `pg_restore` can
//! restore it into a database of any name, skip ownership (`--no-owner`) or pick single tables
//! (`-t`), which a plain SQL script cannot offer; compression is off because coffer compresses
//! after deduplication, and a compressed stream would change entirely when one row changes.
//! Table data in the archive is the COPY text of each row, written row by row, so a changed
//! row changes only the chunk around it. `pg_restore -f out.sql FILE` turns the archive into
//! a plain script when one is wanted.
//!
//! The connection comes from [`PgConnection`] and libpq's environment (`PGHOST`, `PGPORT`,
//! `PGUSER`, `PGPASSWORD`, `PGPASSFILE`, `~/.pgpass`); every tool runs with `-w`, so none of
//! them waits for a password prompt.

use std::io::Read;
use std::sync::Arc;

use coffer_core::format::{DatabaseItem, DatabaseItemKind, Name};
use coffer_core::source::{escape_component, StreamSource};

use crate::dump::{DumpSpec, Facts, Prepared, ToolDump};
use crate::process::{capture, feed, opt, Tool};
use crate::{DbError, Selection};

const ENGINE: &str = "postgres";
pub(crate) const CLIENT_HINT: &str =
    "install the PostgreSQL client (Debian: apt-get install postgresql-client)";

/// How to reach the server; unset parts come from libpq's environment and defaults.
#[derive(Clone, Debug, Default)]
pub struct PgConnection {
    /// Host name, address, or the directory of the server's socket.
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
}

/// A value in a libpq connection string.
fn conninfo_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A string literal (`standard_conforming_strings` is on since PostgreSQL 9.1).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A quoted identifier.
fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl PgConnection {
    /// A libpq connection string for database `db` (or the server's default database).
    pub(crate) fn conninfo(&self, db: Option<&str>) -> String {
        let mut parts = Vec::new();
        if let Some(d) = db {
            parts.push(format!("dbname={}", conninfo_value(d)));
        }
        if let Some(h) = &self.host {
            parts.push(format!("host={}", conninfo_value(h)));
        }
        if let Some(p) = self.port {
            parts.push(format!("port={p}"));
        }
        if let Some(u) = &self.user {
            parts.push(format!("user={}", conninfo_value(u)));
        }
        parts.join(" ")
    }

    /// The connection recorded with a dump (libpq strings hold no password unless the user
    /// put one in an option, which coffer's flags cannot do).
    fn describe(&self) -> Vec<String> {
        let c = self.conninfo(None);
        if c.is_empty() {
            Vec::new()
        } else {
            vec![format!("--dbname={c}")]
        }
    }
}

pub(crate) struct Pg {
    psql: Tool,
    pub(crate) dump: Tool,
    pub(crate) conn: PgConnection,
}

impl Pg {
    pub(crate) fn new(conn: &PgConnection) -> Result<Pg, DbError> {
        Ok(Pg {
            psql: Tool::find(&["psql"], CLIENT_HINT)?,
            dump: Tool::find(&["pg_dump"], CLIENT_HINT)?,
            conn: conn.clone(),
        })
    }

    /// Run `sql` in the maintenance database; rows and fields are NUL-separated on the wire,
    /// so no name can break the parsing.
    fn query(&self, sql: &str, what: &str) -> Result<Vec<Vec<String>>, DbError> {
        let mut c = self.psql.command();
        c.args(["-X", "-w", "-A", "-t", "-q", "-z", "-0", "-v", "ON_ERROR_STOP=1"])
            .arg(opt("dbname", self.conn.conninfo(Some("postgres"))))
            .arg(opt("command", sql));
        let out = capture(&mut c, what, self.psql.name)?;
        let out = out.strip_suffix('\n').unwrap_or(&out);
        Ok(out
            .split('\0')
            .filter(|r| !r.is_empty())
            .map(|r| vec![r.to_string()])
            .collect())
    }

    /// One row of several columns (joined with a unit separator, which names cannot hold).
    fn query_row(&self, sql: &str, what: &str) -> Result<Option<Vec<String>>, DbError> {
        let mut c = self.psql.command();
        c.args([
            "-X",
            "-w",
            "-A",
            "-t",
            "-q",
            "-F",
            "\u{1f}",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .arg(opt("dbname", self.conn.conninfo(Some("postgres"))))
        .arg(opt("command", sql));
        let out = capture(&mut c, what, self.psql.name)?;
        let line = out.strip_suffix('\n').unwrap_or(&out);
        Ok((!line.is_empty()).then(|| line.split('\u{1f}').map(String::from).collect()))
    }

    fn databases(&self) -> Result<Vec<String>, DbError> {
        Ok(self
            .query(
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
                "listing PostgreSQL databases",
            )?
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect())
    }

    fn exists(&self, db: &str) -> Result<bool, DbError> {
        Ok(self
            .query_row(
                &format!("SELECT 1 FROM pg_database WHERE datname = {}", literal(db)),
                "looking up a PostgreSQL database",
            )?
            .is_some())
    }
}

/// The sources for `--postgres SELECTION`: every selected database, then the globals. Checks
/// the tools, the connection and that every named database exists first.
pub fn postgres_sources(
    conn: &PgConnection,
    selection: &Selection,
) -> Result<Vec<Box<dyn StreamSource>>, DbError> {
    let pg = Arc::new(Pg::new(conn)?);
    let dumpall = Tool::find(&["pg_dumpall"], CLIENT_HINT)?;
    let version = pg
        .query_row("SHOW server_version", "connecting to PostgreSQL")?
        .and_then(|r| r.into_iter().next())
        .unwrap_or_default();
    let tool = pg.dump.version()?;
    let present = pg.databases()?;
    let names = match selection {
        Selection::All => present,
        Selection::Names(n) => {
            for d in n {
                if !present.contains(d) {
                    return Err(DbError::NoSuchDatabase {
                        engine: ENGINE,
                        name: d.clone(),
                        hint: "`psql -l`",
                    });
                }
            }
            n.clone()
        }
    };
    let mut out: Vec<Box<dyn StreamSource>> = Vec::new();
    for db in names {
        let spec = PgSpec {
            pg: pg.clone(),
            db: Some(db),
            dumpall: dumpall.clone(),
        };
        out.push(Box::new(ToolDump::new(
            ENGINE,
            spec,
            version.clone(),
            tool.clone(),
        )));
    }
    let tool = dumpall.version()?;
    let spec = PgSpec {
        pg,
        db: None,
        dumpall,
    };
    out.push(Box::new(ToolDump::new(ENGINE, spec, version, tool)));
    Ok(out)
}

/// One database's dump, or with `db: None` the globals.
struct PgSpec {
    pg: Arc<Pg>,
    db: Option<String>,
    dumpall: Tool,
}

const DUMP_OPTIONS: &[&str] = &["-w", "--format=custom", "--compress=0"];
const GLOBALS_OPTIONS: &[&str] = &["-w", "--globals-only"];

impl DumpSpec for PgSpec {
    fn describe(&self) -> String {
        match &self.db {
            Some(db) => format!("postgres database {db}"),
            None => "postgres globals (roles, tablespaces)".into(),
        }
    }

    fn location(&self) -> Vec<Name> {
        match &self.db {
            Some(db) => vec![Name::from(ENGINE), escape_component(&format!("{db}.pgdump"))],
            None => vec![Name::from("postgres-globals.sql")],
        }
    }

    fn database(&self) -> Option<&str> {
        self.db.as_deref()
    }

    fn format(&self) -> &'static str {
        if self.db.is_some() {
            "pg-custom"
        } else {
            "pg-sql"
        }
    }

    fn prepare(&mut self) -> Result<Prepared, DbError> {
        let what = self.describe();
        let mut facts = Facts::default();
        let (mut cmd, tool) = match &self.db {
            Some(db) => {
                let row = self
                    .pg
                    .query_row(
                        &format!(
                            "SELECT pg_encoding_to_char(encoding), datcollate, datctype \
                             FROM pg_database WHERE datname = {}",
                            literal(db)
                        ),
                        &what,
                    )?
                    .ok_or_else(|| DbError::NoSuchDatabase {
                        engine: ENGINE,
                        name: db.clone(),
                        hint: "`psql -l`",
                    })?;
                for (k, v) in ["encoding", "lc_collate", "lc_ctype"].iter().zip(row) {
                    facts.properties.insert(k.to_string(), v);
                }
                let mut c = self.pg.dump.command();
                c.args(DUMP_OPTIONS)
                    .arg(opt("dbname", self.pg.conn.conninfo(Some(db))));
                facts.options.extend(DUMP_OPTIONS.iter().map(|s| s.to_string()));
                (c, self.pg.dump.name)
            }
            None => {
                let mut c = self.dumpall.command();
                c.args(GLOBALS_OPTIONS)
                    .arg(opt("dbname", self.pg.conn.conninfo(Some("postgres"))));
                facts
                    .options
                    .extend(GLOBALS_OPTIONS.iter().map(|s| s.to_string()));
                (c, self.dumpall.name)
            }
        };
        // libpq prints notices in the client's language; keep messages parseable
        cmd.env("LC_MESSAGES", "C");
        facts.options.extend(self.pg.conn.describe());
        Ok(Prepared { cmd, tool, facts })
    }
}

/// Apply a dump of roles and tablespaces (`postgres-globals`, from `pg_dumpall
/// --globals-only`) to the server, going on past errors: on a new machine the `postgres`
/// role exists already. For a machine being rebuilt (`restore-host`); `restore-db` leaves
/// globals to the operator.
pub fn apply_postgres_globals(
    conn: &PgConnection,
    item: &DatabaseItem,
    input: &mut dyn Read,
) -> Result<crate::GlobalsApplied, DbError> {
    if item.engine != ENGINE || item.kind != DatabaseItemKind::Globals {
        return Err(DbError::Invalid(format!(
            "{} is not a PostgreSQL roles dump",
            item.id()
        )));
    }
    let pg = Pg::new(conn)?;
    let mut cmd = pg.psql.command();
    cmd.args(["-X", "-q", "-w", "-v", "ON_ERROR_STOP=0"])
        .arg(opt("dbname", pg.conn.conninfo(Some("postgres"))))
        .env("LC_MESSAGES", "C");
    let (bytes, status, stderr) =
        crate::process::feed_collect(cmd, pg.psql.name, "applying postgres roles", input)?;
    // psql:<stdin>:14: ERROR:  role "postgres" already exists
    let (existed, mut errors) = crate::sort_errors(
        &stderr,
        |l| l.contains("ERROR:") || l.contains("FATAL:"),
        |l| l.contains("ERROR:") && l.contains("already exists"),
    );
    if !status.success() && errors.is_empty() {
        errors.push(format!("psql failed ({status})"));
    }
    Ok(crate::GlobalsApplied {
        bytes,
        existed,
        errors,
    })
}

/// Whether database `name` exists on the server.
pub fn postgres_exists(conn: &PgConnection, name: &str) -> Result<bool, DbError> {
    Pg::new(conn)?.exists(name)
}

/// Drop database `name`, ending the sessions connected to it (`WITH (FORCE)` from PostgreSQL
/// 13 on; before, its sessions are terminated first): for a restore that replaces it, after
/// the caller saved it.
pub fn postgres_drop(conn: &PgConnection, name: &str) -> Result<(), DbError> {
    let pg = Pg::new(conn)?;
    let what = format!("dropping postgres database {name}");
    let version: u32 = pg
        .query_row("SHOW server_version_num", &what)?
        .and_then(|r| r.first().and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0);
    if version >= 130_000 {
        pg.query(&format!("DROP DATABASE {} WITH (FORCE)", ident(name)), &what)?;
    } else {
        pg.query(
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {} AND pid <> pg_backend_pid()",
                literal(name)
            ),
            &what,
        )?;
        pg.query(&format!("DROP DATABASE {}", ident(name)), &what)?;
    }
    Ok(())
}

/// Rename database `from` to `to` (nobody may be connected to `from`).
pub fn postgres_rename(conn: &PgConnection, from: &str, to: &str) -> Result<(), DbError> {
    let pg = Pg::new(conn)?;
    pg.query(
        &format!("ALTER DATABASE {} RENAME TO {}", ident(from), ident(to)),
        &format!("renaming postgres database {from} to {to}"),
    )?;
    Ok(())
}

/// Restore one database dump into a new database `target`, created from `template0` with the
/// original's encoding and locale, in one transaction (`no_owner`: every object belongs to
/// the restoring user, for a server without the original roles). Refuses when `target` exists; a
/// failed restore drops the database it created. Returns the bytes fed.
pub fn restore_postgres(
    conn: &PgConnection,
    item: &DatabaseItem,
    target: &str,
    no_owner: bool,
    input: &mut dyn Read,
) -> Result<u64, DbError> {
    if item.engine != ENGINE || item.kind != DatabaseItemKind::Database {
        return Err(DbError::Invalid(format!(
            "{} is not a PostgreSQL database dump; write it out with --to-file and apply it with psql",
            item.id()
        )));
    }
    let pg = Pg::new(conn)?;
    let restore = Tool::find(&["pg_restore"], CLIENT_HINT)?;
    let what = format!("restoring postgres database {} as {target}", item.name);
    if pg.exists(target)? {
        return Err(DbError::TargetExists {
            engine: ENGINE,
            name: target.to_string(),
        });
    }
    let mut create = format!("CREATE DATABASE {} TEMPLATE template0", ident(target));
    for (key, sql) in [
        ("encoding", "ENCODING"),
        ("lc_collate", "LC_COLLATE"),
        ("lc_ctype", "LC_CTYPE"),
    ] {
        if let Some(v) = item.properties.get(key) {
            create.push_str(&format!(" {sql} {}", literal(v)));
        }
    }
    pg.query(&create, &what)?;
    let mut cmd = restore.command();
    cmd.args(["-w", "--exit-on-error", "--single-transaction"]);
    if no_owner {
        cmd.arg("--no-owner");
    }
    cmd.arg(opt("dbname", conn.conninfo(Some(target))));
    cmd.env("LC_MESSAGES", "C");
    match feed(cmd, restore.name, &what, input) {
        Ok(n) => Ok(n),
        Err(e) => {
            let _ = pg.query(&format!("DROP DATABASE {}", ident(target)), &what);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(conninfo_value("a b'c\\"), "'a b\\'c\\\\'");
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(literal("o'neil"), "'o''neil'");
        let c = PgConnection {
            host: Some("127.0.0.1".into()),
            port: Some(5432),
            user: None,
        };
        assert_eq!(c.conninfo(Some("x")), "dbname='x' host='127.0.0.1' port=5432");
    }
}
