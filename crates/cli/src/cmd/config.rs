//! `coffer config check`: read the configuration as the agent would, and print what it
//! resolves to: repositories (secrets as their sources only), jobs, and when each runs next.
//! Exit 2 for a configuration that does not parse or check (one line: file:line:column),
//! 1 when it is valid but names a file that is not there (a password or token file, a CA
//! certificate), 0 otherwise.

use std::path::Path;

use anyhow::{Context, Result};
use chrono::Utc;
use coffer_agent::{show, Config};
use serde::Serialize;

use super::{job, outln, print_json};
use crate::cli::Global;
use crate::ui::bytes;
use std::io::Write;

#[derive(Serialize)]
struct RepoOut {
    name: String,
    location: String,
    /// `file /etc/coffer/x.key` or `command` (the command itself is not shown)
    password: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_file: Option<String>,
}

#[derive(Serialize)]
struct JobOut {
    name: String,
    paths: Vec<String>,
    databases: Vec<String>,
    to: Vec<String>,
    schedule: Option<String>,
    /// RFC 3339, UTC
    next_run: Option<String>,
    retention_on: Vec<String>,
    check_schedule: Option<String>,
    next_check: Option<String>,
    drill_schedule: Option<String>,
    next_drill: Option<String>,
    /// What the job may take of the machine: threads, nice, ionice, upload rate (bytes/s)
    limits: LimitsOut,
}

#[derive(Serialize)]
struct LimitsOut {
    threads: Option<usize>,
    nice: Option<i32>,
    ionice: Option<String>,
    upload_bytes_per_sec: Option<u64>,
    download_bytes_per_sec: Option<u64>,
}

