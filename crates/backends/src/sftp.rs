//! A repository on any SSH host, over SFTP.
//!
//! The connection is the system's `ssh` (`ssh HOST -s sftp`), and the protocol is spoken by
//! the `openssh-sftp-client` crate over its pipes: so the host's keys, `~/.ssh/config`
//! (aliases, ports, `ProxyJump`, `IdentityFile`), the agent and `known_hosts` work as for
//! every other SSH tool on the machine, and host-key checking is OpenSSH's own, not a
//! reimplementation. `BatchMode=yes` keeps an unattended backup from hanging at a password
//! or host-key prompt; `ServerAliveInterval` notices a dead link. `COFFER_SSH_COMMAND`
//! replaces `ssh` (words split at spaces, e.g. `ssh -F /etc/coffer/ssh_config`).
//!
//! Locations: `sftp:[USER@]HOST:/path` (or a path relative to the login directory), and
//! `sftp://[USER@]HOST[:PORT]/path` for a port. The layout is the local one (`config`,
//! `keys/…`, `data/ab/…`), so a repository copied with rsync or scp opens either way.
//!
//! Writes go to a temporary name in the target directory, are fsynced when the server offers
//! `fsync@openssh.com`, and land by `hardlink@openssh.com` (which fails if the name exists:
//! an object is never replaced); servers without it get a check and a rename. A connection
//! that breaks is opened again, up to three attempts per operation.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use coffer_core::limit::RateLimit;
use coffer_core::{Backend, BackendError, FileInfo, FileKind, WriteOutcome};
use futures::{StreamExt, TryStreamExt};
use openssh_sftp_client::error::SftpErrorKind;
use openssh_sftp_client::{Error as SftpError, Sftp, SftpOptions};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt};

use crate::retry::{self, Failure, Policy};

type BResult<T> = Result<T, BackendError>;

const ATTEMPTS: u32 = 3;
/// Read or write requests sent before the first answer is awaited.
const WRITES_IN_FLIGHT: usize = 16;
/// Bytes per request: under OpenSSH's limit (255 KiB), so no piece is split again.
const WRITE_PIECE: usize = 240 << 10;

/// A parsed `sftp:` location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SftpLocation {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// As given: absolute, or relative to the login directory.
    pub path: String,
}

impl SftpLocation {
    /// Parse a whole location, `sftp:…` or `sftp://…`.
    pub fn parse(location: &str) -> Result<SftpLocation, String> {
        let split_user = |s: &str| -> (Option<String>, String) {
            match s.rsplit_once('@') {
                Some((u, h)) => (Some(u.to_string()), h.to_string()),
                None => (None, s.to_string()),
            }
        };
        let loc = if let Some(rest) = location.strip_prefix("sftp://") {
            let (authority, path) = rest
                .split_once('/')
                .ok_or("no path: use sftp://[USER@]HOST[:PORT]/PATH")?;
            let (user, hostport) = split_user(authority);
            let (host, port) = match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    Some(
                        p.parse::<u16>()
                            .map_err(|_| format!("port {p:?} is not a number"))?,
                    ),
                ),
                None => (hostport, None),
            };
            SftpLocation {
                user,
                host,
                port,
                path: format!("/{path}"),
            }
        } else if let Some(rest) = location.strip_prefix("sftp:") {
            let (authority, path) = rest
                .split_once(':')
                .ok_or("no path: use sftp:[USER@]HOST:/PATH (or sftp://HOST:PORT/PATH for a port)")?;
            let (user, host) = split_user(authority);
            SftpLocation {
                user,
                host,
                port: None,
                path: path.to_string(),
            }
        } else {
            return Err("not an sftp: location".into());
        };
        if loc.host.is_empty() || loc.host.starts_with('-') {
            return Err("the host name is empty or starts with '-'".into());
        }
        if loc
            .user
            .as_deref()
            .is_some_and(|u| u.is_empty() || u.starts_with('-'))
        {
            return Err("the user name is empty or starts with '-'".into());
        }
        let path = loc.path.trim_end_matches('/');
        if path.is_empty() {
            return Err("the path is empty".into());
        }
        if path.split('/').any(|c| c == "..") {
            return Err("the path may not contain `..`".into());
        }
        Ok(SftpLocation {
            path: path.to_string(),
            ..loc
        })
    }

    pub fn display(&self) -> String {
        let user = self.user.as_deref().map(|u| format!("{u}@")).unwrap_or_default();
        match self.port {
            Some(p) => format!("sftp://{user}{}:{p}{}", self.host, self.path),
            None => format!("sftp:{user}{}:{}", self.host, self.path),
        }
    }
}

