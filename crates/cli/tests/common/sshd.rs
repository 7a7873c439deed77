//! A real OpenSSH `sshd` on 127.0.0.1 (a free port) with a private configuration, host key
//! and client key, killed when dropped; and an `ssh_config` that reaches it as host
//! `coffer-test` with strict host-key checking against its own known_hosts.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Sshd {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// The client configuration: `ssh -F THIS coffer-test`.
    pub config: PathBuf,
}

fn keygen(path: &Path) {
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "coffer-test", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen (openssh-client)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

impl Sshd {
    pub fn start() -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\nAuthorizedKeysFile {ak}\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\n\
                 LogLevel ERROR\n",
                hk = d.join("host_key").display(),
                pid = d.join("sshd.pid").display(),
                ak = d.join("authorized_keys").display(),
            ),
        )
        .unwrap();
        // sshd's privilege separation directory
        let _ = fs::create_dir_all("/run/sshd");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(d.join("sshd.log")).unwrap())
            .spawn()
            .expect("OpenSSH's sshd (apt-get install openssh-server)");
        let mut child = child;
        super::wait_until(
            "sshd to listen",
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
            || super::exit_report("sshd", &mut child, &d.join("sshd.log")),
        );
        let host_pub = fs::read_to_string(d.join("host_key.pub")).unwrap();
        let mut parts = host_pub.split_whitespace();
        let (kt, key) = (parts.next().unwrap(), parts.next().unwrap());
        fs::write(d.join("known_hosts"), format!("[127.0.0.1]:{port} {kt} {key}\n")).unwrap();
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let config = d.join("ssh_config");
        fs::write(
            &config,
            format!(
                "Host coffer-test\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {key}\n\
                 \x20 IdentitiesOnly yes\n  UserKnownHostsFile {kh}\n  GlobalKnownHostsFile /dev/null\n\
                 \x20 StrictHostKeyChecking yes\n  LogLevel ERROR\n",
                key = d.join("client_key").display(),
                kh = d.join("known_hosts").display(),
            ),
        )
        .unwrap();
        Sshd {
            child,
            port,
            dir,
            config,
        }
    }

    /// What `COFFER_SSH_COMMAND` should be to reach this server as `coffer-test`.
    pub fn ssh_command(&self) -> String {
        format!("ssh -F {}", self.config.display())
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
