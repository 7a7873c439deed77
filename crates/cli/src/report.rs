//! Run reports: after a backup, check, forget, prune, restore, restore-db or copy, the client
//! tells its coffer server how the run went (start, end, status, counts, bytes, warnings,
//! errors, snapshot), so the server notices failures, and by their absence, runs that never
//! happened. Sent to the repository's server when the repository is one
//! (`https://HOST:PORT/REPO`), or to `--report-to URL` (a coffer server repository URL)
//! otherwise. A report that cannot be delivered is a warning, never a failed run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_server::records::{RunReport, RunStatus};

use crate::cli::{Command, Global};

/// What the running command has learned for its report.
#[derive(Default)]
struct Facts {
    files: u64,
    bytes_read: u64,
    bytes_added: u64,
    bytes_total: u64,
    snapshot: Option<String>,
    warnings: u64,
    errors: u64,
    messages: Vec<String>,
    files_changed: u64,
    bytes_new_raw: u64,
}

static FACTS: Mutex<Facts> = Mutex::new(Facts {
    files: 0,
    bytes_read: 0,
    bytes_added: 0,
    bytes_total: 0,
    snapshot: None,
    warnings: 0,
    errors: 0,
    messages: Vec::new(),
    files_changed: 0,
    bytes_new_raw: 0,
});

/// The configured job this run belongs to: its name, when its next backup is due, and the
/// names of every scheduled job of the configuration.
#[derive(Default, Clone)]
pub struct JobFacts {
    pub name: String,
    pub next_expected: Option<i64>,
    pub jobs: Vec<String>,
}

static JOB: Mutex<Option<JobFacts>> = Mutex::new(None);

/// Say which job this run is (`--job`), for its report.
pub fn job(j: JobFacts) {
    *JOB.lock().unwrap_or_else(|p| p.into_inner()) = Some(j);
}

fn facts() -> std::sync::MutexGuard<'static, Facts> {
    FACTS.lock().unwrap_or_else(|p| p.into_inner())
}

fn keep(f: &mut Facts, msg: &str) {
    if f.messages.len() < 20 {
        f.messages.push(redact(msg));
    }
}

/// A message as the server may see it: what went wrong, without the file names and paths the
/// server is not meant to learn (docs/FORMAT.md: the server learns no path or host name).
/// Every word that is, or begins with, an absolute path becomes `<path>`; a message that
/// starts with a path (`/srv/x y: cannot read: ...`) loses it up to its first `: `. The
/// details stay on the client, in its own output.
pub fn redact(msg: &str) -> String {
    let msg = match msg.strip_prefix('/').and_then(|_| msg.split_once(": ")) {
        Some((_, rest)) => format!("<path>: {rest}"),
        None => msg.to_string(),
    };
    let mut out = Vec::new();
    let mut quoted_path: Option<char> = None; // inside a quoted path: skip to its closing quote
    for w in msg.split(char::is_whitespace) {
        if let Some(q) = quoted_path {
            if w.contains(q) {
                quoted_path = None;
            }
            continue;
        }
        let t = w.trim_start_matches(['"', '\'', '(', '[']);
        // `--flag=/path`, `key=/path`
        let value = t.split_once("=/").map(|(k, _)| k);
        let location = ["s3:", "sftp:", "https://", "http://", "./", "~/"]
            .iter()
            .any(|p| t.starts_with(p));
        if let Some(k) = value {
            out.push(format!("{k}=<path>"));
        } else if t.starts_with('/') || location {
            out.push("<path>".to_string());
            let quote = w.chars().next().filter(|c| *c == '"' || *c == '\'');
            if let Some(q) = quote {
                if !t.contains(q) {
                    quoted_path = Some(q); // the path goes on past a space
                }
            }
        } else {
            out.push(w.to_string());
        }
    }
    out.join(" ")
}

/// A warning shown to the user (a file that could not be read, ...).
pub fn warning(msg: &str) {
    let mut f = facts();
    f.warnings += 1;
    keep(&mut f, msg);
}

/// An error the command found and reported without failing outright (check).
pub fn error(msg: &str) {
    let mut f = facts();
    f.errors += 1;
    keep(&mut f, msg);
}

