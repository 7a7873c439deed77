//! `coffer server client job set|list|remove` and `coffer server client run`: managed jobs
//! and "back up now", set on the server for a client's agent to take with its next poll.

use std::io::Write;

use anyhow::{Context, Result};
use coffer_server::Server;
use coffer_wire::{CheckSpec, JobSpec, RetentionSpec};

use crate::cli::{Global, ServerJobCommand};
use crate::cmd::{outln, print_json};

fn known_client(server: &Server, name: &str) -> Result<()> {
    if server.catalog.client(name)?.is_none() {
        return Err(
            coffer_core::Error::Usage(format!("no client {name:?} (coffer server client list)")).into(),
        );
    }
    Ok(())
}

fn databases(v: Option<String>) -> Option<Vec<String>> {
    v.map(|s| {
        s.split(',')
            .map(|d| d.trim().to_string())
            .filter(|d| !d.is_empty())
            .collect()
    })
}

pub fn job(server: &Server, c: ServerJobCommand, g: &Global) -> Result<u8> {
    match c {
        ServerJobCommand::Set(a) => {
            let crate::cli::ServerJobSetArgs {
                client,
                job,
                paths,
                to,
                exclude,
                exclude_caches,
                one_file_system,
                tags,
                mysql,
                postgres,
                schedule,
                timezone,
                random_delay,
                keep_last,
                keep_daily,
                keep_weekly,
                keep_monthly,
                keep_yearly,
                check_schedule,
                read_data_subset,
                upload_limit,
                download_limit,
                nice,
                ionice,
                threads,
                index_budget,
            } = *a;
            known_client(server, &client)?;
            let keeps = [keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly];
            let spec = JobSpec {
                name: job.clone(),
                paths,
                exclude,
                exclude_caches,
                one_file_system,
                tags,
                mysql: databases(mysql),
                postgres: databases(postgres),
                to,
                schedule,
                timezone,
                random_delay,
                retention: keeps.iter().any(Option::is_some).then_some(RetentionSpec {
                    keep_last,
                    keep_daily,
                    keep_weekly,
                    keep_monthly,
                    keep_yearly,
                    ..Default::default()
                }),
                check: check_schedule.map(|schedule| CheckSpec {
                    schedule,
                    read_data_subset,
                }),
                limit_upload: upload_limit,
                limit_download: download_limit,
                nice,
                ionice,
                threads,
                index_memory: index_budget,
            };
            server
                .catalog
                .set_job(&client, &spec, server.now())
                .map_err(|e| coffer_core::Error::Usage(e.to_string()))?;
            if !g.quiet {
                eprintln!(
                    "job {job:?} of client {client:?} set; its agent takes it with its next poll (within seconds) \
                     and reports it if its [managed] section refuses it"
                );
            }
        }
        ServerJobCommand::List { client } => {
            known_client(server, &client)?;
            let (generation, jobs) = server.catalog.jobs(&client)?;
            if g.json {
                print_json(&serde_json::json!({ "generation": generation, "jobs": jobs }))?;
            } else {
                for j in jobs {
                    outln!(
                        "{:<16} {:<20} to {:<16} {}",
                        j.spec.name,
                        j.spec.schedule.as_deref().unwrap_or("(on request)"),
                        j.spec.to.join(","),
                        j.spec.paths.join(" ")
                    )?;
                }
            }
        }
        ServerJobCommand::Remove { client, job } => {
            known_client(server, &client)?;
            if !server.catalog.remove_job(&client, &job)? {
                return Err(coffer_core::Error::Usage(format!(
                    "client {client:?} has no managed job {job:?}"
                ))
                .into());
            }
            if !g.quiet {
                eprintln!("job {job:?} of client {client:?} removed; its agent drops it with its next poll");
            }
        }
    }
    Ok(0)
}

pub fn run(server: &Server, client: &str, job: &str, check: bool, g: &Global) -> Result<u8> {
    known_client(server, client)?;
    let by = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .map(|u| format!("{u} (command line)"))
        .unwrap_or_else(|_| "command line".into());
    let id = server
        .catalog
        .request_run(client, job, check, &by, server.now())
        .map_err(|e| coffer_core::Error::Usage(e.to_string()))?;
    if !g.quiet {
        eprintln!(
            "asked client {client:?} to run {}{job:?} now (request {id}); its agent starts it within seconds and reports it",
            if check { "the check of " } else { "" }
        );
    }
    Ok(0)
}
