//! Leases: how running backups and prunes announce themselves without a lock.
//!
//! A lease is a small file `locks/<session><seq>` (hex) holding the session, purpose, start
//! and last refresh time. A background thread refreshes it every [`REFRESH`] by writing the
//! next sequence number and removing the previous file. A lease is *live* while its newest
//! file was refreshed less than [`TTL`] ago; a crashed or killed client's lease simply stops
//! being refreshed and stops counting after TTL: nothing ever has to be unlocked by hand.
//!
//! Leases never block a backup. Prune uses them only to *defer* deleting data (docs/FORMAT.md,
//! "Prune"). A backup whose lease was not refreshed for longer than TTL (process suspended,
//! storage unreachable) refuses to write its snapshot, because a prune may have deleted data
//! the backup relied on in the meantime.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, FileKind};
use crate::crypto::random_bytes;
use crate::error::{Error, Result};

/// How often a lease is refreshed.
pub const REFRESH: Duration = Duration::from_secs(60);
/// How long after its last refresh a lease stops counting.
pub const TTL: i64 = 15 * 60;

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The content of a lease file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseInfo {
    pub session: String,
    pub purpose: String,
    pub started: i64,
    pub refreshed: i64,
}

impl LeaseInfo {
    pub fn is_live(&self, at: i64) -> bool {
        self.refreshed > at - TTL
    }
}

fn file_name(session: &str, seq: u64) -> String {
    format!("{session}{seq:016x}")
}

/// Every file of `kind` with its content, as one consistent listing: files in these namespaces
/// are replaced by writing the new one and then removing the old one, so if a listed file
/// vanished before it was read, list again — a replaced file is never missed.
pub(crate) fn read_all_consistent(backend: &dyn Backend, kind: FileKind) -> Result<Vec<(String, Vec<u8>)>> {
    for _ in 0..10 {
        let mut files = Vec::new();
        let mut vanished = false;
        for f in backend.list(kind)? {
            match backend.read(kind, &f.name) {
                Ok(b) => files.push((f.name, b)),
                Err(e) if e.is_not_found() => vanished = true,
                Err(e) => return Err(e.into()),
            }
        }
        if !vanished {
            return Ok(files);
        }
    }
    Err(Error::Invalid(format!(
        "{} keep changing while being listed; try again",
        kind.dir()
    )))
}

/// All leases (newest file per session), live or not. A listing error is an error.
pub fn list_leases(backend: &dyn Backend) -> Result<Vec<LeaseInfo>> {
    let mut by_session: BTreeMap<String, LeaseInfo> = BTreeMap::new();
    // A refresh writes the next file and then removes the previous one, so a file can vanish
    // between listing and reading; list again until a pass sees every file it listed, so a
    // live lease is never missed in the middle of a refresh.
    let files = read_all_consistent(backend, FileKind::Lock)?;
    for (name, bytes) in files {
        // An unreadable lease counts as live "now": prune must not ignore what it cannot read.
        let info: LeaseInfo = serde_json::from_slice(&bytes).unwrap_or(LeaseInfo {
            session: name.clone(),
            purpose: "unknown".into(),
            started: 0,
            refreshed: now(),
        });
        let e = by_session
            .entry(info.session.clone())
            .or_insert_with(|| info.clone());
        if info.refreshed > e.refreshed {
            *e = info;
        }
    }
    Ok(by_session.into_values().collect())
}

/// Live leases only.
pub fn live_leases(backend: &dyn Backend) -> Result<Vec<LeaseInfo>> {
    let t = now();
    Ok(list_leases(backend)?
        .into_iter()
        .filter(|l| l.is_live(t))
        .collect())
}

/// Every lease this process holds, so that a command ended by a signal (which exits without
/// running destructors) can still remove them: see [`release_held`].
static HELD: Mutex<Vec<std::sync::Weak<Shared>>> = Mutex::new(Vec::new());

/// Set by [`release_held`]: from then on no lease counts as held and none is taken (a run
/// still finishing while the process exits must not commit without one).
static RELEASED: AtomicBool = AtomicBool::new(false);

/// Remove the files of every lease this process holds and stop refreshing them. For a command
/// about to exit on SIGINT/SIGTERM: without it, its leases would stay live for up to [`TTL`],
/// and a prune started meanwhile (the next run of an agent that was restarted, an operator
/// trying again) would be refused or defer its work for no reason. The process must exit
/// right after: what it was doing is no longer announced.
pub fn release_held() {
    RELEASED.store(true, Ordering::SeqCst);
    let held: Vec<Arc<Shared>> = HELD
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(|w| w.upgrade())
        .collect();
    for sh in held {
        // under the info lock: a refresh in progress finishes first, and none writes after
        let mut g = sh.info.lock().unwrap_or_else(|e| e.into_inner());
        if !g.2 {
            g.2 = true;
            let _ = sh.backend.remove(FileKind::Lock, &file_name(&g.0.session, g.1));
        }
    }
}

