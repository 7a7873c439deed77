//! `coffer generate`: what a package installs beside the binary, made from the binary's own
//! command-line definitions so it never drifts from them: shell completions (bash, zsh, fish,
//! ...), man pages (one per command), and the systemd units of the agent and the server.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::{Cli, GenerateCommand};

/// The systemd unit of `coffer agent`.
pub fn agent_unit(exe: &Path, config: &Path) -> String {
    format!(
        "# written by coffer ({version})\n\
         [Unit]\n\
         Description=coffer agent: scheduled backups\n\
         Documentation=man:coffer-agent(1)\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=exec\n\
         ExecStart={exe} --config {config} agent\n\
         ExecReload=/bin/kill -HUP $MAINPID\n\
         # SIGTERM to the agent alone: it tells its running jobs to stop cleanly and waits\n\
         KillMode=mixed\n\
         TimeoutStopSec=5min\n\
         Restart=on-failure\n\
         RestartSec=30s\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        version = crate::cli::VERSION,
        exe = exe.display(),
        config = config.display()
    )
}

/// Write `unit_name` with `text` into `unit_dir`, then enable and start it where systemd runs
/// (`--dry-run`: show both, change nothing); where it does not, say how to start `command`.
pub fn install_unit(
    unit_name: &str,
    text: &str,
    dry_run: bool,
    unit_dir: &Path,
    command: &str,
) -> Result<u8> {
    let path = unit_dir.join(unit_name);
    let systemd = Path::new("/run/systemd/system").is_dir();
    let commands = [
        vec!["systemctl", "daemon-reload"],
        vec!["systemctl", "enable", "--now", unit_name],
    ];
    if dry_run {
        println!("would write {}:\n{text}", path.display());
        for c in &commands {
            println!("would run: {}", c.join(" "));
        }
        return Ok(0);
    }
    std::fs::create_dir_all(unit_dir).with_context(|| format!("creating {}", unit_dir.display()))?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    if !systemd {
        println!("systemd is not running here: start it with your init system, as `{command}`");
        return Ok(0);
    }
    for c in &commands {
        let status = std::process::Command::new(c[0])
            .args(&c[1..])
            .status()
            .with_context(|| format!("running {}", c.join(" ")))?;
        if !status.success() {
            anyhow::bail!("{} failed ({status})", c.join(" "));
        }
        println!("ran: {}", c.join(" "));
    }
    println!("it runs; its log: journalctl -u {unit_name}");
    Ok(0)
}

/// The systemd unit of `coffer server` (settings in /etc/default/coffer-server).
pub fn server_unit(exe: &Path, data: &Path, listen: &str) -> String {
    format!(
        "# written by coffer ({version})\n\
         [Unit]\n\
         Description=coffer server: backup repositories, monitoring and console\n\
         Documentation=man:coffer-server(1)\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=exec\n\
         Environment=COFFER_SERVER_DATA={data} COFFER_LISTEN={listen}\n\
         EnvironmentFile=-/etc/default/coffer-server\n\
         ExecStart={exe} server --listen ${{COFFER_LISTEN}}\n\
         KillMode=mixed\n\
         TimeoutStopSec=2min\n\
         Restart=on-failure\n\
         RestartSec=10s\n\
         UMask=0077\n\
         LimitNOFILE=65536\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        version = crate::cli::VERSION,
        exe = exe.display(),
        data = data.display(),
    )
}

pub fn run(c: GenerateCommand) -> Result<u8> {
    match c {
        GenerateCommand::Completions { shell } => {
            let mut cmd = Cli::command();
            // (into memory first: clap_complete panics on a closed pipe)
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "coffer", &mut out);
            std::io::stdout().write_all(&out).context("writing to stdout")?;
        }
        GenerateCommand::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing man pages to {}", dir.display()))?;
        }
        GenerateCommand::Systemd { dir, exe, config } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, text) in [
                ("coffer-agent.service", agent_unit(&exe, &config)),
                (
                    "coffer-server.service",
                    server_unit(&exe, Path::new("/var/lib/coffer-server"), "0.0.0.0:8443"),
                ),
            ] {
                let p = dir.join(name);
                std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            }
        }
    }
    Ok(0)
}
