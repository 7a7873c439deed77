//! The configuration file: a good one resolves to what it says; each broken one is refused
//! with one line naming the file, line and column of the mistake.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use coffer_agent::{Config, ConfigError, Databases, IoClass};

const GOOD: &str = r#"
[agent]
host = "web1"
state_dir = "/var/lib/coffer-test"

[repository.company]
location = "https://backup.example.net:8443/web1"
password_file = "/etc/coffer/company.key"
token_file = "/etc/coffer/company.token"
cacert = "/etc/coffer/company-ca.pem"

[repository.offsite]
location = "s3:https://s3.example.com/bucket/web1"
password_command = "cat /etc/coffer/offsite.key"
aws_profile = "offsite"
aws_credentials_file = "/etc/coffer/aws-credentials"
report_to = "https://backup.example.net:8443/web1"

[job.nightly]
paths = ["/etc", "/var/www"]
exclude = ["*.tmp", "/var/www/*/cache"]
one_file_system = true
mysql = "all"
mysql_users = true
postgres = ["app", "crm"]
to = ["company", "offsite"]
schedule = "30 2 * * *"
timezone = "Europe/Paris"
random_delay = "30min"
nice = 10
ionice = "idle"
before = "systemctl is-active mariadb"

[job.nightly.retention]
keep_daily = 7
keep_weekly = 4

[job.nightly.check]
schedule = "0 4 * * 0"
read_data_subset = "5%"
"#;

#[test]
fn a_good_config_says_what_it_means() {
    let c = Config::parse(Path::new("/etc/coffer/coffer.toml"), GOOD).unwrap();
    assert_eq!(c.host.as_deref(), Some("web1"));
    assert_eq!(c.state_dir, Path::new("/var/lib/coffer-test"));
    let j = c.job("nightly").unwrap();
    assert_eq!(j.to, ["company", "offsite"]);
    assert_eq!(j.mysql, Some(Databases::All));
    assert_eq!(
        j.postgres,
        Some(Databases::Named(vec!["app".into(), "crm".into()]))
    );
    assert_eq!(j.limits.ionice, Some(IoClass::Idle));
    assert_eq!(j.limits.nice, Some(10));
    assert_eq!(j.tag(), "job:nightly");
    let s = j.schedule.as_ref().unwrap();
    assert_eq!(s.expr(), "30 2 * * *");
    assert_eq!(s.random_delay(), std::time::Duration::from_secs(1800));
    // retention applies by default where the client may prune: not on the coffer server,
    // which keeps its own policy
    assert_eq!(j.retention.as_ref().unwrap().on, ["offsite"]);
    assert!(j.retention.as_ref().unwrap().prune);
    assert_eq!(j.check.as_ref().unwrap().on, ["company", "offsite"]);
    assert!(c.repository("company").unwrap().is_server());
    // Debug never shows a password command (it may hold a secret)
    let dbg = format!("{:?}", c.repository("offsite").unwrap());
    assert!(!dbg.contains("offsite.key"), "{dbg}");
    assert!(c.job("weekly").unwrap_err().to_string().contains("jobs: nightly"));
}

/// Replace `from` in the good config by `to`, and return the error.
fn broken(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    let text = GOOD.replacen(from, to, 1);
    match Config::parse(Path::new("/etc/coffer/coffer.toml"), &text) {
        Ok(_) => panic!("accepted: {from} -> {to}"),
        Err(e @ ConfigError::At { .. }) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "one line: {msg}");
            msg
        }
        Err(e) => panic!("no position for {from} -> {to}: {e}"),
    }
}

