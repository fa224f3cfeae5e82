//! Both io backends over real loopback UDP sockets: echo round trips,
//! truncation, ICMP port unreachable (ECONNREFUSED) and prompt stop.
//!
//! The io_uring tests are skipped, with a message, when `uring::probe()`
//! says io_uring is unusable here. Timeouts only guard against hangs.

use std::collections::HashSet;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cpm_edge::io::{self as cio, socket, uring, DatagramHandler, IoBackend, IoConfig};

/// Guard against hangs only; nothing asserts on time.
const HANG: Duration = Duration::from_secs(20);

fn backends() -> Vec<IoBackend> {
    let mut v = vec![IoBackend::Mmsg];
    match uring::probe() {
        Ok(()) => v.push(IoBackend::Uring),
        Err(e) => eprintln!("skipping io_uring backend: probe failed: {e}"),
    }
    v
}

fn cfg(batch: usize, buf_size: usize, buf_count: usize) -> IoConfig {
    IoConfig {
        batch,
        buf_size,
        buf_count,
        out_size: 4096,
        wake: None,
    }
}

/// What the worker-side handler observed, shared with the test thread.
#[derive(Default)]
struct Seen {
    datagrams: AtomicUsize,
    sources: Mutex<HashSet<SocketAddr>>,
    truncated: Mutex<Vec<usize>>,
    send_errors: Mutex<Vec<(SocketAddr, i32)>>,
    recv_errors: Mutex<Vec<i32>>,
    batch_starts: AtomicUsize,
    batch_ends: AtomicUsize,
    /// Hooks called out of order (datagram outside a batch, nested start).
    protocol_violations: AtomicUsize,
}

/// Answers every datagram to its source with "echo:" + the reversed
/// payload; a truncated one with "TRUNC <len seen>".
struct Echo {
    seen: Arc<Seen>,
    in_batch: bool,
}

impl DatagramHandler for Echo {
    fn on_batch_start(&mut self) {
        if self.in_batch {
            self.seen
                .protocol_violations
                .fetch_add(1, Ordering::Relaxed);
        }
        self.in_batch = true;
        self.seen.batch_starts.fetch_add(1, Ordering::Relaxed);
    }

    fn on_datagram(
        &mut self,
        data: &[u8],
        truncated: bool,
        src: SocketAddr,
        out: &mut [u8],
    ) -> Option<(usize, SocketAddr)> {
        if !self.in_batch {
            self.seen
                .protocol_violations
                .fetch_add(1, Ordering::Relaxed);
        }
        self.seen.datagrams.fetch_add(1, Ordering::Relaxed);
        self.seen.sources.lock().unwrap().insert(src);
        if truncated {
            self.seen.truncated.lock().unwrap().push(data.len());
            let msg = format!("TRUNC {}", data.len());
            out[..msg.len()].copy_from_slice(msg.as_bytes());
            return Some((msg.len(), src));
        }
        // "FWD <addr> ...": forward the datagram unchanged to <addr>.
        if let Some(rest) = data.strip_prefix(b"FWD ") {
            let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
            let dst = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
            out[..data.len()].copy_from_slice(data);
            return Some((data.len(), dst));
        }
        let prefix = b"echo:";
        let len = prefix.len() + data.len();
        if len > out.len() {
            return None;
        }
        out[..prefix.len()].copy_from_slice(prefix);
        for (o, b) in out[prefix.len()..len].iter_mut().zip(data.iter().rev()) {
            *o = *b;
        }
        Some((len, src))
    }

    fn on_batch_end(&mut self) {
        if !self.in_batch {
            self.seen
                .protocol_violations
                .fetch_add(1, Ordering::Relaxed);
        }
        self.in_batch = false;
        self.seen.batch_ends.fetch_add(1, Ordering::Relaxed);
    }

    fn on_send_error(&mut self, dst: SocketAddr, err: i32) {
        self.seen.send_errors.lock().unwrap().push((dst, err));
    }

    fn on_recv_error(&mut self, err: i32) {
        self.seen.recv_errors.lock().unwrap().push(err);
    }
}

fn expected_echo(payload: &[u8]) -> Vec<u8> {
    let mut v = b"echo:".to_vec();
    v.extend(payload.iter().rev());
    v
}

