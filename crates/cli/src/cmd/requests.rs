//! Restores and listings asked for on the coffer server (its console), carried out here by
//! the agent with this machine's key, within what `[managed]` allows:
//!
//! - `restore = "off"` refuses every restore; `"quarantine"` (the default) restores files into
//!   the quarantine directory (`[managed] quarantine`, a folder per request, mode 0700) and
//!   databases under a new name (`NAME_restored_ID`); `"in-place"` also restores where things
//!   were: files overwritten (only below `[managed] paths`), databases replaced through
//!   `restore-site`, which proves the dump in a scratch database and saves the current one in
//!   a before-restore snapshot first.
//! - `browse = false` refuses listings (with it, file names pass through the server).
//!
//! A restore runs as an ordinary command (`coffer restore`, `restore-db`, `restore-site`) on
//! the repository of `[managed] server`; its run report names the request
//! ([`crate::report::REQUEST_VAR`]), which ends it on the server. A refusal is reported the
//! same way, as a failed restore that says why.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, Result};
use coffer_agent::{Config, Databases, RestorePolicy};
use coffer_core::format::NodeKind;
use coffer_core::walk::{find_path, Found};
use coffer_wire::{BrowseAnswer, BrowseEntry, RestoreItem, RestoreRequest};

use crate::cli::{Global, SnapshotFilter};

/// The database connection flags of the first job that dumps `engine`'s databases (the
/// settings of this machine's file: none come from the server).
fn db_flags(cfg: &Config, engine: &str) -> Vec<OsString> {
    let Some(job) = cfg.jobs.values().find(|j| {
        let d: &Option<Databases> = if engine == "mysql" { &j.mysql } else { &j.postgres };
        d.is_some()
    }) else {
        return Vec::new();
    };
    let d = &job.db;
    let mut out: Vec<OsString> = Vec::new();
    let mut flag = |name: &str, v: Option<OsString>| {
        if let Some(v) = v {
            out.push(format!("--{name}").into());
            out.push(v);
        }
    };
    if engine == "mysql" {
        flag("mysql-host", d.mysql_host.clone().map(Into::into));
        flag("mysql-port", d.mysql_port.map(|p| p.to_string().into()));
        flag("mysql-socket", d.mysql_socket.clone().map(Into::into));
        flag("mysql-user", d.mysql_user.clone().map(Into::into));
        flag(
            "mysql-defaults-file",
            d.mysql_defaults_file.clone().map(Into::into),
        );
    } else {
        flag("pg-host", d.pg_host.clone().map(Into::into));
        flag("pg-port", d.pg_port.map(|p| p.to_string().into()));
        flag("pg-user", d.pg_user.clone().map(Into::into));
    }
    out
}

