//! A dump replayed from a repository cannot run commands on this machine: the MariaDB client
//! runs with --sandbox (needs the machine's MariaDB on its socket, as root, like the CLI's
//! database tests).
#![allow(clippy::unwrap_used)]

use coffer_core::format::{DatabaseItem, DatabaseItemKind};
use coffer_db::{restore_mysql, MysqlConnection};

#[test]
fn a_forged_dump_runs_no_shell_command() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let name = format!("coffer_t_sandbox_{}", std::process::id());
    let item = DatabaseItem {
        engine: "mysql".into(),
        kind: DatabaseItemKind::Database,
        name: name.clone(),
        path: format!("/.databases/mysql/{name}.sql"),
        format: "mysql-sql".into(),
        server_version: String::new(),
        tool: String::new(),
        options: vec![],
        start: chrono::Local::now().fixed_offset(),
        end: chrono::Local::now().fixed_offset(),
        size: 0,
        properties: Default::default(),
        warnings: vec![],
    };
    let dump = format!(
        "CREATE TABLE t (id int);\n\\! touch {}\nINSERT INTO t VALUES (1);\n",
        marker.display()
    );
    let conn = MysqlConnection::default();
    let r = restore_mysql(&conn, &item, &name, &mut dump.as_bytes());
    // refused, and the half-restored database dropped again
    assert!(r.is_err(), "{r:?}");
    assert!(!marker.exists(), "the dump ran a shell command");
    assert!(!coffer_db::mysql_exists(&conn, &name).unwrap());
}
