//! A real browser driven over WebDriver: Debian's `chromedriver` with headless Chromium
//! (both installed by `.ci/run`), spoken to as plain HTTP/1.1 JSON on 127.0.0.1, so that a
//! test can run a script in the page (measure its layout) after logging in.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// A chromedriver process and one browser session; both end when it drops.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A headless browser whose viewport is `width` × `height` CSS pixels (a phone's when
    /// `mobile`: touch, device pixel ratio 3), trusting the certificate with this SPKI pin.
    pub fn start(width: u32, height: u32, mobile: bool, pin: &str) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (apt-get install chromium-driver)");
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        // no deadline: chromedriver exiting ends the wait
        while b.call("GET", "/status", None).is_err() {
            if let Ok(Some(st)) = b.driver.try_wait() {
                panic!("chromedriver exited before it answered ({st})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--hide-scrollbars".into(),
            format!("--user-data-dir={}", b._profile.path().display()),
            format!("--ignore-certificate-errors-spki-list={pin}"),
        ];
        let mut options = json!({ "binary": "/usr/bin/chromium" });
        if mobile {
            options["mobileEmulation"] = json!({
                "deviceMetrics": { "width": width, "height": height, "pixelRatio": 3.0, "touch": true }
            });
        } else {
            args.push(format!("--window-size={width},{height}"));
        }
        options["args"] = json!(args);
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": false,
            "goog:chromeOptions": options,
        }}});
        let v = b
            .call("POST", "/session", Some(caps))
            .unwrap_or_else(|e| panic!("new session: {e}"));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session in {v}"))
            .to_string();
        b
    }

    /// Open a URL and wait for the page to load.
    pub fn open(&self, url: &str) {
        let path = format!("/session/{}/url", self.session);
        self.call("POST", &path, Some(json!({ "url": url })))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Run a script in the page (its body; `return` gives the value back).
    pub fn run(&self, script: &str) -> Value {
        let path = format!("/session/{}/execute/sync", self.session);
        self.call("POST", &path, Some(json!({ "script": script, "args": [] })))
            .unwrap_or_else(|e| panic!("script: {e}"))
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let path = format!("/session/{}/screenshot", self.session);
        let v = self
            .call("GET", &path, None)
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or(""))
            .unwrap()
    }

    /// One WebDriver command; the answer's `value`, or its error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .map_err(|e| e.to_string())?;
        // (chromedriver keeps the connection open: read the head, then Content-Length bytes)
        let mut answer = Vec::new();
        let mut buf = [0u8; 8192];
        let (head, json) = loop {
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the connection closed mid-answer".into());
            }
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .ok_or_else(|| format!("no Content-Length in {head}"))?;
                if rest.len() >= length {
                    break (head.to_string(), rest[..length].to_string());
                }
            }
        };
        let v: Value = serde_json::from_str(&json).map_err(|e| format!("{e}: {json}"))?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("{}: {}", head.lines().next().unwrap_or(""), v["value"]));
        }
        Ok(v["value"].clone())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
