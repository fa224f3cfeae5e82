//! SIP over TCP and TLS at a worker (README "Transports"): the worker's
//! listeners and the connections it owns ([`crate::io::stream`]), each
//! framed by a [`Connection`], named in what the edge writes by a keyed
//! flow token ([`crate::sip::flow`]). A TLS connection is framed like a
//! TCP one, over its plaintext; its handshake has its own deadline.
//!
//! A request framed from a connection runs the same pipeline as a
//! datagram, with its flow token written into the Via the edge adds; what
//! it becomes goes out over UDP (to a shard) or back on the connection (an
//! answer). A response from a shard reaches whichever worker the kernel
//! picks for its datagram: the worker that owns the flow writes it on the
//! connection; another worker passes it on through the owner's mail
//! socket (a loopback UDP socket per worker, watched by the owner's
//! epoll: bounded by the kernel's buffer, no lock, no channel to size).

use crate::io::stream::{CloseReason, ConnId, Reactor, Refused, StreamConfig, Streams};
use crate::io::tls::{Acceptor, ServerPem};
use crate::pipeline::Outcome;
use crate::route::shards::ShardSet;
use crate::sip::flow::{Flow, TOKEN_LEN};
use crate::sip::scan::Message;
use crate::sip::stream::{Closed, Connection, Event, Limits, Timing};
use arc_swap::ArcSwap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `[tcp]`: SIP over TCP beside UDP, on the same address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConf {
    pub enabled: bool,
    /// Connections per worker in all, and from one address.
    pub max_connections: usize,
    pub max_per_ip: usize,
    /// Bytes waiting for a peer that does not read; beyond: closed.
    pub max_queued: usize,
    /// Closed after this long without a byte (keep-alives count).
    pub idle_s: u64,
    /// The slow-loris rule: a message begun brings `min_rate` bytes/s
    /// after `grace_ms`.
    pub grace_ms: u64,
    pub min_rate: u32,
    pub max_header: usize,
    pub max_body: usize,
}

impl Default for TcpConf {
    fn default() -> TcpConf {
        TcpConf {
            enabled: false,
            max_connections: 100_000,
            max_per_ip: 1_000,
            max_queued: 256 * 1024,
            idle_s: 300,
            grace_ms: 2_000,
            min_rate: 512,
            max_header: 16 * 1024,
            max_body: 64 * 1024,
        }
    }
}

impl TcpConf {
    /// Room for what one message becomes: itself and the edge's edits.
    pub fn out_size(&self) -> usize {
        self.max_header + self.max_body + 4096
    }

    fn limits(&self) -> Limits {
        Limits {
            max_header: self.max_header,
            max_body: self.max_body,
        }
    }

    fn timing(&self) -> Timing {
        Timing {
            idle: Duration::from_secs(self.idle_s),
            grace: Duration::from_millis(self.grace_ms),
            min_rate: self.min_rate,
        }
    }

    fn io(&self) -> StreamConfig {
        StreamConfig {
            max_connections: self.max_connections,
            max_per_ip: self.max_per_ip,
            max_queued: self.max_queued,
            ..StreamConfig::default()
        }
    }
}

/// `[tls]`: SIP over TLS (RFC 3261 §26.2) on the edge's address at
/// `port`, on the same workers and within the same `[tcp]` connection
/// limits as TCP. The files are re-read on SIGHUP: new handshakes present
/// the new certificate, established sessions keep theirs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConf {
    pub enabled: bool,
    pub port: u16,
    /// PEM files: the certificate chain (leaf first) and its private key.
    pub cert: String,
    pub key: String,
    /// PEM file of the CAs client certificates must chain to (a CS link,
    /// a trusted peer); empty: no client certificate is asked for.
    pub client_ca: String,
    /// With `client_ca`: refuse a client that presents no certificate.
    pub require_client_cert: bool,
    /// A handshake not done within this is closed (a peer that opens
    /// sockets and never speaks TLS).
    pub handshake_ms: u64,
    /// PEM file of the CAs a `tls` shard's certificate must chain to (its
    /// IP address in the certificate); needed by any `tls` shard.
    pub shard_ca: String,
    /// The edge's certificate and key for CS links (PEM), presented to a
    /// `tls` shard that asks; empty: none.
    pub client_cert: String,
    pub client_key: String,
}

