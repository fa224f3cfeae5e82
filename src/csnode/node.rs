//! One Conversation Server shard running: a thread that owns the UDP socket
//! and the sans-IO [`Server`], and feeds it datagrams and clock ticks.
//!
//! A single thread with a blocking socket and a read timeout, not the
//! edge's io_uring workers: a CS does a session's work per datagram (two
//! dialogs, a transaction each way, SDP policy), so the syscall is not what
//! bounds it, and one thread keeps the sessions free of locks. A cluster
//! scales by shards (the edge spreads users and groups over them).

use super::deferred_store::DeferredStore;
use crate::cs::directory::Directory;
use crate::cs::registrations::Registrations;
use crate::cs::server::{Deferred, Server, Settings, Stats};
use arc_swap::ArcSwap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest wait for a datagram before the loop looks at the clock, the
/// directory and the stop flag again.
const TICK: Duration = Duration::from_millis(20);
const RECV_BUF: usize = 65_536;

/// Counters and sizes of a running shard, copied out by the loop.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    pub stats: Stats,
    pub sessions: usize,
    pub dialogs: usize,
    pub transactions: usize,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub send_errors: u64,
}

/// The shard's registration table as last published (a snapshot shared
/// with the SIP thread's copy-on-write table: publishing costs a pointer).
type Published = Arc<Mutex<Arc<Registrations>>>;

/// Reads a shard's [`Snapshot`] and registrations (refreshed every 100 ms
/// by its thread); the default one reads zeros and no registration.
#[derive(Clone, Debug, Default)]
pub struct SnapshotReader {
    snapshot: Arc<Mutex<Snapshot>>,
    registrations: Published,
}

impl SnapshotReader {
    pub fn get(&self) -> Snapshot {
        self.snapshot.lock().map(|s| *s).unwrap_or_default()
    }

    /// The registration table as the shard last published it (at most
    /// 100 ms old); its contacts are read against the caller's clock.
    pub fn registrations(&self) -> Arc<Registrations> {
        self.registrations
            .lock()
            .map(|r| Arc::clone(&r))
            .unwrap_or_default()
    }
}

/// A running shard; dropping it stops the thread.
pub struct Node {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    snapshot: Arc<Mutex<Snapshot>>,
    registrations: Published,
}

