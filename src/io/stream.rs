//! Stream sockets at the edge of the process: one worker's TCP and TLS
//! listeners and the connections it owns (epoll for readiness, the
//! worker's io_uring for receives in ring mode). Knows no SIP: bytes
//! in, bytes out (a TLS connection's plaintext: records are decrypted and
//! encrypted here, [`crate::io::tls`]), opens and closes, every limit
//! counted by the caller through [`StreamHandler`].
//!
//! Receives in two modes. With epoll alone (the mmsg backend), readiness
//! lets one scratch buffer serve every connection. In ring mode (the
//! io_uring backend, [`Reactor::set_ring_receives`]) each connection's
//! receive is a multishot request in the worker's io_uring on a
//! provided-buffer group shared by all connections: the reactor asks for
//! it ([`RingOp`]) and is handed what it brings ([`Reactor::ring_received`]),
//! and epoll watches only the listeners, the worker's mail and the
//! writability of a connection whose bytes wait. Sends go straight from
//! the caller's buffer in both modes (a write completes inline; through
//! the ring its bytes would have to be kept until its completion).
//!
//! Invariants:
//! - bounded: at most `max_connections` in all and `max_per_ip` from one
//!   address (beyond: closed at accept, [`Refused`]); at most
//!   `max_queued` bytes waiting to be written per connection (beyond: the
//!   peer does not read, [`CloseReason::SlowReader`]);
//! - a connection is named by slot and generation ([`ConnId`]): a closed
//!   one's name never reaches its slot's next tenant;
//! - no call blocks: every socket is non-blocking;
//! - a TLS connection's handler sees only plaintext, and only after the
//!   handshake; a TLS error (garbage, a bad certificate) closes it with
//!   [`CloseReason::Tls`] after the alert rustls chose.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use crate::io::tls::Acceptor;

/// Bounds of one worker's streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    pub max_connections: usize,
    pub max_per_ip: usize,
    /// Bytes waiting to be written on one connection.
    pub max_queued: usize,
    /// Bytes read from one connection per readiness, for fairness.
    pub read_budget: usize,
}

impl Default for StreamConfig {
    fn default() -> StreamConfig {
        StreamConfig {
            max_connections: 100_000,
            max_per_ip: 1_000,
            max_queued: 256 * 1024,
            read_budget: 64 * 1024,
        }
    }
}

/// One connection: its slot in the table and the slot's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub slot: u32,
    pub generation: u32,
}

/// Why an accepted connection was closed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` reached.
    Total,
    /// `max_per_ip` reached for this address.
    PerIp,
    /// The TLS configuration could not start a session.
    Tls,
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side (end of stream).
    PeerClosed,
    /// A receive or send failed with this errno (ECONNRESET, EPIPE, ...).
    Error(i32),
    /// More than `max_queued` bytes waited for a peer that does not read.
    SlowReader,
    /// The caller closed it ([`Streams::close`]).
    Closed,
    /// TLS failed: records that are not TLS, a failed handshake, a
    /// certificate refused.
    Tls,
}

/// What the io_uring loop is asked to do for the connections' receives
/// (ring mode only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingOp {
    /// Arm a multishot receive on `fd` for the connection `key` names
    /// ([`ring_key`]).
    Arm { fd: RawFd, key: u64 },
    /// That connection is closing: cancel its receive (the ring's
    /// request holds the socket open until it completes).
    Cancel { key: u64 },
}

/// Most connection slots in ring mode: a ring key has 24 bits of slot
/// beside 32 of generation (the top byte is the io loop's tag).
pub const RING_MAX_SLOTS: usize = 1 << 24;

/// The ring's name of a connection: slot and generation, so a completion
/// for a slot's earlier tenant never reaches the next one.
pub fn ring_key(id: ConnId) -> u64 {
    debug_assert!((id.slot as usize) < RING_MAX_SLOTS);
    u64::from(id.slot) << 32 | u64::from(id.generation)
}

fn conn_of_key(key: u64) -> ConnId {
    ConnId {
        slot: ((key >> 32) & 0xff_ffff) as u32,
        generation: key as u32,
    }
}