/// The `coffer` command (its arguments after `--config FILE --repo-name SERVER`) that carries
/// out `r` here, or why it is refused. `host`: this machine's name in snapshots (`latest` is
/// this machine's newest).
pub fn restore_args(cfg: &Config, host: &str, r: &RestoreRequest) -> Result<Vec<OsString>, String> {
    let Some(m) = &cfg.managed else {
        return Err("this configuration has no [managed] section".into());
    };
    match (m.restore, r.in_place) {
        (RestorePolicy::Off, _) => {
            return Err("restores asked for by the server are off here ([managed] restore = \"off\")".into())
        }
        (RestorePolicy::Quarantine, true) => {
            return Err(
                "in-place restores are not allowed here ([managed] restore = \"quarantine\"): ask for a copy in quarantine"
                    .into(),
            )
        }
        _ => {}
    }
    r.item.valid()?;
    let databases = |what: &str| {
        if m.databases {
            Ok(())
        } else {
            Err(format!(
                "{what}: databases are not the server's to restore here ([managed] databases = false)"
            ))
        }
    };
    if !coffer_wire::valid_snapshot(&r.snapshot) {
        return Err(format!(
            "snapshot {:?}: not an id or `latest`",
            r.snapshot.escape_debug().to_string()
        ));
    }
    let id = r.id;
    let quarantine = m.quarantine.join(id.to_string());
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &dyn AsRef<std::ffi::OsStr>| a.push(s.as_ref().to_os_string());
    match &r.item {
        RestoreItem::Path(p) => {
            if r.in_place && !m.paths.iter().any(|allowed| Path::new(p).starts_with(allowed)) {
                return Err(format!(
                    "in place, only what [managed] paths allows may be restored; {} is not below one of them",
                    p.escape_debug()
                ));
            }
            push(&"restore");
            push(&format!("{}:{p}", r.snapshot));
            push(&"--full-path");
            push(&"--target");
            if r.in_place {
                push(&"/");
            } else {
                push(&quarantine);
            }
        }
        RestoreItem::Mysql(n) | RestoreItem::Postgres(n) => {
            databases(&r.item.describe())?;
            let engine = if matches!(r.item, RestoreItem::Mysql(_)) {
                "mysql"
            } else {
                "postgres"
            };
            if r.in_place {
                // proved in a scratch database, the current one saved first
                push(&"restore-site");
                push(&r.snapshot);
                push(&format!("--site-{engine}"));
                push(&n);
                push(&"--in-place");
                push(&"--replace-databases");
            } else {
                push(&"restore-db");
                push(&r.snapshot);
                push(&format!("{engine}/{n}"));
                push(&"--as");
                push(&format!("{n}_restored_{id}"));
            }
            a.extend(db_flags(cfg, engine));
        }
        RestoreItem::Site(n) => {
            // a site of this file: its paths and databases are known here; any other name is
            // a cPanel account the snapshot describes (its word, not this file's)
            let local = cfg.sites.get(n);
            if local.is_none_or(|s| !s.mysql.is_empty() || !s.postgres.is_empty()) {
                databases(&format!("site {n}"))?;
            }
            if r.in_place {
                let Some(site) = local else {
                    return Err(format!(
                        "site {n}: in place, only a [site.NAME] of this machine's file (a cPanel account's paths are the snapshot's word): ask for a copy in quarantine"
                    ));
                };
                if let Some(p) = site
                    .paths
                    .iter()
                    .find(|p| !m.paths.iter().any(|allowed| p.starts_with(allowed)))
                {
                    return Err(format!(
                        "site {n}: in place, only what [managed] paths allows may be restored; {} is not below one of them",
                        p.display()
                    ));
                }
            }
            push(&"restore-site");
            push(&r.snapshot);
            push(&n);
            if r.in_place {
                push(&"--in-place");
                push(&"--replace-databases");
            } else {
                push(&"--target");
                push(&quarantine);
                push(&"--db-suffix");
                push(&format!("_restored_{id}"));
            }
            a.extend(db_flags(cfg, "mysql"));
            a.extend(db_flags(cfg, "postgres"));
        }
    }
    // this machine's snapshots only (an id of another host's is refused too)
    a.push("--host".into());
    a.push(host.into());
    Ok(a)
}

/// Make the quarantine directory (mode 0700: what a restore puts there is nobody's business
/// until an administrator moves it) and, for a restore of files, the request's own folder in
/// it, which must not exist yet: a request number seen again (a server whose catalog was
/// reset, or one that lies) never restores into an earlier restore's folder.
pub fn make_quarantine(cfg: &Config, r: &RestoreRequest) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let Some(m) = &cfg.managed else { return Ok(()) };
    let files = matches!(r.item, RestoreItem::Path(_) | RestoreItem::Site(_)) && !r.in_place;
    if !files {
        return Ok(());
    }
    let q = &m.quarantine;
    std::fs::create_dir_all(q)
        .and_then(|()| std::fs::set_permissions(q, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("the quarantine directory {}: {e}", q.display()))?;
    let mine = q.join(r.id.to_string());
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&mine)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "quarantine folder {} exists already (an earlier request of that number): move it away, then ask again",
                r.id
            ),
            _ => format!("the quarantine folder {}: {e}", mine.display()),
        })
}

/// The report of a restore that did not run (refused, or stopped before it could say).
pub fn refusal_report(id: i64, host: &str, why: &str) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    serde_json::json!({
        "kind": "restore",
        "status": "failed",
        "host": host,
        "started": now,
        "finished": now,
        "errors": 1,
        "messages": [crate::report::redact(why)],
        "request": id,
    })
}

fn kind_name(k: NodeKind) -> &'static str {
    match k {
        NodeKind::Dir => "dir",
        NodeKind::File => "file",
        NodeKind::Symlink => "symlink",
        _ => "other",
    }
}