struct Worker {
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
    thread: JoinHandle<io::Result<()>>,
}

impl Worker {
    fn start(backend: IoBackend, sock: UdpSocket, cfg: IoConfig) -> Worker {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Seen::default());
        let (s, n) = (stop.clone(), seen.clone());
        let thread = thread::Builder::new()
            .name(format!("io-{}", backend.name()))
            .spawn(move || {
                let mut h = Echo {
                    seen: n,
                    in_batch: false,
                };
                cio::run(backend, &sock, cfg, &mut h, &s)
            })
            .unwrap();
        Worker { stop, seen, thread }
    }

    /// Set `stop`, wait (bounded) for `run` to return, check it returned Ok.
    fn stop(self) -> Arc<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        while !self.thread.is_finished() {
            assert!(t0.elapsed() < HANG, "run did not return after stop");
            thread::sleep(Duration::from_millis(5));
        }
        self.thread
            .join()
            .expect("worker panicked")
            .expect("run failed");
        let seen = self.seen;
        assert_eq!(seen.protocol_violations.load(Ordering::Relaxed), 0);
        assert_eq!(
            seen.batch_starts.load(Ordering::Relaxed),
            seen.batch_ends.load(Ordering::Relaxed)
        );
        seen
    }
}

fn server(addr: &str) -> io::Result<(UdpSocket, SocketAddr)> {
    let s = socket::bind_udp(addr.parse().unwrap(), false, 1 << 20, 1 << 20)?;
    let a = s.local_addr()?;
    Ok((s, a))
}

fn client(addr: &str) -> UdpSocket {
    let c = UdpSocket::bind(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    c
}

/// Receive one datagram, retrying reads until HANG.
fn recv_one(c: &UdpSocket, buf: &mut [u8]) -> (usize, SocketAddr) {
    let t0 = Instant::now();
    loop {
        match c.recv_from(buf) {
            Ok(r) => return r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                assert!(t0.elapsed() < HANG, "no answer from the worker");
            }
            // Deliberately no EINTR retry: the test threads never use io_uring
            // themselves (probe() runs on a helper thread precisely so that a
            // ring teardown does not interrupt the caller's syscalls).
            Err(e) => panic!("client recv: {e}"),
        }
    }
}

/// Send `total` distinct datagrams in windows of `window` and check that
/// every answer arrives, from the server, with the right content.
fn echo_round_trips(c: &UdpSocket, server: SocketAddr, total: usize, window: usize) {
    let mut expected = HashSet::new();
    let mut buf = vec![0u8; 65536];
    let mut sent = 0;
    while sent < total {
        let n = window.min(total - sent);
        for i in sent..sent + n {
            let payload = format!("REGISTER sip:{i}@example.com SIP/2.0 #{i}");
            expected.insert(expected_echo(payload.as_bytes()));
            c.send_to(payload.as_bytes(), server).unwrap();
        }
        for _ in 0..n {
            let (len, from) = recv_one(c, &mut buf);
            assert_eq!(from, server);
            assert!(
                expected.remove(&buf[..len]),
                "unexpected answer {:?}",
                String::from_utf8_lossy(&buf[..len])
            );
        }
        sent += n;
    }
    assert!(expected.is_empty());
}

fn echo_test(backend: IoBackend, addr: &str, cfg: IoConfig, total: usize, window: usize) {
    let Ok((sock, saddr)) = server(addr) else {
        eprintln!("skipping {addr}: cannot bind");
        return;
    };
    let c = client(addr);
    let w = Worker::start(backend, sock, cfg);
    echo_round_trips(&c, saddr, total, window);
    let seen = w.stop();
    assert_eq!(
        seen.datagrams.load(Ordering::Relaxed),
        total,
        "{}",
        backend.name()
    );
    let sources = seen.sources.lock().unwrap();
    assert_eq!(
        *sources,
        HashSet::from([c.local_addr().unwrap()]),
        "handler saw a wrong source address"
    );
    assert!(seen.send_errors.lock().unwrap().is_empty());
    assert!(seen.batch_starts.load(Ordering::Relaxed) > 0);
    eprintln!(
        "{} {addr} {cfg:?}: {total} datagrams in {} batches, recv errors {:?}",
        backend.name(),
        seen.batch_starts.load(Ordering::Relaxed),
        seen.recv_errors.lock().unwrap()
    );
}

