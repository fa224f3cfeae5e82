//! cpm-connload: many idle TCP or TLS connections to one server, for the
//! connection-scale benchmark (perf/connections.sh).
//!
//! Opens `--connections` connections from source addresses
//! `--source-base`.1, .2, ... (`--sources` of them: the kernel's ephemeral
//! ports are per source address, ~28 000 each), `--threads` at a time,
//! each doing its TLS handshake (rustls client trusting `--ca`); then holds
//! every socket open, idle, for `--hold-s` seconds (or until SIGINT/
//! SIGTERM) and closes them all. What it prints, one `key=value` line
//! each, is read by the script:
//!   opened=N failed=F wall_s=W rate=R   after the opening phase
//!   held                                when every connection is open
//!
//! A client TLS session is dropped once its handshake is done (no
//! close_notify is sent): the server keeps its own session, which is what
//! is measured; the client keeps only the socket. Like the other perf
//! tools it does not use the cpm-edge library.
//!
//! With `--invites N` the sessions are kept instead, and once every
//! connection is open N CPM session INVITEs (to `--group`, with the CPM
//! feature tag, each with its own Call-ID and branch) go round the
//! connections, each thread one at a time on its share, each waiting for
//! its final response: then
//!   invites=N ok=K wall_s=W rate=R          (K: the 2xx among them)
//! The server forwards them to a CS stand-in (cpm-cs-responder), so the
//! figure to read is the server's CPU per INVITE/200 pair over TLS.
//!
//! With `--udp` (INVITE mode only) each "connection" is a UDP socket
//! connected to the target instead: the same INVITEs, one datagram each,
//! so the same server's cost per pair over UDP is measured beside it. A
//! final answer not back within 2 s counts as failed (no retransmission:
//! on loopback nothing is lost unless the server drops it).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone)]
struct Args {
    target: SocketAddr,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    udp: bool,
    connections: usize,
    sources: u32,
    source_base: Ipv4Addr,
    threads: usize,
    hold: Duration,
    invites: usize,
    group: String,
}

/// A held connection: the socket alone, or with its session (INVITE mode).
enum Held {
    Idle(TcpStream),
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Udp(UdpSocket),
}

impl Held {
    /// The Via transport of what is sent on it.
    fn transport(&self) -> &'static str {
        match self {
            Held::Idle(_) | Held::Plain(_) => "TCP",
            Held::Tls(_) => "TLS",
            Held::Udp(_) => "UDP",
        }
    }

    /// Send `req`, then read responses until a final one: its status
    /// (`None`: the connection failed, timed out or sent something that is
    /// not a response).
    fn exchange(&mut self, req: &[u8], buf: &mut Vec<u8>) -> Option<u16> {
        let c: &mut dyn ReadWrite = match self {
            Held::Idle(s) | Held::Plain(s) => s,
            Held::Tls(s) => &mut **s,
            Held::Udp(s) => return udp_exchange(s, req, buf),
        };
        c.write_all(req).and_then(|()| c.flush()).ok()?;
        final_status(c, buf)
    }
}

/// One request datagram, then datagrams until a final response.
fn udp_exchange(s: &UdpSocket, req: &[u8], buf: &mut Vec<u8>) -> Option<u16> {
    s.send(req).ok()?;
    buf.resize(65_536, 0);
    loop {
        let n = s.recv(buf).ok()?;
        let code = status_of(&buf[..n])?;
        if code >= 200 {
            return Some(code);
        }
    }
}

