//! `cpm-iwf` running (layer 3): the reference Interworking Function for
//! SMS (seed 5.3.1.1.1, the CS → IWF leg of README's wire contract). One
//! SIP thread over a blocking UDP socket and the shared SIP core's server
//! transactions: a MESSAGE from an edge → [`crate::iwf::sms`]'s checks
//! (number, text, coding, parts) → a submission to the gateway thread
//! ([`kannel`]) → its outcome as the answer: `202 Accepted` once Kannel has
//! taken it, the gateway's refusal as `502`, no gateway as `503`.
//!
//! SMS → CPM ([`mo`], seed 5.3.2): Kannel's MO `get-url` here, a MESSAGE
//! through the edge to the subscriber the number belongs to. Not yet:
//! delivery reports as IMDN, a session invitation's conversion.

pub mod kannel;
pub mod mo;

use crate::iwf::sms::{self, SmsError};
use crate::sip::scan::{scan, Message, Method, StartLine};
use crate::sip::transaction::{
    self, response_destination, write_response, Received, ResponseSpec, TransactionId,
    TransactionTable,
};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use kannel::{Gateway, Outcome, Submit};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The embedded default (`cpm-iwf --print-default-config`).
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Longest wait for a datagram before the loop looks at the clock, the
/// gateway's outcomes and the stop flag again.
const TICK: Duration = Duration::from_millis(10);
const RECV_BUF: usize = 65_536;

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    sip: SipSection,
    kannel: KannelSection,
    #[serde(default)]
    mo: Option<MoSection>,
    /// Whose number is whose: where an SMS to a number goes in CPM.
    #[serde(default, rename = "subscriber")]
    subscribers: Vec<SubscriberEntry>,
}

/// Kannel's `sms-service` `get-url` lands here.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MoSection {
    listen: SocketAddr,
    /// How long the HTTP answer waits for the SIP one.
    #[serde(default = "default_timeout")]
    wait_ms: u64,
}

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriberEntry {
    msisdn: String,
    user: String,
}

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SipSection {
    listen: SocketAddr,
    /// The only sources of requests (the edges).
    edges: Vec<SocketAddr>,
    /// The SMS sender when the CPM sender has no number.
    sender: String,
    #[serde(default = "default_max_parts")]
    max_parts: usize,
    /// Submissions waiting for the gateway; beyond, `503`.
    #[serde(default = "default_queue")]
    queue: usize,
}

fn default_max_parts() -> usize {
    10
}
fn default_queue() -> usize {
    1024
}

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KannelSection {
    /// smsbox's `sendsms-port`, as `IP:port`.
    sendsms: SocketAddr,
    #[serde(default = "default_path")]
    path: String,
    username: String,
    password: String,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
}

fn default_path() -> String {
    "/cgi-bin/sendsms".into()
}
fn default_timeout() -> u64 {
    5_000
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub edges: Vec<SocketAddr>,
    pub sender: String,
    pub max_parts: usize,
    pub queue: usize,
    pub gateway: Gateway,
    /// The MO interface's address and wait (`None`: no SMS → CPM).
    pub mo: Option<(SocketAddr, Duration)>,
    /// Number (E.164) → CPM subscriber URI.
    pub subscribers: HashMap<String, String>,
}

