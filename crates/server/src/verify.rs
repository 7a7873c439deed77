//! Keyless verification: every content-addressed object is read again and hashed; a file
//! whose BLAKE3 is not its name is damaged. Manifests must decode. No key is needed, so the
//! server checks what it stores on its own schedule.
//!
//! Packs have parity files (docs/FORMAT.md "Parity"): a damaged pack that its parity
//! rebuilds is reported as repairable, and with `repair` written back in place (the rebuilt
//! bytes hash to the pack's name, so they are the bytes the client uploaded). An intact pack's
//! parity file is encoded again and compared; a damaged one is written again with `repair`.

use coffer_core::FileKind;

use crate::catalog::VerifyRun;
use crate::store::{is_hashed, Entry, KINDS};

/// Objects are read in pieces of this size.
const CHUNK: u32 = 8 << 20;
use crate::{Result, Server};

/// Verify one repository, record the run, and return it (`damaged` names each bad object).
pub fn run(server: &Server, repo: &str, repair: bool) -> Result<VerifyRun> {
    let started = server.now();
    let mut v = VerifyRun {
        repo: repo.to_string(),
        started,
        finished: started,
        objects: 0,
        bytes: 0,
        damaged: Vec::new(),
        repaired: Vec::new(),
    };
    for kind in KINDS {
        if !is_hashed(kind) && kind != FileKind::Manifest {
            continue;
        }
        for e in server.store.list(repo, kind)? {
            let label = format!("{}/{}", kind.dir(), e.name);
            if kind == FileKind::Pack {
                let (n, problem) = match check_pack(server, repo, &e, repair) {
                    Ok(Checked::Intact(n)) => (n, None),
                    Ok(Checked::Problem(n, p)) => (n, Some(p)),
                    Ok(Checked::Repaired(n, what)) => {
                        v.repaired.push(format!("{label}: {what}"));
                        (n, None)
                    }
                    Err(err) => (0, Some(format!("unreadable: {err}"))),
                };
                v.bytes += n;
                v.objects += 1;
                if let Some(p) = problem {
                    v.damaged.push(format!("{label}: {p}"));
                }
                continue;
            }
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

enum Checked {
    Intact(u64),
    Problem(u64, String),
    Repaired(u64, String),
}

/// A pack and its parity file: the pack hashes to its name, or its parity rebuilds it
/// (written back with `repair`); an intact pack's parity file is its parity (written again
/// with `repair` when it is not).
fn check_pack(server: &Server, repo: &str, e: &Entry, repair: bool) -> Result<Checked> {
    let Some(id) = coffer_core::format::Id::from_hex(&e.name)
        .ok()
        .map(coffer_core::format::PackId)
    else {
        return Ok(Checked::Problem(0, "not a pack name".into()));
    };
    let mut bytes = Vec::with_capacity(e.size as usize);
    while (bytes.len() as u64) < e.size {
        let want = (e.size - bytes.len() as u64).min(CHUNK as u64) as u32;
        let piece = server
            .store
            .read_range(repo, FileKind::Pack, &e.name, bytes.len() as u64, want)?;
        if piece.is_empty() {
            break;
        }
        bytes.extend_from_slice(&piece);
    }
    let n = bytes.len() as u64;
    let parity = server.store.read(repo, FileKind::Parity, &e.name)?;
    let got = blake3::hash(&bytes);
    if got.as_bytes() == id.as_bytes() {
        let Some(pb) = parity else {
            return Ok(Checked::Intact(n)); // written before parity, or by a client without it
        };
        return Ok(match coffer_core::parity::matches(&id, &bytes, &pb) {
            Ok(()) => Checked::Intact(n),
            Err(pe) if repair => {
                let again = coffer_core::parity::encode_like(&id, &bytes, &pb);
                let _lock = server.repo_lock(repo)?;
                if server.store.stat(repo, FileKind::Pack, &e.name)?.is_none() {
                    return Ok(Checked::Intact(n)); // removed by retention meanwhile
                }
                server.store.replace(repo, FileKind::Parity, &e.name, &again)?;
                Checked::Repaired(n, format!("its parity file was damaged ({pe}); written again"))
            }
            Err(pe) => Checked::Problem(n, format!("the pack is intact, its parity file is not: {pe}")),
        });
    }
    let damage = if n < e.size {
        format!("shorter than listed ({n} of {} bytes)", e.size)
    } else {
        format!("content hashes to {}, not to its name (damaged)", got.to_hex())
    };
    let Some(pb) = parity else {
        return Ok(Checked::Problem(
            n,
            format!("{damage}; no parity file to repair it from"),
        ));
    };
    match coffer_core::parity::repair(&id, &bytes, &pb) {
        Ok(fixed) if repair => {
            // under the repository's lock: retention does not move the pack meanwhile, and
            // two repairs (the scheduled verify, one by hand) do not write it at once
            let _lock = server.repo_lock(repo)?;
            if server.store.stat(repo, FileKind::Pack, &e.name)?.is_none() {
                return Ok(Checked::Intact(n)); // removed by retention meanwhile
            }
            server.store.replace(repo, FileKind::Pack, &e.name, &fixed.bytes)?;
            Ok(Checked::Repaired(
                n,
                format!("{damage}; rebuilt from its parity ({} damaged stretches) and written back", fixed.damaged_shards),
            ))
        }
        Ok(fixed) => Ok(Checked::Problem(
            n,
            format!(
                "{damage}; REPAIRABLE: its parity rebuilds it ({} damaged stretches): `coffer server verify --repair` writes it back",
                fixed.damaged_shards
            ),
        )),
        Err(pe) => Ok(Checked::Problem(n, format!("{damage}; not repairable from its parity: {pe}"))),
    }
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
