//! The server notices what does not happen: run reports, overdue detection by the server's
//! own clock (injected: `--test-clock`), email alerts through a real SMTP listener (Python's
//! aiosmtpd on 127.0.0.1, installed by `.ci/run`), the same events on a webhook receiver, the
//! morning digest's subject line, and `/metrics` in Prometheus text format.
#![allow(clippy::unwrap_used)]

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use base64::Engine;
use chrono::TimeZone;
use common::server::ServerProc;
use common::{code, stderr, Env};

/// aiosmtpd writing every message it receives into a maildir; killed on drop.
struct Smtp {
    /// In a cell so that [`Smtp::exited`] works beside other shared borrows.
    child: RefCell<Child>,
    port: u16,
    maildir: PathBuf,
    log: PathBuf,
}

impl Smtp {
    fn start(dir: &Path) -> Smtp {
        let port = free_port();
        let maildir = dir.join("maildir");
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("smtp.log")).unwrap())
            .spawn()
            .expect("python3 with aiosmtpd (pip install aiosmtpd)");
        let s = Smtp {
            child: RefCell::new(child),
            port,
            maildir,
            log: dir.join("smtp.log"),
        };
        common::wait_until(
            &format!("the SMTP listener on port {port}"),
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
            || s.exited(),
        );
        s
    }

    /// For [`common::wait_until`]: a report once the listener has exited.
    fn exited(&self) -> Option<String> {
        common::exit_report("the SMTP listener", &mut self.child.borrow_mut(), &self.log)
    }

    /// Subjects of the messages received so far.
    fn subjects(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.maildir.join("new")) else {
            return out;
        };
        let mut files: Vec<_> = rd.map(|e| e.unwrap().path()).collect();
        files.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
        for f in files {
            let text = fs::read_to_string(&f).unwrap();
            let mut subject = String::new();
            let mut in_subject = false;
            for line in text.lines() {
                if line.is_empty() {
                    break;
                }
                if let Some(s) = line.strip_prefix("Subject: ") {
                    subject = s.to_string();
                    in_subject = true;
                } else if in_subject && line.starts_with([' ', '\t']) {
                    // a folded header: the line break goes, the whitespace stays
                    subject.push_str(line);
                } else {
                    in_subject = false;
                }
            }
            out.push(subject);
        }
        out
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let child = self.child.get_mut();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A webhook receiver on loopback: keeps every JSON body it is sent.
fn webhook_receiver() -> (u16, Arc<Mutex<Vec<serde_json::Value>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut head = String::new();
            while !head.ends_with("\r\n\r\n") {
                if r.read_line(&mut head).unwrap_or(0) == 0 {
                    break;
                }
            }
            let mut body = vec![0u8; common::content_length(&head)];
            if r.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice(&body) {
                    g.lock().unwrap().push(v);
                }
            }
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, got)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn count(v: &[String], s: &str) -> usize {
    v.iter().filter(|x| x.as_str() == s).count()
}

/// `2028-01-03 HH:MM` UTC as seconds.
fn at(h: u32, m: u32) -> i64 {
    chrono::Utc
        .with_ymd_and_hms(2028, 1, 3, h, m, 0)
        .unwrap()
        .timestamp()
}

fn set_clock(file: &Path, t: i64) {
    let tmp = file.with_extension("tmp");
    fs::write(&tmp, t.to_string()).unwrap();
    fs::rename(&tmp, file).unwrap();
}

/// Prometheus text → (metric name with labels, as written) → value. Every sample line must
/// parse: a name, optional labels in braces, one number.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            assert!(
                line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "labels in {line:?}");
        }
        out.insert(series.to_string(), value.parse::<f64>().unwrap());
    }
    out
}