impl Node {
    /// Bind `settings.local` and start serving. The directory is read
    /// again whenever `directory` is replaced (admin API): every datagram
    /// meets the snapshot stored before it was received.
    /// With `store`, the deferred messages it holds are served again and
    /// every change is written to it.
    pub fn start(
        settings: Settings,
        directory: Arc<ArcSwap<Directory>>,
        mut store: Option<DeferredStore>,
    ) -> Result<Node, String> {
        let kept = match store.as_mut() {
            Some(s) => s.load().map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        let sock = bind(settings.local).map_err(|e| format!("cannot bind: {e}"))?;
        let addr = sock.local_addr().map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let registrations = Published::default();
        let out = Outputs {
            snapshot: Arc::clone(&snapshot),
            registrations: Arc::clone(&registrations),
        };
        let s2 = Arc::clone(&stop);
        let name = format!("cs-{}", settings.name);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let mut server = Server::new(settings, directory.load_full());
                restore(&mut server, kept);
                run(sock, server, directory, store, &s2, &out)
            })
            .map_err(|e| format!("cannot start the shard thread: {e}"))?;
        Ok(Node {
            addr,
            stop,
            thread: Some(thread),
            snapshot,
            registrations,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.lock().map(|s| *s).unwrap_or_default()
    }

    /// A handle on the counters for another thread (the admin API), which
    /// does not keep the shard running.
    pub fn reader(&self) -> SnapshotReader {
        SnapshotReader {
            snapshot: Arc::clone(&self.snapshot),
            registrations: Arc::clone(&self.registrations),
        }
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the loop publishes for other threads.
struct Outputs {
    snapshot: Arc<Mutex<Snapshot>>,
    registrations: Published,
}

struct Counters {
    datagrams_in: u64,
    datagrams_out: u64,
    send_errors: u64,
}

/// The shard's socket: blocking with a read timeout (bind_udp makes the
/// edge's sockets non-blocking; this loop blocks in recv instead).
fn bind(local: SocketAddr) -> io::Result<UdpSocket> {
    let sock = crate::io::socket::bind_udp(local, false, 4 << 20, 4 << 20)?;
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(TICK))?;
    Ok(sock)
}

/// The persistent copy's messages into a new server.
fn restore(server: &mut Server, kept: Vec<(String, Deferred)>) {
    let n = kept.len();
    let left_out = server.restore_deferred(kept);
    if n > 0 {
        tracing::info!(shard = %server.settings().name, kept = n - left_out, left_out, "deferred messages restored");
    }
}

fn run(
    sock: UdpSocket,
    mut server: Server,
    directory: Arc<ArcSwap<Directory>>,
    mut store: Option<DeferredStore>,
    stop: &AtomicBool,
    out_state: &Outputs,
) {
    let name = server.settings().name.clone();
    let mut current = Arc::clone(server.directory());
    let mut buf = vec![0u8; RECV_BUF];
    let mut out = Vec::with_capacity(RECV_BUF);
    let mut c = Counters {
        datagrams_in: 0,
        datagrams_out: 0,
        send_errors: 0,
    };
    let mut last_snapshot = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let wait = server.poll_timeout().map_or(TICK, |d| {
            d.saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), TICK)
        });
        let _ = sock.set_read_timeout(Some(wait));
        match sock.recv_from(&mut buf) {
            Ok((n, src)) => {
                c.datagrams_in += 1;
                // A directory stored before this datagram arrived (an admin
                // API change answered 200) is the one it meets.
                refresh(&directory, &mut current, &mut server);
                server.handle_datagram(Instant::now(), src, &buf[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => tracing::warn!(shard = %name, "receive error: {e}"),
        }
        let now = Instant::now();
        if server.poll_timeout().is_some_and(|d| d <= now) {
            server.handle_timeout(now);
        }
        flush(&sock, &mut server, &mut out, &mut c);
        save(&name, store.as_mut(), &mut server);
        log_notes(&name, &mut server);
        refresh(&directory, &mut current, &mut server);
        if last_snapshot.elapsed() >= Duration::from_millis(100) {
            publish(out_state, &server, &c);
            last_snapshot = Instant::now();
        }
    }
    publish(out_state, &server, &c);
}

/// Hand the server the directory's latest snapshot if it was replaced.
fn refresh(directory: &ArcSwap<Directory>, current: &mut Arc<Directory>, server: &mut Server) {
    let latest = directory.load();
    if !Arc::ptr_eq(&latest, current) {
        *current = Arc::clone(&latest);
        server.set_directory(Arc::clone(current));
    }
}

fn flush(sock: &UdpSocket, server: &mut Server, out: &mut Vec<u8>, c: &mut Counters) {
    while let Some(t) = server.poll_transmit(out) {
        match sock.send_to(out, t.destination) {
            Ok(_) => c.datagrams_out += 1,
            Err(_) => c.send_errors += 1,
        }
    }
}

fn log_notes(name: &str, server: &mut Server) {
    while let Some(n) = server.poll_note() {
        tracing::info!(target: "cpm_cs", "[{name}] {n}");
    }
}

fn publish(out: &Outputs, server: &Server, c: &Counters) {
    if let Ok(mut r) = out.registrations.lock() {
        let now = server.registrations();
        if !Arc::ptr_eq(&r, &now) {
            *r = now;
        }
    }
    if let Ok(mut s) = out.snapshot.lock() {
        *s = Snapshot {
            stats: server.stats(),
            sessions: server.sessions(),
            dialogs: server.dialogs(),
            transactions: server.transactions(),
            datagrams_in: c.datagrams_in,
            datagrams_out: c.datagrams_out,
            send_errors: c.send_errors,
        };
    }
}

/// The deferred messages' changes into the persistent copy. A failed
/// write is logged: those changes live on in memory only.
fn save(name: &str, store: Option<&mut DeferredStore>, server: &mut Server) {
    let Some(store) = store else {
        while server.poll_deferred_change().is_some() {}
        return;
    };
    if let Err(e) = store.save(server) {
        tracing::error!(shard = %name, error = %e, "deferred messages not saved");
    }
}
