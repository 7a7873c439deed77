//! `coffer`: the command-line client.

mod cli;
mod cmd;
mod logging;
mod password;
mod report;
mod ui;

use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use clap::{CommandFactory, FromArgMatches};
use coffer_core::Category;

use cli::{Cli, Command};

/// Exit code for a backup that was written but missed some files.
pub const EXIT_INCOMPLETE: u8 = 3;

fn exit_code_for(e: &anyhow::Error) -> Option<u8> {
    for cause in e.chain() {
        if let Some(ce) = cause.downcast_ref::<coffer_core::Error>() {
            return Some(match ce.category() {
                Category::NoRepository => 10,
                Category::WrongPassword => 12,
                Category::Usage => 2,
                Category::Integrity | Category::Fatal => 1,
            });
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::BrokenPipe {
                return Some(0); // `coffer ls ... | head` is not an error
            }
        }
    }
    None
}

/// For a backup: blocks larger than a chunk's buffer come from the kernel and go straight
/// back to it. glibc's default raises its mmap threshold to the largest block freed so far,
/// after which such blocks (a large directory's trees and listings, the index's sort) stay in
/// the arena of the thread that allocated them and count in the peak RSS for the rest of the
/// run: an unchanged re-backup held 63-70 MiB instead of 51-53, an initial backup 89-97
/// instead of 83-87, at no measurable cost in time (docs/PERFORMANCE.md). The threshold sits
/// above the default chunker's largest buffer (2 MiB plus zstd's bound), so the pipeline's
/// recycled chunk buffers stay in the heap. Called before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn large_blocks_from_the_kernel() {
    const THRESHOLD: libc::c_int = (2 << 20) + (64 << 10);
    // SAFETY: mallopt only sets a parameter of glibc's allocator for later allocations;
    // no other thread exists yet, and no memory already handed out is touched.
    let _ = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn large_blocks_from_the_kernel() {}

/// Hand the free pages inside the allocator's heaps back to the kernel. Called once the
/// index is loaded: reading the index files leaves some MiB free in the main heap below
/// live blocks, which glibc does not trim by itself and which would count in the backup's
/// peak RSS to the end (an unchanged re-backup: 3-4 MiB less, docs/PERFORMANCE.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() {
    // SAFETY: malloc_trim takes each arena's lock and only returns pages no block uses.
    let _ = unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}

/// A step started by `coffer run` or the agent ends when its parent does (a killed agent
/// leaves no backup running unwatched; the next run takes over).
fn exit_with_parent() {
    let Some(ppid) = std::env::var(cmd::run::EXIT_WITH_PARENT)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    std::env::remove_var(cmd::run::EXIT_WITH_PARENT);
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    // the parent may have died before the line above
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(ppid) {
        std::process::exit(130);
    }
}

/// Whether -r/--repo was typed (not taken from COFFER_REPOSITORY), at any level.
fn repo_typed(m: &clap::ArgMatches) -> bool {
    let here = matches!(
        m.value_source("repo"),
        Some(clap::parser::ValueSource::CommandLine)
    );
    here || m.subcommand().is_some_and(|(_, sub)| repo_typed(sub))
}

