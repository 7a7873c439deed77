//! `coffer server`: serve repositories over HTTPS, and the admin commands that work on the
//! data directory directly (clients, policies, retention, verification, trash).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use coffer_server::catalog::{Policy, Role};
use coffer_server::http::Limits;
use coffer_server::{retention, tls, verify, Clock, Server, Settings};
use serde_json::json;

use crate::cli::{
    Global, ServeArgs, ServerArgs, ServerClientCommand, ServerCommand, ServerRepoCommand, ServerRepoSetArgs,
    ServerTrashCommand,
};
use crate::cmd::monitor;
use crate::cmd::{outln, print_json};
use crate::ui::bytes;

/// A duration flag, in the one grammar ([`coffer_core::duration`]: `m` is minutes).
pub(crate) fn duration(s: &str, what: &str) -> Result<Duration> {
    Ok(coffer_core::duration::parse(s, what)?)
}

fn open_server(a: &ServerArgs) -> Result<Server> {
    let s = &a.serve;
    let settings = Settings {
        pack_grace_secs: duration(&s.pack_grace, "--pack-grace")?.as_secs() as i64,
        trash_secs: duration(&s.trash_for, "--trash-for")?.as_secs() as i64,
    };
    let clock = match &s.test_clock {
        Some(p) => Clock::File(p.clone()),
        None => Clock::System,
    };
    let Some(data) = &a.data else {
        bail!("no data directory: give --data DIR or set COFFER_SERVER_DATA");
    };
    // Only the server itself creates its data directory: an administrative command given a
    // mistyped --data must not answer from a new, empty catalog ("0/0 OK").
    if a.command.is_some() && !data.join("server.db").is_file() {
        bail!(
            "{}: no coffer server data here (no server.db); check --data (or COFFER_SERVER_DATA), \
             or start `coffer server --data {}` once to create it",
            data.display(),
            data.display()
        );
    }
    Ok(Server::open(data, a.storage.as_deref(), clock, settings)?)
}

pub fn run(g: &Global, a: ServerArgs) -> Result<u8> {
    // (before anything is opened: the data directory may not exist yet)
    if let Some(ServerCommand::Install { dry_run, unit_dir }) = &a.command {
        let exe = std::env::current_exe().context("finding the coffer executable")?;
        let data = a
            .data
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from("/var/lib/coffer-server"));
        let data = if data.is_absolute() {
            data
        } else {
            std::env::current_dir()
                .context("the current directory")?
                .join(data)
        };
        let text = super::generate::server_unit(&exe, &data, &a.serve.listen);
        return super::generate::install_unit(
            "coffer-server.service",
            &text,
            *dry_run,
            unit_dir,
            &format!(
                "{} server --data {} --listen {}",
                exe.display(),
                data.display(),
                a.serve.listen
            ),
        );
    }
    let server = match open_server(&a) {
        Ok(s) => s,
        // a monitoring plugin's UNKNOWN, on stdout where the check reads it
        Err(e) if matches!(a.command, Some(ServerCommand::Status)) => {
            outln!("coffer UNKNOWN: {e:#}")?;
            return Ok(monitor::STATUS_UNKNOWN);
        }
        Err(e) => return Err(e),
    };
    match a.command {
        None => serve(server, &a.serve, g),
        Some(ServerCommand::Client(c)) => client(&server, c, g),
        Some(ServerCommand::Repo(ServerRepoCommand::List)) => repo_list(&server, g),
        Some(ServerCommand::Repo(ServerRepoCommand::Set(s))) => repo_set(&server, s),
        Some(ServerCommand::Retention { repo, dry_run }) => run_retention(&server, repo, dry_run, g),
        Some(ServerCommand::Verify { repo, repair }) => run_verify(&server, repo, repair, g),
        Some(ServerCommand::Trash(t)) => trash(&server, t, g),
        Some(ServerCommand::Status) => monitor::status(&server, g),
        Some(ServerCommand::Digest { send }) => monitor::digest(&server, send, g),
        Some(ServerCommand::Alerts(c)) => monitor::alerts(&server, c, g),
        Some(ServerCommand::Operator(c)) => monitor::operator(&server, c, g),
        Some(ServerCommand::Install { .. }) => unreachable!("handled above"),
        Some(ServerCommand::Cert) => {
            let l = tls::load(
                &server.data,
                a.serve.tls_cert.as_deref(),
                a.serve.tls_key.as_deref(),
                &a.serve.tls_names,
            )?;
            outln!("certificate: {}", l.cert_path.display())?;
            outln!("sha256 fingerprint: {}", l.fingerprint)?;
            if let Some(p) = &l.spki_pin {
                outln!("public key pin (sha256, base64): {p}")?;
            }
            Ok(0)
        }
    }
}

