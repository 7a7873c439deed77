//! A repository on a coffer server: `https://HOST:PORT/REPO`.
//!
//! The token comes from `COFFER_TOKEN` or the file `COFFER_TOKEN_FILE` (`--token-file`),
//! never from the command line. The server's certificate is checked against `--cacert FILE`
//! (`COFFER_CACERT`: the server's self-signed certificate, or a private CA) or else the
//! system's CAs; there is no option to skip the check.
//!
//! Requests are retried with exponential backoff (8 attempts over about two minutes) on
//! connection errors, timeouts and 5xx answers; writes are safe to retry because the server
//! never replaces an existing name (a retried upload that landed the first time answers 409,
//! which means "stored").

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The most a client reads of one answer: a whole pack of the largest size, and headroom.
const MAX_RESPONSE: usize = (coffer_core::format::MAX_PACK_SIZE as usize) + (1 << 20);

use crate::retry::{self, Failure, Policy};
use coffer_core::limit::RateLimit;
use coffer_core::{Backend, BackendError, FileInfo, FileKind, WriteOutcome};
use futures::StreamExt;
use reqwest::{header, Method, StatusCode};
use zeroize::Zeroizing;

type BResult<T> = Result<T, BackendError>;

const ATTEMPTS: u32 = 8;
/// The largest answer to an agent's poll taken (a client's jobs are a few KiB).
const MAX_AGENT_POLL: usize = 4 << 20;

/// How to reach a coffer server: where its CA certificate and the token are.
#[derive(Clone, Debug, Default)]
pub struct RestOptions {
    pub cacert: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    /// The environment variable holding the token (default `COFFER_TOKEN`; `coffer copy`
    /// reads the source's from `COFFER_FROM_TOKEN`).
    pub token_var: Option<&'static str>,
}

pub struct RestBackend {
    base: String,
    repo: String,
    token: Zeroizing<String>,
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
    /// Request bodies keep under this rate (`--limit-upload`), 256 KiB at a time.
    upload_limit: Option<Arc<RateLimit>>,
}

impl std::fmt::Debug for RestBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestBackend")
            .field("location", &self.location())
            .field("token", &"<redacted>")
            .finish()
    }
}

fn read_token(opts: &RestOptions) -> Result<Zeroizing<String>, String> {
    let var = opts.token_var.unwrap_or("COFFER_TOKEN");
    if let Some(t) = std::env::var(var).ok().filter(|t| !t.trim().is_empty()) {
        return Ok(Zeroizing::new(t.trim().to_string()));
    }
    // the default variables apply to the repository of -r only
    let file = opts.token_file.clone().or_else(|| {
        opts.token_var
            .is_none()
            .then(|| std::env::var_os("COFFER_TOKEN_FILE").map(PathBuf::from))
            .flatten()
    });
    match file {
        Some(p) => {
            let s = Zeroizing::new(
                std::fs::read_to_string(&p).map_err(|e| format!("token file {}: {e}", p.display()))?,
            );
            let t = s.lines().next().unwrap_or("").trim().to_string();
            if t.is_empty() {
                return Err(format!("token file {} is empty", p.display()));
            }
            Ok(Zeroizing::new(t))
        }
        None => Err(format!("no token: set {var}, or give a token file")),
    }
}

