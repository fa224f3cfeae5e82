//! Realistic CPM messages and a table snapshot shared by the tests.
#![allow(dead_code)]

pub mod capture;
pub mod kannel;
pub mod party;
pub mod register;

use cpm_edge::config::Config;
use cpm_edge::route::Tables;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// Turn a readable message (LF line ends, `{len}` placeholder) into wire bytes
/// with CRLF and the real Content-Length of the body after the blank line.
pub fn wire(text: &str) -> Vec<u8> {
    let crlf = text.replace("\r\n", "\n").replace('\n', "\r\n");
    let (head, body) = crlf.split_once("\r\n\r\n").expect("blank line");
    let head = head.replace("{len}", &body.len().to_string());
    format!("{head}\r\n\r\n{body}").into_bytes()
}

pub const SDP: &str = "v=0
o=alice 2890844526 1 IN IP4 192.0.2.10
s=-
c=IN IP4 192.0.2.10
t=0 0
m=message 7394 TCP/MSRP *
a=accept-types:message/cpim
a=path:msrp://192.0.2.10:7394/s111;tcp
a=setup:active
m=audio 49170 RTP/AVP 0
a=rtpmap:0 PCMU/8000
";

/// A client's CPM session INVITE to a pre-defined group.
pub fn invite_to_group(group: &str, user: &str, extra: &str) -> Vec<u8> {
    wire(&format!(
        "INVITE sip:{group}@groups.example.net SIP/2.0
Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-{user}-1;rport
Max-Forwards: 70
From: <sip:{user}@example.net>;tag=a73kszlfl
To: <sip:{group}@groups.example.net>
Call-ID: {user}-call-1@192.0.2.10
CSeq: 1 INVITE
Contact: <sip:{user}@192.0.2.10:5062>;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"
Accept-Contact: *;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"
P-Preferred-Service: urn:urn-7:3gpp-service.ims.icsi.oma.cpm.session
{extra}Content-Type: application/sdp
Content-Length: {{len}}

{SDP}"
    ))
}

/// A pager-mode CPM MESSAGE with a CPIM body, compact header forms.
pub fn message_cpim(to: &str, user: &str) -> Vec<u8> {
    wire(&format!(
        "MESSAGE sip:{to} SIP/2.0
v: SIP/2.0/UDP 192.0.2.20:5070;branch=z9hG4bKmsg77
Max-Forwards: 69
f: \"Bob\" <sip:{user}@example.net>;tag=bb1
t: <sip:{to}>
i: msg-1@192.0.2.20
CSeq: 10 MESSAGE
a: *;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg\"
P-Preferred-Service: urn:urn-7:3gpp-service.ims.icsi.oma.cpm.msg
c: message/cpim
l: {{len}}

From: <sip:{user}@example.net>
To: <sip:{to}>
DateTime: 2026-11-24T10:00:00Z

Content-type: text/plain

Hello CPM
"
    ))
}

/// The embedded default plus a non-CPM variant; shards 127.0.0.1:7001-7004.
pub fn tables() -> Tables {
    Config::default_embedded()
        .validate()
        .expect("default config")
        .tables()
}

pub fn tables_with(toml_extra: &str) -> Tables {
    let text = format!("{}\n{}", cpm_edge::config::DEFAULT_TOML, toml_extra);
    let text = if toml_extra.starts_with("[routing]") {
        text.replace(
            "[routing]\noriginating_pf = true\nrecord_route = true\n",
            "",
        )
    } else {
        text
    };
    Config::parse(&text)
        .expect("toml")
        .validate()
        .expect("valid")
        .tables()
}

pub fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.split("\r\n")
        .take_while(|l| !l.is_empty())
        .filter(|l| {
            l.len() > name.len()
                && l[..name.len()].eq_ignore_ascii_case(name)
                && l.as_bytes()[name.len()] == b':'
        })
        .collect()
}

/// A port free at the time of asking (for an edge's listen address), and
/// one no other caller in this process gets. Taken below the kernel's
/// ephemeral range (32768..61000 here) so that a socket another test binds
/// to port 0 between this call and the server's bind cannot take it: with
/// port-0 probing that race made a shard's bind fail with EADDRINUSE in CI.
/// The start is spread by process id so concurrent test processes
/// (nextest) walk different parts of the range.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 97) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        let udp = UdpSocket::bind(("127.0.0.1", port)).is_ok();
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if udp && tcp {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN);
}

/// A loopback UDP socket with a 3 s read timeout.
pub fn sock() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// One datagram as text and its source. EINTR is retried: io_uring's
/// task-work notification can interrupt a blocking call on a thread that
/// probed io_uring.
pub fn recv(s: &UdpSocket) -> (String, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    loop {
        match s.recv_from(&mut buf) {
            Ok((n, from)) => return (String::from_utf8_lossy(&buf[..n]).into_owned(), from),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("no datagram within the timeout: {e}"),
        }
    }
}