impl Default for TlsConf {
    fn default() -> TlsConf {
        TlsConf {
            enabled: false,
            port: 5061,
            cert: String::new(),
            key: String::new(),
            client_ca: String::new(),
            require_client_cert: false,
            handshake_ms: 10_000,
            shard_ca: String::new(),
            client_cert: String::new(),
            client_key: String::new(),
        }
    }
}

fn read_pem(what: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("tls.{what} {path}: {e}"))
}

impl TlsConf {
    /// The client configuration for CS links the files hold now (`None`:
    /// no `shard_ca`).
    pub fn load_client(&self) -> Result<Option<rustls::ClientConfig>, String> {
        if self.shard_ca.is_empty() {
            return Ok(None);
        }
        let ca = read_pem("shard_ca", &self.shard_ca)?;
        let identity = match (self.client_cert.is_empty(), self.client_key.is_empty()) {
            (true, true) => None,
            (false, false) => Some((
                read_pem("client_cert", &self.client_cert)?,
                read_pem("client_key", &self.client_key)?,
            )),
            _ => return Err("tls.client_cert and tls.client_key go together".into()),
        };
        let id = identity.as_ref().map(|(c, k)| (&c[..], &k[..]));
        crate::io::tls::client_config(&ca, id)
            .map(Some)
            .map_err(|e| format!("tls (CS links, {}): {e}", self.shard_ca))
    }

    /// The server configuration the files hold now.
    pub fn load(&self) -> Result<rustls::ServerConfig, String> {
        let read = read_pem;
        let chain = read("cert", &self.cert)?;
        let key = read("key", &self.key)?;
        let ca = match self.client_ca.is_empty() {
            true => None,
            false => Some(read("client_ca", &self.client_ca)?),
        };
        crate::io::tls::server_config(&ServerPem {
            chain: &chain,
            key: &key,
            client_ca: ca.as_deref(),
            require_client_cert: self.require_client_cert,
        })
        .map_err(|e| format!("tls ({} / {}): {e}", self.cert, self.key))
    }
}

/// The TLS configurations (listeners', CS links') and the files they
/// are re-read from.
pub struct TlsCerts {
    conf: TlsConf,
    /// For the listeners (`[tls] enabled`).
    pub acceptor: Option<Arc<Acceptor>>,
    /// For connections to `tls` shards (`[tls] shard_ca`).
    pub client: Option<Arc<ArcSwap<rustls::ClientConfig>>>,
}

impl TlsCerts {
    /// `None`: neither a listener nor CS links use TLS.
    pub fn load(conf: &TlsConf) -> Result<Option<TlsCerts>, String> {
        let acceptor = match conf.enabled {
            true => Some(Arc::new(Acceptor::from_pointee(conf.load()?))),
            false => None,
        };
        let client = conf
            .load_client()?
            .map(|c| Arc::new(ArcSwap::from_pointee(c)));
        Ok((acceptor.is_some() || client.is_some()).then(|| TlsCerts {
            conf: conf.clone(),
            acceptor,
            client,
        }))
    }

    /// Re-read the files; on any error every configuration in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let server = match &self.acceptor {
            Some(_) => Some(self.conf.load()?),
            None => None,
        };
        let client = self.conf.load_client()?;
        if let (Some(a), Some(s)) = (&self.acceptor, server) {
            a.store(Arc::new(s));
        }
        if let (Some(c), Some(n)) = (&self.client, client) {
            c.store(Arc::new(n));
        }
        Ok(())
    }
}

