//! Measure how chunk size parameters trade deduplication against chunk count.
//!
//! `cargo run --release -p coffer-core --example chunk_sizes -- BEFORE AFTER [BEFORE AFTER ...]`
//!
//! For each pair, and each candidate (min/avg/max), prints how many chunks BEFORE has and how
//! many bytes of AFTER are in chunks BEFORE does not have (what an incremental backup adds).

use std::collections::HashSet;
use std::fs::File;
use std::io;

use coffer_core::chunker::Chunker;
use coffer_core::crypto::MasterKey;
use coffer_core::format::ChunkerParams;

fn chunk_ids(c: &Chunker, path: &str) -> io::Result<Vec<([u8; 32], usize)>> {
    let mut f = File::open(path)?;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    c.chunk_reader::<_, io::Error>(&mut f, &mut buf, |ch, _| {
        out.push((*blake3::hash(ch).as_bytes(), ch.len()));
        Ok(())
    })?;
    Ok(out)
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let key = MasterKey::generate();
    let candidates = [
        (64, 256, 1024),
        (128, 512, 2048),
        (256, 1024, 4096),
        (512, 2048, 8192),
    ];
    println!(
        "{:<28} {:>14} {:>10} {:>14}",
        "file pair", "params KiB", "chunks", "new bytes"
    );
    for pair in args.chunks(2) {
        let [before, after] = pair else { break };
        for (min, avg, max) in candidates {
            let p = ChunkerParams {
                min_size: min << 10,
                avg_size: avg << 10,
                max_size: max << 10,
            };
            let c = Chunker::new(p, key.gear_table());
            let a = chunk_ids(&c, before)?;
            let known: HashSet<_> = a.iter().map(|(h, _)| *h).collect();
            let new: usize = chunk_ids(&c, after)?
                .iter()
                .filter(|(h, _)| !known.contains(h))
                .map(|(_, n)| n)
                .sum();
            let name = std::path::Path::new(before)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            println!(
                "{name:<28} {:>14} {:>10} {:>14}",
                format!("{min}/{avg}/{max}"),
                a.len(),
                new
            );
        }
    }
    Ok(())
}
