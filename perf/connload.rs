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

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone)]
struct Args {
    target: SocketAddr,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    connections: usize,
    sources: u32,
    source_base: Ipv4Addr,
    threads: usize,
    hold: Duration,
}

/// Set by SIGINT/SIGTERM.
static STOP: std::sync::LazyLock<Arc<AtomicBool>> =
    std::sync::LazyLock::new(|| Arc::new(AtomicBool::new(false)));

fn main() {
    let args = match parse(std::env::args().skip(1).collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cpm-connload: {e}");
            eprintln!(
                "usage: cpm-connload --target IP:PORT [--tls --ca PEM --name DNS] \
                 --connections N [--sources K] [--source-base A.B.C.0] [--threads T] [--hold-s S]"
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
    let until = Instant::now() + args.hold;
    while !STOP.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Open connections until `next` passes the total, keeping each socket.
fn open_share(a: &Args, held: &Mutex<Vec<TcpStream>>, next: &AtomicUsize, failed: &AtomicUsize) {
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

/// Connection `i` from source address `base + 1 + i % sources`.
fn open_one(a: &Args, i: usize) -> std::io::Result<TcpStream> {
    let [b0, b1, b2, _] = a.source_base.octets();
    let host = 1 + (i as u32 % a.sources);
    let src = Ipv4Addr::new(
        b0,
        b1,
        b2.wrapping_add((host / 250) as u8),
        (host % 250) as u8 + 1,
    );
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from((src, 0)).into())?;
    s.connect_timeout(&a.target.into(), Duration::from_secs(10))?;
    let mut sock: TcpStream = s.into();
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    sock.set_write_timeout(Some(Duration::from_secs(10)))?;
    if let Some((cfg, name)) = &a.tls {
        let mut c = rustls::ClientConnection::new(Arc::clone(cfg), name.clone())
            .map_err(std::io::Error::other)?;
        while c.is_handshaking() {
            c.complete_io(&mut sock)?;
        }
    }
    Ok(sock)
}

fn parse(v: Vec<String>) -> Result<Args, String> {
    let mut target = None;
    let (mut tls, mut ca, mut name) = (false, None, "localhost".to_string());
    let (mut connections, mut sources, mut threads, mut hold) = (1000usize, 20u32, 2usize, 60u64);
    let mut source_base = Ipv4Addr::new(127, 0, 10, 0);
    let mut it = v.into_iter();
    while let Some(k) = it.next() {
        let mut val = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--target" => target = Some(val()?.parse().map_err(|e| format!("--target: {e}"))?),
            "--tls" => tls = true,
            "--ca" => ca = Some(val()?),
            "--name" => name = val()?,
            "--connections" => connections = val()?.parse().map_err(|e| format!("{k}: {e}"))?,
            "--sources" => sources = val()?.parse().map_err(|e| format!("{k}: {e}"))?,
            "--source-base" => source_base = val()?.parse().map_err(|e| format!("{k}: {e}"))?,
            "--threads" => threads = val()?.parse().map_err(|e| format!("{k}: {e}"))?,
            "--hold-s" => hold = val()?.parse().map_err(|e| format!("{k}: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
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
        connections,
        sources,
        source_base,
        threads,
        hold: Duration::from_secs(hold),
    })
}
