//! Database backups against the real servers of this machine (MariaDB on its socket and on
//! 127.0.0.1:3306 as root; PostgreSQL on its socket and 127.0.0.1:5432 with trust auth) and
//! SQLite files. Every test creates its own databases with unique names and drops them, even
//! when it fails.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::{code, mysql, stderr, Env};

// ---------------------------------------------------------------- helpers

/// A database name no other test (or run) uses.
fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "coffer_t_{tag}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Run SQL through `psql` over TCP as postgres in database `db`; returns unaligned rows.
fn psql(db: &str, sql: &str) -> String {
    let mut c = Command::new("psql");
    c.args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-d",
        db,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().expect("the psql client is installed");
    child.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "psql failed on {sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Drops the databases it holds when the test ends, passed or failed.
struct Cleanup {
    mysql: Vec<String>,
    postgres: Vec<String>,
}

impl Cleanup {
    fn new() -> Cleanup {
        Cleanup {
            mysql: vec![],
            postgres: vec![],
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for d in &self.mysql {
            let _ = Command::new("mariadb")
                .args(["-h", "127.0.0.1", "-u", "root", "-e"])
                .arg(format!("DROP DATABASE IF EXISTS `{d}`"))
                .output();
        }
        for d in &self.postgres {
            let _ = Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-c",
                ])
                .arg(format!("DROP DATABASE IF EXISTS \"{d}\" WITH (FORCE)"))
                .output();
        }
    }
}

/// Every byte value, as hex.
fn all_bytes_hex() -> String {
    (0..=255u8).map(|b| format!("{b:02X}")).collect()
}

/// MySQL: CHECKSUM TABLE of each of `tables` in `db`.
fn mysql_checksums(db: &str, tables: &[&str]) -> Vec<String> {
    tables
        .iter()
        .map(|t| {
            let out = mysql(&format!("CHECKSUM TABLE `{db}`.`{t}`"));
            let sum = out.split('\t').nth(1).unwrap().trim().to_string();
            assert_ne!(sum, "NULL", "{db}.{t} has no checksum");
            sum
        })
        .collect()
}

/// PostgreSQL: an ordered hash over all rows of each table.
fn pg_checksums(db: &str, tables: &[&str]) -> Vec<String> {
    tables
        .iter()
        .map(|t| {
            psql(
                db,
                &format!("SELECT md5(string_agg(x::text, '|' ORDER BY x.id)) FROM {t} x"),
            )
            .trim()
            .to_string()
        })
        .collect()
}

fn databases_json(env: &Env, snapshot: &str) -> Vec<serde_json::Value> {
    let out = env.ok(&["ls", snapshot, "--databases", "--json"]);
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

// ---------------------------------------------------------------- MySQL / MariaDB

fn mysql_create_shop(db: &str) {
    mysql(&format!(
        "CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
         USE `{db}`;
         CREATE TABLE accounts (id INT PRIMARY KEY, owner VARCHAR(100), balance BIGINT NOT NULL, photo BLOB) ENGINE=InnoDB;
         CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, account INT, note TEXT) ENGINE=InnoDB;
         CREATE TRIGGER acc_ins AFTER INSERT ON accounts FOR EACH ROW
             INSERT INTO audit(account, note) VALUES (NEW.id, CONCAT('opened ', NEW.owner));
         CREATE VIEW rich AS SELECT id, owner FROM accounts WHERE balance > 500;
         CREATE PROCEDURE add_interest(IN pct INT) UPDATE accounts SET balance = balance + balance * pct DIV 100;
         CREATE FUNCTION total() RETURNS BIGINT READS SQL DATA RETURN (SELECT SUM(balance) FROM accounts);
         INSERT INTO accounts SELECT seq, CONCAT('Zoë 日本 ✓ ', seq), seq * 10, UNHEX(SHA2(seq, 256)) FROM seq_1_to_2000;
         INSERT INTO accounts VALUES (0, 'every byte', 0, UNHEX('{}'));",
        all_bytes_hex()
    ));
}

