//! The recvmmsg/sendmmsg backend: the fallback where io_uring is missing or
//! blocked (old kernel, `kernel.io_uring_disabled`, seccomp).
//!
//! One loop iteration: `recvmmsg(MSG_DONTWAIT)` up to `batch` datagrams into
//! fixed buffers, the handler once per datagram, then one `sendmmsg` for the
//! batch's outputs. When the socket is empty the loop sleeps in `poll` for at
//! most `IDLE_WAIT_MS` (50 ms), which bounds the reaction time to `stop`. Every
//! buffer, iovec, address and header is allocated once at start.
//!
//! Errors: a failed recvmmsg (ECONNREFUSED left by an ICMP port unreachable,
//! ENOMEM, ...) goes to `on_recv_error` and the loop goes on; only an
//! unusable socket (EBADF, ENOTSOCK, ...) ends it. After a partial sendmmsg
//! the rest is sent again; a message the kernel refuses is reported to
//! `on_send_error` and skipped, after one retry for EAGAIN/ENOBUFS (with a
//! short wait for buffer space) and ECONNREFUSED (an error left by an earlier
//! datagram: this one was not sent); EMSGSIZE (an IPv4 datagram larger than
//! the path MTU, refused under DF) sends that one fragmented
//! (`socket::send_fragmentable`). Note that sendmmsg itself discards the
//! error of a message that follows successful ones in the same call; the
//! retry of the rest then sends it.

use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::socket::{from_sockaddr, to_sockaddr};
use super::{DatagramHandler, IoConfig};

/// Longest sleep while idle; `stop` is checked after each.
const IDLE_WAIT_MS: libc::c_int = 50;
/// How long to wait for send buffer space before dropping an output.
const SEND_WAIT_MS: libc::c_int = 5;

/// Receive side: `n` buffers with their iovecs, names and headers.
struct Rx {
    bufs: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    buf_size: usize,
}

/// Send side: `n` output slots with their iovecs, names and headers.
pub(super) struct Tx {
    bufs: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    dsts: Vec<SocketAddr>,
    out_size: usize,
}