/// One SSH connection with its SFTP session.
struct Conn {
    sftp: Sftp,
    /// The `ssh` process; killed when the connection is dropped.
    _child: tokio::process::Child,
    hardlink: bool,
    fsync: bool,
}

pub struct SftpBackend {
    loc: SftpLocation,
    root: PathBuf,
    ssh: Vec<String>,
    rt: tokio::runtime::Runtime,
    conn: Mutex<Option<Arc<Conn>>>,
    /// The end of what `ssh` printed on stderr, for errors.
    stderr: Arc<Mutex<String>>,
    /// Writes keep under this rate (`--limit-upload`), piece by piece.
    upload_limit: Option<Arc<RateLimit>>,
    /// Directories made on demand by this process (one round trip each, not one per write).
    made: Mutex<std::collections::HashSet<PathBuf>>,
}

impl std::fmt::Debug for SftpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpBackend")
            .field("location", &self.loc.display())
            .finish()
    }
}

/// How an operation failed.
enum OpError {
    /// The server answered: no retry.
    Server(SftpErrorKind, String),
    /// The connection or the transport failed: open a new one and retry.
    Link(String),
}

fn classify(e: SftpError) -> OpError {
    match e {
        SftpError::SftpError(kind, msg) => OpError::Server(kind, msg.to_string()),
        other => OpError::Link(one_line(&other.to_string())),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn tmp_name() -> String {
    let mut r = [0u8; 8];
    if getrandom::fill(&mut r).is_err() {
        r = (std::process::id() as u64).to_le_bytes();
    }
    format!(".tmp-{}", hex::encode(r))
}

impl SftpBackend {
    /// Writes keep under `limit`, one piece (240 KiB) at a time.
    pub fn with_upload_limit(mut self, limit: Option<Arc<RateLimit>>) -> Self {
        self.upload_limit = limit;
        self
    }

    pub fn open(loc: SftpLocation) -> Result<SftpBackend, String> {
        let ssh: Vec<String> = match std::env::var("COFFER_SSH_COMMAND") {
            Ok(c) if !c.trim().is_empty() => c.split_whitespace().map(str::to_string).collect(),
            _ => vec!["ssh".to_string()],
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("coffer-sftp")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the SFTP client: {e}"))?;
        Ok(SftpBackend {
            root: PathBuf::from(&loc.path),
            loc,
            ssh,
            rt,
            conn: Mutex::new(None),
            stderr: Arc::new(Mutex::new(String::new())),
            upload_limit: None,
            made: Mutex::new(std::collections::HashSet::new()),
        })
    }

    fn what(kind: FileKind, name: &str) -> String {
        crate::display_name(kind, name)
    }

    fn path(&self, kind: FileKind, name: &str) -> BResult<PathBuf> {
        Ok(self
            .root
            .join(crate::relative_path(&self.location(), kind, name)?))
    }

    fn dir(&self, kind: FileKind, name: &str) -> PathBuf {
        match kind {
            FileKind::Config => self.root.clone(),
            k if k.fanned_out() => self.root.join(k.dir()).join(&name[..2.min(name.len())]),
            k => self.root.join(k.dir()),
        }
    }

    fn io(&self, what: &str, detail: String, transient: bool) -> BackendError {
        BackendError::Io {
            location: self.location(),
            what: what.to_string(),
            detail,
            transient,
        }
    }

    fn ssh_said(&self) -> String {
        let s = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        s.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_string())
            .unwrap_or_default()
    }

    async fn connect(&self) -> Result<Conn, String> {
        let mut cmd = tokio::process::Command::new(&self.ssh[0]);
        cmd.args(&self.ssh[1..]).args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
        ]);
        if let Some(p) = self.loc.port {
            cmd.arg("-p").arg(p.to_string());
        }
        if let Some(u) = &self.loc.user {
            cmd.arg("-l").arg(u);
        }
        cmd.arg("-s")
            .arg("--")
            .arg(&self.loc.host)
            .arg("sftp")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.ssh[0]))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err("ssh has no pipes".into());
        };
        let said = self.stderr.clone();
        said.lock().unwrap_or_else(|p| p.into_inner()).clear();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let mut s = said.lock().unwrap_or_else(|p| p.into_inner());
                if s.len() < 8192 {
                    s.push_str(&l);
                    s.push('\n');
                }
            }
        });
        let sftp = match tokio::time::timeout(
            Duration::from_secs(60),
            Sftp::new(stdin, stdout, SftpOptions::default()),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                // let ssh finish saying why
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                let said = self.ssh_said();
                return Err(if said.is_empty() {
                    one_line(&e.to_string())
                } else {
                    format!("ssh: {said}")
                });
            }
            Err(_) => return Err("no SFTP session within 60 s".into()),
        };
        Ok(Conn {
            hardlink: sftp.support_hardlink(),
            fsync: sftp.support_fsync(),
            sftp,
            _child: child,
        })
    }

    /// The current connection, opened if needed.
    fn conn(&self) -> Result<Arc<Conn>, String> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = Arc::new(self.rt.block_on(self.connect())?);
        *slot = Some(c.clone());
        Ok(c)
    }

    fn drop_conn(&self, old: &Arc<Conn>) {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, old)) {
            *slot = None;
        }
    }

    /// Run `op` on a connection, reconnecting and retrying when the link fails. A missing
    /// file is [`BackendError::NotFound`].
    fn with<T, F, Fut>(&self, what: &str, op: F) -> BResult<T>
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: Future<Output = Result<T, SftpError>>,
    {
        let policy = Policy {
            retries: ATTEMPTS as usize - 1,
            first: Duration::from_secs(1),
            longest: Duration::from_secs(4),
        };
        let label = format!("{}: {what}", self.location());
        let r = retry::blocking(policy, &label, || {
            let conn = match self.conn() {
                Ok(c) => c,
                Err(e) => {
                    // a refused host key or login does not pass by retrying
                    if e.contains("Host key verification failed")
                        || e.contains("Permission denied")
                        || e.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
                        || e.contains("Could not resolve hostname")
                    {
                        return Err(Failure::Stop(self.io(what, e, false)));
                    }
                    return Err(Failure::Again(e));
                }
            };
            match self.rt.block_on(op(conn.clone())).map_err(classify) {
                Ok(v) => Ok(v),
                Err(OpError::Server(SftpErrorKind::NoSuchFile, _)) => {
                    Err(Failure::Stop(BackendError::NotFound {
                        location: self.location(),
                        what: what.to_string(),
                    }))
                }
                Err(OpError::Server(kind, msg)) => Err(Failure::Stop(self.io(
                    what,
                    format!("server: {kind:?}: {}", one_line(&msg)),
                    false,
                ))),
                Err(OpError::Link(e)) => {
                    self.drop_conn(&conn);
                    let said = self.ssh_said();
                    Err(Failure::Again(if said.is_empty() {
                        e
                    } else {
                        format!("{e} (ssh: {said})")
                    }))
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

    /// Is there a file or directory at `p`?
    fn stat(&self, what: &str, p: &Path) -> BResult<Option<u64>> {
        match self.with(what, |c| async move { c.sftp.fs().metadata(p).await }) {
            Ok(m) => Ok(Some(m.len().unwrap_or(0))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Create a directory unless it exists.
    fn mkdir(&self, p: &Path) -> BResult<()> {
        let what = p.display().to_string();
        match self.with(&what, |c| async move { c.sftp.fs().create_dir(p).await }) {
            Ok(()) => Ok(()),
            // SFTP says only "failure" when the directory exists already
            Err(e) => match self.stat(&what, p)? {
                Some(_) => Ok(()),
                None => Err(e),
            },
        }
    }

    /// Names and sizes of the files in a directory (`None` if it does not exist).
    fn read_dir(&self, what: &str, p: &Path, want_dirs: bool) -> BResult<Option<Vec<FileInfo>>> {
        let r = self.with(what, |c| async move { entries(&c, p, want_dirs).await });
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The files (or the directories) in directory `p`, hidden names left out.
async fn entries(c: &Conn, p: &Path, want_dirs: bool) -> Result<Vec<FileInfo>, SftpError> {
    let dir = c.sftp.fs().open_dir(p).await?;
    let entries: Vec<_> = dir.read_dir().try_collect().await?;
    Ok(entries
        .into_iter()
        .filter_map(|e| {
            let name = e.filename().to_string_lossy().into_owned();
            let ft = e.file_type()?;
            let keep = if want_dirs { ft.is_dir() } else { ft.is_file() };
            (keep && !name.starts_with('.')).then(|| FileInfo {
                name,
                size: e.metadata().len().unwrap_or(0),
                modified: e.metadata().modified().map(|t| i64::from(t.into_raw())),
            })
        })
        .collect())
}

/// Directories listed (or made, by `init`) at once over the one connection when a listing
/// fans out (`data/00` to `data/ff`): one after the other they cost some four round trips
/// each, 256 of them 45 s over a 50 ms link (`scripts/bench-link`).
const LISTINGS_IN_FLIGHT: usize = 32;

impl Drop for SftpBackend {
    fn drop(&mut self) {
        // close the session politely; the ssh process is killed with it anyway
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(c) = conn.and_then(|c| Arc::try_unwrap(c).ok()) {
            let Conn {
                sftp, _child: child, ..
            } = c;
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(2), sftp.close()).await });
            drop(child);
        }
    }
}

impl Backend for SftpBackend {
    fn location(&self) -> String {
        self.loc.display()
    }

    fn create(&self) -> BResult<()> {
        if self.exists()? {
            return Err(self.io("config", "a repository exists here already".into(), false));
        }
        // the path and its parents
        let mut p = PathBuf::new();
        for c in self.root.components() {
            p.push(c);
            if p.as_os_str() != "/" {
                self.mkdir(&p)?;
            }
        }
        for k in FileKind::INIT_DIRS.iter().chain(&[FileKind::Pack]) {
            self.mkdir(&self.root.join(k.dir()))?;
        }
        // the 256 fan-out directories at once over the connection (one after the other they
        // took 15 s over a 50 ms link)
        let subdirs: Vec<PathBuf> = (0..256)
            .map(|i| self.root.join("data").join(format!("{i:02x}")))
            .collect();
        let subdirs = &subdirs;
        self.with("data/", |c| async move {
            futures::stream::iter(subdirs)
                .map(|d| {
                    let c = &c;
                    async move {
                        match c.sftp.fs().create_dir(d).await {
                            Ok(()) => Ok(()),
                            // SFTP says only "failure" when the directory exists already
                            Err(e) => c.sftp.fs().metadata(d).await.map(|_| ()).map_err(|_| e),
                        }
                    }
                })
                .buffer_unordered(LISTINGS_IN_FLIGHT)
                .try_collect::<Vec<()>>()
                .await?;
            Ok(())
        })
    }

    fn exists(&self) -> BResult<bool> {
        Ok(self.stat("config", &self.root.join("config"))?.is_some())
    }

    fn list(&self, kind: FileKind) -> BResult<Vec<FileInfo>> {
        if kind == FileKind::Config {
            return Ok(self
                .stat("config", &self.root.join("config"))?
                .map(|size| FileInfo::new("config", size))
                .into_iter()
                .collect());
        }
        let base = self.root.join(kind.dir());
        let what = format!("listing {}", kind.dir());
        let mut out = Vec::new();
        if kind.fanned_out() {
            let Some(subdirs) = self.read_dir(&what, &base, true)? else {
                if kind.made_on_demand() {
                    return Ok(out); // a repository from before parity
                }
                return Err(self.io(&what, "data/ is missing".into(), false));
            };
            let dirs: Vec<PathBuf> = subdirs.iter().map(|d| base.join(&d.name)).collect();
            let dirs = &dirs;
            // (a fan-out directory is never removed, so one that is missing fails the listing)
            out = self.with(&what, |c| async move {
                let lists: Vec<Vec<FileInfo>> = futures::stream::iter(dirs)
                    .map(|d| {
                        let c = &c;
                        async move { entries(c, d, false).await }
                    })
                    .buffer_unordered(LISTINGS_IN_FLIGHT)
                    .try_collect()
                    .await?;
                Ok(lists.into_iter().flatten().collect::<Vec<_>>())
            })?;
        } else {
            match self.read_dir(&what, &base, false)? {
                Some(v) => out = v,
                // repositories from before these namespaces existed
                None if kind.made_on_demand() => {}
                None => return Err(self.io(&what, format!("{}/ is missing", kind.dir()), false)),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read(&self, kind: FileKind, name: &str) -> BResult<Vec<u8>> {
        let size = self.size(kind, name)?;
        let len = u32::try_from(size).map_err(|_| {
            self.io(
                &Self::what(kind, name),
                format!("{size} bytes is too large to read at once"),
                false,
            )
        })?;
        self.read_range(kind, name, 0, len)
    }

    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u32) -> BResult<Vec<u8>> {
        let what = Self::what(kind, name);
        let p = self.path(kind, name)?;
        let p = &p;
        let b = self.with(&what, |c| async move {
            let f = c.sftp.open(p).await?;
            // pieces read at once through clones of the handle, kept in order
            let mut pieces = Vec::new();
            let mut at = 0u64;
            while at < len as u64 {
                let n = (len as u64 - at).min(WRITE_PIECE as u64);
                pieces.push((offset + at, n as usize));
                at += n;
            }
            let base = &f;
            let parts: Result<Vec<BytesMut>, SftpError> =
                futures::stream::iter(pieces.into_iter().map(|(at, n)| {
                    let mut g = base.clone();
                    async move {
                        g.seek(std::io::SeekFrom::Start(at))
                            .await
                            .map_err(SftpError::IOError)?;
                        g.read_all(n, BytesMut::new()).await
                    }
                }))
                .buffered(WRITES_IN_FLIGHT)
                .try_collect()
                .await;
            let _ = f.close().await;
            match parts {
                Ok(parts) => Ok(Some(parts.concat())),
                // the server answered, with fewer bytes: not a broken link
                Err(SftpError::IOError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        match b {
            Some(b) => Ok(b),
            None => Err(self.io(
                &what,
                format!("file too short for {len} bytes at {offset}"),
                false,
            )),
        }
    }

    fn size(&self, kind: FileKind, name: &str) -> BResult<u64> {
        let what = Self::what(kind, name);
        let p = self.path(kind, name)?;
        self.stat(&what, &p)?.ok_or(BackendError::NotFound {
            location: self.location(),
            what,
        })
    }

    fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> BResult<WriteOutcome> {
        self.write_parts(kind, name, &[data])
    }

    fn write_parts(&self, kind: FileKind, name: &str, parts: &[&[u8]]) -> BResult<WriteOutcome> {
        self.put(kind, name, parts, false)
    }

    fn replace(&self, kind: FileKind, name: &str, data: &[u8]) -> BResult<()> {
        self.put(kind, name, &[data], true).map(|_| ())
    }

    fn remove(&self, kind: FileKind, name: &str) -> BResult<()> {
        let what = Self::what(kind, name);
        let p = self.path(kind, name)?;
        let p = &p;
        self.with(&what, |c| async move { c.sftp.fs().remove_file(p).await })
    }

    fn latency_bound(&self) -> bool {
        true
    }
}

impl SftpBackend {
    /// Upload to a temporary name, then link it to its name (never replacing a file), or with
    /// `replace`, rename it over the file in one step (`posix-rename@openssh.com`; without
    /// that extension a replacement is refused: a plain SFTP rename may not be atomic).
    fn put(&self, kind: FileKind, name: &str, parts: &[&[u8]], replace: bool) -> BResult<WriteOutcome> {
        let what = Self::what(kind, name);
        let dest = self.path(kind, name)?;
        if !replace && self.stat(&what, &dest)?.is_some() {
            return Ok(WriteOutcome::Existed);
        }
        let dir = self.dir(kind, name);
        if kind.made_on_demand() {
            // each directory once per run (a second mkdir costs two round trips: SFTP says
            // only "failure" for one that exists, and a stat tells)
            let top = self.root.join(kind.dir());
            for d in [&top, &dir] {
                if !self.made.lock().unwrap_or_else(|p| p.into_inner()).contains(d) {
                    self.mkdir(d)?;
                    self.made
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(d.clone());
                }
            }
        }
        let tmp = dir.join(tmp_name());
        let (tmp, dest) = (&tmp, &dest);
        let limit = self.upload_limit.as_deref();
        let r = self.with(&what, |c| async move {
            let mut f = c.sftp.options().write(true).create_new(true).open(tmp).await?;
            // many writes in flight (each a clone of the handle at its own offset): one
            // awaited write at a time would cost a round trip per 256 KiB
            let max = WRITE_PIECE;
            let mut pieces = Vec::new();
            let mut at = 0u64;
            for part in parts {
                for piece in part.chunks(max) {
                    pieces.push((at, piece));
                    at += piece.len() as u64;
                }
            }
            let base = &f;
            futures::stream::iter(pieces.into_iter().map(|(at, piece)| {
                let mut g = base.clone();
                async move {
                    if let Some(l) = limit {
                        tokio::time::sleep(l.reserve(piece.len())).await;
                    }
                    g.seek(std::io::SeekFrom::Start(at))
                        .await
                        .map_err(SftpError::IOError)?;
                    g.write_all(piece).await
                }
            }))
            .buffer_unordered(WRITES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
            if c.fsync {
                f.sync_all().await?;
            }
            f.close().await?;
            let mut fs = c.sftp.fs();
            if replace {
                if !c.fsync {
                    let _ = fs.remove_file(tmp).await;
                    return Err(SftpError::IOError(std::io::Error::other(
                        "the SFTP server has no fsync@openssh.com: a repaired file could not be made durable before it replaces the damaged one",
                    )));
                }
                if !c.sftp.support_posix_rename() {
                    let _ = fs.remove_file(tmp).await;
                    return Err(SftpError::IOError(std::io::Error::other(
                        "the SFTP server has no posix-rename: a damaged file cannot be replaced in one step",
                    )));
                }
                fs.rename(tmp, dest).await?;
                return Ok(WriteOutcome::Created);
            }
            if c.hardlink {
                // link(2) on the server: fails if the name exists, never replaces it
                let linked = fs.hard_link(tmp, dest).await;
                let _ = fs.remove_file(tmp).await;
                return match linked {
                    Ok(()) => Ok(WriteOutcome::Created),
                    Err(e) => match fs.metadata(dest).await {
                        Ok(_) => Ok(WriteOutcome::Existed),
                        Err(_) => Err(e),
                    },
                };
            }
            if fs.metadata(dest).await.is_ok() {
                let _ = fs.remove_file(tmp).await;
                return Ok(WriteOutcome::Existed);
            }
            fs.rename(tmp, dest).await?;
            Ok(WriteOutcome::Created)
        });
        if r.is_err() {
            let _ = self.with(&what, |c| async move { c.sftp.fs().remove_file(tmp).await });
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        let l = SftpLocation::parse("sftp:backup@host.example:/srv/repo/").unwrap();
        assert_eq!(l.user.as_deref(), Some("backup"));
        assert_eq!(
            (l.host.as_str(), l.path.as_str(), l.port),
            ("host.example", "/srv/repo", None)
        );
        assert_eq!(l.display(), "sftp:backup@host.example:/srv/repo");
        let l = SftpLocation::parse("sftp://host:2222/srv/repo").unwrap();
        assert_eq!(
            (l.host.as_str(), l.port, l.path.as_str()),
            ("host", Some(2222), "/srv/repo")
        );
        assert_eq!(l.display(), "sftp://host:2222/srv/repo");
        let l = SftpLocation::parse("sftp:alias:repos/web").unwrap();
        assert_eq!((l.user, l.path.as_str()), (None, "repos/web"));
        for bad in [
            "sftp:host",
            "sftp:-oProxyCommand=x:/p",
            "sftp:host:",
            "sftp://host:port/p",
            "sftp:host:/a/../b",
            "sftp:@host:/p",
        ] {
            assert!(SftpLocation::parse(bad).is_err(), "{bad}");
        }
    }
}
