//! Terminal output: progress bars on a terminal, plain warnings otherwise, sizes and times.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Local};
use coffer_core::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use coffer_core::human_bytes as bytes;

pub fn local_time(t: &DateTime<FixedOffset>) -> String {
    t.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Progress for long commands: a spinner with counts on a terminal, nothing otherwise.
/// Warnings always go to stderr, one line each.
pub struct CliProgress {
    bar: Option<ProgressBar>,
    files: AtomicU64,
    bytes: AtomicU64,
    pub warnings: AtomicU64,
    verb: &'static str,
    /// Restore: list each action (`-v`), with "would" before it in a dry run.
    actions: Option<&'static str>,
    /// Backup: list new and changed files (1, `-v`), and unchanged ones too (2, `-vv`).
    list_files: u8,
    /// Print notes (not with --quiet or --json).
    notes: bool,
}

impl CliProgress {
    pub fn new(show: bool, verb: &'static str) -> Self {
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5));
            b.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        CliProgress {
            bar,
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            warnings: AtomicU64::new(0),
            verb,
            actions: None,
            list_files: 0,
            notes: show,
        }
    }

    /// List files as a backup finds them: `-v` new and changed ones, `-vv` unchanged ones too.
    pub fn listing_files(mut self, verbosity: u8) -> Self {
        self.list_files = verbosity;
        self
    }

    /// List every restore action on stdout (`-v`); `dry_run` says "would" before each.
    pub fn listing_actions(mut self, list: bool, dry_run: bool) -> Self {
        self.actions = list.then_some(if dry_run { "would " } else { "" });
        self
    }

    fn refresh(&self, item: Option<&Path>) {
        if let Some(b) = &self.bar {
            let f = self.files.load(Ordering::Relaxed);
            let by = self.bytes.load(Ordering::Relaxed);
            let cur = item.map(|p| format!("  {}", p.display())).unwrap_or_default();
            b.set_message(format!("{} {f} files, {}{cur}", self.verb, bytes(by)));
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Progress for CliProgress {
    fn item(&self, path: &Path) {
        self.refresh(Some(path));
    }
    fn bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        crate::report::live_bytes(n);
    }
    fn files(&self, n: u64) {
        self.files.fetch_add(n, Ordering::Relaxed);
        crate::report::live_files(n);
        if self.files.load(Ordering::Relaxed).is_multiple_of(64) {
            self.refresh(None);
        }
    }
    fn file_status(&self, status: coffer_core::FileStatus, path: &Path) {
        use coffer_core::FileStatus;
        let word = match status {
            FileStatus::New if self.list_files >= 1 => "new",
            FileStatus::Changed if self.list_files >= 1 => "changed",
            FileStatus::Unchanged if self.list_files >= 2 => "unchanged",
            _ => return,
        };
        let line = format!("{word:<9} {}", path.display());
        match &self.bar {
            Some(b) => b.suspend(|| println!("{line}")),
            None => {
                let _ = writeln!(std::io::stdout(), "{line}");
            }
        }
    }
    fn restore_action(&self, action: coffer_core::RestoreAction, path: &Path) {
        let Some(would) = self.actions else { return };
        let line = format!("{would}{} {}", action.verb(), path.display());
        match &self.bar {
            Some(b) => b.suspend(|| println!("{line}")),
            None => {
                let _ = writeln!(std::io::stdout(), "{line}");
            }
        }
    }
    fn note(&self, msg: &str) {
        if !self.notes {
            return;
        }
        let line = format!("note: {msg}");
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        }
    }
    fn warn(&self, msg: &str) {
        self.warnings.fetch_add(1, Ordering::Relaxed);
        crate::report::warning(msg);
        let line = format!("warning: {msg}");
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        }
    }
}