impl LimitsOut {
    /// `threads 2, nice 10, ionice idle, upload 10.0 MiB/s`, or `None` for no limit.
    fn line(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(t) = self.threads {
            parts.push(format!("threads {t}"));
        }
        if let Some(n) = self.nice {
            parts.push(format!("nice {n}"));
        }
        if let Some(c) = &self.ionice {
            parts.push(format!("ionice {c}"));
        }
        if let Some(r) = self.upload_bytes_per_sec {
            parts.push(format!("upload {}/s", bytes(r)));
        }
        if let Some(r) = self.download_bytes_per_sec {
            parts.push(format!("download {}/s", bytes(r)));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

#[derive(Serialize)]
struct ConfigOut {
    path: String,
    host: String,
    state_dir: String,
    repositories: Vec<RepoOut>,
    jobs: Vec<JobOut>,
    sites: Vec<SiteOut>,
    problems: Vec<String>,
}

/// A `[site.NAME]` (what `restore-site NAME` restores).
#[derive(Serialize)]
struct SiteOut {
    name: String,
    paths: Vec<String>,
    mysql: Vec<String>,
    postgres: Vec<String>,
}

/// Files the configuration names that are not there.
fn missing_files(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut need = |what: String, p: &Path| {
        if !p.exists() {
            out.push(format!("{what} {}: no such file", p.display()));
        }
    };
    for r in cfg.repositories.values() {
        let files = [
            ("password_file", &r.password_file),
            ("token_file", &r.token_file),
            ("cacert", &r.cacert),
            ("aws_credentials_file", &r.aws_credentials_file),
        ];
        for (what, f) in files {
            if let Some(f) = f {
                need(format!("repository {}: {what}", r.name), f);
            }
        }
    }
    for j in cfg.jobs.values() {
        for f in &j.exclude_file {
            need(format!("job {}: exclude_file", j.name), f);
        }
        if let Some(f) = &j.db.mysql_defaults_file {
            need(format!("job {}: mysql_defaults_file", j.name), f);
        }
    }
    out
}

pub fn check(g: &Global) -> Result<u8> {
    let cfg = job::load(g)?;
    let host = job::host(&cfg);
    let now = Utc::now();
    let out = ConfigOut {
        path: cfg.path.display().to_string(),
        host: host.clone(),
        state_dir: cfg.state_dir.display().to_string(),
        repositories: cfg
            .repositories
            .values()
            .map(|r| RepoOut {
                name: r.name.clone(),
                location: r.location.clone(),
                password: match (&r.password_file, &r.password_command) {
                    (Some(f), _) => format!("file {}", f.display()),
                    (None, Some(_)) => "command".into(),
                    (None, None) => "none".into(),
                },
                token_file: r.token_file.as_ref().map(|t| t.display().to_string()),
            })
            .collect(),
        jobs: cfg
            .jobs
            .values()
            .map(|j| {
                let mut databases = Vec::new();
                if let Some(m) = &j.mysql {
                    databases.push(format!("mysql {}", m.as_arg()));
                }
                if let Some(p) = &j.postgres {
                    databases.push(format!("postgres {}", p.as_arg()));
                }
                databases.extend(j.sqlite.iter().map(|s| format!("sqlite {}", s.display())));
                let next = |s: &coffer_agent::Schedule| s.next_after(now, s.delay_for(&host, &j.name));
                JobOut {
                    name: j.name.clone(),
                    paths: j.paths.iter().map(|p| p.display().to_string()).collect(),
                    databases,
                    to: j.to.clone(),
                    schedule: j.schedule.as_ref().map(|s| s.to_string()),
                    next_run: j.schedule.as_ref().and_then(next).map(|t| t.to_rfc3339()),
                    retention_on: j.retention.as_ref().map(|r| r.on.clone()).unwrap_or_default(),
                    check_schedule: j.check.as_ref().map(|c| c.schedule.to_string()),
                    next_check: j
                        .check
                        .as_ref()
                        .and_then(|c| next(&c.schedule))
                        .map(|t| t.to_rfc3339()),
                    drill_schedule: j.drill.as_ref().map(|d| d.schedule.to_string()),
                    next_drill: j
                        .drill
                        .as_ref()
                        .and_then(|d| next(&d.schedule))
                        .map(|t| t.to_rfc3339()),
                    limits: LimitsOut {
                        threads: (j.limits.threads > 0).then_some(j.limits.threads),
                        nice: j.limits.nice,
                        ionice: j.limits.ionice.map(|c| c.to_string()),
                        upload_bytes_per_sec: j.limits.upload,
                        download_bytes_per_sec: j.limits.download,
                    },
                }
            })
            .collect(),
        sites: cfg
            .sites
            .values()
            .map(|s| SiteOut {
                name: s.name.clone(),
                paths: s.paths.iter().map(|p| p.display().to_string()).collect(),
                mysql: s.mysql.clone(),
                postgres: s.postgres.clone(),
            })
            .collect(),
        problems: missing_files(&cfg),
    };
    let code = u8::from(!out.problems.is_empty());
    if g.json {
        print_json(&out)?;
        return Ok(code);
    }
    outln!("{}: valid", out.path)?;
    outln!("host {}, state in {}", out.host, out.state_dir)?;
    for r in &out.repositories {
        outln!("repository {}: {} (password: {})", r.name, r.location, r.password)?;
    }
    for j in cfg.jobs.values() {
        let o = out.jobs.iter().find(|o| o.name == j.name);
        outln!("job {}:", j.name)?;
        if let Some(o) = o {
            if !o.paths.is_empty() {
                outln!("  paths      {}", o.paths.join(" "))?;
            }
            if !o.databases.is_empty() {
                outln!("  databases  {}", o.databases.join(", "))?;
            }
            outln!("  to         {}", o.to.join(", "))?;
            if let Some(l) = o.limits.line() {
                outln!("  limits     {l}")?;
            }
        }
        match &j.schedule {
            Some(s) => {
                let next = s.next_after(now, s.delay_for(&host, &j.name));
                outln!(
                    "  schedule   {s}; next run {}",
                    next.map_or("never".into(), |t| show(t, s.zone()))
                )?;
            }
            None => outln!("  schedule   none (runs only by `coffer run {}`)", j.name)?,
        }
        if let Some(r) = &j.retention {
            outln!(
                "  retention  on {}{}",
                if r.on.is_empty() {
                    "no repository".to_string()
                } else {
                    r.on.join(", ")
                },
                if r.prune { ", then prune" } else { "" }
            )?;
        }
        if let Some(c) = &j.check {
            let next = c.schedule.next_after(now, c.schedule.delay_for(&host, &j.name));
            outln!(
                "  check      {} on {}; next {}",
                c.read_data_subset
                    .as_deref()
                    .map_or("structure".to_string(), |s| format!(
                        "structure and {s} of the data"
                    )),
                c.on.join(", "),
                next.map_or("never".into(), |t| show(t, c.schedule.zone()))
            )?;
        }
        if let Some(d) = &j.drill {
            let next = d.schedule.next_after(now, d.schedule.delay_for(&host, &j.name));
            outln!(
                "  drill      {} files and every database, on {}; next {}",
                d.files,
                d.on.join(", "),
                next.map_or("never".into(), |t| show(t, d.schedule.zone()))
            )?;
        }
    }
    for s in &out.sites {
        let dbs: Vec<String> = (s.mysql.iter().map(|d| format!("mysql/{d}")))
            .chain(s.postgres.iter().map(|d| format!("postgres/{d}")))
            .collect();
        outln!(
            "site {}: {}{}{}",
            s.name,
            s.paths.join(" "),
            if s.paths.is_empty() || dbs.is_empty() {
                ""
            } else {
                " + "
            },
            dbs.join(", ")
        )?;
    }
    for p in &out.problems {
        eprintln!("coffer: problem: {p}");
    }
    Ok(code)
}
