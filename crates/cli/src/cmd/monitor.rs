//! `coffer server status|digest|alerts|operator` and `client expect`: the monitoring side of
//! the server, from its command line.

use std::io::Write;

use anyhow::{bail, Context, Result};
use coffer_server::monitor::{self, fmt_time, State};
use coffer_server::notify::{self, SmtpSettings};
use coffer_server::Server;

use crate::cli::{Global, ServerAlertsCommand, ServerAlertsSetArgs, ServerOperatorCommand};
use crate::cmd::{outln, print_json};
use crate::ui::bytes;

pub fn expect(server: &Server, name: &str, schedule: &str, grace: &str, g: &Global) -> Result<u8> {
    if server.catalog.client(name)?.is_none() {
        bail!("no client {name:?} (coffer server client list)");
    }
    if schedule == "none" {
        server.catalog.set_schedule(name, None, 0, server.now())?;
        if !g.quiet {
            eprintln!("client {name:?}: no schedule; the server no longer expects its backups");
        }
        return Ok(0);
    }
    let cron = monitor::parse_schedule(schedule)?;
    let grace = super::server::duration(grace, "--grace")?.as_secs() as i64;
    server
        .catalog
        .set_schedule(name, Some(schedule), grace, server.now())?;
    if !g.quiet {
        let next = cron
            .find_next_occurrence(
                &chrono::DateTime::from_timestamp(server.now(), 0).unwrap_or_default(),
                false,
            )
            .map(|t| fmt_time(t.timestamp()))
            .unwrap_or_else(|_| "never".into());
        eprintln!(
            "client {name:?}: backups expected at \"{schedule}\" (UTC; next {next}), overdue {} after",
            coffer_core::duration::format(std::time::Duration::from_secs(grace.max(0) as u64))
        );
    }
    Ok(0)
}

/// `server status` exit codes, as monitoring plugins use them.
pub const STATUS_OK: u8 = 0;
pub const STATUS_WARNING: u8 = 1;
pub const STATUS_CRITICAL: u8 = 2;
pub const STATUS_UNKNOWN: u8 = 3;

/// The monitoring-plugin code of a fleet: its worst client decides; no client is UNKNOWN.
fn status_code(fleet: &[monitor::ClientStatus]) -> u8 {
    fleet
        .iter()
        .map(|c| match c.state {
            State::Anomaly | State::Failed | State::Overdue => STATUS_CRITICAL,
            State::Warning | State::Waiting => STATUS_WARNING,
            State::Ok => STATUS_OK,
        })
        .max()
        .unwrap_or(STATUS_UNKNOWN)
}

pub fn status(server: &Server, g: &Global) -> Result<u8> {
    let fleet = monitor::fleet(server, server.now())?;
    let code = status_code(&fleet);
    if g.json {
        print_json(&fleet)?;
        return Ok(code);
    }
    if fleet.is_empty() {
        outln!("coffer UNKNOWN: no clients are monitored (`coffer server client add`)")?;
        return Ok(code);
    }
    outln!("{}", monitor::digest_subject(&fleet))?;
    for c in &fleet {
        outln!(
            "{:<24} {:<14} last good {:<22} next {:<22} {:>10}  {}",
            c.client.name,
            c.state.label(),
            c.last_good_time(),
            c.next_expected.map(fmt_time).unwrap_or_else(|| "-".into()),
            bytes(c.repo_bytes),
            c.problem_text()
        )?;
    }
    Ok(code)
}

/// A runtime for webhook deliveries from the command line.
fn deliver_now(server: &Server) -> Result<usize> {
    // A worker thread drives the requests: `deliver` waits on them through the handle, which
    // on a current-thread runtime nothing would drive (it hung for good with a webhook set).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    Ok(notify::deliver(server, rt.handle())?)
}

pub fn digest(server: &Server, send: bool, g: &Global) -> Result<u8> {
    let now = server.now();
    let (subject, body) = monitor::digest(server, now)?;
    if send {
        let settings = notify::load(&server.catalog)?;
        notify::digest(server, &settings, &subject, &body, now)?;
        let n = deliver_now(server)?;
        if !g.quiet {
            eprintln!("digest queued; {n} message(s) delivered now");
        }
    }
    outln!("Subject: {subject}\n")?;
    outln!("{body}")?;
    Ok(0)
}

pub fn alerts(server: &Server, c: ServerAlertsCommand, g: &Global) -> Result<u8> {
    match c {
        ServerAlertsCommand::Show => {
            let s = notify::load(&server.catalog)?;
            let pw = notify::smtp_password(&server.catalog)?.is_some();
            let mut v = serde_json::to_value(&s)?;
            v["smtp_password"] = serde_json::Value::String(if pw { "(set)" } else { "(none)" }.into());
            if g.json {
                print_json(&v)?;
            } else {
                outln!("{}", serde_json::to_string_pretty(&v)?)?;
            }
        }
        ServerAlertsCommand::Set(a) => alerts_set(server, *a)?,
        ServerAlertsCommand::Test => {
            let s = notify::load(&server.catalog)?;
            if s.smtp.is_none() && s.webhooks.is_empty() {
                bail!("no alert targets: set them with `coffer server alerts set --smtp HOST --from A --to B` or `--webhook URL`");
            }
            let now = server.now();
            let text = format!(
                "This is a test message from the coffer server on {} at {}.\n",
                server.data.display(),
                fmt_time(now)
            );
            let before = server.catalog.messages(1)?.first().map_or(0, |m| m.id);
            notify::message(server, &s, "test", "coffer: test message", &text, now)?;
            let n = deliver_now(server)?;
            let failed: Vec<_> = server
                .catalog
                .messages(20)?
                .into_iter()
                .filter(|m| m.id > before && m.sent.is_none())
                .collect();
            for m in &failed {
                eprintln!(
                    "{} to {}: {}",
                    m.channel,
                    m.target,
                    m.last_error.as_deref().unwrap_or("not sent")
                );
            }
            if !g.quiet {
                eprintln!("{n} test message(s) delivered");
            }
            return Ok(if failed.is_empty() { 0 } else { 1 });
        }
        ServerAlertsCommand::Log { limit } => {
            let log = server.catalog.messages(limit)?;
            if g.json {
                print_json(&log)?;
            } else {
                for m in log {
                    let state = match (m.sent, m.failed) {
                        (Some(t), _) => format!("sent {}", fmt_time(t)),
                        (None, Some(_)) => format!("GAVE UP: {}", m.last_error.unwrap_or_default()),
                        (None, None) if m.attempts > 0 => {
                            format!("retrying: {}", m.last_error.unwrap_or_default())
                        }
                        _ => "waiting".into(),
                    };
                    outln!(
                        "{}  {:<7} {:<30} {}  [{}]",
                        fmt_time(m.created),
                        m.channel,
                        m.target,
                        m.subject,
                        state
                    )?;
                }
            }
        }
    }
    Ok(0)
}