/// The first datagram any of `socks` receives (3 s), and which one got it.
pub fn recv_any(socks: &[UdpSocket]) -> (usize, String) {
    for s in socks {
        s.set_nonblocking(true).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = vec![0u8; 65536];
    let got = loop {
        if let Some(hit) = socks
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.recv_from(&mut buf).ok().map(|(n, _)| (i, n)))
        {
            break hit;
        }
        assert!(Instant::now() < deadline, "no socket received anything");
        std::thread::sleep(Duration::from_millis(1));
    };
    for s in socks {
        s.set_nonblocking(false).unwrap();
    }
    (got.0, String::from_utf8_lossy(&buf[..got.1]).into_owned())
}

/// A Conversation Server answers a request it received: `status` (e.g.
/// `200 OK`), every Via copied, a To-tag added, an SDP body if given; sent to
/// the top Via's sent-by (the edge).
pub fn cs_answer(cs: &UdpSocket, req: &str, status: &str, sdp: Option<&str>) {
    let vias = header(req, "Via").join("\r\n");
    let to = format!("{};tag=cs", header(req, "To")[0]);
    let keep = [
        header(req, "From")[0],
        &to,
        header(req, "Call-ID")[0],
        header(req, "CSeq")[0],
    ]
    .join("\r\n");
    let body = sdp.map_or(String::new(), |s| s.replace('\n', "\r\n"));
    let ct = if sdp.is_some() {
        "Content-Type: application/sdp\r\n"
    } else {
        ""
    };
    let resp = format!(
        "SIP/2.0 {status}\r\n{vias}\r\n{keep}\r\nContact: <sip:cs@127.0.0.1>\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let top = header(req, "Via")[0];
    let hostport = top
        .split_whitespace()
        .nth(2)
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    cs.send_to(resp.as_bytes(), hostport).unwrap();
}

/// A minimal HTTP/1.1 client: (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// Give a test socket a receive buffer large enough for a burst (root may
/// exceed net.core.rmem_max with SO_RCVBUFFORCE): a small default buffer
/// drops replies in the kernel before the test reads them.
pub fn big_rcvbuf(s: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 8 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a valid socket fd and a c_int option value of the right size.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
}

/// The `--io` names of the backends usable here: mmsg always, io_uring when
/// its probe passes (else said once on stderr).
pub fn backends() -> Vec<&'static str> {
    match cpm_edge::io::uring::probe() {
        Ok(()) => vec!["mmsg", "uring"],
        Err(e) => {
            eprintln!("io_uring unusable here ({e}); testing the mmsg backend only");
            vec!["mmsg"]
        }
    }
}

/// A TCP connection from source IP `from` (any 127/8 address works on Linux
/// loopback), so tests can play several peers.
pub fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&src.into()).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Which of the shards `cs1`, `cs2` the edge picks as the Participating
/// Function of `aor` (its rendezvous choice; the shards' addresses do not
/// enter it): 0 or 1.
pub fn pf_shard(aor: &str) -> usize {
    use cpm_edge::route::shards::{ShardSet, ShardSpec};
    let specs: Vec<ShardSpec> = ["cs1", "cs2"]
        .iter()
        .enumerate()
        .map(|(i, n)| ShardSpec {
            name: n.to_string(),
            addr: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
            transport: Default::default(),
            backup: None,
        })
        .collect();
    let set = ShardSet::new(&specs, "127.0.0.1:1");
    let b = aor.as_bytes();
    let u = cpm_edge::sip::uri::parse(b, cpm_edge::sip::Span::new(0, b.len())).unwrap();
    set.pick(cpm_edge::route::decision::user_hash(b, &u))
        .unwrap_or(0)
}

/// Read one framed SIP message from a stream (headers, then the
/// Content-Length's body), a byte at a time: nothing past it is taken.
pub fn read_sip(c: &mut impl std::io::Read) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut byte)
            .expect("a message on the connection");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = header(&head, "Content-Length")
        .first()
        .and_then(|l| l.split(':').nth(1))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

/// A child process (the real binary), killed by its PID if the test ends
/// before stopping it.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The binary `bin` (a test's `env!("CARGO_BIN_EXE_...")`: not known to
/// the perf tools that include this file) on the configuration file
/// `cfg`, its output discarded.
pub fn spawn_quiet(bin: &str, cfg: &std::path::Path) -> Child {
    Child(
        std::process::Command::new(bin)
            .arg("--config")
            .arg(cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A UA's answer `status` to a request it got (every Via, in order), its
/// To tagged `to_tag` when the request's To had none.
pub fn ua_answer(req: &str, status: &str, to_tag: Option<&str>) -> String {
    let to = header(req, "To")[0];
    let to = match to_tag {
        Some(t) if !to.contains(";tag=") => format!("{to};tag={t}"),
        _ => to.to_string(),
    };
    format!(
        "SIP/2.0 {status}\r\n{}\r\n{}\r\n{to}\r\n{}\r\n{}\r\nContent-Length: 0\r\n\r\n",
        header(req, "Via").join("\r\n"),
        header(req, "From")[0],
        header(req, "Call-ID")[0],
        header(req, "CSeq")[0],
    )
}