/// Parse and check a configuration; the error names the key.
pub fn load(text: &str) -> Result<Settings, String> {
    let f: File = toml::from_str(text).map_err(|e| format!("config: {}", e.message()))?;
    if f.sip.edges.is_empty() {
        return Err("sip.edges: at least one edge".into());
    }
    if !(1..=255).contains(&f.sip.max_parts) {
        return Err("sip.max_parts: 1 to 255 (a concatenated SMS has at most 255)".into());
    }
    if f.sip.queue == 0 {
        return Err("sip.queue: at least 1".into());
    }
    let mut subscribers = HashMap::new();
    for (i, s) in f.subscribers.iter().enumerate() {
        let n = sms::msisdn_of(&format!("tel:{}", s.msisdn))
            .filter(|n| *n == s.msisdn)
            .ok_or_else(|| format!("subscriber[{i}].msisdn: '{}' is not E.164", s.msisdn))?;
        let sip = s.user.to_ascii_lowercase();
        if !(sip.starts_with("sip:") || sip.starts_with("sips:")) {
            return Err(format!("subscriber[{i}].user: '{}' is no SIP URI", s.user));
        }
        if subscribers.insert(n, s.user.clone()).is_some() {
            return Err(format!("subscriber[{i}].msisdn: '{}' twice", s.msisdn));
        }
    }
    Ok(Settings {
        listen: f.sip.listen,
        edges: f.sip.edges,
        sender: f.sip.sender,
        max_parts: f.sip.max_parts,
        queue: f.sip.queue,
        gateway: Gateway {
            addr: f.kannel.sendsms,
            path: f.kannel.path,
            username: f.kannel.username,
            password: f.kannel.password,
            timeout: Duration::from_millis(f.kannel.timeout_ms.max(100)),
        },
        mo: f
            .mo
            .map(|m| (m.listen, Duration::from_millis(m.wait_ms.max(100)))),
        subscribers,
    })
}

/// A MESSAGE waiting for the gateway: what its answer is written from.
struct Waiting {
    request: Vec<u8>,
    source: SocketAddr,
}

/// The running IWF's SIP side.
pub struct Iwf {
    sock: UdpSocket,
    settings: Settings,
    txns: TransactionTable,
    waiting: HashMap<TransactionId, Waiting>,
    jobs: Sender<Submit<TransactionId>>,
    done: Receiver<(TransactionId, Outcome)>,
    /// Converted SMS from the MO interface, and the MESSAGEs of those on
    /// their way (client transaction → whom to tell).
    mo: Option<Receiver<mo::Mo>>,
    mo_pending: HashMap<TransactionId, tokio::sync::oneshot::Sender<u16>>,
    mo_addr: Option<SocketAddr>,
    local: SocketAddr,
    counter: u64,
    out: Vec<u8>,
}

