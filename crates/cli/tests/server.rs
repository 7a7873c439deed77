//! `coffer server` on 127.0.0.1, exercised by the real client and by raw HTTPS requests:
//! roles, the append-only attack suite, server-side retention against a snapshot flood,
//! keyless verification, and a kill -9 during concurrent backups.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::server::{digest_dir, ServerProc};
use common::{code, digest_tree, pseudo_random, stderr, Env};

struct Client<'a> {
    e: &'a Env,
    url: String,
    token: String,
    cacert: std::path::PathBuf,
}

impl Client<'_> {
    fn run(&self, args: &[&str]) -> Output {
        self.e
            .cmd()
            .env("COFFER_REPOSITORY", &self.url)
            .env("COFFER_TOKEN", &self.token)
            .env("COFFER_CACERT", &self.cacert)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "coffer {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            stderr(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn snapshot_ids(&self) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["snapshots", "--json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }
}

fn client<'a>(e: &'a Env, s: &ServerProc, repo: &str, token: &str) -> Client<'a> {
    Client {
        e,
        url: s.url(repo),
        token: token.to_string(),
        cacert: s.cacert.clone(),
    }
}

/// A server on a test clock set to 2028-01-03 12:00 UTC, a Monday (ISO week 1: after the packs'
/// real upload times, so that they are past the 1 h pack grace on the simulated clock), with
/// retention only on demand; the clock file and that time.
fn server_on_a_test_clock(e: &Env) -> (ServerProc, std::path::PathBuf, i64) {
    let clock = e.path("clock");
    let base: i64 = 1_830_513_600;
    fs::write(&clock, base.to_string()).unwrap();
    let s = ServerProc::start(
        &e.path("server"),
        &[
            "--test-clock",
            clock.to_str().unwrap(),
            "--pack-grace",
            "1h",
            "--retention-every",
            "0",
        ],
    );
    (s, clock, base)
}

