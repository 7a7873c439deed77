//! `coffer`: the command-line client.

mod cli;
mod cmd;
mod password;
mod report;
mod ui;

use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use clap::Parser;
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

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let g = cli.global.clone();
    let report_kind = report::kind(&cli.command);
    let (started, clock) = (SystemTime::now(), Instant::now());
    let r = match cli.command {
        Command::Init(a) => cmd::init(&g, a),
        Command::Backup(a) => cmd::backup::run(&g, a),
        Command::Snapshots(a) => cmd::snapshots(&g, a),
        Command::Ls(a) => cmd::ls(&g, a),
        Command::Restore(a) => cmd::restore(&g, a),
        Command::Diff(a) => cmd::diff(&g, a),
        Command::Dump(a) => cmd::dump(&g, a),
        Command::RestoreDb(a) => cmd::db::restore_db(&g, a),
        Command::Cat(a) => cmd::cat::run(&g, a),
        Command::Forget(a) => cmd::forget::run(&g, a),
        Command::Prune(a) => cmd::prune(&g, &a),
        Command::Check(a) => cmd::check(&g, a),
        Command::Repair(r) => cmd::repair(&g, r),
        Command::Key(k) => cmd::key(&g, k),
        Command::Stats => cmd::stats(&g),
        Command::Server(a) => cmd::server::run(&g, a),
        Command::Copy(a) => cmd::copy::run(&g, a),
    };
    if let Some(kind) = report_kind {
        let outcome = match &r {
            Ok(code) => Ok(*code),
            Err(e) => Err(one_line(e)),
        };
        report::send(&g, kind, started, clock.elapsed(), &outcome);
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
