//! MySQL and MariaDB: `mariadb-dump`/`mysqldump` per database, restored with `mariadb`/`mysql`.
//!
//! The dump is taken with `--single-transaction` (one consistent snapshot of every InnoDB
//! table, without locking writers), `--routines --triggers --events`, `--hex-blob` (binary
//! columns survive any client character set), one row per INSERT (`--skip-extended-insert`,
//! for deduplication; the restore joins rows again, see `batch.rs`) and without
//! `--databases`, so the dump names no database and restores under any name. Tables of non-transactional engines (MyISAM, Aria,
//! MEMORY...) cannot be part of that snapshot: the item's warnings name them.
//!
//! The connection comes from the flags of [`MysqlConnection`], the client's option files
//! (`~/.my.cnf`, or `--defaults-extra-file`) and the environment (`MYSQL_PWD`); coffer never
//! puts a password on a command line.

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use coffer_core::format::{DatabaseItem, DatabaseItemKind, Name};
use coffer_core::source::{escape_component, StreamSource};

use crate::batch::InsertBatcher;
use crate::dump::{DumpSpec, Facts, Prepared, ToolDump};
use crate::process::{capture, feed, opt, Tool};
use crate::{DbError, Selection};

const ENGINE: &str = "mysql";
const CLIENT_HINT: &str = "install the MariaDB or MySQL client (Debian: apt-get install mariadb-client)";
/// Schemas that belong to the server, not to a user.
const SYSTEM_SCHEMAS: &[&str] = &["information_schema", "performance_schema", "sys", "mysql"];

/// How to reach the server. Everything left unset comes from the client's option files and
/// environment, as for the `mariadb` command itself.
#[derive(Clone, Debug, Default)]
pub struct MysqlConnection {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub socket: Option<PathBuf>,
    pub user: Option<String>,
    /// An option file read after the defaults (`--defaults-extra-file`), e.g. with the password.
    pub defaults_file: Option<PathBuf>,
}

impl MysqlConnection {
    pub(crate) fn args(&self) -> Vec<OsString> {
        let mut a = Vec::new();
        // must come first on the command line
        if let Some(f) = &self.defaults_file {
            a.push(opt("defaults-extra-file", f));
        }
        if let Some(h) = &self.host {
            a.push(opt("host", h));
        }
        if let Some(p) = self.port {
            a.push(opt("port", p.to_string()));
        }
        if let Some(s) = &self.socket {
            a.push(opt("socket", s));
        }
        if let Some(u) = &self.user {
            a.push(opt("user", u));
        }
        a
    }

    /// The connection options recorded with a dump (no secrets: passwords never appear here).
    fn describe(&self) -> Vec<String> {
        self.args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }
}

/// The client and the dump tool, with the connection.
pub(crate) struct Mysql {
    client: Tool,
    pub(crate) dump: Tool,
    pub(crate) conn: MysqlConnection,
}

/// A string literal for MySQL that is correct with and without `NO_BACKSLASH_ESCAPES`.
fn literal(s: &str) -> Result<String, DbError> {
    if s.contains('\\') || s.contains('\0') {
        return Err(DbError::Invalid(format!(
            "database name {s:?} contains a backslash or NUL, which coffer does not handle"
        )));
    }
    Ok(format!("'{}'", s.replace('\'', "''")))
}

/// A quoted identifier.
fn ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// Undo the escaping of the client's `--batch` output.
fn unescape_batch(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut it = field.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('0') => out.push('\0'),
            Some('\\') => out.push('\\'),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

impl Mysql {
    pub(crate) fn new(conn: &MysqlConnection) -> Result<Mysql, DbError> {
        Ok(Mysql {
            client: Tool::find(&["mariadb", "mysql"], CLIENT_HINT)?,
            dump: Tool::find(&["mariadb-dump", "mysqldump"], CLIENT_HINT)?,
            conn: conn.clone(),
        })
    }

    /// `--sandbox` where the client has it (MariaDB 10.5.25, 10.6.18, 10.11.8 and later): a
    /// dump from a repository is replayed without `\!` (shell), `\.` (source) or `tee`, so a
    /// forged one can run SQL on the server but no command on this machine.
    pub(crate) fn sandbox(&self) -> Vec<&'static str> {
        if self.client.offers("--sandbox") {
            vec!["--sandbox"]
        } else {
            Vec::new()
        }
    }

    /// Run `sql` and return the rows, fields split.
    fn query(&self, sql: &str, what: &str) -> Result<Vec<Vec<String>>, DbError> {
        let mut c = self.client.command();
        c.args(self.conn.args())
            .args([
                "--batch",
                "--skip-column-names",
                "--default-character-set=utf8mb4",
            ])
            .arg(opt("execute", sql));
        let out = capture(&mut c, what, self.client.name)?;
        Ok(out
            .lines()
            .map(|l| l.split('\t').map(unescape_batch).collect())
            .collect())
    }

    fn databases(&self) -> Result<Vec<String>, DbError> {
        Ok(self
            .query("SHOW DATABASES", "listing MySQL/MariaDB databases")?
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect())
    }

    fn exists(&self, db: &str) -> Result<bool, DbError> {
        let rows = self.query(
            &format!(
                "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {}",
                literal(db)?
            ),
            "looking up a MySQL/MariaDB database",
        )?;
        Ok(rows.first().and_then(|r| r.first()).is_some_and(|c| c != "0"))
    }
}

