//! `cpm-iwf` running (layer 3): the reference Interworking Function for
//! SMS (seed 5.3.1.1.1, the CS → IWF leg of README's wire contract). One
//! SIP thread over a blocking UDP socket and the shared SIP core's server
//! transactions: a MESSAGE from an edge → [`crate::iwf::sms`]'s checks
//! (number, text, coding, parts) → a submission to the gateway thread
//! ([`kannel`]) → its outcome as the answer: `202 Accepted` once Kannel has
//! taken it, the gateway's refusal as `502`, no gateway as `503`.
//!
//! SMS → CPM ([`mo`], seed 5.3.2): Kannel's MO `get-url` here, a MESSAGE
//! through the edge to the subscriber the number belongs to.
//!
//! Delivery reports as IMDN ([`crate::iwf::imdn`]): a MESSAGE whose CPIM
//! asks for delivery notifications goes to Kannel with a `dlr-mask` and a
//! `dlr-url` naming an unguessable token of a bounded table; Kannel's
//! final report for it becomes the sender's notification, a MESSAGE
//! through the edge like an MO one. A session invitation is refused
//! (`488`): SMS has no sessions.

pub mod kannel;
pub mod mo;

use crate::iwf::imdn::{self, Awaited, Delivery, Heard, Reports, Requested};
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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    /// Delivery reports awaited at once; beyond, a message still goes
    /// out but without a report (logged).
    #[serde(default = "default_reports")]
    reports: usize,
    /// How long a report is awaited (an SMS's validity period).
    #[serde(default = "default_report_ttl")]
    report_ttl_s: u64,
}

fn default_reports() -> usize {
    100_000
}
fn default_report_ttl() -> u64 {
    172_800
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
    /// The MO interface's address and wait (`None`: no SMS → CPM, and no
    /// delivery reports).
    pub mo: Option<(SocketAddr, Duration)>,
    /// Delivery reports awaited at once, and for how long.
    pub reports: usize,
    pub report_ttl: Duration,
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
    if let Some(m) = &f.mo {
        if m.listen.ip().is_unspecified() {
            return Err("mo.listen: a specific address (Kannel calls it back there)".into());
        }
        if m.reports == 0 {
            return Err("mo.reports: at least 1".into());
        }
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
        reports: f.mo.as_ref().map_or(0, |m| m.reports),
        report_ttl: Duration::from_secs(f.mo.as_ref().map_or(0, |m| m.report_ttl_s)),
        mo: f
            .mo
            .map(|m| (m.listen, Duration::from_millis(m.wait_ms.max(100)))),
        subscribers,
    })
}

/// A MESSAGE waiting for the gateway: what its answer is written from,
/// and the token of the report it asked for.
struct Waiting {
    request: Vec<u8>,
    source: SocketAddr,
    report: Option<String>,
}

