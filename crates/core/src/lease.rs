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

use crate::backend::{Backend, FileKind, WriteOutcome};
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
    /// The machine that holds it (its kernel's boot and PID namespace, hashed) and the
    /// process: a prune on that same machine can tell that the process is gone (killed) and
    /// need not wait out the TTL. Absent in leases written before 2026-12-07.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl LeaseInfo {
    /// Held by a process of this very machine (same boot, same PID namespace) that no
    /// longer exists. A reused process id only makes a dead lease look live.
    pub fn holder_gone(&self) -> bool {
        match (&self.machine, self.pid, this_machine()) {
            (Some(m), Some(pid), Some(here)) if *m == here => i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
                .is_some_and(|p| rustix::process::test_kill_process(p) == Err(rustix::io::Errno::SRCH)),
            _ => false,
        }
    }
}

/// This machine as leases name it: a hash of the kernel's boot id and this process's PID
/// namespace (process ids mean the same process only within both). `None` where either is
/// unknown: then no lease is ever judged gone by its process.
fn this_machine() -> Option<String> {
    static MACHINE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    MACHINE
        .get_or_init(|| {
            let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
            let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
            let mut h = blake3::Hasher::new();
            h.update(boot.trim().as_bytes());
            h.update(b"\0");
            h.update(ns.as_os_str().as_encoded_bytes());
            Some(h.finalize().to_hex()[..32].to_string())
        })
        .clone()
}

fn file_name(session: &str, seq: u64) -> String {
    format!("{session}{seq:016x}")
}

/// The session a lease file's name gives: 32 lowercase hex digits of session and 16 of
/// sequence number, nothing else.
fn session_of(name: &str) -> Option<&str> {
    (name.len() == 48
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| &name[..32])
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

/// A lease as listed: one session, all its files taken together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedLease {
    /// What its newest readable file says. `purpose` is "unknown" when no file of it reads
    /// as a lease of that session, "mixed" when its files disagree; `machine` and `pid` are
    /// kept only when every readable file agrees on them.
    pub info: LeaseInfo,
    /// The newest storage time of any of its files ([`crate::FileInfo::modified`]).
    pub written: Option<i64>,
    /// The newest `refreshed` any of its files claims (`None`: none reads).
    pub claimed: Option<i64>,
    /// Its files' names.
    pub files: Vec<String>,
}

/// The clocks leases and marks are aged by.
///
/// Clients' clocks differ: judged by the time its writer put in it, a lease written by a
/// client whose clock is behind by more than [`TTL`] looks dead while it backs up, and a
/// prune would delete data its snapshot is about to use. So where the backend tells file
/// times, ages are also read off the **storage's** clock: the time between a lease's newest
/// file and a file this prune has just written, both stamped by the storage. A lease is dead
/// only when it is dead by **both** clocks (the storage's, and the writer's claim against this
/// machine's clock): a wrong clock anywhere can only make prune wait longer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// The storage's time of a file written just now (`None`: the backend tells no file
    /// times).
    pub storage_now: Option<i64>,
    /// This machine's time.
    pub local_now: i64,
}

impl Clock {
    /// The younger of the two ages of something the storage stamped `stored` and its writer
    /// dated `claimed`; 0 when neither is known (as if written just now). A claim more than
    /// [`TTL`] in the future, next to a stamp, is ignored: a crashed client whose clock was a
    /// year ahead must not hold prunes back for a year.
    pub fn age(&self, stored: Option<i64>, claimed: Option<i64>) -> i64 {
        let by_storage = self.storage_now.zip(stored).map(|(n, t)| n - t);
        let by_claim = claimed
            .map(|c| self.local_now - c)
            .filter(|a| by_storage.is_none() || *a > -TTL);
        match (by_storage, by_claim) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => 0,
        }
    }

    /// Whether `l` is live: younger than [`TTL`] by either clock, and not held by a process
    /// of this machine that is gone (and that was not heard from for [`GONE_AFTER`]: what
    /// a killed process had in flight has landed by then).
    pub fn is_live(&self, l: &ListedLease) -> bool {
        let age = self.age(l.written, l.claimed);
        age < TTL && !(age >= GONE_AFTER && l.info.holder_gone())
    }
}