/// The sources for `--mysql SELECTION` (and `--mysql-users`): checks the tools, the connection
/// and that every named database exists, before anything is backed up.
pub fn mysql_sources(
    conn: &MysqlConnection,
    selection: &Selection,
    users: bool,
) -> Result<Vec<Box<dyn StreamSource>>, DbError> {
    let m = Arc::new(Mysql::new(conn)?);
    let version = m
        .query("SELECT VERSION()", "connecting to MySQL/MariaDB")?
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .unwrap_or_default();
    let tool = m.dump.version()?;
    let present = m.databases()?;
    let names = match selection {
        Selection::All => present
            .into_iter()
            .filter(|d| !SYSTEM_SCHEMAS.contains(&d.as_str()))
            .collect(),
        Selection::Names(n) => {
            for d in n {
                if !present.contains(d) {
                    return Err(DbError::NoSuchDatabase {
                        engine: ENGINE,
                        name: d.clone(),
                        hint: "`mariadb -e 'SHOW DATABASES'`",
                    });
                }
                if d.starts_with('-') {
                    return Err(DbError::Invalid(format!(
                        "MySQL database name {d:?} starts with '-', which the dump tool would take for an option"
                    )));
                }
            }
            n.clone()
        }
    };
    let mut out: Vec<Box<dyn StreamSource>> = Vec::new();
    let mut dbs: Vec<Option<String>> = names.into_iter().map(Some).collect();
    if users {
        dbs.push(None);
    }
    for db in dbs {
        let spec = MysqlSpec { m: m.clone(), db };
        out.push(Box::new(ToolDump::new(
            ENGINE,
            spec,
            version.clone(),
            tool.clone(),
        )));
    }
    Ok(out)
}

/// One database's dump (or, with `db: None`, the users and grants).
struct MysqlSpec {
    m: Arc<Mysql>,
    db: Option<String>,
}

/// Options of every database dump.
pub(crate) const DUMP_OPTIONS: &[&str] = &[
    "--single-transaction",
    "--routines",
    "--triggers",
    "--events",
    "--hex-blob",
    "--default-character-set=utf8mb4",
    "--skip-dump-date",
    "--max-allowed-packet=1G",
    // one row per INSERT, so a changed row changes only its own line (see batch.rs; the
    // restore joins the rows again); each table's rows in one transaction when replayed
    "--skip-extended-insert",
    "--no-autocommit",
];

impl DumpSpec for MysqlSpec {
    fn describe(&self) -> String {
        match &self.db {
            Some(db) => format!("mysql database {db}"),
            None => "mysql users and grants".into(),
        }
    }

    fn location(&self) -> Vec<Name> {
        match &self.db {
            Some(db) => vec![Name::from(ENGINE), escape_component(&format!("{db}.sql"))],
            None => vec![Name::from("mysql-globals.sql")],
        }
    }

    fn database(&self) -> Option<&str> {
        self.db.as_deref()
    }

    fn format(&self) -> &'static str {
        "mysql-sql"
    }

    fn prepare(&mut self) -> Result<Prepared, DbError> {
        let what = self.describe();
        let mut facts = Facts::default();
        let mut cmd = self.m.dump.command();
        cmd.args(self.m.conn.args());
        facts.options.extend(self.m.conn.describe());
        match &self.db {
            Some(db) => {
                let lit = literal(db)?;
                let rows = self.m.query(
                    &format!(
                        "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME \
                         FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {lit}"
                    ),
                    &what,
                )?;
                let Some(row) = rows.into_iter().next() else {
                    return Err(DbError::NoSuchDatabase {
                        engine: ENGINE,
                        name: db.clone(),
                        hint: "`mariadb -e 'SHOW DATABASES'`",
                    });
                };
                if let [cs, coll, ..] = &row[..] {
                    facts.properties.insert("character_set".into(), cs.clone());
                    facts.properties.insert("collation".into(), coll.clone());
                }
                let loose = self.m.query(
                    &format!(
                        "SELECT TABLE_NAME, ENGINE FROM information_schema.TABLES \
                         WHERE TABLE_SCHEMA = {lit} AND TABLE_TYPE = 'BASE TABLE' \
                         AND ENGINE NOT IN ('InnoDB') ORDER BY TABLE_NAME"
                    ),
                    &what,
                )?;
                if !loose.is_empty() {
                    let list: Vec<String> = loose
                        .iter()
                        .map(|r| format!("{} ({})", r.first().map_or("", |s| s), r.get(1).map_or("", |s| s)))
                        .collect();
                    facts.warnings.push(format!(
                        "tables of non-transactional engines are not part of the consistent snapshot: {}",
                        list.join(", ")
                    ));
                }
                cmd.args(DUMP_OPTIONS).arg(db);
                facts.options.extend(DUMP_OPTIONS.iter().map(|s| s.to_string()));
            }
            None => {
                if self.m.dump.name != "mariadb-dump" {
                    return Err(DbError::Invalid(format!(
                        "{what}: dumping users and grants needs mariadb-dump (MariaDB's --system=users); \
                         {} cannot do it",
                        self.m.dump.name
                    )));
                }
                let o = ["--system=users", "--skip-dump-date"];
                cmd.args(o);
                facts.options.extend(o.iter().map(|s| s.to_string()));
            }
        }
        Ok(Prepared {
            cmd,
            tool: self.m.dump.name,
            facts,
        })
    }
}