/// The running IWF's SIP side.
pub struct Iwf {
    sock: UdpSocket,
    settings: Settings,
    txns: TransactionTable,
    waiting: HashMap<TransactionId, Waiting>,
    jobs: Sender<Submit<TransactionId>>,
    done: Receiver<(TransactionId, Outcome)>,
    /// Converted SMS and delivery reports from the MO interface, and the
    /// MESSAGEs of SMS on their way (client transaction → whom to tell).
    mo: Option<Receiver<mo::Inbound>>,
    mo_pending: HashMap<TransactionId, tokio::sync::oneshot::Sender<u16>>,
    reports: Reports,
    /// `http://IP:port/dlr` (`None`: no MO interface to call back).
    report_base: Option<String>,
    /// Notifications on their way (client transaction → original
    /// Message-ID, for the log when one fails).
    notifying: HashMap<TransactionId, String>,
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
            reports: Reports::new(settings.reports.max(1), settings.report_ttl),
            report_base: mo_addr.map(|a| format!("http://{a}/dlr")),
            notifying: HashMap::new(),
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
                match m {
                    mo::Inbound::Sms(m) => self.send_mo(m),
                    mo::Inbound::Report(r) => self.on_report(r),
                }
            }
            self.reports.expire(Instant::now());
            while let Some(e) = self.txns.poll_event() {
                if let transaction::Event::Timeout { id, .. }
                | transaction::Event::TransportError { id } = e
                {
                    self.on_final(id, 408);
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
            Ok(Received::Response { id, code }) if code >= 200 => self.on_final(id, code),
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
            Ok((mut job, requested)) => {
                let report = requested.and_then(|r| {
                    let (token, ask) = self.await_report(r, &job.to)?;
                    job.report = Some(ask);
                    Some(token)
                });
                self.submit(id, src, b, m, job, report);
            }
            Err(e) => self.respond(id, src, b, m, e.status(), &e.to_string()),
        }
    }

    /// Hand `job` to the gateway thread, or answer `503` at once.
    fn submit(
        &mut self,
        id: TransactionId,
        src: SocketAddr,
        b: &[u8],
        m: &Message,
        job: Submit<TransactionId>,
        report: Option<String>,
    ) {
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.waiting.insert(
                    id,
                    Waiting {
                        request: b.to_vec(),
                        source: src,
                        report,
                    },
                );
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                if let Some(t) = report {
                    self.reports.refused(&t);
                }
                self.respond(
                    id,
                    src,
                    b,
                    m,
                    503,
                    "Service Unavailable - SMS Gateway Queue Full",
                );
            }
        }
    }

    /// The SMS a MESSAGE becomes and the reports its sender asked for,
    /// or why it cannot.
    fn submission(
        &self,
        id: TransactionId,
        b: &[u8],
        m: &Message,
    ) -> Result<(Submit<TransactionId>, Option<Requested>), SmsError> {
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
        let job = Submit {
            key: id,
            from,
            to,
            text: t.text,
            coding: plan.coding,
            report: None,
        };
        Ok((job, t.report))
    }

    fn on_outcome(&mut self, id: TransactionId, outcome: Outcome) {
        let Some(w) = self.waiting.remove(&id) else {
            return;
        };
        let m = scan(&w.request);
        match (&w.report, &outcome) {
            (Some(t), Outcome::Accepted) => {
                let heard = self.reports.accepted(t);
                self.on_heard(heard);
            }
            // Refused: the sender hears it in the answer.
            (Some(t), _) => self.reports.refused(t),
            (None, _) => {}
        }
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
    /// asserted as its sender's number.
    fn send_mo(&mut self, m: mo::Mo) {
        let from = format!("tel:{}", m.from);
        match self.send_message(&m.to, &from, "text/plain;charset=UTF-8", &m.text) {
            Some(id) => {
                self.mo_pending.insert(id, m.done);
            }
            None => {
                let _ = m.done.send(503);
            }
        }
    }

    /// A report from the gateway: a final one ends the wait and becomes
    /// the notification its sender asked for; a token never issued (or
    /// forgotten) changes nothing.
    fn on_report(&mut self, r: mo::Report) {
        let heard = self.reports.report(&r.token, r.kind);
        let _ = r.known.send(heard != Heard::Unknown);
        self.on_heard(heard);
    }

    fn on_heard(&mut self, heard: Heard) {
        if let Heard::Notify(a, d) = heard {
            self.notify(&a, d);
        }
    }

    /// A token (unguessable: 128 random bits) for the report `r` asks
    /// for, and what Kannel is asked (`dlr-mask`, `dlr-url`); `None`
    /// (logged) when no report can be had.
    fn await_report(&mut self, r: Requested, to: &str) -> Option<(String, (u32, String))> {
        let base = self.report_base.as_deref()?;
        let k = crate::sip::hash::random_key();
        let token = format!("{:016x}{:016x}", k[0], k[1]);
        let ask = (r.kannel_mask(), format!("{base}?k={token}&type=%d"));
        match self
            .reports
            .open(Instant::now(), token.clone(), r, format!("tel:{to}"))
        {
            Ok(()) => Some((token, ask)),
            Err(e) => {
                tracing::warn!("{e}: the SMS goes without a delivery report");
                None
            }
        }
    }

    /// RFC 5438 §7: the delivery notification to the CPIM sender, from
    /// the number the SMS went to.
    fn notify(&mut self, a: &Awaited, d: Delivery) {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_secs());
        let id = format!("{:016x}", crate::sip::hash::random_key()[0]);
        let body = imdn::notification(&a.requested, d, &a.recipient, &id, &imdn::rfc3339(secs));
        let to = a.requested.sender.clone();
        if let Some(t) = self.send_message(&to, &a.recipient, "message/cpim", &body) {
            self.notifying.insert(t, a.requested.message_id.clone());
        }
    }

    /// A MESSAGE this IWF sent has its final answer (`408`: none came).
    fn on_final(&mut self, id: TransactionId, code: u16) {
        if let Some(tx) = self.mo_pending.remove(&id) {
            let _ = tx.send(code);
        }
        if let Some(message_id) = self.notifying.remove(&id) {
            if code >= 300 {
                tracing::warn!(code, message_id, "delivery notification not delivered");
            }
        }
    }

    /// A pager-mode MESSAGE into the edge for `to`, asserted as `from`,
    /// with the CPM message feature tag: its client transaction, or
    /// `None` (logged) when it could not start.
    fn send_message(
        &mut self,
        to: &str,
        from: &str,
        ctype: &str,
        body: &str,
    ) -> Option<TransactionId> {
        self.counter += 1;
        let branch = self.txns.new_branch();
        let tag = format!("{:x}", crate::sip::hash::random_key()[0]);
        let req = format!(
            "MESSAGE {to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <{from}>;tag={tag}\r\nTo: <{to}>\r\n\
             Call-ID: iwf-{n}-{tag}@{ip}\r\nCSeq: 1 MESSAGE\r\nP-Asserted-Identity: <{from}>\r\n\
             Accept-Contact: *;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg\"\r\n\
             Content-Type: {ctype}\r\nContent-Length: {len}\r\n\r\n{body}",
            local = self.local,
            branch = String::from_utf8_lossy(branch.as_bytes()),
            n = self.counter,
            ip = self.local.ip(),
            len = body.len(),
        );
        let edge = *self.settings.edges.first()?;
        match self.txns.send_request(Instant::now(), req.as_bytes(), edge) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(error = ?e, to, "MESSAGE not sent");
                None
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
