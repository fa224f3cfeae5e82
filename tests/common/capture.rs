//! A private network namespace and a packet capture on its loopback: every
//! UDP datagram anything in the namespace sends is seen, so a test can
//! assert where the edge sent traffic, not only what the test's own
//! sockets happened to receive.
//!
//! `unshare(CLONE_NEWNET)` moves only the calling thread; threads it starts
//! afterwards (the edge's workers) inherit the namespace. Needs root (or
//! CAP_SYS_ADMIN + CAP_NET_RAW), as CI has: without it the test fails with
//! the reason, it does not pass vacuously.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Move this thread into a new network namespace with `lo` up.
pub fn enter_fresh_netns() {
    // SAFETY: unshare takes flags only; it affects the calling thread.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        r,
        0,
        "unshare(CLONE_NEWNET) failed ({}): the trust-boundary tests need root",
        std::io::Error::last_os_error()
    );
    set_lo_up();
}

fn set_lo_up() {
    // SAFETY: a plain datagram socket for the interface ioctls.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: ifreq is plain old data; zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: fd is a socket, ifr a valid ifreq naming "lo".
    let got = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) };
    assert_eq!(got, 0, "SIOCGIFFLAGS: {}", std::io::Error::last_os_error());
    // SAFETY: the flags member of the union is the one SIOCGIFFLAGS filled.
    unsafe { ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: as above.
    let set = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) };
    assert_eq!(set, 0, "SIOCSIFFLAGS: {}", std::io::Error::last_os_error());
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
}

/// One captured UDP datagram (IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// UDP payload bytes.
    pub len: usize,
}

/// What the capture saw: UDP datagrams, and TCP segments with a payload
/// (`len` the TCP payload bytes) for the admin API's port.
#[derive(Default)]
struct Seen {
    udp: Vec<Datagram>,
    tcp: Vec<Datagram>,
}

/// Every IPv4 UDP datagram and TCP segment sent on this namespace's `lo`,
/// from start to stop.
pub struct Capture {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    /// Start capturing (call after `enter_fresh_netns`).
    pub fn start() -> Capture {
        let proto = (libc::ETH_P_IP as u16).to_be() as i32;
        // SAFETY: plain socket creation.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, proto) };
        assert!(
            fd >= 0,
            "AF_PACKET socket ({}): the trust-boundary tests need root",
            std::io::Error::last_os_error()
        );
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: fd is a socket, tv a valid timeval of the size passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        // A flood test sends thousands of datagrams at once: a large buffer
        // keeps the kernel from dropping copies before this thread reads.
        let size: libc::c_int = 64 << 20;
        // SAFETY: fd is a socket, size a c_int of the size passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread = std::thread::spawn(move || capture_loop(fd, &s2, &st2));
        Capture {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// The UDP datagrams captured so far (give the kernel a moment first).
    pub fn snapshot(&self) -> Vec<Datagram> {
        std::thread::sleep(std::time::Duration::from_millis(150));
        self.seen.lock().unwrap().udp.clone()
    }

    /// The TCP segments with a payload captured so far.
    pub fn tcp_snapshot(&self) -> Vec<Datagram> {
        std::thread::sleep(std::time::Duration::from_millis(150));
        self.seen.lock().unwrap().tcp.clone()
    }

    /// Forget what was captured so far (between test phases).
    pub fn clear(&self) {
        std::thread::sleep(std::time::Duration::from_millis(150));
        let mut s = self.seen.lock().unwrap();
        s.udp.clear();
        s.tcp.clear();
    }

    /// Every UDP datagram `from` sent, after asserting that each went to
    /// one of `allowed`.
    pub fn assert_sent_only_to(&self, from: SocketAddr, allowed: &[SocketAddr]) -> Vec<Datagram> {
        let out: Vec<Datagram> = self
            .snapshot()
            .into_iter()
            .filter(|d| d.src == from)
            .collect();
        for d in &out {
            assert!(
                allowed.contains(&d.dst),
                "{from} sent {} bytes to {} (allowed: {allowed:?})",
                d.len,
                d.dst
            );
        }
        out
    }

    /// UDP payload bytes sent from `from` to any address `to` accepts.
    pub fn bytes(&self, from: SocketAddr, to: impl Fn(SocketAddr) -> bool) -> usize {
        self.snapshot()
            .iter()
            .filter(|d| d.src == from && to(d.dst))
            .map(|d| d.len)
            .sum()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn capture_loop(fd: i32, seen: &Mutex<Seen>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 70_000];
    while !stop.load(Ordering::SeqCst) {
        // SAFETY: sockaddr_ll is plain old data.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut flen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: buf and from are valid for the lengths passed.
        let n = unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut flen,
            )
        };
        // Every datagram on lo arrives once as PACKET_HOST (an outgoing
        // copy, where a kernel delivers one, would count it twice).
        if n <= 0 || from.sll_pkttype != libc::PACKET_HOST {
            continue;
        }
        match parse_ipv4(&buf[..n as usize]) {
            Some((UDP, d)) => seen.lock().unwrap().udp.push(d),
            Some((_, d)) if d.len > 0 => seen.lock().unwrap().tcp.push(d),
            _ => {}
        }
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
}

const UDP: u8 = 17;
const TCP: u8 = 6;

/// An IPv4 UDP datagram or TCP segment: its protocol, addresses and
/// payload length.
fn parse_ipv4(p: &[u8]) -> Option<(u8, Datagram)> {
    let ihl = usize::from(p.first()? & 0x0f) * 4;
    let proto = *p.get(9)?;
    let header = if proto == UDP { 8 } else { 20 };
    if p.first()? >> 4 != 4 || !(proto == UDP || proto == TCP) || p.len() < ihl + header {
        return None;
    }
    let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]));
    let port = |at: usize| u16::from_be_bytes([p[at], p[at + 1]]);
    let total = usize::from(port(2));
    let len = if proto == UDP {
        usize::from(port(ihl + 4)).saturating_sub(8)
    } else {
        let data_offset = usize::from(p[ihl + 12] >> 4) * 4;
        total.saturating_sub(ihl + data_offset)
    };
    let d = Datagram {
        src: SocketAddr::new(ip(12), port(ihl)),
        dst: SocketAddr::new(ip(16), port(ihl + 2)),
        len,
    };
    Some((proto, d))
}
