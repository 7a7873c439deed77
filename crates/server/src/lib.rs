//! # coffer-server
//!
//! `coffer server` hosts many clients' repositories over HTTPS. It holds no key: it cannot
//! read what it stores, and needs none to keep it safe.
//!
//! - **Roles** ([`catalog::Role`]): an `append` token creates objects and reads; it can never
//!   delete, overwrite, truncate or rename anything (leases excepted, which hold no data).
//!   Every upload is checked: a content-addressed name must be the BLAKE3 hash of the bytes,
//!   the size must match `Content-Length`, and an existing name is never replaced.
//! - **Retention without the key** ([`retention`]): the server judges snapshots by the time it
//!   *received* them and frees packs that no kept snapshot's manifest names, through a trash.
//! - **Keyless verification** ([`verify`]): every stored object is re-hashed against its name.
//!
//! See docs/ARCHITECTURE.md ("Server") and docs/FORMAT.md ("Server-side retention").

/// Log an internal error's detail under a fresh reference and return the answer a client
/// or browser gets: the reference only (paths and storage errors stay in the server's log).
pub(crate) fn internal_error(detail: &str) -> String {
    let mut id = [0u8; 4];
    let _ = getrandom::fill(&mut id);
    let id = hex::encode(id);
    tracing::error!("internal error {id}: {}", detail.escape_debug());
    format!("internal error (reference {id} in the server's log)")
}

/// Whether an I/O error says the storage is out of space (or over a disk quota).
pub(crate) fn is_full(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || [Errno::NOSPC, Errno::DQUOT]
        .map(|n| Some(n.raw_os_error()))
        .contains(&e.raw_os_error())
}

/// What a client is told when the server's storage is full (the detail goes to the log).
pub(crate) fn storage_full(detail: &str) -> String {
    tracing::error!("storage full: {}", detail.escape_debug());
    "the server's storage is full: nothing was stored (its operator must free space)".into()
}

pub mod catalog;
pub mod console;
pub mod hold;
pub mod http;
pub mod jobs;
pub mod live;
pub mod monitor;
pub mod notify;
pub mod records;
pub mod restores;
pub mod retention;
pub mod store;
pub mod store_s3;
pub mod tls;
pub mod verify;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use catalog::{Catalog, ClientInfo, Role, TrashEntry};
use coffer_core::FileKind;
use store::{Commit, LocalStore, Storage};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("server catalog: {0}")]
    Catalog(String),
    #[error("{0}")]
    Io(String),
    /// The storage is out of space (ENOSPC, EDQUOT): the detail, for the log.
    #[error("{0}")]
    Full(String),
    #[error("TLS: {0}")]
    Tls(String),
}

pub type Result<T, E = ServerError> = std::result::Result<T, E>;

/// Failed logins for one operator name within a minute before the name is refused unchecked.
pub const LOGIN_FAILURES_PER_MINUTE: u32 = 10;

/// The outcome of an operator login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Login {
    Ok,
    /// Unknown name or wrong password.
    Wrong,
    /// Too many failures for this name in the last minute: not checked.
    Throttled,
}

/// Where the server's "now" comes from. Tests inject a clock file (seconds since the epoch)
/// to simulate days passing; production uses the system clock.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    #[default]
    System,
    /// The first line of this file is the current time (seconds since the epoch).
    File(PathBuf),
}

impl Clock {
    pub fn now(&self) -> i64 {
        if let Clock::File(p) = self {
            if let Some(t) = fs::read_to_string(p)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
            {
                return t;
            }
        }
        chrono::Utc::now().timestamp()
    }
}

/// Settings of the background jobs and the trash.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Unreferenced packs younger than this are kept (a backup may still be writing its
    /// snapshot); seconds.
    pub pack_grace_secs: i64,
    /// How long trashed objects stay restorable; seconds.
    pub trash_secs: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            pack_grace_secs: 24 * 3600,
            trash_secs: 14 * 24 * 3600,
        }
    }
}