/// What the configuration file stands for: --repo-name's repository, --job's sources,
/// retention or check.
fn apply_config(cli: &mut Cli, typed: bool) -> anyhow::Result<()> {
    let job = match &cli.command {
        Command::Backup(a) => a.job.is_some(),
        Command::Forget(a) => a.job.is_some(),
        Command::Check(a) => a.job.is_some(),
        _ => false,
    };
    if cli.global.repo_name.is_none() && !job {
        return Ok(());
    }
    let cfg = cmd::job::load(&cli.global)?;
    if let Some(name) = cli.global.repo_name.clone() {
        cmd::job::apply_repo(&mut cli.global, &cfg, &name, typed)?;
    }
    match &mut cli.command {
        Command::Backup(a) => cmd::job::backup_args(&cfg, &mut cli.global, a),
        Command::Forget(a) => cmd::job::forget_args(&cfg, cli.global.repo_name.as_deref(), a),
        Command::Check(a) => cmd::job::check_args(&cfg, &mut cli.global, a),
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    exit_with_parent();
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Ok((Cli::from_arg_matches(&m)?, repo_typed(&m))));
    let (mut cli, typed) = match parsed {
        Ok(c) => c,
        // a bad value is one line, like every other error (clap adds a --help hint below)
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation | clap::error::ErrorKind::InvalidValue
            ) =>
        {
            let text = e.render().to_string();
            eprintln!("coffer: {}", text.lines().next().unwrap_or_default());
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    if let Err(e) = apply_config(&mut cli, typed) {
        eprintln!("coffer: error: {}", one_line(&e));
        return ExitCode::from(exit_code_for(&e).unwrap_or(1));
    }
    logging::init(match &cli.command {
        Command::Server(a) if a.command.is_none() => logging::Style::Daemon,
        Command::Agent(a) if a.command.is_none() => logging::Style::Daemon,
        _ => logging::Style::Command,
    });
    if matches!(cli.command, Command::Backup(_)) {
        large_blocks_from_the_kernel();
    }
    let g = cli.global.clone();
    let report_kind = report::kind(&cli.command);
    let (started, clock) = (SystemTime::now(), Instant::now());
    if let Some(msg) = interrupt_message(&cli.command) {
        // Ctrl-C (or SIGTERM, an agent or system stopping): one line that says where things
        // stand, the run reported as interrupted (a backup that did not finish is a night
        // without one), and exit code 130. Ending here is as safe as being killed at any
        // moment (docs/FORMAT.md, "Write order and crash safety").
        let rg = g.clone();
        let _ = ctrlc::set_handler(move || {
            eprintln!("\ncoffer: interrupted; {msg}");
            // (a backup only: an interrupted check or restore is no missing night; and at
            // most 10 s for it, a dead server must not hold the stop)
            // The run's leases go too (an exit runs no destructors): left behind, they would
            // hold off the next prune for their 15 minutes. Both within 10 s together.
            let (tx, rx) = std::sync::mpsc::channel();
            let lease_done = tx.clone();
            std::thread::spawn(move || {
                coffer_core::lease::release_held();
                let _ = lease_done.send(());
            });
            let mut waiting = 1;
            // (and a drill: one cut short must not leave the last one's word standing)
            if let Some(kind) = report_kind.filter(|k| *k == "backup" || *k == "drill") {
                let rg = rg.clone();
                waiting += 1;
                std::thread::spawn(move || {
                    report::send_once(&rg, kind, started, clock.elapsed(), &Err("interrupted".into()));
                    let _ = tx.send(());
                });
            }
            let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
            for _ in 0..waiting {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if rx.recv_timeout(left).is_err() {
                    break;
                }
            }
            std::process::exit(130);
        });
    }
    if let Some(kind) = report_kind {
        report::start_progress(&g, kind, started);
    }
    let r = match cli.command {
        Command::Init(a) => cmd::init(&g, a),
        Command::Backup(a) => cmd::backup::run(&g, a),
        Command::Snapshots(a) => cmd::snapshots(&g, a),
        Command::Ls(a) => cmd::ls(&g, a),
        Command::Restore(a) => cmd::restore(&g, a),
        Command::Diff(a) => cmd::diff(&g, a),
        Command::Dump(a) => cmd::dump(&g, a),
        Command::Mount(a) => cmd::mount::run(&g, a),
        Command::Find(a) => cmd::find::run(&g, a),
        Command::RestoreDb(a) => cmd::db::restore_db(&g, a),
        Command::RestoreSite(a) => cmd::site::run(&g, a),
        Command::RestoreHost(a) => cmd::host::run(&g, a),
        Command::Drill(a) => cmd::drill::run(&g, a),
        Command::Cat(a) => cmd::cat::run(&g, a),
        Command::Forget(a) => cmd::forget::run(&g, a),
        Command::Prune(a) => cmd::prune(&g, &a),
        Command::Check(a) => cmd::check(&g, a),
        Command::Repair(r) => cmd::repair(&g, r),
        Command::Key(k) => cmd::key(&g, k),
        Command::Stats => cmd::stats(&g),
        Command::Server(a) => cmd::server::run(&g, a),
        Command::Copy(a) => cmd::copy::run(&g, a),
        Command::Run(a) => cmd::run::run(&g, a),
        Command::Config(crate::cli::ConfigCommand::Check) => cmd::config::check(&g),
        Command::Generate(c) => cmd::generate::run(c),
        Command::Agent(a) => match a.command {
            None => cmd::agent::run(&g),
            Some(crate::cli::AgentCommand::Install { dry_run, unit_dir }) => {
                cmd::agent::install(&g, dry_run, &unit_dir)
            }
            Some(crate::cli::AgentCommand::Browse {
                request,
                snapshot,
                path,
            }) => cmd::requests::browse(&g, request, &snapshot, &path),
        },
    };
    if let Some(kind) = report_kind {
        let outcome = match &r {
            Ok(code) => Ok(*code),
            Err(e) => Err(one_line(e)),
        };
        report::send_once(&g, kind, started, clock.elapsed(), &outcome);
    }
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => match exit_code_for(&e) {
            Some(0) => ExitCode::SUCCESS,
            code => {
                eprintln!("coffer: error: {}", one_line(&e));
                ExitCode::from(code.unwrap_or(1))
            }
        },
    }
}

/// What an interruption leaves, per command (`None`: the server, which handles its signals).
fn interrupt_message(c: &Command) -> Option<&'static str> {
    Some(match c {
        // (run passes the signal on to its running step, and says what it stopped)
        Command::Server(_) | Command::Run(_) | Command::Agent(_) | Command::Generate(_) | Command::Mount(_) => {
            return None
        }
        Command::Backup(_) | Command::Copy(_) => {
            "the repository is valid; a snapshot exists only if the run said it saved one, and the next run reuses the data already uploaded"
        }
        Command::Prune(_) | Command::Forget(_) => {
            "the repository is valid and nothing a snapshot uses was deleted; the next prune finishes the work"
        }
        Command::Restore(_) => "the target holds a partial restore; run the restore again to complete it",
        Command::RestoreDb(_) => "the database may be partly restored; run the restore again",
        Command::Drill(_) => "a scratch directory or coffer_drill_* database may be left behind; remove it",
        Command::RestoreHost(_) => {
            "the machine may be partly restored; a database being restored may exist half-restored: drop it, then run the restore again (files are replaced, existing databases kept)"
        }
        Command::RestoreSite(_) => {
            "the site may be partly restored; run the restore again (a before-restore snapshot, if it said it saved one, holds what was there)"
        }
        Command::Repair(_) => "the repository is valid; run the repair again",
        Command::Key(_) => "the repository is valid, and the old key or the new one opens it (a new key file is written before an old one is removed)",
        Command::Init(_) => "if `coffer snapshots` does not open the repository, remove what init created there and run init again",
        _ => "the repository is unchanged",
    })
}

/// The error and its causes on one line, without repeating a cause already shown.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}
