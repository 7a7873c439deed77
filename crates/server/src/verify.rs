//! Keyless verification: every content-addressed object is read again and hashed; a file
//! whose BLAKE3 is not its name is damaged. Manifests must decode. No key is needed, so the
//! server checks what it stores on its own schedule.

use coffer_core::FileKind;

use crate::catalog::VerifyRun;
use crate::store::{is_hashed, Entry, KINDS};

/// Objects are read in pieces of this size.
const CHUNK: u32 = 8 << 20;
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
    for kind in KINDS {
        if !is_hashed(kind) && kind != FileKind::Manifest {
            continue;
        }
        for e in server.store.list(repo, kind)? {
            let label = format!("{}/{}", kind.dir(), e.name);
            let problem = match check_object(server, repo, kind, &e) {
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

/// Bytes read and the problem found, if any.
fn check_object(server: &Server, repo: &str, kind: FileKind, e: &Entry) -> Result<(u64, Option<String>)> {
    if kind == FileKind::Manifest {
        let Some(b) = server.store.read(repo, kind, &e.name)? else {
            return Ok((0, Some("vanished while being checked".into())));
        };
        let p = coffer_core::format::Manifest::decode(&b, &e.name)
            .err()
            .map(|e| e.to_string());
        return Ok((b.len() as u64, p));
    }
    let mut h = blake3::Hasher::new();
    let mut n = 0u64;
    while n < e.size {
        let want = (e.size - n).min(CHUNK as u64) as u32;
        let piece = server.store.read_range(repo, kind, &e.name, n, want)?;
        if piece.is_empty() {
            return Ok((n, Some(format!("shorter than listed ({n} of {} bytes)", e.size))));
        }
        h.update(&piece);
        n += piece.len() as u64;
    }
    let got = h.finalize().to_hex();
    Ok((
        n,
        (got.as_str() != e.name).then(|| format!("content hashes to {got}, not to its name (damaged)")),
    ))
}