fn client(server: &Server, c: ServerClientCommand, g: &Global) -> Result<u8> {
    match c {
        ServerClientCommand::Add { name, repo, role } => {
            let role: Role = role.parse()?;
            let token = server.add_client(&name, &repo, role)?;
            // the token alone on stdout, so `TOKEN=$(coffer server ... client add ...)` works
            outln!("{token}")?;
            if !g.quiet {
                eprintln!(
                    "client {name:?} added for repository {repo:?} with role {}; the token above is shown only now",
                    role.as_str()
                );
            }
        }
        ServerClientCommand::List => {
            let list = server.catalog.clients()?;
            if g.json {
                print_json(&list)?;
            } else {
                for c in list {
                    outln!("{:<24} {:<24} {}", c.name, c.repo, c.role.as_str())?;
                }
            }
        }
        ServerClientCommand::Remove { name } => {
            server.catalog.remove_client(&name)?;
            if !g.quiet {
                eprintln!("client {name:?} removed; its token no longer works");
            }
        }
        ServerClientCommand::Job(j) => return super::managed::job(server, j, g),
        ServerClientCommand::Run { name, job, check } => {
            return super::managed::run(server, &name, &job, check, g)
        }
        ServerClientCommand::Expect {
            name,
            schedule,
            grace,
        } => {
            return monitor::expect(server, &name, &schedule, &grace, g);
        }
        ServerClientCommand::Ack { name } => {
            if server.catalog.client(&name)?.is_none() {
                return Err(coffer_core::Error::Usage(format!(
                    "no client {name:?} (coffer server client list)"
                ))
                .into());
            }
            let n = server.catalog.ack_anomalies(&name, server.now())?;
            if !g.quiet {
                eprintln!(
                    "client {name:?}: {n} anomal{} acknowledged{}",
                    if n == 1 { "y" } else { "ies" },
                    if n > 0 {
                        "; retention of its repository resumes"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    Ok(0)
}

fn repo_list(server: &Server, g: &Global) -> Result<u8> {
    let mut out = Vec::new();
    for r in server.catalog.repos()? {
        let usage = server.usage(&r.name)?;
        let verified = server.catalog.last_verify_run(&r.name)?;
        out.push(json!({
            "name": r.name, "usage": usage, "quota": r.quota_bytes, "policy": r.policy,
            "last_verify": verified,
        }));
        if !g.json {
            outln!(
                "{:<24} {:>10}{}  policy: {}  verified: {}",
                r.name,
                bytes(usage),
                r.quota_bytes
                    .map(|q| format!(" of {}", bytes(q)))
                    .unwrap_or_default(),
                r.policy
                    .as_ref()
                    .map(|p| serde_json::to_string(p).unwrap_or_default())
                    .unwrap_or_else(|| "none".into()),
                verified
                    .map(|v| if v.damaged.is_empty() {
                        format!("ok ({} objects)", v.objects)
                    } else {
                        format!("{} DAMAGED", v.damaged.len())
                    })
                    .unwrap_or_else(|| "never".into())
            )?;
        }
    }
    if g.json {
        print_json(&out)?;
    }
    Ok(0)
}

fn repo_set(server: &Server, s: ServerRepoSetArgs) -> Result<u8> {
    let Some(info) = server.catalog.repo(&s.repo)? else {
        bail!("no repository {:?} (add a client for it first)", s.repo);
    };
    if s.no_policy {
        server.catalog.set_policy(&s.repo, None)?;
    } else {
        let mut p = info.policy.unwrap_or_default();
        let mut changed = false;
        for (v, slot) in [
            (s.keep_last, &mut p.keep_last),
            (s.keep_hourly, &mut p.keep_hourly),
            (s.keep_daily, &mut p.keep_daily),
            (s.keep_weekly, &mut p.keep_weekly),
            (s.keep_monthly, &mut p.keep_monthly),
            (s.keep_yearly, &mut p.keep_yearly),
        ] {
            if let Some(v) = v {
                *slot = v;
                changed = true;
            }
        }
        if let Some(w) = &s.keep_within {
            p.keep_within_secs = coffer_core::duration::parse_retention(w, "--keep-within")?.as_secs();
            changed = true;
        }
        if changed {
            if p == Policy::default() {
                bail!("every rule is 0: use --no-policy to remove the policy");
            }
            server.catalog.set_policy(&s.repo, Some(&p))?;
        }
    }
    if let Some(q) = &s.quota {
        let q = if q == "none" {
            None
        } else {
            Some(coffer_core::limit::parse_size(q, "--quota")?)
        };
        server.catalog.set_quota(&s.repo, q)?;
    }
    Ok(0)
}

fn repos_or_one(server: &Server, repo: Option<String>) -> Result<Vec<String>> {
    Ok(match repo {
        Some(r) => {
            if server.catalog.repo(&r)?.is_none() {
                bail!("no repository {r:?}");
            }
            vec![r]
        }
        None => server.catalog.repos()?.into_iter().map(|r| r.name).collect(),
    })
}

fn run_retention(server: &Server, repo: Option<String>, dry_run: bool, g: &Global) -> Result<u8> {
    let mut reports = Vec::new();
    for r in repos_or_one(server, repo)? {
        let rep = retention::run(server, &r, dry_run)?;
        if !g.json {
            outln!(
                "{}: {} snapshot(s) kept, {} {}removed, {} pack(s) ({}) {}removed, {} trash entr(ies) purged",
                rep.repo,
                rep.snapshots_kept,
                rep.snapshots_removed.len(),
                if dry_run { "would be " } else { "" },
                rep.packs_removed.len(),
                bytes(rep.bytes_removed),
                if dry_run { "would be " } else { "" },
                rep.purged
            )?;
            for n in &rep.notes {
                outln!("  note: {n}")?;
            }
        }
        reports.push(rep);
    }
    if g.json {
        print_json(&reports)?;
    }
    Ok(0)
}

fn run_verify(server: &Server, repo: Option<String>, repair: bool, g: &Global) -> Result<u8> {
    let mut runs = Vec::new();
    let mut damaged = 0;
    for r in repos_or_one(server, repo)? {
        let v = verify::run(server, &r, repair)?;
        damaged += v.damaged.len();
        if !g.json {
            outln!(
                "{}: {} objects, {} verified, {}",
                v.repo,
                v.objects,
                bytes(v.bytes),
                if v.damaged.is_empty() {
                    "no damage".to_string()
                } else {
                    format!("{} DAMAGED", v.damaged.len())
                }
            )?;
            for d in &v.damaged {
                outln!("  damaged: {d}")?;
            }
            for d in &v.repaired {
                outln!("  repaired: {d}")?;
            }
        }
        runs.push(v);
    }
    if g.json {
        print_json(&runs)?;
    }
    Ok(if damaged > 0 { 1 } else { 0 })
}

fn trash(server: &Server, t: ServerTrashCommand, g: &Global) -> Result<u8> {
    match t {
        ServerTrashCommand::List { repo } => {
            let list = server.catalog.trash(&repo)?;
            if g.json {
                print_json(&list)?;
            } else {
                for e in list {
                    outln!(
                        "{}/{}  {}  {}",
                        e.kind,
                        e.name,
                        crate::ui::local_time(
                            &chrono::DateTime::from_timestamp(e.trashed, 0)
                                .unwrap_or_default()
                                .fixed_offset()
                        ),
                        e.reason
                    )?;
                }
            }
        }
        ServerTrashCommand::Restore { repo, object } => {
            let only = match &object {
                Some(o) => Some(
                    o.split_once('/')
                        .with_context(|| format!("{o:?}: give KIND/NAME, e.g. snapshots/<id>"))?,
                ),
                None => None,
            };
            let n = server.restore_trash(&repo, only)?;
            if !g.quiet {
                eprintln!("{n} object(s) restored from the trash of {repo:?}");
            }
        }
    }
    Ok(0)
}

fn serve(server: Server, a: &ServeArgs, g: &Global) -> Result<u8> {
    let tls = tls::load(
        &server.data,
        a.tls_cert.as_deref(),
        a.tls_key.as_deref(),
        &a.tls_names,
    )?;
    server.prepare()?;
    let retention_every = duration(&a.retention_every, "--retention-every")?;
    let verify_every = duration(&a.verify_every, "--verify-every")?;
    let monitor_every = duration(&a.monitor_every, "--monitor-every")?;
    let limits = Limits {
        max_uploads: a.max_uploads.max(1),
        max_uploads_per_client: a.max_uploads_per_client.max(1),
        min_upload_rate: a.min_upload_rate.max(1),
        max_connections: a.max_connections.max(16),
        idle_timeout: duration(&a.idle_timeout, "--idle-timeout")?.max(std::time::Duration::from_secs(1)),
        ..Limits::default()
    };
    let server = Arc::new(server);
    room_for_connections(limits.max_connections);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("coffer-server")
        .build()
        .context("starting the runtime")?;
    let listen = a.listen.clone();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let url = match &a.public_url {
            Some(u) => u.clone(),
            None => listening_url(addr),
        };
        server
            .record_url(&url)
            .with_context(|| format!("recording the server's address {url}"))?;
        if !g.quiet {
            tracing::info!(
                "coffer-server {} listening on https://{addr}/ (data {})",
                env!("CARGO_PKG_VERSION"),
                server.data.display()
            );
            tracing::info!(
                "certificate {}{}: sha256 fingerprint {}",
                tls.cert_path.display(),
                if tls.generated { " (self-signed, just made)" } else { "" },
                tls.fingerprint
            );
        }
        spawn_job(server.clone(), retention_every, "retention", |s| {
            for r in s.catalog.repos()? {
                let rep = retention::run(s, &r.name, false)?;
                if !rep.snapshots_removed.is_empty() || !rep.packs_removed.is_empty() {
                    tracing::info!(
                        "retention {}: {} snapshot(s), {} pack(s) ({} bytes) to the trash",
                        r.name,
                        rep.snapshots_removed.len(),
                        rep.packs_removed.len(),
                        rep.bytes_removed
                    );
                }
            }
            Ok(())
        });
        spawn_job(server.clone(), verify_every, "verify", |s| {
            for r in s.catalog.repos()? {
                // a scrub: what parity rebuilds is written back (checked against the name)
                let v = verify::run(s, &r.name, true)?;
                for d in &v.damaged {
                    tracing::error!("verify {}: DAMAGED {d}", r.name);
                }
                for d in &v.repaired {
                    tracing::warn!("verify {}: repaired {d}", r.name);
                }
            }
            Ok(())
        });
        spawn_job(server.clone(), monitor_every, "monitor", |s| {
            coffer_server::monitor::round(s, &tokio::runtime::Handle::current())
        });
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
            tracing::info!("shutting down; finishing requests in flight");
        };
        coffer_server::http::serve(server, listener, tls.config, limits, shutdown).await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(0)
}

fn spawn_job(
    server: Arc<Server>,
    every: Duration,
    name: &'static str,
    job: fn(&Server) -> coffer_server::Result<()>,
) {
    if every.is_zero() {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let s = server.clone();
            match tokio::task::spawn_blocking(move || job(&s)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("{name}: {e}"),
                Err(e) => tracing::error!("{name}: {e}"),
            }
        }
    });
}

/// Raise the soft open-file limit toward the hard one so that `max` connections (plus the
/// catalog, repositories and uploads) fit; say so when they cannot.
fn room_for_connections(max: usize) {
    let want = (max as u64).saturating_add(1024);
    let new = super::raise_open_files(want);
    if new < want {
        tracing::warn!(
            "open files are limited to {new} (hard limit): fewer than --max-connections {max} needs; \
             raise LimitNOFILE or lower --max-connections"
        );
    }
}

/// https://ADDR:PORT for a listening address; a wildcard address (0.0.0.0, [::]) becomes this
/// machine's host name, which other machines can resolve where an IP wildcard means nothing.
fn listening_url(addr: std::net::SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
        format!("https://{host}:{}", addr.port())
    } else {
        format!("https://{addr}")
    }
}