/// The server's state: data directory, storage, catalog, clock.
#[derive(Debug)]
pub struct Server {
    pub data: PathBuf,
    pub store: Box<dyn Storage>,
    pub catalog: Catalog,
    pub clock: Clock,
    pub settings: Settings,
    usage: Mutex<HashMap<String, u64>>,
    /// Failed operator logins per name: (failures, start of the current minute).
    login_failures: Mutex<HashMap<String, (u32, i64)>>,
    /// Monitoring rounds finished by this process (see [`monitor::round`]).
    pub monitor_rounds: std::sync::atomic::AtomicU64,
    /// Runs in progress, as their commands last said.
    pub live: live::LiveRuns,
}

/// BLAKE3 of a token, as stored in the catalog (tokens are 256 random bits, so a fast hash
/// is as good as a slow one).
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

impl Server {
    /// Open (creating on first use) a data directory. `storage` says where repositories
    /// are kept: `None` for the data directory itself (or what an earlier start chose), or
    /// `s3:https://HOST/BUCKET/PREFIX`. The choice is recorded in `DATA/storage` on first
    /// use and cannot change afterwards (the repositories would seem to vanish).
    pub fn open(data: &Path, storage: Option<&str>, clock: Clock, settings: Settings) -> Result<Server> {
        // Everything the server writes is its own: the catalog (token hashes, sessions, the
        // SMTP password), stored objects, the trash. Private from the first byte, whatever
        // the data directory's mode (it was 0644, guarded by the directory alone).
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        coffer_backends::create_dir_durable(data)
            .map_err(|e| ServerError::Io(format!("{}: cannot create: {e}", data.display())))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(data, fs::Permissions::from_mode(0o700));
        let store = open_storage(data, storage)?;
        let catalog = Catalog::open(&data.join("server.db"))?;
        Ok(Server {
            data: data.to_path_buf(),
            store,
            catalog,
            clock,
            settings,
            usage: Mutex::new(HashMap::new()),
            login_failures: Mutex::new(HashMap::new()),
            monitor_rounds: std::sync::atomic::AtomicU64::new(0),
            live: Default::default(),
        })
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Add a client (creating its repository if new) and return its token, which is shown
    /// only this once: the catalog keeps its hash.
    pub fn add_client(&self, name: &str, repo: &str, role: Role) -> Result<String> {
        if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control()) {
            return Err(ServerError::Invalid(format!(
                "client name {name:?}: 1-128 printable characters"
            )));
        }
        if !store::valid_repo_name(repo) {
            return Err(ServerError::Invalid(format!(
                "repository name {repo:?}: use 1-64 of a-z 0-9 . _ - (starting with a letter or digit)"
            )));
        }
        self.catalog.add_repo(repo, self.now())?;
        self.store.prepare_repo(repo, false)?;
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| ServerError::Io(format!("random token: {e}")))?;
        let token = format!(
            "cft_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        self.catalog
            .add_client(name, repo, role, &token_hash(&token), self.now())?;
        Ok(token)
    }

