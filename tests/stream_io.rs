//! io::stream over real loopback TCP: a worker's listener and
//! connections on epoll, their limits and their faults (peer resets,
//! half-closed connections, a peer that does not read, floods of
//! connections from one address), with a handler that echoes.

use cpm_edge::io::stream::{
    CloseReason, ConnId, Reactor, Refused, StreamConfig, StreamHandler, Streams,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Open(ConnId),
    Closed(ConnId, CloseReason),
    Refused(Refused),
}

/// Echoes what arrives; `flood` makes it write 8 MiB to a peer.
struct Echo(Arc<Mutex<Vec<Seen>>>);

impl StreamHandler for Echo {
    fn on_open(&mut self, id: ConnId, _peer: SocketAddr) {
        self.0.lock().unwrap().push(Seen::Open(id));
    }
    fn on_data(&mut self, id: ConnId, data: &[u8], streams: &mut Streams) {
        if data.starts_with(b"flood") {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..128 {
                if !streams.send(id, &chunk) {
                    return;
                }
            }
        } else {
            streams.send(id, data);
        }
    }
    fn on_closed(&mut self, id: ConnId, why: CloseReason) {
        self.0.lock().unwrap().push(Seen::Closed(id, why));
    }
    fn on_refused(&mut self, _peer: SocketAddr, why: Refused) {
        self.0.lock().unwrap().push(Seen::Refused(why));
    }
}

struct Running {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(cfg: StreamConfig) -> Running {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut r = Reactor::new(cfg).unwrap();
    r.listen(l).unwrap();
    let addr = r.local_addrs().unwrap()[0];
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, stop2) = (Arc::clone(&seen), Arc::clone(&stop));
    let thread = std::thread::spawn(move || {
        let mut h = Echo(s2);
        while !stop2.load(Ordering::Relaxed) {
            r.poll(10, &mut h).unwrap();
        }
    });
    Running {
        addr,
        seen,
        stop,
        thread: Some(thread),
    }
}

impl Running {
    fn wait_for(&self, what: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        let t0 = Instant::now();
        loop {
            let seen = self.seen.lock().unwrap().clone();
            if what(&seen) {
                return seen;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "only {seen:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn closed(seen: &[Seen]) -> Vec<CloseReason> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Closed(_, why) => Some(*why),
            _ => None,
        })
        .collect()
}

#[test]
fn bytes_come_back_on_the_connection_they_arrived_on() {
    let r = start(StreamConfig::default());
    let mut a = client(r.addr);
    let mut b = client(r.addr);
    a.write_all(b"from a").unwrap();
    b.write_all(b"from b").unwrap();
    let mut buf = [0u8; 6];
    a.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"from a");
    b.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"from b");
    // A half-closed peer: its end of stream closes the connection.
    a.shutdown(std::net::Shutdown::Write).unwrap();
    let seen = r.wait_for(|s| !closed(s).is_empty());
    assert_eq!(closed(&seen), vec![CloseReason::PeerClosed]);
    assert_eq!(a.read(&mut buf).unwrap(), 0, "closed on our side too");
}

#[test]
fn a_flood_of_connections_from_one_address_is_cut_at_its_bound() {
    let r = start(StreamConfig {
        max_per_ip: 2,
        ..StreamConfig::default()
    });
    let mut kept: Vec<TcpStream> = (0..2).map(|_| client(r.addr)).collect();
    r.wait_for(|s| s.iter().filter(|e| matches!(e, Seen::Open(_))).count() == 2);
    let mut third = client(r.addr);
    let seen = r.wait_for(|s| s.contains(&Seen::Refused(Refused::PerIp)));
    assert_eq!(
        seen.iter().filter(|e| matches!(e, Seen::Open(_))).count(),
        2
    );
    let mut buf = [0u8; 1];
    assert!(
        matches!(third.read(&mut buf), Ok(0) | Err(_)),
        "refused at once"
    );
    // The two kept still work; once one leaves, another may come.
    kept[0].write_all(b"k").unwrap();
    kept[0].read_exact(&mut buf).unwrap();
    drop(kept.pop());
    r.wait_for(|s| !closed(s).is_empty());
    let _again = client(r.addr);
    r.wait_for(|s| s.iter().filter(|e| matches!(e, Seen::Open(_))).count() == 3);
}

#[test]
fn a_reset_peer_and_a_peer_that_does_not_read_are_closed() {
    let r = start(StreamConfig {
        max_queued: 256 * 1024,
        ..StreamConfig::default()
    });
    // A reset (SO_LINGER 0): the connection ends with the error.
    let s = socket2::Socket::from(client(r.addr));
    r.wait_for(|s| s.iter().any(|e| matches!(e, Seen::Open(_))));
    s.set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
    let seen = r.wait_for(|s| !closed(s).is_empty());
    assert!(
        matches!(
            closed(&seen)[..],
            [CloseReason::Error(libc::ECONNRESET)] | [CloseReason::PeerClosed]
        ),
        "{seen:?}"
    );
    // A peer with a small window that never reads what it asked for:
    // 8 MiB cannot wait in 256 KiB.
    let slow = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    slow.set_recv_buffer_size(4096).unwrap();
    slow.connect(&r.addr.into()).unwrap();
    let mut slow = TcpStream::from(slow);
    slow.write_all(b"flood").unwrap();
    let seen = r.wait_for(|s| closed(s).len() == 2);
    assert_eq!(closed(&seen)[1], CloseReason::SlowReader, "{seen:?}");
}
