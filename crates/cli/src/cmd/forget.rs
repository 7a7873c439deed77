//! `coffer forget`: remove snapshots by id or by retention policy. Data is freed by prune.

use std::io::Write;

use anyhow::{bail, Context, Result};
use coffer_core::forget::{apply_grouped, parse_duration, Decision, GroupBy, KeepPolicy};
use coffer_core::format::SnapshotId;
use coffer_core::FileKind;
use serde_json::json;

use super::{open, outln, print_json};
use crate::cli::{ForgetArgs, Global};
use crate::ui::local_time;

fn policy(a: &ForgetArgs) -> Result<KeepPolicy> {
    Ok(KeepPolicy {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
        within: a.keep_within.as_deref().map(parse_duration).transpose()?,
        tags: a
            .keep_tag
            .iter()
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(String::from)
                    .collect()
            })
            .collect(),
    })
}

/// Why a job's retention must wait, if it must: the coffer server this run reports to has an
/// ANOMALY for the client that nobody acknowledged (files encrypted in place: each night of
/// retention would push a good version out), or it cannot be asked (a night without
/// retention costs some storage; one with it, after an attack, costs a good version). No
/// server to report to, or one too old to know the question: no hold.
fn held(g: &Global) -> Option<String> {
    let url = crate::report::target(g)?;
    let answer = crate::report::rest(g, &url).and_then(|b| b.retention_hold().map_err(|e| e.to_string()));
    match answer {
        Ok(None) => None,
        Ok(Some(bytes)) => match serde_json::from_slice::<coffer_wire::RetentionHold>(&bytes) {
            Ok(h) if h.held => Some(format!(
                "the server holds this client's retention for an ANOMALY nobody has acknowledged ({}); \
                 once an operator has looked, `coffer server client ack CLIENT` lets it run",
                h.reason.escape_debug()
            )),
            Ok(_) => None,
            Err(e) => Some(format!(
                "the server's answer about retention holds does not parse ({e})"
            )),
        },
        Err(e) => Some(format!(
            "the server could not be asked whether retention is held ({})",
            e.escape_debug()
        )),
    }
}

fn print_list(title: &str, list: &[&Decision]) -> Result<()> {
    if list.is_empty() {
        return Ok(());
    }
    outln!("{title} {} snapshots:", list.len())?;
    for d in list {
        outln!(
            "  {}  {}  {}",
            d.id.short(),
            local_time(&d.time),
            d.reasons.join(", ")
        )?;
    }
    Ok(())
}

pub fn run(g: &Global, a: ForgetArgs) -> Result<u8> {
    let repo = open(g)?;
    let mut remove: Vec<SnapshotId> = Vec::new();
    if !a.snapshots.is_empty() {
        for s in &a.snapshots {
            // forgetting by a prefix of one or two digits is too easy to get wrong
            if s != "latest" && s.len() < 4 {
                return Err(coffer_core::Error::Usage(format!(
                    "snapshot {s:?}: give at least 4 digits of the id to forget it"
                ))
                .into());
            }
            remove.push(repo.find_snapshot(s)?.0);
        }
        if g.json {
            print_json(&json!({"remove": remove.iter().map(|i| i.to_hex()).collect::<Vec<_>>()}))?;
        }
    } else {
        let pol = policy(&a)?;
        if pol.is_empty() {
            bail!("no policy given: use --keep-last, --keep-daily, ... or name snapshots to remove (nothing was removed)");
        }
        let by: GroupBy = a.group_by.parse()?;
        let mut snaps = repo.list_snapshots()?;
        snaps.retain(|(_, s)| a.filter.matches(s));
        let groups = apply_grouped(&snaps, &pol, by);
        if g.json {
            print_json(&groups)?;
        }
        for grp in &groups {
            let (keep, rm): (Vec<&Decision>, Vec<&Decision>) = grp.snapshots.iter().partition(|d| d.keep);
            if !g.json && !g.quiet {
                let mut label = Vec::new();
                if let Some(h) = &grp.group.host {
                    label.push(format!("host {h}"));
                }
                if let Some(p) = &grp.group.paths {
                    label.push(format!("paths {}", p.join(" ")));
                }
                if let Some(t) = &grp.group.tags {
                    label.push(format!("tags {}", t.join(",")));
                }
                outln!(
                    "snapshots of {}:",
                    if label.is_empty() {
                        "all".to_string()
                    } else {
                        label.join(", ")
                    }
                )?;
                print_list("keep", &keep)?;
                print_list("remove", &rm)?;
            }
            remove.extend(rm.iter().map(|d| d.id));
        }
    }
    // a job's retention waits while its server holds it (see `held`)
    let hold = if a.job.is_some() && !remove.is_empty() {
        held(g)
    } else {
        None
    };
    if a.dry_run {
        if !g.json && !g.quiet {
            outln!("dry run: {} snapshots would be removed", remove.len())?;
            if let Some(h) = &hold {
                outln!("retention held: {h}: a run now would remove nothing")?;
            }
        }
        return Ok(0);
    }
    if let Some(h) = hold {
        let msg = format!("nothing forgotten: {h}");
        eprintln!("coffer: warning: {msg}");
        crate::report::warning(&msg);
        return Ok(crate::EXIT_INCOMPLETE);
    }
    let mut locked = 0usize;
    for id in &remove {
        match repo.backend().remove(FileKind::Snapshot, &id.to_hex()) {
            Err(e) if e.locked_until().is_some() => {
                // S3 Object Lock: the snapshot stays; a later forget removes it
                locked += 1;
                eprintln!(
                    "warning: snapshot {} is locked until {} (S3 Object Lock): kept; forget it after that",
                    id.short(),
                    e.locked_until().unwrap_or_default()
                );
            }
            r => r.with_context(|| format!("removing snapshot {}", id.short()))?,
        }
    }
    if !g.json && !g.quiet {
        outln!("removed {} snapshots", remove.len() - locked)?;
    }
    // what this client removed on purpose is no rollback to warn about later
    if let Ok((after, bad)) = repo.list_snapshots_readable() {
        if bad.is_empty() {
            super::watch_rollback(&repo, &after, &remove);
        }
    }
    // the policy not carried out in full exits 3, like a backup that missed files
    let done = if locked > 0 { crate::EXIT_INCOMPLETE } else { 0 };
    if a.prune {
        let pa = crate::cli::PruneArgs {
            max_unused: "5%".into(),
            grace: "0h".into(),
            dry_run: false,
        };
        drop(repo);
        let pruned = super::prune(g, &pa)?;
        return Ok(pruned.max(done));
    }
    Ok(done)
}