    /// Add a console operator and return the generated password (shown only this once).
    /// `client`: a login that sees that one client only (a hosting customer's).
    pub fn add_operator(&self, name: &str, client: Option<&str>) -> Result<String> {
        if let Some(c) = client {
            if self.catalog.client(c)?.is_none() {
                return Err(ServerError::NotFound(format!(
                    "no client {c:?} (`coffer server client list`)"
                )));
            }
        }
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_graphic())
            || name.contains(':')
        {
            return Err(ServerError::Invalid(format!(
                "operator name {name:?}: 1-64 printable characters, no spaces or colons"
            )));
        }
        let mut raw = [0u8; 24];
        getrandom::fill(&mut raw).map_err(|e| ServerError::Io(format!("random password: {e}")))?;
        let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        self.catalog
            .add_operator(name, &token_hash(&password), self.now(), client)?;
        Ok(password)
    }

    /// Check an operator's name and password (generated, 192 random bits: a fast hash is
    /// enough, as for tokens). Every failure is logged; after [`LOGIN_FAILURES_PER_MINUTE`]
    /// failures for one name within a minute, that name is refused without a check until the
    /// minute is over (a guesser gets nowhere, and the log says someone is trying).
    pub fn check_operator(&self, name: &str, password: &str) -> Result<Login> {
        let now = self.now();
        let mut failures = self.login_failures.lock().unwrap_or_else(|p| p.into_inner());
        let entry = failures.entry(name.to_string()).or_insert((0, now));
        if now - entry.1 >= 60 {
            *entry = (0, now);
        }
        if entry.0 >= LOGIN_FAILURES_PER_MINUTE {
            return Ok(Login::Throttled);
        }
        let ok = match self.catalog.operator_hash(name)? {
            // comparing hashes: timing reveals nothing an attacker can steer
            Some(h) => h == token_hash(password),
            None => false,
        };
        if ok {
            failures.remove(name);
            return Ok(Login::Ok);
        }
        entry.0 += 1;
        tracing::warn!(
            "login failed for operator {} ({} in this minute)",
            name.escape_debug(),
            entry.0
        );
        Ok(Login::Wrong)
    }

    pub fn authenticate(&self, token: &str) -> Result<Option<ClientInfo>> {
        self.catalog.client_by_token_hash(&token_hash(token))
    }

    /// Prepare every known repository for serving: directories exist, stale uploads gone.
    pub fn prepare(&self) -> Result<()> {
        for r in self.catalog.repos()? {
            self.store.prepare_repo(&r.name, true)?;
        }
        Ok(())
    }

    /// Bytes a repository holds (cached after the first count).
    pub fn usage(&self, repo: &str) -> Result<u64> {
        if let Some(u) = self.usage_map().get(repo) {
            return Ok(*u);
        }
        let u = self.store.usage(repo)?;
        self.usage_map().insert(repo.to_string(), u);
        Ok(u)
    }

    fn usage_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn usage_add(&self, repo: &str, delta: i64) {
        if let Some(u) = self.usage_map().get_mut(repo) {
            *u = u.saturating_add_signed(delta);
        }
    }

    /// Serialize snapshot commits and retention of one repository, across processes (the
    /// `coffer server retention` command may run beside the serving process).
    pub fn repo_lock(&self, repo: &str) -> Result<RepoLock> {
        let dir = self.data.join("locks");
        coffer_backends::create_dir_durable(&dir).map_err(|e| store::io_err(dir.display(), e))?;
        let p = dir.join(format!("{repo}.lock"));
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| store::io_err(p.display(), e))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| ServerError::Io(format!("{}: lock: {e}", p.display())))?;
        Ok(RepoLock { _file: f })
    }

    /// Put a finished, verified upload in place. A snapshot is accepted only with its
    /// manifest, and only if every pack the manifest names is stored (packs in the trash are
    /// taken back: a backup may have deduplicated against them while retention ran).
    pub fn commit(&self, repo: &str, kind: FileKind, name: &str, tmp: &Path, client: &str) -> Result<Commit> {
        let size = fs::metadata(tmp).map(|m| m.len()).unwrap_or(0);
        let outcome = if kind == FileKind::Snapshot {
            let _lock = self.repo_lock(repo)?;
            let Some(bytes) = self.store.read(repo, FileKind::Manifest, name)? else {
                return Err(ServerError::Conflict(format!(
                    "snapshot {name}: its manifest (manifests/{name}) must be uploaded first"
                )));
            };
            let m = coffer_core::format::Manifest::decode(&bytes, name)
                .map_err(|e| ServerError::Invalid(format!("manifests/{name}: {e}")))?;
            for p in &m.packs {
                let pn = p.to_hex();
                if self.store.stat(repo, FileKind::Pack, &pn)?.is_some() {
                    continue;
                }
                if self.store.take_from_trash(repo, FileKind::Pack, &pn)? {
                    self.catalog.remove_trash(repo, "data", &pn)?;
                    if self.store.take_from_trash(repo, FileKind::Parity, &pn)? {
                        self.catalog.remove_trash(repo, "parity", &pn)?;
                    }
                    tracing::info!("{repo}: pack {pn} taken back from the trash for snapshot {name}");
                    continue;
                }
                return Err(ServerError::Conflict(format!(
                    "snapshot {name} needs pack {pn}, which this server does not have (removed by retention?); run the backup again"
                )));
            }
            let c = self.store.commit(repo, kind, name, tmp)?;
            // Recorded after it is stored (a record says the server received it: a run report
            // naming it is believed), and also when it existed: a commit whose record failed
            // answers an error its client retries (500, even for a full catalog: a 507 is not
            // retried), and the retry finds the snapshot stored and records it. The record
            // keeps the first upload's time and client.
            if let Err(e) = self.catalog.record_snapshot(repo, name, self.now(), client) {
                return Err(ServerError::Io(format!(
                    "snapshot {name} stored but not recorded (the client's retry records it): {e}"
                )));
            }
            c
        } else {
            self.store.commit(repo, kind, name, tmp)?
        };
        if outcome == Commit::Created {
            self.usage_add(repo, size as i64);
        }
        Ok(outcome)
    }

    /// Remove an object: leases for good, anything else into the trash (a snapshot with its
    /// manifest). Returns false if it did not exist.
    pub fn remove(&self, repo: &str, kind: FileKind, name: &str, reason: &str) -> Result<bool> {
        if kind == FileKind::Lock {
            return self.store.remove(repo, kind, name);
        }
        let size = self.store.stat(repo, kind, name)?.map(|e| e.size).unwrap_or(0);
        if !self.trash(repo, kind, name, reason)? {
            return Ok(false);
        }
        self.usage_add(repo, -(size as i64));
        // a snapshot goes with its manifest, a pack with its parity
        let companion = match kind {
            FileKind::Snapshot => Some(FileKind::Manifest),
            FileKind::Pack => Some(FileKind::Parity),
            _ => None,
        };
        if let Some(c) = companion {
            let csize = self.store.stat(repo, c, name)?.map(|e| e.size).unwrap_or(0);
            if self.trash(repo, c, name, reason)? {
                self.usage_add(repo, -(csize as i64));
            }
        }
        Ok(true)
    }

    fn trash(&self, repo: &str, kind: FileKind, name: &str, reason: &str) -> Result<bool> {
        // the record first: a cut (or a full disk) between the two leaves a record of an object
        // not in the trash (purge and restore pass over it), never an object in the trash that
        // no record lists (it would never be purged, nor restored)
        if self.store.stat(repo, kind, name)?.is_none() {
            return Ok(false);
        }
        let label = store::kind_label(kind);
        self.catalog.add_trash(&TrashEntry {
            repo: repo.to_string(),
            kind: label.to_string(),
            name: name.to_string(),
            trashed: self.now(),
            reason: reason.to_string(),
        })?;
        // (a move that fails keeps its record: the object may have moved all the same, and a
        // record of an object still live is passed over by purge and by restore)
        self.store.move_to_trash(repo, kind, name)
    }

    /// Put trashed objects back: all of a repository's, or one object named `KIND/NAME` (a
    /// unique prefix of its name will do). Returns how many came back.
    pub fn restore_trash(&self, repo: &str, only: Option<(&str, &str)>) -> Result<usize> {
        // under the repository's lock (retention running beside could trash again what comes
        // back), and snapshots last: one is back only once everything it needs is
        let _lock = self.repo_lock(repo)?;
        let mut entries = self.catalog.trash(repo)?;
        entries.sort_by_key(|e| match e.kind.as_str() {
            "snapshots" => 2,
            "manifests" => 1,
            _ => 0,
        });
        let wanted = match only {
            None => None,
            Some((k, name)) => Some(self.wanted_from_trash(repo, &entries, k, name)?),
        };
        let mut n = 0;
        for e in entries {
            if wanted
                .as_ref()
                .is_some_and(|w| !w.contains(&(e.kind.clone(), e.name.clone())))
            {
                continue;
            }
            let Some(kind) = store::kind_from_label(&e.kind) else {
                continue;
            };
            if self.store.take_from_trash(repo, kind, &e.name)? {
                n += 1;
            }
            self.catalog.remove_trash(repo, &e.kind, &e.name)?;
        }
        self.usage_map().remove(repo);
        Ok(n)
    }

    /// What a restore of one trashed object brings back: the object, its companion (a pack's
    /// parity file, a snapshot's manifest) and, for a snapshot, what it needs that is in the
    /// trash too: the packs its manifest names with their parity, and every trashed index
    /// file (the server cannot read which of them list its blobs; clients pass over index
    /// entries of packs the server does not hold).
    fn wanted_from_trash(
        &self,
        repo: &str,
        entries: &[TrashEntry],
        kind: &str,
        name: &str,
    ) -> Result<HashSet<(String, String)>> {
        let not_there = || {
            ServerError::NotFound(format!(
                "{kind}/{name} is not in the trash of {repo:?} (coffer server trash list {repo})"
            ))
        };
        store::kind_from_label(kind).ok_or_else(not_there)?;
        let of_kind = entries.iter().filter(|e| e.kind == kind);
        let name = match of_kind.clone().find(|e| e.name == name) {
            Some(e) => e.name.clone(),
            None => {
                let mut m = of_kind.filter(|e| !name.is_empty() && e.name.starts_with(name));
                match (m.next(), m.next()) {
                    (Some(e), None) => e.name.clone(),
                    (None, _) => return Err(not_there()),
                    (Some(_), Some(_)) => {
                        return Err(ServerError::Invalid(format!(
                            "{kind}/{name}: more than one trashed object starts so; give more of its name"
                        )))
                    }
                }
            }
        };
        let companion = match kind {
            "data" => "parity",
            "snapshots" => "manifests",
            _ => "",
        };
        let mut wanted = HashSet::from([
            (kind.to_string(), name.clone()),
            (companion.to_string(), name.clone()),
        ]);
        if kind != "snapshots" {
            return Ok(wanted);
        }
        // the manifest as it was trashed with the snapshot (or, if only the snapshot went, the
        // live one): the packs it names. A manifest stored under the name since (a client
        // cannot upload one while the snapshot is in the trash) makes the take-back fail.
        let trashed_manifest = entries.iter().any(|e| e.kind == "manifests" && e.name == name);
        let bytes = if trashed_manifest {
            self.store.read_trashed(repo, FileKind::Manifest, &name)?
        } else {
            self.store.read(repo, FileKind::Manifest, &name)?
        };
        let manifest = bytes.and_then(|b| coffer_core::format::Manifest::decode(&b, &name).ok());
        let Some(manifest) = manifest else {
            return Err(ServerError::Invalid(format!(
                "snapshots/{name}: its manifest is missing or unreadable, so the server cannot \
                 tell which packs it needs; restore the whole trash instead (coffer server trash \
                 restore {repo})"
            )));
        };
        for p in &manifest.packs {
            wanted.insert(("data".into(), p.to_hex()));
            wanted.insert(("parity".into(), p.to_hex()));
        }
        for e in entries.iter().filter(|e| e.kind == "index") {
            wanted.insert(("index".into(), e.name.clone()));
        }
        Ok(wanted)
    }
}