/// Counters of every worker's streams (summed into `/metrics`).
#[derive(Debug, Default)]
pub struct StreamStats {
    pub opened: AtomicU64,
    pub refused_total: AtomicU64,
    pub refused_per_ip: AtomicU64,
    pub refused_tls: AtomicU64,
    /// Closed, by why: peer, error, slow reader, idle, too slow, framing,
    /// TLS failed, handshake not done in time.
    pub closed_peer: AtomicU64,
    pub closed_error: AtomicU64,
    pub closed_slow_reader: AtomicU64,
    pub closed_idle: AtomicU64,
    pub closed_too_slow: AtomicU64,
    pub closed_framing: AtomicU64,
    pub closed_tls: AtomicU64,
    pub closed_handshake: AtomicU64,
    pub messages: AtomicU64,
    pub pongs: AtomicU64,
    /// Responses handed to the owning worker, and those whose connection
    /// was gone.
    pub mailed: AtomicU64,
    pub undeliverable: AtomicU64,
    /// Connections to stream shards that could not be opened.
    pub link_failed: AtomicU64,
    /// Workers whose connections receive through their io_uring (the
    /// io_uring backend), not through epoll readiness.
    pub ring_workers: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Conn {
    id: ConnId,
    /// The client's address (`None`: the edge's own link to a shard).
    peer: Option<SocketAddr>,
    framing: Connection,
    token: [u8; TOKEN_LEN],
    /// Until the first tick that finds no TLS handshake under way: when
    /// the handshake must be done.
    handshake_until: Option<Instant>,
    /// Whose connection this is, once its first request said (RFC 5923).
    alias: Alias,
}

/// Who a connection speaks for (RFC 5923 §5). A shard may open a TLS
/// connection to the edge and send its requests on it; it is then known
/// by its configured address, not by the connection's ephemeral port,
/// once its first request carries `;alias` on a top Via whose sent-by is
/// that shard's address, and its certificate (verified against `[tls]
/// client_ca`) names that address's IP. Only over TLS: a TCP peer proves
/// nothing about who it is.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Alias {
    /// No request seen yet.
    Unknown,
    /// Known by its peer address, as every client is.
    Peer,
    /// The shard at this address.
    Shard(SocketAddr),
}

/// What one worker's TCP side runs on, bound by the caller before any
/// worker starts.
pub struct StreamSockets {
    /// SO_REUSEPORT on the edge's address, one per worker (`[tcp]`).
    pub listener: Option<std::net::TcpListener>,
    /// The same for TLS at `[tls] port`, with what its sessions start from.
    pub tls: Option<(std::net::TcpListener, Arc<Acceptor>)>,
    /// What the sessions of connections to `tls` shards start from.
    pub shard_tls: Option<Arc<ArcSwap<rustls::ClientConfig>>>,
    /// This worker's mail socket, among every worker's (`mail_peers`, by
    /// worker index).
    pub mail: UdpSocket,
    pub mail_peers: Arc<Vec<SocketAddr>>,
    /// The worker's datagram socket (a duplicate).
    pub udp: UdpSocket,
}

/// One worker's TCP side.
pub struct StreamSide {
    /// Taken while it polls (its handler is the worker).
    pub reactor: Option<Reactor>,
    conns: Vec<Option<Conn>>,
    worker: u16,
    key: [u64; 2],
    mail: UdpSocket,
    /// Every worker's mail address, by worker index.
    mail_peers: Arc<Vec<SocketAddr>>,
    /// The worker's datagram socket, for what a stream's request becomes.
    udp: UdpSocket,
    cfg: TcpConf,
    handshake: Duration,
    /// This worker's connection to each stream shard, by shard index.
    links: Vec<Option<ConnId>>,
    /// Connections shards opened to this worker and proved theirs (RFC
    /// 5923 alias), by shard address: one each, so bounded by the shards.
    aliases: Vec<(SocketAddr, ConnId)>,
    shard_tls: Option<Arc<ArcSwap<rustls::ClientConfig>>>,
    next_tick: Instant,
    /// Where mail is read (allocated once: `MAIL_MAX` bytes).
    mail_buf: Vec<u8>,
    /// Client connections ended and not yet taken ([`Self::take_ended`]).
    ended: Vec<(SocketAddr, Flow)>,
    pub stats: Arc<StreamStats>,
}

/// Why the edge ends a connection.
#[derive(Clone, Copy)]
enum Ending {
    Stream(Closed),
    Handshake,
}

/// How often the connections' timers are looked at.
const TICK: Duration = Duration::from_millis(100);
/// The largest mail: a token, an origin and a datagram.
const MAIL_MAX: usize = MAIL_HEAD + 65_536;
/// A mail's head: the flow token, then the origin of a request (where its
/// `430 Flow Failed` goes if the connection is gone): an IPv6 (or
/// v4-mapped) address and a port, port 0 for none (a response).
const ORIGIN_LEN: usize = 18;
const MAIL_HEAD: usize = TOKEN_LEN + ORIGIN_LEN;
/// Most undelivered requests answered per read of the mail (each costs a
/// scan and a datagram; the rest are counted undeliverable only).
const MAX_UNDELIVERED: usize = 64;

