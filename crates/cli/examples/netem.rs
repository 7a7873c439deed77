//! A slow, distant link on loopback, for `scripts/bench-link`:
//!
//!     cargo run --release -p coffer-cli --example netem -- LISTEN_PORT TARGET_PORT RTT_MS MBIT
//!
//! listens on 127.0.0.1:LISTEN_PORT (0: any; the port is printed on the first line) and
//! forwards to 127.0.0.1:TARGET_PORT through the link of `tests/common/netem.rs`: RTT_MS
//! of round trip, MBIT megabits per second each way (0: no cap). On stdin's end (or a
//! signal) it prints the bytes carried each way and the time from first to last delivery,
//! then the same from the first MiB on (a transfer's rate without its start-up).

#[path = "../tests/common/netem.rs"]
mod netem;

use std::io::Read;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> u64 {
        match args.get(i).map(|a| a.parse::<u64>()) {
            Some(Ok(n)) => n,
            _ => {
                eprintln!("usage: netem LISTEN_PORT TARGET_PORT RTT_MS MBIT");
                std::process::exit(2)
            }
        }
    };
    let (listen, target, rtt, mbit) = (num(0), num(1), num(2), num(3));
    let link = netem::Link {
        rtt: Duration::from_millis(rtt),
        rate: mbit * 1_000_000 / 8,
    };
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], target as u16));
    let n = netem::Netem::start_on(listen as u16, target, link);
    println!("{}", n.port);
    // run until stdin closes
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    let (up, tu) = n.up().span();
    let (down, td) = n.down().span();
    println!(
        "up {up} bytes in {:.3} s, down {down} bytes in {:.3} s, {} connections",
        tu.as_secs_f64(),
        td.as_secs_f64(),
        n.connections.load(std::sync::atomic::Ordering::Relaxed)
    );
    let (up, tu) = n.up().span_after(1 << 20);
    let (down, td) = n.down().span_after(1 << 20);
    println!(
        "after the first MiB: up {up} bytes in {:.3} s, down {down} bytes in {:.3} s",
        tu.as_secs_f64(),
        td.as_secs_f64()
    );
}
