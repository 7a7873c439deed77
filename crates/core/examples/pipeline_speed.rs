//! The machine's limit for coffer's backup pipeline: chunk + keyed hash + compress + seal of
//! in-memory data on every core, with no file system and no storage involved.
//!
//! `cargo run --release -p coffer-core --example pipeline_speed [MiB]`
//!
//! Prints MiB/s for incompressible (random) and compressible (log-like) data at the default
//! settings (FastCDC 512 KiB average, BLAKE3 keyed, zstd level 3, AES-256-GCM).

use std::time::Instant;

use coffer_core::chunker::Chunker;
use coffer_core::compress::{encode_blob, CompressionSpec};
use coffer_core::crypto::MasterKey;
use coffer_core::format::{ChunkerParams, Compression, ObjectKind};

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn log_text(len: usize) -> Vec<u8> {
    let mut x = 7u64;
    let mut s = Vec::with_capacity(len + 200);
    while s.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let line = format!(
            "2026-11-{:02} {:02}:{:02}:{:02} host{} GET /item/{} {} {}\n",
            1 + (x >> 59),
            (x >> 40) % 24,
            (x >> 30) % 60,
            (x >> 20) % 60,
            (x >> 10) % 50,
            x % 1_000_000,
            [200, 200, 404, 500][(x % 4) as usize],
            (x >> 5) % 100_000
        );
        s.extend_from_slice(line.as_bytes());
    }
    s.truncate(len);
    s
}

fn run(name: &str, data: &[u8], key: &MasterKey, threads: usize) {
    let chunker = Chunker::new(ChunkerParams::default(), key.gear_table());
    let spec = CompressionSpec {
        algo: Compression::Zstd,
        level: 3,
    };
    let part = data.len().div_ceil(threads);
    let start = Instant::now();
    let stored: usize = std::thread::scope(|s| {
        let handles: Vec<_> = data
            .chunks(part)
            .map(|slice| {
                let chunker = &chunker;
                s.spawn(move || {
                    let mut stored = 0;
                    let mut rest = slice;
                    while !rest.is_empty() {
                        let n = chunker.cut(rest);
                        let chunk = &rest[..n];
                        let id = key.blob_id(chunk);
                        let plain = encode_blob(spec, chunk);
                        stored += key.seal(ObjectKind::Data, id.as_bytes(), &plain).len();
                        rest = &rest[n..];
                    }
                    stored
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let secs = start.elapsed().as_secs_f64();
    let mib = data.len() as f64 / 1048576.0;
    println!(
        "{name:<14} {mib:>7.0} MiB on {threads} threads: {:>7.0} MiB/s  (stored {:.0} MiB)",
        mib / secs,
        stored as f64 / 1048576.0
    );
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(512);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let key = MasterKey::generate();
    run("random", &random(mib << 20, 42), &key, threads);
    run("log-like text", &log_text(mib << 20), &key, threads);
    run("random", &random(mib << 20, 43), &key, 1);
    run("log-like text", &log_text(mib << 20), &key, 1);
}
