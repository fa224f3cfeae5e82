//! Plumbing shared by the two perf binaries (`cpm-loadgen`, `cpm-cs-responder`),
//! included by each with `#[path = "common.rs"] mod common;`.
//!
//! This file owns: stop-on-signal (SIGINT/SIGTERM set a static flag), CPU
//! pinning, UDP socket setup, the recvmmsg/sendmmsg batch ([`MsgBatch`]), a
//! wait-for-readable helper, and the small amount of SIP text scanning both
//! tools need (start line, header lines, top-Via destination, To tag).
//!
//! It deliberately does not use the `cpm-edge` library: the tools measure the
//! edge, so they must not share (and hide) its parser's bugs.
//!
//! Everything here tolerates arbitrary bytes from the network: parsers return
//! `None` instead of panicking, buffers are fixed at construction.

// Each binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

// ---------------------------------------------------------------- signals --

/// Set by the SIGINT/SIGTERM handler; polled by the main loops (which never
/// block longer than ~100 ms, so a stop is seen promptly).
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::Relaxed);
}

/// Route SIGINT and SIGTERM to the stop flag. No SA_RESTART, so a blocking
/// syscall returns EINTR and the loop re-checks the flag.
pub fn install_stop_handlers() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: zeroed sigaction is a valid "no flags, empty mask" value; the
        // handler is an extern "C" fn that only touches an atomic.
        let rc = unsafe {
            let mut sa: libc::sigaction = mem::zeroed();
            sa.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------- cpu/socket --

/// Pin the calling thread to `cpu` (a logical CPU id as in `taskset`).
pub fn pin_to_cpu(cpu: usize) -> Result<(), String> {
    let ids = core_affinity::get_core_ids().ok_or("cannot read the CPU affinity set")?;
    let id = ids
        .into_iter()
        .find(|c| c.id == cpu)
        .ok_or_else(|| format!("CPU {cpu} is not in this process's affinity set"))?;
    if core_affinity::set_for_current(id) {
        Ok(())
    } else {
        Err(format!("sched_setaffinity to CPU {cpu} failed"))
    }
}

/// Bind an IPv4 UDP socket with large kernel buffers: at several hundred
/// thousand datagrams per second a default 208 KiB buffer overflows within
/// a millisecond of scheduling jitter, which would show up as "loss" that is
/// really the tool's own fault. Returns the socket and the effective
/// (rcvbuf, sndbuf) sizes reported by the kernel.
pub fn bind_udp(addr: SocketAddr, buf_bytes: usize) -> io::Result<(UdpSocket, usize, usize)> {
    if !addr.is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr}: only IPv4 addresses are supported"),
        ));
    }
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // The *FORCE variants bypass net.core.{r,w}mem_max when we are root;
    // otherwise fall back to the capped ordinary options.
    if !set_int_opt(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, buf_bytes) {
        let _ = sock.set_recv_buffer_size(buf_bytes);
    }
    if !set_int_opt(&sock, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, buf_bytes) {
        let _ = sock.set_send_buffer_size(buf_bytes);
    }
    // As the edge does (src/io/socket.rs): with IP_PMTUDISC_DO the kernel
    // writes IP ID 0 instead of drawing a hashed ID per datagram (~4.7 % of
    // the forwarder's samples). Every rig party sends this way, so the
    // forwarder stays the rig's ceiling and the generator stays cheap; the
    // rig's datagrams are far below loopback's MTU, so none is refused.
    if !set_int_opt(
        &sock,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DO as usize,
    ) {
        return Err(io::Error::last_os_error());
    }
    sock.bind(&addr.into())?;
    let rcv = sock.recv_buffer_size().unwrap_or(0);
    let snd = sock.send_buffer_size().unwrap_or(0);
    Ok((sock.into(), rcv, snd))
}