/// Counts the bytes read through it.
struct Counted<'a> {
    inner: &'a mut dyn Read,
    n: u64,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Apply a dump of users and grants (`mysql-globals`, from `mariadb-dump --system=users`) to
/// the server, going on past errors (`--force`): on a new machine `root@localhost` and the
/// like exist already, and the grants after them must still apply. For a machine being
/// rebuilt (`restore-host`); `restore-db` leaves globals to the operator.
pub fn apply_mysql_globals(
    conn: &MysqlConnection,
    item: &DatabaseItem,
    input: &mut dyn Read,
) -> Result<crate::GlobalsApplied, DbError> {
    if item.engine != ENGINE || item.kind != DatabaseItemKind::Globals {
        return Err(DbError::Invalid(format!(
            "{} is not a MySQL users-and-grants dump",
            item.id()
        )));
    }
    let m = Mysql::new(conn)?;
    let mut cmd = m.client.command();
    cmd.args(m.conn.args())
        .args(["--batch", "--force", "--default-character-set=utf8mb4"])
        .args(m.sandbox());
    let (bytes, _, stderr) =
        crate::process::feed_collect(cmd, m.client.name, "applying mysql users and grants", input)?;
    // ERROR 1396 (HY000) at line 5: Operation CREATE USER failed for `root`@`localhost`
    let (existed, errors) = crate::sort_errors(
        &stderr,
        |l| l.starts_with("ERROR"),
        |l| l.contains("ERROR 1396") && l.contains("CREATE USER"),
    );
    Ok(crate::GlobalsApplied {
        bytes,
        existed,
        errors,
    })
}

/// Whether database `name` exists on the server.
pub fn mysql_exists(conn: &MysqlConnection, name: &str) -> Result<bool, DbError> {
    Mysql::new(conn)?.exists(name)
}

/// Drop database `name`: for a restore that replaces it, after the caller saved it.
pub fn mysql_drop(conn: &MysqlConnection, name: &str) -> Result<(), DbError> {
    let m = Mysql::new(conn)?;
    m.query(
        &format!("DROP DATABASE {}", ident(name)),
        &format!("dropping mysql database {name}"),
    )?;
    Ok(())
}

/// Restore one database dump into a new database `target` (created with the original's
/// character set and collation). Refuses when `target` exists; a restore that fails drops the
/// database it created, so the server is left as it was. Returns the bytes fed.
pub fn restore_mysql(
    conn: &MysqlConnection,
    item: &DatabaseItem,
    target: &str,
    input: &mut dyn Read,
) -> Result<u64, DbError> {
    if item.engine != ENGINE || item.kind != DatabaseItemKind::Database {
        return Err(DbError::Invalid(format!(
            "{} is not a MySQL database dump; write it out with --to-file",
            item.id()
        )));
    }
    let m = Mysql::new(conn)?;
    let what = format!("restoring mysql database {} as {target}", item.name);
    if m.exists(target)? {
        return Err(DbError::TargetExists {
            engine: ENGINE,
            name: target.to_string(),
        });
    }
    let mut create = format!("CREATE DATABASE {}", ident(target));
    if let Some(cs) = item.properties.get("character_set") {
        create.push_str(&format!(" CHARACTER SET {}", literal(cs)?));
    }
    if let Some(coll) = item.properties.get("collation") {
        create.push_str(&format!(" COLLATE {}", literal(coll)?));
    }
    m.query(&create, &what)?;
    let mut cmd = m.client.command();
    cmd.args(m.conn.args())
        .args(["--batch", "--default-character-set=utf8mb4"])
        .args(m.sandbox())
        .arg(opt("database", target));
    let mut counted = Counted { inner: input, n: 0 };
    let fed = feed(
        cmd,
        m.client.name,
        &what,
        &mut InsertBatcher::new(std::io::BufReader::with_capacity(1 << 20, &mut counted)),
    );
    match fed {
        Ok(_) => Ok(counted.n),
        Err(e) => {
            // leave the server as it was: the half-restored database is ours, drop it
            let _ = m.query(&format!("DROP DATABASE {}", ident(target)), &what);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(ident("a`b"), "`a``b`");
        assert_eq!(literal("o'neil").unwrap(), "'o''neil'");
        assert!(literal("a\\b").is_err());
        assert_eq!(unescape_batch("a\\tb\\\\c\\n"), "a\tb\\c\n");
    }
}
