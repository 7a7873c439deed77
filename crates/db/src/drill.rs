//! Restore drills for databases: a dump is restored into a scratch database, that database
//! is dumped again with the same tool family, and the two are compared table by table: the
//! number of rows and a digest of the rows' text (`INSERT` lines of mariadb-dump, one row
//! each; `COPY` blocks of PostgreSQL). A restore that loses, adds or changes one row of one
//! table fails the drill and names the table. The scratch database is dropped at the end,
//! whatever happened.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;

use coffer_core::format::DatabaseItem;

use crate::process::opt;
use crate::{DbError, MysqlConnection, PgConnection};

/// Per table: rows, and a digest of their text in order.
pub type Digests = BTreeMap<String, (u64, [u8; 32])>;

/// What a database drill found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DbDrill {
    /// The scratch database it was restored into (dropped again).
    pub scratch: String,
    pub tables: usize,
    pub rows: u64,
    /// Bytes of the dump restored.
    pub bytes: u64,
    /// Tables whose rows differ between the dump and the restored database (`name: why`).
    pub mismatched: Vec<String>,
    /// The scratch database could not be dropped (it holds a copy of the data).
    pub cleanup: Option<String>,
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> DbError + '_ {
    move |e| DbError::Failed {
        what: what.to_string(),
        detail: e.to_string(),
    }
}

/// Digests of the `INSERT INTO \`t\` VALUES (...);` lines of a mariadb-dump text (one row
/// per line: coffer dumps with --skip-extended-insert).
pub fn mysql_digests(r: impl BufRead) -> std::io::Result<Digests> {
    let mut hashers: BTreeMap<String, (u64, blake3::Hasher)> = BTreeMap::new();
    for line in r.split(b'\n') {
        let line = line?;
        // every table, also an empty one: its definition names it
        if let Some(rest) = line.strip_prefix(b"CREATE TABLE `") {
            if let Some(end) = find(rest, b"` (") {
                let table = String::from_utf8_lossy(&rest[..end]).replace("``", "`");
                hashers.entry(table).or_insert_with(|| (0, blake3::Hasher::new()));
            }
            continue;
        }
        let Some(rest) = line.strip_prefix(b"INSERT INTO `") else {
            continue;
        };
        // the name ends at the backquote before " VALUES" (a backquote in a name is doubled)
        let Some(end) = find(rest, b"` VALUES ") else {
            continue;
        };
        let table = String::from_utf8_lossy(&rest[..end]).replace("``", "`");
        let e = hashers.entry(table).or_insert_with(|| (0, blake3::Hasher::new()));
        e.0 += 1;
        e.1.update(&line);
        e.1.update(b"\n");
    }
    Ok(hashers
        .into_iter()
        .map(|(t, (n, h))| (t, (n, *h.finalize().as_bytes())))
        .collect())
}

