//! A repository in an S3-compatible bucket (AWS, Backblaze B2, Wasabi, Ceph RGW, SeaweedFS,
//! Garage, MinIO), through the `object_store` crate (Apache Arrow's; request signing, retries
//! with exponential backoff on 5xx, throttling and timeouts, multipart uploads).
//!
//! Location: `s3:https://ENDPOINT/BUCKET[/PREFIX]` (`http://` only for a loopback or
//! explicitly trusted endpoint), or `s3:BUCKET[/PREFIX]` for AWS itself. Objects use the same
//! layout as a local repository (`config`, `keys/…`, `data/ab/abcd…`), so a repository copied
//! with any S3 tool opens in either place.
//!
//! Credentials, in this order: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
//! (`AWS_SESSION_TOKEN`), then the profile `AWS_PROFILE` (default `default`) of
//! `~/.aws/credentials` (`AWS_SHARED_CREDENTIALS_FILE`). Region: `AWS_REGION`,
//! `AWS_DEFAULT_REGION`, else `us-east-1`. Requests go path-style (`endpoint/bucket/key`, what
//! self-hosted stores need) unless `COFFER_S3_VIRTUAL_HOST=1`.
//!
//! The trait's guarantees on S3: a PUT is atomic and durable when it returns; "never
//! overwrite" uses a conditional PUT (`If-None-Match: *`) after a HEAD, so a retry can never
//! replace a stored object; a listing is paged to its end or fails as a whole.
//!
//! **Object Lock** (`COFFER_S3_OBJECT_LOCK=governance:30d` or `compliance:90d`, on a bucket
//! created with Object Lock enabled): config, keys, snapshots and packs (what cannot be
//! rebuilt) are uploaded with that retention, so a stolen credential cannot destroy them
//! before it ends; prune extends the lock of what is still in use. Index files, leases and
//! marks are not locked (an index is rebuilt from the packs). Whether set or not, a delete
//! removes the object's version for good, and an object whose lock is in force is not
//! deleted but reported ([`BackendError::Locked`]); see [`crate::s3_lock`].

use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use coffer_core::limit::RateLimit;
use coffer_core::{Backend, BackendError, FileInfo, FileKind, WriteOutcome};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig};

use crate::retry::{self, Failure, Policy};
use crate::s3_lock::{rfc3339, ObjectHead, ObjectLock, Signer};

type BResult<T> = Result<T, BackendError>;

/// Objects larger than this go up in parts (a single PUT may be up to 5 GiB, but a part can
/// be retried on its own).
const MULTIPART_ABOVE: usize = 64 << 20;
const PART_SIZE: usize = 16 << 20;

/// A parsed `s3:` location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    /// `https://host:port`, or `None` for AWS.
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl S3Location {
    /// Parse the part after `s3:`.
    pub fn parse(rest: &str) -> Result<S3Location, String> {
        let (endpoint, path) = if let Some(p) = rest.strip_prefix("https://") {
            let (host, path) = p.split_once('/').unwrap_or((p, ""));
            (Some(format!("https://{host}")), path)
        } else if let Some(p) = rest.strip_prefix("http://") {
            let (host, path) = p.split_once('/').unwrap_or((p, ""));
            (Some(format!("http://{host}")), path)
        } else {
            (None, rest)
        };
        if endpoint.as_deref().is_some_and(|e| e.ends_with("://")) {
            return Err("the endpoint has no host (s3:https://HOST/BUCKET/PREFIX)".into());
        }
        let path = path.trim_matches('/');
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err("no bucket given (s3:https://HOST/BUCKET/PREFIX)".into());
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|c| c == "." || c == "..") {
            return Err("the prefix may not contain `.` or `..` components".into());
        }
        Ok(S3Location {
            endpoint,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    pub fn display(&self) -> String {
        let mut s = String::from("s3:");
        if let Some(e) = &self.endpoint {
            s.push_str(e);
            s.push('/');
        }
        s.push_str(&self.bucket);
        if !self.prefix.is_empty() {
            s.push('/');
            s.push_str(&self.prefix);
        }
        s
    }
}

/// Access key, secret and session token from `~/.aws/credentials` (INI), profile `profile`.
fn shared_credentials(profile: &str) -> Option<(String, String, Option<String>)> {
    let path = match std::env::var_os("AWS_SHARED_CREDENTIALS_FILE") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".aws/credentials"),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let (mut id, mut secret, mut token) = (None, None, None);
    let mut in_profile = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some((id?, secret?, token))
}

pub struct S3Backend {
    store: AmazonS3,
    loc: S3Location,
    rt: Arc<tokio::runtime::Runtime>,
    /// Retention for new objects (`COFFER_S3_OBJECT_LOCK`).
    lock: Option<ObjectLock>,
    /// The client for requests object_store cannot make, built at first use.
    signer: Arc<OnceLock<Result<Signer, String>>>,
    region: String,
    virtual_host: bool,
    /// Each new object waits its turn under this rate (`--limit-upload`); an object goes
    /// at the link's speed once started (object_store sends a body it holds whole).
    upload_limit: Option<Arc<RateLimit>>,
}

/// Whether files of `kind` are uploaded under the retention lock: what cannot be rebuilt.
fn lockable(kind: FileKind) -> bool {
    matches!(
        kind,
        FileKind::Config | FileKind::Key | FileKind::Snapshot | FileKind::Pack
    )
}

/// An object's size and last-modified time (seconds since the epoch), as S3 reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectStat {
    pub size: u64,
    pub modified: i64,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the credentials
        f.debug_struct("S3Backend")
            .field("location", &self.loc.display())
            .finish()
    }
}

