//! Stream sockets at the edge of the process: one worker's TCP listener
//! and the connections it owns, on epoll. Knows no SIP: bytes in, bytes
//! out, opens and closes, every limit counted by the caller through
//! [`StreamHandler`].
//!
//! Why epoll here while datagrams ride io_uring: a connection's receive
//! needs a buffer per connection (or a provided-buffer group sized for
//! the busiest) and its sends need their bytes kept until completion;
//! epoll's readiness lets one scratch buffer serve every connection and
//! writes go straight from the caller's buffer. The worker waits on the
//! epoll descriptor from its io_uring loop (one poll request), so one
//! thread still serves both; moving the stream io into the ring is a
//! later step, measured against this one.
//!
//! Invariants:
//! - bounded: at most `max_connections` in all and `max_per_ip` from one
//!   address (beyond: closed at accept, [`Refused`]); at most
//!   `max_queued` bytes waiting to be written per connection (beyond: the
//!   peer does not read, [`CloseReason::SlowReader`]);
//! - a connection is named by slot and generation ([`ConnId`]): a closed
//!   one's name never reaches its slot's next tenant;
//! - no call blocks: every socket is non-blocking.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

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
}

/// A listener, its connections and the epoll instance that watches them.
pub struct Reactor {
    listener: TcpListener,
    streams: Streams,
    scratch: Vec<u8>,
    events: Vec<libc::epoll_event>,
}

/// epoll's user data for the listener and a watched descriptor;
/// connections use their slot.
const LISTENER: u64 = u64::MAX;
const WATCHED: u64 = u64::MAX - 1;

impl Reactor {
    /// Watch `listener` (made non-blocking here).
    pub fn new(listener: TcpListener, cfg: StreamConfig) -> io::Result<Reactor> {
        assert!(cfg.max_connections > 0 && cfg.max_per_ip > 0 && cfg.read_budget > 0);
        assert!(cfg.max_connections < u32::MAX as usize);
        listener.set_nonblocking(true)?;
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
            },
            scratch: vec![0; cfg.read_budget.min(64 * 1024)],
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
            listener,
        };
        ctl(
            epoll,
            libc::EPOLL_CTL_ADD,
            r.listener.as_raw_fd(),
            libc::EPOLLIN as u32,
            LISTENER,
        )?;
        Ok(r)
    }

    /// The descriptor that is readable when anything is ready (for the
    /// worker's io_uring poll, or a `poll(2)` beside the datagram socket).
    pub fn fd(&self) -> RawFd {
        self.streams.epoll
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
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
            if key == LISTENER {
                self.accept_all(h);
            } else if key == WATCHED {
                h.on_watched(&mut self.streams);
            } else {
                self.on_ready(key as u32, bits, h);
            }
            self.streams.report_closed(h);
        }
        // Closes decided between polls (timers) are reported here too.
        self.streams.report_closed(h);
        Ok(n as usize)
    }

    fn accept_all<H: StreamHandler>(&mut self, h: &mut H) {
        loop {
            match self.listener.accept() {
                Ok((sock, peer)) => match self.streams.admit(sock, peer) {
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
        if bits & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32 != 0 {
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
                    h.on_data(id, &self.scratch[..n], &mut self.streams);
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

    /// Write `bytes` on `id`: what the kernel does not take now waits (up
    /// to `max_queued`); `false` when `id` is gone or was closed for a
    /// peer that does not read.
    pub fn send(&mut self, id: ConnId, bytes: &[u8]) -> bool {
        let (max, epoll) = (self.cfg.max_queued, self.epoll);
        let Some(c) = self.get_mut(id) else {
            return false;
        };
        match c.write_or_queue(bytes, max, epoll, id.slot) {
            Ok(()) => true,
            Err(why) => {
                self.close_as(id, why);
                false
            }
        }
    }

    /// Close `id` (reported to the handler as [`CloseReason::Closed`]).
    pub fn close(&mut self, id: ConnId) {
        self.close_as(id, CloseReason::Closed);
    }

    fn admit(&mut self, sock: TcpStream, peer: SocketAddr) -> Result<ConnId, Refused> {
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
        let events = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
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
            return Err(Refused::Total);
        }
        self.slots[slot as usize] = Some(Conn {
            sock,
            peer,
            generation,
            queued: Vec::new(),
        });
        *self.per_ip.entry(peer.ip()).or_insert(0) += 1;
        Ok(ConnId { slot, generation })
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
        self.slots
            .get_mut(id.slot as usize)?
            .as_mut()
            .filter(|c| c.generation == id.generation)
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
        let Some(c) = slot.take() else { return };
        let fd = c.sock.as_raw_fd();
        let _ = ctl(self.epoll, libc::EPOLL_CTL_DEL, fd, 0, 0);
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

impl Conn {
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
        let mut events = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
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