/// Turn on UDP generic segmentation offload for sends of `seg` bytes per
/// datagram (Linux >= 4.18).
pub fn enable_udp_gso(sock: &UdpSocket, seg: usize) -> io::Result<()> {
    let v: libc::c_int = seg.min(65_507) as libc::c_int;
    // SAFETY: valid fd, pointer/len of a c_int.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            &v as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_int_opt(sock: &socket2::Socket, level: libc::c_int, opt: libc::c_int, val: usize) -> bool {
    let v: libc::c_int = val.min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: valid fd, pointer/len of a c_int.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            &v as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// Wait until one of `fds` is readable or `timeout` passes (ppoll: µs
/// precision, which the open-loop pacer needs). Returns the readiness flags
/// per fd (true = readable or in error); all false on timeout/EINTR.
pub fn wait_readable(fds: &[libc::c_int], timeout: Duration, ready: &mut [bool]) {
    const MAX_FDS: usize = 64;
    let n = fds.len().min(MAX_FDS).min(ready.len());
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; MAX_FDS];
    for (p, &fd) in pfds.iter_mut().zip(fds.iter()).take(n) {
        p.fd = fd;
        p.events = libc::POLLIN;
    }
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(3600) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: pfds holds n initialised entries; ts is valid; null sigmask.
    let rc = unsafe { libc::ppoll(pfds.as_mut_ptr(), n as libc::nfds_t, &ts, std::ptr::null()) };
    for (r, p) in ready.iter_mut().zip(pfds.iter()).take(n) {
        *r = rc > 0 && p.revents != 0;
    }
}

// ---------------------------------------------------------------- mmsg batch --

/// A fixed set of datagram slots wired for recvmmsg/sendmmsg (IPv4 only).
///
/// The iovec/mmsghdr pointers are set once in [`MsgBatch::new`]: they point
/// into the Vecs' heap storage, which never grows or moves afterwards (moving
/// the `MsgBatch` value itself does not move that storage).
pub struct MsgBatch {
    bufs: Vec<u8>,
    slot_size: usize,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in>,
    hdrs: Vec<libc::mmsghdr>,
}

/// Outcome of one sendmmsg call.
pub enum SendOutcome {
    /// This many datagrams (>= 1) were handed to the kernel.
    Sent(usize),
    /// Socket buffer full (only with MSG_DONTWAIT): nothing sent, retry later.
    WouldBlock,
    /// The first datagram of the slice failed with this errno.
    Failed(i32),
}

impl MsgBatch {
    pub fn new(slots: usize, slot_size: usize) -> MsgBatch {
        let slots = slots.clamp(1, 1024);
        let mut b = MsgBatch {
            bufs: vec![0u8; slots * slot_size],
            slot_size,
            // SAFETY (zeroed): plain C structs for which all-zero is valid.
            iovs: vec![unsafe { mem::zeroed() }; slots],
            addrs: vec![unsafe { mem::zeroed() }; slots],
            hdrs: vec![unsafe { mem::zeroed() }; slots],
        };
        for i in 0..slots {
            // SAFETY: i * slot_size is within bufs (len slots * slot_size).
            b.iovs[i].iov_base = unsafe { b.bufs.as_mut_ptr().add(i * slot_size) } as *mut _;
            b.iovs[i].iov_len = slot_size;
            let h = &mut b.hdrs[i].msg_hdr;
            h.msg_name = &mut b.addrs[i] as *mut libc::sockaddr_in as *mut libc::c_void;
            h.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut b.iovs[i];
            h.msg_iovlen = 1;
        }
        b
    }

