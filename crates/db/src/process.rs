//! Running the database tools: finding them, capturing short outputs, streaming dumps out of
//! them and restores into them.
//!
//! Every child gets `stdin` from /dev/null unless it is fed (so a tool can never sit waiting
//! for a password prompt in a cron job), and its stderr is drained on a thread into a bounded
//! tail, so a chatty tool can never block on a full pipe; the tail becomes the error message.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use crate::DbError;

/// How much of a tool's stderr is kept for messages.
const STDERR_TAIL: usize = 16 * 1024;

/// A tool found in `PATH`.
#[derive(Clone, Debug)]
pub(crate) struct Tool {
    pub name: &'static str,
    pub path: PathBuf,
}

impl Tool {
    /// The first of `names` found in `PATH`.
    pub fn find(names: &[&'static str], hint: &str) -> Result<Tool, DbError> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        for name in names {
            for dir in std::env::split_paths(&path) {
                let p = dir.join(name);
                if is_executable(&p) {
                    return Ok(Tool { name, path: p });
                }
            }
        }
        Err(DbError::ToolMissing {
            tool: names.join(" or "),
            hint: hint.to_string(),
        })
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.path);
        c.stdin(Stdio::null());
        c
    }

    /// Whether the tool's `--help` lists `option` (a feature of newer versions).
    pub fn offers(&self, option: &str) -> bool {
        capture(self.command().arg("--help"), self.name, self.name).is_ok_and(|h| {
            h.split(|c: char| c.is_whitespace() || c == ',' || c == '=')
                .any(|w| w == option)
        })
    }

    /// The tool's own version line (`pg_dump (PostgreSQL) 15.4`).
    pub fn version(&self) -> Result<String, DbError> {
        let out = capture(self.command().arg("--version"), self.name, self.name)?;
        Ok(out.lines().next().unwrap_or("").trim().to_string())
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `exit status 2`, `killed by signal 9`.
fn describe_status(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

/// The last few meaningful lines of a tool's stderr, on one line.
pub(crate) fn summarize_stderr(b: &[u8]) -> String {
    let text = String::from_utf8_lossy(b);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(3)..];
    let mut s = tail.join(" / ");
    if s.len() > 400 {
        let mut cut = 400;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn cannot_run(what: &str, tool: &str, e: io::Error) -> DbError {
    DbError::Failed {
        what: what.to_string(),
        detail: format!("cannot run {tool}: {e}"),
    }
}

fn failure(what: &str, tool: &str, status: ExitStatus, stderr: &[u8]) -> DbError {
    let detail = summarize_stderr(stderr);
    DbError::Failed {
        what: what.to_string(),
        detail: if detail.is_empty() {
            format!("{tool} failed ({})", describe_status(status))
        } else {
            format!("{tool} failed ({}): {detail}", describe_status(status))
        },
    }
}

/// Run a command to completion and return its stdout; a non-zero exit is an error that
/// carries the tail of stderr.
pub(crate) fn capture(cmd: &mut Command, what: &str, tool: &str) -> Result<String, DbError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| cannot_run(what, tool, e))?;
    if !out.status.success() {
        return Err(failure(what, tool, out.status, &out.stderr));
    }
    String::from_utf8(out.stdout).map_err(|_| DbError::Failed {
        what: what.to_string(),
        detail: format!("{tool} printed output that is not UTF-8"),
    })
}

/// Keep reading `r` to its end, holding on to the last `STDERR_TAIL` bytes.
fn drain<R: Read + Send + 'static>(mut r: R) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut tail = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    tail.extend_from_slice(&buf[..n]);
                    if tail.len() > 2 * STDERR_TAIL {
                        tail.drain(..tail.len() - STDERR_TAIL);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        tail
    })
}

/// A running tool whose stdout is being consumed.
pub(crate) struct Producer {
    child: Child,
    stderr: Option<JoinHandle<Vec<u8>>>,
    tool: &'static str,
}