/// What the worker does with stream events.
pub trait StreamHandler {
    fn on_open(&mut self, id: ConnId, peer: SocketAddr);
    /// `data` arrived on `id`; answers go through `streams`.
    fn on_data(&mut self, id: ConnId, data: &[u8], streams: &mut Streams);
    fn on_closed(&mut self, id: ConnId, why: CloseReason);
    fn on_refused(&mut self, peer: SocketAddr, why: Refused);
    /// A descriptor given to [`Reactor::watch`] is readable.
    fn on_watched(&mut self, _streams: &mut Streams) {}
}

struct Conn {
    sock: TcpStream,
    peer: SocketAddr,
    generation: u32,
    /// Bytes the kernel did not take yet, in order.
    queued: Vec<u8>,
    /// The TLS session: a server one for a connection accepted on a TLS
    /// listener, a client one for a connection the edge opened to a TLS
    /// peer (boxed: a plain connection does not carry it).
    tls: Option<Box<rustls::Connection>>,
    /// Its receive is the ring's: epoll watches it for writability only.
    ring: bool,
}

/// The connections of one worker, writable from a handler.
pub struct Streams {
    epoll: RawFd,
    slots: Vec<Option<Conn>>,
    /// Generations of the slots (kept across tenants).
    generations: Vec<u32>,
    free: Vec<u32>,
    per_ip: HashMap<IpAddr, usize>,
    cfg: StreamConfig,
    /// Closed during a callback, reported after it.
    closed: Vec<(ConnId, CloseReason)>,
    /// Where a TLS session's records are gathered before they are written.
    records: Vec<u8>,
    /// Ring mode: the receives are the io_uring loop's.
    ring: bool,
    /// Ring mode: requests for the loop, taken by [`Reactor::take_ring_ops`]
    /// after every poll and delivery (bounded by two per connection).
    ops: Vec<RingOp>,
}

struct Listener {
    sock: TcpListener,
    /// Set for a TLS listener: what its connections' sessions start from.
    tls: Option<Arc<Acceptor>>,
}

/// Listeners, their connections and the epoll instance that watches them.
pub struct Reactor {
    listeners: Vec<Listener>,
    streams: Streams,
    scratch: Vec<u8>,
    /// A TLS connection's plaintext, decrypted from `scratch`.
    plain: Vec<u8>,
    events: Vec<libc::epoll_event>,
}

/// epoll's user data for a watched descriptor and the listeners (from
/// `FIRST_LISTENER` on); connections use their slot (a u32).
const WATCHED: u64 = u64::MAX;
const FIRST_LISTENER: u64 = u64::MAX - 1 - MAX_LISTENERS as u64;
/// TCP and TLS, with room to spare.
const MAX_LISTENERS: usize = 4;