#[test]
fn mysql_database_restores_alone_under_a_new_name() {
    let mut clean = Cleanup::new();
    let (shop, other) = (unique("shop"), unique("other"));
    let restored = format!("{shop}_r");
    clean
        .mysql
        .extend([shop.clone(), other.clone(), restored.clone()]);
    mysql_create_shop(&shop);
    mysql(&format!(
        "CREATE DATABASE `{other}`; CREATE TABLE `{other}`.t (id INT PRIMARY KEY, v TEXT); \
         INSERT INTO `{other}`.t VALUES (1, 'untouched')"
    ));
    let tables = ["accounts", "audit"];
    let before = mysql_checksums(&shop, &tables);
    let other_before = mysql_checksums(&other, &["t"]);

    let env = Env::init();
    // over the local socket, as the backup would run on the database host
    let summary = env.backup_json(&["--mysql", &format!("{shop},{other}")]);
    let ids: Vec<&str> = summary["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ids, [format!("mysql/{shop}"), format!("mysql/{other}")]);
    let items = databases_json(&env, "latest");
    let item = items.iter().find(|i| i["name"] == shop.as_str()).unwrap();
    assert_eq!(item["properties"]["character_set"], "utf8mb4");
    assert!(item["tool"].as_str().unwrap().contains("Ver"), "{item}");
    assert!(item["options"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o == "--single-transaction"));

    mysql(&format!("DROP DATABASE `{shop}`"));
    env.ok(&[
        "restore-db",
        "latest",
        &format!("mysql/{shop}"),
        "--as",
        &restored,
    ]);

    assert_eq!(
        mysql_checksums(&restored, &tables),
        before,
        "table contents differ"
    );
    let count = |what: &str, col: &str| {
        mysql(&format!(
            "SELECT COUNT(*) FROM information_schema.{what} WHERE {col} = '{restored}'"
        ))
        .trim()
        .to_string()
    };
    assert_eq!(count("ROUTINES", "ROUTINE_SCHEMA"), "2", "procedure and function");
    assert_eq!(count("TRIGGERS", "TRIGGER_SCHEMA"), "1");
    assert_eq!(count("VIEWS", "TABLE_SCHEMA"), "1");
    let hex = mysql(&format!(
        "SELECT HEX(photo) FROM `{restored}`.accounts WHERE id = 0"
    ));
    assert_eq!(hex.trim(), all_bytes_hex(), "binary data");
    let owner = mysql(&format!("SELECT owner FROM `{restored}`.accounts WHERE id = 7"));
    assert_eq!(owner.trim(), "Zoë 日本 ✓ 7");
    assert_eq!(
        mysql(&format!("SELECT `{restored}`.total()")).trim(),
        mysql(&format!("SELECT SUM(balance) FROM `{restored}`.accounts")).trim()
    );
    // the other database was not touched by the restore
    assert_eq!(mysql_checksums(&other, &["t"]), other_before);

    // restoring over an existing database is refused and changes nothing
    let o = env.run(&["restore-db", "latest", &format!("mysql/{other}")]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(mysql_checksums(&other, &["t"]), other_before);
    // and the dump can be written to a file instead
    let file = env.path("shop.sql");
    env.ok(&[
        "restore-db",
        "latest",
        &format!("mysql/{shop}"),
        "--to-file",
        file.to_str().unwrap(),
    ]);
    let sql = std::fs::read_to_string(&file).unwrap();
    assert!(sql.contains("CREATE TABLE `accounts`") && !sql.contains("CREATE DATABASE"));
}

/// One transfer between a row of `checking` and a row of `savings`, two tables the dump
/// reads at different moments (a large `filler` table lies between them): only a dump that is
/// one consistent snapshot keeps their combined total. `meta.n` counts the transfers.
fn transfer(begin: &str, n: u64) -> String {
    let a = n * 7919 % 200;
    let b = (n * 104_729 + 1) % 200;
    let amt = (n % 50 + 1) as i64 * if n.is_multiple_of(2) { 1 } else { -1 };
    format!(
        "{begin}; UPDATE checking SET balance = balance - {amt} WHERE id = {a}; \
         UPDATE savings SET balance = balance + {amt} WHERE id = {b}; UPDATE meta SET n = n + 1; COMMIT;\n"
    )
}

fn transfers_sql(n: u64) -> String {
    transfer("START TRANSACTION", n)
}

fn pg_transfer_sql(n: u64) -> String {
    transfer("BEGIN", n)
}

struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(mut cmd: Command, txn: fn(u64) -> String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        let thread = std::thread::spawn(move || {
            let mut stdin = child.stdin.take().unwrap();
            let mut n = 0;
            while !flag.load(Ordering::Relaxed) {
                if stdin.write_all(txn(n).as_bytes()).is_err() {
                    break;
                }
                n += 1;
            }
            drop(stdin);
            let _ = child.wait();
        });
        Writer {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The writer's count once it is past `past` (no deadline: the writer stopping ends the wait).
fn wait_for_progress(read: impl Fn() -> u64, past: u64, writer: &Writer) -> u64 {
    let mut n = past;
    common::wait_until(
        "the writer's first transfers",
        || {
            n = read();
            n > past
        },
        || {
            writer
                .thread
                .as_ref()
                .is_none_or(|t| t.is_finished())
                .then(|| "the writer stopped".to_string())
        },
    );
    n
}

#[test]
fn mysql_dump_is_consistent_under_concurrent_transfers() {
    let mut clean = Cleanup::new();
    let db = unique("bank");
    let restored = format!("{db}_r");
    clean.mysql.extend([db.clone(), restored.clone()]);
    mysql(&format!(
        "CREATE DATABASE `{db}`; USE `{db}`;
         CREATE TABLE checking (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
         CREATE TABLE filler (id INT PRIMARY KEY, pad VARCHAR(255)) ENGINE=InnoDB;
         CREATE TABLE meta (n BIGINT NOT NULL) ENGINE=InnoDB;
         CREATE TABLE savings (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
         INSERT INTO meta VALUES (0);
         INSERT INTO checking SELECT seq, 1000 FROM seq_0_to_199;
         INSERT INTO savings SELECT seq, 1000 FROM seq_0_to_199;
         INSERT INTO filler SELECT seq, REPEAT(SHA2(seq, 256), 3) FROM seq_1_to_40000;"
    ));
    let n_now = || {
        mysql(&format!("SELECT n FROM `{db}`.meta"))
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let mut cmd = Command::new("mariadb");
    cmd.args(["-h", "127.0.0.1", "-u", "root", &db]);
    let writer = Writer::start(cmd, transfers_sql);
    let env = Env::init();
    // (read just before the backup: commits during the setup do not count)
    let start = wait_for_progress(n_now, 0, &writer);
    env.ok(&[
        "backup",
        "--mysql",
        &db,
        "--mysql-host",
        "127.0.0.1",
        "--mysql-user",
        "root",
    ]);
    // read as the backup returns, without waiting: the writer must have run meanwhile
    let end = n_now();
    writer.stop();

    env.ok(&[
        "restore-db",
        "latest",
        &format!("mysql/{db}"),
        "--as",
        &restored,
        "--mysql-host",
        "127.0.0.1",
        "--mysql-user",
        "root",
    ]);
    let total = mysql(&format!(
        "SELECT (SELECT SUM(balance) FROM `{restored}`.checking) + (SELECT SUM(balance) FROM `{restored}`.savings)"
    ));
    assert_eq!(total.trim(), "400000", "money was created or destroyed");
    let at_snapshot = mysql(&format!("SELECT n FROM `{restored}`.meta"))
        .trim()
        .parse::<u64>()
        .unwrap();
    assert!(
        (start..=end).contains(&at_snapshot),
        "snapshot saw {at_snapshot} transfers, outside [{start}, {end}]"
    );
    assert!(
        end > start,
        "the writer committed no transfer while the backup ran ({start} before, {end} after)"
    );
}

#[test]
fn mysql_failures_are_clear_and_write_nothing() {
    let env = Env::init();
    // an unknown database: refused before anything is stored
    let o = env.run(&["backup", "--mysql", "coffer_t_no_such_db"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("coffer_t_no_such_db") && err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    // a user the server does not know: the connection fails, clearly
    let o = env.run(&[
        "backup",
        "--mysql",
        "all",
        "--mysql-host",
        "127.0.0.1",
        "--mysql-user",
        "coffer_no_such_user",
    ]);
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(
        err.contains("connecting to MySQL/MariaDB") && err.contains("Access denied"),
        "{err}"
    );
    // no dump tool installed: said so, with what to install
    let empty = env.path("emptybin");
    std::fs::create_dir(&empty).unwrap();
    let o = env
        .cmd()
        .env("PATH", &empty)
        .args(["backup", "--mysql", "all"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(
        err.contains("not found in PATH") && err.contains("apt-get install mariadb-client"),
        "{err}"
    );
    let snaps: serde_json::Value = serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 0, "no snapshot was written");
}

#[test]
fn mysql_users_and_grants_are_dumped_to_a_file_only() {
    let env = Env::init();
    let mut clean = Cleanup::new();
    let db = unique("u");
    clean.mysql.push(db.clone());
    mysql(&format!("CREATE DATABASE `{db}`"));
    let s = env.backup_json(&["--mysql", &db, "--mysql-users"]);
    assert_eq!(s["databases"][1], "mysql-globals", "{s}");
    let file = env.path("users.sql");
    env.ok(&[
        "restore-db",
        "latest",
        "mysql-globals",
        "--to-file",
        file.to_str().unwrap(),
    ]);
    let sql = std::fs::read_to_string(&file).unwrap();
    assert!(sql.contains("CREATE USER") && sql.contains("GRANT"), "{sql}");
    let o = env.run(&["restore-db", "latest", "mysql-globals"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("--to-file"), "{}", stderr(&o));
}

// ---------------------------------------------------------------- PostgreSQL

const PG_CONN: [&str; 4] = ["--pg-host", "127.0.0.1", "--pg-user", "postgres"];

fn pg_create_shop(db: &str) {
    psql("postgres", &format!("CREATE DATABASE \"{db}\""));
    psql(
        db,
        &format!(
            "CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance bigint NOT NULL, photo bytea);
             CREATE TABLE audit (id serial PRIMARY KEY, account int, note text);
             CREATE FUNCTION log_open() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN INSERT INTO audit(account, note) VALUES (NEW.id, 'opened ' || NEW.owner); RETURN NEW; END $$;
             CREATE TRIGGER acc_ins AFTER INSERT ON accounts FOR EACH ROW EXECUTE FUNCTION log_open();
             CREATE VIEW rich AS SELECT id, owner FROM accounts WHERE balance > 500;
             CREATE PROCEDURE add_interest(pct int) LANGUAGE sql AS $$
               UPDATE accounts SET balance = balance + balance * pct / 100 $$;
             INSERT INTO accounts SELECT g, 'Zoë 日本 ✓ ' || g, g * 10, sha256(g::text::bytea) FROM generate_series(1, 2000) g;
             INSERT INTO accounts VALUES (0, 'every byte', 0, decode('{}', 'hex'));",
            all_bytes_hex()
        ),
    );
}

#[test]
fn postgres_database_restores_alone_under_a_new_name() {
    let mut clean = Cleanup::new();
    let (shop, other) = (unique("shop"), unique("other"));
    let restored = format!("{shop}_r");
    clean
        .postgres
        .extend([shop.clone(), other.clone(), restored.clone()]);
    pg_create_shop(&shop);
    psql("postgres", &format!("CREATE DATABASE \"{other}\""));
    psql(
        &other,
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'untouched')",
    );
    let tables = ["accounts", "audit"];
    let before = pg_checksums(&shop, &tables);
    let other_before = pg_checksums(&other, &["t"]);

    let env = Env::init();
    let mut args = vec!["--postgres".to_string(), format!("{shop},{other}")];
    args.extend(PG_CONN.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let summary = env.backup_json(&args);
    let ids: Vec<&str> = summary["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            format!("postgres/{shop}"),
            format!("postgres/{other}"),
            "postgres-globals".into()
        ]
    );

    psql("postgres", &format!("DROP DATABASE \"{shop}\""));
    let mut args = vec!["restore-db", "latest"];
    let item = format!("postgres/{shop}");
    args.extend([item.as_str(), "--as", &restored]);
    args.extend(PG_CONN);
    env.ok(&args);

    assert_eq!(pg_checksums(&restored, &tables), before, "table contents differ");
    assert_eq!(
        psql(
            &restored,
            "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal"
        )
        .trim(),
        "1"
    );
    assert_eq!(
        psql(&restored, "SELECT count(*) FROM pg_views WHERE viewname = 'rich'").trim(),
        "1"
    );
    assert_eq!(
        psql(
            &restored,
            "SELECT count(*) FROM pg_proc WHERE proname IN ('add_interest', 'log_open')"
        )
        .trim(),
        "2"
    );
    assert_eq!(
        psql(
            &restored,
            "SELECT upper(encode(photo, 'hex')) FROM accounts WHERE id = 0"
        )
        .trim(),
        all_bytes_hex()
    );
    // the trigger works in the restored copy
    psql(&restored, "INSERT INTO accounts VALUES (99999, 'new', 1, NULL)");
    assert_eq!(
        psql(&restored, "SELECT note FROM audit WHERE account = 99999").trim(),
        "opened new"
    );
    assert_eq!(pg_checksums(&other, &["t"]), other_before);

    let o = env
        .cmd()
        .args(["restore-db", "latest", &format!("postgres/{other}")])
        .args(PG_CONN)
        .output()
        .unwrap();
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(pg_checksums(&other, &["t"]), other_before);
    // globals are only ever written to a file
    let o = env.run(&["restore-db", "latest", "postgres-globals"]);
    assert_eq!(code(&o), 1);
    let file = env.path("globals.sql");
    env.ok(&[
        "restore-db",
        "latest",
        "postgres-globals",
        "--to-file",
        file.to_str().unwrap(),
    ]);
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains("CREATE ROLE postgres"));
}

#[test]
fn postgres_dump_is_consistent_under_concurrent_transfers() {
    let mut clean = Cleanup::new();
    let db = unique("bank");
    let restored = format!("{db}_r");
    clean.postgres.extend([db.clone(), restored.clone()]);
    psql("postgres", &format!("CREATE DATABASE \"{db}\""));
    psql(
        &db,
        "CREATE TABLE checking (id int PRIMARY KEY, balance bigint NOT NULL);
         CREATE TABLE filler (id int PRIMARY KEY, pad text);
         CREATE TABLE meta (n bigint NOT NULL);
         CREATE TABLE savings (id int PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO meta VALUES (0);
         INSERT INTO checking SELECT g, 1000 FROM generate_series(0, 199) g;
         INSERT INTO savings SELECT g, 1000 FROM generate_series(0, 199) g;
         INSERT INTO filler SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 40000) g;",
    );
    let n_now = || psql(&db, "SELECT n FROM meta").trim().parse::<u64>().unwrap();
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", &db]);
    let writer = Writer::start(cmd, pg_transfer_sql);
    let env = Env::init();
    // (read just before the backup: commits during the setup do not count)
    let start = wait_for_progress(n_now, 0, &writer);
    // over the local socket as this machine's user
    env.ok(&["backup", "--postgres", &db]);
    // read as the backup returns, without waiting: the writer must have run meanwhile
    let end = n_now();
    writer.stop();

    env.ok(&[
        "restore-db",
        "latest",
        &format!("postgres/{db}"),
        "--as",
        &restored,
    ]);
    assert_eq!(
        psql(
            &restored,
            "SELECT (SELECT sum(balance) FROM checking) + (SELECT sum(balance) FROM savings)"
        )
        .trim(),
        "400000",
        "money was created or destroyed"
    );
    let at_snapshot = psql(&restored, "SELECT n FROM meta")
        .trim()
        .parse::<u64>()
        .unwrap();
    assert!(
        (start..=end).contains(&at_snapshot),
        "snapshot saw {at_snapshot} transfers, outside [{start}, {end}]"
    );
    assert!(
        end > start,
        "the writer committed no transfer while the backup ran ({start} before, {end} after)"
    );
}

#[test]
fn postgres_dump_killed_midway_leaves_no_item_in_any_snapshot() {
    let mut clean = Cleanup::new();
    let db = unique("victim");
    clean.postgres.push(db.clone());
    psql("postgres", &format!("CREATE DATABASE \"{db}\""));
    let env = Env::init();
    std::fs::create_dir(env.path("files")).unwrap();
    std::fs::write(env.path("files/a"), "some file").unwrap();
    // a pg_dump that starts writing, then dies the way an OOM kill looks
    let fake = env.path("fakebin");
    std::fs::create_dir(&fake).unwrap();
    let script = fake.join("pg_dump");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in --version) echo 'pg_dump (PostgreSQL) 15 (fake)'; exit 0;; esac\n\
         printf 'PGDMP partial archive'\nkill -9 $$\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap());
    let o = env
        .cmd()
        .env("PATH", path)
        .args(["backup", "--postgres", &db])
        .args(PG_CONN)
        .arg(env.path("files"))
        .output()
        .unwrap();
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("postgres database {db}")) && err.contains("killed by signal 9"),
        "{err}"
    );
    assert!(err.contains("does not include it"), "{err}");
    // the snapshot exists (the files are in it) but claims no dump of that database
    let items = databases_json(&env, "latest");
    assert!(items.iter().all(|i| i["name"] != db.as_str()), "{items:?}");
    let listing = env.ok(&["ls", "latest"]);
    assert!(!listing.contains(&format!("{db}.pgdump")), "{listing}");
    assert!(listing.contains("/files/a"), "{listing}");

    // and an unknown database is refused before anything is written
    let o = env
        .cmd()
        .args(["backup", "--postgres", "coffer_t_no_such_db"])
        .args(PG_CONN)
        .output()
        .unwrap();
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("coffer_t_no_such_db") && stderr(&o).contains("does not exist"));
    let snaps: serde_json::Value = serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(
        snaps.as_array().unwrap().len(),
        1,
        "still only the first snapshot"
    );
}

// ---------------------------------------------------------------- SQLite

#[test]
fn sqlite_copy_is_consistent_while_a_writer_holds_a_transaction() {
    let env = Env::init();
    let db = env.path("app.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // keep committed rows in the WAL file: a raw copy of app.db would miss them
    conn.execute_batch(
        "PRAGMA wal_autocheckpoint=0; CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB, s TEXT);",
    )
    .unwrap();
    {
        let tx = conn.unchecked_transaction().unwrap();
        for i in 0..1000i64 {
            tx.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3)",
                rusqlite::params![i, common::pseudo_random(i as u64, 300), format!("ligne {i} é")],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    assert!(
        env.path("app.db-wal").metadata().unwrap().len() > 100_000,
        "rows are in the WAL"
    );
    // a second writer in the middle of a transaction during the backup
    let writer = rusqlite::Connection::open(&db).unwrap();
    writer
        .execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (5000, NULL, 'uncommitted');")
        .unwrap();

    env.ok(&["backup", "--sqlite", db.to_str().unwrap()]);
    writer.execute_batch("COMMIT").unwrap();

    let id = format!("sqlite{}", db.display());
    let out = env.path("restored.db");
    env.ok(&["restore-db", "latest", &id, "--to-file", out.to_str().unwrap()]);
    let r = rusqlite::Connection::open(&out).unwrap();
    let n: i64 = r.query_row("SELECT count(*) FROM t", [], |x| x.get(0)).unwrap();
    assert_eq!(n, 1000, "committed rows only");
    let v: Vec<u8> = r
        .query_row("SELECT v FROM t WHERE id = 999", [], |x| x.get(0))
        .unwrap();
    assert_eq!(v, common::pseudo_random(999, 300));
    let ok: String = r.query_row("PRAGMA integrity_check", [], |x| x.get(0)).unwrap();
    assert_eq!(ok, "ok");

    // to the original place only when nothing is there
    let o = env.run(&["restore-db", "latest", &id]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("exists"), "{}", stderr(&o));
    drop((conn, writer));
    for f in ["app.db", "app.db-wal", "app.db-shm"] {
        let _ = std::fs::remove_file(env.path(f));
    }
    env.ok(&["restore-db", "latest", &id]);
    let r = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = r.query_row("SELECT count(*) FROM t", [], |x| x.get(0)).unwrap();
    assert_eq!(n, 1000);

    // a file that is not a database is refused up front
    std::fs::write(env.path("not.db"), vec![7u8; 4096]).unwrap();
    let o = env.run(&["backup", "--sqlite", env.path("not.db").to_str().unwrap()]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("not.db"), "{}", stderr(&o));
}

// ---------------------------------------------------------------- sites

/// A site (a directory, a MariaDB database and a PostgreSQL database) changes; `restore-site`
/// of the earlier snapshot brings back its files and databases as they were, beside the live
/// ones (`--target`, new databases) or in place (`--in-place --replace-databases`, after a
/// before-restore snapshot of what it replaces), and touches nothing outside the site
/// (issue 25 item 2).
#[test]
fn a_site_comes_back_as_one_unit() {
    let mut clean = Cleanup::new();
    let (my, pg) = (unique("site"), unique("site"));
    clean
        .mysql
        .extend([my.clone(), format!("{my}_r"), format!("{my}_x")]);
    clean
        .postgres
        .extend([pg.clone(), format!("{pg}_r"), format!("{pg}_x")]);
    mysql_create_shop(&my);
    pg_create_shop(&pg);
    let tables = ["accounts", "audit"];
    let (my_before, pg_before) = (mysql_checksums(&my, &tables), pg_checksums(&pg, &tables));

    let env = Env::init();
    let www = env.path("www");
    let shop = www.join("shop");
    std::fs::create_dir_all(shop.join("img")).unwrap();
    std::fs::create_dir_all(www.join("other")).unwrap();
    std::fs::write(shop.join("index.php"), "<?php echo 'shop';\n").unwrap();
    std::fs::write(shop.join("img/logo.png"), common::pseudo_random(1, 300_000)).unwrap();
    std::fs::write(www.join("other/keep"), "other site\n").unwrap();
    let files_before = common::digest_tree(&shop);
    let cfg = env.path("coffer.toml");
    std::fs::write(
        &cfg,
        format!(
            "[site.shop]\npaths = [{:?}]\nmysql = [{my:?}]\npostgres = [{pg:?}]\n",
            shop.to_str().unwrap()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap().to_string();
    let mut args = vec![
        "backup".to_string(),
        "-q".into(),
        www.to_str().unwrap().into(),
        "--mysql".into(),
        my.clone(),
        "--postgres".into(),
        pg.clone(),
    ];
    args.extend(PG_CONN.iter().map(|s| s.to_string()));
    env.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let first = env.ok(&["snapshots", "--json"]);
    let first: Vec<serde_json::Value> = serde_json::from_str(&first).unwrap();
    let first = first[0]["id"].as_str().unwrap().to_string();

    // the site is damaged: files changed, removed and added, rows changed in both databases;
    // the other site changes too, and must stay as it is now
    std::fs::write(shop.join("index.php"), "<?php echo 'defaced';\n").unwrap();
    std::fs::remove_file(shop.join("img/logo.png")).unwrap();
    std::fs::write(shop.join("hacked.php"), "<?php system($_GET['c']);\n").unwrap();
    std::fs::write(www.join("other/keep"), "other site, changed since\n").unwrap();
    mysql(&format!("UPDATE `{my}`.accounts SET balance = 0"));
    psql(&pg, "DELETE FROM accounts WHERE id > 100");
    let (my_damaged, pg_damaged) = (mysql_checksums(&my, &tables), pg_checksums(&pg, &tables));
    assert_ne!(my_damaged, my_before);
    let site = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["--config", &cfg, "restore-site", "latest", "shop"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend(PG_CONN.iter().map(|s| s.to_string()));
        v
    };
    let run = |a: &[String]| env.run(&a.iter().map(String::as_str).collect::<Vec<_>>());

    // a dry run shows the plan and changes nothing
    let o = run(&site(&[
        "--in-place",
        "--replace-databases",
        "--delete",
        "--dry-run",
    ]));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("would restore site shop (configuration)"), "{out}");
    assert!(
        out.contains(&format!("mysql/{my} would be restored as {my} (replacing")),
        "{out}"
    );
    assert!(shop.join("hacked.php").exists());
    assert_eq!(mysql_checksums(&my, &tables), my_damaged);

    // beside the live site: files below --target, databases under new names
    let t = env.path("t");
    let o = run(&site(&["--target", t.to_str().unwrap(), "--db-suffix", "_r"]));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        common::digest_tree(&t.join(shop.strip_prefix("/").unwrap())),
        files_before
    );
    assert_eq!(mysql_checksums(&format!("{my}_r"), &tables), my_before);
    assert_eq!(pg_checksums(&format!("{pg}_r"), &tables), pg_before);
    assert_eq!(
        mysql_checksums(&my, &tables),
        my_damaged,
        "the live database was touched"
    );
    assert_eq!(pg_checksums(&pg, &tables), pg_damaged);
    // again: the new databases exist now, so nothing is done (not even the files)
    let t2 = env.path("t2");
    let o = run(&site(&["--target", t2.to_str().unwrap(), "--db-suffix", "_r"]));
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("exists: nothing was restored"),
        "{}",
        stderr(&o)
    );
    assert!(!t2.exists());
    // --target / is where the site lives: that is --in-place, which saves first
    let o = run(&site(&["--target", "/"]));
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--in-place"), "{}", stderr(&o));
    // a site the configuration does not declare, and a database the snapshot lacks
    let mut a = site(&["--target", t2.to_str().unwrap()]);
    a[4] = "blog".into();
    let o = run(&a);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("declares sites shop"), "{}", stderr(&o));
    let o = env.run(&[
        "restore-site",
        "latest",
        "--site-mysql",
        "no_such_db",
        "--target",
        t2.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("holds no dump of mysql/no_such_db"),
        "{}",
        stderr(&o)
    );

    // in place, replacing the databases: the site is as it was, the other site as it is now
    let o = run(&site(&[
        "--in-place",
        "--replace-databases",
        "--delete",
        "--json",
    ]));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["snapshot_id"], first.as_str(), "{r}");
    assert_eq!(common::digest_tree(&shop), files_before);
    assert!(!shop.join("hacked.php").exists());
    assert_eq!(
        std::fs::read_to_string(www.join("other/keep")).unwrap(),
        "other site, changed since\n"
    );
    assert_eq!(mysql_checksums(&my, &tables), my_before);
    assert_eq!(pg_checksums(&pg, &tables), pg_before);
    // what was replaced is in a before-restore snapshot, which `latest` passes over
    let before = r["before_restore_snapshot"].as_str().unwrap().to_string();
    let dbs = databases_json(&env, &before);
    assert!(
        dbs.iter().any(|d| d["id"] == format!("mysql/{my}").as_str()),
        "{dbs:?}"
    );
    env.ok(&[
        "restore-db",
        &before,
        &format!("mysql/{my}"),
        "--as",
        &format!("{my}_x"),
    ]);
    assert_eq!(mysql_checksums(&format!("{my}_x"), &tables), my_damaged);
    let o = run(&site(&["--in-place", "--dry-run", "--json"]));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        r["snapshot_id"],
        first.as_str(),
        "latest is the site's backup: {r}"
    );
}

/// Drops a MariaDB user and a PostgreSQL role when the test ends.
struct DropAccounts {
    mysql_user: String,
    pg_role: String,
}

impl Drop for DropAccounts {
    fn drop(&mut self) {
        let _ = Command::new("mariadb")
            .args(["-h", "127.0.0.1", "-u", "root", "-e"])
            .arg(format!("DROP USER IF EXISTS '{}'@'localhost'", self.mysql_user))
            .output();
        let _ = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
            ])
            .arg(format!("DROP ROLE IF EXISTS \"{}\"", self.pg_role))
            .output();
    }
}

/// `restore-host` into an empty directory, on a machine whose database servers lost the
/// host's databases, user and role: the files come back as they were (rsync finds nothing to
/// do), the user, the role and the grants come back, every database matches its checksums;
/// another host's newer snapshot is not taken; a second run skips the databases that exist
/// now and says so with exit 3; onto / it needs --yes (issue 25 item 3).
#[test]
fn a_lost_host_comes_back_into_an_empty_root() {
    let mut clean = Cleanup::new();
    let (my, pg) = (unique("host"), unique("host"));
    clean.mysql.push(my.clone());
    clean.postgres.push(pg.clone());
    let accounts = DropAccounts {
        mysql_user: unique("u"),
        pg_role: unique("r"),
    };
    let (user, role) = (accounts.mysql_user.clone(), accounts.pg_role.clone());
    mysql_create_shop(&my);
    pg_create_shop(&pg);
    mysql(&format!(
        "CREATE USER '{user}'@'localhost' IDENTIFIED BY 'pw'; GRANT SELECT ON `{my}`.* TO '{user}'@'localhost';"
    ));
    psql("postgres", &format!("CREATE ROLE \"{role}\" LOGIN"));
    psql(&pg, &format!("GRANT SELECT ON accounts TO \"{role}\""));
    let tables = ["accounts", "audit"];
    let (my_sums, pg_sums) = (mysql_checksums(&my, &tables), pg_checksums(&pg, &tables));

    let env = Env::init();
    let src = env.path("srv");
    std::fs::create_dir_all(src.join("www/img")).unwrap();
    std::fs::write(src.join("www/index.php"), "<?php echo 1;\n").unwrap();
    std::fs::write(src.join("www/img/a.png"), common::pseudo_random(2, 200_000)).unwrap();
    std::os::unix::fs::symlink("index.php", src.join("www/home.php")).unwrap();
    std::fs::hard_link(src.join("www/index.php"), src.join("www/again.php")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(src.join("www/img"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let mut args: Vec<String> = ["backup", "-q", "--host", "lost1", src.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--mysql".into(), my.clone(), "--mysql-users".into()]);
    args.extend(["--postgres".into(), pg.clone()]);
    args.extend(PG_CONN.iter().map(|s| s.to_string()));
    env.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // a newer snapshot of another host, which restore-host lost1 must pass over
    let other = env.path("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("x"), "x").unwrap();
    env.ok(&["backup", "-q", "--host", "other1", other.to_str().unwrap()]);

    // the machine is gone: its databases, user and role with it
    mysql(&format!("DROP DATABASE `{my}`; DROP USER '{user}'@'localhost';"));
    psql("postgres", &format!("DROP DATABASE \"{pg}\" WITH (FORCE)"));
    psql("postgres", &format!("DROP ROLE \"{role}\""));

    let root = env.path("newroot");
    let host = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["restore-host".into(), "lost1".into()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend(PG_CONN.iter().map(|s| s.to_string()));
        v
    };
    let run = |a: &[String]| env.run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let o = run(&host(&["--target", root.to_str().unwrap(), "--dry-run"]));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let plan = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        plan.contains(&format!("mysql/{my}: create and restore")),
        "{plan}"
    );
    // users and grants are SQL from the snapshot, run as the servers' administrator: asked for
    assert!(
        plan.contains("mysql-globals: skip: users, grants and roles are not applied without --apply-globals"),
        "{plan}"
    );
    let o = run(&host(&[
        "--target",
        root.to_str().unwrap(),
        "--dry-run",
        "--apply-globals",
    ]));
    let plan = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(plan.contains("mysql-globals: apply"), "{plan}");
    assert!(!root.exists(), "a dry run wrote");
    // onto / without --yes: the plan, and nothing done
    let o = run(&host(&["--target", "/"]));
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--yes"), "{}", stderr(&o));

    let o = run(&host(&[
        "--target",
        root.to_str().unwrap(),
        "--json",
        "--apply-globals",
    ]));
    assert_eq!(
        code(&o),
        0,
        "{}\n{}",
        stderr(&o),
        String::from_utf8_lossy(&o.stdout)
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["host"], "lost1");
    assert_eq!(r["skipped"], serde_json::json!([]), "{r}");
    let restored = root.join(src.strip_prefix("/").unwrap());
    assert_eq!(common::digest_tree(&restored), common::digest_tree(&src));
    let rsync = Command::new("rsync")
        .args(["-aHAX", "--checksum", "--dry-run", "--itemize-changes"])
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", restored.display()))
        .output()
        .unwrap();
    assert!(rsync.status.success());
    assert_eq!(
        String::from_utf8_lossy(&rsync.stdout),
        "",
        "rsync would change these"
    );
    assert_eq!(mysql_checksums(&my, &tables), my_sums);
    assert_eq!(pg_checksums(&pg, &tables), pg_sums);
    let grants = mysql(&format!("SHOW GRANTS FOR '{user}'@'localhost'"));
    assert!(grants.contains(&format!("GRANT SELECT ON `{my}`.*")), "{grants}");
    assert_eq!(
        psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{role}'")
        )
        .trim(),
        "1"
    );
    assert_eq!(
        psql(
            &pg,
            &format!("SELECT has_table_privilege('{role}', 'accounts', 'SELECT')")
        )
        .trim(),
        "t"
    );

    // again, into another root: the databases exist now, and are kept, said so, exit 3
    let root2 = env.path("newroot2");
    let o = run(&host(&["--target", root2.to_str().unwrap()]));
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains(&format!("not done: mysql/{my}: exists on this server")),
        "{out}"
    );
    assert_eq!(mysql_checksums(&my, &tables), my_sums);
}

/// `coffer drill` restores every dump into a scratch database, dumps it again and compares
/// rows table by table; the scratch databases are gone afterwards (issue 25 item 6).
#[test]
fn a_drill_restores_every_database_into_scratch_and_compares() {
    let mut clean = Cleanup::new();
    let (my, pg) = (unique("drill"), unique("drill"));
    clean.mysql.push(my.clone());
    clean.postgres.push(pg.clone());
    mysql_create_shop(&my);
    pg_create_shop(&pg);
    let env = Env::init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), "a").unwrap();
    let mut args: Vec<String> = ["backup", "-q", "--host", "drill1", src.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--mysql".into(), my.clone(), "--postgres".into(), pg.clone()]);
    args.extend(PG_CONN.iter().map(|s| s.to_string()));
    env.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let scratch = || {
        let m = mysql("SHOW DATABASES LIKE 'coffer_drill_%'");
        let p = psql(
            "postgres",
            "SELECT datname FROM pg_database WHERE datname LIKE 'coffer_drill_%'",
        );
        m.lines().count() + p.lines().count()
    };
    let before = scratch();
    let mut a = vec!["drill", "--host", "drill1", "--json"];
    a.extend(PG_CONN);
    let out = env.ok(&a);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["ok"], true, "{r}");
    let dbs = r["databases"].as_array().unwrap();
    assert_eq!(dbs.len(), 2, "{r}");
    for d in dbs {
        assert_eq!(d["ok"], true, "{d}");
        assert_eq!(d["tables"], 2, "{d}");
        // 2,001 accounts and as many audit rows (the trigger's, dumped as data)
        assert_eq!(d["rows"], 4002, "{d}");
    }
    assert_eq!(scratch(), before, "a scratch database was left behind");
    // a drill that verifies nothing has not passed
    let o = env.run(&["drill", "--host", "drill1", "--files", "0", "--no-databases"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing was verified"), "{}", stderr(&o));
}