impl S3Backend {
    pub fn open(loc: S3Location) -> Result<S3Backend, String> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let virtual_host = env("COFFER_S3_VIRTUAL_HOST").is_some_and(|v| v == "1");
        let lock = env("COFFER_S3_OBJECT_LOCK")
            .map(|v| ObjectLock::parse(&v))
            .transpose()?;
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&loc.bucket)
            .with_region(&region)
            .with_virtual_hosted_style_request(virtual_host)
            .with_retry(RetryConfig {
                max_retries: 8,
                retry_timeout: Duration::from_secs(300),
                ..Default::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(15))
                    .with_timeout(Duration::from_secs(300))
                    .with_allow_http(loc.endpoint.as_deref().is_some_and(|e| e.starts_with("http://"))),
            );
        if let Some(e) = &loc.endpoint {
            b = b.with_endpoint(e);
        }
        match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => {
                b = b.with_access_key_id(id).with_secret_access_key(secret);
                if let Some(t) = env("AWS_SESSION_TOKEN") {
                    b = b.with_token(t);
                }
            }
            _ => {
                let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
                match shared_credentials(&profile) {
                    Some((id, secret, token)) => {
                        b = b.with_access_key_id(id).with_secret_access_key(secret);
                        if let Some(t) = token {
                            b = b.with_token(t);
                        }
                    }
                    None => {
                        return Err(format!(
                            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or add \
                             profile [{profile}] to ~/.aws/credentials"
                        ))
                    }
                }
            }
        }
        let store = b.build().map_err(|e| format!("S3 configuration: {e}"))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("coffer-s3")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the S3 client: {e}"))?;
        Ok(S3Backend {
            store,
            loc,
            rt: Arc::new(rt),
            lock,
            signer: Arc::new(OnceLock::new()),
            region,
            virtual_host,
            upload_limit: None,
        })
    }

    /// New objects wait their turn under `limit`.
    pub fn with_upload_limit(mut self, limit: Option<Arc<RateLimit>>) -> Self {
        self.upload_limit = limit;
        self
    }

    /// The signed-request client (Object Lock, versions), made once per bucket.
    fn signer(&self) -> BResult<&Signer> {
        let s = self.signer.get_or_init(|| {
            let http = reqwest::Client::builder()
                .use_preconfigured_tls(crate::rest::tls_config(None)?)
                .connect_timeout(Duration::from_secs(15))
                .timeout(Duration::from_secs(300))
                .build()
                .map_err(|e| format!("HTTP client: {e}"))?;
            let base = match &self.loc.endpoint {
                None => format!("https://{}.s3.{}.amazonaws.com", self.loc.bucket, self.region),
                Some(e) if self.virtual_host => {
                    let (scheme, host) = e.split_once("://").unwrap_or(("https", e));
                    format!("{scheme}://{}.{host}", self.loc.bucket)
                }
                Some(e) => format!("{e}/{}", self.loc.bucket),
            };
            Ok(Signer {
                http,
                credentials: self.store.credentials().clone(),
                region: self.region.clone(),
                base,
            })
        });
        s.as_ref().map_err(|e| BackendError::Io {
            location: self.location(),
            what: "S3 client".into(),
            detail: e.clone(),
            transient: false,
        })
    }

    fn signed_err(&self, what: &str, detail: String) -> BackendError {
        BackendError::Io {
            location: self.location(),
            what: what.to_string(),
            detail: one_line(&detail),
            transient: false,
        }
    }

    /// The version and lock of an object, `None` if it is not there.
    fn head_object(&self, kind: FileKind, name: &str) -> BResult<Option<ObjectHead>> {
        let key = self.key(kind, name)?;
        let signer = self.signer()?;
        self.block(signer.head(key.as_ref()))
            .map_err(|e| self.signed_err(&Self::what(kind, name), e))
    }

    /// Remove the delete markers someone put on config, keys, snapshots and packs of this
    /// repository (a plain `DELETE` on a versioned bucket only hides an object), so that
    /// the hidden versions are current again. Returns the names brought back, per kind.
    pub fn undelete(&self) -> BResult<Vec<(FileKind, String)>> {
        let signer = self.signer()?;
        let prefix = if self.loc.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.loc.prefix)
        };
        let versions = self
            .block(signer.list_versions(&prefix))
            .map_err(|e| self.signed_err("listing object versions", e))?;
        let mut by_key: std::collections::BTreeMap<&str, Vec<&crate::s3_lock::Version>> = Default::default();
        for v in &versions {
            by_key.entry(v.key.as_str()).or_default().push(v);
        }
        let mut back = Vec::new();
        for (key, vs) in by_key {
            let Some((kind, name)) = self.kind_of_key(key) else {
                continue;
            };
            if !lockable(kind) {
                continue;
            }
            let hidden = vs.iter().any(|v| v.latest && v.delete_marker);
            let has_data = vs.iter().any(|v| !v.delete_marker);
            if !(hidden && has_data) {
                continue;
            }
            for m in vs.iter().filter(|v| v.delete_marker) {
                self.block(signer.delete_version(key, &m.version))
                    .map_err(|e| self.signed_err(&Self::what(kind, &name), e))?;
            }
            back.push((kind, name));
        }
        Ok(back)
    }

    /// The kind and name of an object key of this repository (`None` for anything else).
    fn kind_of_key(&self, key: &str) -> Option<(FileKind, String)> {
        let rel = if self.loc.prefix.is_empty() {
            key
        } else {
            key.strip_prefix(&self.loc.prefix)?.strip_prefix('/')?
        };
        if rel == "config" {
            return Some((FileKind::Config, "config".into()));
        }
        let (dir, rest) = rel.split_once('/')?;
        let name = rest.rsplit('/').next()?;
        let kind = FileKind::ALL
            .into_iter()
            .find(|k| *k != FileKind::Config && k.dir() == dir)?;
        (!name.is_empty() && name.bytes().all(|b| b.is_ascii_hexdigit())).then(|| (kind, name.to_string()))
    }

    /// The same bucket and client below another prefix (`sub` is appended to this one's):
    /// one connection pool for many repositories, as the coffer server keeps them.
    pub fn below(&self, sub: &str) -> Result<S3Backend, String> {
        let sub = sub.trim_matches('/');
        if sub.is_empty() || sub.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(format!("invalid S3 prefix {sub:?}"));
        }
        let mut loc = self.loc.clone();
        loc.prefix = if loc.prefix.is_empty() {
            sub.to_string()
        } else {
            format!("{}/{sub}", loc.prefix)
        };
        Ok(S3Backend {
            store: self.store.clone(),
            loc,
            rt: self.rt.clone(),
            lock: self.lock,
            signer: self.signer.clone(),
            region: self.region.clone(),
            virtual_host: self.virtual_host,
            upload_limit: self.upload_limit.clone(),
        })
    }

    /// Size and upload time of an object, `None` if it is not there.
    pub fn stat(&self, kind: FileKind, name: &str) -> BResult<Option<ObjectStat>> {
        let what = Self::what(kind, name);
        let key = self.key(kind, name)?;
        match self.block(self.store.head(&key)) {
            Ok(m) => Ok(Some(stat_of(&m))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(&what, e)),
        }
    }

    /// Like [`Backend::list`], with each object's upload time.
    pub fn list_stat(&self, kind: FileKind) -> BResult<Vec<(String, ObjectStat)>> {
        if kind == FileKind::Config {
            return Ok(self
                .stat(kind, "config")?
                .map(|st| ("config".to_string(), st))
                .into_iter()
                .collect());
        }
        let dir = self.full(kind.dir());
        let metas: Vec<object_store::ObjectMeta> = self
            .reading(&format!("listing {}", kind.dir()), || {
                self.store.list(Some(&dir)).try_collect()
            })
            .map_err(|e| self.err(&format!("listing {}", kind.dir()), e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_string();
                name.bytes()
                    .all(|b| b.is_ascii_hexdigit())
                    .then(|| (name, stat_of(&m)))
            })
            .collect())
    }

    /// Copy an object to another prefix of the same bucket, server-side (no bytes pass
    /// through this machine). An object of that name there is replaced.
    pub fn copy_to(&self, kind: FileKind, name: &str, dest: &S3Backend) -> BResult<()> {
        let what = Self::what(kind, name);
        let from = self.key(kind, name)?;
        let to = dest.key(kind, name)?;
        self.block(self.store.copy(&from, &to))
            .map_err(|e| self.err(&what, e))
    }

    fn key(&self, kind: FileKind, name: &str) -> BResult<ObjPath> {
        Ok(self.full(&crate::relative_path(&self.location(), kind, name)?))
    }

    fn full(&self, rel: &str) -> ObjPath {
        if self.loc.prefix.is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{}/{rel}", self.loc.prefix))
        }
    }

    fn what(kind: FileKind, name: &str) -> String {
        crate::display_name(kind, name)
    }

    fn err(&self, what: &str, e: object_store::Error) -> BackendError {
        match e {
            object_store::Error::NotFound { .. } => BackendError::NotFound {
                location: self.location(),
                what: what.to_string(),
            },
            e => BackendError::Io {
                location: self.location(),
                what: what.to_string(),
                // object_store has retried already
                detail: one_line(&e.to_string()),
                transient: false,
            },
        }
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A read (GET, LIST) with retries of our own: object_store retries a request that
    /// fails, but not a response body that breaks off midway (a reset or a proxy cutting
    /// the answer short), which would otherwise fail a whole backup. Reads are idempotent.
    fn reading<T, F, Fut>(&self, what: &str, op: F) -> Result<T, object_store::Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, object_store::Error>>,
    {
        let policy = Policy {
            retries: 4,
            first: Duration::from_millis(200),
            longest: Duration::from_secs(2),
        };
        // the error that ended the last attempt, returned as object_store gave it
        let mut last = None;
        let r = retry::blocking(policy, &format!("{}: {what}", self.location()), || {
            match self.block(op()) {
                Err(e @ object_store::Error::Generic { .. }) => {
                    let why = e.to_string();
                    last = Some(e);
                    Err(Failure::Again(why))
                }
                Err(e) => Err(Failure::Stop(e)),
                Ok(v) => Ok(v),
            }
        });
        r.map_err(|f| match f {
            Failure::Stop(e) => e,
            Failure::Again(why) => last.take().unwrap_or(object_store::Error::Generic {
                store: "S3",
                source: why.into(),
            }),
        })
    }

    fn get_range(&self, kind: FileKind, name: &str, range: Option<Range<u64>>) -> BResult<Vec<u8>> {
        let what = Self::what(kind, name);
        let key = self.key(kind, name)?;
        let bytes = self
            .reading(&what, || async {
                match range.clone() {
                    Some(r) => self.store.get_range(&key, r).await,
                    None => self.store.get(&key).await?.bytes().await,
                }
            })
            .map_err(|e| self.err(&what, e))?;
        if let Some(r) = range {
            if bytes.len() as u64 != r.end - r.start {
                return Err(BackendError::Io {
                    location: self.location(),
                    what,
                    detail: format!(
                        "asked for {} bytes at {}, got {}",
                        r.end - r.start,
                        r.start,
                        bytes.len()
                    ),
                    transient: true,
                });
            }
        }
        Ok(bytes.to_vec())
    }
}

