//! Read-ahead for the backup walk. The walk reads one file at a time; from a cold page cache
//! every small file then waits for the disk in turn, with one request in flight and both
//! cores mostly idle (the benchmark's 3.5 GiB set with the cache dropped: 21 s against 12 s
//! warm, docs/PERFORMANCE.md "Read-ahead"). A thread of its own asks the kernel
//! (`posix_fadvise(WILLNEED)`) to read the start of the files the walk will read next, so the
//! disk gets many requests at once and the data is in the page cache when the walk gets
//! there. The files come from the walk, directory by directory, and the thread keeps at most
//! [`AHEAD_BYTES`] and [`AHEAD_FILES`] hinted ahead of it, so a slow walk (compression, a
//! slow repository) does not fill memory with pages it reaches only much later.
//!
//! Only what the walk would read anyway is hinted: regular files (by the walk-ahead's lstat or
//! the directory entry's type; an entry of unknown type is never opened here), not excluded,
//! in directories with nothing to compare with (a first backup, a new directory). The walk
//! hands them over in runs, a run ending at a subdirectory (which it reads first), so files
//! are numbered in the order they are read. A file is opened as the walk opens it (no symlink
//! followed, no access time) and also without blocking and never as a controlling terminal,
//! checked to be a regular file and closed at once. Like the walk's own open, it may find a
//! file replaced since the listing; a non-regular one is closed unread.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::num::NonZeroU64;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use rustix::fs::{Advice, FileType, Mode, OFlags};

/// Most bytes hinted ahead of the walk.
pub const AHEAD_BYTES: u64 = 64 << 20;
/// Most files hinted ahead of the walk.
pub const AHEAD_FILES: u64 = 4096;
/// Bytes hinted at the start of one file: the kernel's own read-ahead follows the walk
/// through the rest of a large file once it reads it in order.
const FILE_HEAD: u64 = 4 << 20;

/// Most directories queued for the thread: each holds an open descriptor, and a thread that
/// falls behind (a starved core, a tree of a million one-file directories) must not take the
/// walk's descriptors.
const QUEUED_DIRS: usize = 16;

/// The files of one directory the walk will read, each with its number in walk order.
struct Batch {
    dir: OwnedFd,
    files: Vec<(OsString, u64)>,
}

#[derive(Default)]
struct Shared {
    /// Every file numbered below this the walk has passed.
    walked: AtomicU64,
    /// The thread waits for the walk to move on.
    waiting: AtomicBool,
    /// Files hinted (for tests and the run's figures).
    hinted: AtomicU64,
    /// Files looked at, hinted or not (for tests).
    handled: AtomicU64,
}

/// The walk's side: hands over the files it will read and says how far it is.
pub(crate) struct ReadAhead {
    tx: Option<Sender<Batch>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    next: u64,
}

impl ReadAhead {
    /// Start the thread; `None` if it cannot be started (the walk then reads without it).
    pub(crate) fn start() -> Option<Self> {
        let (tx, rx) = crossbeam_channel::bounded::<Batch>(QUEUED_DIRS);
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("coffer-readahead".into())
            .spawn(move || hint_loop(&rx, &theirs))
            .ok()?;
        Some(ReadAhead {
            tx: Some(tx),
            shared,
            thread: Some(thread),
            next: 0,
        })
    }

    /// The walk will read `names` from directory `dir`, in this order and before any file
    /// handed over after them: returns each one's number, for [`ReadAhead::passed`] (none
    /// when the thread has no room: the walk never waits for it, and each queued directory
    /// holds an open descriptor).
    pub(crate) fn plan(&mut self, dir: BorrowedFd<'_>, names: Vec<OsString>) -> Vec<u64> {
        let Some(tx) = &self.tx else { return Vec::new() };
        if names.is_empty() || tx.is_full() {
            return Vec::new();
        }
        let Ok(dir) = dir.try_clone_to_owned() else {
            return Vec::new();
        };
        let first = self.next;
        let files: Vec<(OsString, u64)> = names.into_iter().zip(first..).collect();
        let n = files.len() as u64;
        if tx.try_send(Batch { dir, files }).is_err() {
            return Vec::new();
        }
        self.next += n;
        (first..self.next).collect()
    }

