//! What each fuzz target checks of one input: every decoder that reads bytes from storage or
//! from the network must refuse what it does not understand without panicking, hanging or
//! allocating without bound, and what it accepts must mean one thing (the two tree decoders
//! agree; what decodes, re-encodes and decodes to the same value).
//!
//! `fuzz/` (outside the workspace, nightly, libFuzzer: `scripts/fuzz`) calls these for each
//! generated input; the inputs that once failed, and the seeds, are kept in `fuzz/regressions`
//! and `fuzz/seeds` and run through the same functions by this crate's tests on every build.
//! A check fails by panicking.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;

use coffer_format::{IndexFile, KeyFile, LazyTree, Manifest, ObjectKind, Snapshot, Tree};

/// The targets, by name (the fuzz target `NAME` calls `check(NAME, data)`).
pub const TARGETS: &[&str] = &[
    "tree",
    "snapshot",
    "index",
    "pack_header",
    "manifest",
    "config",
    "envelope",
    "compress",
    "agent_poll",
    "run_report",
    "mysql_batch",
    "agent_config",
    "server_request",
    "parity",
    "key_file",
];

/// Run target `name`'s check on `data`.
pub fn check(name: &str, data: &[u8]) {
    match name {
        "tree" => tree(data),
        "snapshot" => snapshot(data),
        "index" => index(data),
        "pack_header" => pack_header(data),
        "manifest" => manifest(data),
        "config" => config(data),
        "envelope" => envelope(data),
        "compress" => compress(data),
        "agent_poll" => agent_poll(data),
        "run_report" => run_report(data),
        "mysql_batch" => mysql_batch(data),
        "agent_config" => agent_config(data),
        "server_request" => server_request(data),
        "parity" => parity(data),
        "key_file" => key_file(data),
        other => panic!("no fuzz target {other}"),
    }
}

/// Trees: the direct decoder (the encoder's own form) and ciborium (the reference) agree on
/// everything the direct one accepts; a tree that decodes re-encodes to one that decodes to
/// the same; the lazy decoder accepts exactly what the whole one does, node for node.
pub fn tree(data: &[u8]) {
    if let Some(direct) = Tree::decode_direct(data) {
        let reference = Tree::decode_reference(data)
            .unwrap_or_else(|e| panic!("the direct decoder accepted what the reference refuses: {e}"));
        assert_eq!(direct, reference, "the two tree decoders disagree");
    }
    let whole = Tree::decode(data);
    let lazy = LazyTree::new(data.to_vec());
    match (&whole, lazy) {
        (Ok(t), Ok(l)) => {
            let nodes: Vec<_> = l.nodes().collect();
            assert_eq!(nodes, t.nodes, "the lazy decoder reads other nodes");
            let mut again = t.clone();
            let bytes = again.encode();
            assert_eq!(Tree::decode(&bytes).expect("a re-encoded tree decodes"), *t);
        }
        (Err(_), Err(_)) => {}
        (w, l) => panic!("Tree::decode {:?} but LazyTree::new {:?}", w.is_ok(), l.is_ok()),
    }
}

pub fn snapshot(data: &[u8]) {
    if let Ok(s) = Snapshot::decode(data) {
        let again = Snapshot::decode(&s.encode()).expect("a re-encoded snapshot decodes");
        assert_eq!(again, s);
    }
}

pub fn index(data: &[u8]) {
    if let Ok(i) = IndexFile::decode(data) {
        assert_eq!(IndexFile::decode(&i.encode()).expect("re-encoded index"), i);
    }
    if let Ok((i, body, _vouch)) = IndexFile::decode_vouched(data) {
        assert!(body.len() <= data.len());
        assert_eq!(IndexFile::decode(&i.encode()).expect("re-encoded index"), i);
    }
}