/// The listing of `path` in `snapshot` (`latest`: this machine's newest).
fn list(g: &Global, request: i64, snapshot: &str, path: &str) -> Result<BrowseAnswer> {
    if !coffer_wire::valid_path(path) {
        anyhow::bail!("{path:?}: an absolute path without . or .. is needed");
    }
    if !coffer_wire::valid_snapshot(snapshot) {
        anyhow::bail!("snapshot {snapshot:?}: `latest` or an id of at least 8 hex digits");
    }
    let repo = super::open_indexed(g)?;
    // this machine's snapshots only, as for restores
    let filter = SnapshotFilter {
        host: vec![super::job::this_host(g)],
        ..Default::default()
    };
    let (sid, snap) = super::resolve_snapshot(&repo, snapshot, &filter)?;
    let tree = match find_path(&repo, snap.tree, path)? {
        Found::Root(t) => Some(t),
        Found::Node(n) if n.kind == NodeKind::Dir => n.subtree,
        Found::Node(_) => anyhow::bail!("{path} is not a directory in snapshot {}", sid.short()),
    };
    let nodes = match tree {
        Some(t) => repo.load_tree(&t)?.nodes,
        None => Vec::new(),
    };
    let more = nodes.len().saturating_sub(coffer_wire::BROWSE_MAX_ENTRIES) as u64;
    let entries = nodes
        .iter()
        .take(coffer_wire::BROWSE_MAX_ENTRIES)
        .map(|n| BrowseEntry {
            name: String::from_utf8_lossy(&n.name.0).into_owned(),
            kind: kind_name(n.kind).into(),
            size: n.size,
            mtime: n.mtime.s,
        })
        .collect();
    Ok(BrowseAnswer {
        id: request,
        entries,
        more,
        snapshot: sid.to_hex(),
        error: None,
    })
}