/// Who a connection whose first request is `req` speaks for, given the
/// certificate its peer presented ([`Alias`]).
fn alias_of(req: &[u8], cert: Option<&[u8]>, shards: &ShardSet) -> Alias {
    let Some(cert) = cert else {
        return Alias::Peer;
    };
    let m = crate::sip::scan::scan(req);
    let Some(top) = m.top_via.as_ref() else {
        return Alias::Peer;
    };
    let Some(v) = crate::sip::via::parse(req, top.value) else {
        return Alias::Peer;
    };
    let (Some(addr), true, true) = (
        v.sent_by(req, 5061),
        v.transport.get(req).eq_ignore_ascii_case(b"TLS"),
        crate::sip::params::find_param(req, top.value, b"alias").is_some(),
    ) else {
        return Alias::Peer;
    };
    match shards.by_addr(addr).is_some() && crate::io::tls::certificate_names_ip(cert, addr.ip()) {
        true => Alias::Shard(addr),
        false => Alias::Peer,
    }
}

fn put_origin(origin: Option<SocketAddr>) -> [u8; ORIGIN_LEN] {
    let mut o = [0; ORIGIN_LEN];
    if let Some(a) = origin {
        let ip = match a.ip() {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            std::net::IpAddr::V6(v6) => v6,
        };
        o[..16].copy_from_slice(&ip.octets());
        o[16..].copy_from_slice(&a.port().to_be_bytes());
    }
    o
}

fn get_origin(o: &[u8]) -> Option<SocketAddr> {
    let ip: [u8; 16] = o.get(..16)?.try_into().ok()?;
    let port = u16::from_be_bytes(o.get(16..ORIGIN_LEN)?.try_into().ok()?);
    if port == 0 {
        return None;
    }
    let ip = std::net::Ipv6Addr::from(ip);
    let ip = match ip.to_ipv4_mapped() {
        Some(v4) => std::net::IpAddr::V4(v4),
        None => std::net::IpAddr::V6(ip),
    };
    Some(SocketAddr::new(ip, port))
}

/// The flow token of a response's top Via (ours, popped when it is
/// relayed), if the request it answers came on a stream: the response
/// goes on that connection.
pub fn relayed_flow<'a>(m: &Message, data: &'a [u8]) -> Option<&'a [u8]> {
    crate::sip::flow::token_in_via(m.top_via.as_ref()?.value.get(data))
}

/// A request forwarded to a shard that takes it on a stream (its
/// transport, or its size, RFC 3261 §18.1.1): (shard, address, TLS).
#[inline]
pub fn stream_shard_of(o: &Outcome, t: &crate::route::Tables) -> Option<(usize, SocketAddr, bool)> {
    let Outcome::Forwarded {
        len,
        dst,
        shard: Some(i),
        ..
    } = *o
    else {
        return None;
    };
    let tls = t.shards.get(usize::from(i)).transport.stream_for(len)?;
    Some((usize::from(i), dst, tls))
}

/// Our Via of a request for a stream shard (the first `len` bytes of
/// `out`) made to say the stream's transport, and over TLS `;alias`, so
/// that the shard may send its requests back on the connection (RFC 5923;
/// over TCP it proves nothing, so none). Returns the new length.
pub fn via_for_stream_shard(out: &mut [u8], len: usize, tls: bool) -> usize {
    let transport = if tls { b"TLS" } else { b"TCP" };
    crate::sip::rewrite::set_edge_via_transport(&mut out[..len], transport);
    match tls {
        true => crate::sip::rewrite::add_alias_to_edge_via(out, len).unwrap_or(len),
        false => len,
    }
}

/// A way into the workers' mail from outside them (the registrar thread's
/// answers to REGISTERs that came on a stream): a duplicate of a worker's
/// mail socket, so the owner takes it as its peers' mail.
pub struct Mailer {
    sock: UdpSocket,
    peers: Arc<Vec<SocketAddr>>,
    key: [u64; 2],
}

impl Mailer {
    pub fn new(sock: UdpSocket, peers: Arc<Vec<SocketAddr>>, key: [u64; 2]) -> Mailer {
        Mailer { sock, peers, key }
    }