/// The first 8 bytes say how long the pack's data is; the rest is the header's plaintext.
pub fn pack_header(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let data_len = u64::from_le_bytes(data[..8].try_into().unwrap());
    if let Ok(entries) = coffer_format::decode_header(&data[8..], data_len) {
        let again = coffer_format::decode_header(&coffer_format::encode_header(&entries), data_len)
            .expect("a re-encoded pack header decodes");
        assert_eq!(again, entries);
    }
}

pub fn manifest(data: &[u8]) {
    let name = "0".repeat(64);
    if let Ok(m) = Manifest::decode(data, &name) {
        assert_eq!(
            Manifest::decode(&m.encode(), &name).expect("re-encoded manifest"),
            m
        );
    }
}

/// Parity files: `len:u32le || pack || parity`. Whatever a parity file says, a repair either
/// fails or gives bytes that hash to the pack's name (the name is the pack's hash, as in a
/// repository, or, with the low bit of the first byte set, the one the parity file claims);
/// a pack that hashes to its name with the parity encoded from it checks out and is intact.
pub fn parity(data: &[u8]) {
    use coffer_core::parity;
    if data.len() < 4 {
        return;
    }
    let n = (u32::from_le_bytes(data[..4].try_into().unwrap()) as usize).min(data.len() - 4);
    let (pack, file) = data[4..].split_at(n);
    let mut id = coffer_format::PackId(coffer_core::crypto::storage_id(pack));
    if data[0] & 1 == 1 && file.len() >= 36 {
        let mut claimed = [0u8; 32];
        claimed.copy_from_slice(&file[4..36]);
        id = coffer_format::PackId(coffer_format::Id(claimed));
    }
    let _ = parity::header(&id, file);
    if let Ok(r) = parity::repair(&id, pack, file) {
        assert_eq!(
            coffer_core::crypto::storage_id(&r.bytes),
            id.0,
            "a repair gave bytes that are not the pack"
        );
    }
    let _ = parity::matches(&id, pack, file);
    // small packs: the parity encoded from a pack is its parity, and repairs nothing
    if !pack.is_empty() && pack.len() <= 1 << 16 && data[0] & 1 == 0 {
        let own = parity::encode(&id, &[pack], 100);
        parity::matches(&id, pack, &own).expect("a pack's own parity matches it");
        let r = parity::repair(&id, pack, &own).expect("an intact pack needs no repair");
        assert_eq!((r.damaged_shards, r.bytes.as_slice()), (0, pack));
    }
}

/// The repository config and key files.
pub fn config(data: &[u8]) {
    if let Ok(c) = coffer_format::Config::decode(data) {
        let again = coffer_format::Config::decode(&c.encode()).expect("re-encoded config");
        assert_eq!(again.encode(), c.encode());
    }
    if let Ok(k) = KeyFile::decode(data) {
        KeyFile::decode(&k.encode()).expect("a re-encoded key file decodes");
    }
    let _ = coffer_core::crypto::parse_generated_key(data);
}

/// Key files unwrapped with a credential (`coffer_core::crypto::unwrap_key_file`, what opening
/// a repository does with each file under `keys/`). The low bit of the first byte picks:
/// - 0: the rest is a key file as stored. Tried with a generated key (no stretching) and, when
///   its argon2 cost is at most 64 KiB and one pass, with a passphrase: whatever it claims, a
///   file this input forged never yields a key, and nothing panics or runs unbounded.
/// - 1: the rest is the plaintext a key file wraps (key material: CBOR), sealed under a
///   generated key's wrapping key into a key file: it unwraps to a key that seals and opens
///   (or, write-only, seals), or is said damaged; never "not opened".
pub fn key_file(data: &[u8]) {
    key_file_outcome(data);
}

