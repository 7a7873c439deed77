//! Where passphrases come from. Never from the command line: from `COFFER_PASSWORD`, a file
//! (`--password-file` / `COFFER_PASSWORD_FILE`), a command's output (`--password-command`),
//! or a terminal prompt, in that order. Each source may hold a generated key (`coffer key
//! generate`) instead of a passphrase; coffer-core tells them apart.

use std::io::IsTerminal;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use zeroize::Zeroizing;

use crate::cli::Global;

pub type Secret = Zeroizing<Vec<u8>>;

fn first_line(mut b: Vec<u8>) -> Secret {
    if let Some(i) = b.iter().position(|&c| c == b'\n') {
        b.truncate(i);
    }
    if b.last() == Some(&b'\r') {
        b.pop();
    }
    Zeroizing::new(b)
}

fn from_file(p: &Path) -> Result<Secret> {
    let b = std::fs::read(p).with_context(|| format!("cannot read password file {}", p.display()))?;
    Ok(first_line(b))
}

/// The first word of a command, which names it in messages: the rest may carry a secret.
fn program_of(cmd: &str) -> &str {
    cmd.split_whitespace().next().unwrap_or("")
}

fn from_command(cmd: &str) -> Result<Secret> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::inherit())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run the password command ({})", program_of(cmd)))?;
    if !out.status.success() {
        bail!(
            "the password command ({}) failed ({})",
            program_of(cmd),
            out.status
        );
    }
    Ok(first_line(out.stdout))
}

/// An empty password is a mistake (an empty file, a variable set to nothing), said as such:
/// "wrong password" would send the user looking for the wrong thing.
fn nonempty(s: Secret, source: &str) -> Result<Secret> {
    if s.is_empty() {
        return Err(coffer_core::Error::Usage(format!("empty password from {source}")).into());
    }
    Ok(s)
}

fn prompt(msg: &str, sources: &str) -> Result<Secret> {
    if !std::io::stdin().is_terminal() {
        bail!("no password given: set {sources}, or run on a terminal");
    }
    let p = rpassword::prompt_password(msg).context("cannot read the password from the terminal")?;
    Ok(Zeroizing::new(p.into_bytes()))
}

/// The passphrase of the repository.
pub fn repository_password(g: &Global) -> Result<Secret> {
    password_from(
        "COFFER_PASSWORD",
        g.password_file.as_deref(),
        g.password_command.as_deref(),
        "enter password for repository: ",
    )
}

const REPOSITORY_SOURCES: &str = "COFFER_PASSWORD_FILE, COFFER_PASSWORD or --password-command";

/// A passphrase from the environment variable `var`, a file, a command, or a prompt.
pub fn password_from(var: &str, file: Option<&Path>, command: Option<&str>, ask: &str) -> Result<Secret> {
    let given: Vec<String> = [
        std::env::var_os(var).map(|_| var.to_string()),
        file.map(|f| format!("the password file {}", f.display())),
        command.map(|_| "--password-command".to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() > 1 {
        return Err(coffer_core::Error::Usage(format!(
            "{} are all set: give the password one way",
            given.join(" and ")
        ))
        .into());
    }
    if let Ok(p) = std::env::var(var) {
        return nonempty(Zeroizing::new(p.into_bytes()), var);
    }
    if let Some(f) = file {
        return nonempty(from_file(f)?, &format!("the password file {}", f.display()));
    }
    if let Some(c) = command {
        return nonempty(from_command(c)?, "--password-command");
    }
    nonempty(prompt(ask, REPOSITORY_SOURCES)?, "the terminal")
}

/// A new passphrase (for `init` and `key add|passwd`): from `COFFER_NEW_PASSWORD`,
/// `--new-password-file`, or prompted twice. For `init`, the repository password sources
/// are used as well (there is no old password).
pub fn new_password(g: &Global, file: Option<&Path>, for_init: bool) -> Result<Secret> {
    if let Ok(p) = std::env::var("COFFER_NEW_PASSWORD") {
        return nonempty(Zeroizing::new(p.into_bytes()), "COFFER_NEW_PASSWORD");
    }
    if let Some(f) = file {
        return nonempty(from_file(f)?, &format!("the new password file {}", f.display()));
    }
    if for_init
        && (std::env::var_os("COFFER_PASSWORD").is_some()
            || g.password_file.is_some()
            || g.password_command.is_some())
    {
        return repository_password(g);
    }
    let sources = if for_init {
        REPOSITORY_SOURCES
    } else {
        "COFFER_NEW_PASSWORD or --new-password-file for the new password"
    };
    let a = nonempty(prompt("enter new password: ", sources)?, "the terminal")?;
    let b = prompt("enter new password again: ", sources)?;
    if *a != *b {
        bail!("the passwords do not match");
    }
    Ok(a)
}