/// A TLS client configuration (rustls with ring) that trusts `cacert`, or the system's CAs.
pub fn tls_config(cacert: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match cacert {
        Some(p) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(p)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| format!("CA certificate {}: {e}", p.display()))?;
            if certs.is_empty() {
                return Err(format!("CA certificate {}: no certificate in it", p.display()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("CA certificate {}: {e}", p.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(
                    "no system CA certificates found; give the server's certificate with --cacert".into(),
                );
            }
        }
    }
    let mut cfg =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

impl RestBackend {
    /// `url` is `https://HOST[:PORT]/REPO`.
    pub fn open(url: &str, opts: &RestOptions) -> Result<RestBackend, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or("a coffer server is reached over https:// only")?;
        let (host, repo) = rest
            .split_once('/')
            .ok_or("no repository name: use https://HOST:PORT/REPO")?;
        let repo = repo.trim_end_matches('/');
        if host.is_empty() || repo.is_empty() || repo.contains('/') {
            return Err("use https://HOST:PORT/REPO (one repository name after the host)".into());
        }
        let token = read_token(opts)?;
        let cacert = opts.cacert.clone().or_else(|| {
            opts.token_var
                .is_none()
                .then(|| std::env::var_os("COFFER_CACERT").map(PathBuf::from))
                .flatten()
        });
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(cacert.as_deref())?)
            .connect_timeout(Duration::from_secs(15))
            .timeout(Duration::from_secs(600))
            .tcp_keepalive(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(50))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("coffer-rest")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the HTTP client: {e}"))?;
        Ok(RestBackend {
            base: format!("https://{host}"),
            repo: repo.to_string(),
            token,
            client,
            rt,
            upload_limit: None,
        })
    }

    /// Request bodies keep under `limit`.
    pub fn with_upload_limit(mut self, limit: Option<Arc<RateLimit>>) -> Self {
        self.upload_limit = limit;
        self
    }

    fn url(&self, kind: FileKind, name: Option<&str>) -> String {
        match (kind, name) {
            (FileKind::Config, _) => format!("{}/{}/config", self.base, self.repo),
            (k, None) => format!("{}/{}/{}/", self.base, self.repo, k.dir()),
            (k, Some(n)) => format!("{}/{}/{}/{n}", self.base, self.repo, k.dir()),
        }
    }

    fn what(kind: FileKind, name: &str) -> String {
        crate::display_name(kind, name)
    }

    fn io(&self, what: &str, detail: impl Into<String>, transient: bool) -> BackendError {
        BackendError::Io {
            location: self.location(),
            what: what.to_string(),
            detail: detail.into(),
            transient,
        }
    }

    /// One request with retries; returns the final response (any status the server gave
    /// that is not worth retrying) or the last error.
    fn call(
        &self,
        method: Method,
        url: &str,
        what: &str,
        headers: &[(header::HeaderName, String)],
        body: Option<&[u8]>,
    ) -> BResult<(StatusCode, header::HeaderMap, Vec<u8>)> {
        self.call_n(method, url, what, headers, body, ATTEMPTS)
    }

    /// Send a run report (`POST /REPO/runs`, JSON) to the server; three attempts, so a
    /// server that is down delays the end of a run by seconds, not minutes.
    pub fn post_run(&self, json: &[u8]) -> BResult<()> {
        let url = format!("{}/{}/runs", self.base, self.repo);
        let headers = [(header::CONTENT_TYPE, "application/json".to_string())];
        let (s, _, b) = self.call_n(Method::POST, &url, "run report", &headers, Some(json), 3)?;
        if s.is_success() {
            Ok(())
        } else {
            Err(self.fail("run report", s, &b))
        }
    }

    /// Send a run's progress (`POST /REPO/progress`, JSON): one attempt (the next one is a
    /// few seconds away).
    pub fn post_progress(&self, json: &[u8]) -> BResult<()> {
        let url = format!("{}/{}/{}", self.base, self.repo, coffer_wire::PROGRESS_PATH);
        let headers = [(header::CONTENT_TYPE, "application/json".to_string())];
        let (s, _, b) = self.call_n(Method::POST, &url, "progress", &headers, Some(json), 1)?;
        if s.is_success() {
            Ok(())
        } else {
            Err(self.fail("progress", s, &b))
        }
    }

    /// Send the listing of a snapshot's directory the console asked for (`POST /REPO/browse`,
    /// JSON, see `coffer_wire::BrowseAnswer`).
    pub fn post_browse(&self, json: &[u8]) -> BResult<()> {
        let url = format!("{}/{}/{}", self.base, self.repo, coffer_wire::BROWSE_PATH);
        let headers = [(header::CONTENT_TYPE, "application/json".to_string())];
        let (s, _, b) = self.call_n(Method::POST, &url, "listing", &headers, Some(json), ATTEMPTS)?;
        if s.is_success() {
            Ok(())
        } else {
            Err(self.fail("listing", s, &b))
        }
    }

    /// Whether the client's own retention must wait (`GET /REPO/hold`, see
    /// `coffer_wire::RetentionHold`): the answer's JSON, or `None` from a server that does
    /// not know the question (404: an older server holds nothing).
    pub fn retention_hold(&self) -> BResult<Option<Vec<u8>>> {
        let url = format!("{}/{}/{}", self.base, self.repo, coffer_wire::HOLD_PATH);
        let (s, _, b) = self.call_n(Method::GET, &url, "retention hold", &[], None, ATTEMPTS)?;
        match s {
            s if s.is_success() => Ok(Some(b)),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(self.fail("retention hold", s, &b)),
        }
    }

    /// The agent's poll (`GET /REPO/agent?since=G&wait=S`, see `coffer_wire`): the answer's
    /// JSON, or `None` when nothing changed within `wait` seconds. One request, no retries
    /// (the agent polls again on its own).
    pub fn agent_poll(&self, since: i64, wait: u64) -> BResult<Option<Vec<u8>>> {
        let url = format!("{}/{}/agent?since={since}&wait={wait}", self.base, self.repo);
        let what = "agent poll";
        let req = self
            .client
            .get(&url)
            .bearer_auth(self.token.as_str())
            .timeout(Duration::from_secs(wait + 30));
        let r = self.rt.block_on(async {
            let mut r = req.send().await?;
            let status = r.status();
            let mut body = Vec::new();
            while let Some(chunk) = r.chunk().await? {
                if body.len() + chunk.len() > MAX_AGENT_POLL {
                    return Ok(Err(format!("an answer larger than {MAX_AGENT_POLL} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>(Ok((status, body)))
        });
        match r {
            Ok(Err(too_large)) => Err(self.io(what, too_large, false)),
            Ok(Ok((StatusCode::NO_CONTENT, _))) => Ok(None),
            Ok(Ok((s, b))) if s.is_success() => Ok(Some(b)),
            Ok(Ok((s, b))) => Err(self.fail(what, s, &b)),
            Err(e) => Err(self.io(what, error_chain(&e), true)),
        }
    }

    fn call_n(
        &self,
        method: Method,
        url: &str,
        what: &str,
        headers: &[(header::HeaderName, String)],
        body: Option<&[u8]>,
        attempts: u32,
    ) -> BResult<(StatusCode, header::HeaderMap, Vec<u8>)> {
        // one copy of the body, shared by every attempt
        let body = body.map(bytes::Bytes::copy_from_slice);
        // a range read gets what it asked for (and an error page), nothing like a whole pack
        let limit = headers
            .iter()
            .find(|(k, _)| *k == header::RANGE)
            .and_then(|(_, v)| v.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
            .and_then(|(a, b)| Some(b.parse::<u64>().ok()? - a.parse::<u64>().ok()? + 1))
            .map_or(MAX_RESPONSE, |n| {
                (n as usize).saturating_add(64 << 10).min(MAX_RESPONSE)
            });
        let policy = Policy {
            retries: attempts as usize - 1,
            first: Duration::from_millis(250),
            longest: Duration::from_secs(30),
        };
        let label = format!("{}: {what}", self.location());
        let r = retry::blocking(policy, &label, || {
            let mut req = self
                .client
                .request(method.clone(), url)
                .bearer_auth(self.token.as_str());
            for (k, v) in headers {
                req = req.header(k, v);
            }
            if let Some(b) = &body {
                req = match &self.upload_limit {
                    None => req.body(b.clone()),
                    Some(l) => req
                        .header(header::CONTENT_LENGTH, b.len())
                        .body(paced_body(b.clone(), l.clone())),
                };
            }
            let res = self.rt.block_on(async {
                let mut r = req.send().await?;
                let status = r.status();
                let h = r.headers().clone();
                // never more than the largest object a repository holds: a hostile server
                // must not be able to make the client read without end
                let mut bytes = Vec::new();
                while let Some(chunk) = r.chunk().await? {
                    if bytes.len() + chunk.len() > limit {
                        return Ok(Err(format!(
                            "the answer is larger than the {limit} bytes asked for"
                        )));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok::<_, reqwest::Error>(Ok((status, h, bytes)))
            });
            match res {
                Ok(Err(too_large)) => Err(Failure::Stop(self.io(what, too_large, false))),
                // a full quota (507) or an unsupported request (501) does not pass by retrying
                Ok(Ok((s, h, b)))
                    if (!s.is_server_error() && s != StatusCode::REQUEST_TIMEOUT)
                        || s == StatusCode::INSUFFICIENT_STORAGE
                        || s == StatusCode::NOT_IMPLEMENTED =>
                {
                    Ok((s, h, b))
                }
                Ok(Ok((s, _, b))) => Err(Failure::Again(format!("server answered {s}: {}", one_line(&b)))),
                Err(e) => {
                    let last = error_chain(&e);
                    // a certificate that is not trusted stays untrusted
                    if last.contains("certificate") {
                        return Err(Failure::Stop(self.io(
                            what,
                            format!(
                                "{last} (trust the server's certificate with --cacert FILE or COFFER_CACERT)"
                            ),
                            false,
                        )));
                    }
                    Err(Failure::Again(last))
                }
            }
        });
        r.map_err(|f| match f {
            Failure::Stop(e) => e,
            Failure::Again(last) => self.io(
                what,
                format!("{last} (after {} attempts)", policy.attempts()),
                true,
            ),
        })
    }

    /// Turn a non-success answer into an error.
    fn fail(&self, what: &str, status: StatusCode, body: &[u8]) -> BackendError {
        if status == StatusCode::NOT_FOUND {
            return BackendError::NotFound {
                location: self.location(),
                what: what.to_string(),
            };
        }
        let hint = match status {
            StatusCode::UNAUTHORIZED => " (check COFFER_TOKEN / --token-file)",
            StatusCode::FORBIDDEN => " (the token's role or repository does not allow this)",
            _ => "",
        };
        self.io(
            what,
            format!("server answered {status}: {}{hint}", one_line(body)),
            false,
        )
    }

    fn get(&self, kind: FileKind, name: &str, range: Option<(u64, u32)>) -> BResult<Vec<u8>> {
        let what = Self::what(kind, name);
        let url = self.url(kind, Some(name));
        let headers: Vec<(header::HeaderName, String)> = match range {
            Some((o, l)) if l > 0 => vec![(header::RANGE, format!("bytes={o}-{}", o + l as u64 - 1))],
            _ => Vec::new(),
        };
        if range.is_some_and(|(_, l)| l == 0) {
            return Ok(Vec::new());
        }
        let (s, _, b) = self.call(Method::GET, &url, &what, &headers, None)?;
        if !s.is_success() {
            return Err(self.fail(&what, s, &b));
        }
        if let Some((o, l)) = range {
            if b.len() != l as usize {
                return Err(self.io(
                    &what,
                    format!("asked for {l} bytes at {o}, got {}", b.len()),
                    true,
                ));
            }
        }
        Ok(b)
    }
}

/// A request body sent in pieces, each after its turn under `limit`.
fn paced_body(b: bytes::Bytes, limit: Arc<RateLimit>) -> reqwest::Body {
    let pieces: Vec<bytes::Bytes> = (0..b.len())
        .step_by(crate::PACED_PIECE)
        .map(|at| b.slice(at..(at + crate::PACED_PIECE).min(b.len())))
        .collect();
    let stream = futures::stream::iter(pieces).then(move |piece| {
        let limit = limit.clone();
        async move {
            tokio::time::sleep(limit.reserve(piece.len())).await;
            Ok::<_, std::io::Error>(piece)
        }
    });
    reqwest::Body::wrap_stream(stream)
}

fn one_line(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s = s.trim();
    let s = s.lines().next().unwrap_or("");
    if s.len() > 300 {
        format!("{}…", &s[..s.floor_char_boundary(300)])
    } else {
        s.to_string()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

impl Backend for RestBackend {
    fn location(&self) -> String {
        format!("{}/{}", self.base, self.repo)
    }

    fn create(&self) -> BResult<()> {
        let url = format!("{}/{}", self.base, self.repo);
        let (s, _, b) = self.call(Method::POST, &url, "repository", &[], None)?;
        if s == StatusCode::CREATED {
            Ok(())
        } else {
            Err(self.fail("repository", s, &b))
        }
    }

    fn exists(&self) -> BResult<bool> {
        match self.size(FileKind::Config, "config") {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn list(&self, kind: FileKind) -> BResult<Vec<FileInfo>> {
        let what = format!("{}/", kind.dir());
        let url = self.url(kind, None);
        let (s, _, b) = self.call(Method::GET, &url, &what, &[], None)?;
        if !s.is_success() {
            return Err(self.fail(&what, s, &b));
        }
        #[derive(serde::Deserialize)]
        struct E {
            name: String,
            size: u64,
            /// upload time by the server's clock (servers before 2026-12-07 do not send it)
            #[serde(default)]
            mtime: Option<i64>,
        }
        let v: Vec<E> = serde_json::from_slice(&b)
            .map_err(|e| self.io(&what, format!("listing does not decode: {e}"), false))?;
        Ok(v.into_iter()
            .map(|e| FileInfo {
                name: e.name,
                size: e.size,
                modified: e.mtime,
            })
            .collect())
    }

    fn read(&self, kind: FileKind, name: &str) -> BResult<Vec<u8>> {
        self.get(kind, name, None)
    }

    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u32) -> BResult<Vec<u8>> {
        self.get(kind, name, Some((offset, len)))
    }

    fn size(&self, kind: FileKind, name: &str) -> BResult<u64> {
        let what = Self::what(kind, name);
        let url = self.url(kind, Some(name));
        let (s, h, _) = self.call(Method::HEAD, &url, &what, &[], None)?;
        if !s.is_success() {
            // a HEAD answer has no body: the server repeats its message in a header
            let msg = h.get("x-coffer-error").map(|v| v.as_bytes()).unwrap_or_default();
            return Err(self.fail(&what, s, msg));
        }
        h.get("x-coffer-size")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| self.io(&what, "the server gave no size", false))
    }

    fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> BResult<WriteOutcome> {
        let what = Self::what(kind, name);
        // a large object that is there already is not sent again
        if data.len() > 1 << 20 {
            match self.size(kind, name) {
                Ok(_) => return Ok(WriteOutcome::Existed),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        let url = self.url(kind, Some(name));
        let (s, _, b) = self.call(Method::PUT, &url, &what, &[], Some(data))?;
        match s {
            StatusCode::CREATED => Ok(WriteOutcome::Created),
            StatusCode::CONFLICT if self.size(kind, name).is_ok() => Ok(WriteOutcome::Existed),
            s => Err(self.fail(&what, s, &b)),
        }
    }

    fn remove(&self, kind: FileKind, name: &str) -> BResult<()> {
        let what = Self::what(kind, name);
        let url = self.url(kind, Some(name));
        let (s, _, b) = self.call(Method::DELETE, &url, &what, &[], None)?;
        if s.is_success() {
            Ok(())
        } else {
            Err(self.fail(&what, s, &b))
        }
    }

    fn replace(&self, kind: FileKind, name: &str, _data: &[u8]) -> BResult<()> {
        // no client credential may overwrite what the server stores; parity needs no key,
        // so the server repairs by itself
        Err(self.io(
            &Self::what(kind, name),
            "a coffer server repairs its packs itself from their parity: run `coffer server verify --repair` there (its scheduled verify does it too)",
            false,
        ))
    }

    fn wants_manifests(&self) -> bool {
        true
    }

    fn latency_bound(&self) -> bool {
        true
    }
}