impl Producer {
    pub fn spawn(
        mut cmd: Command,
        tool: &'static str,
        what: &str,
    ) -> Result<(Producer, ChildStdout), DbError> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| cannot_run(what, tool, e))?;
        let stdout = child.stdout.take().ok_or_else(|| DbError::Failed {
            what: what.to_string(),
            detail: format!("{tool} has no stdout"),
        })?;
        let stderr = child.stderr.take().map(drain);
        Ok((Producer { child, stderr, tool }, stdout))
    }

    /// Wait for the tool (killing it first unless its output was read to the end). Returns
    /// its stderr on success.
    pub fn finish(&mut self, complete: bool, what: &str) -> Result<Vec<u8>, DbError> {
        if !complete {
            let _ = self.child.kill();
        }
        let status = self.child.wait().map_err(|e| DbError::Failed {
            what: what.to_string(),
            detail: format!("waiting for {}: {e}", self.tool),
        })?;
        let stderr = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
        if !complete {
            return Err(DbError::Failed {
                what: what.to_string(),
                detail: format!("{} stopped before its output was complete", self.tool),
            });
        }
        if !status.success() {
            return Err(failure(what, self.tool, status, &stderr));
        }
        Ok(stderr)
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // never leave a dump running behind a failed backup
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Run `cmd` with `input` streamed into its stdin; returns the bytes fed. A tool that exits
/// early (closing its stdin) is reported with its own error, not as a broken pipe.
pub(crate) fn feed(cmd: Command, tool: &str, what: &str, input: &mut dyn Read) -> Result<u64, DbError> {
    let (n, status, stderr) = feed_collect(cmd, tool, what, input)?;
    if !status.success() {
        return Err(failure(what, tool, status, &stderr));
    }
    Ok(n)
}

/// [`feed`] for a tool whose failures the caller sorts out itself: its exit status and the
/// tail of its stderr (the last 16-32 KiB) come back; only reading the input and feeding it
/// are errors here.
pub(crate) fn feed_collect(
    mut cmd: Command,
    tool: &str,
    what: &str,
    input: &mut dyn Read,
) -> Result<(u64, ExitStatus, Vec<u8>), DbError> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| cannot_run(what, tool, e))?;
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let mut copied = Ok(0);
    if let Some(mut stdin) = child.stdin.take() {
        copied = copy_counting(input, &mut stdin);
        if matches!(copied, Err(CopyError::Read(_))) {
            // the input is incomplete: the tool must not take EOF as the end of a good dump
            let _ = child.kill();
        }
        // closing stdin tells the tool the input is complete
        drop(stdin);
    }
    let status = child.wait().map_err(|e| DbError::Failed {
        what: what.to_string(),
        detail: format!("waiting for {tool}: {e}"),
    })?;
    let _ = out.map(|h| h.join());
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    if let Err(CopyError::Read(e)) = &copied {
        return Err(DbError::Failed {
            what: what.to_string(),
            detail: format!("reading the dump from the repository: {e}"),
        });
    }
    if !status.success() {
        // (its own words say more than a broken pipe)
        return Ok((copied.unwrap_or(0), status, stderr));
    }
    match copied {
        Ok(n) => Ok((n, status, stderr)),
        Err(CopyError::Read(e)) => Err(DbError::Failed {
            what: what.to_string(),
            detail: format!("reading the dump from the repository: {e}"),
        }),
        Err(CopyError::Write(e)) => Err(DbError::Failed {
            what: what.to_string(),
            detail: format!("{tool} stopped reading its input: {e}"),
        }),
    }
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

fn copy_counting(r: &mut dyn Read, w: &mut dyn Write) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        w.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
    w.flush().map_err(CopyError::Write)?;
    Ok(total)
}

/// Lines of a tool's stderr worth keeping as warnings of a successful run.
pub(crate) fn stderr_warnings(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(10)
        .map(String::from)
        .collect()
}

/// An argument `--name=value` as one OS string.
pub(crate) fn opt(name: &str, value: impl AsRef<OsStr>) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from(format!("--{name}="));
    s.push(value);
    s
}