/// Upload, with the token in `auth`, a 200-byte garbage snapshot (from `seed`) and a manifest
/// naming `packs` (quoted pack names, comma-separated): what a thief with a token can do.
fn put_garbage_snapshot(s: &ServerProc, auth: &str, seed: u64, packs: &str) {
    let body = pseudo_random(seed, 200);
    let name = blake3::hash(&body).to_hex().to_string();
    let manifest = format!(r#"{{"version":1,"snapshot":"{name}","packs":[{packs}]}}"#);
    for (kind, b) in [("manifests", manifest.as_bytes()), ("snapshots", &body[..])] {
        let r = s.raw(
            &format!(
                "PUT /web/{kind}/{name} HTTP/1.1\nHost: x\n{auth}\nContent-Length: {}\nConnection: close",
                b.len()
            ),
            b,
        );
        assert_eq!(r.as_ref().map(|r| r.0), Some(201), "{r:?}");
    }
}

fn build_source(src: &Path, seed: u64) {
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::create_dir_all(src.join("www")).unwrap();
    fs::write(src.join("etc/app.conf"), format!("seed = {seed}\n")).unwrap();
    fs::write(src.join("www/big.bin"), pseudo_random(seed, 2 << 20)).unwrap();
    for i in 0..20u64 {
        fs::write(
            src.join(format!("www/p{i}.html")),
            pseudo_random(seed * 100 + i, 3000),
        )
        .unwrap();
    }
}

fn restore_and_compare(
    c: &Client<'_>,
    snap: &str,
    src: &Path,
    expected: &std::collections::BTreeMap<Vec<u8>, (u64, String, u32)>,
    out: &Path,
) {
    let _ = fs::remove_dir_all(out);
    c.ok(&["restore", snap, "--target", out.to_str().unwrap()]);
    assert_eq!(
        &digest_tree(&out.join(src.strip_prefix("/").unwrap())),
        expected,
        "snapshot {snap} restored differently"
    );
}

#[test]
fn backup_restore_and_what_each_role_may_do() {
    let e = Env::new();
    let s = ServerProc::start(&e.path("server"), &[]);
    let append = s.add_client("web1", "web", "append");
    let read = s.add_client("restorer", "web", "read");
    let admin = s.add_client("admin", "web", "admin");
    let other = s.add_client("db1", "db", "append");
    let list = s.admin_ok(&["client", "list", "--json"]);
    assert!(list.contains("\"web1\"") && list.contains("\"append\""), "{list}");
    assert!(!list.contains(&append), "tokens are never listed");
    assert!(
        !fs::read(s.data.join("server.db"))
            .unwrap()
            .windows(append.len())
            .any(|w| w == append.as_bytes()),
        "the catalog holds token hashes only"
    );

    let a = client(&e, &s, "web", &append);
    let src = e.path("src");
    build_source(&src, 1);
    let expected = digest_tree(&src);
    a.ok(&["init", "-q"]);
    let first =
        a.e.cmd()
            .env("COFFER_REPOSITORY", &a.url)
            .env("COFFER_TOKEN", &append)
            .env("COFFER_CACERT", &s.cacert)
            .args(["backup", "--json", src.to_str().unwrap()])
            .output()
            .unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    let again = a.ok(&["backup", "--json", src.to_str().unwrap()]);
    let summary: serde_json::Value = serde_json::from_str(again.lines().last().unwrap()).unwrap();
    assert_eq!(
        summary["bytes_read"].as_u64(),
        Some(0),
        "unchanged: nothing read: {again}"
    );
    let ids = a.snapshot_ids();
    assert_eq!(ids.len(), 2);
    // every snapshot has its manifest on the server
    for id in &ids {
        assert!(
            s.data.join("repos/web/manifests").join(id).exists(),
            "manifest of {id}"
        );
    }

    // read: restores and checks, cannot write
    let r = client(&e, &s, "web", &read);
    restore_and_compare(&r, "latest", &src, &expected, &e.path("out"));
    r.ok(&["check", "--read-data"]);
    let o = r.run(&["backup", "-q", src.to_str().unwrap()]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("403") && stderr(&o).contains("role read"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stderr(&o).trim().lines().count(), 1, "one line: {}", stderr(&o));

    // append: cannot forget; prune is the server's
    let before = digest_dir(&s.data.join("repos"));
    let o = a.run(&["forget", &ids[0]]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("may not delete"), "{}", stderr(&o));
    let o = a.run(&["prune"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("pruned by the server"), "{}", stderr(&o));
    assert_eq!(
        digest_dir(&s.data.join("repos")),
        before,
        "refused requests changed nothing"
    );

    // another repository's token sees nothing of this one
    let o = client(&e, &s, "web", &other).run(&["snapshots"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("no access to repository \"web\""),
        "{}",
        stderr(&o)
    );
    // a wrong token, and none at all
    let o = client(&e, &s, "web", "cft_not-a-real-token").run(&["snapshots"]);
    assert!(stderr(&o).contains("unknown token"), "{}", stderr(&o));
    let o = e
        .cmd()
        .env("COFFER_REPOSITORY", s.url("web"))
        .env("COFFER_CACERT", &s.cacert)
        .args(["snapshots"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("no token"), "{}", stderr(&o));
    // without the server's certificate the connection is refused, never silently accepted
    let o = e
        .cmd()
        .env("COFFER_REPOSITORY", s.url("web"))
        .env("COFFER_TOKEN", &append)
        .env("COFFER_CACERT", "/etc/ssl/certs/ca-certificates.crt")
        .args(["snapshots"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "an untrusted certificate must fail: {}", stderr(&o));

    // admin: forget goes to the trash, which can be restored
    let ad = client(&e, &s, "web", &admin);
    ad.ok(&["forget", "-q", &ids[0]]);
    assert_eq!(ad.snapshot_ids(), vec![ids[1].clone()]);
    let trash = s.admin_ok(&["trash", "list", "web"]);
    assert!(trash.contains(&format!("snapshots/{}", ids[0])), "{trash}");
    assert!(trash.contains(&format!("manifests/{}", ids[0])), "{trash}");
    s.admin_ok(&["trash", "restore", "web"]);
    assert_eq!(ad.snapshot_ids().len(), 2);
    restore_and_compare(&r, &ids[0], &src, &expected, &e.path("out"));

    // a quota: a backup that would exceed it fails with one line, and nothing is lost
    let q = s.add_client("small1", "small", "append");
    let c = client(&e, &s, "small", &q);
    c.ok(&["init", "-q"]);
    s.admin_ok(&["repo", "set", "small", "--quota", "64K"]);
    let o = c.run(&["backup", "-q", src.to_str().unwrap()]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("over its quota"), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    // a refused upload still has its answer read: the server takes the body before it
    // answers, so a client in the middle of sending 8 MiB sees 507, not a reset connection
    let body = vec![7u8; 8 << 20];
    let name = blake3::hash(&body).to_hex();
    let head = format!(
        "PUT /small/data/{name} HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {q}\nContent-Length: {}",
        body.len()
    );
    let answer = s.raw(&head, &body);
    assert!(
        matches!(&answer, Some((507, m)) if m.contains("over its quota")),
        "{answer:?}"
    );
    s.admin_ok(&["repo", "set", "small", "--quota", "none"]);
    c.ok(&["backup", "-q", src.to_str().unwrap()]);
    restore_and_compare(&c, "latest", &src, &expected, &e.path("out"));

    // revoked clients stop at once
    s.admin_ok(&["client", "remove", "restorer"]);
    let o = r.run(&["snapshots"]);
    assert!(stderr(&o).contains("unknown token"), "{}", stderr(&o));
}

/// Every request an append token could use to destroy or corrupt data is refused, and the
/// stored bytes are identical before and after.
#[test]
fn append_token_attack_suite() {
    let e = Env::new();
    let s = ServerProc::start(&e.path("server"), &[]);
    let append = s.add_client("web1", "web", "append");
    let _other = s.add_client("db1", "db", "append");
    let a = client(&e, &s, "web", &append);
    let src = e.path("src");
    build_source(&src, 2);
    a.ok(&["init", "-q"]);
    a.ok(&["backup", "-q", src.to_str().unwrap()]);
    let snap = a.snapshot_ids().pop().unwrap();
    let pack = fs::read_dir(s.data.join("repos/web/data"))
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .next()
        .unwrap();
    let before = (
        digest_dir(&s.data.join("repos")),
        digest_dir(&s.data.join("trash")),
    );

    let auth = format!("Authorization: Bearer {append}");
    let host = "Host: 127.0.0.1";
    let put = |path: &str, body: &[u8]| {
        s.raw(
            &format!(
                "PUT {path} HTTP/1.1\n{host}\n{auth}\nContent-Length: {}\nConnection: close",
                body.len()
            ),
            body,
        )
    };
    let req = |method: &str, path: &str| {
        s.raw(
            &format!("{method} {path} HTTP/1.1\n{host}\n{auth}\nContent-Length: 0\nConnection: close"),
            b"",
        )
    };
    let refused = |what: &str, r: Option<(u16, String)>| {
        let (status, body) = r.unwrap_or((0, "connection closed".into()));
        assert!(
            !(200..300).contains(&status),
            "{what}: accepted ({status} {body})"
        );
        eprintln!("{what}: {status} {body}");
        status
    };
    let garbage = b"not what was stored".to_vec();
    let garbage_name = blake3::hash(&garbage).to_hex().to_string();

    // deletes
    assert_eq!(
        refused("delete pack", req("DELETE", &format!("/web/data/{pack}"))),
        403
    );
    assert_eq!(
        refused(
            "delete snapshot",
            req("DELETE", &format!("/web/snapshots/{snap}"))
        ),
        403
    );
    assert_eq!(refused("delete config", req("DELETE", "/web/config")), 403);
    let index = fs::read_dir(s.data.join("repos/web/index"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    assert_eq!(
        refused(
            "delete index",
            req("DELETE", &format!("/web/index/{}", index.to_string_lossy()))
        ),
        403
    );
    // overwrites: with other bytes, and with the very same bytes
    assert_eq!(
        refused("overwrite pack", put(&format!("/web/data/{pack}"), &garbage)),
        409
    );
    assert_eq!(refused("overwrite config", put("/web/config", &garbage)), 409);
    let same = fs::read(s.data.join(format!("repos/web/snapshots/{snap}"))).unwrap();
    assert_eq!(
        refused("rewrite snapshot", put(&format!("/web/snapshots/{snap}"), &same)),
        409
    );
    // rename or copy verbs do not exist
    refused("MOVE", s.raw(&format!("MOVE /web/data/{pack} HTTP/1.1\n{host}\n{auth}\nDestination: /web/data/{garbage_name}\nContent-Length: 0\nConnection: close"), b""));
    refused("PATCH", req("PATCH", &format!("/web/data/{pack}")));
    // content that does not hash to its name
    let wrong = "ab".repeat(32);
    assert_eq!(
        refused("hash mismatch", put(&format!("/web/data/{wrong}"), &garbage)),
        422
    );
    assert_eq!(
        refused(
            "snapshot hash mismatch",
            put(&format!("/web/snapshots/{wrong}"), &garbage)
        ),
        422
    );
    // a snapshot without a manifest
    assert_eq!(
        refused(
            "snapshot without manifest",
            put(&format!("/web/snapshots/{garbage_name}"), &garbage)
        ),
        409
    );
    // a truncated upload: announces more than it sends, then the client dies
    let r = s.raw(
        &format!(
            "PUT /web/data/{garbage_name} HTTP/1.1\n{host}\n{auth}\nContent-Length: 1000\nX-Close-Early: 1"
        ),
        &garbage,
    );
    // (the helper drops the connection: no answer to read) the server drops the upload: its
    // staged file goes, and nothing is stored under the name
    assert!(r.is_none());
    common::wait_until(
        "the server to drop the truncated upload",
        || fs::read_dir(s.data.join("repos/web/.incoming")).map_or(true, |d| d.count() == 0),
        || s.exited(),
    );
    assert!(
        !s.data
            .join("repos/web/data")
            .join(&garbage_name[..2])
            .join(&garbage_name)
            .exists(),
        "a truncated upload was stored"
    );
    // ...and one that sends more than it announced
    refused(
        "overlong body",
        s.raw(
            &format!(
                "PUT /web/data/{garbage_name} HTTP/1.1\n{host}\n{auth}\nContent-Length: 5\nConnection: close"
            ),
            &garbage,
        ),
    );
    // names that try to leave their directory
    for path in [
        "/web/data/..".to_string(),
        "/web/data/%2e%2e".to_string(),
        "/web/data/%2e%2e%2fconfig".to_string(),
        "/web/data/..%2f..%2f..%2fserver.db".to_string(),
        "/web/../db/config".to_string(),
        "/web/data/../../db/config".to_string(),
        "/%2e%2e/server.db".to_string(),
        "/web/keys/%2fetc%2fpasswd".to_string(),
        "//etc/passwd".to_string(),
        "/web/data//etc/passwd".to_string(),
        format!("/web/data/{}", "A".repeat(64)),
        format!("/web/locks/{garbage_name}x"),
    ] {
        refused(&format!("PUT {path}"), put(&path, &garbage));
        refused(&format!("GET {path}"), req("GET", &path));
    }
    // parity files: for a pack the server does not hold (they would fill the quota with
    // files no retention removes), over an existing one, deleted by an append token
    let id = |h: &str| coffer_core::format::PackId(coffer_core::format::Id::from_hex(h).unwrap());
    let forged = coffer_core::parity::encode(&id(&garbage_name), &[&garbage], 100);
    assert_eq!(
        refused(
            "parity of no pack",
            put(&format!("/web/parity/{garbage_name}"), &forged)
        ),
        422
    );
    let over = coffer_core::parity::encode(&id(&pack), &[&garbage], 100);
    assert!(
        matches!(
            refused("parity over parity", put(&format!("/web/parity/{pack}"), &over)),
            409 | 422
        ),
        "an existing parity file is never replaced by a client"
    );
    assert_eq!(
        refused("delete parity", req("DELETE", &format!("/web/parity/{pack}"))),
        403
    );
    // another client's repository
    assert_eq!(refused("other repo read", req("GET", "/db/config")), 403);
    assert_eq!(refused("other repo list", req("GET", "/db/snapshots/")), 403);
    assert_eq!(
        refused(
            "other repo write",
            put(&format!("/db/data/{garbage_name}"), &garbage)
        ),
        403
    );
    assert_eq!(refused("other repo create", req("POST", "/db")), 403);
    // oversized bodies are refused from their announced length, before any byte is read
    for (path, len) in [
        ("/web/config".to_string(), 2u64 << 20),
        (format!("/web/locks/{}", "0".repeat(48)), 1 << 20),
        (format!("/web/data/{garbage_name}"), 1 << 40),
    ] {
        let r = s.raw(
            &format!("PUT {path} HTTP/1.1\n{host}\n{auth}\nContent-Length: {len}\nConnection: close"),
            b"",
        );
        assert_eq!(refused(&format!("oversized {path}"), r), 413);
    }
    // no length at all
    assert_eq!(refused("chunked", s.raw(&format!("PUT /web/data/{garbage_name} HTTP/1.1\n{host}\n{auth}\nTransfer-Encoding: chunked\nConnection: close"), b"5\r\nhello\r\n0\r\n\r\n")), 411);
    // no token, a wrong token
    assert_eq!(
        refused(
            "no token",
            s.raw(
                &format!("DELETE /web/data/{pack} HTTP/1.1\n{host}\nConnection: close"),
                b""
            )
        ),
        401
    );
    assert_eq!(refused("bad token", s.raw(&format!("DELETE /web/data/{pack} HTTP/1.1\n{host}\nAuthorization: Bearer cft_x\nConnection: close"), b"")), 401);

    let after = (
        digest_dir(&s.data.join("repos")),
        digest_dir(&s.data.join("trash")),
    );
    assert_eq!(before, after, "the server's storage changed");
    // and the repository is intact
    a.ok(&["check", "--read-data"]);
    // the server is still serving
    assert_eq!(
        s.raw("GET / HTTP/1.1\nHost: x\nConnection: close", b"")
            .unwrap()
            .0,
        200
    );

    // Objects an append token may write but that do not decrypt (what a compromised client
    // could upload) stop nobody: garbage index and snapshot files are skipped with a
    // message, and the next backup goes on.
    let junk = pseudo_random(4242, 300);
    let junk_name = blake3::hash(&junk).to_hex().to_string();
    let manifest = format!(r#"{{"version":1,"snapshot":"{junk_name}","packs":[]}}"#);
    for (kind, b) in [
        ("index", &junk[..]),
        ("manifests", manifest.as_bytes()),
        ("snapshots", &junk[..]),
    ] {
        assert_eq!(
            put(&format!("/web/{kind}/{junk_name}"), b).map(|r| r.0),
            Some(201),
            "{kind}"
        );
    }
    // marks are prune's, and prune is the server's: not writable with an append token
    assert_eq!(
        refused("mark", put(&format!("/web/marks/{junk_name}"), &junk)),
        403
    );
    build_source(&src, 22);
    let o = a.run(&["backup", "-q", src.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("skipped"), "{}", stderr(&o));
    let o = a.run(&["snapshots", "--json"]);
    assert_eq!(code(&o), 1, "a garbage snapshot is reported");
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        listed.as_array().unwrap().len(),
        2,
        "the real snapshots are listed"
    );
    // and the number of key files an append token may add is capped
    let mut added = 0;
    for i in 0..40u64 {
        let k = pseudo_random(9000 + i, 100);
        let name = blake3::hash(&k).to_hex().to_string();
        match put(&format!("/web/keys/{name}"), &k).map(|r| r.0) {
            Some(201) => added += 1,
            Some(403) => break,
            other => panic!("key upload: {other:?}"),
        }
    }
    assert_eq!(added, 15, "one key from init, 15 more, then refused");
    let o = a.run(&["snapshots", "--json"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

/// One client backs up daily for 30 (simulated) days, then floods 1,000 snapshots in one
/// burst. Retention (keep-daily 7, keep-weekly 4), judged by when the server received each
/// snapshot, keeps the daily and weekly snapshots from before the burst; they restore. The
/// burst's snapshots name no pack in their manifests: they take no slot at all.
#[test]
fn a_snapshot_flood_cannot_push_out_history() {
    let e = Env::new();
    let (s, clock, base) = server_on_a_test_clock(&e);
    let clock_s = clock.to_str().unwrap().to_string();
    let token = s.add_client("web1", "web", "append");
    let read = s.add_client("restorer", "web", "read");
    let a = client(&e, &s, "web", &token);
    a.ok(&["init", "-q"]);
    let src = e.path("src");
    let mut days = Vec::new(); // (day, snapshot id, digest)
    for day in 0..30i64 {
        fs::write(&clock, (base + day * 86_400).to_string()).unwrap();
        let _ = fs::remove_dir_all(&src);
        build_source(&src, 1000 + day as u64);
        let out = a.ok(&["backup", "--json", src.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        let id = v["snapshot_id"].as_str().unwrap().to_string();
        days.push((day, id, digest_tree(&src)));
    }

    // the burst, on day 30: a compromised client uploads 1,000 snapshots (garbage the server
    // cannot tell from real ones), each with a manifest naming no pack
    fs::write(&clock, (base + 30 * 86_400 + 3600).to_string()).unwrap();
    let auth = format!("Authorization: Bearer {token}");
    for i in 0..1000u64 {
        put_garbage_snapshot(&s, &auth, 1_000_000 + i, "");
    }
    assert_eq!(
        fs::read_dir(s.data.join("repos/web/snapshots")).unwrap().count(),
        1030
    );

    // a day later the server applies its policy
    fs::write(&clock, (base + 31 * 86_400).to_string()).unwrap();
    s.admin_ok(&["repo", "set", "web", "--keep-daily", "7", "--keep-weekly", "4"]);
    let dry = s.admin_ok(&["--test-clock", &clock_s, "retention", "--dry-run", "--json"]);
    let dry: serde_json::Value = serde_json::from_str(dry.trim()).unwrap();
    assert_eq!(dry[0]["snapshots_removed"].as_array().unwrap().len(), 1030 - 9);
    assert_eq!(
        fs::read_dir(s.data.join("repos/web/snapshots")).unwrap().count(),
        1030,
        "a dry run removes nothing"
    );
    let rep = s.admin_ok(&[
        "--test-clock",
        &clock_s,
        "--pack-grace",
        "1h",
        "retention",
        "--json",
    ]);
    let rep: serde_json::Value = serde_json::from_str(rep.trim()).unwrap();
    assert!(
        !rep[0]["packs_removed"].as_array().unwrap().is_empty(),
        "packs of removed days are freed: {}",
        rep[0]["notes"]
    );

    // the burst's snapshots name no pack: they take no slot (and go). daily: the 7 newest days
    // with snapshots (23..29); weekly: the newest of ISO weeks 5 (day 29), 4 (day 27), 3
    // (day 20) and 2 (day 13)
    let kept_days: Vec<i64> = vec![13, 20, 23, 24, 25, 26, 27, 28, 29];
    let present: std::collections::HashSet<String> = fs::read_dir(s.data.join("repos/web/snapshots"))
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(present.len(), 9, "9 real snapshots, none of the burst");
    let r = client(&e, &s, "web", &read);
    for (day, id, digest) in &days {
        assert_eq!(present.contains(id), kept_days.contains(day), "day {day}");
        if kept_days.contains(day) {
            let _ = fs::remove_dir_all(&src);
            build_source(&src, 1000 + *day as u64);
            restore_and_compare(&r, &id[..12], &src, digest, &e.path("out"));
        }
    }
    // removed snapshots wait in the trash
    let trash = s.admin_ok(&["trash", "list", "web", "--json"]);
    assert!(trash.contains(&days[0].1), "day 0 is in the trash");
    // one snapshot comes back from the trash with the packs its manifest names (retention
    // trashed them with it: back without them, it would not restore, and the purge would
    // delete them for good); another removed day's stay in the trash
    let (day, id, digest) = &days[5];
    // while it is there, no client may put a manifest under its name (one naming no pack, say,
    // would stand in for the trashed one and bring back none of its packs)
    let forged = format!(r#"{{"version":1,"snapshot":"{id}","packs":[]}}"#);
    let put = s.raw(
        &format!(
            "PUT /web/manifests/{id} HTTP/1.1\nHost: x\n{auth}\nContent-Length: {}\nConnection: close",
            forged.len()
        ),
        forged.as_bytes(),
    );
    assert_eq!(put.as_ref().map(|p| p.0), Some(403), "{put:?}");
    // and a manifest stored under a trashed one's name all the same (written beside the
    // server here) is never dropped for the trashed one: the restore fails and keeps both
    let (_, other, _) = &days[6];
    let live = s.data.join(format!("repos/web/manifests/{other}"));
    fs::write(
        &live,
        format!(r#"{{"version":1,"snapshot":"{other}","packs":[]}}"#),
    )
    .unwrap();
    let o = s.admin(&["trash", "restore", "web", &format!("snapshots/{other}")]);
    assert_ne!(code(&o), 0);
    assert!(stderr(&o).contains("differs"), "{}", stderr(&o));
    let trash = s.admin_ok(&["trash", "list", "web", "--json"]);
    assert!(
        trash.contains(other.as_str()),
        "day 6 stays in the trash: {trash}"
    );
    fs::remove_file(&live).unwrap();
    // a unique prefix of the id names it
    s.admin_ok(&["trash", "restore", "web", &format!("snapshots/{}", &id[..12])]);
    let trash = s.admin_ok(&["trash", "list", "web", "--json"]);
    assert!(!trash.contains(id.as_str()), "day 5 is back: {trash}");
    assert!(trash.contains(&days[0].1), "day 0 stays in the trash");
    assert!(
        trash.contains("\"data\""),
        "packs of other days stay in the trash: {trash}"
    );
    let _ = fs::remove_dir_all(&src);
    build_source(&src, 1000 + *day as u64);
    restore_and_compare(&r, &id[..12], &src, digest, &e.path("out"));
    // the append client goes on backing up after retention (it no longer dedups against
    // freed packs) and the result restores
    fs::write(&clock, (base + 32 * 86_400).to_string()).unwrap();
    let _ = fs::remove_dir_all(&src);
    build_source(&src, 1000);
    let expected = digest_tree(&src);
    let out = a.ok(&["backup", "--json", src.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let id = v["snapshot_id"].as_str().unwrap().to_string();
    restore_and_compare(&r, &id[..12], &src, &expected, &e.path("out"));

    // a snapshot stored whose catalog record failed (the server answered 500): the client's
    // retry finds it stored (409) and the record is written then, with the client's name
    let catalog = coffer_server::catalog::Catalog::open(&s.data.join("server.db")).unwrap();
    catalog.forget_snapshot("web", &id).unwrap();
    assert!(catalog.snapshot_arrival("web", &id).unwrap().is_none());
    let body = fs::read(s.data.join(format!("repos/web/snapshots/{id}"))).unwrap();
    let put = s.raw(
        &format!(
            "PUT /web/snapshots/{id} HTTP/1.1\nHost: x\n{auth}\nContent-Length: {}\nConnection: close",
            body.len()
        ),
        &body,
    );
    assert_eq!(put.as_ref().map(|p| p.0), Some(409), "{put:?}");
    let (_, client, _) = catalog.snapshot_arrival("web", &id).unwrap().expect("recorded");
    assert_eq!(client.as_deref(), Some("web1"));
}

#[test]
fn keyless_verify_names_a_flipped_byte() {
    let e = Env::new();
    let s = ServerProc::start(&e.path("server"), &[]);
    let token = s.add_client("web1", "web", "append");
    let a = client(&e, &s, "web", &token);
    let src = e.path("src");
    build_source(&src, 3);
    a.ok(&["init", "-q"]);
    a.ok(&["backup", "-q", src.to_str().unwrap()]);
    let out = s.admin_ok(&["verify"]);
    assert!(out.contains("web: ") && out.contains("no damage"), "{out}");

    let pack_dir = fs::read_dir(s.data.join("repos/web/data"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .find(|d| fs::read_dir(d).unwrap().next().is_some())
        .unwrap();
    let pack = fs::read_dir(&pack_dir).unwrap().next().unwrap().unwrap().path();
    let mut bytes = fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&pack, bytes).unwrap();
    let o = s.admin(&["verify", "--repo", "web"]);
    assert_eq!(code(&o), 1, "damage found is exit 1");
    let out = String::from_utf8_lossy(&o.stdout);
    let name = pack.file_name().unwrap().to_string_lossy();
    assert!(out.contains(&format!("damaged: data/{name}")), "{out}");
    assert!(out.contains("1 DAMAGED"), "{out}");
    assert!(
        out.contains("REPAIRABLE"),
        "the pack's parity rebuilds it, with no key: {out}"
    );
    // the result is kept for the console
    let list = s.admin_ok(&["repo", "list"]);
    assert!(list.contains("1 DAMAGED"), "{list}");

    // a damaged parity file of an intact pack is named as such
    let other = fs::read_dir(s.data.join("repos/web/parity"))
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .find(|p| p.file_name() != pack.file_name())
        .expect("another pack's parity file");
    let mut pb = fs::read(&other).unwrap();
    let last = pb.len() - 1;
    pb[last] ^= 0x01;
    fs::write(&other, pb).unwrap();
    let out = String::from_utf8_lossy(&s.admin(&["verify", "--repo", "web"]).stdout).into_owned();
    assert!(out.contains("its parity file is not"), "{out}");

    // keyless repair: the pack is written back (it hashes to its name again) and the parity
    // file written again; then nothing is damaged and the snapshot restores
    let o = s.admin(&["verify", "--repo", "web", "--repair"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(code(&o), 0, "{out}");
    assert!(out.contains(&format!("repaired: data/{name}")), "{out}");
    assert_eq!(out.matches("repaired: ").count(), 2, "{out}");
    assert_eq!(blake3::hash(&fs::read(&pack).unwrap()).to_hex().as_str(), name);
    let out = s.admin_ok(&["verify"]);
    assert!(out.contains("no damage"), "{out}");
    let read = s.add_client("restorer", "web", "read");
    let r = client(&e, &s, "web", &read);
    let expected = digest_tree(&src);
    restore_and_compare(&r, "latest", &src, &expected, &e.path("out"));
}

/// Four clients back up into one repository at once; the server is killed with SIGKILL in
/// the middle and started again. Every backup either reports a snapshot, which then restores
/// byte-identical, or fails with a one-line error and succeeds when run again; `check
/// --read-data` is clean.
#[test]
fn kill_9_during_four_concurrent_backups() {
    let e = Env::new();
    let mut s = ServerProc::start(&e.path("server"), &[]);
    let token = s.add_client("fleet", "shared", "append");
    let read = s.add_client("restorer", "shared", "read");
    let a = client(&e, &s, "shared", &token);
    a.ok(&["init", "-q"]);
    let mut srcs = Vec::new();
    for i in 0..4u64 {
        let src = e.path(&format!("host{i}"));
        fs::create_dir_all(&src).unwrap();
        // some data shared by all hosts, some unique
        fs::write(src.join("common.bin"), pseudo_random(77, 8 << 20)).unwrap();
        for j in 0..6u64 {
            fs::write(
                src.join(format!("own{j}.bin")),
                pseudo_random(i * 10 + j, 4 << 20),
            )
            .unwrap();
        }
        srcs.push(src);
    }
    let spawn = |src: &Path| {
        a.e.cmd()
            .env("COFFER_REPOSITORY", &a.url)
            .env("COFFER_TOKEN", &token)
            .env("COFFER_CACERT", &a.cacert)
            .args(["backup", "--json", src.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut children: Vec<_> = srcs.iter().map(|p| spawn(p)).collect();
    // let the uploads get going (8 MiB stored, or every client done, which the check below
    // reports), then kill the server without warning
    while common::dir_size(&s.data.join("repos/shared/data")) < 8 << 20
        && children.iter_mut().any(|c| c.try_wait().unwrap().is_none())
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    s.kill9();
    let mut running = 0;
    for c in children.iter_mut() {
        if c.try_wait().unwrap().is_none() {
            running += 1;
        }
    }
    assert!(running > 0, "the kill came after every backup had finished");
    eprintln!("{running} of 4 backups running when the server was killed");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    s.restart();
    let mut done = Vec::new();
    for (i, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        if o.status.success() {
            let out = String::from_utf8_lossy(&o.stdout);
            let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
            done.push((i, v["snapshot_id"].as_str().unwrap().to_string()));
        } else {
            let err = stderr(&o);
            assert_eq!(code(&o), 1, "host{i}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "host{i}: one line: {err}");
            eprintln!("host{i} failed as it may: {err}");
            // run again: now it succeeds
            let out = a.ok(&["backup", "--json", srcs[i].to_str().unwrap()]);
            let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
            done.push((i, v["snapshot_id"].as_str().unwrap().to_string()));
        }
    }
    let r = client(&e, &s, "shared", &read);
    r.ok(&["check", "--read-data"]);
    for (i, id) in &done {
        restore_and_compare(&r, &id[..12], &srcs[*i], &digest_tree(&srcs[*i]), &e.path("out"));
    }
    // nothing half-written is visible: every stored object still hashes to its name
    let v = s.admin_ok(&["verify"]);
    assert!(v.contains("no damage"), "{v}");
}

/// A client with a write-only key backs up (through the server, with an append token) and
/// deduplicates, but cannot list file names or restore: a thief on that machine cannot read
/// its backup history. The full key, kept elsewhere, restores.
#[test]
fn a_write_only_key_backs_up_and_deduplicates_but_reads_nothing() {
    let e = Env::new();
    let s = ServerProc::start(&e.path("server"), &[]);
    let token = s.add_client("web1", "web", "append");
    let full = client(&e, &s, "web", &token);
    full.ok(&["init", "-q"]);
    let wo_pw = e.path("wo-pw");
    fs::write(&wo_pw, "write only secret\n").unwrap();
    let added = full.ok(&[
        "key",
        "add",
        "--write-only",
        "--new-password-file",
        wo_pw.to_str().unwrap(),
    ]);
    assert!(added.contains("write-only"), "{added}");
    let src = e.path("src");
    build_source(&src, 5);
    fs::write(src.join("etc/customer-list-2026.csv"), "name,card\n").unwrap();
    let expected = digest_tree(&src);
    let wo = |args: &[&str]| {
        e.cmd()
            .env("COFFER_REPOSITORY", s.url("web"))
            .env("COFFER_TOKEN", &token)
            .env("COFFER_CACERT", &s.cacert)
            .env("COFFER_PASSWORD_FILE", &wo_pw)
            .args(args)
            .output()
            .unwrap()
    };
    let summary = |o: &Output| -> serde_json::Value {
        assert!(o.status.success(), "{}", stderr(o));
        let out = String::from_utf8_lossy(&o.stdout);
        serde_json::from_str(out.lines().last().unwrap()).unwrap()
    };
    let first = summary(&wo(&["backup", "--json", src.to_str().unwrap()]));
    assert!(first["bytes_new"].as_u64().unwrap() > 2 << 20);
    let second = summary(&wo(&["backup", "--json", src.to_str().unwrap()]));
    // it cannot read the parent snapshot: its change cache stands in, so it reads nothing
    // again, and stores nothing new
    assert_eq!(second["bytes_read"], 0, "{second}");
    assert_eq!(second["files_unchanged"], first["files_new"], "{second}");
    assert!(second["bytes_new"].as_u64().unwrap() < 64 << 10, "{second}");
    // --force reads everything, and still stores nothing new (its own blobs deduplicate)
    let forced = summary(&wo(&["backup", "--json", "--force", src.to_str().unwrap()]));
    assert_eq!(forced["bytes_read"], first["bytes_read"], "{forced}");
    assert!(forced["bytes_new"].as_u64().unwrap() < 64 << 10, "{forced}");
    let id = second["snapshot_id"].as_str().unwrap().to_string();

    for args in [
        vec!["snapshots"],
        vec!["ls", &id[..12]],
        vec!["restore", &id[..12], "--target", "/tmp/never"],
        vec!["dump", &id[..12], "/etc/customer-list-2026.csv"],
    ] {
        let o = wo(&args);
        assert_eq!(code(&o), 1, "{args:?} must fail: {}", stderr(&o));
        assert!(stderr(&o).contains("write-only key"), "{args:?}: {}", stderr(&o));
        assert!(
            !String::from_utf8_lossy(&o.stdout).contains("customer-list"),
            "{args:?} leaked a name"
        );
    }
    // nothing on the server spells the file name
    for (path, _) in digest_dir(&s.data.join("repos")) {
        let p = s.data.join("repos").join(&path);
        if p.is_file() {
            let b = fs::read(&p).unwrap();
            assert!(
                !b.windows(13).any(|w| w == b"customer-list"),
                "{path} holds the name"
            );
        }
    }
    // the full key reads what the write-only key wrote
    restore_and_compare(&full, &id[..12], &src, &expected, &e.path("out"));
    full.ok(&["check", "--read-data"]);
}

/// Issue 24 finding 4: retention judged every client of a repository together, so one
/// 200-byte garbage snapshot with an empty manifest, uploaded with any append token of the
/// repository, took the newest slot, and retention would have trashed every honest snapshot
/// and every pack. Now each client's snapshots are judged apart, and a snapshot whose manifest
/// names no pack takes no slot.
#[test]
fn a_garbage_snapshot_takes_no_honest_clients_slot() {
    let e = Env::new();
    let (s, clock, base) = server_on_a_test_clock(&e);
    let clock_s = clock.to_str().unwrap().to_string();
    let honest = s.add_client("web1", "web", "append");
    let thief = s.add_client("web2", "web", "append");
    let read = s.add_client("restorer", "web", "read");
    let a = client(&e, &s, "web", &honest);
    a.ok(&["init", "-q"]);
    let src = e.path("src");
    build_source(&src, 7);
    let digest = digest_tree(&src);
    a.ok(&["backup", "-q", src.to_str().unwrap()]);
    let snap = a.snapshot_ids().pop().unwrap();

    // a day later the thief uploads a snapshot that names no pack, then one that names one
    fs::write(&clock, (base + 86_400).to_string()).unwrap();
    let auth = format!("Authorization: Bearer {thief}");
    let pack = fs::read_dir(s.data.join("repos/web/data"))
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .next()
        .unwrap();
    for (i, packs) in [String::new(), format!("\"{pack}\"")].iter().enumerate() {
        put_garbage_snapshot(&s, &auth, 77 + i as u64, packs);
    }

    fs::write(&clock, (base + 2 * 86_400).to_string()).unwrap();
    s.admin_ok(&["repo", "set", "web", "--keep-last", "1"]);
    let dry = s.admin_ok(&["--test-clock", &clock_s, "retention", "--dry-run", "--json"]);
    let dry: serde_json::Value = serde_json::from_str(dry.trim()).unwrap();
    let removed = dry[0]["snapshots_removed"].as_array().unwrap();
    assert!(
        !removed.iter().any(|r| r.as_str() == Some(snap.as_str())),
        "{dry}"
    );
    assert_eq!(removed.len(), 1, "only the snapshot that names no pack: {dry}");
    assert!(dry[0]["packs_removed"].as_array().unwrap().is_empty(), "{dry}");
    s.admin_ok(&[
        "--test-clock",
        &clock_s,
        "--pack-grace",
        "1h",
        "retention",
        "--json",
    ]);
    let r = client(&e, &s, "web", &read);
    restore_and_compare(&r, &snap[..12], &src, &digest, &e.path("out"));
}

/// Lesser findings of issue 24 (item 9): what the server writes is private (0600/0700, the
/// catalog holds token hashes, sessions and the SMTP password), a %0A in a request cannot
/// forge a line in its log, and a stray file in `snapshots/` hides no snapshot.
#[test]
fn server_files_are_private_and_its_log_cannot_be_forged() {
    use std::os::unix::fs::PermissionsExt;
    let e = Env::new();
    let s = ServerProc::start(&e.path("server"), &[]);
    let token = s.add_client("web1", "web", "append");
    let a = client(&e, &s, "web", &token);
    a.ok(&["init", "-q"]);
    let src = e.path("src");
    build_source(&src, 3);
    a.ok(&["backup", "-q", src.to_str().unwrap()]);
    let mut checked = 0;
    let mut todo = vec![s.data.clone()];
    while let Some(p) = todo.pop() {
        for f in fs::read_dir(&p).unwrap() {
            let f = f.unwrap();
            let m = f.metadata().unwrap();
            let mode = m.permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", f.path().display());
            if m.is_dir() {
                todo.push(f.path());
            } else {
                checked += 1;
            }
        }
    }
    assert!(checked > 5, "{checked} files");

    // a request whose path decodes to a line break, without a valid token: refused and logged
    let r = s.raw(
        "GET /web%0Acoffer-server:%20FORGED/config HTTP/1.1\nHost: x\nAuthorization: Bearer nope\nConnection: close",
        b"",
    );
    assert!(matches!(r, Some((400..=404, _))), "{r:?}");
    let log = fs::read_to_string(&s.log).unwrap();
    assert!(log.contains("FORGED"), "the refusal is logged: {log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("FORGED") && !l.contains("refused GET /web\\ncoffer-server: FORGED")),
        "a forged log line: {log}"
    );

    // a storage error answers 500 with a reference only; the detail (a path of the server's)
    // is in the log under that reference
    let snaps = s.data.join("repos/web/snapshots");
    let snap = fs::read_dir(&snaps).unwrap().next().unwrap().unwrap().path();
    let kept = fs::read(&snap).unwrap();
    fs::remove_file(&snap).unwrap();
    fs::create_dir(&snap).unwrap(); // reading it fails with EISDIR
    let name = snap.file_name().unwrap().to_str().unwrap();
    let r = s.raw(
        &format!(
            "GET /web/snapshots/{name} HTTP/1.1\nHost: x\nAuthorization: Bearer {token}\nConnection: close"
        ),
        b"",
    );
    let (status, body) = r.expect("an answer");
    assert_eq!(status, 500, "{body}");
    let data = s.data.to_str().unwrap();
    assert!(!body.contains(data), "a server path in the answer: {body}");
    let reference = body
        .split("reference ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no reference in {body}"));
    let log = fs::read_to_string(&s.log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("internal error {reference}")))
        .unwrap_or_else(|| panic!("reference {reference} not in the log: {log}"));
    assert!(line.contains(name), "the detail is logged: {line}");
    fs::remove_dir(&snap).unwrap();
    fs::write(&snap, kept).unwrap();

    // failed logins (console, /metrics) are logged, and a name guessed at is refused for
    // the rest of the minute, even with the right password
    let pw = s.admin_ok(&["operator", "add", "alice"]).trim().to_string();
    let metrics = |user: &str, pass: &str| {
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        s.raw(
            &format!("GET /metrics HTTP/1.1\nHost: x\nAuthorization: Basic {basic}\nConnection: close"),
            b"",
        )
        .map(|r| r.0)
    };
    assert_eq!(metrics("alice", &pw), Some(200));
    for _ in 0..10 {
        assert_eq!(metrics("alice", "guess"), Some(401));
    }
    assert_eq!(
        metrics("alice", &pw),
        Some(429),
        "refused for the rest of the minute"
    );
    let log = fs::read_to_string(&s.log).unwrap();
    assert!(
        log.contains("login failed for operator alice (10 in this minute)"),
        "{log}"
    );

    // a stray file in snapshots/ of a local repository hides nothing
    let local = Env::init();
    let src2 = local.path("src");
    build_source(&src2, 4);
    local.ok(&["backup", "-q", src2.to_str().unwrap()]);
    fs::write(local.repo.join("snapshots/README"), "not a snapshot").unwrap();
    let o = local.run(&["snapshots", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("not a snapshot name"), "{}", stderr(&o));
}

/// A dead coffer server, S3 endpoint or SFTP server: the client says it is retrying as it
/// happens, instead of half a minute of silence (issue 23 item 10).
#[test]
fn retries_against_a_dead_server_are_said() {
    use std::io::{BufRead, BufReader};
    let e = Env::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // bound and closed again: nothing listens there
                 // a coffer server, an S3 endpoint and an SFTP server that are all down
    for (location, said) in [
        (format!("https://127.0.0.1:{port}/web"), "retrying (1/"),
        (format!("s3:http://127.0.0.1:{port}/bucket/web"), "retry 1 of"),
        (format!("sftp://root@127.0.0.1:{port}/srv/web"), "retrying (1/"),
    ] {
        let mut child = e
            .cmd()
            .env("COFFER_REPOSITORY", &location)
            .env("COFFER_TOKEN", "cft_nothing")
            .env("AWS_ACCESS_KEY_ID", "nobody")
            .env("AWS_SECRET_ACCESS_KEY", "nothing")
            .args(["snapshots"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // the first word comes while the client is still retrying, not when it gives up (no
        // deadline: the client giving up closes its stderr and ends the wait)
        let first = rx.recv();
        let still_retrying = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let _ = child.wait();
        let line = first.unwrap_or_else(|_| panic!("{location}: nothing on stderr"));
        assert!(line.contains(said), "{location}: {line}");
        assert!(
            still_retrying,
            "{location}: said only once it had given up: {line}"
        );
    }
}

/// A stolen token that sends its uploads slowly holds at most its own share of the upload
/// slots, and each for a bounded time (the idle timeout plus its length at the minimum rate):
/// other clients back up meanwhile. Before, two trickling uploads held both slots until the
/// thief chose to stop. Nothing here is timed: the honest backup runs while the thief's
/// uploads are still in flight (they would take minutes), and the cut comes from the server's
/// bounds, whatever the machine's speed.
#[test]
fn a_client_sending_slowly_holds_neither_every_upload_slot_nor_one_for_long() {
    let e = Env::new();
    let obj = e.path("obj");
    fs::write(&obj, vec![7u8; 1_000_000]).unwrap();
    // two uploads of the thief's at `rate`, each in its own curl
    let trickle = |s: &ServerProc, thief: &str, rate: &str| -> Vec<std::process::Child> {
        (0..2)
            .map(|i| {
                Command::new("curl")
                    .args([
                        "-s",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "--limit-rate",
                        rate,
                    ])
                    .arg("--cacert")
                    .arg(&s.cacert)
                    .args(["-H", &format!("Authorization: Bearer {thief}")])
                    .arg("-T")
                    .arg(&obj)
                    .arg(format!("{}/data/{}", s.url("web"), format!("{i:x}").repeat(64)))
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("curl is installed (.ci/run installs it)")
            })
            .collect()
    };

    // an honest client backs up while the thief trickles, and does not wait for the thief:
    // the thief's uploads (1 MB at 2 kB/s, no bound in reach: an hour's idle timeout) are
    // still in flight when the backup has committed
    let s = ServerProc::start(
        &e.path("server"),
        &[
            "--max-uploads",
            "2",
            "--max-uploads-per-client",
            "1",
            "--idle-timeout",
            "1h",
        ],
    );
    let thief = s.add_client("thief", "web", "append");
    let honest = s.add_client("db1", "db", "append");
    client(&e, &s, "web", &thief).ok(&["init", "-q"]);
    let db = client(&e, &s, "db", &honest);
    db.ok(&["init", "-q"]);
    let mut slow = trickle(&s, &thief, "2k");
    // the thief's first upload holds its slot once the server has started storing it (no
    // deadline: a curl that ended would end the wait)
    let incoming = s.data.join("repos/web/.incoming");
    common::wait_until(
        "the thief's upload to take its slot",
        || fs::read_dir(&incoming).is_ok_and(|mut d| d.next().is_some()),
        || {
            slow.iter_mut()
                .find_map(|c| c.try_wait().unwrap())
                .map(|st| format!("a trickling curl ended: {st}"))
        },
    );
    let src = e.path("src");
    build_source(&src, 2);
    db.ok(&["backup", "-q", src.to_str().unwrap()]);
    for c in &mut slow {
        assert!(
            c.try_wait().unwrap().is_none(),
            "the honest backup ended only after the thief's uploads"
        );
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(s);

    // the bounds: past a 10 s idle timeout, an upload must keep up 66 kB/s on average; at
    // 32 kB/s the one holding the thief's slot is cut short with 408, and the other waits
    // for the thief's one slot for at most the idle timeout (503: retry later)
    let s = ServerProc::start(
        &e.path("server2"),
        &[
            "--max-uploads",
            "2",
            "--max-uploads-per-client",
            "1",
            "--idle-timeout",
            "10s",
            "--min-upload-rate",
            "66000",
        ],
    );
    let thief = s.add_client("thief", "web", "append");
    client(&e, &s, "web", &thief).ok(&["init", "-q"]);
    let codes: Vec<String> = trickle(&s, &thief, "32k")
        .into_iter()
        .map(|c| String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).into_owned())
        .collect();
    // (cut short: 408, or, when the server's answer and its close of the connection meet
    // curl still sending, no final answer at all: curl prints the 100 Continue it saw, or
    // 000; the server's log below says which upload it cut)
    assert!(
        codes.iter().any(|c| c == "408" || c == "100" || c == "000"),
        "{codes:?}"
    );
    assert!(codes.iter().any(|c| c == "503"), "{codes:?}");
    let log = fs::read_to_string(&s.log).unwrap();
    assert!(log.contains("upload too slow"), "{log}");
}
