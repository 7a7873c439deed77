//! Write fuzz seeds from a real repository: the plaintext of its config, key files, index
//! files, snapshots, trees, pack headers and manifests, its stored envelopes as they are, and
//! packs with their parity files,
//! each into `OUT/TARGET/NAME` (the fuzz targets' corpus layout), plus a few seeds no
//! repository holds (an agent's poll, a run report, a MySQL dump, a configuration).
//!
//!     cargo run -p coffer-fuzz-checks --example seeds -- REPO PASSWORD_FILE OUT
//!
//! REPO is a local repository directory (`coffer init` and a backup or two of a few
//! directories make one).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer_core::backend::{Backend, FileKind};
use coffer_core::Repository;
use coffer_format::Manifest;

fn put(out: &Path, target: &str, name: &str, data: &[u8]) {
    let dir = out.join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [repo, pw, out] = &args[..] else {
        eprintln!("usage: seeds REPO PASSWORD_FILE OUT");
        std::process::exit(2);
    };
    let out = PathBuf::from(out);
    let password = std::fs::read(pw).unwrap();
    let password = password.strip_suffix(b"\n").unwrap_or(&password);
    let backend: Arc<dyn Backend> = Arc::new(coffer_backends::LocalBackend::new(repo));
    let repo = Repository::open(backend.clone(), password).unwrap();
    put(&out, "config", "config", &repo.config().encode());
    for (id, k) in repo.list_keys().unwrap().iter().take(3) {
        put(&out, "config", &format!("key-{}", id.short()), &k.encode());
        // key_file: the file as stored (mode 0), and the key material it wraps (mode 1)
        put(
            &out,
            "key_file",
            &format!("file-{}", id.short()),
            &[&[0u8][..], &k.encode()].concat(),
        );
        if let Ok(wrap) = coffer_core::crypto::derive_wrapping_key(password, &k.kdf) {
            if let Ok(plain) = coffer_core::crypto::open_with(
                &wrap,
                coffer_format::ObjectKind::KeyWrap,
                b"",
                &k.wrapped,
                "seed",
            ) {
                put(
                    &out,
                    "key_file",
                    &format!("material-{}", id.short()),
                    &[&[1u8][..], &plain].concat(),
                );
            }
        }
    }
    for f in backend.list(FileKind::Index).unwrap().iter().take(4) {
        let i = repo.load_index_file(&f.name).unwrap();
        put(&out, "index", &f.name[..16], &i.encode());
        put(
            &out,
            "index",
            &format!("{}-vouched", &f.name[..16]),
            &coffer_format::IndexFile::encode_vouched(i.encode(), &[0u8; 64]),
        );
    }
    let snaps = repo.list_snapshots().unwrap();
    let repo = repo.load_index().unwrap();
    let mut trees = 0;
    for (id, s) in snaps.iter().take(4) {
        put(&out, "snapshot", &id.short(), &s.encode());
        let packs = repo.packs_of_tree(&s.tree).unwrap();
        put(&out, "manifest", &id.short(), &Manifest::new(*id, packs).encode());
        let mut todo = vec![s.tree];
        while let Some(t) = todo.pop() {
            if trees >= 24 {
                break;
            }
            let mut tree = repo.load_tree(&t).unwrap();
            todo.extend(tree.nodes.iter().filter_map(|n| n.subtree));
            put(&out, "tree", &format!("{}-{trees}", id.short()), &tree.encode());
            trees += 1;
        }
    }
    // parity: a pack with its parity file, intact and with a flipped byte
    for f in backend.list(FileKind::Parity).unwrap().iter().take(2) {
        let Ok(mut pack) = backend.read(FileKind::Pack, &f.name) else {
            continue;
        };
        let file = backend.read(FileKind::Parity, &f.name).unwrap();
        for flip in [false, true] {
            if flip {
                let mid = pack.len() / 2;
                pack[mid] ^= 1;
            }
            let mut seed = (pack.len() as u32).to_le_bytes().to_vec();
            seed.extend_from_slice(&pack);
            seed.extend_from_slice(&file);
            put(&out, "parity", &format!("{}-{flip}", &f.name[..16]), &seed);
        }
    }
    for f in backend.list(FileKind::Pack).unwrap().iter().take(4) {
        let id = f.name.parse().unwrap();
        let entries = repo.read_pack_header(&id).unwrap();
        let data_len = entries
            .iter()
            .map(|e| u64::from(e.offset) + u64::from(e.length))
            .max()
            .unwrap_or(0);
        let mut seed = data_len.to_le_bytes().to_vec();
        seed.extend_from_slice(&coffer_format::encode_header(&entries));
        put(&out, "pack_header", &f.name[..16], &seed);
    }
    // envelopes as stored, each after the byte that picks its kind in the target (the index
    // of `ObjectKind::{Snapshot, Index, Config}` in its list)
    for (kind, code, objects) in [
        (FileKind::Snapshot, 5u8, 2),
        (FileKind::Index, 4u8, 2),
        (FileKind::Config, 6u8, 1),
    ] {
        for f in backend.list(kind).unwrap().iter().take(objects) {
            let mut seed = vec![code];
            seed.extend_from_slice(&backend.read(kind, &f.name).unwrap());
            put(
                &out,
                "envelope",
                &format!("{kind:?}-{}", &f.name[..f.name.len().min(16)]).to_lowercase(),
                &seed,
            );
        }
    }
    // compressed blobs: the length they claim, then the blob as stored (every algorithm)
    let text: Vec<u8> = (0..2000u32)
        .flat_map(|i| format!("{i} GET /shop/item/{} HTTP/1.1 200\n", i * 7 % 113).into_bytes())
        .collect();
    use coffer_format::Compression;
    for algo in [
        Compression::Zstd,
        Compression::Lz4,
        Compression::Zlib,
        Compression::Lzma,
        Compression::None,
    ] {
        let spec = coffer_core::CompressionSpec {
            algo,
            level: coffer_core::CompressionSpec::default_level(algo),
        };
        let mut seed = (text.len() as u32).to_le_bytes().to_vec();
        seed.extend_from_slice(&coffer_core::compress::encode_blob(spec, &text));
        put(&out, "compress", algo.name(), &seed);
    }
    eprintln!("seeds written to {}", out.display());
}