/// [`key_file`], saying what came of the input: "refused" (mode 0), "key" or "damaged" (mode 1).
fn key_file_outcome(data: &[u8]) -> &'static str {
    use coffer_core::crypto::{unwrap_key_file, Credential, Unwrapped};
    let Some((&mode, rest)) = data.split_first() else {
        return "refused";
    };
    let generated = Credential::Generated(zeroize::Zeroizing::new([9u8; 32]));
    if mode & 1 == 0 {
        let cheap = KeyFile::decode(rest)
            .map(|k| k.kdf.memory_kib <= 64 && k.kdf.iterations <= 1)
            .unwrap_or(true);
        let passphrase = Credential::Passphrase(b"fuzz");
        let credentials: &[&Credential] = if cheap {
            &[&generated, &passphrase]
        } else {
            &[&generated]
        };
        for c in credentials {
            match unwrap_key_file(c, rest, "fuzz") {
                Ok(Unwrapped::Key(..)) | Ok(Unwrapped::Damaged(_)) => {
                    panic!("a key file made without the credential opened")
                }
                Ok(Unwrapped::OtherKind) | Ok(Unwrapped::NotOpened) => {}
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
        return "refused";
    }
    let (kdf, wrap) = generated.new_slot().unwrap();
    let kf = KeyFile {
        version: coffer_format::FORMAT_VERSION,
        created: chrono::DateTime::parse_from_rfc3339("2026-12-07T00:00:00Z").unwrap(),
        hostname: "fuzz".into(),
        username: "fuzz".into(),
        kind: "full".into(),
        kdf,
        wrapped: coffer_core::crypto::seal_with(&wrap, ObjectKind::KeyWrap, b"", rest),
    };
    match unwrap_key_file(&generated, &kf.encode(), "fuzz").unwrap() {
        Unwrapped::Key(key, _) => {
            let sealed = key.seal(ObjectKind::Snapshot, b"", b"plain");
            if key.can_read() {
                let opened = key.open(ObjectKind::Snapshot, b"", &sealed, "fuzz").unwrap();
                assert_eq!(opened, b"plain");
            }
            "key"
        }
        Unwrapped::Damaged(e) => {
            assert!(!e.to_string().is_empty());
            "damaged"
        }
        Unwrapped::OtherKind | Unwrapped::NotOpened => {
            panic!("a key file sealed under the credential's wrapping key did not open")
        }
    }
}

/// Envelopes: the first byte picks the object kind; what follows is opened with a fixed key
/// (a forgery never opens), and sealed then opened comes back whole.
pub fn envelope(data: &[u8]) {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let kinds = [
        ObjectKind::Data,
        ObjectKind::Tree,
        ObjectKind::Bundle,
        ObjectKind::PackHeader,
        ObjectKind::Index,
        ObjectKind::Snapshot,
        ObjectKind::Config,
        ObjectKind::KeyWrap,
    ];
    let kind = kinds[usize::from(k) % kinds.len()];
    let key = [7u8; 32];
    assert!(
        coffer_core::crypto::open_with(&key, kind, b"id", rest, "fuzz").is_err(),
        "an envelope made without the key opened"
    );
    let sealed = coffer_core::crypto::seal_with(&key, kind, b"id", rest);
    let opened = coffer_core::crypto::open_with(&key, kind, b"id", &sealed, "fuzz").expect("opens");
    assert_eq!(opened, rest);
    let other = kinds[(usize::from(k) + 1) % kinds.len()];
    assert!(coffer_core::crypto::open_with(&key, other, b"id", &sealed, "fuzz").is_err());
}

/// Compressed blobs and bundles: the first 4 bytes say the length the blob claims (up to 16
/// MiB: a forged length must not make the decoder allocate more than that).
pub fn compress(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let claimed = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize % (16 << 20);
    let rest = &data[4..];
    if let Ok(out) = coffer_core::compress::decode_blob(rest.to_vec(), claimed, "fuzz") {
        assert_eq!(out.len(), claimed, "a blob of another length than it claims");
    }
    if let Ok(out) = coffer_core::compress::decode_blob_max(rest.to_vec(), claimed, "fuzz") {
        assert!(out.len() <= claimed);
    }
    if let Ok(out) = coffer_core::compress::decode_bundle(rest, "fuzz") {
        assert!(
            out.len() <= coffer_format::MAX_BUNDLE_SIZE as usize * 2,
            "{}",
            out.len()
        );
    }
}

/// The local configuration the agent checks a server's jobs against.
const LOCAL: &str = r#"
[repository.company]
location = "https://backup.example:8443/web1"
password_file = "/etc/coffer/company.key"

[managed]
server = "company"
paths = ["/var/www"]
databases = true
min_interval = "1s"
"#;

/// What a server sends an agent: the poll's answer parses or is refused whole; every job it
/// carries is screened against the local bounds, and every job taken stays within them.
pub fn agent_poll(data: &[u8]) {
    let Ok(poll) = serde_json::from_slice::<coffer_wire::AgentPoll>(data) else {
        return;
    };
    for r in &poll.restore {
        let _ = r.item.valid();
        let _ = coffer_wire::valid_snapshot(&r.snapshot);
    }
    let path = std::path::Path::new("/etc/coffer/coffer.toml");
    let local = coffer_agent::Config::parse(path, LOCAL).expect("the fuzzer's own configuration");
    if let Ok(s) = coffer_agent::screen(&local, LOCAL, poll.generation, &poll.jobs) {
        for name in &s.accepted {
            let job = &s.config.jobs[name];
            assert!(job.managed, "{name} taken but not marked managed");
            assert!(job.before.is_none() && job.after.is_none(), "{name} took a hook");
            for p in &job.paths {
                assert!(p.starts_with("/var/www"), "{name} took {}", p.display());
            }
            assert!(job.to.iter().all(|t| t == "company"), "{name} goes elsewhere");
        }
    }
}

/// What a client sends the server: run reports, progress, listings.
pub fn run_report(data: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<coffer_server::records::RunReport>(data) {
        let _ = r.validated();
    }
    if let Ok(p) = serde_json::from_slice::<coffer_wire::RunProgress>(data) {
        let _ = p.valid();
    }
    let _ = serde_json::from_slice::<coffer_wire::BrowseAnswer>(data);
}

/// The MySQL dump reader that joins INSERT lines: every line that is not an INSERT comes out
/// as it went in, in order, and the output is never much larger than the input.
pub fn mysql_batch(data: &[u8]) {
    let mut out = Vec::new();
    coffer_db::InsertBatcher::new(data)
        .read_to_end(&mut out)
        .expect("reading from memory");
    let others = |b: &[u8]| -> Vec<Vec<u8>> {
        b.split_inclusive(|&c| c == b'\n')
            .filter(|l| !l.starts_with(b"INSERT INTO `"))
            .map(<[u8]>::to_vec)
            .collect()
    };
    assert_eq!(others(&out), others(data), "a line that is no INSERT changed");
    assert!(
        out.len() <= data.len() + data.len() / 8 + 16,
        "{} -> {}",
        data.len(),
        out.len()
    );
}

/// The local configuration file (TOML): refused with a place, or checked.
pub fn agent_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match coffer_agent::Config::parse(std::path::Path::new("/etc/coffer/coffer.toml"), text) {
        Ok(_) => {}
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// One server for every input of `server_request`: its data directory, a runtime, and the
/// router as `coffer server` serves it (without TLS; the TLS layer is rustls's).
struct Served {
    _dir: std::path::PathBuf,
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    token: String,
}

fn served() -> &'static Served {
    static S: std::sync::OnceLock<Served> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("coffer-fuzz-server-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let server = coffer_server::Server::open(&dir, None, Default::default(), Default::default())
            .expect("a server in a temporary directory");
        let token = server
            .add_client("web1", "web1", coffer_server::catalog::Role::Append)
            .expect("a client");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        let router = {
            let _in = rt.enter();
            coffer_server::http::router(std::sync::Arc::new(server), Default::default())
        };
        Served {
            _dir: dir,
            rt,
            router,
            token,
        }
    })
}