/// Digests of the `COPY table (...) FROM stdin;` blocks of a plain-text PostgreSQL dump.
pub fn pg_digests(r: impl BufRead) -> std::io::Result<Digests> {
    let mut out = Digests::new();
    let mut current: Option<(String, u64, blake3::Hasher)> = None;
    for line in r.split(b'\n') {
        let line = line?;
        if let Some((table, n, h)) = &mut current {
            if line == b"\\." {
                out.insert(std::mem::take(table), (*n, *h.finalize().as_bytes()));
                current = None;
            } else {
                *n += 1;
                h.update(&line);
                h.update(b"\n");
            }
            continue;
        }
        // every table, also an empty one: its definition names it
        if let Some(rest) = line.strip_prefix(b"CREATE TABLE ") {
            if let Some(end) = find(rest, b" (") {
                out.entry(String::from_utf8_lossy(&rest[..end]).into_owned())
                    .or_insert((0, *blake3::Hasher::new().finalize().as_bytes()));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix(b"COPY ") {
            if line.ends_with(b" FROM stdin;") {
                let name_end = find(rest, b" (")
                    .or_else(|| find(rest, b" FROM"))
                    .unwrap_or(rest.len());
                current = Some((
                    String::from_utf8_lossy(&rest[..name_end]).into_owned(),
                    0,
                    blake3::Hasher::new(),
                ));
            }
        }
    }
    Ok(out)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Compare the dump's digests with the restored database's.
fn compare(want: &Digests, got: &Digests) -> Vec<String> {
    let mut out = Vec::new();
    for (t, (n, h)) in want {
        match got.get(t) {
            None => out.push(format!(
                "{t}: missing from the restored database ({n} rows in the dump)"
            )),
            Some((m, _)) if m != n => out.push(format!("{t}: {m} rows restored, {n} in the dump")),
            Some((_, g)) if g != h => out.push(format!("{t}: the rows differ from the dump's")),
            Some(_) => {}
        }
    }
    for (t, (m, _)) in got {
        if !want.contains_key(t) {
            out.push(format!("{t}: restored ({m} rows), but the dump does not hold it"));
        }
    }
    out
}

/// A scratch database name no one uses: `coffer_drill_` and 12 random hex digits.
pub fn scratch_name() -> String {
    let mut b = [0u8; 6];
    coffer_core::crypto::random_bytes(&mut b);
    format!("coffer_drill_{}", hex::encode(b))
}

/// Run `cmd`, digesting its stdout with `digest`; a failure of the command is an error.
fn digest_output(
    mut cmd: std::process::Command,
    what: &str,
    digest: fn(BufReader<std::process::ChildStdout>) -> std::io::Result<Digests>,
) -> Result<Digests, DbError> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .map_err(io_err(what))?;
    let err = child.stderr.take();
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut e) = err {
            let _ = e.read_to_end(&mut s);
        }
        s
    });
    let out = child
        .stdout
        .take()
        .map(|o| digest(BufReader::with_capacity(1 << 20, o)));
    let status = child.wait().map_err(io_err(what))?;
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        return Err(DbError::Failed {
            what: what.to_string(),
            detail: format!(
                "{status}: {}",
                String::from_utf8_lossy(&stderr).lines().last().unwrap_or("")
            ),
        });
    }
    out.unwrap_or_else(|| Ok(Digests::new())).map_err(io_err(what))
}

/// Drill one MySQL/MariaDB dump. `open` gives the dump's content from the start (it is read
/// twice: to restore it and to digest it).
pub fn drill_mysql<'r>(
    conn: &MysqlConnection,
    item: &DatabaseItem,
    open: &mut dyn FnMut() -> Box<dyn Read + Send + 'r>,
) -> Result<DbDrill, DbError> {
    let scratch = scratch_name();
    let bytes = crate::restore_mysql(conn, item, &scratch, &mut open())?;
    let result = (|| {
        let want = mysql_digests(BufReader::with_capacity(1 << 20, open()))
            .map_err(io_err("reading the dump from the repository"))?;
        let m = crate::mysql::Mysql::new(conn)?;
        let mut cmd = m.dump.command();
        cmd.args(m.conn.args())
            .args(crate::mysql::DUMP_OPTIONS)
            .arg(&scratch);
        let got = digest_output(
            cmd,
            &format!("dumping the drill's {scratch} again"),
            mysql_digests,
        )?;
        Ok(drilled(scratch.clone(), bytes, &want, &got))
    })();
    let dropped = crate::mysql_drop(conn, &scratch);
    cleaned(result, dropped, &scratch)
}

/// A drill's result with the scratch database's drop: one that did not go is said.
fn cleaned(
    result: Result<DbDrill, DbError>,
    dropped: Result<(), DbError>,
    scratch: &str,
) -> Result<DbDrill, DbError> {
    match (result, dropped) {
        (Ok(mut d), Err(e)) => {
            d.cleanup = Some(format!("the scratch database {scratch} was not dropped: {e}"));
            Ok(d)
        }
        (r, _) => r,
    }
}

