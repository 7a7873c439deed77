//! The configuration file, `coffer run` and `coffer agent`, with real parts on 127.0.0.1: a
//! local repository and one in SeaweedFS (S3), a MariaDB database, and a `coffer server`
//! receiving the run reports. The agent runs two jobs every few seconds, is killed with
//! SIGKILL in the middle of a backup, restarts, catches up, is stopped with SIGTERM in the
//! middle of another, and both repositories check clean.
#![allow(clippy::unwrap_used)]

mod common;

use std::cell::RefCell;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::agent::{run_ok as ok, Agent};
use common::seaweed::{Seaweed, ACCESS, BUCKET, S3_PORT, SECRET};
use common::server::ServerProc;
use common::{code, mysql, stderr};

fn coffer(dir: &Path, config: &Path) -> Command {
    common::agent_command(dir, config)
}

fn run(dir: &Path, config: &Path, args: &[&str]) -> Output {
    coffer(dir, config).args(args).output().unwrap()
}

struct DropDb(String);
impl Drop for DropDb {
    fn drop(&mut self) {
        let _ = Command::new("mariadb")
            .args(["-h", "127.0.0.1", "-u", "root", "-e"])
            .arg(format!("DROP DATABASE IF EXISTS `{}`", self.0))
            .output();
    }
}

/// Processes whose command line mentions `needle` (the test's configuration path): the
/// agent's runs and their steps.
fn processes_with(needle: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            out.push((pid, cmd));
        }
    }
    out
}

/// Poll until `done` holds; no deadline (a loaded machine only makes the wait longer). The
/// wait fails when `ended` says what it waits for can no longer come (the agent exited).
fn wait_for(what: &str, done: impl FnMut() -> bool, ended: impl FnMut() -> Option<String>) {
    common::wait_until(what, done, ended);
}

/// A copy of the good configuration text beside the test's (for its own commands while the
/// agent's file is broken on purpose).
fn config_copy_free(good: &str, dir: &Path) -> PathBuf {
    let p = dir.join("good.toml");
    fs::write(&p, good).unwrap();
    p
}

/// Snapshots of `job` in the configuration's repository `repo`.
fn snapshots(dir: &Path, config: &Path, repo: &str, job: &str) -> Vec<serde_json::Value> {
    let o = run(
        dir,
        config,
        &[
            "--repo-name",
            repo,
            "snapshots",
            "--json",
            "--tag",
            &format!("job:{job}"),
        ],
    );
    if code(&o) != 0 {
        return Vec::new(); // (a run may hold the repository's lock for a moment)
    }
    serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).unwrap_or_default()
}