/// A finished backup's numbers.
pub fn backup(snapshot: &str, files: u64, bytes_read: u64, bytes_added: u64, bytes_total: u64) {
    let mut f = facts();
    f.snapshot = Some(snapshot.to_string());
    f.files = files;
    f.bytes_read = bytes_read;
    f.bytes_added = bytes_added;
    f.bytes_total = bytes_total;
}

/// A finished restore's numbers: the snapshot it came from, files and bytes written.
pub fn restored(snapshot: &str, files: u64, bytes: u64) {
    let mut f = facts();
    f.snapshot = Some(snapshot.to_string());
    f.files = files;
    f.bytes_read = bytes;
    f.bytes_added = 0;
    f.bytes_total = bytes;
    f.files_changed = 0;
    f.bytes_new_raw = 0;
}

/// A finished backup's new and changed files and its new data before compression (the
/// server compares them with the client's usual: the ransomware alarm).
pub fn backup_changes(files_changed: u64, bytes_new_raw: u64) {
    let mut f = facts();
    f.files_changed = files_changed;
    f.bytes_new_raw = bytes_new_raw;
}

/// The kind of run a command is, if it is reported.
pub fn kind(c: &Command) -> Option<&'static str> {
    Some(match c {
        Command::Backup(_) => "backup",
        Command::Check(_) => "check",
        Command::Forget(_) => "forget",
        Command::Prune(_) => "prune",
        Command::Restore(_) => "restore",
        Command::RestoreDb(_) => "restore-db",
        Command::RestoreSite(_) => "restore-site",
        Command::RestoreHost(_) => "restore-host",
        Command::Drill(_) => "drill",
        Command::Copy(_) => "copy",
        _ => return None,
    })
}

/// Where the report goes: `--report-to`, else the repository if it is a coffer server.
pub fn target(g: &Global) -> Option<String> {
    g.report_to
        .clone()
        .or_else(|| g.repo.clone().filter(|r| r.starts_with("https://")))
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The restore asked for on the server that this command carries out: the agent sets it for
/// the commands it starts for one, and the report says so (the console shows the request done).
pub const REQUEST_VAR: &str = "COFFER_REQUEST";

/// Set once a report is on its way: a run has one (the interrupt handler's, or the end's).
static SENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// [`send`] for the command this process runs: once, whichever of its end and an interrupt
/// comes first.
pub fn send_once(g: &Global, kind: &str, started: SystemTime, took: Duration, outcome: &Result<u8, String>) {
    if !SENT.swap(true, std::sync::atomic::Ordering::SeqCst) {
        send(g, kind, started, took, outcome);
    }
}

/// What the running command has done so far, for its progress (counted by the progress
/// display, which every long command has).
static LIVE_FILES: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);

/// `n` more files processed (for the progress sent to the server).
pub fn live_files(n: u64) {
    LIVE_FILES.fetch_add(n, Ordering::Relaxed);
}

/// `n` more bytes processed.
pub fn live_bytes(n: u64) {
    LIVE_BYTES.fetch_add(n, Ordering::Relaxed);
}

/// While the command runs, tell its server what it has done so far, every
/// [`coffer_wire::PROGRESS_EVERY_SECS`] (the console shows it, and follows it). Where its
/// report would go; nothing when there is no such server. A thread that ends with the
/// process; a post that fails is said once, on stderr, and tried again at the next tick.
pub fn start_progress(g: &Global, kind: &'static str, started: SystemTime) {
    let Some(url) = target(g) else { return };
    let g = g.clone();
    let job = JOB
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|j| j.name.clone())
        .unwrap_or_default();
    let spawned = std::thread::Builder::new()
        .name("progress".into())
        .spawn(move || {
            let backend = match rest(&g, &url) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("coffer: warning: no progress will reach {url}: {e}");
                    return;
                }
            };
            let mut said = false;
            loop {
                std::thread::sleep(Duration::from_secs(coffer_wire::PROGRESS_EVERY_SECS));
                if SENT.load(Ordering::SeqCst) {
                    return;
                }
                let p = coffer_wire::RunProgress {
                    kind: kind.to_string(),
                    job: job.clone(),
                    started: unix(started),
                    files: LIVE_FILES.load(Ordering::Relaxed),
                    bytes: LIVE_BYTES.load(Ordering::Relaxed),
                };
                let sent = serde_json::to_vec(&p)
                    .map_err(|e| e.to_string())
                    .and_then(|json| backend.post_progress(&json).map_err(|e| e.to_string()));
                match sent {
                    Err(e) if !said => {
                        eprintln!("coffer: warning: progress did not reach {url}: {e}");
                        said = true;
                    }
                    _ => {}
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("coffer: warning: no progress will be sent: {e}");
    }
}