    pub fn slots(&self) -> usize {
        self.hdrs.len()
    }

    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Receive up to `max` datagrams without blocking. Ok(0) when none is
    /// queued.
    pub fn recv(&mut self, fd: libc::c_int, max: usize) -> io::Result<usize> {
        let n = max.min(self.slots());
        for i in 0..n {
            self.iovs[i].iov_len = self.slot_size;
            self.hdrs[i].msg_hdr.msg_namelen =
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            self.hdrs[i].msg_hdr.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: hdrs[..n] are wired to live buffers of the advertised sizes.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(e),
            };
        }
        Ok(rc as usize)
    }

    /// Received datagram `i` (after [`MsgBatch::recv`]): bytes, truncated flag,
    /// IPv4 source.
    pub fn received(&self, i: usize) -> (&[u8], bool, Option<SocketAddrV4>) {
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(self.slot_size);
        let start = i * self.slot_size;
        let trunc = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let a = &self.addrs[i];
        let src = if a.sin_family as libc::c_int == libc::AF_INET {
            Some(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            ))
        } else {
            None
        };
        (&self.bufs[start..start + len], trunc, src)
    }

    /// Writable storage of slot `i` (to build an outgoing datagram).
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        let start = i * self.slot_size;
        &mut self.bufs[start..start + self.slot_size]
    }

    /// Mark slot `i` as a datagram of `len` bytes to `dst`.
    pub fn set_outgoing(&mut self, i: usize, len: usize, dst: SocketAddrV4) {
        self.iovs[i].iov_len = len.min(self.slot_size);
        let a = &mut self.addrs[i];
        a.sin_family = libc::AF_INET as libc::sa_family_t;
        a.sin_port = dst.port().to_be();
        a.sin_addr.s_addr = u32::from(*dst.ip()).to_be();
        self.hdrs[i].msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    }

    /// Mark slot `i` as a datagram of `len` bytes for a connected socket (no
    /// destination address: the kernel then reuses the socket's cached route
    /// instead of looking one up per datagram).
    pub fn set_outgoing_connected(&mut self, i: usize, len: usize) {
        self.iovs[i].iov_len = len.min(self.slot_size);
        self.hdrs[i].msg_hdr.msg_name = std::ptr::null_mut();
        self.hdrs[i].msg_hdr.msg_namelen = 0;
    }

    /// Send slots `from..to` (all of the same length, same destination as
    /// slot `from`) as ONE UDP GSO sendmsg: the kernel cuts the payload into
    /// datagrams of that length (needs `UDP_SEGMENT` set on the socket,
    /// see [`enable_udp_gso`]). All or nothing.
    pub fn send_gso(&mut self, fd: libc::c_int, from: usize, to: usize, flags: i32) -> SendOutcome {
        let to = to.min(self.slots());
        if from >= to {
            return SendOutcome::Sent(0);
        }
        let mut mh = self.hdrs[from].msg_hdr;
        mh.msg_iov = &mut self.iovs[from];
        mh.msg_iovlen = to - from;
        loop {
            // SAFETY: iovs[from..to] point into live slot buffers; msg_name
            // is this batch's address of slot `from` (or null).
            let rc = unsafe { libc::sendmsg(fd, &mh, flags) };
            if rc >= 0 {
                return SendOutcome::Sent(to - from);
            }
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            match errno {
                libc::EINTR => continue,
                libc::EAGAIN => return SendOutcome::WouldBlock,
                _ => return SendOutcome::Failed(errno),
            }
        }
    }

    /// One sendmmsg of slots `from..to`.
    pub fn send(&mut self, fd: libc::c_int, from: usize, to: usize, flags: i32) -> SendOutcome {
        let to = to.min(self.slots());
        if from >= to {
            return SendOutcome::Sent(0);
        }
        loop {
            // SAFETY: hdrs[from..to] are wired to live buffers/addresses.
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs.as_mut_ptr().add(from),
                    (to - from) as libc::c_uint,
                    flags,
                )
            };
            if rc > 0 {
                return SendOutcome::Sent(rc as usize);
            }
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            match errno {
                libc::EINTR => continue,
                libc::EAGAIN => return SendOutcome::WouldBlock,
                // rc == 0 should not happen for a non-empty slice; treat it as
                // a failure of the first datagram so callers always progress.
                _ => return SendOutcome::Failed(errno),
            }
        }
    }
}

/// Send one datagram with `sendto` (`dst` None: a connected socket). For the
/// rare datagrams that do not fit a [`MsgBatch`] slot (the load generator's
/// malformed and oversized ones).
pub fn send_one(
    fd: libc::c_int,
    data: &[u8],
    dst: Option<SocketAddrV4>,
    flags: i32,
) -> SendOutcome {
    // SAFETY: zeroed sockaddr_in is valid; filled below when used.
    let mut a: libc::sockaddr_in = unsafe { mem::zeroed() };
    let (name, namelen) = match dst {
        Some(d) => {
            a.sin_family = libc::AF_INET as libc::sa_family_t;
            a.sin_port = d.port().to_be();
            a.sin_addr.s_addr = u32::from(*d.ip()).to_be();
            (
                &a as *const libc::sockaddr_in as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        None => (std::ptr::null(), 0),
    };
    loop {
        // SAFETY: data is a live slice; name/namelen describe `a` or are null/0.
        let rc = unsafe {
            libc::sendto(
                fd,
                data.as_ptr() as *const libc::c_void,
                data.len(),
                flags,
                name,
                namelen,
            )
        };
        if rc >= 0 {
            return SendOutcome::Sent(1);
        }
        let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        match errno {
            libc::EINTR => continue,
            libc::EAGAIN => return SendOutcome::WouldBlock,
            _ => return SendOutcome::Failed(errno),
        }
    }
}

// ---------------------------------------------------------------- SIP text --

/// One header field of a SIP message.
pub struct Header<'a> {
    /// Field name as written (may be compact, e.g. `v`).
    pub name: &'a [u8],
    /// Value with surrounding whitespace trimmed (folded lines included).
    pub value: &'a [u8],
    /// The whole field as it appeared, continuation lines included, without
    /// the final line terminator: what a responder copies verbatim.
    pub raw: &'a [u8],
}

/// Iterator over the header fields of a message, stopping at the blank line.
pub struct Headers<'a> {
    msg: &'a [u8],
    pos: usize,
}

