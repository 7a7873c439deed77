//! Helpers for black-box tests of the `coffer` binary.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

pub mod agent;
pub mod netem;
pub mod seaweed;
pub mod server;
pub mod sshd;
pub mod webdriver;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

/// `coffer` with the configuration `config`, its cache in `dir`, and none of the
/// environment's repository settings (the configuration says them).
pub fn agent_command(dir: &Path, config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_coffer"));
    c.env_remove("COFFER_REPOSITORY")
        .env_remove("COFFER_PASSWORD")
        .env_remove("COFFER_PASSWORD_FILE")
        .env_remove("COFFER_TOKEN")
        .env_remove("COFFER_TOKEN_FILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("COFFER_CONFIG", config)
        .env("COFFER_CACHE_DIR", dir.join("cache"))
        .stdin(std::process::Stdio::null());
    c
}

/// Run SQL through the `mariadb` client as root over 127.0.0.1; its rows, tab-separated.
pub fn mysql(sql: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("mariadb")
        .args(["-h", "127.0.0.1", "-u", "root", "--batch", "--skip-column-names"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the mariadb client is installed");
    child.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "mariadb failed on {sql}: {}", stderr(&o));
    String::from_utf8(o.stdout).unwrap()
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub pwfile: PathBuf,
}

impl Env {
    /// A temp dir with a password file; the repository is not created yet.
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let pwfile = dir.path().join("pw");
        fs::write(&pwfile, "correct horse battery staple\n").expect("pw");
        Env { dir, repo, pwfile }
    }

    /// With an initialized repository.
    pub fn init() -> Env {
        let e = Env::new();
        e.ok(&["init"]);
        e
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_coffer"));
        c.env_remove("COFFER_PASSWORD")
            .env_remove("COFFER_PASSWORD_COMMAND")
            .env_remove("COFFER_NEW_PASSWORD")
            .env("COFFER_REPOSITORY", &self.repo)
            .env("COFFER_PASSWORD_FILE", &self.pwfile)
            // caches stay inside the test's directory
            .env("COFFER_CACHE_DIR", self.dir.path().join("cache"))
            .stdin(std::process::Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run coffer")
    }

    /// Run and require exit code 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "coffer {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `backup --json` and its summary object.
    pub fn backup_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["backup", "--json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        let last = out.lines().last().expect("summary line");
        serde_json::from_str(last).expect("summary is JSON")
    }
}

/// Path → (size, blake3 of content) for every file below `root`: "nothing changed" checks.
pub fn digest_tree(root: &Path) -> BTreeMap<Vec<u8>, (u64, String, u32)> {
    let mut out = BTreeMap::new();
    fn go(dir: &Path, root: &Path, out: &mut BTreeMap<Vec<u8>, (u64, String, u32)>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let m = fs::symlink_metadata(&p).expect("lstat");
            let rel = p
                .strip_prefix(root)
                .expect("prefix")
                .as_os_str()
                .as_bytes()
                .to_vec();
            use std::os::unix::fs::MetadataExt;
            if m.is_dir() {
                out.insert(rel, (0, "dir".into(), m.mode()));
                go(&p, root, out);
            } else if m.file_type().is_symlink() {
                let t = fs::read_link(&p).expect("readlink");
                out.insert(rel, (0, format!("-> {}", t.display()), m.mode()));
            } else {
                let h = blake3::hash(&fs::read(&p).unwrap_or_default())
                    .to_hex()
                    .to_string();
                out.insert(rel, (m.len(), h, m.mode()));
            }
        }
    }
    go(root, root, &mut out);
    out
}

/// Deterministic pseudo-random bytes (xorshift), fast enough for GiB-sized test files.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2).wrapping_add(1); // distinct seeds, distinct streams
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Repository size in bytes (all files).
pub fn dir_size(p: &Path) -> u64 {
    digest_tree(p).values().map(|(s, _, _)| *s).sum()
}

/// A copy of the coffer binary inside `dir`, readable and executable by every user: tests that
/// run it as `nobody` must not depend on where the build directory lives (it may be private).
pub fn world_executable_coffer(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dst = dir.join("coffer-bin");
    fs::copy(env!("CARGO_BIN_EXE_coffer"), &dst).expect("copy coffer");
    fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)).expect("chmod coffer");
    dst
}

/// Poll until `ready` holds. There is no deadline: a loaded machine only makes the wait
/// longer. The wait fails when `ended` reports that the process it depends on has exited (what
/// it waits for can no longer come), with that report.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool, mut ended: impl FnMut() -> Option<String>) {
    while !ready() {
        if let Some(why) = ended() {
            // it may have got ready just before it exited
            assert!(ready(), "while waiting for {what}: {why}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// For [`wait_until`]: once `child` has exited, a report of it with its log.
pub fn exit_report(name: &str, child: &mut Child, log: &Path) -> Option<String> {
    let status = child.try_wait().ok().flatten()?;
    let log = fs::read_to_string(log).unwrap_or_default();
    Some(format!("{name} exited ({status}): {log}"))
}

/// A command's stderr as text.
/// A test's precondition (root, a mount it needs): unmet, the test fails, unless
/// `COFFER_ALLOW_SKIP` is set, and then it says `SKIPPED: <why>` on stderr (counted by
/// `scripts/test`) and returns false, for the caller to return. A test never passes silently
/// without running.
#[must_use]
pub fn require(met: bool, why: &str) -> bool {
    if !met {
        assert!(
            std::env::var_os("COFFER_ALLOW_SKIP").is_some(),
            "cannot run: {why} (set COFFER_ALLOW_SKIP=1 to skip such tests, visibly)"
        );
        eprintln!("SKIPPED: {why}");
        if let Some(log) = std::env::var_os("COFFER_SKIP_LOG") {
            use std::io::Write as _;
            if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(log) {
                let _ = writeln!(f, "{why}");
            }
        }
    }
    met
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A command's exit code (-1 when killed by a signal).
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// The Content-Length of an HTTP message head (0 if it has none).
pub fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// A small seeded generator (xorshift) for the torture and model tests: the same seed, the
/// same sequence. The state must not be 0.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
