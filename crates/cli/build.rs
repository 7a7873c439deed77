//! `coffer --version` names the commit it was built from: COFFER_COMMIT when set (a package
//! build from a tarball), else `git rev-parse`, else "unknown".

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=COFFER_COMMIT");
    let commit = std::env::var("COFFER_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            let o = Command::new("git")
                .args(["rev-parse", "--short=10", "HEAD"])
                .output()
                .ok()?;
            o.status
                .success()
                .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=COFFER_COMMIT={commit}");
    // a new commit rebuilds the version string (only what exists is watched: a missing path
    // would rebuild every time)
    let git = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.git");
    for p in ["HEAD", "refs/heads", "packed-refs"] {
        let p = git.join(p);
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}