/// The first line (without terminator) and an iterator over the headers.
pub fn split_message(msg: &[u8]) -> (&[u8], Headers<'_>) {
    let (line, next) = line_at(msg, 0);
    (line, Headers { msg, pos: next })
}

/// The line starting at `pos` (CR/LF stripped) and the offset after it.
fn line_at(msg: &[u8], pos: usize) -> (&[u8], usize) {
    let rest = &msg[pos.min(msg.len())..];
    match memchr::memchr(b'\n', rest) {
        Some(i) => {
            let line = &rest[..i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            (line, pos + i + 1)
        }
        None => (rest.strip_suffix(b"\r").unwrap_or(rest), msg.len()),
    }
}

impl<'a> Iterator for Headers<'a> {
    type Item = Header<'a>;

    fn next(&mut self) -> Option<Header<'a>> {
        if self.pos >= self.msg.len() {
            return None;
        }
        let start = self.pos;
        let (line, mut next) = line_at(self.msg, start);
        if line.is_empty() {
            self.pos = self.msg.len();
            return None;
        }
        let mut end = start + line.len();
        // RFC 3261 line folding: a line starting with SP/HT continues the field.
        while next < self.msg.len() && matches!(self.msg[next], b' ' | b'\t') {
            let (cont, after) = line_at(self.msg, next);
            end = next + cont.len();
            next = after;
        }
        self.pos = next;
        let raw = &self.msg[start..end];
        let (name, value) = match memchr::memchr(b':', raw) {
            Some(c) => (trim(&raw[..c]), trim(&raw[c + 1..])),
            None => (raw, &raw[raw.len()..]),
        };
        Some(Header { name, value, raw })
    }
}

pub fn trim(b: &[u8]) -> &[u8] {
    let is_ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    let s = b.iter().position(|c| !is_ws(c)).unwrap_or(b.len());
    let e = b.iter().rposition(|c| !is_ws(c)).map_or(s, |i| i + 1);
    &b[s..e]
}

/// Header name match, long or compact form, case-insensitive.
pub fn is_header(name: &[u8], long: &[u8], compact: &[u8]) -> bool {
    name.eq_ignore_ascii_case(long) || (!compact.is_empty() && name.eq_ignore_ascii_case(compact))
}

/// Status code of a response start line (`SIP/2.0 200 OK`), None for a
/// request or garbage.
pub fn status_code(start_line: &[u8]) -> Option<u16> {
    let rest = start_line.strip_prefix(b"SIP/2.0 ")?;
    let digits = rest.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|c| *c != b' ') {
        return None;
    }
    parse_u64(digits).map(|v| v as u16)
}

/// Method of a request start line (`INVITE sip:.. SIP/2.0`), None for a
/// response or garbage.
pub fn request_method(start_line: &[u8]) -> Option<&[u8]> {
    if start_line.starts_with(b"SIP/") {
        return None;
    }
    let sp = memchr::memchr(b' ', start_line)?;
    let method = &start_line[..sp];
    let valid = !method.is_empty()
        && method.len() <= 32
        && method
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(c));
    if valid && start_line.ends_with(b" SIP/2.0") {
        Some(method)
    } else {
        None
    }
}

/// Decimal, at most 19 digits (no overflow), no sign.
pub fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(c - b'0');
    }
    Some(v)
}

