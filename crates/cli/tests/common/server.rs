//! A real `coffer server` on 127.0.0.1 (a free port), killed when dropped; and a raw HTTPS
//! client for requests no well-behaved client would send.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub struct ServerProc {
    /// In a cell so that a test can ask whether the server is still running ([`Self::exited`])
    /// while it holds other shared borrows of it.
    child: RefCell<Option<Child>>,
    pub data: PathBuf,
    pub port: u16,
    pub cacert: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

fn coffer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_coffer"));
    c.stdin(Stdio::null())
        .env_remove("COFFER_TOKEN")
        .env_remove("COFFER_TOKEN_FILE")
        .env_remove("COFFER_SERVER_DATA");
    c
}

impl ServerProc {
    /// Start a server on `data` with extra serve flags; waits until it listens.
    pub fn start(data: &Path, extra: &[&str]) -> ServerProc {
        Self::start_with_env(data, extra, &[])
    }

    /// [`Self::start`] with environment variables for the server and its admin commands.
    pub fn start_with_env(data: &Path, extra: &[&str], envs: &[(&str, &str)]) -> ServerProc {
        Self::start_logged(data, &data.with_extension("log"), extra, envs)
    }

    /// [`Self::start_with_env`] with the server's log in `log` (for a data directory on a
    /// file system the test cuts the power of).
    pub fn start_logged(data: &Path, log: &Path, extra: &[&str], envs: &[(&str, &str)]) -> ServerProc {
        let mut s = ServerProc {
            child: RefCell::new(None),
            data: data.to_path_buf(),
            port: 0,
            cacert: data.join("tls/cert.pem"),
            log: log.to_path_buf(),
            args: extra.iter().map(|s| s.to_string()).collect(),
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        s.spawn("127.0.0.1:0");
        s
    }

    fn spawn(&mut self, listen: &str) {
        let log = fs::File::create(&self.log).unwrap();
        let child = coffer()
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .arg("server")
            .arg("--data")
            .arg(&self.data)
            .args(["--listen", listen])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        *self.child.get_mut() = Some(child);
        let mut port = None;
        super::wait_until(
            "the coffer server to listen",
            || {
                let text = fs::read_to_string(&self.log).unwrap_or_default();
                port = text.split("listening on https://127.0.0.1:").nth(1).map(|rest| {
                    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                    digits.parse::<u16>().unwrap()
                });
                port.is_some()
            },
            || self.exited(),
        );
        self.port = port.unwrap();
    }

    /// Kill with SIGKILL (no graceful shutdown).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.get_mut().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port, after [`Self::kill9`].
    pub fn restart(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port);
        // the port may linger briefly after the kill
        while std::net::TcpListener::bind(&listen).is_err() {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.spawn(&listen);
    }

    /// For [`super::wait_until`]: a report once the server has exited (or was killed).
    pub fn exited(&self) -> Option<String> {
        let mut child = self.child.borrow_mut();
        match child.as_mut() {
            Some(c) => super::exit_report("coffer server", c, &self.log),
            None => Some("coffer server was killed".into()),
        }
    }

    pub fn url(&self, repo: &str) -> String {
        format!("https://127.0.0.1:{}/{repo}", self.port)
    }

    /// `coffer server --data DATA ARGS...`
    pub fn admin(&self, args: &[&str]) -> Output {
        self.admin_command(args).output().unwrap()
    }

    /// The command of [`Self::admin`], to spawn.
    pub fn admin_command(&self, args: &[&str]) -> Command {
        let mut c = coffer();
        c.envs(self.envs.iter().map(|(k, v)| (k, v)))
            .arg("server")
            .arg("--data")
            .arg(&self.data)
            .args(args);
        c
    }

    pub fn admin_ok(&self, args: &[&str]) -> String {
        let o = self.admin(args);
        assert!(
            o.status.success(),
            "coffer server {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Log a new console operator in: the session cookie's value.
    pub fn console_login(&self, operator: &str) -> String {
        let pw = self.admin_ok(&["operator", "add", operator]).trim().to_string();
        self.console_login_with(operator, &pw)
    }

    /// A console session of an existing operator.
    pub fn console_login_with(&self, operator: &str, pw: &str) -> String {
        let body = format!("name={operator}&password={pw}");
        let head = format!(
            "POST /console/login HTTP/1.1\nHost: 127.0.0.1\nConnection: close\nContent-Type: application/x-www-form-urlencoded\nContent-Length: {}",
            body.len()
        );
        let (head, _) = raw_exchange(self.port, &self.cacert, &head, body.as_bytes()).expect("an answer");
        head.lines()
            .find_map(|l| l.strip_prefix("set-cookie: coffer_session="))
            .and_then(|v| v.split(';').next())
            .unwrap_or_else(|| panic!("no session: {head}"))
            .to_string()
    }

    /// A console page with a session: the answer's head and body.
    pub fn console_get(&self, session: &str, path: &str) -> (String, String) {
        let head = format!(
            "GET {path} HTTP/1.1\nHost: 127.0.0.1\nConnection: close\nCookie: coffer_session={session}"
        );
        raw_exchange(self.port, &self.cacert, &head, b"").expect("an answer")
    }

    /// A console form sent with a session: the answer's head and body.
    pub fn console_post(&self, session: &str, path: &str, body: &str) -> (String, String) {
        let head = format!(
            "POST {path} HTTP/1.1\nHost: 127.0.0.1\nConnection: close\nContent-Type: application/x-www-form-urlencoded\nContent-Length: {}\nCookie: coffer_session={session}",
            body.len()
        );
        raw_exchange(self.port, &self.cacert, &head, body.as_bytes()).expect("an answer")
    }

    /// Add a client and return its token (stdout is the token alone).
    pub fn add_client(&self, name: &str, repo: &str, role: &str) -> String {
        let out = self.admin_ok(&["client", "add", name, "--repo", repo, "--role", role]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "the token alone on stdout: {out:?}");
        lines[0].to_string()
    }

    /// A raw request over TLS: `head` is the request line and headers (without the final
    /// blank line), `body` is sent as is, then (unless `keep_open`) the write side is shut.
    /// Returns the status code, or `None` if the server closed without answering.
    pub fn raw(&self, head: &str, body: &[u8]) -> Option<(u16, String)> {
        raw_request(self.port, &self.cacert, head, body)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn raw_request(port: u16, cacert: &Path, head: &str, body: &[u8]) -> Option<(u16, String)> {
    let (head, body) = raw_exchange(port, cacert, head, body)?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.trim().to_string()))
}

/// A raw request over TLS; returns the response's head (status line and headers, as sent)
/// and body, or `None` if the server closed without answering.
pub fn raw_exchange(port: u16, cacert: &Path, head: &str, body: &[u8]) -> Option<(String, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cacert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut req = head.replace('\n', "\r\n");
    if !req.ends_with("\r\n") {
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    if tls.write_all(req.as_bytes()).is_err() {
        return None;
    }
    let _ = tls.write_all(body);
    let _ = tls.flush();
    if head.contains("X-Close-Early: 1") {
        // a client that dies mid-upload: send close_notify and shut the socket
        tls.conn.send_close_notify();
        let _ = tls.flush();
        let _ = tls.sock.shutdown(std::net::Shutdown::Both);
        return None;
    }
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                resp.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&resp);
                if let Some((h, b)) = text.split_once("\r\n\r\n") {
                    let len = super::content_length(h);
                    if b.len() >= len {
                        break;
                    }
                }
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.to_string(), body.to_string()))
}

/// Path → blake3 of every file below `root` (directories included by name), to show that
/// storage is byte-identical before and after.
pub fn digest_dir(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn go(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if p.is_dir() {
                out.push((rel, "dir".into()));
                go(&p, root, out);
            } else {
                out.push((
                    rel,
                    blake3::hash(&fs::read(&p).unwrap_or_default())
                        .to_hex()
                        .to_string(),
                ));
            }
        }
    }
    go(root, root, &mut out);
    out.sort();
    out
}