/// What anyone on the network can send the server: the first byte picks the method and
/// whether the client's token goes with it, then the path up to a newline, then header lines
/// up to an empty line, then the body. The router answers every one (no panic), never with
/// a 500 (an internal error is a bug). A request that hangs is libFuzzer's to report (its
/// `-timeout`); nothing here judges by the clock.
pub fn server_request(data: &[u8]) {
    let _ = server_status(data);
}

/// [`server_request`]'s check, and the status of the answer (none: no request made, or an
/// agent's long poll left waiting).
fn server_status(data: &[u8]) -> Option<u16> {
    use tower_service::Service;
    let (&first, rest) = data.split_first()?;
    let method = ["GET", "POST", "PUT", "DELETE", "HEAD"][usize::from(first & 7) % 5];
    let authorized = first & 8 != 0;
    let (path, rest) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let path = std::str::from_utf8(path).ok()?;
    let s = served();
    let mut req = axum::http::Request::builder().method(method).uri(path);
    let mut body = rest;
    while let Some(i) = body.iter().position(|&b| b == b'\n') {
        let (line, after) = (&body[..i], &body[i + 1..]);
        body = after;
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        req = req.header(&line[..colon], &line[colon + 1..]);
    }
    if authorized {
        req = req.header("authorization", format!("Bearer {}", s.token));
    }
    // (None: not a request http can even make)
    let req = req.body(axum::body::Body::from(body.to_vec())).ok()?;
    let mut router = s.router.clone();
    let answered = s.rt.block_on(async {
        if path.contains("/agent") {
            // (an agent's long poll waits for a change by design: an answer comes at once or
            // it is left waiting; nothing is asserted of how long either took)
            tokio::time::timeout(std::time::Duration::from_millis(100), router.call(req))
                .await
                .ok()
        } else {
            Some(router.call(req).await)
        }
    });
    let resp = match answered? {
        Ok(resp) => resp,
        Err(e) => match e {},
    };
    assert_ne!(
        resp.status(),
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "{method} {path}: 500"
    );
    Some(resp.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn dir(kind: &str, target: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz")
            .join(kind)
            .join(target)
    }

    /// The server target reaches the router: what it answers depends on the token.
    #[test]
    fn the_server_target_is_answered() {
        assert_eq!(server_status(b"\x00/\n\n"), Some(200));
        assert_eq!(server_status(b"\x00/web1/config\n\n"), Some(401));
        let with_token = server_status(b"\x08/web1/config\n\n");
        assert!(with_token.is_some_and(|s| s != 401), "{with_token:?}");
        assert_eq!(server_status(b"\x00/console/client/web1\n\n"), Some(303));
    }

    /// The key_file target reaches a real key from a real key file's material (a seed), and
    /// says "damaged" when that material is cut short.
    #[test]
    fn the_key_file_target_reaches_the_key() {
        let seed = std::fs::read(dir("seeds", "key_file").join("material-37ea11a6")).unwrap();
        assert_eq!(key_file_outcome(&seed), "key");
        assert_eq!(key_file_outcome(&seed[..seed.len() / 2]), "damaged");
        let file = std::fs::read(dir("seeds", "key_file").join("file-37ea11a6")).unwrap();
        assert_eq!(key_file_outcome(&file), "refused");
    }

    /// Every kept input of every target: the seeds, and each input that once failed (fixed
    /// since; a regression fails here).
    #[test]
    fn kept_inputs_pass_their_checks() {
        let mut n = 0;
        for target in TARGETS {
            for kind in ["seeds", "regressions"] {
                let Ok(entries) = std::fs::read_dir(dir(kind, target)) else {
                    continue;
                };
                for e in entries.flatten() {
                    let data = std::fs::read(e.path()).unwrap();
                    check(target, &data);
                    n += 1;
                }
            }
        }
        assert!(n > 0, "no kept input found under fuzz/");
    }
}