/// Drill one PostgreSQL dump (custom format: its data is read with `pg_restore --data-only`).
pub fn drill_postgres<'r>(
    conn: &PgConnection,
    item: &DatabaseItem,
    open: &mut dyn FnMut() -> Box<dyn Read + Send + 'r>,
) -> Result<DbDrill, DbError> {
    let scratch = scratch_name();
    let bytes = crate::restore_postgres(conn, item, &scratch, true, &mut open())?;
    let result = (|| {
        let restore = crate::process::Tool::find(&["pg_restore"], crate::postgres::CLIENT_HINT)?;
        let mut cmd = restore.command();
        cmd.args(["-f", "-"]);
        // the archive goes in on stdin, from the repository, on a thread
        let what = "reading the dump with pg_restore";
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_err(what))?;
        let mut stdin = child.stdin.take();
        let mut src = open();
        let stdout = child.stdout.take();
        let (want, fed) = std::thread::scope(|s| {
            let feeder = s.spawn(move || -> std::io::Result<u64> {
                let n = match &mut stdin {
                    Some(w) => std::io::copy(&mut src, w),
                    None => Ok(0),
                };
                drop(stdin);
                n
            });
            let want = stdout
                .map(|o| pg_digests(BufReader::with_capacity(1 << 20, o)))
                .unwrap_or_else(|| Ok(Digests::new()));
            (want, feeder.join())
        });
        let want = want.map_err(io_err(what))?;
        let fed = fed.map_err(|_| DbError::Invalid(format!("{what}: the feeding thread panicked")))?;
        let status = child.wait().map_err(io_err(what))?;
        fed.map_err(io_err(what))?;
        if !status.success() {
            return Err(DbError::Failed {
                what: what.into(),
                detail: format!("pg_restore {status}"),
            });
        }
        let pg = crate::postgres::Pg::new(conn)?;
        let mut cmd = pg.dump.command();
        cmd.args(["-w", "--format=plain"])
            .arg(opt("dbname", pg.conn.conninfo(Some(&scratch))));
        let got = digest_output(cmd, &format!("dumping the drill's {scratch} again"), pg_digests)?;
        Ok(drilled(scratch.clone(), bytes, &want, &got))
    })();
    let dropped = crate::postgres_drop(conn, &scratch);
    cleaned(result, dropped, &scratch)
}

fn drilled(scratch: String, bytes: u64, want: &Digests, got: &Digests) -> DbDrill {
    DbDrill {
        scratch,
        tables: want.len(),
        rows: want.values().map(|(n, _)| n).sum(),
        bytes,
        mismatched: compare(want, got),
        cleanup: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_per_table_and_what_differs() {
        let dump = "-- x\nINSERT INTO `a` VALUES (1,'x');\nINSERT INTO `a` VALUES (2,'y');\nINSERT INTO `we``ird` VALUES (1);\nCREATE TABLE b;\n";
        let d = mysql_digests(dump.as_bytes()).unwrap();
        assert_eq!(d["a"].0, 2);
        assert_eq!(d["we`ird"].0, 1);
        let changed = dump.replace("'y'", "'z'");
        let e = mysql_digests(changed.as_bytes()).unwrap();
        assert_eq!(compare(&d, &e), ["a: the rows differ from the dump's"]);
        let fewer = dump.replace("INSERT INTO `a` VALUES (2,'y');\n", "");
        assert_eq!(
            compare(&d, &mysql_digests(fewer.as_bytes()).unwrap()),
            ["a: 1 rows restored, 2 in the dump"]
        );
        let pg = "SET x;\nCREATE TABLE public.t (\n    id integer\n);\nCREATE TABLE public.empty (\n);\nCOPY public.t (id, v) FROM stdin;\n1\ta\n2\tb\n\\.\nCOPY public.e (id) FROM stdin;\n\\.\n";
        let p = pg_digests(pg.as_bytes()).unwrap();
        assert_eq!(p["public.t"].0, 2);
        assert_eq!(p["public.e"].0, 0);
        // an empty table is a table: lost, it is missed
        assert_eq!(p["public.empty"].0, 0);
        let mut lost = p.clone();
        lost.remove("public.empty");
        assert_eq!(
            compare(&p, &lost),
            ["public.empty: missing from the restored database (0 rows in the dump)"]
        );
        assert!(compare(&p, &p).is_empty());
        let mut q = p.clone();
        q.remove("public.t");
        assert_eq!(
            compare(&p, &q),
            ["public.t: missing from the restored database (2 rows in the dump)"]
        );
    }
}