#[test]
fn the_agent_runs_two_jobs_to_a_local_directory_and_s3_and_survives_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = dir.join("coffer.toml");
    let db = format!("coffer_agent_{}", std::process::id());
    let _drop = DropDb(db.clone());
    mysql(&format!(
        "DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}`; \
         CREATE TABLE `{db}`.orders (id INT PRIMARY KEY, item TEXT); \
         INSERT INTO `{db}`.orders VALUES (1, 'tea'), (2, 'coffee')"
    ));
    let src = dir.join("www");
    fs::create_dir_all(src.join("shop")).unwrap();
    fs::write(src.join("shop/index.php"), "<?php echo 'shop';").unwrap();

    let mut weed = Seaweed::start();
    let server = ServerProc::start(&dir.join("server"), &[]);
    let token = server.add_client("web1", "reports", "append");
    fs::write(dir.join("report.token"), format!("{token}\n")).unwrap();
    fs::write(
        dir.join("aws-credentials"),
        format!("[offsite]\naws_access_key_id = {ACCESS}\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    let reports = server.url("reports");
    let cfg = format!(
        r#"
[agent]
host = "web1"
state_dir = "{dir}/state"

[repository.local]
location = "{dir}/repo-local"
password_file = "{dir}/local.key"
report_to = "{reports}"
token_file = "{dir}/report.token"
cacert = "{cacert}"

[repository.offsite]
location = "s3:http://127.0.0.1:{S3_PORT}/{BUCKET}/agent"
password_file = "{dir}/offsite.key"
aws_profile = "offsite"
aws_credentials_file = "{dir}/aws-credentials"
report_to = "{reports}"
token_file = "{dir}/report.token"
cacert = "{cacert}"

[job.files]
paths = ["{src}"]
to = ["local", "offsite"]
schedule = "*/3 * * * * *"
timezone = "UTC"
limit_upload = "50M"
limit_download = "20M"
nice = 5

[job.files.retention]
keep_last = 3

[job.files.drill]
schedule = "0 6 * * 0"
files = 4
on = ["local"]

[job.db]
mysql = ["{db}"]
mysql_host = "127.0.0.1"
mysql_port = 3306
mysql_user = "root"
to = ["local", "offsite"]
schedule = "*/4 * * * * *"
"#,
        dir = dir.display(),
        cacert = server.cacert.display(),
        src = src.display(),
    );
    fs::write(&config, cfg).unwrap();
    for name in ["local", "offsite"] {
        ok(
            dir,
            &config,
            &[
                "key",
                "generate",
                "-q",
                "-o",
                &format!("{}/{name}.key", dir.display()),
            ],
        );
    }
    // `config check` sees the two jobs and when they run next
    let check = ok(dir, &config, &["config", "check"]);
    assert!(
        check.contains("job files:") && check.contains("job db:"),
        "{check}"
    );
    assert!(check.contains("next run"), "{check}");
    assert!(
        check.contains("limits     nice 5, upload 50.0 MiB/s, download 20.0 MiB/s"),
        "{check}"
    );

    // the repositories are created through the configuration (S3 credentials from its file)
    ok(dir, &config, &["--repo-name", "local", "init", "-q"]);
    // (until SeaweedFS answers; only its exit ends the wait)
    let last = RefCell::new(String::new());
    common::wait_until(
        "SeaweedFS to take the offsite repository",
        || {
            let o = run(dir, &config, &["--repo-name", "offsite", "init", "-q"]);
            *last.borrow_mut() = stderr(&o);
            code(&o) == 0
        },
        || {
            weed.exited()
                .map(|w| format!("{w}; init said: {}", last.borrow()))
        },
    );
    // a typed -r beside --repo-name is refused
    let o = run(
        dir,
        &config,
        &["--repo-name", "local", "-r", "/tmp/x", "snapshots"],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));

    // the agent runs both jobs to both repositories
    let mut agent = Agent::start(dir, &config, 1);
    // a second agent on the same state directory refuses to start (it would run every
    // job twice and tidy away the versions the first one's runs read)
    wait_for(
        "the first agent to start",
        || agent.log().contains("started:"),
        || agent.exited(),
    );
    let mut second = coffer(dir, &config)
        .arg("agent")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // it refuses at once; if the first agent exited, the second could run, and the wait ends
    let mut status = None;
    common::wait_until(
        "the second agent to refuse",
        || {
            status = second.try_wait().unwrap();
            status.is_some()
        },
        || agent.exited(),
    );
    let _ = second.kill();
    let Some(status) = status else {
        panic!("a second agent kept running after the first exited")
    };
    let mut said = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut said).unwrap();
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(said.contains("another coffer agent runs"), "{said}");
    // (runs read the configuration the agent accepted, a copy in its state directory, which
    // so names every run and step on their command lines)
    let needle = dir.join("state/agent/coffer-").to_str().unwrap().to_string();
    wait_for(
        "two runs of each job in each repository",
        || {
            ["local", "offsite"].iter().all(|r| {
                snapshots(dir, &config, r, "files").len() >= 2 && snapshots(dir, &config, r, "db").len() >= 2
            })
        },
        || agent.exited(),
    );
    let latest_db = snapshots(dir, &config, "offsite", "db");
    let db_snap = latest_db.last().unwrap()["id"].as_str().unwrap().to_string();
    let dbs = ok(
        dir,
        &config,
        &["--repo-name", "offsite", "ls", &db_snap, "--databases"],
    );
    assert!(dbs.contains(&format!("mysql/{db}")), "{dbs}");
    assert!(
        agent.log().contains("job files: backup started"),
        "{}",
        agent.log()
    );

    // a broken edit and SIGHUP: refused, and the jobs go on with the version loaded before;
    // a good edit and SIGHUP: taken
    let good = fs::read_to_string(&config).unwrap();
    fs::write(&config, format!("{good}\n[job.files.surprise]\n")).unwrap();
    let hup = |a: &Agent| {
        let pid = rustix::process::Pid::from_raw(a.pid() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    };
    hup(&agent);
    wait_for(
        "the broken configuration to be refused",
        || agent.log().contains("configuration not reloaded"),
        || agent.exited(),
    );
    let before = snapshots(dir, &config_copy_free(&good, dir), "local", "files").len();
    wait_for(
        "a run after the refused reload",
        || snapshots(dir, &config_copy_free(&good, dir), "local", "files").len() > before,
        || agent.exited(),
    );
    fs::write(&config, &good).unwrap();
    hup(&agent);
    wait_for(
        "the good configuration to be reloaded",
        || agent.log().contains("configuration reloaded"),
        || agent.exited(),
    );

    // a large file makes the next backup of `files` take a while; the agent is killed in it
    let big = dir.join("www/shop/catalog.bin");
    // MIB MiB of incompressible data, none of it like any other (so it all uploads)
    let write_big = |seed: u64, mib: u32| {
        let mut f = fs::File::create(&big).unwrap();
        let chunk = common::pseudo_random(seed, 1 << 20);
        for i in 0..mib {
            let mut c = chunk.clone();
            c[..4].copy_from_slice(&i.to_le_bytes());
            f.write_all(&c).unwrap();
        }
    };
    write_big(7, 300);
    wait_for(
        "a backup of job files in progress",
        || {
            processes_with(&needle)
                .iter()
                .any(|(_, c)| c.contains(" backup --job files"))
        },
        || agent.exited(),
    );
    let agent_pid = agent.pid();
    agent.kill9();
    // its runs and their steps end with it
    wait_for(
        "the killed agent's runs to end",
        || processes_with(&needle).iter().all(|(p, _)| *p == agent_pid),
        // (nothing else can end this wait: the kernel told them to stop, they stop)
        || None,
    );

    // the interrupted step said so (the kernel told it to stop when the agent died)
    let first_log = || fs::read_to_string(dir.join("agent-1.log")).unwrap_or_default();
    wait_for(
        "the interrupted run to say so",
        || first_log().contains("job files: backup interrupted"),
        // (its runs have ended: what they wrote is all there will be)
        || Some(first_log()),
    );

    // restarted: the next runs complete, with the large file, in both repositories
    let mut agent = Agent::start(dir, &config, 2);
    wait_for(
        "a snapshot of job files with the large file in each repository",
        || {
            ["local", "offsite"].iter().all(|r| {
                snapshots(dir, &config, r, "files")
                    .last()
                    .is_some_and(|s| s["summary"]["bytes_total"].as_u64().unwrap_or(0) > 300 << 20)
            })
        },
        || agent.exited(),
    );
    // SIGTERM while a backup runs (systemctl stop): the agent tells it to stop, waits, exits
    // 0; the step ends cleanly (the repositories check clean below, --read-data)
    write_big(8, 200);
    wait_for(
        "a backup of job files in progress under the second agent",
        || {
            processes_with(&needle)
                .iter()
                .any(|(_, c)| c.contains(" backup --job files"))
        },
        || agent.exited(),
    );
    assert_eq!(agent.stop(), 0, "{}", agent.log());
    let log = agent.log();
    assert!(log.contains("stopping: telling"), "{log}");
    assert!(log.contains("job files: backup interrupted"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(
        processes_with(&needle).is_empty(),
        "{:?}",
        processes_with(&needle)
    );
    for r in ["local", "offsite"] {
        let o = run(dir, &config, &["--repo-name", r, "check"]);
        assert_eq!(code(&o), 0, "check of {r} after SIGTERM: {}", stderr(&o));
    }

    // two jobs backing up to one repository at once is no warning; the run the killed agent
    // took with it reported itself interrupted (a night without a backup is not a good one)
    let db = rusqlite::Connection::open(server.data.join("server.db")).unwrap();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        count("SELECT count(*) FROM runs WHERE status != 'ok' AND messages NOT LIKE '[\"interrupted\"%'"),
        0,
        "runs reported with warnings or failures"
    );
    let runs = || -> Vec<(String, String)> {
        let mut q = db.prepare("SELECT status, messages FROM runs").unwrap();
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    assert!(
        count("SELECT count(*) FROM runs WHERE status = 'failed' AND messages LIKE '[\"interrupted\"%'") >= 1,
        "no run reported itself interrupted: {:?}",
        runs()
    );

    // a backup by hand of the same paths, same host, is not the job's: its retention leaves
    // it alone (and a hand-made job:... tag is refused)
    let src_arg = src.to_str().unwrap();
    for r in ["local", "offsite"] {
        ok(
            dir,
            &config,
            &["--repo-name", r, "backup", "-q", "--host", "web1", src_arg],
        );
        let o = run(
            dir,
            &config,
            &["--repo-name", r, "backup", "-q", "--tag", "job:files", src_arg],
        );
        assert_eq!(code(&o), 2, "{}", stderr(&o));
    }
    // forget --job only where the job's retention applies, and named
    let o = run(dir, &config, &["forget", "--job", "files"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    // one more run by hand: retention then leaves the job's 3 newest in each repository
    let out = ok(dir, &config, &["run", "files"]);
    assert!(out.contains("job files: backup ok"), "{out}");
    for r in ["local", "offsite"] {
        assert_eq!(snapshots(dir, &config, r, "files").len(), 3, "{r}");
        let all = ok(
            dir,
            &config,
            &["--repo-name", r, "snapshots", "--json", "--host", "web1"],
        );
        let all: Vec<serde_json::Value> = serde_json::from_str(&all).unwrap();
        let untagged = all
            .iter()
            .filter(|s| s["tags"].as_array().is_none_or(|t| t.is_empty()))
            .count();
        assert_eq!(untagged, 1, "{r}: the hand-made backup is kept");
        // the database job's snapshots are not the files job's retention's business
        assert!(snapshots(dir, &config, r, "db").len() >= 2, "{r}");
        let o = run(dir, &config, &["--repo-name", r, "check", "--read-data"]);
        assert_eq!(
            code(&o),
            0,
            "check of {r}: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            stderr(&o)
        );
    }
    // every backup step was reported to the server, each destination on its own
    let runs: i64 = rusqlite::Connection::open(server.data.join("server.db"))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM runs WHERE kind = 'backup' AND status = 'ok'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(runs >= 9, "{runs} backup reports");
    // each names its job and announces the job's next backup (the server watches it)
    let announced: i64 = rusqlite::Connection::open(server.data.join("server.db"))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM runs WHERE job = 'files' AND next_expected > received \
             AND next_expected <= received + 10 AND jobs = '[\"db\",\"files\"]'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        announced >= 4,
        "{announced} reports of job files announcing the next run"
    );
    // the job's restore drill, where its [job.files.drill] says, of the job's newest snapshot
    let out = ok(dir, &config, &["run", "files", "--drill"]);
    assert!(out.contains("job files: drill of local: ok"), "{out}");
    assert!(!out.contains("offsite"), "{out}");
    let o = run(dir, &config, &["run", "db", "--drill"]);
    assert_eq!(code(&o), 2, "a job without a drill: {}", stderr(&o));

    drop(weed);
}

/// Write a configuration with one local repository (`dir/repo`, key `dir/key`) and job `j`
/// backing up `dir/src` (one small file, made if missing), `job` added to the job's lines;
/// its path.
fn write_one_job(dir: &Path, job: &str) -> PathBuf {
    let src = dir.join("src");
    if !src.exists() {
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("f"), "data").unwrap();
    }
    let config = dir.join("coffer.toml");
    fs::write(
        &config,
        format!(
            r#"
[agent]
state_dir = "{d}/state"
[repository.local]
location = "{d}/repo"
password_file = "{d}/key"
[job.j]
paths = ["{s}"]
to = ["local"]
{job}
"#,
            d = dir.display(),
            s = src.display()
        ),
    )
    .unwrap();
    config
}

/// Generate the key of [`write_one_job`]'s repository and make the repository.
fn init_local(dir: &Path, config: &Path) {
    ok(
        dir,
        config,
        &["key", "generate", "-q", "-o", dir.join("key").to_str().unwrap()],
    );
    ok(dir, config, &["--repo-name", "local", "init", "-q"]);
}

/// A job's transfer limits, and its index memory, reach the repository its commands open:
/// `backup --job`, `run` (whose steps are processes of their own) and `check --job`; a value
/// on the command line wins, and a command without a job has no rate limit and the default
/// index memory. The limiter itself is measured by
/// scripts/bench-limit; here each command says which limits it opened its repository with.
#[test]
fn a_jobs_transfer_limits_reach_the_repository_it_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = write_one_job(
        dir,
        "limit_upload = \"512K\"\nlimit_download = \"1M\"\nindex_memory = \"2M\"",
    );
    init_local(dir, &config);
    let src = dir.join("src");
    let said = |args: &[&str]| -> String {
        let o = coffer(dir, &config)
            .env("COFFER_LOG", "coffer_limits=debug")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
        stderr(&o)
    };
    let up = |rate: u64| format!("uploads kept under {rate} bytes/s");
    let down = |rate: u64| format!("downloads kept under {rate} bytes/s");
    let index = |n: u64| format!("index kept in memory under {n} bytes");
    let e = said(&["--repo-name", "local", "backup", "-q", "--job", "j"]);
    assert!(e.contains(&up(512 << 10)), "{e}");
    assert!(e.contains(&down(1 << 20)), "{e}");
    assert!(e.contains(&index(2 << 20)), "{e}");
    let e = said(&[
        "--repo-name",
        "local",
        "backup",
        "-q",
        "--job",
        "j",
        "--limit-upload",
        "2M",
        "--index-memory",
        "3M",
    ]);
    assert!(e.contains(&up(2 << 20)) && !e.contains(&up(512 << 10)), "{e}");
    assert!(e.contains(&index(3 << 20)) && !e.contains(&index(2 << 20)), "{e}");
    let e = said(&["run", "j"]);
    assert!(e.contains(&up(512 << 10)), "the run's backup step: {e}");
    assert!(e.contains(&index(2 << 20)), "the run's backup step: {e}");
    let e = said(&["--repo-name", "local", "check", "--job", "j"]);
    assert!(e.contains(&down(1 << 20)) && e.contains(&index(2 << 20)), "{e}");
    // the same repository without the job: no rate limit, the default index memory
    let e = said(&["--repo-name", "local", "backup", "-q", src.to_str().unwrap()]);
    assert!(!e.contains("bytes/s"), "{e}");
    assert!(e.contains(&index(256 << 20)), "{e}");
}

#[test]
fn a_job_runs_once_at_a_time_and_its_after_hook_always_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = dir.display();
    let write = |before: &str| {
        write_one_job(
            dir,
            &format!("before = \"{before}\"\nafter = \"echo $COFFER_RESULT > {d}/after\""),
        )
    };
    // the before hook says it started, then holds the run until the test lets it go
    let config = write(&format!(
        "touch {d}/started; while [ ! -e {d}/go ]; do sleep 0.05; done"
    ));
    init_local(dir, &config);
    let spawn_run = || Agent {
        child: RefCell::new(Some(
            coffer(dir, &config)
                .args(["run", "j"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )),
        log: dir.join("none"),
    };
    let in_hook = |run: &Agent| {
        wait_for(
            "the run's before hook",
            || dir.join("started").exists(),
            || run.exited(),
        )
    };
    let first = spawn_run();
    in_hook(&first);
    // the job is running: a second run says so and exits 75 (the agent tries again later)
    let o = run(dir, &config, &["run", "j"]);
    assert_eq!(code(&o), 75, "{}", stderr(&o));
    assert!(stderr(&o).contains("job j is already running"), "{}", stderr(&o));
    fs::write(dir.join("go"), "").unwrap();
    let status = first.child.take().unwrap().wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(fs::read_to_string(dir.join("after")).unwrap().trim(), "ok");
    fs::remove_file(dir.join("started")).unwrap();
    fs::remove_file(dir.join("go")).unwrap();

    // stopped (SIGTERM, as the agent stops it) during its before hook: no backup starts, and
    // the after hook runs, told so
    let mut second = spawn_run();
    in_hook(&second);
    let mut c = second.child.get_mut().take().unwrap();
    let pid = rustix::process::Pid::from_child(&c);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    // the hook ends only after the signal was sent (the run waits for its hook)
    fs::write(dir.join("go"), "").unwrap();
    assert_eq!(c.wait().unwrap().code(), Some(130));
    assert_eq!(
        fs::read_to_string(dir.join("after")).unwrap().trim(),
        "interrupted"
    );
    let snaps = ok(dir, &config, &["--repo-name", "local", "snapshots", "--json"]);
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&snaps)
            .unwrap()
            .len(),
        1
    );
    let last: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("state/jobs/j.last.json")).unwrap()).unwrap();
    assert_eq!(last["result"], "interrupted");

    // a failing before hook: the backup is not made, the run fails, the after hook still runs
    write("exit 4");
    let o = run(dir, &config, &["run", "j"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("before hook exited with code 4"));
    assert_eq!(fs::read_to_string(dir.join("after")).unwrap().trim(), "failed");
}