fn stat_of(m: &object_store::ObjectMeta) -> ObjectStat {
    ObjectStat {
        size: m.size,
        modified: m.last_modified.timestamp(),
    }
}

/// Error texts of HTTP clients span lines; messages here are one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        self.loc.display()
    }

    fn create(&self) -> BResult<()> {
        if self.exists()? {
            return Err(BackendError::Io {
                location: self.location(),
                what: "config".into(),
                detail: "a repository exists here already".into(),
                transient: false,
            });
        }
        // no directories on S3; listing proves the bucket is there and reachable
        self.list(FileKind::Key).map(|_| ())
    }

    fn exists(&self) -> BResult<bool> {
        let key = self.full("config");
        match self.block(self.store.head(&key)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err("config", e)),
        }
    }

    fn list(&self, kind: FileKind) -> BResult<Vec<FileInfo>> {
        if kind == FileKind::Config {
            // one HEAD for both existence and size
            return match self.block(self.store.head(&self.full("config"))) {
                Ok(m) => Ok(vec![FileInfo {
                    name: "config".into(),
                    size: m.size,
                    modified: Some(m.last_modified.timestamp()),
                }]),
                Err(object_store::Error::NotFound { .. }) => Ok(vec![]),
                Err(e) => Err(self.err("config", e)),
            };
        }
        Ok(self
            .list_stat(kind)?
            .into_iter()
            .map(|(name, st)| FileInfo {
                name,
                size: st.size,
                modified: Some(st.modified),
            })
            .collect())
    }

    fn read(&self, kind: FileKind, name: &str) -> BResult<Vec<u8>> {
        self.get_range(kind, name, None)
    }

    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u32) -> BResult<Vec<u8>> {
        self.get_range(kind, name, Some(offset..offset + len as u64))
    }

    fn size(&self, kind: FileKind, name: &str) -> BResult<u64> {
        let what = Self::what(kind, name);
        let key = self.key(kind, name)?;
        let m = self
            .block(self.store.head(&key))
            .map_err(|e| self.err(&what, e))?;
        Ok(m.size)
    }

    fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> BResult<WriteOutcome> {
        self.write_parts(kind, name, &[data])
    }

    fn write_parts(&self, kind: FileKind, name: &str, parts: &[&[u8]]) -> BResult<WriteOutcome> {
        let what = Self::what(kind, name);
        let key = self.key(kind, name)?;
        match self.block(self.store.head(&key)) {
            Ok(_) => return Ok(WriteOutcome::Existed),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.err(&what, e)),
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if let Some(l) = &self.upload_limit {
            l.wait_blocking(len);
        }
        if let Some(lock) = self.lock.filter(|_| lockable(kind)) {
            // one PUT with the lock headers (up to 5 GiB; packs are far smaller)
            let data = bytes::Bytes::from(parts.concat());
            let until = chrono::Utc::now() + chrono::Duration::seconds(lock.secs);
            let signer = self.signer()?;
            let created = self
                .block(signer.put_locked(key.as_ref(), data, lock, until, true))
                .map_err(|e| self.signed_err(&what, e))?;
            return Ok(if created {
                WriteOutcome::Created
            } else {
                WriteOutcome::Existed
            });
        }
        let r = if len > MULTIPART_ABOVE {
            self.block(async {
                let upload = self.store.put_multipart(&key).await?;
                let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
                for p in parts {
                    w.write(p);
                }
                w.finish().await
            })
        } else {
            let payload: PutPayload = parts.iter().map(|p| bytes::Bytes::copy_from_slice(p)).collect();
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match self.block(self.store.put_opts(&key, payload.clone(), opts)) {
                // a store without conditional PUTs: the HEAD above has checked already
                Err(object_store::Error::NotImplemented) => self.block(self.store.put(&key, payload)),
                r => r,
            }
        };
        match r {
            Ok(_) => Ok(WriteOutcome::Created),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(WriteOutcome::Existed),
            Err(e) => Err(self.err(&what, e)),
        }
    }

    fn replace(&self, kind: FileKind, name: &str, data: &[u8]) -> BResult<()> {
        // a PUT replaces an object in one step (on a versioned bucket, the damaged version
        // stays as a noncurrent one until the bucket's lifecycle removes it)
        let what = Self::what(kind, name);
        let key = self.key(kind, name)?;
        if let Some(l) = &self.upload_limit {
            l.wait_blocking(data.len());
        }
        if let Some(lock) = self.lock.filter(|_| lockable(kind)) {
            // the repaired version under a lock of its own, as a new pack would be
            let until = chrono::Utc::now() + chrono::Duration::seconds(lock.secs);
            let signer = self.signer()?;
            return self
                .block(signer.put_locked(
                    key.as_ref(),
                    bytes::Bytes::copy_from_slice(data),
                    lock,
                    until,
                    false,
                ))
                .map(|_| ())
                .map_err(|e| self.signed_err(&what, e));
        }
        self.block(self.store.put(&key, PutPayload::from(data.to_vec())))
            .map(|_| ())
            .map_err(|e| self.err(&what, e))
    }

    fn remove(&self, kind: FileKind, name: &str) -> BResult<()> {
        let what = Self::what(kind, name);
        let key = self.key(kind, name)?;
        // S3 deletes a missing key silently; the trait reports it. The HEAD also tells the
        // version and the lock.
        let Some(head) = self.head_object(kind, name)? else {
            return Err(BackendError::NotFound {
                location: self.location(),
                what,
            });
        };
        if let Some(until) = head.locked_until(chrono::Utc::now()) {
            if lockable(kind) {
                return Err(BackendError::Locked {
                    location: self.location(),
                    what,
                    until: rfc3339(until),
                });
            }
            // an index file, lease or mark locked by the bucket's default retention: hide it
            // behind a delete marker (the version goes when its lock ends, by a lifecycle rule)
            return self
                .block(self.store.delete(&key))
                .map_err(|e| self.err(&what, e));
        }
        match head.version {
            // a versioned bucket: a plain DELETE would only hide the object
            Some(v) => {
                let signer = self.signer()?;
                self.block(signer.delete_version(key.as_ref(), &v))
                    .map_err(|e| self.signed_err(&what, e))
            }
            None => self
                .block(self.store.delete(&key))
                .map_err(|e| self.err(&what, e)),
        }
    }

    fn retention_secs(&self) -> Option<i64> {
        self.lock.map(|l| l.secs)
    }

    fn extend_retention(&self, kind: FileKind, in_use: &dyn Fn(&str) -> bool) -> BResult<usize> {
        let Some(lock) = self.lock.filter(|_| lockable(kind)) else {
            return Ok(0);
        };
        let now = chrono::Utc::now();
        let half = lock.secs / 2;
        // An object's lock ends no sooner than its upload + the period: only objects older
        // than half a period can need more, and only those get a HEAD.
        let listed = self.list_stat(kind)?;
        let candidates: Vec<&String> = listed
            .iter()
            .filter(|(n, st)| st.modified + lock.secs - now.timestamp() < half && in_use(n))
            .map(|(n, _)| n)
            .collect();
        let signer = self.signer()?;
        let until = now + chrono::Duration::seconds(lock.secs);
        let results: Vec<BResult<bool>> = self.block(async {
            use futures::StreamExt;
            futures::stream::iter(candidates)
                .map(|name| async move {
                    let what = Self::what(kind, name);
                    let key = self.key(kind, name)?;
                    let head = signer
                        .head(key.as_ref())
                        .await
                        .map_err(|e| self.signed_err(&what, e))?;
                    let Some(head) = head else { return Ok(false) };
                    let left = head.retain_until.map_or(0, |u| u.timestamp() - now.timestamp());
                    if left >= half {
                        return Ok(false);
                    }
                    // a compliance lock stays one (S3 refuses to weaken it)
                    let mode = match head.mode.as_deref() {
                        Some("COMPLIANCE") => "COMPLIANCE",
                        _ => lock.mode.as_str(),
                    };
                    signer
                        .put_retention(key.as_ref(), mode, until)
                        .await
                        .map_err(|e| self.signed_err(&what, e))?;
                    Ok(true)
                })
                .buffer_unordered(16)
                .collect()
                .await
        });
        let mut n = 0;
        for r in results {
            n += usize::from(r?);
        }
        Ok(n)
    }

    fn latency_bound(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        let l = S3Location::parse("http://127.0.0.1:8333/bucket/some/prefix/").unwrap();
        assert_eq!(l.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("bucket", "some/prefix"));
        assert_eq!(l.display(), "s3:http://127.0.0.1:8333/bucket/some/prefix");
        let l = S3Location::parse("mybucket").unwrap();
        assert_eq!(
            (l.endpoint, l.bucket.as_str(), l.prefix.as_str()),
            (None, "mybucket", "")
        );
        assert!(S3Location::parse("https://host").is_err());
        assert!(S3Location::parse("https:///bucket").is_err());
        assert!(S3Location::parse("https://h/b/../x").is_err());
    }
}