/// `coffer agent browse --request ID SNAPSHOT PATH` (started by the agent): list one directory
/// of a snapshot and post it to the server that asked; a failure is posted as the answer.
pub fn browse(g: &Global, request: i64, snapshot: &str, path: &str) -> Result<u8> {
    let url =
        crate::report::target(g).context("a listing goes to a coffer server repository (--repo-name)")?;
    let answer = list(g, request, snapshot, path).unwrap_or_else(|e| BrowseAnswer {
        id: request,
        error: Some(format!("{e:#}")),
        ..Default::default()
    });
    let failed = answer.error.clone();
    let json = serde_json::to_vec(&answer)?;
    crate::report::rest(g, &url)
        .map_err(anyhow::Error::msg)?
        .post_browse(&json)
        .with_context(|| format!("posting the listing to {url}"))?;
    match failed {
        Some(e) => anyhow::bail!("{e}"),
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            "[repository.company]\nlocation = \"https://backup.example:8443/web1\"\npassword_file = \"/etc/coffer/pw\"\n\
             [managed]\nserver = \"company\"\npaths = [\"/var/www\"]\n{extra}\n\
             [job.db]\nmysql = [\"shop\"]\nmysql_socket = \"/run/mysqld/mysqld.sock\"\nto = [\"company\"]\n\
             [site.shop]\npaths = [\"/var/www/shop\"]\nmysql = [\"shop\"]\n\
             [site.mail]\npaths = [\"/var/mail\"]\n"
        );
        Config::parse(Path::new("/etc/coffer/coffer.toml"), &text).unwrap()
    }

    fn req(item: RestoreItem, in_place: bool) -> RestoreRequest {
        RestoreRequest {
            id: 7,
            snapshot: "latest".into(),
            item,
            in_place,
        }
    }

    fn words(a: &[OsString]) -> Vec<String> {
        a.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    fn args(cfg: &Config, item: RestoreItem, in_place: bool) -> Result<Vec<String>, String> {
        restore_args(cfg, "web1", &req(item, in_place)).map(|a| words(&a))
    }

    #[test]
    fn a_quarantine_folder_is_never_restored_into_twice() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&format!("quarantine = \"{}/q\"", dir.path().display()));
        let r = req(RestoreItem::Path("/var/www".into()), false);
        make_quarantine(&cfg, &r).unwrap();
        let e = make_quarantine(&cfg, &r).unwrap_err();
        assert!(e.contains("exists already"), "{e}");
        use std::os::unix::fs::PermissionsExt;
        for d in ["q", "q/7"] {
            let mode = std::fs::metadata(dir.path().join(d))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{d}");
        }
        // databases and in-place restores make no folder
        let mut db = req(RestoreItem::Mysql("shop".into()), false);
        db.id = 8;
        make_quarantine(&cfg, &db).unwrap();
        assert!(!dir.path().join("q/8").exists());
    }

    #[test]
    fn restores_go_to_quarantine_unless_in_place_is_allowed() {
        let cfg = config("databases = true");
        let q = cfg.state_dir.join("restores/7");
        assert_eq!(
            args(&cfg, RestoreItem::Path("/var/www/shop".into()), false).unwrap(),
            [
                "restore",
                "latest:/var/www/shop",
                "--full-path",
                "--target",
                q.to_str().unwrap(),
                "--host",
                "web1"
            ]
        );
        let e = args(&cfg, RestoreItem::Path("/var/www/shop".into()), true).unwrap_err();
        assert!(e.contains("not allowed here"), "{e}");
        let a = args(&cfg, RestoreItem::Mysql("shop".into()), false).unwrap();
        assert_eq!(
            a[..5],
            ["restore-db", "latest", "mysql/shop", "--as", "shop_restored_7"]
        );
        assert!(a.contains(&"/run/mysqld/mysqld.sock".to_string()), "{a:?}");
        // an id too is this machine's only
        let mut by_id = req(RestoreItem::Path("/var/www".into()), false);
        by_id.snapshot = "0123abcd".into();
        let a = words(&restore_args(&cfg, "web1", &by_id).unwrap());
        assert_eq!(a[a.len() - 2..], ["--host", "web1"]);

        // databases only where [managed] databases allows
        let plain = config("");
        for item in [
            RestoreItem::Mysql("shop".into()),
            RestoreItem::Site("shop".into()),
            RestoreItem::Site("bob".into()),
        ] {
            let e = args(&plain, item.clone(), false).unwrap_err();
            assert!(e.contains("databases = false"), "{item:?}: {e}");
        }
        // (a site of this file without databases needs no such leave)
        args(&plain, RestoreItem::Site("mail".into()), false).unwrap();

        let cfg = config("restore = \"in-place\"\ndatabases = true");
        let a = args(&cfg, RestoreItem::Path("/var/www/shop".into()), true).unwrap();
        assert_eq!(a[3..5], ["--target", "/"]);
        // in place, only below [managed] paths
        for p in ["/etc/shadow", "/var/wwwx"] {
            let e = args(&cfg, RestoreItem::Path(p.into()), true).unwrap_err();
            assert!(e.contains("[managed] paths"), "{p}: {e}");
        }
        let a = args(&cfg, RestoreItem::Mysql("shop".into()), true).unwrap();
        assert_eq!(
            a[..6],
            [
                "restore-site",
                "latest",
                "--site-mysql",
                "shop",
                "--in-place",
                "--replace-databases"
            ]
        );
        // a site in place: only one of this file, and only within [managed] paths
        args(&cfg, RestoreItem::Site("shop".into()), true).unwrap();
        let e = args(&cfg, RestoreItem::Site("mail".into()), true).unwrap_err();
        assert!(e.contains("/var/mail is not below"), "{e}");
        let e = args(&cfg, RestoreItem::Site("bob".into()), true).unwrap_err();
        assert!(e.contains("cPanel account"), "{e}");

        let cfg = config("restore = \"off\"\ndatabases = true");
        let e = args(&cfg, RestoreItem::Site("shop".into()), false).unwrap_err();
        assert!(e.contains("off here"), "{e}");
        // what no command line may carry
        let cfg = config("databases = true");
        for bad in [
            RestoreItem::Path("/var/www/../../etc".into()),
            RestoreItem::Mysql("shop --sandbox".into()),
            RestoreItem::Mysql("--host=evil".into()),
            RestoreItem::Site("--in-place".into()),
        ] {
            assert!(args(&cfg, bad.clone(), false).is_err(), "{bad:?}");
        }
    }
}