    /// `bytes` to the worker that owns the flow `token` names, for its
    /// connection (`origin`: a request's sender, answered `430` by the
    /// owner if the connection is gone). `false`: no such flow, or the
    /// mail could not be sent.
    pub fn send(&self, token: &[u8], origin: Option<SocketAddr>, bytes: &[u8]) -> bool {
        match Flow::from_token(token, &self.key) {
            Some(flow) => mail_to(&self.sock, &self.peers, flow.worker, token, origin, bytes),
            None => false,
        }
    }

    /// A request for a stream shard (`shard` index, address, TLS) to
    /// worker `worker`, which sends it on its own link to the shard.
    pub fn send_to_shard(
        &self,
        worker: u16,
        (shard, addr, tls): (usize, SocketAddr, bool),
        bytes: &[u8],
    ) -> bool {
        let head = shard_mail_head(shard, tls);
        mail_to(&self.sock, &self.peers, worker, &head, Some(addr), bytes)
    }
}

/// `bytes` through `mail` to the connection `token` names (`origin`: a
/// request's sender); a failure (no mail, no such flow, a full socket) is
/// logged for `who` and `false`.
pub fn mail_or_log(
    mail: Option<&Mailer>,
    (token, origin): (&[u8], Option<SocketAddr>),
    bytes: &[u8],
    who: &str,
) -> bool {
    let mailed = mail.is_some_and(|m| m.send(token, origin, bytes));
    if !mailed {
        tracing::warn!(who, "not mailed to its connection");
    }
    mailed
}

/// The token field of mail for the receiving worker's own link to a shard
/// (a slow-path result for a stream shard; the shard's address is the
/// origin field): `shard:`, the shard index in 8 hex digits, `:t` (TLS) or
/// `:p` (TCP), `-` to the end. Never a flow's token: those are lowercase
/// hex only, and `s` is none.
fn shard_mail_head(shard: usize, tls: bool) -> [u8; TOKEN_LEN] {
    let mut h = [b'-'; TOKEN_LEN];
    let text = format!("shard:{:08x}:{}", shard as u32, if tls { 't' } else { 'p' });
    h[..text.len()].copy_from_slice(text.as_bytes());
    h
}

/// The shard and transport a shard mail's token field names.
fn shard_of_mail(head: &[u8]) -> Option<(usize, bool)> {
    let rest = head.strip_prefix(b"shard:")?;
    let index = std::str::from_utf8(rest.get(..8)?).ok()?;
    let shard = usize::from_str_radix(index, 16).ok()?;
    match rest.get(8..10)? {
        b":t" => Some((shard, true)),
        b":p" => Some((shard, false)),
        _ => None,
    }
}

/// `bytes` (for the flow `token`, from `origin`) to worker `worker`'s
/// mail socket.
fn mail_to(
    sock: &UdpSocket,
    peers: &[SocketAddr],
    worker: u16,
    token: &[u8],
    origin: Option<SocketAddr>,
    bytes: &[u8],
) -> bool {
    let Some(owner) = peers.get(usize::from(worker)) else {
        return false;
    };
    let mut mail = Vec::with_capacity(MAIL_HEAD + bytes.len());
    mail.extend_from_slice(token);
    mail.extend_from_slice(&put_origin(origin));
    mail.extend_from_slice(bytes);
    sock.send_to(&mail, owner).is_ok()
}

impl StreamSide {
    /// Worker `worker`'s side on its sockets; `key` keys every worker's
    /// flow tokens alike (any worker reads any token).
    pub fn new(
        sockets: StreamSockets,
        worker: u16,
        key: [u64; 2],
        (cfg, handshake): (TcpConf, Duration),
        stats: Arc<StreamStats>,
    ) -> std::io::Result<StreamSide> {
        let StreamSockets {
            listener,
            tls,
            shard_tls,
            mail,
            mail_peers,
            udp,
        } = sockets;
        let mut reactor = Reactor::new(cfg.io())?;
        if let Some(l) = listener {
            reactor.listen(l)?;
        }
        if let Some((l, acceptor)) = tls {
            reactor.listen_tls(l, acceptor)?;
        }
        mail.set_nonblocking(true)?;
        reactor.watch(std::os::fd::AsRawFd::as_raw_fd(&mail))?;
        Ok(StreamSide {
            reactor: Some(reactor),
            conns: Vec::new(),
            worker,
            key,
            mail,
            mail_peers,
            udp,
            cfg,
            handshake,
            links: Vec::new(),
            aliases: Vec::new(),
            shard_tls,
            next_tick: Instant::now() + TICK,
            mail_buf: vec![0; MAIL_MAX],
            ended: Vec::new(),
            stats,
        })
    }