#[test]
fn echo_1000_ipv4() {
    for b in backends() {
        echo_test(b, "127.0.0.1:0", cfg(32, 2048, 256), 1000, 64);
    }
}

/// Fewer buffers than a window: the io_uring buffer ring runs dry
/// (ENOBUFS, multishot re-arm) and the mmsg batches are tiny.
#[test]
fn echo_small_ring_and_batch() {
    for b in backends() {
        echo_test(b, "127.0.0.1:0", cfg(4, 1024, 8), 1000, 100);
    }
}

#[test]
fn echo_ipv6() {
    for b in backends() {
        echo_test(b, "[::1]:0", cfg(16, 2048, 64), 300, 32);
    }
}

#[test]
fn truncated_datagram_is_reported() {
    for b in backends() {
        let (sock, saddr) = server("127.0.0.1:0").unwrap();
        let c = client("127.0.0.1:0");
        let w = Worker::start(b, sock, cfg(8, 2048, 16));
        let mut buf = vec![0u8; 65536];

        // Exactly buf_size: not truncated.
        let fits = vec![b'a'; 2048];
        c.send_to(&fits, saddr).unwrap();
        let (len, _) = recv_one(&c, &mut buf);
        assert_eq!(&buf[..len], &expected_echo(&fits)[..]);

        // Larger: truncated to buf_size.
        let big = vec![b'x'; 3000];
        c.send_to(&big, saddr).unwrap();
        let (len, _) = recv_one(&c, &mut buf);
        assert_eq!(&buf[..len], b"TRUNC 2048", "{}", b.name());

        // Still serving normally afterwards.
        echo_round_trips(&c, saddr, 10, 10);
        let seen = w.stop();
        assert_eq!(*seen.truncated.lock().unwrap(), vec![2048]);
    }
}

/// Server socket connected to a client that sent `requests` and then
/// disappeared, and that client's (now free) address.
///
/// ICMP errors reach an unconnected UDP socket only with IP_RECVERR; the
/// server is connected to the client's address so that the kernel turns the
/// port unreachable caused by the answer into ECONNREFUSED on the socket.
fn server_with_vanished_client(requests: &[&[u8]]) -> (UdpSocket, SocketAddr, SocketAddr) {
    let (sock, saddr) = server("127.0.0.1:0").unwrap();
    let gone = UdpSocket::bind("127.0.0.1:0").unwrap();
    let gone_addr = gone.local_addr().unwrap();
    sock.connect(gone_addr).unwrap();
    for r in requests {
        gone.send_to(r, saddr).unwrap();
    }
    drop(gone);
    (sock, saddr, gone_addr)
}

fn refused_reported(seen: &Seen) -> bool {
    seen.send_errors
        .lock()
        .unwrap()
        .iter()
        .any(|&(_, e)| e == libc::ECONNREFUSED)
        || seen
            .recv_errors
            .lock()
            .unwrap()
            .contains(&libc::ECONNREFUSED)
}

/// The worker answers to a port nobody listens on: the ICMP port
/// unreachable comes back as ECONNREFUSED, is reported to the handler, and
/// the worker keeps serving.
#[test]
fn econnrefused_is_reported_and_worker_goes_on() {
    for b in backends() {
        let (sock, saddr, gone_addr) = server_with_vanished_client(&[b"hello"]);
        let w = Worker::start(b, sock, cfg(8, 2048, 16));
        let t0 = Instant::now();
        while !refused_reported(&w.seen) {
            assert!(
                t0.elapsed() < HANG,
                "{}: ECONNREFUSED never reported",
                b.name()
            );
            thread::sleep(Duration::from_millis(5));
        }

        // A new client on the same address (the only peer the connected
        // server socket accepts) is served normally.
        let c = client(&gone_addr.to_string());
        echo_round_trips(&c, saddr, 50, 10);
        let seen = w.stop();
        assert_eq!(seen.datagrams.load(Ordering::Relaxed), 51);
        eprintln!(
            "{}: send errors {:?}, recv errors {:?}",
            b.name(),
            seen.send_errors.lock().unwrap(),
            seen.recv_errors.lock().unwrap()
        );
    }
}