fn line_of(needle: &str) -> usize {
    GOOD.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn broken_configs_name_the_place_and_the_mistake() {
    let cases: &[(&str, &str, usize, &str)] = &[
        // (replace, with, line, message contains)
        (
            "one_file_system = true",
            "one_filesystem = true",
            line_of("one_file_system"),
            "unknown field `one_filesystem`",
        ),
        (
            "schedule = \"30 2 * * *\"",
            "schedule = \"30 25 * * *\"",
            line_of("schedule = \"30 2"),
            "bad cron expression",
        ),
        (
            "to = [\"company\", \"offsite\"]",
            "to = [\"company\", \"ofsite\"]",
            line_of("to = ["),
            "no repository \"ofsite\" is declared",
        ),
        (
            "random_delay = \"30min\"",
            "random_delay = \"30 parsecs\"",
            line_of("random_delay"),
            "random_delay",
        ),
        (
            "[job.nightly.retention]",
            "[job.nightly]\n[job.nightly.retention]",
            line_of("[job.nightly.retention]"),
            "duplicate key",
        ),
        (
            "timezone = \"Europe/Paris\"",
            "timezone = \"Europe/Pariss\"",
            line_of("timezone"),
            "tz database",
        ),
        ("nice = 10", "nice = 40", line_of("nice = 10"), "-20 to 19"),
        (
            "paths = [\"/etc\", \"/var/www\"]",
            "paths = [\"etc\", \"/var/www\"]",
            line_of("paths = ["),
            "is relative",
        ),
        (
            "keep_weekly = 4",
            "keep_weekly = -4",
            line_of("keep_weekly"),
            "keep_weekly",
        ),
        (
            "read_data_subset = \"5%\"",
            "read_data_subset = \"500%\"",
            line_of("read_data_subset"),
            "read_data_subset",
        ),
        (
            "mysql = \"all\"",
            "mysql = \"shop\"",
            line_of("mysql = \"all\""),
            "write \"all\", or the names as a list",
        ),
        (
            "ionice = \"idle\"",
            "ionice = \"low\"",
            line_of("ionice"),
            "I/O class",
        ),
        (
            "location = \"s3:https://s3.example.com/bucket/web1\"",
            "location = \"backups/web1\"",
            line_of("location = \"s3:https"),
            "absolute path",
        ),
        (
            "password_file = \"/etc/coffer/company.key\"",
            "",
            line_of("location = \"https://backup"),
            "no password_file or password_command",
        ),
        (
            "keep_daily = 7\nkeep_weekly = 4",
            "prune = true",
            line_of("[job.nightly.retention]"),
            "keeps nothing",
        ),
        (
            "exclude = [\"*.tmp\"",
            "exclude = [\"[*.tmp\"",
            line_of("exclude = ["),
            "exclude",
        ),
        (
            "[repository.company]",
            "[repository.\"com pany\"]",
            line_of("[repository.company]"),
            "repository name",
        ),
        (
            "keep_daily = 7\nkeep_weekly = 4",
            "keep_within = \"0\"",
            line_of("keep_daily"),
            "keeps nothing",
        ),
        (
            "postgres = [\"app\", \"crm\"]",
            "pg_user = \"app\"",
            line_of("[job.nightly]"),
            "pg_* settings without postgres",
        ),
    ];
    for (from, to, line, says) in cases {
        let msg = broken(from, to);
        let want = format!("/etc/coffer/coffer.toml:{line}:");
        assert!(msg.starts_with(&want), "{from} -> {to}: {msg} (want line {line})");
        assert!(msg.contains(says), "{from} -> {to}: {msg} (want {says:?})");
    }
}

#[test]
fn not_toml_at_all() {
    let e = Config::parse(Path::new("c.toml"), "[job.x\npaths = 1")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("c.toml:1:"), "{e}");
    let e = Config::load(Path::new("/nonexistent/coffer.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/coffer.toml: cannot read"), "{e}");
}

#[test]
fn the_shipped_example_is_valid() {
    let text = include_str!("../../../packaging/coffer.toml.example");
    let c = Config::parse(Path::new("coffer.toml.example"), text).unwrap();
    assert_eq!(c.job("nightly").unwrap().to, ["company", "offsite"]);
}