    /// The walk is past the file numbered `seq` (read or not).
    pub(crate) fn passed(&self, seq: u64) {
        // SeqCst here and in the thread's wait: each side stores, then loads what the other
        // stores, which only a total order makes sure one of them sees
        self.shared.walked.fetch_max(seq + 1, Ordering::SeqCst);
        if self.shared.waiting.load(Ordering::SeqCst) {
            if let Some(t) = &self.thread {
                t.thread().unpark();
            }
        }
    }

    /// Stop the thread; how many files it was handed (it hints those the walk is not past
    /// yet when it gets to them).
    pub(crate) fn finish(mut self) -> u64 {
        self.stop();
        self.next
    }

    fn stop(&mut self) {
        drop(self.tx.take());
        // no wait for a walk that will not come
        self.shared.walked.store(u64::MAX, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.stop();
    }
}

fn hint_loop(rx: &Receiver<Batch>, shared: &Shared) {
    // hinted files still ahead of the walk: (number, bytes)
    let mut ahead: VecDeque<(u64, u64)> = VecDeque::new();
    let mut bytes = 0u64;
    for batch in rx {
        for (name, seq) in &batch.files {
            loop {
                let walked = shared.walked.load(Ordering::Acquire);
                while ahead.front().is_some_and(|&(s, _)| s < walked) {
                    if let Some((_, n)) = ahead.pop_front() {
                        bytes -= n;
                    }
                }
                if *seq < walked {
                    break; // the walk is there already: too late to help
                }
                if ahead.is_empty()
                    || (bytes + FILE_HEAD <= AHEAD_BYTES && (ahead.len() as u64) < AHEAD_FILES)
                {
                    if let Some(n) = hint(batch.dir.as_fd(), name) {
                        shared.hinted.fetch_add(1, Ordering::Release);
                        ahead.push_back((*seq, n));
                        bytes += n;
                    }
                    break;
                }
                shared.waiting.store(true, Ordering::SeqCst);
                // checked again after saying so: a `passed` in between is not missed
                if shared.walked.load(Ordering::SeqCst) == walked {
                    std::thread::park_timeout(Duration::from_millis(50));
                }
                shared.waiting.store(false, Ordering::Release);
            }
            shared.handled.fetch_add(1, Ordering::Release);
            if shared.walked.load(Ordering::Acquire) == u64::MAX {
                return;
            }
        }
    }
}

/// Ask the kernel to read the start of regular file `name` in `dir`: the bytes hinted, or
/// `None` if it is not a regular file or cannot be opened.
fn hint(dir: BorrowedFd<'_>, name: &OsString) -> Option<u64> {
    // not a controlling terminal, should it be one by now
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name.as_os_str(), flags | OFlags::NOATIME, Mode::empty()) {
        Err(rustix::io::Errno::PERM) => rustix::fs::openat(dir, name.as_os_str(), flags, Mode::empty()),
        r => r,
    }
    .ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return None;
    }
    let len = (st.st_size.max(0) as u64).min(FILE_HEAD);
    let n = NonZeroU64::new(len)?;
    rustix::fs::fadvise(&fd, 0, Some(n), Advice::WillNeed).ok()?;
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(what: impl Fn() -> bool) {
        // no deadline: a thread that blocks shows as a test that never ends
        while !what() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn only_regular_files_are_hinted() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..50 {
            std::fs::write(d.path().join(format!("f{i:02}")), vec![i as u8; 1000 + i]).unwrap();
        }
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("f00", d.path().join("link")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            d.path().join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        std::fs::write(d.path().join("empty"), b"").unwrap();
        let dir = std::fs::File::open(d.path()).unwrap();
        let mut ra = ReadAhead::start().unwrap();
        // a FIFO must not block the thread (opened without blocking, never read); it, a
        // directory, a symlink, an empty file and a missing name are passed over
        let mut names: Vec<OsString> = ["fifo", "sub", "link", "empty", "gone"]
            .map(OsString::from)
            .into();
        names.extend((0..50).map(|i| format!("f{i:02}").into()));
        assert_eq!(ra.plan(dir.as_fd(), names), (0..55).collect::<Vec<_>>());
        let shared = ra.shared.clone();
        wait_for(|| shared.handled.load(Ordering::Acquire) == 55);
        assert_eq!(shared.hinted.load(Ordering::Acquire), 50);
        assert_eq!(ra.finish(), 55);
    }

    #[test]
    fn a_thread_that_falls_behind_holds_few_descriptors() {
        let d = tempfile::tempdir().unwrap();
        let names: Vec<OsString> = (0..=AHEAD_FILES).map(|i| format!("f{i:05}").into()).collect();
        for name in &names {
            std::fs::write(d.path().join(name), b"x").unwrap();
        }
        let dir = std::fs::File::open(d.path()).unwrap();
        let mut ra = ReadAhead::start().unwrap();
        let shared = ra.shared.clone();
        // the thread stops at its lead in the first directory...
        ra.plan(dir.as_fd(), names);
        wait_for(|| shared.waiting.load(Ordering::Acquire));
        // ...while the walk hands over 1000 more: only QUEUED_DIRS of them are kept (numbered),
        // and planning never waits
        let numbered = (0..1000)
            .filter(|_| !ra.plan(dir.as_fd(), vec!["f00000".into()]).is_empty())
            .count();
        assert_eq!(numbered, QUEUED_DIRS);
        assert_eq!(ra.tx.as_ref().unwrap().len(), QUEUED_DIRS);
        assert_eq!(ra.finish(), AHEAD_FILES + 1 + QUEUED_DIRS as u64);
    }

    #[test]
    fn the_lead_is_bounded_in_bytes_too() {
        let d = tempfile::tempdir().unwrap();
        let per = AHEAD_BYTES / FILE_HEAD;
        let names: Vec<OsString> = (0..per + 3).map(|i| format!("big{i}").into()).collect();
        for name in &names {
            // sparse: the hint is about the bytes the file says it has
            std::fs::File::create(d.path().join(name))
                .unwrap()
                .set_len(FILE_HEAD * 2)
                .unwrap();
        }
        let dir = std::fs::File::open(d.path()).unwrap();
        let mut ra = ReadAhead::start().unwrap();
        let seqs = ra.plan(dir.as_fd(), names);
        let shared = ra.shared.clone();
        wait_for(|| shared.hinted.load(Ordering::Acquire) == per && shared.waiting.load(Ordering::Acquire));
        assert_eq!(shared.handled.load(Ordering::Acquire), per);
        ra.passed(seqs[0]);
        wait_for(|| {
            shared.hinted.load(Ordering::Acquire) == per + 1 && shared.waiting.load(Ordering::Acquire)
        });
        assert_eq!(ra.finish(), per + 3);
    }

    #[test]
    fn the_thread_keeps_within_its_lead_and_follows_the_walk() {
        let d = tempfile::tempdir().unwrap();
        let n = AHEAD_FILES + 300;
        let names: Vec<OsString> = (0..n).map(|i| format!("f{i:05}").into()).collect();
        for name in &names {
            std::fs::write(d.path().join(name), b"x").unwrap();
        }
        let dir = std::fs::File::open(d.path()).unwrap();
        let mut ra = ReadAhead::start().unwrap();
        let seqs = ra.plan(dir.as_fd(), names);
        let shared = ra.shared.clone();
        let stalled = |hinted: u64| {
            wait_for(|| {
                shared.hinted.load(Ordering::Acquire) == hinted && shared.waiting.load(Ordering::Acquire)
            })
        };
        // the walk has not moved: the thread stops at its lead
        stalled(AHEAD_FILES);
        assert_eq!(shared.handled.load(Ordering::Acquire), AHEAD_FILES);
        // the walk passes 100 files: 100 more are hinted, and no more
        ra.passed(seqs[99]);
        stalled(AHEAD_FILES + 100);
        // a file the walk is past already is not hinted: the walk jumps beyond the rest
        ra.passed(seqs[(n - 1) as usize]);
        wait_for(|| shared.handled.load(Ordering::Acquire) == n);
        assert_eq!(shared.hinted.load(Ordering::Acquire), AHEAD_FILES + 100);
        assert_eq!(ra.finish(), n);
    }
}