#[test]
fn overdue_failure_recovery_digest_webhooks_and_metrics() {
    let e = Env::new();
    let smtp = Smtp::start(&e.path(""));
    let (hook_port, hooks) = webhook_receiver();
    let clock = e.path("clock");
    set_clock(&clock, at(10, 5));
    let clock_arg = clock.to_str().unwrap().to_string();
    let server = ServerProc::start(
        &e.path("server"),
        &["--test-clock", &clock_arg, "--monitor-every", "1s"],
    );
    // what the waits below wait for comes from the server and the SMTP listener: a wait ends
    // in failure only if one of them has exited
    let ended = || server.exited().or_else(|| smtp.exited());
    server.admin_ok(&[
        "alerts",
        "set",
        "--smtp",
        &format!("127.0.0.1:{}", smtp.port),
        "--smtp-tls",
        "none",
        "--from",
        "coffer@backup.test",
        "--to",
        "ops@backup.test",
        "--webhook",
        &format!("http://127.0.0.1:{hook_port}/hook"),
        "--digest-at",
        "11:15",
    ]);
    let operator = server
        .admin_ok(&["operator", "add", "prometheus"])
        .trim()
        .to_string();
    let get = |auth: Option<&str>| {
        let mut head = String::from("GET /metrics HTTP/1.1\nHost: 127.0.0.1\nConnection: close");
        if let Some(a) = auth {
            head.push_str(&format!(
                "\nAuthorization: Basic {}",
                base64::engine::general_purpose::STANDARD.encode(a)
            ));
        }
        server.raw(&head, b"").unwrap()
    };
    // "nothing more is sent" is checked after the server has judged the fleet a few more
    // times, counted by its own metric, not after some seconds
    let rounds = || {
        let (_, text) = get(Some(&format!("prometheus:{operator}")));
        parse_prometheus(&text)
            .get("coffer_monitor_rounds_total")
            .copied()
            .unwrap_or(0.0)
    };
    let more_rounds = |n: f64| {
        let start = rounds();
        common::wait_until("monitoring rounds", || rounds() >= start + n, ended);
    };
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "some data\n".repeat(1000)).unwrap();

    let mut tokens = BTreeMap::new();
    for name in ["good", "broken", "late"] {
        tokens.insert(name, server.add_client(name, name, "append"));
        // watched from 10:05 on (the server's clock)
        server.admin_ok(&[
            "--test-clock",
            &clock_arg,
            "client",
            "expect",
            name,
            "0 * * * *",
            "--grace",
            "10min",
        ]);
    }
    let run = |name: &str, args: &[&str]| {
        e.cmd()
            .env("COFFER_REPOSITORY", server.url(name))
            .env("COFFER_TOKEN", &tokens[name])
            .env("COFFER_CACERT", &server.cacert)
            .args(args)
            .output()
            .unwrap()
    };
    let backup = |name: &str| {
        let o = run(name, &["backup", "-q", src.to_str().unwrap()]);
        assert_eq!(code(&o), 0, "{name}: {}", stderr(&o));
    };
    let fail = |name: &str| {
        let o = run(name, &["backup", "-q", "/nonexistent/coffer-test-path"]);
        assert_ne!(code(&o), 0, "{name}: a backup of a missing path fails");
    };
    for name in ["good", "broken", "late"] {
        let o = run(name, &["init", "-q"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }

    // 10:05: two good backups, one failed; the failure is mailed at once
    backup("good");
    backup("late");
    fail("broken");
    common::wait_until(
        "the failure email",
        || count(&smtp.subjects(), "coffer: FAILED broken") == 1,
        ended,
    );

    // 11:05: 'late' stays silent; within its grace nothing is said
    set_clock(&clock, at(11, 5));
    fs::write(src.join("b.txt"), "more data\n".repeat(2000)).unwrap();
    backup("good");
    fail("broken");
    more_rounds(3.0);
    let subjects = smtp.subjects();
    assert!(!subjects.iter().any(|s| s.contains("OVERDUE")), "{subjects:?}");
    assert_eq!(
        count(&subjects, "coffer: FAILED broken"),
        1,
        "one alert per incident: {subjects:?}"
    );

    // 11:11: past 11:00 + 10 min, 'late' is overdue: exactly one email, however many rounds
    set_clock(&clock, at(11, 11));
    common::wait_until(
        "the overdue email",
        || count(&smtp.subjects(), "coffer: OVERDUE late") == 1,
        ended,
    );
    more_rounds(3.0);
    let subjects = smtp.subjects();
    assert_eq!(count(&subjects, "coffer: OVERDUE late"), 1, "{subjects:?}");
    assert!(!subjects.iter().any(|s| s.contains("good")), "{subjects:?}");

    // 11:16: the digest, whose subject alone tells the state of 3 clients in 3 states
    set_clock(&clock, at(11, 16));
    common::wait_until(
        "the digest",
        || {
            smtp.subjects()
                .iter()
                .any(|s| s == "coffer: 1 FAILED, 1 OVERDUE of 3")
        },
        ended,
    );
    let o = server.admin(&["--test-clock", &clock_arg, "status"]);
    let status = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(status.starts_with("coffer: 1 FAILED, 1 OVERDUE of 3"), "{status}");
    assert_eq!(code(&o), 2, "FAILED is CRITICAL for a monitoring plugin");
    // the console, in a browser, at this moment of three states
    console_in_chromium(&e, &server, &clock_arg);

    // 11:20: 'late' runs again: one recovery notice
    set_clock(&clock, at(11, 20));
    backup("late");
    common::wait_until(
        "the recovery email",
        || count(&smtp.subjects(), "coffer: RECOVERED late (overdue cleared)") == 1,
        ended,
    );
    more_rounds(3.0);
    let subjects = smtp.subjects();
    assert_eq!(count(&subjects, "coffer: OVERDUE late"), 1, "{subjects:?}");
    assert_eq!(
        count(&subjects, "coffer: RECOVERED late (overdue cleared)"),
        1,
        "{subjects:?}"
    );

    // the webhook saw the same events, as JSON
    common::wait_until(
        "the webhooks",
        || hooks.lock().unwrap().len() >= subjects.len(),
        ended,
    );
    let events: Vec<(String, String)> = hooks
        .lock()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["event"].as_str().unwrap().to_string(),
                v["title"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for s in &subjects {
        assert!(events.iter().any(|(_, t)| t == s), "{s:?} not in {events:?}");
    }
    assert!(
        events.contains(&("incident".into(), "coffer: OVERDUE late".into())),
        "{events:?}"
    );
    assert!(
        events.contains(&(
            "recovery".into(),
            "coffer: RECOVERED late (overdue cleared)".into()
        )),
        "{events:?}"
    );
    assert!(events.iter().any(|(e, _)| e == "digest"), "{events:?}");
    let hook = hooks
        .lock()
        .unwrap()
        .iter()
        .find(|v| v["title"] == "coffer: FAILED broken")
        .cloned()
        .unwrap();
    assert_eq!(hook["subject"], "broken");
    assert_eq!(hook["kind"], "failed");
    assert!(
        hook["text"]
            .as_str()
            .unwrap()
            .contains("<path>: No such file or directory"),
        "the failure, without the path (the server does not learn paths): {hook}"
    );

    // /metrics: Prometheus text with the values the runs produced; operators only
    assert_eq!(get(None).0, 401);
    assert_eq!(get(Some("prometheus:wrong")).0, 401);
    let (status, text) = get(Some(&format!("prometheus:{operator}")));
    assert_eq!(status, 200, "{text}");
    let m = parse_prometheus(&text);
    let v = |k: &str| *m.get(k).unwrap_or_else(|| panic!("{k} missing in\n{text}"));
    assert_eq!(
        v(r#"coffer_client_state{client="broken",repo="broken",state="FAILED"}"#),
        1.0
    );
    assert_eq!(
        v(r#"coffer_client_state{client="late",repo="late",state="OK"}"#),
        1.0
    );
    assert_eq!(v(r#"coffer_client_overdue{client="late",repo="late"}"#), 0.0);
    assert_eq!(
        v(r#"coffer_client_last_success_timestamp_seconds{client="late",repo="late"}"#),
        at(11, 20) as f64
    );
    assert_eq!(
        v(r#"coffer_client_last_success_timestamp_seconds{client="good",repo="good"}"#),
        at(11, 5) as f64
    );
    // the 11:05 backup read the new file only (the unchanged one came from its parent)
    assert_eq!(
        v(r#"coffer_backup_bytes_read{client="good",repo="good"}"#),
        20_000.0
    );
    assert!(v(r#"coffer_backup_bytes_added{client="good",repo="good"}"#) > 0.0);
    assert!(v(r#"coffer_repository_size_bytes{repo="good"}"#) > 0.0);
    assert_eq!(v("coffer_incidents_open"), 1.0);

    // and the client side: a report that cannot be delivered is a warning, not a failure
    let o = e
        .cmd()
        .env("COFFER_REPORT_TO", "https://127.0.0.1:1/nowhere")
        .env("COFFER_TOKEN", "cft_x")
        .args(["backup", "-q", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(code(&o), 10, "no local repository here: {}", stderr(&o));
    assert!(stderr(&o).contains("run report did not reach"), "{}", stderr(&o));
}

/// Run headless Chromium (Debian's `chromium`, installed by `.ci/run`) on a console URL,
/// trusting the server's self-signed certificate by its public key pin; `mode` is
/// `--dump-dom` or `--screenshot=FILE`. Returns stdout.
fn chromium(e: &Env, pin: &str, url: &str, mode: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,720",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--ignore-certificate-errors-spki-list={pin}"))
        .arg(mode)
        .arg(url)
        .current_dir(e.path(""))
        .stdin(Stdio::null())
        .output()
        .expect("chromium is installed (apt-get install chromium)");
    assert!(o.status.success(), "chromium {mode}: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The web console in a real browser: a one-time link logs in, the fleet page lists the three
/// clients worst first with their state, and a screenshot is kept
/// (target/test-artifacts/console.png). Login, CSRF and logout are checked over raw HTTPS.
fn console_in_chromium(e: &Env, server: &ServerProc, clock: &str) {
    let cert = server.admin_ok(&["cert"]);
    let pin = cert
        .lines()
        .find_map(|l| l.strip_prefix("public key pin (sha256, base64): "))
        .unwrap_or_else(|| panic!("no pin in {cert}"))
        .trim()
        .to_string();
    let link = |who: &str| {
        // made by the server's (test) clock, as the server judges its expiry
        let url = server
            .admin_ok(&["--test-clock", clock, "operator", "link", who])
            .trim()
            .to_string();
        // the whole address, as the running server recorded it
        let base = format!("https://127.0.0.1:{}/console/link/", server.port);
        assert!(url.starts_with(&base), "{url}");
        url
    };
    server.admin_ok(&["operator", "add", "alice"]);
    // behind a proxy or a name, the address is given; a plain-http one is a usage error
    let named = server.admin_ok(&[
        "operator",
        "link",
        "alice",
        "--url",
        "https://backup.example.net:8443/",
    ]);
    assert!(
        named.starts_with("https://backup.example.net:8443/console/link/"),
        "{named}"
    );
    let o = server.admin(&["operator", "link", "alice", "--url", "http://backup.example.net"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let dom = chromium(e, &pin, &link("alice"), "--dump-dom");
    assert!(dom.contains("coffer: 1 FAILED, 1 OVERDUE of 3"), "{dom}");
    let rows: Vec<(String, String)> = dom
        .split("<tr data-client=\"")
        .skip(1)
        .map(|r| {
            let (name, rest) = r.split_once('"').unwrap();
            let state = rest
                .split_once("data-state=\"")
                .unwrap()
                .1
                .split_once('"')
                .unwrap()
                .0;
            (name.to_string(), state.to_string())
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("broken".to_string(), "FAILED".to_string()),
            ("late".to_string(), "OVERDUE".to_string()),
            ("good".to_string(), "OK".to_string()),
        ],
        "worst first, each with its state"
    );
    // a link works once
    let used = link("alice");
    chromium(e, &pin, &used, "--dump-dom");
    let again = chromium(e, &pin, &used, "--dump-dom");
    assert!(again.contains("used already or expired"), "{again}");

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("console.png");
    let _ = fs::remove_file(&shot);
    chromium(
        e,
        &pin,
        &link("alice"),
        &format!("--screenshot={}", shot.display()),
    );
    let png = fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );

    console_fits(server, &pin, &link);

    // without a session: to the login page; a wrong password is refused; a right one logs in
    let (status, _) = server
        .raw("GET /console HTTP/1.1\nHost: 127.0.0.1\nConnection: close", b"")
        .unwrap();
    assert_eq!(status, 303);
    let pw = server.admin_ok(&["operator", "add", "bob"]).trim().to_string();
    let post = |path: &str, body: &str, cookie: Option<&str>| {
        let mut head = format!(
            "POST {path} HTTP/1.1\nHost: 127.0.0.1\nConnection: close\nContent-Type: application/x-www-form-urlencoded\nContent-Length: {}",
            body.len()
        );
        if let Some(c) = cookie {
            head.push_str(&format!("\nCookie: coffer_session={c}"));
        }
        raw_full(server, &head, body.as_bytes())
    };
    let (head, _) = post("/console/login", "name=bob&password=wrong", None);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let (head, _) = post("/console/login", &format!("name=bob&password={pw}"), None);
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    let session = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: coffer_session="))
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("no session cookie: {head}"))
        .to_string();
    assert!(
        head.to_ascii_lowercase()
            .contains("httponly; secure; samesite=strict"),
        "{head}"
    );
    let get_page = |path: &str| {
        raw_full(
            server,
            &format!(
                "GET {path} HTTP/1.1\nHost: 127.0.0.1\nConnection: close\nCookie: coffer_session={session}"
            ),
            b"",
        )
    };
    let (head, page) = get_page("/console/client/broken");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        page.contains("&lt;path&gt;: No such file or directory") && !page.contains("coffer-test-path"),
        "the failed run's message, without its path"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    // logout needs the form's CSRF token
    let (head, _) = post("/console/logout", "csrf=forged", Some(&session));
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let (_, fleet) = get_page("/console");
    let csrf = fleet
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let (head, _) = post("/console/logout", &format!("csrf={csrf}"), Some(&session));
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    let (head, _) = get_page("/console");
    assert!(head.starts_with("HTTP/1.1 303"), "the session ended: {head}");
}

/// A raw HTTPS request; returns the response's head (hyper sends header names in lower
/// case) and body.
fn raw_full(server: &ServerProc, head: &str, body: &[u8]) -> (String, String) {
    common::server::raw_exchange(server.port, &server.cacert, head, body).unwrap()
}

/// An SMTP server that requires STARTTLS and AUTH (aiosmtpd's controller, driven by a small
/// Python program): alerts go through it with the mail server's certificate trusted by
/// `--smtp-cacert` and the password from a file; a wrong password is reported, and the
/// message waits in the outbox instead of being lost.
#[test]
fn email_alerts_use_starttls_and_authentication() {
    let e = Env::new();
    let server = ServerProc::start(&e.path("server"), &[]);
    let port = free_port();
    let maildir = e.path("maildir");
    let program = r#"
import ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult
cert, key, port, maildir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def check(server, session, envelope, mechanism, auth):
    ok = auth.login == b"coffer" and auth.password == b"right horse battery"
    return AuthResult(success=ok, handled=False)
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
c = Controller(Mailbox(maildir), hostname="127.0.0.1", port=port, tls_context=ctx,
               require_starttls=True, authenticator=check, auth_required=True)
c.start()
while True:
    time.sleep(1)
"#;
    let cert = server.data.join("tls/cert.pem");
    let child = Command::new("python3")
        .arg("-c")
        .arg(program)
        .arg(&cert)
        .arg(server.data.join("tls/key.pem"))
        .arg(port.to_string())
        .arg(&maildir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(e.path("smtp.log")).unwrap())
        .spawn()
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut listener = Kill(child);
    common::wait_until(
        "the STARTTLS SMTP listener",
        || TcpStream::connect(("127.0.0.1", port)).is_ok(),
        || common::exit_report("the STARTTLS SMTP listener", &mut listener.0, &e.path("smtp.log")),
    );
    let pw = e.path("smtp-pw");
    fs::write(&pw, "wrong horse\n").unwrap();
    server.admin_ok(&[
        "alerts",
        "set",
        "--smtp",
        &format!("127.0.0.1:{port}"),
        "--smtp-tls",
        "starttls",
        "--smtp-cacert",
        cert.to_str().unwrap(),
        "--smtp-user",
        "coffer",
        "--smtp-password-file",
        pw.to_str().unwrap(),
        "--from",
        "coffer@backup.test",
        "--to",
        "ops@backup.test",
    ]);
    let shown = server.admin_ok(&["alerts", "show"]);
    assert!(!shown.contains("horse"), "the password is never shown: {shown}");
    assert!(shown.contains("(set)"), "{shown}");

    let o = server.admin(&["alerts", "test"]);
    assert_eq!(code(&o), 1, "a refused login fails the test: {}", stderr(&o));
    assert!(stderr(&o).to_lowercase().contains("auth"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("horse"), "{}", stderr(&o));
    let log = server.admin_ok(&["alerts", "log"]);
    assert!(log.contains("retrying"), "kept for another attempt: {log}");

    fs::write(&pw, "right horse battery\n").unwrap();
    server.admin_ok(&["alerts", "set", "--smtp-password-file", pw.to_str().unwrap()]);
    let o = server.admin(&["alerts", "test"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let got: Vec<String> = fs::read_dir(maildir.join("new"))
        .unwrap()
        .map(|f| fs::read_to_string(f.unwrap().path()).unwrap())
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("Subject: coffer: test message"), "{}", got[0]);
}

/// A stolen client cannot hide that its backups stopped behind forged reports: on a
/// repository the server hosts, a "successful" backup report must name a snapshot the server
/// received; one that does not is recorded as a failure.
#[test]
fn a_forged_backup_report_is_a_failure() {
    let e = Env::new();
    let server = ServerProc::start(&e.path("server"), &[]);
    let token = server.add_client("web1", "web", "append");
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "data\n").unwrap();
    for args in [vec!["init", "-q"], vec!["backup", "-q", src.to_str().unwrap()]] {
        let o = e
            .cmd()
            .env("COFFER_REPOSITORY", server.url("web"))
            .env("COFFER_TOKEN", &token)
            .env("COFFER_CACERT", &server.cacert)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    let status = server.admin_ok(&["status"]);
    assert!(
        status.starts_with("coffer: 1/1 OK"),
        "a real backup report: {status}"
    );
    // the same report sent again (a retry after a lost answer) is that run, not a forgery
    let (started, finished, snap): (i64, i64, String) =
        rusqlite::Connection::open(server.data.join("server.db"))
            .unwrap()
            .query_row(
                "SELECT started, finished, snapshot FROM runs WHERE status = 'ok'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
    let again = serde_json::json!({
        "kind": "backup", "status": "ok", "host": "", "started": started, "finished": finished,
        "snapshot": snap, "bytes_read": 1,
    })
    .to_string();
    let head = format!(
        "POST /web/runs HTTP/1.1\nHost: 127.0.0.1\nConnection: close\nAuthorization: Bearer {token}\nContent-Type: application/json\nContent-Length: {}",
        again.len()
    );
    assert_eq!(server.raw(&head, again.as_bytes()).unwrap().0, 201);
    let status = server.admin_ok(&["status"]);
    assert!(status.starts_with("coffer: 1/1 OK"), "a retried report: {status}");

    let forged = serde_json::json!({
        "kind": "backup", "status": "ok", "host": "web1", "started": 1, "finished": 2,
        "snapshot": "ab".repeat(32), "bytes_read": 1000,
    })
    .to_string();
    let head = format!(
        "POST /web/runs HTTP/1.1\nHost: 127.0.0.1\nConnection: close\nAuthorization: Bearer {token}\nContent-Type: application/json\nContent-Length: {}",
        forged.len()
    );
    let (code_, _) = server.raw(&head, forged.as_bytes()).unwrap();
    assert_eq!(code_, 201);
    let o = server.admin(&["status"]);
    let status = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(code(&o), 2, "{status}");
    assert!(status.starts_with("coffer: 1 FAILED of 1"), "{status}");
    assert!(status.contains("never received"), "{status}");

    // the real snapshot, reported again (a stolen client keeping the fleet green after its
    // backups stopped), is a failure too
    let real: serde_json::Value = {
        let o = e
            .cmd()
            .env("COFFER_REPOSITORY", server.url("web"))
            .env("COFFER_TOKEN", &token)
            .env("COFFER_CACERT", &server.cacert)
            .args(["snapshots", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let replay = serde_json::json!({
        "kind": "backup", "status": "ok", "host": "web1", "started": 3, "finished": 4,
        "snapshot": real[0]["id"], "bytes_read": 1000,
    })
    .to_string();
    let post = |token: &str, body: &str| {
        let head = format!(
            "POST /web/runs HTTP/1.1\nHost: 127.0.0.1\nConnection: close\nAuthorization: Bearer {token}\nContent-Type: application/json\nContent-Length: {}",
            body.len()
        );
        server.raw(&head, body.as_bytes()).unwrap().0
    };
    assert_eq!(post(&token, &replay), 201);
    let status = server.admin(&["status"]);
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(status.contains("an earlier report named already"), "{status}");

    // a read token may restore, not report
    let read = server.add_client("restorer", "web", "read");
    assert_eq!(post(&read, &replay), 403);
}

#[test]
fn a_running_backup_shows_its_progress_in_the_console() {
    let e = Env::new();
    let server = ServerProc::start(&e.path("server"), &[]);
    let token = server.add_client("web1", "web", "append");
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..4 {
        fs::write(src.join(format!("f{i}")), common::pseudo_random(i, 1 << 20)).unwrap();
    }
    let client = |args: &[&str]| {
        let mut c = e.cmd();
        c.env("COFFER_REPOSITORY", server.url("web"))
            .env("COFFER_TOKEN", &token)
            .env("COFFER_CACERT", &server.cacert)
            .args(args);
        c
    };
    let small = e.path("small");
    fs::create_dir_all(&small).unwrap();
    fs::write(small.join("a"), "a\n").unwrap();
    for args in [vec!["init", "-q"], vec!["backup", "-q", small.to_str().unwrap()]] {
        let o = client(&args).output().unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    let session = server.console_login("alice");
    let (_, page) = server.console_get(&session, "/console/client/web1");
    assert!(
        !page.contains("Running now") && !page.contains("http-equiv=\"refresh\""),
        "{page}"
    );
    // 4 MiB of incompressible data at 400 KiB/s: at least 9 s, so the progress posted every
    // 5 s arrives while it runs
    let mut backup = client(&["--limit-upload", "400K", "backup", "-q", src.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = None;
    common::wait_until(
        "the console to show the backup while it runs",
        || {
            let (_, page) = server.console_get(&session, "/console/client/web1");
            if page.contains("id=\"running\"") {
                let (_, fleet) = server.console_get(&session, "/console");
                assert!(
                    fleet.contains(">running</span>"),
                    "the fleet page says so too: {fleet}"
                );
                seen = Some(page);
            }
            seen.is_some()
        },
        || {
            let status = backup.try_wait().unwrap()?;
            let mut err = String::new();
            std::io::Read::read_to_string(&mut backup.stderr.take().unwrap(), &mut err).unwrap();
            Some(format!("the backup ended ({status}) first: {err}"))
        },
    );
    let page = seen.expect("the console showed the backup while it ran");
    let row = page
        .split("data-running=\"\"")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_else(|| panic!("a row for the run: {page}"));
    assert!(row.contains(">backup<"), "{row}");
    assert!(
        page.contains("<meta http-equiv=\"refresh\" content=\"5\">"),
        "the page follows the run: {page}"
    );
    // what it has read so far: some of the 4 MiB, more than nothing
    let files: u64 = row
        .split("data-label=\"Files\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{row}"));
    assert!(files <= 4, "{row}");
    assert!(
        row.contains(" KiB") || row.contains(" MiB"),
        "bytes read so far: {row}"
    );
    let out = backup.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the report ends it
    let (_, page) = server.console_get(&session, "/console/client/web1");
    assert!(
        !page.contains("id=\"running\"") && !page.contains("http-equiv=\"refresh\""),
        "{page}"
    );
    // progress is counts from a client of this repository, of a known kind
    let post = |token: &str, body: &str| {
        let head = format!(
            "POST /web/progress HTTP/1.1\nHost: 127.0.0.1\nConnection: close\nAuthorization: Bearer {token}\nContent-Type: application/json\nContent-Length: {}",
            body.len()
        );
        server.raw(&head, body.as_bytes()).unwrap().0
    };
    let good = r#"{"kind":"backup","job":"","started":1,"files":1,"bytes":1}"#;
    assert_eq!(post(&token, good), 204);
    assert_eq!(post("forged", good), 401);
    let reader = server.add_client("reader", "web", "read");
    assert_eq!(
        post(&reader, good),
        403,
        "a read token cannot show a backup running"
    );
    assert_eq!(
        post(&token, r#"{"kind":"rm","started":1,"files":1,"bytes":1}"#),
        400
    );
    assert_eq!(
        post(
            &token,
            r#"{"kind":"backup","started":1,"files":1,"bytes":1,"path":"/etc"}"#
        ),
        400,
        "no field for a path"
    );
}

#[test]
fn an_open_anomaly_holds_the_clients_own_retention() {
    let e = Env::new();
    let mut server = ServerProc::start(&e.path("server"), &[]);
    let token = server.add_client("web1", "web", "append");
    let dir = e.path("client");
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::write(dir.join("web1.token"), format!("{token}\n")).unwrap();
    fs::write(dir.join("src/index.html"), "<p>shop</p>\n").unwrap();
    let config = dir.join("coffer.toml");
    fs::write(
        &config,
        format!(
            r#"
[agent]
host = "web1"
state_dir = "{dir}/state"

[repository.offsite]
location = "{dir}/offsite"
password_file = "{dir}/offsite.key"
report_to = "{url}"
token_file = "{dir}/web1.token"
cacert = "{cacert}"

[job.site]
paths = ["{dir}/src"]
to = ["offsite"]

[job.site.retention]
keep_last = 1
"#,
            dir = dir.display(),
            url = server.url("web"),
            cacert = server.cacert.display(),
        ),
    )
    .unwrap();
    let coffer = |args: &[&str]| {
        let o = e.cmd().arg("--config").arg(&config).args(args).output().unwrap();
        (
            code(&o),
            format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o)),
        )
    };
    let key = format!("{}/offsite.key", dir.display());
    assert_eq!(coffer(&["key", "generate", "-q", "-o", &key]).0, 0);
    assert_eq!(coffer(&["--repo-name", "offsite", "init", "-q"]).0, 0);
    let snapshots = || -> usize {
        let (c, out) = coffer(&["--repo-name", "offsite", "snapshots", "--json"]);
        assert_eq!(c, 0, "{out}");
        serde_json::from_str::<Vec<serde_json::Value>>(out.trim())
            .unwrap()
            .len()
    };
    let run = |n: u32| {
        fs::write(dir.join("src/index.html"), format!("<p>shop {n}</p>\n")).unwrap();
        coffer(&["run", "site"])
    };
    for n in 0..2 {
        let (c, out) = run(n);
        assert_eq!(c, 0, "{out}");
    }
    assert_eq!(snapshots(), 1, "keep_last = 1 applied");
    // the server raised an ANOMALY for web1 (the detection has its own test): retention waits
    rusqlite::Connection::open(server.data.join("server.db"))
        .unwrap()
        .execute(
            "INSERT INTO anomalies (client, repo, run_id, opened, detail) VALUES ('web1', 'web', 0, 1, 'most files changed into data that does not compress')",
            [],
        )
        .unwrap();
    let (_, out) = run(2);
    assert!(
        out.contains("nothing forgotten: the server holds this client's retention for an ANOMALY")
            && out.contains("does not compress"),
        "{out}"
    );
    assert_eq!(snapshots(), 2, "nothing forgotten while held");
    let reported = rusqlite::Connection::open(server.data.join("server.db"))
        .unwrap()
        .query_row(
            "SELECT status, messages FROM runs WHERE kind = 'forget' ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )
        .unwrap();
    assert!(
        reported.0 == "warning" && reported.1.contains("nothing forgotten"),
        "{reported:?}"
    );
    let (c, out) = coffer(&["--repo-name", "offsite", "forget", "--job", "site", "--dry-run"]);
    assert!(c == 0 && out.contains("retention held:"), "{out}");
    // an operator looked: retention runs again
    server.admin_ok(&["client", "ack", "web1"]);
    let (c, out) = run(3);
    assert_eq!(c, 0, "{out}");
    assert_eq!(snapshots(), 1);
    // a server that cannot be asked holds it too
    server.kill9();
    let (_, out) = run(4);
    assert!(
        out.contains("nothing forgotten: the server could not be asked"),
        "{out}"
    );
    assert_eq!(snapshots(), 2);
}

/// `server status` answers as a monitoring plugin (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN):
/// a mistyped --data is UNKNOWN and creates nothing, an empty fleet is UNKNOWN, not "0/0 OK";
/// and `alerts test` / `digest --send` deliver to a webhook from the command line instead of
/// waiting forever (issue 23 items 3 and 4).
#[test]
fn status_exits_as_a_monitoring_plugin_and_webhooks_deliver_from_the_command_line() {
    let e = Env::new();
    let typo = e.path("srv/cofer");
    let o = e.run(&["server", "--data", typo.to_str().unwrap(), "status"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("coffer UNKNOWN:"));
    assert!(!typo.exists(), "a mistyped --data created a directory");
    let o = e.run(&["server", "--data", typo.to_str().unwrap(), "client", "list"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("no coffer server data here"),
        "{}",
        stderr(&o)
    );
    assert!(!typo.exists());

    let server = ServerProc::start(&e.path("server"), &[]);
    let o = server.admin(&["status"]);
    assert_eq!(code(&o), 3, "no client monitored is not OK");
    assert!(String::from_utf8_lossy(&o.stdout).contains("no clients are monitored"));
    server.add_client("web1", "web", "append");
    // one duration grammar (m is minutes, not months), and the parsed value said back
    let o = server.admin(&["client", "expect", "web1", "30 2 * * *", "--grace", "1m"]);
    assert!(stderr(&o).contains("overdue 1m after"), "{}", stderr(&o));
    let o = server.admin(&["client", "expect", "web1", "30 2 * * *", "--grace", "90min"]);
    assert!(stderr(&o).contains("overdue 1h 30m after"), "{}", stderr(&o));
    let o = server.admin(&["client", "expect", "web1", "30 2 * * *", "--grace", "2x"]);
    assert_eq!(code(&o), 2, "a bad duration is a usage error: {}", stderr(&o));
    let o = server.admin(&["status"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(code(&o), 1, "a client with no backup yet is a WARNING: {out}");
    let o = server.admin(&["status", "--json"]);
    assert_eq!(code(&o), 1, "--json exits the same way");

    let (hook_port, hooks) = webhook_receiver();
    server.admin_ok(&[
        "alerts",
        "set",
        "--webhook",
        &format!("http://127.0.0.1:{hook_port}/hook"),
    ]);
    let admin = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_coffer"));
        c.arg("server").arg("--data").arg(e.path("server")).args(args);
        c
    };
    // each command delivers its message itself, before it exits (it used to wait for a
    // serving process that was not there): the receiver holds it the moment the command ends
    let o = admin(&["alerts", "test"]).output().unwrap();
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        hooks.lock().unwrap().len(),
        1,
        "the test message, delivered by the command"
    );
    let o = admin(&["digest", "--send"]).output().unwrap();
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let got = hooks.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "one test message and one digest: {got:?}");
}

/// The server learns no path and no host name from a client (issue 24 finding 6): reports
/// carry counts and what went wrong, with `<path>` where a path was, and no host name; key
/// files name no host or user.
#[test]
fn reports_and_key_files_carry_no_paths_or_host_names() {
    let e = Env::new();
    let server = ServerProc::start(&e.path("server"), &[]);
    let token = server.add_client("web1", "web", "append");
    let secret_dir = e.path("customer-acme-secret-plans");
    let run = |args: &[&str]| {
        e.cmd()
            .env("COFFER_REPOSITORY", server.url("web"))
            .env("COFFER_TOKEN", &token)
            .env("COFFER_CACERT", &server.cacert)
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&["init", "-q"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // a failed backup: its error names the path on the client, not on the server
    let o = run(&["backup", "-q", secret_dir.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("customer-acme-secret-plans"),
        "the user still sees it"
    );
    fs::create_dir_all(&secret_dir).unwrap();
    fs::write(secret_dir.join("plan.txt"), "p").unwrap();
    let o = run(&["backup", "-q", secret_dir.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
    let db = rusqlite::Connection::open(server.data.join("server.db")).unwrap();
    let mut st = db.prepare("SELECT host, messages FROM runs").unwrap();
    let rows: Vec<(String, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert!(rows.len() >= 2, "{rows:?}");
    for (h, m) in &rows {
        assert!(h.is_empty(), "host name sent: {h}");
        assert!(!m.contains("customer-acme"), "a path reached the server: {m}");
    }
    assert!(rows.iter().any(|(_, m)| m.contains("<path>")), "{rows:?}");
    // key files stored on the server
    assert!(!host.is_empty());
    for k in fs::read_dir(server.data.join("repos/web/keys")).unwrap() {
        let v: serde_json::Value = serde_json::from_slice(&fs::read(k.unwrap().path()).unwrap()).unwrap();
        assert_eq!(v["hostname"], "", "the host name is in a key file: {v}");
        assert_eq!(v["username"], "", "the user name is in a key file: {v}");
    }
}

/// A client run by `coffer agent` needs no `client expect`: each report of a scheduled job
/// says when the job's next backup is due, and a job that misses it (plus an hour) is
/// OVERDUE; a job taken out of the configuration is no longer expected.
#[test]
fn the_schedule_an_agent_announces_is_watched() {
    let e = Env::new();
    let clock = e.path("clock");
    set_clock(&clock, at(10, 0));
    let clock_arg = clock.to_str().unwrap().to_string();
    let server = ServerProc::start(&e.path("server"), &["--test-clock", &clock_arg]);
    let token = server.add_client("web1", "reports", "append");
    // (each report arrives when its run finishes, by the server's clock)
    let post = |job: &str, finished: i64, next: i64, jobs: &[&str]| {
        set_clock(&clock, finished);
        let body = serde_json::json!({
            "kind": "backup", "status": "ok", "started": finished - 30, "finished": finished,
            "job": job, "next_expected": next, "jobs": jobs,
        })
        .to_string();
        let head = format!(
            "POST /reports/runs HTTP/1.1\nHost: 127.0.0.1\nConnection: close\nAuthorization: Bearer {token}\nContent-Type: application/json\nContent-Length: {}",
            body.len()
        );
        assert_eq!(server.raw(&head, body.as_bytes()).unwrap().0, 201);
    };
    let status = |t: i64| {
        set_clock(&clock, t);
        let o = server.admin(&["--test-clock", &clock_arg, "status"]);
        (code(&o), String::from_utf8_lossy(&o.stdout).to_string())
    };
    // 10:00: a nightly job (next at 02:30 tomorrow) and an hourly one (next at 11:00)
    post(
        "nightly",
        at(9, 59),
        at(10, 0) + 16 * 3600 + 1800,
        &["nightly", "hourly"],
    );
    post("hourly", at(9, 59), at(11, 0), &["nightly", "hourly"]);
    let (c, s) = status(at(10, 1));
    assert_eq!(c, 0, "{s}");
    assert!(s.starts_with("coffer: 1/1 OK"), "{s}");
    // 11:59: the hourly run of 11:00 is late, within the hour of grace
    let (c, s) = status(at(11, 59));
    assert_eq!(c, 0, "{s}");
    // 12:01: overdue, naming the job
    let (c, s) = status(at(12, 1));
    assert_eq!(c, 2, "{s}");
    assert!(s.contains("OVERDUE") && s.contains("job hourly"), "{s}");
    assert!(!s.contains("job nightly"), "{s}");
    // it runs again: OK
    post("hourly", at(12, 2), at(13, 0), &["nightly", "hourly"]);
    let (c, s) = status(at(12, 3));
    assert_eq!(c, 0, "{s}");
    // the hourly job is taken out of the configuration: the next nightly report says so, and
    // the hourly job is not expected any more
    post("nightly", at(12, 5), at(10, 0) + 16 * 3600 + 1800, &["nightly"]);
    let (c, s) = status(at(15, 0));
    assert_eq!(c, 0, "{s}");
    // an announcement far away is ignored, not trusted to silence the alarm: the job's last
    // valid one (02:30 tomorrow) still holds
    post("nightly", at(15, 1), at(15, 1) + 90 * 86_400, &["nightly"]);
    let (c, s) = status(at(15, 2));
    assert_eq!(c, 0, "{s}");
    let (c, s) = status(at(10, 0) + 2 * 86_400);
    assert_eq!(c, 2, "{s}");
    assert!(s.contains("OVERDUE") && s.contains("job nightly"), "{s}");
    // a run that takes longer than the hour of grace is not late every night: the grace
    // grows to one and a half times the run
    post(
        "slow",
        at(10, 0) + 3 * 86_400,
        at(10, 0) + 4 * 86_400,
        &["nightly", "slow"],
    );
    let body_run = |job: &str, started: i64, finished: i64, next: i64| {
        set_clock(&clock, finished);
        let body = serde_json::json!({
            "kind": "backup", "status": "ok", "started": started, "finished": finished,
            "duration_ms": (finished - started) * 1000, "job": job, "next_expected": next,
            "jobs": ["slow"],
        })
        .to_string();
        let head = format!(
            "POST /reports/runs HTTP/1.1\nHost: 127.0.0.1\nConnection: close\nAuthorization: Bearer {token}\nContent-Type: application/json\nContent-Length: {}",
            body.len()
        );
        assert_eq!(server.raw(&head, body.as_bytes()).unwrap().0, 201);
    };
    let day = |n: i64| at(2, 30) + n * 86_400;
    // the nightly 02:30 run takes three hours: its report comes at 05:30
    body_run("slow", day(5), day(5) + 3 * 3600, day(6));
    let (c, s) = status(day(6) + 3 * 3600 + 60);
    assert_eq!(c, 0, "a run as long as usual is not late: {s}");
    let (c, s) = status(day(6) + 5 * 3600);
    assert_eq!(c, 2, "{s}");
}

/// The ransomware alarm: a directory of text files encrypted in place and backed up raises
/// exactly one ANOMALY, while nights of ordinary churn, a night of incompressible changes
/// at the usual share, a new directory of photos and a `--force` run raise none; it stays
/// until an operator acknowledges it, and server retention of the repository waits.
#[test]
fn files_encrypted_in_place_raise_one_anomaly_and_pause_retention() {
    let e = Env::new();
    let server = ServerProc::start(&e.path("server"), &[]);
    let token = server.add_client("web1", "web", "append");
    server.admin_ok(&["repo", "set", "web", "--keep-last", "1"]);
    let run = |args: &[&str]| {
        e.cmd()
            .env("COFFER_REPOSITORY", server.url("web"))
            .env("COFFER_TOKEN", &token)
            .env("COFFER_CACERT", &server.cacert)
            .args(args)
            .output()
            .unwrap()
    };
    let src = e.path("www");
    fs::create_dir_all(&src).unwrap();
    let text = |seed: usize| -> String {
        (0..400)
            .map(|i| {
                format!(
                    "{seed} GET /shop/item/{} HTTP/1.1 200 {} \"Mozilla/5.0\"\n",
                    i * 7 % 113,
                    i * 31 % 997
                )
            })
            .collect()
    };
    let page = |i: usize| src.join(format!("page-{i}.html"));
    for i in 0..500 {
        fs::write(page(i), text(i)).unwrap();
    }
    assert_eq!(code(&run(&["init", "-q"])), 0);
    let backup = |extra: &[&str]| {
        let mut args = vec!["backup", "-q"];
        args.extend_from_slice(extra);
        args.push(src.to_str().unwrap());
        let o = run(&args);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    };
    let status = || {
        let o = server.admin(&["status"]);
        (code(&o), String::from_utf8_lossy(&o.stdout).to_string())
    };
    let anomalies = || -> i64 {
        rusqlite::Connection::open(server.data.join("server.db"))
            .unwrap()
            .query_row("SELECT count(*) FROM incidents WHERE kind = 'anomaly'", [], |r| {
                r.get(0)
            })
            .unwrap()
    };
    let calm = |what: &str| {
        let (c, s) = status();
        assert_eq!(c, 0, "{what} is no anomaly: {s}");
        assert_eq!(anomalies(), 0, "{what}");
    };
    // four nights of ordinary churn: 60 of 500 pages rewritten each night (12 %, 1.2 MB of
    // text: past every absolute threshold but compressibility)
    backup(&[]);
    for night in 1..4 {
        for i in 0..60 {
            fs::write(page(night * 60 + i), text(1000 * night + i)).unwrap();
        }
        backup(&[]);
    }
    calm("ordinary churn");
    // a night whose 60 changes are incompressible (compressed archives replacing pages): the
    // usual share of files, not many times it
    for i in 0..60 {
        fs::write(page(i), common::pseudo_random(i as u64, 20_000)).unwrap();
    }
    backup(&[]);
    calm("incompressible changes at the usual share");
    // a new directory of 300 photos: new files, not files changed in place
    fs::create_dir_all(src.join("gallery")).unwrap();
    for i in 0..300 {
        fs::write(
            src.join(format!("gallery/p{i}.jpg")),
            common::pseudo_random(900 + i, 20_000),
        )
        .unwrap();
    }
    backup(&[]);
    calm("a new photo gallery");
    // --force reads every file again: not a change
    backup(&["--force"]);
    calm("--force");

    // every page encrypted in place, and backed up as usual
    let encrypt_all = || {
        for i in 0..500 {
            let out = src.join(format!("page-{i}.enc"));
            let o = Command::new("openssl")
                .args(["enc", "-aes-256-cbc", "-pbkdf2", "-pass", "pass:ransom", "-in"])
                .arg(page(i))
                .arg("-out")
                .arg(&out)
                .output()
                .expect("openssl is installed");
            assert!(o.status.success(), "{}", stderr(&o));
            fs::rename(&out, page(i)).unwrap();
        }
    };
    encrypt_all();
    backup(&[]);
    let (c, s) = status();
    assert_eq!(c, 2, "{s}");
    assert!(
        s.contains("ANOMALY") && s.contains("files encrypted in place?"),
        "{s}"
    );
    assert_eq!(anomalies(), 1);
    // retention waits: the good versions stay
    let r = server.admin_ok(&["retention", "--repo", "web", "--dry-run"]);
    assert!(r.contains("paused"), "{r}");
    // encrypted once more the next night, while the alarm is open: still the one alarm
    encrypt_all();
    backup(&[]);
    let (c, s) = status();
    assert_eq!(c, 2, "{s}");
    assert_eq!(anomalies(), 1);
    // acknowledged: closed, and retention resumes
    server.admin_ok(&["client", "ack", "web1"]);
    let (c, s) = status();
    assert_eq!(c, 0, "{s}");
    let r = server.admin_ok(&["retention", "--repo", "web", "--dry-run"]);
    assert!(!r.contains("paused"), "{r}");
}

/// The console fits the screen (issue 23 item 12): at 1280 px (a laptop) and 390 px (a phone)
/// no element of the fleet page or a client's page runs off the right edge, and on the phone
/// each client's problem text is shown whole, at a readable width.
fn console_fits(server: &ServerProc, pin: &str, link: &dyn Fn(&str) -> String) {
    use common::webdriver::Browser;
    // every element's right edge against the viewport's, and each client's problem cell
    const MEASURE: &str = r#"
        const vw = document.documentElement.clientWidth;
        const over = [];
        for (const el of document.body.querySelectorAll('*')) {
            const r = el.getBoundingClientRect();
            if (r.width > 0 && r.right > vw + 0.5) {
                over.push(el.tagName.toLowerCase() + (el.className ? '.' + el.className : '')
                    + ' ends at ' + Math.round(r.right) + ': ' + (el.textContent || '').slice(0, 40));
            }
        }
        const problems = [...document.querySelectorAll('tr[data-client] td.problem')].map(td => {
            const r = td.getBoundingClientRect();
            const style = getComputedStyle(td);
            return { client: td.closest('tr').dataset.client, shown: style.display !== 'none'
                && style.visibility !== 'hidden', left: r.left, right: r.right, width: r.width,
                clipped: td.scrollWidth > td.clientWidth + 1, text: td.textContent };
        });
        return { vw, scroll: document.documentElement.scrollWidth, over, problems,
                 title: document.title };
    "#;
    for (width, height, mobile) in [(1280, 720, false), (390, 844, true)] {
        let b = Browser::start(width, height, mobile, pin);
        b.open(&link("alice"));
        for page in ["/console", "/console/client/broken", "/console/alerts"] {
            b.open(&format!("https://127.0.0.1:{}{page}", server.port));
            let m = b.run(MEASURE);
            let what = format!("{page} at {width} px");
            assert!(
                m["title"].as_str().unwrap_or("").starts_with("coffer"),
                "{what}: not a console page: {m}"
            );
            assert_eq!(m["vw"].as_f64(), Some(width as f64), "{what}: viewport {m}");
            assert!(
                m["scroll"].as_f64() <= m["vw"].as_f64(),
                "{what}: the page scrolls sideways: {m}"
            );
            assert_eq!(m["over"], serde_json::json!([]), "{what}: runs off the page");
            if page == "/console" {
                // kept for a look (target/test-artifacts/console-WIDTH.png)
                let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
                fs::create_dir_all(&artifacts).unwrap();
                let png = b.screenshot();
                assert!(png.starts_with(b"\x89PNG"), "{what}: no screenshot");
                fs::write(artifacts.join(format!("console-{width}.png")), png).unwrap();
                let problems = m["problems"].as_array().unwrap();
                assert_eq!(problems.len(), 3, "{what}: {m}");
                // two of the three have a problem (FAILED, OVERDUE)
                assert_eq!(
                    problems.iter().filter(|p| p["text"] != "").count(),
                    2,
                    "{what}: {m}"
                );
                for p in problems.iter().filter(|p| p["text"] != "") {
                    assert_eq!(p["shown"], true, "{what}: {p}");
                    assert_eq!(p["clipped"], false, "{what}: {p}");
                    assert!(p["left"].as_f64().unwrap() >= 0.0, "{what}: {p}");
                    // readable: at least half the screen wide on a phone
                    if mobile {
                        assert!(p["width"].as_f64().unwrap() >= width as f64 / 2.0, "{what}: {p}");
                    }
                }
            }
        }
    }
}

/// A restore drill: a clean one is reported with its recovery time and shown on the client's
/// page; after a byte of a pack flips on the server, the next drill fails (exit 1), which
/// opens a DRILL FAILED incident and mails it (issue 25 item 6).
#[test]
fn a_failed_drill_is_an_incident_and_a_clean_one_records_its_recovery_time() {
    let e = Env::new();
    let smtp = Smtp::start(&e.path(""));
    let server = ServerProc::start(&e.path("server"), &["--monitor-every", "1s"]);
    let ended = || server.exited().or_else(|| smtp.exited());
    server.admin_ok(&[
        "alerts",
        "set",
        "--smtp",
        &format!("127.0.0.1:{}", smtp.port),
        "--smtp-tls",
        "none",
        "--from",
        "coffer@backup.test",
        "--to",
        "ops@backup.test",
    ]);
    let token = server.add_client("web1", "web1", "append");
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..30u64 {
        fs::write(src.join(format!("f{i}")), common::pseudo_random(i, 50_000)).unwrap();
    }
    let run = |args: &[&str]| {
        e.cmd()
            .env("COFFER_REPOSITORY", server.url("web1"))
            .env("COFFER_TOKEN", &token)
            .env("COFFER_CACERT", &server.cacert)
            .arg("--no-cache")
            .args(args)
            .output()
            .unwrap()
    };
    for a in [
        &["init", "-q"][..],
        &["backup", "-q", "--host", "web1", src.to_str().unwrap()],
    ] {
        let o = run(a);
        assert_eq!(code(&o), 0, "{a:?}: {}", stderr(&o));
    }
    let o = run(&["drill", "--host", "web1", "--files", "10", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["files_verified"], 10, "{r}");
    assert_eq!(r["files_in_snapshot"], 30, "{r}");
    let session = server.console_login("ops");
    let (_, page) = server.console_get(&session, "/console/client/web1");
    assert!(page.contains("Restore drills"), "{page}");
    assert!(
        page.contains("passed") && page.contains("recovery time"),
        "{page}"
    );
    assert!(page.contains("10 files verified"), "{page}");
    // its backups over time, drawn on the server; the fleet's last 30 days as a strip
    assert!(
        page.contains("<svg class=\"chart\"") && page.contains("Data backed up"),
        "{page}"
    );
    let (_, fleet) = server.console_get(&session, "/console");
    assert!(fleet.contains("<svg class=\"strip\""), "{fleet}");
    assert_eq!(fleet.matches("data-day=\"backed up\"").count(), 1, "{fleet}");
    assert_eq!(fleet.matches("data-day=\"no backup\"").count(), 29, "{fleet}");
    assert!(!fleet.contains("<script"), "no script on the console");

    // a flipped byte in every pack, and no parity to repair it: the drill reads back the
    // damage and fails
    fs::remove_dir_all(server.data.join("repos/web1/parity")).unwrap();
    for dir in fs::read_dir(server.data.join("repos/web1/data")).unwrap() {
        for f in fs::read_dir(dir.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let mut b = fs::read(&p).unwrap();
            let mid = b.len() / 2;
            b[mid] ^= 0x01;
            fs::write(&p, b).unwrap();
        }
    }
    let o = run(&["drill", "--host", "web1", "--files", "30"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("drill failed"), "{}", stderr(&o));
    common::wait_until(
        "the DRILL FAILED email",
        || count(&smtp.subjects(), "coffer: DRILL FAILED web1") == 1,
        ended,
    );
    let (_, page) = server.console_get(&session, "/console/client/web1");
    assert!(page.contains("FAILED"), "{page}");

    // a hosting customer's login sees its one client, read-only, and nothing else
    server.add_client("web2", "web2", "append");
    // (watched, so that the fleet page would list it)
    server.admin_ok(&["client", "expect", "web2", "0 * * * *"]);
    let (_, all) = server.console_get(&session, "/console");
    assert!(all.contains("data-client=\"web2\""), "{all}");
    let pw = server.admin_ok(&["operator", "add", "customer", "--client", "web1"]);
    let customer = server.console_login_with("customer", pw.trim());
    let status = |head: &str| head.split_whitespace().nth(1).unwrap_or("").to_string();
    let (head, page) = server.console_get(&customer, "/console/client/web1");
    assert_eq!(status(&head), "200", "{head}");
    assert!(
        page.contains("Restore drills") && !page.contains("Back up now") && !page.contains("Add a job"),
        "{page}"
    );
    for path in [
        "/console/client/web2",
        "/console/alerts",
        "/console/client/web1/new-job",
    ] {
        let (head, _) = server.console_get(&customer, path);
        assert_eq!(status(&head), "403", "{path}: {head}");
    }
    let (_, fleet) = server.console_get(&customer, "/console");
    assert!(
        fleet.contains("data-client=\"web1\"") && !fleet.contains("web2"),
        "{fleet}"
    );
    // nor the fleet's metrics
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("customer:{}", pw.trim()));
    let (code, _) = server
        .raw(
            &format!(
                "GET /metrics HTTP/1.1\nHost: 127.0.0.1\nConnection: close\nAuthorization: Basic {auth}"
            ),
            b"",
        )
        .unwrap();
    assert_eq!(code, 401);
    let list = server.admin_ok(&["operator", "list"]);
    assert!(list.contains("sees client web1 only"), "{list}");
}