impl Iwf {
    /// Bind and start the gateway thread.
    pub fn start(settings: Settings) -> io::Result<Iwf> {
        let sock = UdpSocket::bind(settings.listen)?;
        sock.set_read_timeout(Some(TICK))?;
        let local = sock.local_addr()?;
        let (jobs, jobs_rx) = bounded(settings.queue);
        let (done_tx, done) = bounded(settings.queue);
        kannel::run(settings.gateway.clone(), jobs_rx, done_tx)?;
        let (mo, mo_addr) = match settings.mo {
            Some((listen, wait)) => {
                let (tx, rx) = bounded(settings.queue);
                let side = mo::MoSide {
                    subscribers: settings.subscribers.clone(),
                    to_sip: tx,
                    wait,
                };
                (Some(rx), Some(mo::start(listen, side)?))
            }
            None => (None, None),
        };
        let cfg = transaction::Config {
            key: crate::sip::hash::random_key(),
            ..transaction::Config::default()
        };
        Ok(Iwf {
            sock,
            txns: TransactionTable::new(cfg),
            waiting: HashMap::new(),
            jobs,
            done,
            mo,
            mo_pending: HashMap::new(),
            mo_addr,
            local,
            counter: 0,
            settings,
            out: vec![0; 8192],
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Where the MO interface listens (`None`: not configured).
    pub fn mo_addr(&self) -> Option<SocketAddr> {
        self.mo_addr
    }

    /// Serve until `stop`.
    pub fn run(&mut self, stop: &AtomicBool) {
        let mut buf = vec![0u8; RECV_BUF];
        while !stop.load(Ordering::Relaxed) {
            match self.sock.recv_from(&mut buf) {
                Ok((n, src)) => self.on_datagram(src, &buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => tracing::warn!("iwf receive error: {e}"),
            }
            self.txns.handle_timeout(Instant::now());
            while let Ok((id, outcome)) = self.done.try_recv() {
                self.on_outcome(id, outcome);
            }
            while let Some(m) = self.mo.as_ref().and_then(|r| r.try_recv().ok()) {
                self.send_mo(m);
            }
            while let Some(e) = self.txns.poll_event() {
                if let transaction::Event::Timeout { id, .. }
                | transaction::Event::TransportError { id } = e
                {
                    if let Some(tx) = self.mo_pending.remove(&id) {
                        let _ = tx.send(408);
                    }
                }
            }
            self.flush();
        }
    }

    fn on_datagram(&mut self, src: SocketAddr, b: &[u8]) {
        let m = scan(b);
        if !self.settings.edges.contains(&src) {
            if m.is_request() && m.method() != Some(Method::Ack) {
                self.stateless(b, &m, src, 403, "Forbidden - Not From The SIP/IP Core");
            }
            return;
        }
        if let Some(d) = m.defect {
            if m.is_request() && m.method() != Some(Method::Ack) {
                self.stateless(b, &m, src, 400, &format!("Bad Request - {}", d.reason()));
            }
            return;
        }
        match self.txns.handle_datagram(Instant::now(), src, b, &m) {
            Ok(Received::Request(id)) => self.on_request(id, src, b, &m),
            Ok(Received::Response { id, code }) if code >= 200 => {
                if let Some(tx) = self.mo_pending.remove(&id) {
                    let _ = tx.send(code);
                }
            }
            Err(transaction::Error::TableFull) if m.is_request() => {
                self.stateless(
                    b,
                    &m,
                    src,
                    503,
                    "Service Unavailable - Too Many Transactions",
                );
            }
            _ => {}
        }
    }

    fn on_request(&mut self, id: TransactionId, src: SocketAddr, b: &[u8], m: &Message) {
        match m.method() {
            Some(Method::Message) if m.to_tag.is_none() => {}
            Some(Method::Options) => return self.respond(id, src, b, m, 200, "OK"),
            Some(Method::Invite) => {
                // Seed 5.3: SMS has no sessions; the PF relays this.
                return self.respond(
                    id,
                    src,
                    b,
                    m,
                    488,
                    "Not Acceptable Here - SMS Carries No Sessions",
                );
            }
            _ => return self.respond(id, src, b, m, 405, "Method Not Allowed"),
        }
        match self.submission(id, b, m) {
            Ok(job) => match self.jobs.try_send(job) {
                Ok(()) => {
                    self.waiting.insert(
                        id,
                        Waiting {
                            request: b.to_vec(),
                            source: src,
                        },
                    );
                }
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.respond(
                        id,
                        src,
                        b,
                        m,
                        503,
                        "Service Unavailable - SMS Gateway Queue Full",
                    );
                }
            },
            Err(e) => self.respond(id, src, b, m, e.status(), &e.to_string()),
        }
    }

    /// The SMS a MESSAGE becomes, or why it cannot.
    fn submission(
        &self,
        id: TransactionId,
        b: &[u8],
        m: &Message,
    ) -> Result<Submit<TransactionId>, SmsError> {
        let ruri = match m.start {
            StartLine::Request { uri, .. } => String::from_utf8_lossy(uri.get(b)).into_owned(),
            StartLine::Response { .. } => String::new(),
        };
        let to = sms::msisdn_of(&ruri).ok_or(SmsError::NoMsisdn)?;
        let t = sms::text_of(b, m)?;
        let plan = sms::plan(&t.text, self.settings.max_parts)?;
        // The sender's number where the CPM sender has one (asserted by
        // the CS), else the provider's sender.
        let asserted = m
            .pai_uri
            .map(|s| String::from_utf8_lossy(s.get(b)).into_owned());
        let from = asserted
            .as_deref()
            .and_then(sms::msisdn_of)
            .unwrap_or_else(|| self.settings.sender.clone());
        Ok(Submit {
            key: id,
            from,
            to,
            text: t.text,
            coding: plan.coding,
        })
    }

    fn on_outcome(&mut self, id: TransactionId, outcome: Outcome) {
        let Some(w) = self.waiting.remove(&id) else {
            return;
        };
        let m = scan(&w.request);
        let (code, reason) = match &outcome {
            Outcome::Accepted => (202, "Accepted - Submitted As SMS".to_string()),
            Outcome::Refused(s, why) => (
                502,
                format!("Bad Gateway - SMS Gateway Refused ({s}: {why})"),
            ),
            Outcome::Unreachable(why) => {
                tracing::warn!(why, "SMS gateway unreachable");
                (
                    503,
                    "Service Unavailable - SMS Gateway Unreachable".to_string(),
                )
            }
        };
        let reason: String = reason.chars().filter(|c| !c.is_control()).collect();
        self.respond(id, w.source, &w.request, &m, code, &reason);
    }

    fn respond(
        &mut self,
        id: TransactionId,
        src: SocketAddr,
        b: &[u8],
        m: &Message,
        code: u16,
        reason: &str,
    ) {
        let tag = crate::sip::hash::random_key()[0].to_string();
        let spec = ResponseSpec {
            to_tag: m.to_tag.is_none().then_some(tag.as_bytes()),
            ..ResponseSpec::new(code, reason)
        };
        if let Some(n) = write_response(b, m, Some(src), &spec, &mut self.out) {
            let bytes = self.out[..n].to_vec();
            let _ = self.txns.send_response(Instant::now(), id, &bytes);
        }
    }

    fn stateless(&mut self, b: &[u8], m: &Message, src: SocketAddr, code: u16, reason: &str) {
        let Some(via) = m.top_via else { return };
        let spec = ResponseSpec {
            to_tag: Some(b"iwf"),
            ..ResponseSpec::new(code, reason)
        };
        if let Some(n) = write_response(b, m, Some(src), &spec, &mut self.out) {
            let bytes = self.out[..n].to_vec();
            self.txns
                .send_stateless(response_destination(&via, src), &bytes);
        }
    }

    /// Seed 5.3.2: the SMS as a CPM pager-mode MESSAGE into the edge,
    /// asserted as its sender's number, with the CPM message feature tag.
    fn send_mo(&mut self, m: mo::Mo) {
        self.counter += 1;
        let branch = self.txns.new_branch();
        let tag = format!("{:x}", crate::sip::hash::random_key()[0]);
        let req = format!(
            "MESSAGE {to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <tel:{from}>;tag={tag}\r\nTo: <{to}>\r\n\
             Call-ID: mo-{n}-{tag}@{ip}\r\nCSeq: 1 MESSAGE\r\nP-Asserted-Identity: <tel:{from}>\r\n\
             Accept-Contact: *;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg\"\r\n\
             Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {len}\r\n\r\n{text}",
            to = m.to,
            local = self.local,
            branch = String::from_utf8_lossy(branch.as_bytes()),
            from = m.from,
            n = self.counter,
            ip = self.local.ip(),
            len = m.text.len(),
            text = m.text,
        );
        let Some(&edge) = self.settings.edges.first() else {
            let _ = m.done.send(503);
            return;
        };
        match self.txns.send_request(Instant::now(), req.as_bytes(), edge) {
            Ok(id) => {
                self.mo_pending.insert(id, m.done);
            }
            Err(e) => {
                tracing::warn!(error = ?e, "MO MESSAGE not sent");
                let _ = m.done.send(503);
            }
        }
    }

    fn flush(&mut self) {
        let mut buf = Vec::new();
        while let Some(t) = self.txns.poll_transmit(&mut buf) {
            if let Err(e) = self.sock.send_to(&buf, t.destination) {
                tracing::warn!(dst = %t.destination, "iwf send error: {e}");
            }
            buf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_loads_and_bad_entries_are_named() {
        let s = load(DEFAULT_TOML).unwrap();
        assert_eq!(s.max_parts, 10);
        assert_eq!(s.subscribers["+447700900105"], "sip:erin@127.0.0.1:5075");
        let bad = |from: &str, to: &str| load(&DEFAULT_TOML.replace(from, to)).unwrap_err();
        assert!(bad("max_parts = 10", "max_parts = 0").starts_with("sip.max_parts"));
        assert!(
            bad("msisdn = \"+447700900105\"", "msisdn = \"07700900105\"")
                .starts_with("subscriber[0].msisdn")
        );
        assert!(bad("user = \"sip:erin", "user = \"mailto:erin").starts_with("subscriber[0].user"));
        assert!(bad("edges = [\"127.0.0.1:5060\"]", "edges = []").starts_with("sip.edges"));
    }
}