/// Build `n` headers pointing at `names[i]` and `iovs[i]`, and point
/// `iovs[i]` at the `i`-th `size`-byte chunk of `bufs`.
///
/// The vectors are never resized afterwards, so the pointers stay valid for
/// as long as the owning struct lives.
fn link(
    bufs: &mut [u8],
    names: &mut [libc::sockaddr_storage],
    iovs: &mut [libc::iovec],
    size: usize,
) -> Vec<libc::mmsghdr> {
    let n = names.len();
    let base = bufs.as_mut_ptr();
    (0..n)
        .map(|i| {
            iovs[i] = libc::iovec {
                // SAFETY: i < n and bufs.len() == n * size, so the offset
                // stays inside the allocation.
                iov_base: unsafe { base.add(i * size) }.cast(),
                iov_len: size,
            };
            // SAFETY: mmsghdr is plain old data (integers and raw pointers);
            // all-zero is a valid value (null pointers, zero lengths).
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect()
}

fn zeroed_names(n: usize) -> Vec<libc::sockaddr_storage> {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    (0..n).map(|_| unsafe { mem::zeroed() }).collect()
}

fn empty_iovs(n: usize) -> Vec<libc::iovec> {
    (0..n)
        .map(|_| libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        })
        .collect()
}

impl Rx {
    fn new(n: usize, buf_size: usize) -> Rx {
        let mut bufs = vec![0u8; n * buf_size];
        let mut names = zeroed_names(n);
        let mut iovs = empty_iovs(n);
        let hdrs = link(&mut bufs, &mut names, &mut iovs, buf_size);
        Rx {
            bufs,
            names,
            iovs,
            hdrs,
            buf_size,
        }
    }

    /// One non-blocking recvmmsg: the number of datagrams, or the errno.
    fn recv(&mut self, fd: RawFd) -> Result<usize, i32> {
        for h in self.hdrs.iter_mut() {
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        debug_assert_eq!(self.iovs.len(), self.hdrs.len());
        // SAFETY: `hdrs` holds hdrs.len() initialized headers whose name and
        // iovec pointers target `names`/`iovs`/`bufs`, owned by `self`, never
        // reallocated and exclusively borrowed for the call; each iovec
        // describes exactly its own buf_size chunk of `bufs`. The kernel
        // writes only within those bounds and keeps no pointer after the
        // call returns (no timeout pointer is passed).
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT as _,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            Err(errno())
        } else {
            Ok(r as usize)
        }
    }

    /// Datagram `i` of the last receive: (data, truncated, source).
    fn get(&self, i: usize) -> (&[u8], bool, Option<SocketAddr>) {
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(self.buf_size);
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let start = i * self.buf_size;
        let src = from_sockaddr(&self.names[i], h.msg_hdr.msg_namelen);
        (&self.bufs[start..start + len], truncated, src)
    }
}

impl Tx {
    pub(super) fn new(n: usize, out_size: usize) -> Tx {
        let mut bufs = vec![0u8; n * out_size];
        let mut names = zeroed_names(n);
        let mut iovs = empty_iovs(n);
        let hdrs = link(&mut bufs, &mut names, &mut iovs, out_size);
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Tx {
            bufs,
            names,
            iovs,
            hdrs,
            dsts: vec![unspecified; n],
            out_size,
        }
    }

    /// The output buffer of slot `k`.
    pub(super) fn out(&mut self, k: usize) -> &mut [u8] {
        &mut self.bufs[k * self.out_size..(k + 1) * self.out_size]
    }

    /// Fill header `k` for a `len`-byte datagram to `dst` (its bytes are
    /// already in `out(k)`).
    pub(super) fn set(&mut self, k: usize, len: usize, dst: SocketAddr) {
        let (ss, sslen) = to_sockaddr(dst);
        self.names[k] = ss;
        self.iovs[k].iov_len = len.min(self.out_size);
        self.hdrs[k].msg_hdr.msg_namelen = sslen;
        self.hdrs[k].msg_len = 0;
        self.dsts[k] = dst;
    }

    /// Send slots `0..k`: one sendmmsg, repeated only for what is left after
    /// a partial send. A message the kernel refuses is reported and skipped
    /// (after one retry for EAGAIN, ENOBUFS and ECONNREFUSED).
    pub(super) fn send<H: DatagramHandler>(&mut self, fd: RawFd, k: usize, handler: &mut H) {
        let mut off = 0;
        // The message at `off` already failed once (EAGAIN, ENOBUFS,
        // ECONNREFUSED) and is being retried.
        let mut retried = false;
        while off < k {
            // SAFETY: off < k <= hdrs.len(), so the pointer and the count
            // (k - off) stay inside `hdrs`; headers off..k are initialized and
            // point at `names`/`iovs`/`bufs` owned by `self`, which are not
            // reallocated and not otherwise accessed during the call; each
            // iovec length is at most out_size so the kernel reads only
            // within `bufs`. The kernel keeps no pointer after returning.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs.as_mut_ptr().add(off),
                    (k - off) as libc::c_uint,
                    (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as _,
                )
            };
            if r > 0 {
                off += r as usize;
                retried = false;
                continue;
            }
            let err = if r == 0 { libc::EIO } else { errno() };
            match err {
                libc::EINTR => continue,
                // Send buffer full (or transiently out of memory): give the
                // kernel a moment once, then drop this one.
                libc::EAGAIN | libc::ENOBUFS if !retried => {
                    retried = true;
                    if err == libc::EAGAIN {
                        wait_fd(fd, libc::POLLOUT, SEND_WAIT_MS);
                    }
                }
                // A socket error left pending by an ICMP port unreachable
                // for an earlier datagram (connected socket or IP_RECVERR):
                // this message was not sent, the call consumed the error.
                // Count it against this destination and send it again.
                libc::ECONNREFUSED if !retried => {
                    retried = true;
                    handler.on_send_error(self.dsts[off], err);
                }
                // Larger than the path MTU with DF: sent fragmented, as the
                // kernel's default mode would have (see `bind_udp`).
                libc::EMSGSIZE if self.dsts[off].is_ipv4() => {
                    let len = self.iovs[off].iov_len;
                    let data = &self.bufs[off * self.out_size..off * self.out_size + len];
                    if let Err(e) = super::socket::send_fragmentable(fd, data, self.dsts[off]) {
                        handler
                            .on_send_error(self.dsts[off], e.raw_os_error().unwrap_or(libc::EIO));
                    }
                    off += 1;
                    retried = false;
                }
                _ => {
                    handler.on_send_error(self.dsts[off], err);
                    off += 1;
                    retried = false;
                }
            }
        }
    }
}