#[test]
fn broken_configurations_stop_every_command_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = dir.join("coffer.toml");
    // each: the text, where the one line must point (line:column of the bad value), and what
    // it must say
    let r = "[repository.r]\nlocation = \"/srv/r\"\npassword_file = \"/k\"\n";
    let job = |rest: &str| format!("{r}[job.x]\npaths = [\"/etc\"]\nto = [\"r\"]\n{rest}");
    let cases: Vec<(String, &str, &str)> = vec![
        // a destination that is not declared
        ("[job.x]\npaths = [\"/etc\"]\nto = [\"nowhere\"]\n".into(), ":3:7:", "no repository \"nowhere\""),
        // a key coffer does not know
        (format!("{r}surprise = 1\n"), ":4:1:", "unknown field `surprise`"),
        // a bad cron expression
        (job("schedule = \"every night\"\n"), ":7:12:", "bad cron expression"),
        // a rate without its unit
        (job("limit_upload = \"800\"\n"), ":7:16:", "give a unit"),
        (job("limit_download = \"fast\"\n"), ":7:18:", "limit_download \"fast\""),
        // an index memory below the floor
        (job("index_memory = \"100K\"\n"), ":7:16:", "index_memory \"100K\": under 1 MiB"),
        // a bad duration
        (job("schedule = \"0 3 * * *\"\nrandom_delay = \"soon\"\n"), ":8:16:", "random_delay \"soon\""),
        // the same job twice
        (job("[job.x]\npaths = [\"/srv\"]\nto = [\"r\"]\n"), ":7:6:", "duplicate key"),
        // a time zone that is none
        (job("schedule = \"0 3 * * *\"\ntimezone = \"Mars/Olympus\"\n"), ":8:12:", "time zone \"Mars/Olympus\""),
        // a relative path
        (format!("{r}[job.x]\npaths = [\"etc\"]\nto = [\"r\"]\n"), ":5:10:", "path \"etc\" is relative"),
        // a value of the wrong type
        (format!("{r}[job.x]\npaths = \"/etc\"\nto = [\"r\"]\n"), ":5:9:", "expected a sequence"),
        // retention without a unit
        (job("[job.x.retention]\nkeep_within = \"7\"\n"), ":8:15:", "keep_within \"7\""),
        // niceness out of range
        (job("nice = 40\n"), ":7:8:", "nice 40 must be -20 to 19"),
        // what a restore asked for on the server may do, misspelled
        (
            "[repository.r]\nlocation = \"https://b.example:8443/web1\"\npassword_file = \"/k\"\n[managed]\nserver = \"r\"\nrestore = \"sometimes\"\n".into(),
            ":6:11:",
            "managed restore \"sometimes\"",
        ),
        // TOML that does not parse
        (format!("{r}[job.x]\npaths = [\"/etc\"\nto = [\"r\"]\n"), ":6:1:", "expected `,`"),
    ];
    for (text, at, says) in &cases {
        fs::write(&config, text).unwrap();
        for args in [
            &["config", "check"][..],
            &["agent"][..],
            &["run", "x"][..],
            &["--repo-name", "r", "snapshots"][..],
        ] {
            let o = run(dir, &config, args);
            let err = stderr(&o);
            assert_eq!(code(&o), 2, "{args:?} {text}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
            let want = format!("{}{at}", config.display());
            assert!(
                err.contains(&want) && err.contains(says),
                "{args:?}: {err} (want {want} and {says})"
            );
        }
    }
    // `agent install` checks the configuration first, and shows the unit with --dry-run
    let o = run(dir, &config, &["agent", "install", "--dry-run"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    fs::write(
        &config,
        "[repository.r]\nlocation = \"/srv/r\"\npassword_file = \"/k\"\n",
    )
    .unwrap();
    let units = dir.join("units");
    let shown = ok(
        dir,
        &config,
        &[
            "agent",
            "install",
            "--dry-run",
            "--unit-dir",
            units.to_str().unwrap(),
        ],
    );
    let exec = format!(
        "ExecStart={} --config {} agent",
        env!("CARGO_BIN_EXE_coffer"),
        config.display()
    );
    assert!(shown.contains(&exec), "{shown}");
    assert!(
        shown.contains("would run: systemctl enable --now coffer-agent.service"),
        "{shown}"
    );
    assert!(!units.exists(), "--dry-run wrote nothing");
    if common::require(
        !Path::new("/run/systemd/system").exists(),
        "agent install without --dry-run would start a service where systemd runs",
    ) {
        // (where systemd runs, this would start a service: only without it)
        let said = ok(
            dir,
            &config,
            &["agent", "install", "--unit-dir", units.to_str().unwrap()],
        );
        let unit = fs::read_to_string(units.join("coffer-agent.service")).unwrap();
        assert!(unit.contains(&exec) && unit.contains("KillMode=mixed"), "{unit}");
        assert!(said.contains("systemd is not running here"), "{said}");
    }

    // as root, a configuration others may write is refused (its hooks would run as root)
    if rustix::process::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&config, fs::Permissions::from_mode(0o666)).unwrap();
        let o = run(dir, &config, &["config", "check"]);
        assert_eq!(code(&o), 2, "{}", stderr(&o));
        assert!(stderr(&o).contains("writable by root only"), "{}", stderr(&o));
        fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
        // (valid; exit 1 only because the key file it names is not there)
        let o = run(dir, &config, &["config", "check"]);
        assert_eq!(code(&o), 1, "{}", stderr(&o));
        assert!(
            stderr(&o).contains("password_file /k: no such file"),
            "{}",
            stderr(&o)
        );
    }

    // `server install` likewise, with the data directory and address given
    let shown = ok(
        dir,
        &config,
        &[
            "server",
            "--data",
            dir.join("srv").to_str().unwrap(),
            "--listen",
            "0.0.0.0:8443",
            "install",
            "--dry-run",
        ],
    );
    assert!(
        shown.contains(&format!(
            "Environment=COFFER_SERVER_DATA={} COFFER_LISTEN=0.0.0.0:8443",
            dir.join("srv").display()
        )),
        "{shown}"
    );
    assert!(
        shown.contains("would run: systemctl enable --now coffer-server.service"),
        "{shown}"
    );
    assert!(!dir.join("srv").exists(), "--dry-run made nothing");

    // no configuration at all: the same
    let o = run(dir, &dir.join("missing.toml"), &["run", "x"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("missing.toml: cannot read"), "{}", stderr(&o));
}

/// The server's catalog, read as the test's witness of what reached it.
fn server_runs(server: &ServerProc, sql_where: &str) -> Vec<(String, String, String, String)> {
    let db = rusqlite::Connection::open(server.data.join("server.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut st = db
        .prepare(&format!(
            "SELECT kind, status, job, messages FROM runs WHERE client = 'web1' AND {sql_where} ORDER BY id"
        ))
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Managed jobs (issue 28 items 4 and 5): the operator sets a job on the server and the
/// agent runs it; a change of its paths is taken within one poll; a job outside the local
/// `[managed]` bounds, and one with a hook (written straight into the catalog, as a server
/// that was broken into would send it), are refused alone and reported, and never run; a run
/// asked for on the server ("back up now") starts within seconds and is reported.
#[test]
fn managed_jobs_come_from_the_server_within_local_bounds_and_run_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = dir.join("coffer.toml");
    let server = ServerProc::start(&dir.join("server"), &[]);
    let token = server.add_client("web1", "web1", "append");
    fs::write(dir.join("web1.token"), format!("{token}\n")).unwrap();
    let (www, etc, secret) = (dir.join("www"), dir.join("etc"), dir.join("secret"));
    for (d, f) in [(&www, "index.php"), (&etc, "nginx.conf"), (&secret, "shadow")] {
        fs::create_dir_all(d).unwrap();
        fs::write(d.join(f), format!("{f} of the test\n")).unwrap();
    }
    let pwned = dir.join("pwned");
    let cfg = format!(
        r#"
[agent]
host = "web1"
state_dir = "{dir}/state"

[repository.company]
location = "{url}"
password_file = "{dir}/company.key"
token_file = "{dir}/web1.token"
cacert = "{cacert}"

[managed]
server = "company"
paths = ["{www}", "{etc}"]
min_interval = "1s"

[job.localjob]
paths = ["{www}"]
to = ["company"]
before = "touch {pwned}"
"#,
        dir = dir.display(),
        url = server.url("web1"),
        cacert = server.cacert.display(),
        www = www.display(),
        etc = etc.display(),
        pwned = pwned.display(),
    );
    fs::write(&config, cfg).unwrap();
    let key = format!("{}/company.key", dir.display());
    ok(dir, &config, &["key", "generate", "-q", "-o", &key]);
    ok(dir, &config, &["--repo-name", "company", "init", "-q"]);
    let set = |job: &str, path: &Path, schedule: Option<&str>| {
        let mut args = vec![
            "client",
            "job",
            "set",
            "web1",
            job,
            "--path",
            path.to_str().unwrap(),
            "--to",
            "company",
        ];
        if let Some(s) = schedule {
            args.extend(["--schedule", s]);
        }
        server.admin_ok(&args);
    };
    let paths_of = |job: &str| -> Vec<serde_json::Value> {
        snapshots(dir, &config, "company", job)
            .into_iter()
            .map(|s| s["paths"].clone())
            .collect()
    };
    set("site", &www, Some("*/2 * * * * *"));
    // an index budget is checked as the command line is parsed: under 1 MiB is a usage error
    let w = www.to_str().unwrap();
    let base = [
        "client", "job", "set", "web1", "budget", "--path", w, "--to", "company",
    ];
    let o = server.admin(&[&base[..], &["--index-budget", "100K"]].concat());
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("under 1 MiB"));
    server.admin_ok(&[&base[..], &["--index-budget", "32M"]].concat());
    let listed: serde_json::Value =
        serde_json::from_str(&server.admin_ok(&["--json", "client", "job", "list", "web1"])).unwrap();
    let budget = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["spec"]["name"] == "budget");
    assert_eq!(budget.unwrap()["spec"]["index_memory"], "32M", "{listed}");
    server.admin_ok(&["client", "job", "remove", "web1", "budget"]);
    let agent = Agent::start(dir, &config, 1);
    wait_for(
        "a snapshot of the managed job",
        || paths_of("site").contains(&serde_json::json!([www])),
        || agent.exited(),
    );
    // the operator changes its paths on the server: taken within one poll
    set("site", &etc, Some("*/2 * * * * *"));
    wait_for(
        "a snapshot of the job's new path",
        || paths_of("site").contains(&serde_json::json!([etc])),
        || agent.exited(),
    );

    // a path outside [managed] paths: refused alone and reported (the client turns FAILED)
    set("grab", &secret, Some("*/2 * * * * *"));
    wait_for(
        "the refusal of job grab to reach the server",
        || {
            server_runs(&server, "kind = 'config' AND status = 'failed'")
                .iter()
                .any(|r| {
                    r.3.contains("managed job grab: path") && r.3.contains("is not one this machine lets")
                })
        },
        || agent.exited(),
    );
    let status = String::from_utf8_lossy(&server.admin(&["status"]).stdout).to_string();
    assert!(
        status.contains("FAILED") && status.contains("managed job grab"),
        "{status}"
    );
    // a job with a hook, as a server that was broken into would send it
    {
        let db = rusqlite::Connection::open(server.data.join("server.db")).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        let spec = serde_json::json!({
            "name": "hook", "paths": [www], "to": ["company"], "schedule": "*/2 * * * * *",
            "before": format!("touch {}", pwned.display()),
        });
        db.execute(
            "INSERT INTO jobs (client, name, spec, updated) VALUES ('web1', 'hook', ?1, 0)",
            [spec.to_string()],
        )
        .unwrap();
        db.execute_batch(
            "UPDATE job_generations SET generation = generation + 1 WHERE client = 'web1';
             UPDATE agent_seq SET seq = seq + 1;",
        )
        .unwrap();
    }
    wait_for(
        "the refusal of job hook to reach the server",
        || {
            server_runs(&server, "kind = 'config' AND status = 'failed'")
                .iter()
                .any(|r| r.3.contains("managed job hook: unknown field `before`"))
        },
        || agent.exited(),
    );
    // a path through a symlink below an allowed prefix (www/link -> secret): refused
    std::os::unix::fs::symlink(&secret, www.join("link")).unwrap();
    set("linky", &www.join("link"), Some("*/2 * * * * *"));
    wait_for(
        "the refusal of job linky to reach the server",
        || {
            server_runs(&server, "kind = 'config' AND status = 'failed'")
                .iter()
                .any(|r| r.3.contains("managed job linky: path") && r.3.contains("goes through a symlink"))
        },
        || agent.exited(),
    );
    // a local job is not the server's to start (its hook would run)
    server.admin_ok(&["client", "run", "web1", "localjob"]);
    wait_for(
        "the request for a local job to be refused",
        || {
            agent
                .log()
                .contains("\"localjob\", which is not one of its managed jobs: refused")
        },
        || agent.exited(),
    );
    // (the site job goes on meanwhile: the refusals are of the bad jobs alone)
    let n = paths_of("site").len();
    wait_for(
        "the site job to go on beside the refused ones",
        || paths_of("site").len() > n,
        || agent.exited(),
    );
    assert!(
        paths_of("grab").is_empty() && paths_of("hook").is_empty() && paths_of("linky").is_empty(),
        "a refused job ran"
    );
    assert!(paths_of("localjob").is_empty(), "the server started a local job");
    assert!(!pwned.exists(), "the server's hook ran on the client");

    // back up now: a job with no schedule runs when asked, and is reported within seconds
    server.admin_ok(&["client", "job", "remove", "web1", "grab"]);
    server.admin_ok(&["client", "job", "remove", "web1", "linky"]);
    set("ondemand", &www, None);
    wait_for(
        "the on-demand job to be taken",
        || agent.log().contains("(ondemand, site)") || agent.log().contains("(site, ondemand)"),
        || agent.exited(),
    );
    assert!(
        paths_of("ondemand").is_empty(),
        "an unscheduled job ran by itself"
    );
    let asked = Instant::now();
    server.admin_ok(&["client", "run", "web1", "ondemand"]);
    wait_for(
        "the asked-for run's report",
        || {
            server_runs(&server, "kind = 'backup' AND job = 'ondemand'")
                .iter()
                .any(|r| r.1 == "ok")
        },
        || agent.exited(),
    );
    eprintln!(
        "back up now: reported {:.1} s after it was asked for",
        asked.elapsed().as_secs_f64()
    );
    assert_eq!(paths_of("ondemand"), vec![serde_json::json!([www])]);

    // "Back up now" from the console: a real session, and the form's CSRF token
    let pw = server.admin_ok(&["operator", "add", "alice"]).trim().to_string();
    let exchange = |head: String, body: String| {
        common::server::raw_exchange(server.port, &server.cacert, &head, body.as_bytes()).expect("an answer")
    };
    let post = |path: &str, body: String, cookie: &str| {
        exchange(
            format!(
                "POST {path} HTTP/1.1\nHost: 127.0.0.1\nConnection: close\nContent-Type: application/x-www-form-urlencoded\nContent-Length: {}{cookie}",
                body.len()
            ),
            body,
        )
    };
    let (head, _) = post("/console/login", format!("name=alice&password={pw}"), "");
    let session = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: coffer_session="))
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("no session: {head}"))
        .to_string();
    let cookie = format!("\nCookie: coffer_session={session}");
    let (_, page) = exchange(
        format!("GET /console/client/web1 HTTP/1.1\nHost: 127.0.0.1\nConnection: close{cookie}"),
        String::new(),
    );
    assert!(
        page.contains("data-job=\"ondemand\"") && page.contains("Back up now"),
        "{page}"
    );
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let (head, _) = post(
        "/console/client/web1/run",
        "csrf=forged&job=ondemand".into(),
        &cookie,
    );
    assert!(head.starts_with("HTTP/1.1 403"), "a forged form: {head}");
    let asked = Instant::now();
    let (head, _) = post(
        "/console/client/web1/run",
        format!("csrf={csrf}&job=ondemand"),
        &cookie,
    );
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    wait_for(
        "the run asked for in the console to be reported",
        || {
            server_runs(&server, "kind = 'backup' AND job = 'ondemand'")
                .iter()
                .filter(|r| r.1 == "ok")
                .count()
                == 2
        },
        || agent.exited(),
    );
    eprintln!(
        "back up now (console): reported {:.1} s after the form was sent",
        asked.elapsed().as_secs_f64()
    );
    let (_, page) = exchange(
        format!("GET /console/client/web1 HTTP/1.1\nHost: 127.0.0.1\nConnection: close{cookie}"),
        String::new(),
    );
    assert!(
        page.contains("alice (console)"),
        "the request shows who asked: {page}"
    );
    // jobs added, edited and removed in the console: the agent takes what the forms set
    let get = |path: &str| {
        exchange(
            format!("GET {path} HTTP/1.1\nHost: 127.0.0.1\nConnection: close{cookie}"),
            String::new(),
        )
    };
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"/-_.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let job_form = |csrf: &str, editing: &str, name: &str, paths: &str, schedule: &str| {
        format!(
            "csrf={csrf}&editing={editing}&name={name}&paths={}&to=company&schedule={}&keep_last=\
             &limit_upload=10M&limit_download=20M&nice=10&ionice=idle&threads=&index_memory=32M",
            enc(paths),
            enc(schedule)
        )
    };
    let console_jobs = || -> Vec<serde_json::Value> {
        let out = server.admin_ok(&["--json", "client", "job", "list", "web1"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["spec"]["name"] == "console")
            .map(|j| j["spec"].clone())
            .collect()
    };
    let (head, form) = get("/console/client/web1/new-job");
    assert!(
        head.starts_with("HTTP/1.1 200") && form.contains("name=\"paths\""),
        "{head}{form}"
    );
    let every2s = "*/2 * * * * *";
    let (head, _) = post(
        "/console/client/web1/jobs",
        job_form("forged", "", "console", www.to_str().unwrap(), every2s),
        &cookie,
    );
    assert!(head.starts_with("HTTP/1.1 403"), "a forged form: {head}");
    assert!(console_jobs().is_empty(), "a forged form set a job");
    // a typo comes back in the form, with one line saying what is wrong
    for (paths, schedule, says) in [
        ("var/www", every2s, "an absolute path"),
        (www.to_str().unwrap(), "61 * * * *", "schedule \"61 * * * *\""),
    ] {
        let (head, page) = post(
            "/console/client/web1/jobs",
            job_form(&csrf, "", "console", paths, schedule),
            &cookie,
        );
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        assert!(
            page.contains("id=\"form-error\"") && page.contains(&says.replace('"', "&quot;")),
            "{says}: {page}"
        );
        assert!(
            page.contains(&format!(">{paths}</textarea>")),
            "the form keeps what was typed: {page}"
        );
    }
    assert!(console_jobs().is_empty(), "a refused form set a job");
    let (head, _) = post(
        "/console/client/web1/jobs",
        job_form(&csrf, "", "console", www.to_str().unwrap(), every2s),
        &cookie,
    );
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    let set = &console_jobs()[0];
    assert_eq!(
        (
            &set["limit_upload"],
            &set["limit_download"],
            &set["nice"],
            &set["ionice"],
            &set["threads"],
            &set["index_memory"]
        ),
        (
            &serde_json::json!("10M"),
            &serde_json::json!("20M"),
            &serde_json::json!(10),
            &serde_json::json!("idle"),
            &serde_json::Value::Null,
            &serde_json::json!("32M")
        ),
        "{set}"
    );
    wait_for(
        "a snapshot of the job added in the console",
        || paths_of("console").contains(&serde_json::json!([www])),
        || agent.exited(),
    );
    // a second "new" job of that name does not replace it
    let (head, page) = post(
        "/console/client/web1/jobs",
        job_form(&csrf, "", "console", etc.to_str().unwrap(), every2s),
        &cookie,
    );
    assert!(
        head.starts_with("HTTP/1.1 400") && page.contains("already"),
        "{head}{page}"
    );
    let (_, page) = get("/console/client/web1");
    assert!(
        page.contains("/console/client/web1/jobs/console\">Edit</a>"),
        "{page}"
    );
    let (_, form) = get("/console/client/web1/jobs/console");
    assert!(
        form.contains(&format!(">{}</textarea>", www.display())) && form.contains("readonly"),
        "{form}"
    );
    let version = form
        .split("name=\"version\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let editing = format!("console&version={version}");
    // an edit cannot rename; an edit of the paths is taken by the agent's next run
    let (head, page) = post(
        "/console/client/web1/jobs",
        job_form(&csrf, &editing, "renamed", etc.to_str().unwrap(), every2s),
        &cookie,
    );
    assert!(
        head.starts_with("HTTP/1.1 400") && page.contains("keeps its name"),
        "{head}{page}"
    );
    let (head, _) = post(
        "/console/client/web1/jobs",
        job_form(&csrf, &editing, "console", etc.to_str().unwrap(), every2s),
        &cookie,
    );
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    assert_eq!(console_jobs()[0]["paths"], serde_json::json!([etc]));
    // the same form sent again (another tab): the change made meanwhile is not undone
    let (head, page) = post(
        "/console/client/web1/jobs",
        job_form(&csrf, &editing, "console", www.to_str().unwrap(), every2s),
        &cookie,
    );
    assert!(
        head.starts_with("HTTP/1.1 400") && page.contains("changed by someone else"),
        "{head}{page}"
    );
    assert_eq!(console_jobs()[0]["paths"], serde_json::json!([etc]));
    wait_for(
        "a snapshot of the path edited in the console",
        || paths_of("console").contains(&serde_json::json!([etc])),
        || agent.exited(),
    );
    // removal needs its box ticked, and the token
    let (head, _) = post(
        "/console/client/web1/jobs/console/remove",
        format!("csrf={csrf}"),
        &cookie,
    );
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let (head, _) = post(
        "/console/client/web1/jobs/console/remove",
        "csrf=forged&confirm=yes".into(),
        &cookie,
    );
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(console_jobs().len(), 1, "kept until confirmed with the token");
    let (head, _) = post(
        "/console/client/web1/jobs/console/remove",
        format!("csrf={csrf}&confirm=yes"),
        &cookie,
    );
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    assert!(console_jobs().is_empty());
    assert!(
        server
            .admin_ok(&["client", "job", "list", "web1"])
            .contains("ondemand"),
        "the other jobs stay"
    );
    // a read token (for restores) neither sees the jobs nor takes the runs asked for
    let reader = server.add_client("reader", "web1", "read");
    let r = server.raw(
        &format!(
            "GET /web1/agent?since=-1 HTTP/1.1\nHost: x\nAuthorization: Bearer {reader}\nConnection: close"
        ),
        b"",
    );
    assert!(matches!(r, Some((403, _))), "{r:?}");
    drop(agent);
    let o = run(dir, &config, &["--repo-name", "company", "check"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn managed_jobs_go_on_after_a_restart_while_the_server_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = dir.join("coffer.toml");
    let mut server = ServerProc::start(&dir.join("server"), &[]);
    let token = server.add_client("web1", "web1", "append");
    fs::write(dir.join("web1.token"), format!("{token}\n")).unwrap();
    let www = dir.join("www");
    fs::create_dir_all(&www).unwrap();
    fs::write(www.join("index.php"), "<?php echo 1;\n").unwrap();
    let cfg = format!(
        r#"
[agent]
host = "web1"
state_dir = "{dir}/state"

[repository.company]
location = "{url}"
password_file = "{dir}/company.key"
token_file = "{dir}/web1.token"
cacert = "{cacert}"

[repository.local]
location = "{dir}/local-repo"
password_file = "{dir}/company.key"

[managed]
server = "company"
paths = ["{www}"]
to = ["company", "local"]
min_interval = "1s"
"#,
        dir = dir.display(),
        url = server.url("web1"),
        cacert = server.cacert.display(),
        www = www.display(),
    );
    fs::write(&config, cfg).unwrap();
    let key = format!("{}/company.key", dir.display());
    ok(dir, &config, &["key", "generate", "-q", "-o", &key]);
    ok(dir, &config, &["--repo-name", "company", "init", "-q"]);
    ok(dir, &config, &["--repo-name", "local", "init", "-q"]);
    server.admin_ok(&[
        "client",
        "job",
        "set",
        "web1",
        "site",
        "--path",
        www.to_str().unwrap(),
        "--to",
        "company",
        "--to",
        "local",
        "--schedule",
        "*/2 * * * * *",
    ]);
    let mut agent = Agent::start(dir, &config, 1);
    wait_for(
        "a snapshot of the managed job",
        || !snapshots(dir, &config, "local", "site").is_empty(),
        || agent.exited(),
    );
    assert_eq!(agent.stop(), 0, "{}", agent.log());
    assert!(dir.join("state/managed-jobs.json").exists());

    // the server goes away; the agent restarts and runs what it took last
    server.kill9();
    let before = snapshots(dir, &config, "local", "site").len();
    let agent = Agent::start(dir, &config, 2);
    wait_for(
        "a snapshot made with the server down",
        || snapshots(dir, &config, "local", "site").len() > before,
        || agent.exited(),
    );
    assert!(
        agent
            .log()
            .contains("kept from the last answer): 1 taken, 0 refused"),
        "{}",
        agent.log()
    );
    drop(agent);

    // jobs kept from another server are not taken up
    let cfg = fs::read_to_string(&config)
        .unwrap()
        .replace(&server.url("web1"), "https://127.0.0.1:1/elsewhere");
    fs::write(&config, cfg).unwrap();
    let agent = Agent::start(dir, &config, 3);
    wait_for(
        "the agent to start",
        || agent.log().contains("started:"),
        || agent.exited(),
    );
    assert!(
        !agent.log().contains("kept from the last answer"),
        "{}",
        agent.log()
    );
}