impl Reactor {
    /// An epoll instance with no listener yet ([`Reactor::listen`],
    /// [`Reactor::listen_tls`]).
    pub fn new(cfg: StreamConfig) -> io::Result<Reactor> {
        assert!(cfg.max_connections > 0 && cfg.max_per_ip > 0 && cfg.read_budget > 0);
        assert!(cfg.max_connections < u32::MAX as usize);
        // SAFETY: epoll_create1 takes no pointers; the result is checked.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        let r = Reactor {
            streams: Streams {
                epoll,
                slots: Vec::new(),
                generations: Vec::new(),
                free: Vec::new(),
                per_ip: HashMap::new(),
                cfg,
                closed: Vec::new(),
                records: Vec::new(),
                ring: false,
                ops: Vec::new(),
            },
            scratch: vec![0; cfg.read_budget.min(64 * 1024)],
            // A TLS record holds at most 16 KiB of plaintext.
            plain: vec![0; 16 * 1024],
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
            listeners: Vec::new(),
        };
        Ok(r)
    }

    /// Ring mode, before any connection: each connection's receive is
    /// asked of the io_uring loop ([`Reactor::take_ring_ops`]) and its
    /// bytes come back through [`Reactor::ring_received`].
    pub fn set_ring_receives(&mut self) {
        assert!(
            self.streams.is_empty(),
            "ring mode is set before any connection"
        );
        assert!(self.streams.cfg.max_connections < RING_MAX_SLOTS);
        self.streams.ring = true;
    }

    /// The receive requests for the io_uring loop since the last call.
    pub fn take_ring_ops(&mut self, out: &mut Vec<RingOp>) {
        out.append(&mut self.streams.ops);
    }

    /// What the ring's receive for `key` brought: bytes, the end of the
    /// stream (empty), or the errno that ends the connection. A key of a
    /// connection already gone is ignored.
    pub fn ring_received<H: StreamHandler>(
        &mut self,
        key: u64,
        res: Result<&[u8], i32>,
        h: &mut H,
    ) {
        let id = conn_of_key(key);
        let Some(c) = self.streams.get(id) else {
            return;
        };
        let tls = c.tls.is_some();
        match res {
            Ok([]) => self.streams.close_as(id, CloseReason::PeerClosed),
            Ok(bytes) if tls => {
                decrypt(&mut self.streams, &mut self.plain, id, bytes, h);
            }
            Ok(bytes) => h.on_data(id, bytes, &mut self.streams),
            Err(errno) => self.streams.close_as(id, CloseReason::Error(errno)),
        }
        self.streams.report_closed(h);
    }

    /// Accept plain TCP connections on `listener` (made non-blocking here).
    pub fn listen(&mut self, listener: TcpListener) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        self.add_listener(listener, None)
    }

    /// Accept TLS connections on `listener` too (made non-blocking here),
    /// each session started from `acceptor`'s configuration of the moment.
    /// The connection limits count both listeners' connections together.
    pub fn listen_tls(&mut self, listener: TcpListener, acceptor: Arc<Acceptor>) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        self.add_listener(listener, Some(acceptor))
    }

    fn add_listener(&mut self, sock: TcpListener, tls: Option<Arc<Acceptor>>) -> io::Result<()> {
        if self.listeners.len() == MAX_LISTENERS {
            return Err(io::Error::other("too many listeners"));
        }
        let key = FIRST_LISTENER + self.listeners.len() as u64;
        ctl(
            self.streams.epoll,
            libc::EPOLL_CTL_ADD,
            sock.as_raw_fd(),
            libc::EPOLLIN as u32,
            key,
        )?;
        self.listeners.push(Listener { sock, tls });
        Ok(())
    }

    /// The descriptor that is readable when anything is ready (for the
    /// worker's io_uring poll, or a `poll(2)` beside the datagram socket).
    pub fn fd(&self) -> RawFd {
        self.streams.epoll
    }

    /// The addresses of the listeners, in the order they were added.
    pub fn local_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.listeners.iter().map(|l| l.sock.local_addr()).collect()
    }

    pub fn streams(&mut self) -> &mut Streams {
        &mut self.streams
    }

    /// Report `fd`'s readability too ([`StreamHandler::on_watched`]): the
    /// worker's other input, in the same wait.
    pub fn watch(&mut self, fd: RawFd) -> io::Result<()> {
        ctl(
            self.streams.epoll,
            libc::EPOLL_CTL_ADD,
            fd,
            libc::EPOLLIN as u32,
            WATCHED,
        )
    }

    /// The capacity of one poll's event list: a poll that returns this
    /// many may have left events for the next.
    pub fn events_per_poll(&self) -> usize {
        self.events.len()
    }

    /// Handle what is ready, waiting at most `timeout_ms` (0: do not
    /// wait). Returns how many events were handled.
    pub fn poll<H: StreamHandler>(&mut self, timeout_ms: i32, h: &mut H) -> io::Result<usize> {
        let cap = self.events.len() as i32;
        // SAFETY: `events` is a valid buffer of `cap` epoll_event entries
        // for the kernel to fill; the count returned is checked below.
        let n = unsafe {
            libc::epoll_wait(
                self.streams.epoll,
                self.events.as_mut_ptr(),
                cap,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        for i in 0..n as usize {
            let ev = self.events[i];
            let (key, bits) = (ev.u64, ev.events);
            if key == WATCHED {
                h.on_watched(&mut self.streams);
            } else if key >= FIRST_LISTENER {
                self.accept_all((key - FIRST_LISTENER) as usize, h);
            } else {
                self.on_ready(key as u32, bits, h);
            }
            self.streams.report_closed(h);
        }
        // Closes decided between polls (timers) are reported here too.
        self.streams.report_closed(h);
        Ok(n as usize)
    }

    fn accept_all<H: StreamHandler>(&mut self, which: usize, h: &mut H) {
        let Some(l) = self.listeners.get(which) else {
            return;
        };
        loop {
            match l.sock.accept() {
                Ok((sock, peer)) => match self.streams.admit(sock, peer, l.tls.as_deref()) {
                    Ok(id) => h.on_open(id, peer),
                    Err(why) => h.on_refused(peer, why),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ECONNABORTED, EMFILE...: the listener stays; the next
                // readiness tries again.
                Err(e) => {
                    tracing::warn!("stream accept: {e}");
                    return;
                }
            }
        }
    }

    fn on_ready<H: StreamHandler>(&mut self, slot: u32, bits: u32, h: &mut H) {
        let Some(id) = self.streams.id_of(slot) else {
            return;
        };
        if bits & libc::EPOLLOUT as u32 != 0 {
            self.streams.flush(id);
        }
        // In ring mode the ring's receive reports the end and errors too.
        let readable = (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32;
        if bits & readable != 0 && !self.streams.ring {
            self.read(id, h);
        }
    }

    /// Read up to the budget, handing each piece to the handler.
    fn read<H: StreamHandler>(&mut self, id: ConnId, h: &mut H) {
        let mut left = self.streams.cfg.read_budget;
        while left > 0 {
            let Some(c) = self.streams.get_mut(id) else {
                return;
            };
            let want = left.min(self.scratch.len());
            match c.sock.read(&mut self.scratch[..want]) {
                Ok(0) => return self.streams.close_as(id, CloseReason::PeerClosed),
                Ok(n) => {
                    left -= n;
                    let delivered = match c.tls.is_some() {
                        true => {
                            let input = &self.scratch[..n];
                            decrypt(&mut self.streams, &mut self.plain, id, input, h)
                        }
                        false => {
                            h.on_data(id, &self.scratch[..n], &mut self.streams);
                            true
                        }
                    };
                    // A short read drained the socket: the next read would
                    // only say EAGAIN, a syscall per message for nothing.
                    // Readiness is level-triggered, so what arrives after
                    // (a FIN too) is reported by the next poll.
                    if !delivered || n < want {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(libc::EIO);
                    return self.streams.close_as(id, CloseReason::Error(errno));
                }
            }
        }
    }
}

/// `input` from a TLS connection through its session: the plaintext to
/// the handler, the session's own records (handshake, alerts) to the peer.
/// `false`: the connection is gone.
fn decrypt<H: StreamHandler>(
    streams: &mut Streams,
    plain: &mut [u8],
    id: ConnId,
    mut input: &[u8],
    h: &mut H,
) -> bool {
    while !input.is_empty() {
        let Some(tls) = streams.tls_mut(id) else {
            return false;
        };
        // Fails only while unread plaintext fills rustls' buffer, which
        // the loop below always empties.
        if tls.read_tls(&mut input).is_err() {
            streams.close_as(id, CloseReason::Tls);
            return false;
        }
        let state = tls.process_new_packets();
        streams.write_records(id);
        if let Err(e) = state {
            tracing::debug!(peer = ?streams.peer(id), "tls: {e}");
            streams.close_as(id, CloseReason::Tls);
            return false;
        }
        if !deliver_plaintext(streams, plain, id, h) {
            return false;
        }
    }
    true
}

/// Hand what `id`'s session decrypted to the handler, a read of `plain`
/// at a time. `false`: the connection is gone.
fn deliver_plaintext<H: StreamHandler>(
    streams: &mut Streams,
    plain: &mut [u8],
    id: ConnId,
    h: &mut H,
) -> bool {
    loop {
        let Some(tls) = streams.tls_mut(id) else {
            return false;
        };
        match tls.reader().read(plain) {
            // close_notify: the peer's orderly end.
            Ok(0) => {
                streams.close_as(id, CloseReason::PeerClosed);
                return false;
            }
            Ok(m) => h.on_data(id, &plain[..m], streams),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            // The peer ended the transport without close_notify.
            Err(_) => {
                streams.close_as(id, CloseReason::PeerClosed);
                return false;
            }
        }
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        // SAFETY: the descriptor is this reactor's own and closed once.
        unsafe { libc::close(self.streams.epoll) };
    }
}

impl Streams {
    /// Open connections.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn peer(&self, id: ConnId) -> Option<SocketAddr> {
        self.get(id).map(|c| c.peer)
    }

    /// Whether `id` came through a TLS listener.
    pub fn is_tls(&self, id: ConnId) -> bool {
        self.get(id).is_some_and(|c| c.tls.is_some())
    }

    /// The certificate `id`'s TLS peer presented (DER, leaf), once its
    /// handshake verified it; `None`: plain TCP, or no certificate.
    pub fn peer_certificate(&self, id: ConnId) -> Option<&[u8]> {
        let tls = self.get(id)?.tls.as_ref()?;
        Some(tls.peer_certificates()?.first()?.as_ref())
    }

    /// Whether `id`'s TLS handshake is still under way (for its timeout).
    pub fn handshaking(&self, id: ConnId) -> bool {
        self.get(id)
            .and_then(|c| c.tls.as_ref())
            .is_some_and(|t| t.is_handshaking())
    }

    /// Write `bytes` on `id`: what the kernel does not take now waits (up
    /// to `max_queued`); `false` when `id` is gone or was closed for a
    /// peer that does not read.
    pub fn send(&mut self, id: ConnId, bytes: &[u8]) -> bool {
        let (max, epoll) = (self.cfg.max_queued, self.epoll);
        let Some(c) = conn_mut(&mut self.slots, id) else {
            return false;
        };
        let r = match c.tls.is_some() {
            true => c.encrypt(bytes, &mut self.records, max, epoll, id.slot),
            false => c.write_or_queue(bytes, max, epoll, id.slot),
        };
        match r {
            Ok(()) => true,
            Err(why) => {
                self.close_as(id, why);
                false
            }
        }
    }

    fn tls_mut(&mut self, id: ConnId) -> Option<&mut rustls::Connection> {
        self.get_mut(id)?.tls.as_deref_mut()
    }

    /// Write the records `id`'s session has ready (handshake, alerts).
    fn write_records(&mut self, id: ConnId) {
        let (max, epoll) = (self.cfg.max_queued, self.epoll);
        let Some(c) = conn_mut(&mut self.slots, id) else {
            return;
        };
        if let Err(why) = c.write_pending_records(&mut self.records, max, epoll, id.slot) {
            self.close_as(id, why);
        }
    }

    /// Close `id` (reported to the handler as [`CloseReason::Closed`]).
    pub fn close(&mut self, id: ConnId) {
        self.close_as(id, CloseReason::Closed);
    }

    fn admit(
        &mut self,
        sock: TcpStream,
        peer: SocketAddr,
        tls: Option<&Acceptor>,
    ) -> Result<ConnId, Refused> {
        if self.len() >= self.cfg.max_connections {
            return Err(Refused::Total);
        }
        let from_ip = self.per_ip.get(&peer.ip()).copied().unwrap_or(0);
        if from_ip >= self.cfg.max_per_ip {
            return Err(Refused::PerIp);
        }
        if sock.set_nonblocking(true).is_err() {
            return Err(Refused::Total);
        }
        let tls = match tls {
            Some(a) => Some(Box::new(rustls::Connection::Server(
                crate::io::tls::accept(a, self.cfg.max_queued).map_err(|_| Refused::Tls)?,
            ))),
            None => None,
        };
        self.install(sock, peer, tls).ok_or(Refused::Total)
    }

    /// Open a connection to `peer` (non-blocking: what is sent before it
    /// is up waits in its queue), with `tls` as its client session if
    /// given. Counted in the bounds as an accepted one is.
    pub fn connect(
        &mut self,
        peer: SocketAddr,
        tls: Option<rustls::ClientConnection>,
    ) -> io::Result<ConnId> {
        if self.len() >= self.cfg.max_connections {
            return Err(io::Error::other("max_connections reached"));
        }
        let domain = socket2::Domain::for_address(peer);
        let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        s.set_nonblocking(true)?;
        match s.connect(&peer.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let tls = tls.map(|mut c| {
            c.set_buffer_limit(Some(self.cfg.max_queued));
            Box::new(rustls::Connection::Client(c))
        });
        let id = self
            .install(s.into(), peer, tls)
            .ok_or_else(|| io::Error::other("cannot watch the connection"))?;
        // A client speaks first: its ClientHello waits for the connect.
        self.write_records(id);
        Ok(id)
    }

    /// A slot for `sock`, watched by epoll; `None` when epoll refuses it.
    fn install(
        &mut self,
        sock: TcpStream,
        peer: SocketAddr,
        tls: Option<Box<rustls::Connection>>,
    ) -> Option<ConnId> {
        // SIP messages are small and latency matters more than segments.
        let _ = sock.set_nodelay(true);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.generations.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        let generation = self.generations[slot as usize];
        let events = read_events(self.ring);
        if ctl(
            self.epoll,
            libc::EPOLL_CTL_ADD,
            sock.as_raw_fd(),
            events,
            u64::from(slot),
        )
        .is_err()
        {
            self.free.push(slot);
            return None;
        }
        let id = ConnId { slot, generation };
        if self.ring {
            let fd = sock.as_raw_fd();
            self.ops.push(RingOp::Arm {
                fd,
                key: ring_key(id),
            });
        }
        self.slots[slot as usize] = Some(Conn {
            sock,
            peer,
            generation,
            queued: Vec::new(),
            tls,
            ring: self.ring,
        });
        *self.per_ip.entry(peer.ip()).or_insert(0) += 1;
        Some(id)
    }

    fn id_of(&self, slot: u32) -> Option<ConnId> {
        let c = self.slots.get(slot as usize)?.as_ref()?;
        Some(ConnId {
            slot,
            generation: c.generation,
        })
    }

    fn get(&self, id: ConnId) -> Option<&Conn> {
        self.slots
            .get(id.slot as usize)?
            .as_ref()
            .filter(|c| c.generation == id.generation)
    }

    fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        conn_mut(&mut self.slots, id)
    }

    /// Write what waits; once all is out, stop watching for writability.
    fn flush(&mut self, id: ConnId) {
        let epoll = self.epoll;
        let Some(c) = self.get_mut(id) else { return };
        if let Err(why) = c.flush(epoll, id.slot) {
            self.close_as(id, why);
        }
    }

    fn close_as(&mut self, id: ConnId, why: CloseReason) {
        let Some(slot) = self.slots.get_mut(id.slot as usize) else {
            return;
        };
        if slot.as_ref().is_none_or(|c| c.generation != id.generation) {
            return;
        }
        let Some(mut c) = slot.take() else { return };
        if why == CloseReason::Closed {
            c.say_goodbye();
        }
        let fd = c.sock.as_raw_fd();
        let _ = ctl(self.epoll, libc::EPOLL_CTL_DEL, fd, 0, 0);
        if c.ring {
            self.ops.push(RingOp::Cancel { key: ring_key(id) });
        }
        if let Some(n) = self.per_ip.get_mut(&c.peer.ip()) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&c.peer.ip());
            }
        }
        // The slot's next tenant is another connection.
        let g = &mut self.generations[id.slot as usize];
        *g = g.wrapping_add(1);
        self.free.push(id.slot);
        self.closed.push((id, why));
        drop(c);
    }

    fn report_closed<H: StreamHandler>(&mut self, h: &mut H) {
        for (id, why) in self.closed.drain(..) {
            h.on_closed(id, why);
        }
    }
}