/// The errno of the last failed libc call on this thread.
fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Sleep until `fd` has `events` or `timeout_ms` passed (or a signal).
fn wait_fd(fd: RawFd, events: libc::c_short, timeout_ms: libc::c_int) {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: `pfd` is a live, initialized pollfd and the count is 1; poll
    // does not keep the pointer. The result is deliberately ignored: the
    // caller retries its operation whatever woke it up.
    unsafe {
        libc::poll(&mut pfd, 1, timeout_ms);
    }
}

/// Is `fd` readable within `timeout_ms`?
fn ready(fd: RawFd, timeout_ms: libc::c_int) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a live, initialized pollfd and the count is 1; poll
    // does not keep the pointer.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

/// Sleep until `a` or `b` is readable or `timeout_ms` passed; the caller
/// looks at both again whatever woke it.
fn wait_either(a: RawFd, b: RawFd, timeout_ms: libc::c_int) {
    let mut pfds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `pfds` is a live array of two initialized pollfds and the
    // count passed is its length; poll does not keep the pointer.
    unsafe {
        libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms);
    }
}

/// Errors of recvmmsg that mean the socket itself is unusable.
fn is_fatal(err: i32) -> bool {
    matches!(
        err,
        libc::EBADF | libc::ENOTSOCK | libc::EFAULT | libc::EINVAL | libc::EOPNOTSUPP
    )
}

/// Run the worker loop on `socket` with recvmmsg/sendmmsg until `stop`.
///
/// Works on blocking and non-blocking sockets alike (every call passes
/// MSG_DONTWAIT; waiting happens in `poll`). Returns an error only when the
/// socket itself is unusable (EBADF, ENOTSOCK, ...); per-datagram errors go
/// to the handler.
pub fn run<H: DatagramHandler>(
    socket: &UdpSocket,
    cfg: IoConfig,
    handler: &mut H,
    stop: &AtomicBool,
) -> io::Result<()> {
    let n = cfg.batch.max(1);
    let fd = socket.as_raw_fd();
    let mut rx = Rx::new(n, cfg.buf_size);
    let mut tx = Tx::new(n, cfg.out_size);

    let mut last_wake = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(w) = cfg.wake {
            // Between batches, so a busy socket does not starve it; and
            // at least every WAKE_TICK for the handler's timers.
            if ready(w, 0) || last_wake.elapsed() >= super::WAKE_TICK {
                last_wake = std::time::Instant::now();
                handler.on_wake();
            }
        }
        let got = match rx.recv(fd) {
            Ok(0) => continue,
            Ok(got) => got,
            Err(libc::EAGAIN) => {
                match cfg.wake {
                    Some(w) => wait_either(fd, w, IDLE_WAIT_MS),
                    None => wait_fd(fd, libc::POLLIN, IDLE_WAIT_MS),
                }
                continue;
            }
            Err(libc::EINTR) => continue,
            Err(e) if is_fatal(e) => return Err(io::Error::from_raw_os_error(e)),
            // ECONNREFUSED (ICMP port unreachable on a connected socket or
            // with IP_RECVERR), ENOMEM, ...: the pending error is consumed by
            // this call, so just count it and go on.
            Err(e) => {
                handler.on_recv_error(e);
                continue;
            }
        };

        handler.on_batch_start();
        let mut k = 0;
        for i in 0..got {
            let (data, truncated, src) = rx.get(i);
            let Some(src) = src else {
                // Not an IP peer (cannot happen on a UDP/IP socket).
                handler.on_recv_error(libc::EAFNOSUPPORT);
                continue;
            };
            if let Some((len, dst)) = handler.on_datagram(data, truncated, src, tx.out(k)) {
                tx.set(k, len, dst);
                k += 1;
            }
        }
        if k > 0 {
            tx.send(fd, k, handler);
        }
        handler.on_batch_end();
    }
    Ok(())
}
