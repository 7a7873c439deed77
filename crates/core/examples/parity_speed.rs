//! How fast parity is made and checked, per 16 MiB pack (docs/PERFORMANCE.md "Parity"):
//! `cargo run --release -p coffer-core --example parity_speed`.
//!
//! `parity_speed two|one|none N` runs only the pack writer's work on N packs (`two`: name the
//! pack, then encode its parity; `one`: both in one pass; `none`: name only), for
//! `valgrind --tool=cachegrind`, whose counts do not depend on what else the machine runs.

use std::time::Instant;

use coffer_core::format::{Id, PackId};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, n] = &args[..] {
        let n: usize = n.parse().expect("a count of packs");
        let mut x = 7u64;
        let mut pack: Vec<u8> = (0..16usize << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for i in 0..n {
            // the packer has just written the pack: it is not in cache as a whole
            pack.iter_mut()
                .step_by(64)
                .for_each(|b| *b = b.wrapping_add(i as u8));
            let parts: Vec<&[u8]> = pack.chunks(700_000).collect();
            match mode.as_str() {
                "two" => {
                    let id = PackId(coffer_core::crypto::storage_id_parts(&parts));
                    std::hint::black_box(coffer_core::parity::encode(&id, &parts, 100));
                }
                "one" => {
                    std::hint::black_box(coffer_core::parity::encode_naming(&parts, 100));
                }
                _ => {
                    std::hint::black_box(coffer_core::crypto::storage_id_parts(&parts));
                }
            }
        }
        return;
    }
    let len = 16usize << 20;
    let mut x = 1u64;
    let pack: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let id = PackId(Id(*blake3::hash(&pack).as_bytes()));
    let rounds = 20;
    let t = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(blake3::hash(&pack));
    }
    let hash = t.elapsed().as_secs_f64() / rounds as f64;
    let t = Instant::now();
    let mut parity = Vec::new();
    for _ in 0..rounds {
        parity = coffer_core::parity::encode(&id, &[&pack], 100);
    }
    let enc = t.elapsed().as_secs_f64() / rounds as f64;
    let mut damaged = pack.clone();
    damaged[len / 2] ^= 1;
    let t = Instant::now();
    for _ in 0..rounds {
        let fixed = coffer_core::parity::repair(&id, &damaged, &parity);
        std::hint::black_box(fixed.is_ok());
    }
    let rep = t.elapsed().as_secs_f64() / rounds as f64;
    // what the pack writer does, on packs that are not in the CPU's cache (a ring of packs
    // larger than the last-level cache, each rewritten before its turn as the packer fills
    // it): name the pack, then encode its parity; or both in one pass
    let ring: Vec<Vec<u8>> = (0..12u8).map(|k| pack.iter().map(|b| b ^ k).collect()).collect();
    let cold = |f: &dyn Fn(&[&[u8]])| {
        let mut ring = ring.clone();
        let t = Instant::now();
        for r in 0..rounds * 3 {
            let p = &mut ring[r % 12];
            p[r] ^= 1;
            p.iter_mut().step_by(64).for_each(|b| *b = b.wrapping_add(1));
            let parts: Vec<&[u8]> = p.chunks(700_000).collect();
            f(&parts);
        }
        t.elapsed().as_secs_f64() / (rounds * 3) as f64
    };
    let touch = cold(&|_| {});
    let two = cold(&|parts| {
        let id = PackId(coffer_core::crypto::storage_id_parts(parts));
        std::hint::black_box(coffer_core::parity::encode(&id, parts, 100));
    }) - touch;
    let one = cold(&|parts| {
        std::hint::black_box(coffer_core::parity::encode_naming(parts, 100));
    }) - touch;
    let none = cold(&|parts| {
        std::hint::black_box(coffer_core::crypto::storage_id_parts(parts));
    }) - touch;
    let mib = len as f64 / (1 << 20) as f64;
    println!("16 MiB pack, 1 % parity ({} bytes):", parity.len());
    println!(
        "  BLAKE3 of the pack   {:6.2} ms  ({:5.0} MiB/s)",
        hash * 1e3,
        mib / hash
    );
    println!(
        "  encode (checks + RS) {:6.2} ms  ({:5.0} MiB/s)",
        enc * 1e3,
        mib / enc
    );
    println!(
        "  repair of one flip   {:6.2} ms  ({:5.0} MiB/s)",
        rep * 1e3,
        mib / rep
    );
    println!("packs not in cache, as the pack writer sees them (per pack):");
    println!("  name only (no parity)        {:6.2} ms", none * 1e3);
    println!("  name, then encode            {:6.2} ms", two * 1e3);
    println!("  name and encode in one pass  {:6.2} ms", one * 1e3);
}