/// The storage recorded in `DATA/storage` (a first start records the one asked for).
fn open_storage(data: &Path, asked: Option<&str>) -> Result<Box<dyn Storage>> {
    let record = data.join("storage");
    let recorded = match fs::read_to_string(&record) {
        Ok(s) => Some(s.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(ServerError::Io(format!("{}: {e}", record.display()))),
    };
    let asked = asked.map(|a| a.trim_end_matches('/').to_string());
    let chosen = match (recorded, asked) {
        (Some(r), Some(a)) if r != a => {
            return Err(ServerError::Invalid(format!(
                "{} keeps its repositories in {r}, not {a}: the storage of a data directory cannot change (use `coffer copy` to move repositories)",
                data.display()
            )))
        }
        (Some(r), _) => r,
        (None, a) => {
            // only a server that has no repositories yet may choose
            let a = a.unwrap_or_else(|| "local".into());
            let has_repos = fs::read_dir(data.join("repos")).is_ok_and(|mut d| d.next().is_some());
            if a != "local" && has_repos {
                return Err(ServerError::Invalid(format!(
                    "{} holds repositories on local disk already; storage {a} needs a new data directory",
                    data.display()
                )));
            }
            // durable before any repository is made there: a lost record after a power cut
            // would let the next start choose other storage
            let _ = fs::remove_file(data.join(".storage.tmp"));
            coffer_backends::replace_file(&data.join(".storage.tmp"), &record, format!("{a}\n").as_bytes())
                .map_err(|e| ServerError::Io(format!("{}: {e}", record.display())))?;
            a
        }
    };
    if chosen == "local" {
        return Ok(Box::new(LocalStore::new(data)));
    }
    match chosen.strip_prefix("s3:") {
        Some(rest) => Ok(Box::new(store_s3::S3Store::open(rest, &data.join("incoming"))?)),
        None => Err(ServerError::Invalid(format!(
            "storage {chosen:?}: use `local` or s3:https://HOST/BUCKET/PREFIX"
        ))),
    }
}

/// Held while a repository's snapshots are committed or judged.
pub struct RepoLock {
    _file: fs::File,
}