fn alerts_set(server: &Server, a: ServerAlertsSetArgs) -> Result<()> {
    let mut s = notify::load(&server.catalog)?;
    if a.no_smtp {
        s.smtp = None;
        server.catalog.set_setting("smtp_password", None)?;
    }
    if let Some(hp) = &a.smtp {
        let tls = a
            .smtp_tls
            .clone()
            .or_else(|| s.smtp.as_ref().map(|x| x.tls.clone()))
            .unwrap_or_else(|| "starttls".into());
        let (host, port) = match hp.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>()
                    .with_context(|| format!("--smtp {hp:?}: the port is not a number"))?,
            ),
            None => (hp.clone(), if tls == "tls" { 465 } else { 587 }),
        };
        let old = s.smtp.take();
        s.smtp = Some(SmtpSettings {
            host,
            port,
            tls,
            user: old.as_ref().and_then(|x| x.user.clone()),
            cacert: old.and_then(|x| x.cacert),
        });
    }
    if let Some(t) = &a.smtp_tls {
        match s.smtp.as_mut() {
            Some(x) => x.tls = t.clone(),
            None => bail!("--smtp-tls needs --smtp HOST[:PORT]"),
        }
    }
    if let Some(u) = &a.smtp_user {
        match s.smtp.as_mut() {
            Some(x) => x.user = (!u.is_empty()).then(|| u.clone()),
            None => bail!("--smtp-user needs --smtp HOST[:PORT]"),
        }
    }
    if let Some(ca) = &a.smtp_cacert {
        let Some(x) = s.smtp.as_mut() else {
            bail!("--smtp-cacert needs --smtp HOST[:PORT]");
        };
        x.cacert = if ca == "none" {
            None
        } else {
            let p = std::fs::canonicalize(ca).with_context(|| format!("--smtp-cacert {ca}"))?;
            Some(p.display().to_string())
        };
    }
    if let Some(f) = &a.smtp_password_file {
        let text =
            zeroize::Zeroizing::new(std::fs::read_to_string(f).with_context(|| format!("{}", f.display()))?);
        let pw = text.lines().next().unwrap_or("");
        if pw.is_empty() {
            bail!("{}: the first line (the password) is empty", f.display());
        }
        server.catalog.set_setting("smtp_password", Some(pw))?;
    }
    if let Some(f) = &a.from {
        s.mail_from = Some(f.clone());
    }
    if !a.to.is_empty() {
        s.mail_to = a.to.clone();
    }
    if !a.webhook.is_empty() {
        s.webhooks = a.webhook.iter().filter(|w| *w != "none").cloned().collect();
    }
    if let Some(d) = &a.digest_at {
        s.digest_at = (d != "none").then(|| d.clone());
    }
    if let Some(w) = a.warnings_above {
        s.warnings_above = w;
    }
    if let Some(q) = a.quota_percent {
        s.quota_percent = q;
    }
    notify::save(&server.catalog, &s)?;
    Ok(())
}

pub fn operator(server: &Server, c: ServerOperatorCommand, g: &Global) -> Result<u8> {
    match c {
        ServerOperatorCommand::Add { name, client } => {
            let pw = server.add_operator(&name, client.as_deref())?;
            outln!("{pw}")?;
            if !g.quiet {
                eprintln!("operator {name:?} added; the password above is shown only now");
            }
        }
        ServerOperatorCommand::Link { name, url } => {
            let Some(base) = url.or_else(|| server.url()) else {
                return Err(coffer_core::Error::Usage(format!(
                    "the server has not recorded its address in {} yet (it does when it starts): \
                     start it, or give it with --url https://HOST:PORT",
                    server.data.display()
                ))
                .into());
            };
            let token = server.console_link(&name)?;
            outln!("{base}/console/link/{token}")?;
            if !g.quiet {
                eprintln!("open it once, within 10 minutes");
            }
        }
        ServerOperatorCommand::List => {
            for (name, created, client) in server.catalog.operators()? {
                outln!(
                    "{name:<24} added {}{}",
                    fmt_time(created),
                    client
                        .map(|c| format!(", sees client {c} only"))
                        .unwrap_or_default()
                )?;
            }
        }
        ServerOperatorCommand::Remove { name } => {
            server.catalog.remove_operator(&name)?;
            if !g.quiet {
                eprintln!("operator {name:?} removed; its sessions have ended");
            }
        }
    }
    Ok(0)
}