/// How long a lease whose holder on this machine is gone still counts (requests it sent
/// before it was killed may still land).
pub const GONE_AFTER: i64 = 10;

/// All leases (one per session), live or not. A listing error is an error.
///
/// A session's files are grouped by the session their *name* gives, and the session counts
/// as written when its newest file was: another writer's file, forged or damaged, can make a
/// lease look younger (prune waits), never older, never another purpose than "prune" when
/// its own files say otherwise, never held by a gone process unless all its files say so. A
/// file whose name is not a lease file's is a lease of its own, purpose "unknown", aged by
/// its stamp. A file that vanished between listing and reading was replaced by a refresh: its
/// session counts as written when the listing says.
pub fn list_leases(backend: &dyn Backend) -> Result<Vec<ListedLease>> {
    // session → (name of the newest readable file, lease)
    let mut by_session: BTreeMap<String, (String, ListedLease)> = BTreeMap::new();
    for f in backend.list(FileKind::Lock)? {
        let name = f.name;
        let session = session_of(&name).unwrap_or(&name).to_string();
        let read: Option<LeaseInfo> = match backend.read(FileKind::Lock, &name) {
            Ok(bytes) => serde_json::from_slice::<LeaseInfo>(&bytes)
                .ok()
                .filter(|i| i.session == session),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        let e = by_session.entry(session.clone()).or_insert_with(|| {
            (
                String::new(),
                ListedLease {
                    info: LeaseInfo {
                        session,
                        purpose: "unknown".into(),
                        started: 0,
                        refreshed: 0,
                        machine: None,
                        pid: None,
                    },
                    written: None,
                    claimed: None,
                    files: Vec::new(),
                },
            )
        });
        e.1.written = e.1.written.max(f.modified);
        e.1.files.push(name.clone());
        let Some(info) = read else { continue };
        let first = e.1.claimed.is_none();
        e.1.claimed = e.1.claimed.max(Some(info.refreshed));
        let mut merged = if name > e.0 {
            info.clone()
        } else {
            e.1.info.clone()
        };
        if !first {
            if info.purpose != e.1.info.purpose {
                merged.purpose = "mixed".into();
            }
            if (info.machine.as_ref(), info.pid) != (e.1.info.machine.as_ref(), e.1.info.pid) {
                merged.machine = None;
                merged.pid = None;
            }
        }
        if name > e.0 {
            e.0 = name;
        }
        e.1.info = merged;
    }
    Ok(by_session.into_values().map(|(_, l)| l).collect())
}

/// Every lease, and the clock to judge them by. With `ours` (the caller's own lease), it is
/// refreshed first (that must succeed) and the storage's stamp of its session's newest file —
/// the one just written — is the storage's "now" ([`Clock`]); where the backend stamps files
/// but that one is not listed with a stamp, this fails rather than judge by claims alone.
pub fn all_leases(backend: &dyn Backend, ours: Option<&Lease>) -> Result<(Vec<ListedLease>, Clock)> {
    let mine = match ours {
        Some(l) => {
            let mut r = l.shared.refresh();
            for _ in 0..2 {
                if r.is_ok() {
                    break;
                }
                r = l.shared.refresh();
            }
            r.map_err(Error::Invalid)?;
            Some(l.info().session)
        }
        None => None,
    };
    let listed = list_leases(backend)?;
    let storage_now = mine
        .as_ref()
        .and_then(|s| listed.iter().find(|l| &l.info.session == s))
        .and_then(|l| l.written);
    if mine.is_some() && storage_now.is_none() && listed.iter().any(|l| l.written.is_some()) {
        return Err(Error::Invalid(
            "the storage did not list this run's own lease file with a time; try again".into(),
        ));
    }
    let clock = Clock {
        storage_now,
        local_now: now(),
    };
    Ok((listed, clock))
}

/// The live leases, and the clock they were judged by ([`all_leases`]).
pub fn live_leases(backend: &dyn Backend, ours: Option<&Lease>) -> Result<(Vec<ListedLease>, Clock)> {
    let (listed, clock) = all_leases(backend, ours)?;
    Ok((listed.into_iter().filter(|l| clock.is_live(l)).collect(), clock))
}

/// Remove the files of leases dead by both clocks for over a day (crashed clients'; a
/// lease is never needed again once dead). Returns how many files went.
pub fn remove_stale(backend: &dyn Backend, ours: Option<&Lease>) -> Result<usize> {
    let (listed, clock) = all_leases(backend, ours)?;
    let mut n = 0;
    for l in listed {
        if clock.age(l.written, l.claimed) >= 24 * 3600 {
            for f in &l.files {
                match backend.remove(FileKind::Lock, f) {
                    Ok(()) => n += 1,
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(n)
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

const NOT_LOST: u8 = 0;
/// No refresh succeeded for [`TTL`] by this machine's clock.
const LOST_LOCAL: u8 = 1;
/// Two successive refreshes' files were stamped [`TTL`] less [`REFRESH`] apart or more.
const LOST_STORAGE: u8 = 2;

struct Shared {
    backend: Arc<dyn Backend>,
    /// The lease, the sequence number of its current file, and whether that file was
    /// removed already (by [`release_held`]).
    info: Mutex<(LeaseInfo, u64, bool)>,
    /// Time of the last successful refresh.
    last_ok: AtomicI64,
    /// Set once a refresh was missed for longer than TTL, by this machine's clock or by the
    /// storage's stamps.
    lost: std::sync::atomic::AtomicU8,
    /// The storage's stamp of the last refresh's file (`i64::MIN`: not known).
    last_stamp: AtomicI64,
    stop: Mutex<bool>,
    wake: std::sync::Condvar,
}

impl Shared {
    /// The storage's stamp of one of this lease's files (`None`: not listed, or no times).
    fn stamp_of(&self, name: &str) -> Result<Option<i64>> {
        Ok(self
            .backend
            .list(FileKind::Lock)?
            .into_iter()
            .find(|f| f.name == name)
            .and_then(|f| f.modified))
    }

    /// Write the lease's next file and remove the previous one. `Ok`: the name of the file
    /// written now. Only a file this call created counts as a refresh: a name found existing
    /// (an earlier attempt that landed although it reported failure) is stamped with that
    /// attempt's time, so it is skipped and the next call writes the one after.
    fn refresh(&self) -> std::result::Result<String, String> {
        let mut g = self.info.lock().unwrap_or_else(|e| e.into_inner());
        if g.2 {
            return Err("the command is stopping: its lease was released".into());
        }
        let t = now();
        if t - self.last_ok.load(Ordering::SeqCst) >= TTL {
            self.lost.store(LOST_LOCAL, Ordering::SeqCst);
        }
        let (info, seq, _) = &mut *g;
        let old = file_name(&info.session, *seq);
        info.refreshed = t;
        let next = *seq + 1;
        let name = file_name(&info.session, next);
        let bytes = serde_json::to_vec(info).map_err(|e| e.to_string())?;
        match self.backend.write(FileKind::Lock, &name, &bytes) {
            Ok(WriteOutcome::Created) => {
                *seq = next;
                self.last_ok.store(t, Ordering::SeqCst);
                let _ = self.backend.remove(FileKind::Lock, &old);
                // by the storage's stamps too: a process suspended with its clock standing
                // still (a paused VM) misses refreshes that only the storage saw go by
                if let Ok(Some(stamp)) = self.stamp_of(&name) {
                    let last = self.last_stamp.swap(stamp, Ordering::SeqCst);
                    if last != i64::MIN && stamp - last >= TTL - REFRESH.as_secs() as i64 {
                        self.lost.store(LOST_STORAGE, Ordering::SeqCst);
                    }
                }
                Ok(name)
            }
            Ok(WriteOutcome::Existed) => {
                *seq = next;
                let _ = self.backend.remove(FileKind::Lock, &old);
                Err(format!(
                    "lease file {name} existed already; refreshed on the next try"
                ))
            }
            Err(e) => Err(format!("the lease could not be refreshed: {e}")),
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
            machine: this_machine(),
            pid: Some(std::process::id()),
        };
        let bytes = serde_json::to_vec(&info).map_err(|e| Error::Invalid(e.to_string()))?;
        backend.write(FileKind::Lock, &file_name(&info.session, 0), &bytes)?;
        let shared = Arc::new(Shared {
            backend,
            info: Mutex::new((info, 0, false)),
            last_ok: AtomicI64::new(t),
            lost: std::sync::atomic::AtomicU8::new(NOT_LOST),
            last_stamp: AtomicI64::new(i64::MIN),
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
        if let Ok(Some(stamp)) = shared.stamp_of(&file_name(
            &shared.info.lock().unwrap_or_else(|e| e.into_inner()).0.session,
            0,
        )) {
            shared.last_stamp.store(stamp, Ordering::SeqCst);
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
                // a failed refresh shows in `ensure_held`: no successful one for too long
                let _ = sh.refresh();
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

    /// Fails if the lease was not held continuously: by this machine's clock, no successful
    /// refresh for [`TTL`]; by the storage's stamps, two successive refreshes' files [`TTL`]
    /// less [`REFRESH`] apart or more — what a prune saw, whatever this machine's clock did
    /// meanwhile (a suspended VM whose clock stood still, a clock stepped back) — or the
    /// lease's file gone from storage. Writes a refresh first, which must succeed.
    pub fn ensure_held(&self) -> Result<()> {
        let lapsed = |why: &str| {
            Error::Invalid(format!(
                "this run's lease lapsed ({why}); a prune may have removed data it relies on, \
                 so no snapshot is written: run it again"
            ))
        };
        let session = self.info().session;
        // (any file of the session: the background thread may be replacing the current one)
        let present = self
            .shared
            .backend
            .list(FileKind::Lock)?
            .iter()
            .any(|f| session_of(&f.name) == Some(session.as_str()));
        // (a name found existing is skipped: try the next ones)
        let mut refreshed = self.shared.refresh();
        for _ in 0..2 {
            if refreshed.is_ok() {
                break;
            }
            refreshed = self.shared.refresh();
        }
        refreshed.map_err(|e| lapsed(&e))?;
        if !present && self.shared.last_stamp.load(Ordering::SeqCst) != i64::MIN {
            return Err(lapsed("its file was removed from storage"));
        }
        match self.shared.lost.load(Ordering::SeqCst) {
            LOST_LOCAL => {
                return Err(lapsed(
                    "suspended, or storage unreachable, for over 15 minutes by this machine's clock",
                ))
            }
            LOST_STORAGE => {
                return Err(lapsed(
                    "not refreshed for over 14 minutes by the storage's clock: suspended, \
                     or storage unreachable",
                ))
            }
            _ if RELEASED.load(Ordering::SeqCst) => return Err(lapsed("the command is stopping")),
            _ => {}
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

    fn listed(written: Option<i64>, claimed: Option<i64>) -> ListedLease {
        ListedLease {
            info: LeaseInfo {
                session: "s".into(),
                purpose: "backup".into(),
                started: 0,
                refreshed: claimed.unwrap_or(0),
                machine: None,
                pid: None,
            },
            written,
            claimed,
            files: Vec::new(),
        }
    }

    const NOW: i64 = 100_000;

    /// Dead only by both clocks: a client 20 minutes behind (its claim far in the past) is
    /// live while the storage stamped its file just now; a crashed client 20 minutes ahead
    /// stays live until its claim, too, is TTL old (prune waits, never deletes early).
    #[test]
    fn a_lease_is_dead_only_by_both_clocks() {
        let c = Clock {
            storage_now: Some(NOW),
            local_now: NOW,
        };
        assert!(c.is_live(&listed(Some(NOW - 10), Some(NOW - 1200))));
        assert!(c.is_live(&listed(Some(NOW - TTL - 60), Some(NOW + 600))));
        assert!(!c.is_live(&listed(Some(NOW - TTL), Some(NOW - TTL))));
        // no claim (unreadable): the storage's time alone
        assert!(!c.is_live(&listed(Some(NOW - TTL), None)));
        assert!(c.is_live(&listed(Some(NOW - TTL + 1), None)));
        // nothing known: live
        let local = Clock {
            storage_now: None,
            local_now: NOW,
        };
        assert!(local.is_live(&listed(None, None)));
        assert!(!local.is_live(&listed(None, Some(NOW - TTL))));
        assert_eq!(c.age(Some(NOW - 10), Some(NOW - 5)), 5);
        // a claim a year ahead is ignored next to a stamp, not without one
        assert!(!c.is_live(&listed(Some(NOW - TTL), Some(NOW + 365 * 86400))));
        assert!(local.is_live(&listed(None, Some(NOW + 365 * 86400))));
    }

    /// A session's files count together (the youngest wins) and by their names: a forged file
    /// with a higher sequence number and an old claim does not make a live lease look dead,
    /// a file whose content names another session counts for the session of its name, and a
    /// file whose name is no lease file's is a lease of its own.
    #[test]
    fn a_forged_lock_file_cannot_make_a_lease_look_older() {
        let b = crate::memory::MemoryBackend::new();
        let victim = "ab".repeat(16);
        let info = |session: &str, refreshed: i64| LeaseInfo {
            session: session.into(),
            purpose: "backup".into(),
            started: 0,
            refreshed,
            machine: None,
            pid: None,
        };
        let put = |name: &str, i: &LeaseInfo| {
            b.write(FileKind::Lock, name, &serde_json::to_vec(i).unwrap())
                .unwrap()
        };
        put(&file_name(&victim, 3), &info(&victim, NOW));
        put(&format!("{victim}{}", "f".repeat(16)), &info(&victim, NOW - 9999));
        put(&file_name(&"cd".repeat(16), 0), &info(&victim, NOW - 9999));
        put("garbage", &info(&victim, NOW));
        // a forged newest file of a prune's session saying "backup", with a dead holder
        let pruner = "ef".repeat(16);
        let mut p = info(&pruner, NOW);
        p.purpose = "prune".into();
        p.machine = Some("m".into());
        p.pid = Some(1);
        put(&file_name(&pruner, 1), &p);
        p.purpose = "backup".into();
        p.pid = Some(999_999);
        put(&file_name(&pruner, 9), &p);
        let leases = list_leases(&b).unwrap();
        let by = |s: &str| leases.iter().find(|l| l.info.session == s).unwrap().clone();
        assert_eq!(leases.len(), 4, "{leases:?}");
        assert_eq!(by(&pruner).info.purpose, "mixed");
        assert_eq!((by(&pruner).info.machine, by(&pruner).info.pid), (None, None));
        assert_eq!(by(&pruner).files.len(), 2);
        assert_eq!(by(&victim).claimed, Some(NOW));
        assert_eq!(by(&"cd".repeat(16)).info.purpose, "unknown");
        assert_eq!(by(&"cd".repeat(16)).claimed, None);
        assert_eq!(by("garbage").info.purpose, "unknown");
        let c = Clock {
            storage_now: None,
            local_now: NOW,
        };
        assert!(c.is_live(&by(&victim)));
    }

    /// A lease held by a process of this machine that is gone does not count; one of a
    /// running process, or of another machine, does.
    #[test]
    fn a_killed_holder_on_this_machine_is_seen_gone() {
        let here = this_machine().expect("/proc tells the boot id and the PID namespace");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let mut l = listed(Some(NOW - GONE_AFTER), Some(NOW - GONE_AFTER));
        l.info.machine = Some(here.clone());
        l.info.pid = Some(pid);
        assert!(l.info.holder_gone());
        let c = Clock {
            storage_now: Some(NOW),
            local_now: NOW,
        };
        assert!(!c.is_live(&l));
        // refreshed just now: what it sent may still land
        let mut young = l.clone();
        young.written = Some(NOW - 1);
        assert!(c.is_live(&young));
        l.info.pid = Some(std::process::id());
        assert!(!l.info.holder_gone());
        l.info.pid = Some(pid);
        l.info.machine = Some("another".into());
        assert!(!l.info.holder_gone());
    }
}
