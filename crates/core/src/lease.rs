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

/// A file as read by [`read_all_consistent`]: name, content, the storage's time of it.
pub(crate) type ReadFile = (String, Vec<u8>, Option<i64>);

/// Every file of `kind` with its content and its time by the storage's clock, as one
/// consistent listing: files in these namespaces are replaced by writing the new one and then
/// removing the old one, so if a listed file vanished before it was read, list again — a
/// replaced file is never missed.
pub(crate) fn read_all_consistent(backend: &dyn Backend, kind: FileKind) -> Result<Vec<ReadFile>> {
    for _ in 0..10 {
        let mut files = Vec::new();
        let mut vanished = false;
        for f in backend.list(kind)? {
            match backend.read(kind, &f.name) {
                Ok(b) => files.push((f.name, b, f.modified)),
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

/// A lease as listed: what its newest file says, and when the storage says that file was
/// written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedLease {
    pub info: LeaseInfo,
    /// The storage's time of the newest file ([`crate::FileInfo::modified`]).
    pub written: Option<i64>,
}

/// The clock leases and marks are aged by.
///
/// Clients' clocks differ; a lease judged by the time its writer put in it would make a client
/// whose clock is behind by more than [`TTL`] look dead while it backs up, and a prune would
/// delete data its snapshot is about to use. So where the backend tells file times, ages are
/// read off the **storage's** clock: a lease's age is the time between its newest file and a
/// file this prune has just written, both stamped by the storage. Only where a backend cannot
/// tell file times are writers' clocks compared with this machine's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// The storage's time of a file written just now.
    Storage(i64),
    /// This machine's time (the backend tells no file times).
    Local(i64),
}

impl Clock {
    /// Seconds since `at` (the writer's claim under [`Clock::Local`], the storage's stamp
    /// under [`Clock::Storage`]): the caller passes the time that goes with the clock.
    pub fn age(&self, stored: Option<i64>, claimed: i64) -> i64 {
        match (*self, stored) {
            (Clock::Storage(now), Some(t)) => now - t,
            (Clock::Storage(_), None) | (Clock::Local(_), _) => self.local_now() - claimed,
        }
    }

    fn local_now(&self) -> i64 {
        match *self {
            Clock::Local(t) => t,
            Clock::Storage(_) => now(),
        }
    }

    /// Whether `l` is live by this clock.
    pub fn is_live(&self, l: &ListedLease) -> bool {
        self.age(l.written, l.info.refreshed) < TTL
    }
}

/// All leases (newest file per session), live or not. A listing error is an error.
pub fn list_leases(backend: &dyn Backend) -> Result<Vec<ListedLease>> {
    // session → (file name, lease)
    let mut by_session: BTreeMap<String, (String, ListedLease)> = BTreeMap::new();
    // A refresh writes the next file and then removes the previous one, so a file can vanish
    // between listing and reading; list again until a pass sees every file it listed, so a
    // live lease is never missed in the middle of a refresh.
    let files = read_all_consistent(backend, FileKind::Lock)?;
    for (name, bytes, written) in files {
        // An unreadable lease counts as refreshed "now" by this machine's clock (prune must
        // not ignore what it cannot read); by the storage's clock its file's time tells.
        let info: LeaseInfo = serde_json::from_slice(&bytes).unwrap_or(LeaseInfo {
            session: name.clone(),
            purpose: "unknown".into(),
            started: 0,
            refreshed: now(),
        });
        let listed = ListedLease { info, written };
        let e = by_session
            .entry(listed.info.session.clone())
            .or_insert_with(|| (name.clone(), listed.clone()));
        // the newest file of a session: its sequence number ends the name, fixed width
        if name > e.0 {
            *e = (name, listed);
        }
    }
    Ok(by_session.into_values().map(|(_, l)| l).collect())
}

/// The live leases, and the clock they were judged by. With `ours` (the caller's own lease),
/// it is refreshed first and its new file's time is the storage's "now" ([`Clock`]).
pub fn live_leases(backend: &dyn Backend, ours: Option<&Lease>) -> Result<(Vec<ListedLease>, Clock)> {
    let mine = ours.map(|l| {
        l.shared.refresh();
        l.info().session
    });
    let listed = list_leases(backend)?;
    let clock = mine
        .and_then(|s| listed.iter().find(|l| l.info.session == s))
        .and_then(|l| l.written)
        .map_or_else(|| Clock::Local(now()), Clock::Storage);
    Ok((listed.into_iter().filter(|l| clock.is_live(l)).collect(), clock))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(written: Option<i64>, refreshed: i64) -> ListedLease {
        ListedLease {
            info: LeaseInfo {
                session: "s".into(),
                purpose: "backup".into(),
                started: refreshed,
                refreshed,
            },
            written,
        }
    }

    /// By the storage's clock the writer's claim does not count: a client 20 minutes behind
    /// (its `refreshed` far in the past) is live while its file is fresh, and one 20 minutes
    /// ahead is dead once its file is older than TTL.
    #[test]
    fn the_storage_clock_ignores_what_writers_claim() {
        let c = Clock::Storage(100_000);
        assert!(c.is_live(&listed(Some(100_000 - TTL + 1), 100_000 - 1200)));
        assert!(!c.is_live(&listed(Some(100_000 - TTL), 100_000 + 1200)));
        assert_eq!(c.age(Some(99_990), 0), 10);
    }

    /// Without file times the writer's claim is compared with this machine's clock.
    #[test]
    fn without_file_times_the_claim_counts() {
        let c = Clock::Local(100_000);
        assert!(c.is_live(&listed(None, 100_000 - TTL + 1)));
        assert!(!c.is_live(&listed(None, 100_000 - TTL)));
        assert!(!c.is_live(&listed(Some(100_000), 100_000 - TTL)));
    }
}
