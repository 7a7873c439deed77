//! Keyless verification: every content-addressed object is read again and hashed; a file
//! whose BLAKE3 is not its name is damaged. Manifests must decode. No key is needed, so the
//! server checks what it stores on its own schedule.

use std::io::Read;

use coffer_core::FileKind;

use crate::catalog::VerifyRun;
use crate::store::{is_hashed, KINDS};
use crate::{Result, Server};

/// Verify one repository, record the run, and return it (`damaged` names each bad object).
pub fn run(server: &Server, repo: &str) -> Result<VerifyRun> {
    let started = server.now();
    let mut v = VerifyRun {
        repo: repo.to_string(),
        started,
        finished: started,
        objects: 0,
        bytes: 0,
        damaged: Vec::new(),
    };
    let mut buf = vec![0u8; 1 << 20];
    for kind in KINDS {
        if !is_hashed(kind) && kind != FileKind::Manifest {
            continue;
        }
        for e in server.store.list(repo, kind)? {
            let label = format!("{}/{}", kind.dir(), e.name);
            let path = server.store.path(repo, kind, &e.name);
            let problem = match check_file(&path, kind, &e.name, &mut buf) {
                Ok((n, p)) => {
                    v.bytes += n;
                    p
                }
                Err(err) => Some(format!("unreadable: {err}")),
            };
            v.objects += 1;
            if let Some(p) = problem {
                v.damaged.push(format!("{label}: {p}"));
            }
        }
    }
    v.finished = server.now();
    server.catalog.add_verify_run(&v)?;
    Ok(v)
}

fn check_file(
    path: &std::path::Path,
    kind: FileKind,
    name: &str,
    buf: &mut [u8],
) -> std::io::Result<(u64, Option<String>)> {
    let mut f = std::fs::File::open(path)?;
    if kind == FileKind::Manifest {
        let mut b = Vec::new();
        f.read_to_end(&mut b)?;
        let p = coffer_core::format::Manifest::decode(&b, name)
            .err()
            .map(|e| e.to_string());
        return Ok((b.len() as u64, p));
    }
    let mut h = blake3::Hasher::new();
    let mut n = 0u64;
    loop {
        let k = f.read(buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    let got = h.finalize().to_hex();
    Ok((
        n,
        (got.as_str() != name).then(|| format!("content hashes to {got}, not to its name (damaged)")),
    ))
}
