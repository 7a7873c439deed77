//! Restores from the console (issue 25 item 5), with real parts on 127.0.0.1: a `coffer
//! server`, the client's `coffer agent` polling it, and MariaDB. An operator browses a snapshot
//! (the agent lists it: it holds the key) and asks, through the console's forms with a session
//! and its CSRF token, for a file and a database; the agent restores them into its quarantine
//! directory and under a new name, then in place where its configuration allows it, and the
//! client page shows each one done. What the configuration forbids is refused and reported;
//! a customer's login restores its own client only.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use common::agent::{run_ok as ok, Agent};
use common::server::ServerProc;
use common::{code, mysql, stderr};

/// Drops the test's databases, whatever happens.
struct DropDbs(Vec<String>);
impl Drop for DropDbs {
    fn drop(&mut self) {
        for db in &self.0 {
            let _ = Command::new("mariadb")
                .args(["-h", "127.0.0.1", "-u", "root", "-e"])
                .arg(format!("DROP DATABASE IF EXISTS `{db}`"))
                .output();
        }
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The restore requests of web1 as the catalog holds them: (id, status, message).
fn requests(server: &ServerProc) -> Vec<(i64, Option<String>, Option<String>)> {
    let db = rusqlite::Connection::open(server.data.join("server.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut st = db
        .prepare("SELECT id, status, message FROM restore_requests WHERE client = 'web1' ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token in {page}"))
        .to_string()
}

#[test]
fn restores_asked_for_in_the_console_are_done_by_the_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = dir.join("coffer.toml");
    let server = ServerProc::start(&dir.join("server"), &[]);
    let token = server.add_client("web1", "web1", "append");
    server.add_client("web2", "web2", "append");
    fs::write(dir.join("web1.token"), format!("{token}\n")).unwrap();
    let www = dir.join("www");
    let other = dir.join("other");
    fs::create_dir_all(www.join("assets")).unwrap();
    fs::create_dir_all(&other).unwrap();
    fs::write(www.join("index.php"), "<?php echo 'the shop';\n").unwrap();
    fs::write(www.join("assets/logo.svg"), "<svg/>\n").unwrap();
    fs::write(other.join("notes.txt"), "not the server's to restore in place\n").unwrap();
    let db = format!("coffer_cr_{}", std::process::id());
    let _drop = DropDbs(vec![
        db.clone(),
        format!("{db}_restored_1"),
        format!("{db}_restored_2"),
        format!("{db}_restored_3"),
        format!("{db}_restored_4"),
        format!("{db}_restored_5"),
        format!("{db}_restored_6"),
        format!("{db}_restored_7"),
    ]);
    mysql(&format!(
        "DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}`; \
         CREATE TABLE `{db}`.orders (id INT PRIMARY KEY, item TEXT); \
         INSERT INTO `{db}`.orders VALUES (1, 'coffee'), (2, 'tea'), (3, 'cocoa');"
    ));
    let cfg = |extra: &str| {
        format!(
            r#"
[agent]
host = "web1"
state_dir = "{dir}/state"

[repository.company]
location = "{url}"
password_file = "{dir}/company.key"
token_file = "{dir}/web1.token"
cacert = "{cacert}"

[managed]
server = "company"
paths = ["{www}"]
{extra}

[job.files]
paths = ["{www}", "{other}"]
mysql = ["{db}"]
mysql_host = "127.0.0.1"
mysql_port = 3306
mysql_user = "root"
to = ["company"]
"#,
            dir = dir.display(),
            url = server.url("web1"),
            cacert = server.cacert.display(),
            www = www.display(),
            other = other.display(),
        )
    };
    fs::write(&config, cfg("restore = \"in-place\"\ndatabases = true")).unwrap();
    let key = format!("{}/company.key", dir.display());
    ok(dir, &config, &["key", "generate", "-q", "-o", &key]);
    ok(dir, &config, &["--repo-name", "company", "init", "-q"]);
    ok(dir, &config, &["run", "files"]);
    // what the snapshot holds, then damaged here
    fs::write(www.join("index.php"), "encrypted by an intruder\n").unwrap();
    mysql(&format!("DELETE FROM `{db}`.orders WHERE id > 1;"));

    let mut agent = Agent::start(dir, &config, 1);
    let session = server.console_login("alice");
    let (head, page) = server.console_get(&session, "/console/client/web1");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        page.contains("action=\"/console/client/web1/restore\""),
        "the client page has the Restore form: {page}"
    );
    let csrf = csrf_of(&page);

    // browsing: the agent lists the snapshot's directory (the server holds no key)
    let (head, listing) = server.console_get(
        &session,
        &format!(
            "/console/client/web1/browse?snapshot=latest&path={}",
            enc(www.to_str().unwrap())
        ),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}{listing}");
    assert!(
        listing.contains("data-entry=\"index.php\"") && listing.contains("data-entry=\"assets\""),
        "{listing}"
    );
    assert!(
        listing.contains(">assets/</a>"),
        "a directory is a link: {listing}"
    );
    // the Restore buttons name the snapshot listed, not `latest` (a backup landing meanwhile
    // does not change what is restored)
    let full_id = listing
        .split("name=\"snapshot\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    assert_eq!(full_id.len(), 64, "{full_id}");
    let (_, missing) = server.console_get(
        &session,
        "/console/client/web1/browse?snapshot=latest&path=%2Fno%2Fsuch%2Fdir",
    );
    assert!(missing.contains("The agent says:"), "{missing}");

    let restore = |session: &str, body: String| -> (String, String) {
        server.console_post(session, "/console/client/web1/restore", &body)
    };
    let wait_done = |agent: &Agent, id: i64| -> (String, String) {
        let asked = Instant::now();
        let mut last = None;
        common::wait_until(
            &format!("restore request {id} to end"),
            || {
                last = requests(&server)
                    .into_iter()
                    .find(|r| r.0 == id)
                    .and_then(|r| Some((r.1?, r.2.unwrap_or_default())));
                last.is_some()
            },
            || agent.exited(),
        );
        eprintln!(
            "restore request {id}: ended {:.1} s after it was asked for",
            asked.elapsed().as_secs_f64()
        );
        last.unwrap()
    };
    let last_id = || requests(&server).last().map(|r| r.0).unwrap();

    // a forged form asks nothing
    let (head, _) = restore(
        &session,
        format!(
            "csrf=forged&snapshot=latest&kind=path&name={}",
            enc(www.to_str().unwrap())
        ),
    );
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(requests(&server).is_empty());
    // a bad path or name is refused at once
    for (kind, name) in [("path", "relative/x"), ("mysql", "a,b"), ("site", "--in-place")] {
        let (head, page) = restore(
            &session,
            format!("csrf={csrf}&snapshot=latest&kind={kind}&name={}", enc(name)),
        );
        assert!(head.starts_with("HTTP/1.1 400"), "{kind} {name}: {head}{page}");
    }
    assert!(requests(&server).is_empty());

    // 1. a file into quarantine, from the listed snapshot
    let file = www.join("index.php");
    let (head, _) = restore(
        &session,
        format!(
            "csrf={csrf}&snapshot={full_id}&kind=path&name={}",
            enc(file.to_str().unwrap())
        ),
    );
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    let id = last_id();
    let (status, message) = wait_done(&agent, id);
    assert_eq!(status, "ok", "{message}\n{}", agent.log());
    let quarantined = dir
        .join("state/restores")
        .join(id.to_string())
        .join(file.strip_prefix("/").unwrap());
    assert_eq!(
        fs::read_to_string(&quarantined).unwrap(),
        "<?php echo 'the shop';\n"
    );
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        "encrypted by an intruder\n",
        "a quarantined restore leaves the live file alone"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(dir.join("state/restores"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let (_, page) = server.console_get(&session, "/console/client/web1");
    let row = page
        .split(&format!("data-restore=\"{id}\""))
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_else(|| panic!("no row of request {id}: {page}"));
    assert!(row.contains("badge ok\">done"), "{row}");
    assert!(row.contains("quarantine, folder"), "{row}");

    // 2. a database under a new name
    let (head, _) = restore(
        &session,
        format!("csrf={csrf}&snapshot=latest&kind=mysql&name={db}"),
    );
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    let id = last_id();
    let (status, message) = wait_done(&agent, id);
    assert_eq!(status, "ok", "{message}\n{}", agent.log());
    assert_eq!(
        mysql(&format!("SELECT COUNT(*) FROM `{db}_restored_{id}`.orders")).trim(),
        "3"
    );
    assert_eq!(
        mysql(&format!("SELECT COUNT(*) FROM `{db}`.orders")).trim(),
        "1",
        "the live database is left alone"
    );

    // 3. in place, where [managed] allows it: the file and the database come back
    let (head, _) = restore(
        &session,
        format!(
            "csrf={csrf}&snapshot=latest&kind=path&name={}&in_place=yes",
            enc(file.to_str().unwrap())
        ),
    );
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    let (status, message) = wait_done(&agent, last_id());
    assert_eq!(status, "ok", "{message}\n{}", agent.log());
    assert_eq!(fs::read_to_string(&file).unwrap(), "<?php echo 'the shop';\n");
    let (head, _) = restore(
        &session,
        format!("csrf={csrf}&snapshot=latest&kind=mysql&name={db}&in_place=yes"),
    );
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    let (status, message) = wait_done(&agent, last_id());
    assert_eq!(status, "ok", "{message}\n{}", agent.log());
    assert_eq!(mysql(&format!("SELECT COUNT(*) FROM `{db}`.orders")).trim(), "3");

    // (the database restored in place was saved first, in a before-restore snapshot that
    // `latest` passes over from now on: the next restores of `latest` are of the backup)

    // 4a. a symlink put on the way after the backup does not lead an in-place restore out of
    // [managed] paths: www/assets -> a directory outside
    let outside = dir.join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::remove_dir_all(www.join("assets")).unwrap();
    std::os::unix::fs::symlink(&outside, www.join("assets")).unwrap();
    for name in [www.join("assets"), www.join("assets/logo.svg")] {
        let (head, _) = restore(
            &session,
            format!(
                "csrf={csrf}&snapshot=latest&kind=path&name={}&in_place=yes",
                enc(name.to_str().unwrap())
            ),
        );
        assert!(head.starts_with("HTTP/1.1 303"), "{head}");
        let (status, message) = wait_done(&agent, last_id());
        assert_eq!(status, "failed", "{}: {message}", name.display());
        assert!(message.contains("is a symlink"), "{message}");
    }
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing was written through the symlink"
    );

    // 4b. in place outside [managed] paths: refused by the agent, and the refusal reported
    fs::write(other.join("notes.txt"), "changed here\n").unwrap();
    let (head, _) = restore(
        &session,
        format!(
            "csrf={csrf}&snapshot=latest&kind=path&name={}&in_place=yes",
            enc(other.join("notes.txt").to_str().unwrap())
        ),
    );
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    let (status, message) = wait_done(&agent, last_id());
    assert_eq!(status, "failed");
    assert!(message.contains("[managed] paths"), "{message}");
    assert_eq!(
        fs::read_to_string(other.join("notes.txt")).unwrap(),
        "changed here\n"
    );

    // 5. a customer's login restores its own client only
    let pw = server.admin_ok(&["operator", "add", "bob", "--client", "web1"]);
    let bob = server.console_login_with("bob", pw.trim());
    let (_, page) = server.console_get(&bob, "/console/client/web1");
    let bob_csrf = csrf_of(&page);
    let (head, _) = server.console_post(
        &bob,
        "/console/client/web2/restore",
        &format!("csrf={bob_csrf}&snapshot=latest&kind=path&name=%2Fsrv"),
    );
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let (head, _) = server.console_get(&bob, "/console/client/web2/browse?snapshot=latest&path=%2F");
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let (head, _) = restore(
        &bob,
        format!(
            "csrf={bob_csrf}&snapshot=latest&kind=path&name={}",
            enc(www.to_str().unwrap())
        ),
    );
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    let id = last_id();
    let (status, message) = wait_done(&agent, id);
    assert_eq!(status, "ok", "{message}");
    assert!(dir
        .join("state/restores")
        .join(id.to_string())
        .join(www.strip_prefix("/").unwrap())
        .join("assets/logo.svg")
        .exists());

    // 6. a configuration that forbids both: restores and listings are refused and said so
    fs::write(
        &config,
        cfg("restore = \"off\"\nbrowse = false\ndatabases = true"),
    )
    .unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(agent.pid() as i32).unwrap(),
        rustix::process::Signal::HUP,
    )
    .unwrap();
    common::wait_until(
        "the agent to reload",
        || agent.log().contains("configuration reloaded"),
        || agent.exited(),
    );
    let (_, listing) = server.console_get(&session, "/console/client/web1/browse?snapshot=latest&path=%2F");
    assert!(
        listing.contains("browsing is off in this client&#39;s configuration"),
        "{listing}"
    );
    let (head, _) = restore(
        &session,
        format!("csrf={csrf}&snapshot=latest&kind=mysql&name={db}"),
    );
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    let (status, message) = wait_done(&agent, last_id());
    assert_eq!(status, "failed");
    assert!(message.contains("off here"), "{message}");
    assert_eq!(agent.stop(), 0);
    let o = common::agent_command(dir, &config)
        .args(["--repo-name", "company", "check"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}
