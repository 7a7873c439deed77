//! A generated tree of many small files, for `scripts/bench-scale`.
//!
//!   scale_tree DIR FILES [--seed N] [--mutate PERMILLE]
//!
//! Makes FILES files under DIR: `dNNNN/dNN/fNN`, 100 files to a directory and 100 directories
//! to a top one. Each file holds 20 to 55 bytes of text that no other file holds (its number,
//! the seed, then random letters), so every file is one blob of its own: the shape that costs
//! the index and the trees the most per byte stored (small enough for ext4's inline data, so
//! ten million of them fit a loop-mounted image of a few GiB).
//!
//! --mutate PERMILLE rewrites about that many files in every thousand (new contents, new
//! mtime) in a tree made before with the same FILES, as a night's changes; the same seed picks
//! the same files. Prints what it made or changed.

use std::io::Write;
use std::path::{Path, PathBuf};

fn usage() -> ! {
    eprintln!("usage: scale_tree DIR FILES [--seed N] [--mutate PERMILLE]");
    std::process::exit(2)
}

fn file_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("d{:04}", n / 10_000))
        .join(format!("d{:02}", (n / 100) % 100))
        .join(format!("f{:02}", n % 100))
}

fn contents(n: u64, seed: u64, round: u64, rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut s = format!("{n} {seed} {round} ").into_bytes();
    let extra = rng.usize(8..=40).min(55usize.saturating_sub(s.len()));
    s.extend((0..extra).map(|_| rng.alphabetic() as u8));
    s.push(b'\n');
    s
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        usage();
    }
    let dir = PathBuf::from(&args[0]);
    let files: u64 = args[1].parse().unwrap_or_else(|_| usage());
    let (mut seed, mut mutate) = (1u64, None::<u64>);
    let mut rest = args[2..].iter();
    while let Some(a) = rest.next() {
        let v = rest
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage());
        match a.as_str() {
            "--seed" => seed = v,
            "--mutate" => mutate = Some(v),
            _ => usage(),
        }
    }
    // two threads, each its own top directories (this machine has two cores)
    let done: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2u64)
            .map(|t| {
                let dir = &dir;
                s.spawn(move || -> std::io::Result<u64> {
                    let mut rng = fastrand::Rng::with_seed(seed ^ (t + 1).wrapping_mul(0x9e37_79b9));
                    let mut count = 0;
                    let tops = files.div_ceil(10_000);
                    for top in (t..tops).step_by(2) {
                        for n in top * 10_000..((top + 1) * 10_000).min(files) {
                            match mutate {
                                None => {
                                    if n % 100 == 0 {
                                        std::fs::create_dir_all(file_path(dir, n).parent().unwrap_or(dir))?;
                                    }
                                    std::fs::write(file_path(dir, n), contents(n, seed, 0, &mut rng))?;
                                    count += 1;
                                }
                                Some(permille) => {
                                    if rng.u64(0..1000) < permille {
                                        let mut f = std::fs::File::create(file_path(dir, n))?;
                                        f.write_all(&contents(n, seed, 1 + rng.u64(..), &mut rng))?;
                                        count += 1;
                                    }
                                }
                            }
                        }
                    }
                    Ok(count)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    eprintln!("scale_tree: {}: {e}", dir.display());
                    std::process::exit(1)
                }
                Err(_) => std::process::exit(1),
            })
            .sum()
    });
    match mutate {
        None => println!("made {done} files under {}", dir.display()),
        Some(_) => println!("rewrote {done} of {files} files under {}", dir.display()),
    }
}