/// The status code of a response (`None`: not a response).
fn status_of(msg: &[u8]) -> Option<u16> {
    if !msg.starts_with(b"SIP/2.0 ") {
        return None;
    }
    std::str::from_utf8(msg.get(8..11)?).ok()?.parse().ok()
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// Set by SIGINT/SIGTERM.
static STOP: std::sync::LazyLock<Arc<AtomicBool>> =
    std::sync::LazyLock::new(|| Arc::new(AtomicBool::new(false)));

fn main() {
    let args = match parse(std::env::args().skip(1).collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cpm-connload: {e}");
            eprintln!(
                "usage: cpm-connload --target IP:PORT [--tls --ca PEM --name DNS | --udp] \
                 --connections N [--sources K] [--source-base A.B.C.0] [--threads T] [--hold-s S] \
                 [--invites N --group SIP-URI]"
            );
            std::process::exit(2);
        }
    };
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&STOP)) {
            eprintln!("cpm-connload: cannot handle signal {sig}: {e}");
            std::process::exit(1);
        }
    }
    let held = Arc::new(Mutex::new(Vec::with_capacity(args.connections)));
    let (next, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..args.threads)
        .map(|_| {
            let (a, held, next, failed) = (
                args.clone(),
                Arc::clone(&held),
                Arc::clone(&next),
                Arc::clone(&failed),
            );
            std::thread::spawn(move || open_share(&a, &held, &next, &failed))
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let wall = t0.elapsed().as_secs_f64();
    let opened = held.lock().map(|h| h.len()).unwrap_or(0);
    println!(
        "opened={opened} failed={} wall_s={wall:.3} rate={:.0}",
        failed.load(Ordering::Relaxed),
        opened as f64 / wall.max(1e-9)
    );
    println!("held");
    if args.invites > 0 {
        invite_phase(&args, held);
        return;
    }
    let until = Instant::now() + args.hold;
    while !STOP.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// INVITEs round the held connections, `threads` at a time; one line of
/// figures at the end.
fn invite_phase(a: &Args, held: Arc<Mutex<Vec<Held>>>) {
    let conns = std::mem::take(&mut *held.lock().unwrap_or_else(|p| p.into_inner()));
    let threads = a.threads.min(conns.len()).max(1);
    let mut shares: Vec<Vec<Held>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, c) in conns.into_iter().enumerate() {
        shares[i % threads].push(c);
    }
    let ok = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let per = a.invites / threads;
    let workers: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(t, mut share)| {
            let (ok, group) = (Arc::clone(&ok), a.group.clone());
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                for n in 0..per {
                    if share.is_empty() || STOP.load(Ordering::Relaxed) {
                        return;
                    }
                    let k = n % share.len();
                    let inv = invite(&group, share[k].transport(), t, n);
                    match share[k].exchange(inv.as_bytes(), &mut buf) {
                        Some(code) if (200..300).contains(&code) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(_) => {}
                        None => {
                            share.swap_remove(k);
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let wall = t0.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "invites={} ok={ok} wall_s={wall:.3} rate={:.0}",
        per * threads,
        ok as f64 / wall.max(1e-9)
    );
}

/// A CPM session INVITE to `group` over `transport`, unique by thread and
/// number.
fn invite(group: &str, transport: &str, t: usize, n: usize) -> String {
    let sdp = "v=0\r\no=u 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
               m=message 7394 TCP/MSRP *\r\na=accept-types:message/cpim\r\n";
    let tag = "+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session\"";
    format!(
        "INVITE {group} SIP/2.0\r\nVia: SIP/2.0/{transport} 192.0.2.10:5061;branch=z9hG4bK-{t}-{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:u{t}@example.net>;tag=f{t}\r\nTo: <{group}>\r\n\
         Call-ID: c{t}-{n}@192.0.2.10\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:u{t}@192.0.2.10:5061;transport={}>;{tag}\r\nAccept-Contact: *;{tag}\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        transport.to_ascii_lowercase(),
        sdp.len()
    )
}

/// Read responses until a final one: its status.
fn final_status(c: &mut dyn ReadWrite, buf: &mut Vec<u8>) -> Option<u16> {
    loop {
        let code = status_of(&read_message(c, buf)?)?;
        if code >= 200 {
            return Some(code);
        }
    }
}

/// One framed message (head, then its Content-Length's body); what was
/// read past it stays in `buf`.
fn read_message(c: &mut dyn ReadWrite, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) {
            let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
            let len = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").or(l.strip_prefix("l:")))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= head + len {
                let rest = buf.split_off(head + len);
                return Some(std::mem::replace(buf, rest));
            }
        }
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Open connections until `next` passes the total, keeping each socket.
fn open_share(a: &Args, held: &Mutex<Vec<Held>>, next: &AtomicUsize, failed: &AtomicUsize) {
    let mut mine = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= a.connections || STOP.load(Ordering::Relaxed) {
            break;
        }
        match open_one(a, i) {
            Ok(s) => mine.push(s),
            Err(e) => {
                if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("cpm-connload: connection {i}: {e}");
                }
            }
        }
    }
    if let Ok(mut h) = held.lock() {
        h.extend(mine);
    }
}

/// Connection `i` from source address `base + 1 + i % sources`; its
/// session is kept for the INVITE mode.
fn open_one(a: &Args, i: usize) -> std::io::Result<Held> {
    let [b0, b1, b2, _] = a.source_base.octets();
    let host = 1 + (i as u32 % a.sources);
    let src = Ipv4Addr::new(
        b0,
        b1,
        b2.wrapping_add((host / 250) as u8),
        (host % 250) as u8 + 1,
    );
    if a.udp {
        let s = UdpSocket::bind(SocketAddr::from((src, 0)))?;
        s.connect(a.target)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        return Ok(Held::Udp(s));
    }
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from((src, 0)).into())?;
    s.connect_timeout(&a.target.into(), Duration::from_secs(10))?;
    let mut sock: TcpStream = s.into();
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    sock.set_write_timeout(Some(Duration::from_secs(10)))?;
    let Some((cfg, name)) = &a.tls else {
        return Ok(match a.invites {
            0 => Held::Idle(sock),
            _ => Held::Plain(sock),
        });
    };
    let mut c = rustls::ClientConnection::new(Arc::clone(cfg), name.clone())
        .map_err(std::io::Error::other)?;
    while c.is_handshaking() {
        c.complete_io(&mut sock)?;
    }
    Ok(match a.invites {
        0 => Held::Idle(sock),
        _ => Held::Tls(Box::new(rustls::StreamOwned::new(c, sock))),
    })
}