/// Where a response to this Via value goes (RFC 3261 18.2.2 + RFC 3581):
/// `received` overrides the sent-by host, `rport=N` overrides the port, else
/// the sent-by port, else 5060. Uses the first via-parm of a comma list.
/// IPv4 literals only (a host name without `received` gives None).
pub fn via_destination(value: &[u8]) -> Option<SocketAddrV4> {
    let first = match memchr::memchr(b',', value) {
        Some(c) => &value[..c],
        None => value,
    };
    let first = trim(first);
    // "SIP/2.0/UDP" then LWS then sent-by.
    let ws = first.iter().position(|c| matches!(c, b' ' | b'\t'))?;
    let rest = trim(&first[ws..]);
    let mut parts = rest.split(|c| *c == b';');
    let sent_by = trim(parts.next()?);
    let (host, port) = match memchr::memrchr(b':', sent_by) {
        Some(c) => (&sent_by[..c], Some(parse_port(&sent_by[c + 1..])?)),
        None => (sent_by, None),
    };
    let mut received: Option<Ipv4Addr> = None;
    let mut rport: Option<u16> = None;
    for p in parts {
        let p = trim(p);
        let (k, v) = match memchr::memchr(b'=', p) {
            Some(e) => (trim(&p[..e]), Some(trim(&p[e + 1..]))),
            None => (p, None),
        };
        if k.eq_ignore_ascii_case(b"received") {
            received = v.and_then(parse_ipv4);
        } else if k.eq_ignore_ascii_case(b"rport") {
            // A bare `rport` is the request for one, not a value.
            rport = v.and_then(parse_port);
        }
    }
    let ip = match received {
        Some(ip) => ip,
        None => parse_ipv4(host)?,
    };
    Some(SocketAddrV4::new(ip, rport.or(port).unwrap_or(5060)))
}

fn parse_port(b: &[u8]) -> Option<u16> {
    let v = parse_u64(trim(b))?;
    if v == 0 || v > 65535 {
        None
    } else {
        Some(v as u16)
    }
}

fn parse_ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Does a From/To value carry a `tag` parameter? Parameters of the URI
/// inside `<...>` do not count; without brackets everything after the first
/// `;` is a header parameter.
pub fn has_tag(value: &[u8]) -> bool {
    let params = match memchr::memrchr(b'>', value) {
        Some(gt) => &value[gt + 1..],
        None => match memchr::memchr(b';', value) {
            Some(sc) => &value[sc..],
            None => return false,
        },
    };
    params.split(|c| *c == b';').any(|p| {
        let p = trim(p);
        let k = match memchr::memchr(b'=', p) {
            Some(e) => trim(&p[..e]),
            None => p,
        };
        k.eq_ignore_ascii_case(b"tag")
    })
}

/// Appends into a fixed slice; any overflow poisons it (the caller drops the
/// datagram rather than sending a truncated SIP message).
pub struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
    overflow: bool,
}

impl<'a> SliceWriter<'a> {
    pub fn new(buf: &'a mut [u8]) -> SliceWriter<'a> {
        SliceWriter {
            buf,
            len: 0,
            overflow: false,
        }
    }

    pub fn put(&mut self, b: &[u8]) {
        let end = self.len + b.len();
        if self.overflow || end > self.buf.len() {
            self.overflow = true;
            return;
        }
        self.buf[self.len..end].copy_from_slice(b);
        self.len = end;
    }

    /// Bytes written, or None if anything did not fit.
    pub fn finish(self) -> Option<usize> {
        if self.overflow {
            None
        } else {
            Some(self.len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_dest_variants() {
        let d = |s: &str| via_destination(s.as_bytes());
        assert_eq!(
            d("SIP/2.0/UDP 127.0.0.1:5070;branch=z9;rport"),
            Some("127.0.0.1:5070".parse().unwrap())
        );
        assert_eq!(
            d("SIP/2.0/UDP 10.0.0.1:5070;rport=4000;received=10.9.9.9;branch=x, SIP/2.0/UDP 1.1.1.1"),
            Some("10.9.9.9:4000".parse().unwrap())
        );
        assert_eq!(
            d("SIP/2.0/UDP 10.0.0.1"),
            Some("10.0.0.1:5060".parse().unwrap())
        );
        assert_eq!(d("SIP/2.0/UDP host.example.net:5060"), None);
        assert_eq!(d("garbage"), None);
        assert_eq!(d(""), None);
        assert_eq!(d("SIP/2.0/UDP 1.2.3.4:99999"), None);
    }

    #[test]
    fn headers_and_tags() {
        let m = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4:5\r\n v: cont\r\nTo: <sip:x@y;tag=no>\r\nf: a;tag=1\r\n\r\nbody";
        let (start, hs) = split_message(m);
        assert_eq!(request_method(start), Some(&b"INVITE"[..]));
        let hs: Vec<_> = hs.collect();
        assert_eq!(hs.len(), 3);
        assert_eq!(hs[0].raw, b"Via: SIP/2.0/UDP 1.2.3.4:5\r\n v: cont");
        assert!(!has_tag(hs[1].value));
        assert!(has_tag(hs[2].value));
        assert_eq!(status_code(b"SIP/2.0 180 Ringing"), Some(180));
        assert_eq!(status_code(b"SIP/2.0 18"), None);
    }
}