struct Shared {
    backend: Arc<dyn Backend>,
    /// The lease, the sequence number of its current file, and whether that file was
    /// removed already (by [`release_held`]).
    info: Mutex<(LeaseInfo, u64, bool)>,
    /// Time of the last successful refresh.
    last_ok: AtomicI64,
    /// Set once a refresh was missed for longer than TTL.
    lost: AtomicBool,
    stop: Mutex<bool>,
    wake: std::sync::Condvar,
}

impl Shared {
    fn refresh(&self) {
        let mut g = self.info.lock().unwrap_or_else(|e| e.into_inner());
        if g.2 {
            return;
        }
        let t = now();
        if t - self.last_ok.load(Ordering::SeqCst) >= TTL {
            self.lost.store(true, Ordering::SeqCst);
        }
        let (info, seq, _) = &mut *g;
        let old = file_name(&info.session, *seq);
        info.refreshed = t;
        let next = *seq + 1;
        let Ok(bytes) = serde_json::to_vec(info) else {
            return;
        };
        if self
            .backend
            .write(FileKind::Lock, &file_name(&info.session, next), &bytes)
            .is_ok()
        {
            *seq = next;
            self.last_ok.store(t, Ordering::SeqCst);
            let _ = self.backend.remove(FileKind::Lock, &old);
        }
    }
}

/// A held lease; released (its file removed) on drop.
pub struct Lease {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.shared.info.lock().unwrap_or_else(|e| e.into_inner());
        write!(f, "Lease({} {})", g.0.purpose, g.0.session)
    }
}

impl Lease {
    /// Write a lease and start refreshing it.
    pub fn acquire(backend: Arc<dyn Backend>, purpose: &str) -> Result<Lease> {
        if RELEASED.load(Ordering::SeqCst) {
            return Err(Error::Invalid("the command is stopping: no new lease".into()));
        }
        let mut s = [0u8; 16];
        random_bytes(&mut s);
        let t = now();
        let info = LeaseInfo {
            session: hex::encode(s),
            purpose: purpose.into(),
            started: t,
            refreshed: t,
        };
        let bytes = serde_json::to_vec(&info).map_err(|e| Error::Invalid(e.to_string()))?;
        backend.write(FileKind::Lock, &file_name(&info.session, 0), &bytes)?;
        let shared = Arc::new(Shared {
            backend,
            info: Mutex::new((info, 0, false)),
            last_ok: AtomicI64::new(t),
            lost: AtomicBool::new(false),
            stop: Mutex::new(false),
            wake: std::sync::Condvar::new(),
        });
        {
            let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
            held.retain(|w| w.strong_count() > 0);
            held.push(Arc::downgrade(&shared));
        }
        // released between the write and the registration above: this one goes too
        if RELEASED.load(Ordering::SeqCst) {
            let _ = shared.backend.remove(
                FileKind::Lock,
                &file_name(
                    &shared.info.lock().unwrap_or_else(|e| e.into_inner()).0.session,
                    0,
                ),
            );
            return Err(Error::Invalid("the command is stopping: no new lease".into()));
        }
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("coffer-lease".into())
            .spawn(move || loop {
                let stop = sh.stop.lock().unwrap_or_else(|e| e.into_inner());
                let (stop, _) = sh
                    .wake
                    .wait_timeout_while(stop, REFRESH, |s| !*s)
                    .unwrap_or_else(|e| e.into_inner());
                if *stop {
                    return;
                }
                drop(stop);
                sh.refresh();
            })
            .map_err(|e| Error::io("lease thread", e))?;
        Ok(Lease {
            shared,
            thread: Some(thread),
        })
    }

    pub fn info(&self) -> LeaseInfo {
        self.shared
            .info
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Fails if the lease was not held continuously (a refresh gap longer than TTL).
    pub fn ensure_held(&self) -> Result<()> {
        if self.shared.lost.load(Ordering::SeqCst)
            || RELEASED.load(Ordering::SeqCst)
            || now() - self.shared.last_ok.load(Ordering::SeqCst) >= TTL
        {
            return Err(Error::Invalid(
                "this run's lease lapsed (suspended, or storage unreachable for over 15 minutes); \
                 a prune may have removed data it relies on, so no snapshot is written: run it again"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        *self.shared.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut g = self.shared.info.lock().unwrap_or_else(|e| e.into_inner());
        if !g.2 {
            g.2 = true;
            let _ = self
                .shared
                .backend
                .remove(FileKind::Lock, &file_name(&g.0.session, g.1));
        }
    }
}