/// The error left on the socket by an ICMP for one answer surfaces on
/// whatever syscall comes next, possibly the send of an unrelated datagram
/// of the same batch: that datagram must be sent again, not lost.
#[test]
fn stale_icmp_error_does_not_drop_the_next_datagram() {
    for b in backends() {
        let sink = client("127.0.0.1:0");
        let fwd = format!("FWD {} after the refused one", sink.local_addr().unwrap());
        let (sock, saddr, gone_addr) = server_with_vanished_client(&[b"hello", fwd.as_bytes()]);
        let w = Worker::start(b, sock, cfg(8, 2048, 16));

        let mut buf = [0u8; 2048];
        let (len, from) = recv_one(&sink, &mut buf);
        assert_eq!((&buf[..len], from), (fwd.as_bytes(), saddr), "{}", b.name());

        let c = client(&gone_addr.to_string());
        echo_round_trips(&c, saddr, 10, 10);
        let seen = w.stop();
        assert_eq!(seen.datagrams.load(Ordering::Relaxed), 12);
        // Where the error went depends on timing (and sendmmsg drops the
        // error of a message that follows successful ones: the retry of the
        // rest sends it), so it is only shown.
        eprintln!(
            "{}: forward delivered; send errors {:?}, recv errors {:?}",
            b.name(),
            seen.send_errors.lock().unwrap(),
            seen.recv_errors.lock().unwrap()
        );
    }
}

/// Stop while idle and while loaded: `run` returns (Ok) in both cases.
#[test]
fn stop_ends_run() {
    for b in backends() {
        // Idle.
        let (sock, _) = server("127.0.0.1:0").unwrap();
        let w = Worker::start(b, sock, cfg(16, 2048, 32));
        thread::sleep(Duration::from_millis(20));
        w.stop();

        // Under a stream of datagrams (the client never reads the answers).
        let (sock, saddr) = server("127.0.0.1:0").unwrap();
        // Keep the port bound until the flood is over, so that no other test
        // (or test process) can bind it and receive the tail of the flood.
        let keep = sock.try_clone().unwrap();
        let w = Worker::start(b, sock, cfg(16, 2048, 32));
        let c = client("127.0.0.1:0");
        let flood_stop = Arc::new(AtomicBool::new(false));
        let fs = flood_stop.clone();
        let flood = thread::spawn(move || {
            while !fs.load(Ordering::Relaxed) {
                let _ = c.send_to(b"OPTIONS sip:x SIP/2.0", saddr);
            }
        });
        thread::sleep(Duration::from_millis(50));
        let seen = w.stop();
        flood_stop.store(true, Ordering::Relaxed);
        flood.join().unwrap();
        drop(keep);
        assert!(seen.datagrams.load(Ordering::Relaxed) > 0);
    }
}

/// Two workers on the same address with SO_REUSEPORT, one per backend when
/// both are available: every client is served by one of them.
#[test]
fn reuse_port_workers_share_an_address() {
    let bs = backends();
    let first = socket::bind_udp("127.0.0.1:0".parse().unwrap(), true, 0, 0).unwrap();
    let addr = first.local_addr().unwrap();
    let second = socket::bind_udp(addr, true, 0, 0).unwrap();
    let w1 = Worker::start(bs[0], first, cfg(8, 2048, 16));
    let w2 = Worker::start(*bs.last().unwrap(), second, cfg(8, 2048, 16));
    for _ in 0..8 {
        let c = client("127.0.0.1:0");
        echo_round_trips(&c, addr, 20, 20);
    }
    let n =
        w1.stop().datagrams.load(Ordering::Relaxed) + w2.stop().datagrams.load(Ordering::Relaxed);
    assert_eq!(n, 160);
}

#[test]
fn select_backend_reports_a_reason() {
    let (b, why) = cio::select_backend(cio::IoChoice::Auto).unwrap();
    assert!(!why.is_empty());
    eprintln!("auto selected {} ({why})", b.name());
    let (b, _) = cio::select_backend(cio::IoChoice::Mmsg).unwrap();
    assert_eq!(b, IoBackend::Mmsg);
}