fn parse(v: Vec<String>) -> Result<Args, String> {
    let mut target = None;
    let mut udp = false;
    let (mut tls, mut ca, mut name) = (false, None, "localhost".to_string());
    let (mut connections, mut sources, mut threads, mut hold) = (1000usize, 20u32, 2usize, 60u64);
    let (mut invites, mut group) = (0usize, "sip:grp1@groups.example.net".to_string());
    let mut source_base = Ipv4Addr::new(127, 0, 10, 0);
    let mut it = v.into_iter();
    while let Some(k) = it.next() {
        let mut val = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--target" => target = Some(val()?.parse().map_err(|e| format!("--target: {e}"))?),
            "--tls" => tls = true,
            "--udp" => udp = true,
            "--ca" => ca = Some(val()?),
            "--name" => name = val()?,
            "--connections" => connections = val()?.parse().map_err(|e| format!("{k}: {e}"))?,
            "--sources" => sources = val()?.parse().map_err(|e| format!("{k}: {e}"))?,
            "--source-base" => source_base = val()?.parse().map_err(|e| format!("{k}: {e}"))?,
            "--threads" => threads = val()?.parse().map_err(|e| format!("{k}: {e}"))?,
            "--hold-s" => hold = val()?.parse().map_err(|e| format!("{k}: {e}"))?,
            "--invites" => invites = val()?.parse().map_err(|e| format!("{k}: {e}"))?,
            "--group" => group = val()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if udp && (tls || invites == 0) {
        return Err("--udp is for the INVITE mode (--invites N), without --tls".into());
    }
    if sources == 0 || threads == 0 {
        return Err("--sources and --threads must be at least 1".into());
    }
    let tls = match tls {
        false => None,
        true => {
            let ca = ca.ok_or("--tls needs --ca")?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(&ca).map_err(|e| format!("{ca}: {e}"))? {
                roots
                    .add(c.map_err(|e| format!("{ca}: {e}"))?)
                    .map_err(|e| format!("{ca}: {e}"))?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = ServerName::try_from(name).map_err(|e| format!("--name: {e}"))?;
            Some((Arc::new(cfg), name))
        }
    };
    Ok(Args {
        target: target.ok_or("--target is required")?,
        tls,
        udp,
        connections,
        sources,
        source_base,
        threads,
        hold: Duration::from_secs(hold),
        invites,
        group,
    })
}