    /// The descriptor the io loop waits on.
    pub fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        self.reactor.as_ref().map(Reactor::fd)
    }

    /// A connection from `peer` (`None`: the edge's own link to a shard).
    pub fn opened(&mut self, id: ConnId, peer: Option<SocketAddr>, now: Instant) {
        bump(&self.stats.opened);
        let slot = id.slot as usize;
        if self.conns.len() <= slot {
            self.conns.resize_with(slot + 1, || None);
        }
        let flow = Flow {
            worker: self.worker,
            slot: id.slot,
            generation: id.generation,
        };
        self.conns[slot] = Some(Conn {
            id,
            peer,
            framing: Connection::new(now, self.cfg.limits(), self.cfg.timing()),
            token: flow.token(&self.key),
            handshake_until: Some(now + self.handshake),
            alias: Alias::Unknown,
        });
    }

    pub fn refused(&self, peer: SocketAddr, why: Refused) {
        bump(match why {
            Refused::Total => &self.stats.refused_total,
            Refused::PerIp => &self.stats.refused_per_ip,
            Refused::Tls => &self.stats.refused_tls,
        });
        tracing::debug!(%peer, ?why, "tcp connection refused");
    }

    pub fn closed(&mut self, id: ConnId, why: CloseReason) {
        self.forget(id);
        bump(match why {
            CloseReason::PeerClosed => &self.stats.closed_peer,
            CloseReason::Error(_) => &self.stats.closed_error,
            CloseReason::SlowReader => &self.stats.closed_slow_reader,
            CloseReason::Tls => &self.stats.closed_tls,
            // Our own closes are counted where they are decided.
            CloseReason::Closed => return,
        });
    }

    /// Bytes from `id` into its framing, and what they make: whole
    /// messages (with the connection's flow token) for `on_message`,
    /// pongs written, a framing error closing the connection.
    ///
    /// A message's source is the connection's peer, or the shard the
    /// connection speaks for (RFC 5923 alias, decided at its first request
    /// against `shards`).
    pub fn received(
        &mut self,
        id: ConnId,
        data: &[u8],
        (now, shards): (Instant, &ShardSet),
        streams: &mut Streams,
        mut on_message: impl FnMut(&[u8], SocketAddr, &[u8; TOKEN_LEN], &mut Streams),
    ) {
        let Some(peer) = streams.peer(id) else { return };
        let stats = Arc::clone(&self.stats);
        let Some(c) = self.conn_mut(id) else { return };
        let mut rest = data;
        while !rest.is_empty() {
            let space = c.framing.space();
            if space.is_empty() {
                break;
            }
            let n = space.len().min(rest.len());
            space[..n].copy_from_slice(&rest[..n]);
            c.framing.received(now, n);
            rest = &rest[n..];
            while let Some(e) = c.framing.poll() {
                match e {
                    Event::Pong => {
                        bump(&stats.pongs);
                        streams.send(id, b"\r\n");
                    }
                    Event::Message { len } => {
                        bump(&stats.messages);
                        let msg = c.framing.message(len);
                        if c.alias == Alias::Unknown && !msg.starts_with(b"SIP/2.0 ") {
                            c.alias = alias_of(msg, streams.peer_certificate(id), shards);
                        }
                        let src = match c.alias {
                            Alias::Shard(addr) => addr,
                            Alias::Unknown | Alias::Peer => peer,
                        };
                        on_message(msg, src, &c.token, streams);
                        c.framing.consume(len);
                    }
                }
            }
            if let Some(why) = c.framing.closed() {
                return self.close_for(id, Ending::Stream(why), streams);
            }
        }
        self.note_alias(id);
    }

    /// A connection that has proved to be a shard's: the one the edge's
    /// requests to that shard take (RFC 5923 reuse), replacing an older one.
    fn note_alias(&mut self, id: ConnId) {
        let Some(Alias::Shard(addr)) = self.conn_mut(id).map(|c| c.alias) else {
            return;
        };
        if self.aliases.contains(&(addr, id)) {
            return;
        }
        self.aliases.retain(|&(a, _)| a != addr);
        self.aliases.push((addr, id));
    }

    /// A request for the shard `shard` at `addr` on this worker's
    /// connection to it, opened now if there is none (TLS with `tls`).
    /// `false`: not sent (no connection could be opened, or it failed at
    /// once).
    pub fn send_to_shard(
        &mut self,
        (shard, addr, tls): (usize, SocketAddr, bool),
        bytes: &[u8],
        now: Instant,
        streams: &mut Streams,
    ) -> bool {
        // The shard's own TLS connection, when it opened one to this
        // worker and proved it theirs: no second connection (RFC 5923).
        if let Some(&(_, id)) = self.aliases.iter().find(|&&(a, _)| tls && a == addr) {
            if streams.send(id, bytes) {
                return true;
            }
        }
        if let Some(&Some(id)) = self.links.get(shard) {
            if streams.peer(id) == Some(addr) {
                return streams.send(id, bytes);
            }
        }
        let Some(id) = self.open_link(addr, tls, streams) else {
            bump(&self.stats.link_failed);
            return false;
        };
        self.opened(id, None, now);
        if self.links.len() <= shard {
            self.links.resize(shard + 1, None);
        }
        self.links[shard] = Some(id);
        streams.send(id, bytes)
    }

    fn open_link(&self, addr: SocketAddr, tls: bool, streams: &mut Streams) -> Option<ConnId> {
        let session = match tls {
            false => None,
            true => {
                let Some(cfg) = self.shard_tls.as_ref() else {
                    tracing::warn!(%addr, "a tls shard without [tls] shard_ca");
                    return None;
                };
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                Some(rustls::ClientConnection::new(cfg.load_full(), name).ok()?)
            }
        };
        streams
            .connect(addr, session)
            .map_err(|e| tracing::debug!(%addr, "cannot connect to the shard: {e}"))
            .ok()
    }

    /// Drop `id`'s framing (a later tenant of its slot is left alone).
    fn forget(&mut self, id: ConnId) {
        for l in self.links.iter_mut().filter(|l| **l == Some(id)) {
            *l = None;
        }
        self.aliases.retain(|&(_, i)| i != id);
        let Some(slot) = self.conns.get_mut(id.slot as usize) else {
            return;
        };
        let Some(c) = slot.take_if(|c| c.id == id) else {
            return;
        };
        if let (Some(peer), false) = (c.peer, matches!(c.alias, Alias::Shard(_))) {
            // Each connection ends once, and `ended` is taken after every
            // poll: bounded by the connections a worker holds.
            self.ended.push((
                peer,
                Flow {
                    worker: self.worker,
                    slot: id.slot,
                    generation: id.generation,
                },
            ));
        }
    }

    /// The client connections that ended since the last call (their
    /// peer and flow), for the registrar to unbind what was on them.
    pub fn take_ended(&mut self) -> Vec<(SocketAddr, Flow)> {
        std::mem::take(&mut self.ended)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns
            .get_mut(id.slot as usize)?
            .as_mut()
            .filter(|c| c.id == id)
    }

    fn close_for(&mut self, id: ConnId, why: Ending, streams: &mut Streams) {
        bump(match why {
            Ending::Stream(Closed::Framing(_)) => &self.stats.closed_framing,
            Ending::Stream(Closed::Idle) => &self.stats.closed_idle,
            Ending::Stream(Closed::TooSlow) => &self.stats.closed_too_slow,
            Ending::Handshake => &self.stats.closed_handshake,
        });
        if let Some(peer) = streams.peer(id) {
            let why = match why {
                Ending::Stream(c) => c.name(),
                Ending::Handshake => "tls handshake not done in time",
            };
            tracing::debug!(%peer, why, "stream connection closed");
        }
        // Gone from the timers now, not when the close is reported.
        self.forget(id);
        streams.close(id);
    }

    /// The connections' timers, at most every `TICK` (100 ms).
    pub fn tick(&mut self, now: Instant, streams: &mut Streams) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TICK;
        let mut due = Vec::new();
        for c in self.conns.iter_mut().flatten() {
            if let Some(until) = c.handshake_until {
                if !streams.handshaking(c.id) {
                    c.handshake_until = None;
                } else if until <= now {
                    due.push((c.id, Ending::Handshake));
                    continue;
                }
            }
            if c.framing.deadline() <= now {
                if let Some(why) = c.framing.handle_timeout(now) {
                    due.push((c.id, Ending::Stream(why)));
                }
            }
            c.framing.release();
        }
        for (id, why) in due {
            self.close_for(id, why, streams);
        }
    }

    /// A message (a response, or an in-dialog request toward a stream
    /// client, from `origin`) for the flow `token` names: on its connection
    /// when this worker owns it, else to the owner's mail socket. `false`:
    /// no such flow (forged, or another edge's), or this worker's
    /// connection is gone.
    pub fn deliver(
        &mut self,
        token: &[u8],
        bytes: &mut [u8],
        origin: Option<SocketAddr>,
        streams: &mut Streams,
    ) -> bool {
        let Some(flow) = Flow::from_token(token, &self.key) else {
            return false;
        };
        if flow.worker == self.worker {
            let id = ConnId {
                slot: flow.slot,
                generation: flow.generation,
            };
            if !bytes.starts_with(b"SIP/2.0 ") {
                // A request: our Via names the transport it leaves on, so
                // that the client answers on this connection (RFC 3261
                // §18.2.2). Only the owner knows TLS from TCP.
                let transport = if streams.is_tls(id) { b"TLS" } else { b"TCP" };
                crate::sip::rewrite::set_edge_via_transport(bytes, transport);
            }
            let sent = streams.send(id, bytes);
            if !sent {
                bump(&self.stats.undeliverable);
            }
            return sent;
        }
        bump(&self.stats.mailed);
        mail_to(
            &self.mail,
            &self.mail_peers,
            flow.worker,
            token,
            origin,
            bytes,
        )
    }

    /// Mail from the other workers: each a token, the origin of a request
    /// and the message to write. A request whose connection is gone goes
    /// to `undelivered` with its origin (at most `MAX_UNDELIVERED` a read;
    /// beyond, counted only), for the worker's `430`.
    pub fn read_mail(
        &mut self,
        streams: &mut Streams,
        mut undelivered: impl FnMut(&[u8], SocketAddr),
    ) {
        let mut buf = std::mem::take(&mut self.mail_buf);
        let mut bounced = 0;
        while let Ok((n, from)) = self.mail.recv_from(&mut buf) {
            // Only this edge's workers write here.
            if !self.mail_peers.contains(&from) || n < MAIL_HEAD {
                continue;
            }
            let (token, rest) = buf[..n].split_at_mut(TOKEN_LEN);
            let (origin, bytes) = rest.split_at_mut(ORIGIN_LEN);
            let origin = get_origin(origin);
            if let Some((shard, tls)) = shard_of_mail(token) {
                let sent = origin.is_some_and(|addr| {
                    self.send_to_shard((shard, addr, tls), bytes, Instant::now(), streams)
                });
                if !sent {
                    bump(&self.stats.undeliverable);
                }
                continue;
            }
            if self.deliver(token, bytes, origin, streams) || bytes.starts_with(b"SIP/2.0 ") {
                continue;
            }
            if let (Some(origin), true) = (origin, bounced < MAX_UNDELIVERED) {
                bounced += 1;
                undelivered(bytes, origin);
            }
        }
        self.mail_buf = buf;
    }

    /// A datagram out of the worker's UDP socket (what a stream's request
    /// became: to a shard, or a response toward one).
    pub fn send_udp(&self, bytes: &[u8], dst: SocketAddr) -> bool {
        self.udp.send_to(bytes, dst).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard mail's head names its shard and transport back, and no
    /// flow token is ever read as one (nor the other way round).
    #[test]
    fn a_shard_mail_head_is_never_a_flow_token() {
        for (shard, tls) in [(0, false), (7, true), (255, false), (65_535, true)] {
            let head = shard_mail_head(shard, tls);
            assert_eq!(shard_of_mail(&head), Some((shard, tls)));
            assert_eq!(Flow::from_token(&head, &[1, 2]), None);
        }
        let flow = Flow {
            worker: 1,
            slot: 2,
            generation: 3,
        };
        assert_eq!(shard_of_mail(&flow.token(&[1, 2])), None);
        assert_eq!(shard_of_mail(b"shard:0000000x:t-------------------"), None);
        assert_eq!(shard_of_mail(b"shard:00000001:q--------------------"), None);
        assert_eq!(shard_of_mail(b"shard:0001"), None);
    }
}