/// The client for the report's server, with the token the report uses.
pub fn rest(g: &Global, url: &str) -> Result<coffer_backends::RestBackend, String> {
    let token_var = std::env::var_os("COFFER_REPORT_TOKEN").map(|_| "COFFER_REPORT_TOKEN");
    let opts = coffer_backends::RestOptions {
        cacert: g.cacert.clone(),
        token_file: if token_var.is_some() {
            None
        } else {
            g.token_file.clone()
        },
        token_var,
    };
    coffer_backends::RestBackend::open(url, &opts)
}

/// Build and send the report of a finished command.
pub fn send(g: &Global, kind: &str, started: SystemTime, took: Duration, outcome: &Result<u8, String>) {
    let Some(url) = target(g) else { return };
    let f = std::mem::take(&mut *facts());
    let job_facts = JOB
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_default();
    let mut messages = f.messages;
    let (status, errors) = match outcome {
        Err(e) => {
            messages.insert(0, redact(e));
            (RunStatus::Failed, f.errors + 1)
        }
        Ok(0) if f.warnings == 0 && f.errors == 0 => (RunStatus::Ok, 0),
        Ok(0) | Ok(crate::EXIT_INCOMPLETE) if f.errors == 0 => (RunStatus::Warning, 0),
        Ok(code) => {
            if messages.is_empty() {
                messages.push(format!("exited with code {code}"));
            }
            (RunStatus::Failed, f.errors.max(1))
        }
    };
    let report = RunReport {
        kind: kind.to_string(),
        status,
        // the server knows the client by its token; the host name stays here
        host: String::new(),
        started: unix(started),
        finished: unix(started + took),
        duration_ms: took.as_millis() as u64,
        files: f.files,
        bytes_read: f.bytes_read,
        bytes_added: f.bytes_added,
        bytes_total: f.bytes_total,
        snapshot: f.snapshot,
        warnings: f.warnings,
        errors,
        messages,
        files_changed: f.files_changed,
        bytes_new_raw: f.bytes_new_raw,
        job: job_facts.name,
        // (only a backup announces the next backup)
        next_expected: job_facts.next_expected.filter(|_| kind == "backup"),
        jobs: job_facts.jobs,
        request: std::env::var(REQUEST_VAR).ok().and_then(|v| v.parse().ok()),
    };
    let sent = serde_json::to_vec(&report)
        .map_err(|e| e.to_string())
        .and_then(|json| rest(g, &url)?.post_run(&json).map_err(|e| e.to_string()));
    if let Err(e) = sent {
        eprintln!("coffer: warning: the run report did not reach {url}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn reports_carry_no_paths() {
        assert_eq!(
            redact("/srv/www/shop/secret plans.txt: cannot read: Permission denied (os error 13)"),
            "<path>: cannot read: Permission denied (os error 13)"
        );
        assert_eq!(
            redact("mysql/shop: dump failed: mysqldump: Got error 1044 when using LOCK TABLES"),
            "mysql/shop: dump failed: mysqldump: Got error 1044 when using LOCK TABLES"
        );
        assert_eq!(
            redact("repository \"/backup/repo\": no such file"),
            "repository <path> no such file"
        );
        assert_eq!(redact("3 packs are in no index"), "3 packs are in no index");
        assert_eq!(
            redact("no repository at sftp:backup@nas:/srv/x (create one)"),
            "no repository at <path> (create one)"
        );
        assert_eq!(
            redact("wrong password: no key in s3:https://host/bucket opens"),
            "wrong password: no key in <path> opens"
        );
        assert_eq!(
            redact("cannot read \"/srv/my docs/x\": denied"),
            "cannot read <path> denied"
        );
        assert_eq!(
            redact("pg_dump: --file=/tmp/x failed\n\t/var/lib/y"),
            "pg_dump: --file=<path> failed  <path>"
        );
    }
}
