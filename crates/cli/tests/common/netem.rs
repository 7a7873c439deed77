//! A TCP proxy that behaves like a slow, distant link (this kernel has no `netem`): every byte
//! waits half a round trip each way, and each direction's bytes share one bandwidth cap, as
//! on a real uplink. Used by the tests (a backup and restore through it) and, through
//! `examples/netem.rs`, by `scripts/bench-link` (coffer and restic against the same link).
//!
//! The model, per direction: a chunk read from one side at time `t` is put on the wire when
//! the link is free (`max(t, free)`), takes `len / rate` to cross it, and arrives half a
//! round trip later; it is then written to the other side. What was read but not yet
//! delivered is bounded per connection (a router's buffer), so a sender that outruns the link
//! is slowed by TCP's own back-pressure. Bytes carried each way are counted, with the times of
//! the first and last delivery, so a caller can say how much of the link a transfer used.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What the link does.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    /// Round-trip time added (half each way).
    pub rtt: Duration,
    /// Bytes per second each way (0: no cap).
    pub rate: u64,
}

/// Bytes one direction carried, and when each piece of them arrived.
#[derive(Default)]
pub struct Carried {
    pub bytes: AtomicU64,
    /// (delivery time, bytes carried up to and including it)
    log: Mutex<Vec<(Instant, u64)>>,
}

impl Carried {
    fn note(&self, n: usize, at: Instant) {
        let total = self.bytes.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((at, total));
    }

    /// Bytes carried (what the tests look at: they time nothing).
    pub fn total(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Bytes carried, and the time from the first delivery to the last (for
    /// `examples/netem`, which reports rates).
    pub fn span(&self) -> (u64, Duration) {
        self.span_after(0)
    }

    /// Bytes carried after the first `skip` bytes had come, and the time they took: from the
    /// delivery that brought the count past `skip` to the last (a transfer's rate without
    /// its start-up: handshakes, key and index reads).
    pub fn span_after(&self, skip: u64) -> (u64, Duration) {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let (Some(&(last, total)), Some(&(from, at))) = (log.last(), log.iter().find(|(_, c)| *c > skip))
        else {
            return (0, Duration::ZERO);
        };
        (total - at, last - from)
    }

    /// Forget what was counted (to measure the next transfer alone).
    pub fn reset(&self) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        self.bytes.store(0, Ordering::Relaxed);
        log.clear();
    }
}

/// One direction of the link: when it is next free, shared by every connection.
struct Wire {
    free: Mutex<Instant>,
    carried: Carried,
}

impl Wire {
    /// Reserve the wire for `n` bytes read at `now`: when they have crossed it.
    fn cross(&self, link: &Link, n: usize, now: Instant) -> Instant {
        if link.rate == 0 {
            return now;
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let start = (*free).max(now);
        let done = start + Duration::from_secs_f64(n as f64 / link.rate as f64);
        *free = done;
        done
    }
}

/// A running proxy: connections to `127.0.0.1:port` go to the target through the link.
pub struct Netem {
    pub port: u16,
    pub link: Link,
    up: Arc<Wire>,
    down: Arc<Wire>,
    pub connections: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// A chunk read per system call at most (a few TCP segments).
const CHUNK: usize = 64 << 10;
/// Chunks read and not yet delivered, per connection and direction: 4 MiB of router buffer.
const BUFFERED: usize = 64;

impl Netem {
    /// Listen on a free loopback port and forward to `target`.
    pub fn start(target: SocketAddr, link: Link) -> Netem {
        Self::start_on(0, target, link)
    }

    /// Listen on `127.0.0.1:port` (0: any free port) and forward to `target`.
    pub fn start_on(port: u16, target: SocketAddr, link: Link) -> Netem {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("netem: bind");
        let port = listener.local_addr().expect("netem: address").port();
        let now = Instant::now();
        let wire = || {
            Arc::new(Wire {
                free: Mutex::new(now),
                carried: Carried::default(),
            })
        };
        let (up, down) = (wire(), wire());
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        {
            let (up, down, stop, connections) = (up.clone(), down.clone(), stop.clone(), connections.clone());
            thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(target) else {
                        continue; // the client sees its connection closed
                    };
                    connections.fetch_add(1, Ordering::Relaxed);
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                        (Ok(c), Ok(s)) => (c, s),
                        _ => continue,
                    };
                    pipe(client, server, link, up.clone());
                    pipe(s2, c2, link, down.clone());
                }
            });
        }
        Netem {
            port,
            link,
            up,
            down,
            connections,
            stop,
        }
    }

    /// Client to server.
    pub fn up(&self) -> &Carried {
        &self.up.carried
    }

    /// Server to client.
    pub fn down(&self) -> &Carried {
        &self.down.carried
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // wake the accept loop so it sees the flag
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Carry `from`'s bytes to `to` through `wire`: a reader thread stamps each chunk with its
/// arrival time, a writer thread delivers it then.
fn pipe(mut from: TcpStream, mut to: TcpStream, link: Link, wire: Arc<Wire>) {
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(BUFFERED);
    let half = link.rtt / 2;
    let w = wire.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let at = w.cross(&link, n, Instant::now()) + half;
            if tx.send((at, buf[..n].to_vec())).is_err() {
                break;
            }
        }
        // (dropping the sender tells the writer that this side is done)
    });
    thread::spawn(move || {
        for (at, chunk) in rx {
            let now = Instant::now();
            if at > now {
                thread::sleep(at - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
            wire.carried.note(chunk.len(), Instant::now());
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
