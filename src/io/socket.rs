//! UDP sockets of the workers and the socket-address plumbing of the io
//! backends.
//!
//! This module owns:
//! - [`bind_udp`]: creating, configuring and binding a worker's UDP socket
//!   (SO_REUSEADDR, optional SO_REUSEPORT so that every worker thread owns its
//!   own socket on the same address, IPV6_V6ONLY on IPv6, kernel buffer sizes,
//!   non-blocking mode, close-on-exec, IPv4 DF without local fragmentation:
//!   see [`send_fragmentable`] for the datagrams larger than the path MTU);
//! - [`effective_buffers`]: what the kernel actually granted;
//! - the conversions between [`SocketAddr`] and `libc::sockaddr_storage`
//!   shared by the io_uring and recvmmsg/sendmmsg backends.
//!
//! Nothing here runs per packet except the two address conversions, which do
//! not allocate.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Create a UDP socket bound to `addr`.
///
/// - SO_REUSEADDR always; SO_REUSEPORT when `reuse_port` (each worker thread
///   then binds its own socket on the same address and the kernel spreads
///   the flows between them);
/// - IPV6_V6ONLY on an IPv6 address (an IPv6 socket never sees IPv4-mapped
///   peers, so addresses handed to the handler are always native);
/// - receive/send buffers of `rcvbuf`/`sndbuf` bytes (0 keeps the kernel
///   default): SO_RCVBUFFORCE/SO_SNDBUFFORCE are tried first (they succeed
///   with CAP_NET_ADMIN and ignore `net.core.rmem_max`/`wmem_max`), then the
///   plain SO_RCVBUF/SO_SNDBUF, which the kernel silently clamps. A clamped
///   size is not an error: check [`effective_buffers`];
/// - non-blocking: neither backend ever wants to sleep inside a socket call
///   (the mmsg backend waits in `poll`, the io_uring backend in
///   `io_uring_enter`), so a stray blocking call cannot stall a worker.
pub fn bind_udp(
    addr: SocketAddr,
    reuse_port: bool,
    rcvbuf: usize,
    sndbuf: usize,
) -> io::Result<UdpSocket> {
    // socket2 creates the socket with SOCK_CLOEXEC on Linux.
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    set_buffer(&sock, rcvbuf, libc::SO_RCVBUFFORCE, |s, n| {
        s.set_recv_buffer_size(n)
    })?;
    set_buffer(&sock, sndbuf, libc::SO_SNDBUFFORCE, |s, n| {
        s.set_send_buffer_size(n)
    })?;
    if addr.is_ipv4() {
        set_pmtudisc(sock.as_raw_fd(), libc::IP_PMTUDISC_DO)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// A listening TCP socket on `addr`, one per worker with SO_REUSEPORT (the
/// kernel spreads new connections over the workers' listeners).
pub fn bind_tcp(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(backlog)?;
    Ok(sock.into())
}

// IPv4 path-MTU discovery mode of the edge's sockets.
//
// The kernel's default (IP_PMTUDISC_WANT) already sets DF on every datagram
// that fits the path MTU, but it allows local fragmentation, so each send
// also draws an IP ID from the shared, hashed generator (`__ip_select_ident`:
// 2.8-3.3 % of the edge's samples under load in `perf/flamegraph`). With
// IP_PMTUDISC_DO the datagrams that fit leave exactly as before (DF set)
// with the ID 0 that RFC 6864 allows for atomic datagrams, and no hash. The
// one difference, a datagram larger than the path MTU failing with
// EMSGSIZE instead of being fragmented, is undone by [`send_fragmentable`],
// which sends that datagram under the default mode: the wire sees what the
// default would have sent.
fn set_pmtudisc(fd: RawFd, mode: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is an open socket for the whole call; `mode` is a live
    // c_int and the length is exactly its size; the kernel keeps no pointer.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&mode as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Send one IPv4 datagram that failed with EMSGSIZE on a socket set up by
/// [`bind_udp`] (larger than the path MTU): the socket is switched to the
/// kernel's default mode (fragment locally) for this one send and back.
/// Another thread sending on the same socket meanwhile sends under the
/// default mode, which is harmless; one that fails with EMSGSIZE in the
/// window comes here itself.
pub fn send_fragmentable(fd: RawFd, data: &[u8], dst: SocketAddr) -> io::Result<usize> {
    set_pmtudisc(fd, libc::IP_PMTUDISC_WANT)?;
    let (name, len) = to_sockaddr(dst);
    // SAFETY: `data` and `name` are live for the whole call and their lengths
    // are theirs; the kernel reads only within them and keeps no pointer.
    let r = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            (&name as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    let sent = if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    };
    // Whether this datagram left is what the caller counts; a socket left in
    // the default mode by a failed restore still sends correctly (only
    // without the saving), so that failure is not reported as a lost send.
    let _ = set_pmtudisc(fd, libc::IP_PMTUDISC_DO);
    sent
}

/// The receive and send buffer sizes the kernel granted, in bytes, as
/// reported by SO_RCVBUF/SO_SNDBUF (on Linux that is twice the requested
/// value, the kernel's allowance for bookkeeping overhead). 0 when unknown.
pub fn effective_buffers(sock: &UdpSocket) -> (usize, usize) {
    let s = SockRef::from(sock);
    (
        s.recv_buffer_size().unwrap_or(0),
        s.send_buffer_size().unwrap_or(0),
    )
}

/// Set one socket buffer: the privileged `force_opt` first, then `fallback`.
fn set_buffer(
    sock: &Socket,
    size: usize,
    force_opt: libc::c_int,
    fallback: impl Fn(&Socket, usize) -> io::Result<()>,
) -> io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    // The kernel doubles the value and stores it in an int.
    let val = size.min(i32::MAX as usize / 2) as libc::c_int;
    // SAFETY: `sock` is an open socket for the whole call; `val` is a live
    // c_int and the length passed is exactly its size, so the kernel reads
    // only initialized memory we own. setsockopt does not retain the pointer.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            force_opt,
            (&val as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // EPERM without CAP_NET_ADMIN: the unprivileged setter clamps at
    // net.core.{r,w}mem_max instead of failing.
    fallback(sock, val as usize)
}

/// `addr` as a `sockaddr_storage` plus the length of the meaningful part
/// (`sockaddr_in` or `sockaddr_in6`).
pub(crate) fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data (integers and byte arrays);
    // the all-zero bit pattern is a valid value of it.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is at least as large and as aligned as
            // sockaddr_in (that is its purpose); the reference is the only
            // live access to `storage` while it exists and every field
            // written is plain data.
            let sin = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            // Same representation as std's own conversion.
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The address in `storage` (as filled by the kernel, `len` meaningful
/// bytes), or None for another family or a too-short length.
pub(crate) fn from_sockaddr(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    let len = len as usize;
    match storage.ss_family as libc::c_int {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: sockaddr_storage is large and aligned enough for
            // sockaddr_in, the family says the kernel stored one and `len`
            // says it is complete; all bit patterns are valid for its fields.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trip() {
        for a in [
            "127.0.0.1:5060".parse::<SocketAddr>().unwrap(),
            "10.1.2.3:1".parse().unwrap(),
            "[::1]:5061".parse().unwrap(),
            "[2001:db8::7]:65535".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 5060, 0, 3)),
        ] {
            let (ss, len) = to_sockaddr(a);
            assert_eq!(from_sockaddr(&ss, len), Some(a));
            assert_eq!(from_sockaddr(&ss, len - 1), None);
        }
    }

    #[test]
    fn sockaddr_matches_std() {
        // What the kernel would put in the name for this address.
        let a: SocketAddr = "192.0.2.9:5070".parse().unwrap();
        let (ss, len) = to_sockaddr(a);
        let sa = socket2::SockAddr::from(a);
        assert_eq!(len, sa.len());
        assert_eq!(sa.as_socket(), from_sockaddr(&ss, len));
    }

    #[test]
    fn bind_reuse_port_twice_and_buffers() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), true, 1 << 20, 1 << 20).unwrap();
        let addr = a.local_addr().unwrap();
        let b = bind_udp(addr, true, 1 << 20, 1 << 20).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
        let (r, s) = effective_buffers(&a);
        assert!(r > 0 && s > 0);
    }
}