/// `id`'s connection, if it is still the slot's tenant (a function, not
/// a method: callers borrow other fields of [`Streams`] beside it).
fn conn_mut(slots: &mut [Option<Conn>], id: ConnId) -> Option<&mut Conn> {
    slots
        .get_mut(id.slot as usize)?
        .as_mut()
        .filter(|c| c.generation == id.generation)
}

impl Conn {
    /// `bytes` through the TLS session and out, a buffer's worth at a time
    /// (rustls' buffers stay within `max`; the write queue bounds the rest).
    fn encrypt(
        &mut self,
        bytes: &[u8],
        records: &mut Vec<u8>,
        max: usize,
        epoll: RawFd,
        slot: u32,
    ) -> Result<(), CloseReason> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let Some(tls) = self.tls.as_mut() else {
                return Err(CloseReason::Tls);
            };
            let n = tls.writer().write(rest).unwrap_or(0);
            if n == 0 {
                // rustls holds `max` bytes already: the peer does not read.
                return Err(CloseReason::SlowReader);
            }
            rest = &rest[n..];
            self.write_pending_records(records, max, epoll, slot)?;
        }
        Ok(())
    }

    /// The records the session has ready, written or queued.
    fn write_pending_records(
        &mut self,
        records: &mut Vec<u8>,
        max: usize,
        epoll: RawFd,
        slot: u32,
    ) -> Result<(), CloseReason> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        records.clear();
        while tls.wants_write() {
            // Writing into a Vec fails only for want of memory.
            if tls.write_tls(records).is_err() {
                return Err(CloseReason::Tls);
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        self.write_or_queue(records, max, epoll, slot)
    }

    /// Our own close of a TLS connection: a close_notify, if the kernel
    /// takes it now (best effort; the socket closes either way).
    fn say_goodbye(&mut self) {
        let Some(tls) = self.tls.as_mut() else {
            return;
        };
        tls.send_close_notify();
        let mut alert = Vec::new();
        while tls.wants_write() && tls.write_tls(&mut alert).is_ok() {}
        if self.queued.is_empty() {
            let _ = write_some(&mut self.sock, &alert);
        }
    }

    /// Write what the kernel takes now and queue the rest (watching for
    /// writability), or say why the connection must end.
    fn write_or_queue(
        &mut self,
        bytes: &[u8],
        max: usize,
        epoll: RawFd,
        slot: u32,
    ) -> Result<(), CloseReason> {
        let mut rest = bytes;
        if self.queued.is_empty() {
            let n = write_some(&mut self.sock, rest).map_err(CloseReason::Error)?;
            rest = &rest[n..];
        }
        if rest.is_empty() {
            return Ok(());
        }
        if self.queued.len() + rest.len() > max {
            return Err(CloseReason::SlowReader);
        }
        let was_empty = self.queued.is_empty();
        self.queued.extend_from_slice(rest);
        if was_empty {
            self.watch_writable(epoll, slot, true)?;
        }
        Ok(())
    }

    /// Write what waits; all out: stop watching for writability.
    fn flush(&mut self, epoll: RawFd, slot: u32) -> Result<(), CloseReason> {
        let n = write_some(&mut self.sock, &self.queued).map_err(CloseReason::Error)?;
        self.queued.drain(..n);
        if self.queued.is_empty() {
            self.watch_writable(epoll, slot, false)?;
        }
        Ok(())
    }

    /// Watch for writability only while bytes wait (level-triggered
    /// epoll would report a writable socket on every wait).
    fn watch_writable(&self, epoll: RawFd, slot: u32, on: bool) -> Result<(), CloseReason> {
        let mut events = read_events(self.ring);
        if on {
            events |= libc::EPOLLOUT as u32;
        }
        ctl(
            epoll,
            libc::EPOLL_CTL_MOD,
            self.sock.as_raw_fd(),
            events,
            u64::from(slot),
        )
        .map_err(|e| CloseReason::Error(e.raw_os_error().unwrap_or(libc::EIO)))
    }
}

/// What epoll watches on a connection besides writability: its input,
/// unless the ring receives it.
fn read_events(ring: bool) -> u32 {
    match ring {
        true => 0,
        false => (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
    }
}

/// Write what the kernel takes now: bytes written, or the errno that
/// ends the connection.
fn write_some(sock: &mut TcpStream, bytes: &[u8]) -> Result<usize, i32> {
    let mut done = 0;
    while done < bytes.len() {
        match sock.write(&bytes[done..]) {
            Ok(0) => return Err(libc::EPIPE),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }
    Ok(done)
}

fn ctl(epoll: RawFd, op: libc::c_int, fd: RawFd, events: u32, key: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: key };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call;
    // both descriptors are open (the caller owns them).
    let r = unsafe { libc::epoll_ctl(epoll, op, fd, &mut ev) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
