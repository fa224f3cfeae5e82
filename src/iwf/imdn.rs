//! Delivery reports as IMDN (RFC 5438), sans-IO: what a CPM sender asked
//! for in its CPIM headers ([`requested`]), what an SMS gateway's report
//! says ([`Delivery::of_kannel`]) and the delivery notification the
//! sender gets back ([`notification`]), and the table of reports awaited
//! between the two ([`Reports`]).
//!
//! The IWF is the last hop that knows the message: the SMSC reports to
//! the gateway, the gateway to the IWF, and the IWF, as the recipient's
//! side (RFC 5438 §7, an "IMDN-capable" intermediary acting for a
//! recipient that has none), sends the notification to the CPIM `From`.

/// What the sender asked to be told (RFC 5438 §5: the
/// `imdn.Disposition-Notification` values `positive-delivery` and
/// `negative-delivery`; `display` means nothing to SMS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requested {
    /// The original `imdn.Message-ID`, echoed in the notification.
    pub message_id: String,
    pub positive: bool,
    pub negative: bool,
    /// The CPIM `From` URI: where the notification goes.
    pub sender: String,
    /// The CPIM `To` URI, the recipient the sender named.
    pub recipient: Option<String>,
    /// The original `DateTime`, echoed as `<datetime>` (§7.2.1.1).
    pub datetime: Option<String>,
}

/// Longest Message-ID, URI or date kept: a report is a table entry, and
/// the notification a datagram.
const MAX_FIELD: usize = 256;

/// RFC 5438's requests in a CPIM message's header block (`head`, up to
/// its blank line). `None`: no delivery notification wanted, or no way to
/// send one (no Message-ID, no sender URI, or a field beyond bounds).
pub fn requested(head: &[u8]) -> Option<Requested> {
    let field = |name: &[u8]| {
        header(head, name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .filter(|v| !v.is_empty() && v.len() <= MAX_FIELD)
    };
    let wanted = field(b"imdn.Disposition-Notification")?;
    let has = |token: &str| {
        wanted
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let (positive, negative) = (has("positive-delivery"), has("negative-delivery"));
    if !positive && !negative {
        return None;
    }
    Some(Requested {
        message_id: field(b"imdn.Message-ID")?.to_string(),
        positive,
        negative,
        sender: field(b"From").and_then(angle_uri)?.to_string(),
        recipient: field(b"To").and_then(angle_uri).map(str::to_string),
        datetime: field(b"DateTime").map(str::to_string),
    })
}

/// The value of the first header `name` in a header block.
pub fn header<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    head.split(|&c| c == b'\n').find_map(|l| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        let colon = l.iter().position(|&c| c == b':')?;
        l[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(name)
            .then(|| l[colon + 1..].trim_ascii())
    })
}

/// The URI of a CPIM address (`Name <uri>`, RFC 3862 §3.3); one with no
/// scheme is no address.
fn angle_uri(v: &str) -> Option<&str> {
    let open = v.find('<')?;
    let close = open + v[open..].find('>')?;
    let uri = v[open + 1..close].trim();
    (uri.contains(':') && !uri.contains(|c: char| c.is_whitespace() || c == '"')).then_some(uri)
}

/// A final delivery outcome (RFC 5438 §7.2.1.1's `<delivered/>` and
/// `<failed/>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    Failed,
}

/// Kannel's `dlr-mask` bits (its `gw/dlr.h`): delivered to the phone,
/// not delivered to the phone, buffered at the SMSC, taken by the SMSC,
/// refused by the SMSC.
pub const KANNEL_DELIVERED: u32 = 1;
pub const KANNEL_NOT_DELIVERED: u32 = 2;
pub const KANNEL_BUFFERED: u32 = 4;
pub const KANNEL_SMSC_SUCCESS: u32 = 8;
pub const KANNEL_SMSC_FAIL: u32 = 16;

impl Delivery {
    /// What a Kannel report (`%d` in its `dlr-url`) says. `None`: not
    /// final (buffered, or only taken by the SMSC), or no report type.
    pub fn of_kannel(kind: u32) -> Option<Delivery> {
        if kind & KANNEL_DELIVERED != 0 {
            Some(Delivery::Delivered)
        } else if kind & (KANNEL_NOT_DELIVERED | KANNEL_SMSC_FAIL) != 0 {
            Some(Delivery::Failed)
        } else {
            None
        }
    }

    fn element(self) -> &'static str {
        match self {
            Delivery::Delivered => "<delivered/>",
            Delivery::Failed => "<failed/>",
        }
    }
}

impl Requested {
    /// The `dlr-mask` that asks Kannel for exactly the reports wanted: a
    /// refusal by the SMSC is a failure too.
    pub fn kannel_mask(&self) -> u32 {
        let mut m = 0;
        if self.positive {
            m |= KANNEL_DELIVERED;
        }
        if self.negative {
            m |= KANNEL_NOT_DELIVERED | KANNEL_SMSC_FAIL;
        }
        m
    }

    /// Whether `d` is something the sender asked to hear.
    pub fn wants(&self, d: Delivery) -> bool {
        match d {
            Delivery::Delivered => self.positive,
            Delivery::Failed => self.negative,
        }
    }
}

/// The `message/cpim` body of the delivery notification for `r` (RFC
/// 5438 §7.1.1: CPIM headers with a fresh `imdn.Message-ID`, then a
/// `message/imdn+xml` part with `Content-Disposition: notification`).
/// `from` is the recipient as the SMS reached it (`tel:+...`), `id` the
/// notification's own Message-ID, `now` an RFC 3339 time.
pub fn notification(r: &Requested, d: Delivery, from: &str, id: &str, now: &str) -> String {
    let original = r
        .recipient
        .as_deref()
        .map(|u| {
            format!(
                "<original-recipient-uri>{}</original-recipient-uri>",
                xml(u)
            )
        })
        .unwrap_or_default();
    let xml_doc = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n\
         <imdn xmlns=\"urn:ietf:params:xml:ns:imdn\">\
         <message-id>{id0}</message-id><datetime>{dt}</datetime>\
         <recipient-uri>{from_x}</recipient-uri>{original}\
         <delivery-notification><status>{status}</status></delivery-notification></imdn>",
        id0 = xml(&r.message_id),
        dt = xml(r.datetime.as_deref().unwrap_or(now)),
        from_x = xml(from),
        status = d.element(),
    );
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nNS: imdn <urn:ietf:params:imdn>\r\n\
         imdn.Message-ID: {id}\r\nDateTime: {now}\r\n\r\n\
         Content-Type: message/imdn+xml\r\nContent-Disposition: notification\r\n\
         Content-Length: {len}\r\n\r\n{xml_doc}",
        to = r.sender,
        len = xml_doc.len(),
    )
}

/// XML character data with its five specials escaped.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// `secs` since the Unix epoch as an RFC 3339 UTC time
/// (`2026-12-02T18:00:00Z`), by the proleptic Gregorian calendar (days to
/// civil date as in H. Hinnant's `civil_from_days`).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// A delivery report awaited for one submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Awaited {
    pub requested: Requested,
    /// The number the SMS went to (`tel:+...`): the notification's sender.
    pub recipient: String,
    /// The gateway has taken the submission (its answer came).
    accepted: bool,
    /// A final report that came before the gateway's answer.
    early: Option<Delivery>,
}

/// What a report from the gateway comes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard {
    /// A token never issued, or forgotten (expired, already final): a
    /// forged or late report changes nothing.
    Unknown,
    /// Known, and not yet final (or final before the gateway's answer:
    /// it acts once the submission is accepted).
    Noted,
    /// Final, and the sender asked to hear it.
    Notify(Awaited, Delivery),
    /// Final, and the sender did not ask to hear it.
    Unwanted,
}

/// Why no report can be awaited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("delivery reports table full ({0} awaited)")]
    Bound(usize),
}

/// The delivery reports awaited, by token, with one time to live for all
/// (so the deadlines queue, in the order given, has its oldest first),
/// bounded. Sans-IO: tokens and times come from the caller.
#[derive(Debug)]
pub struct Reports {
    awaited: std::collections::HashMap<String, Awaited>,
    deadlines: std::collections::VecDeque<(std::time::Instant, String)>,
    bound: usize,
    ttl: std::time::Duration,
}

impl Reports {
    pub fn new(bound: usize, ttl: std::time::Duration) -> Reports {
        assert!(bound > 0, "a table that holds nothing awaits nothing");
        Reports {
            awaited: std::collections::HashMap::new(),
            deadlines: std::collections::VecDeque::new(),
            bound,
            ttl,
        }
    }

    pub fn len(&self) -> usize {
        self.awaited.len()
    }

    pub fn is_empty(&self) -> bool {
        self.awaited.is_empty()
    }

    pub fn contains(&self, token: &str) -> bool {
        self.awaited.contains_key(token)
    }

    /// Await the report for a submission under `token` (unique: the
    /// caller draws it at random).
    pub fn open(
        &mut self,
        now: std::time::Instant,
        token: String,
        requested: Requested,
        recipient: String,
    ) -> Result<(), Full> {
        if self.awaited.len() >= self.bound {
            return Err(Full::Bound(self.bound));
        }
        let a = Awaited {
            requested,
            recipient,
            accepted: false,
            early: None,
        };
        let fresh = self.awaited.insert(token.clone(), a).is_none();
        debug_assert!(fresh, "tokens are unique");
        self.deadlines.push_back((now + self.ttl, token));
        Ok(())
    }

    /// The gateway took the submission: a final report that came first
    /// acts now.
    pub fn accepted(&mut self, token: &str) -> Heard {
        let Some(a) = self.awaited.get_mut(token) else {
            return Heard::Unknown;
        };
        a.accepted = true;
        match a.early {
            Some(d) => self.finish(token, d),
            None => Heard::Noted,
        }
    }

    /// The gateway refused the submission: the sender hears that in the
    /// SIP answer, and no report is awaited.
    pub fn refused(&mut self, token: &str) {
        self.awaited.remove(token);
    }

    /// A report of type `kind` (Kannel's `%d`) for `token`.
    pub fn report(&mut self, token: &str, kind: u32) -> Heard {
        let Some(a) = self.awaited.get_mut(token) else {
            return Heard::Unknown;
        };
        match Delivery::of_kannel(kind) {
            None => Heard::Noted,
            Some(d) if !a.accepted => {
                // Kannel may report before its HTTP answer is read.
                a.early = Some(d);
                Heard::Noted
            }
            Some(d) => self.finish(token, d),
        }
    }

    fn finish(&mut self, token: &str, d: Delivery) -> Heard {
        match self.awaited.remove(token) {
            Some(a) if a.requested.wants(d) => Heard::Notify(a, d),
            Some(_) => Heard::Unwanted,
            None => Heard::Unknown,
        }
    }

    /// Forget what is past its deadline; how many were forgotten.
    pub fn expire(&mut self, now: std::time::Instant) -> usize {
        let mut n = 0;
        while self.deadlines.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, token)) = self.deadlines.pop_front() {
                n += usize::from(self.awaited.remove(&token).is_some());
            }
        }
        // Entries finished early leave their deadline behind; it goes
        // when due, so the queue stays within bound + what finished
        // within one TTL.
        debug_assert!(self.awaited.len() <= self.deadlines.len());
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "From: Alice <sip:alice@example.net>\r\nTo: <sip:erin@example.net>\r\n\
                        NS: imdn <urn:ietf:params:imdn>\r\nimdn.Message-ID: 34jk324j\r\n\
                        DateTime: 2026-12-02T15:00:00Z\r\n\
                        imdn.Disposition-Notification: positive-delivery, Negative-Delivery";

    #[test]
    fn the_request_is_read_from_the_cpim_headers_and_what_cannot_be_answered_is_none() {
        let r = requested(HEAD.as_bytes()).unwrap();
        assert_eq!(
            r,
            Requested {
                message_id: "34jk324j".into(),
                positive: true,
                negative: true,
                sender: "sip:alice@example.net".into(),
                recipient: Some("sip:erin@example.net".into()),
                datetime: Some("2026-12-02T15:00:00Z".into()),
            }
        );
        assert_eq!(r.kannel_mask(), 1 | 2 | 16);
        let only = |v: &str| {
            requested(
                HEAD.replace("positive-delivery, Negative-Delivery", v)
                    .as_bytes(),
            )
        };
        assert_eq!(only("negative-delivery").unwrap().kannel_mask(), 2 | 16);
        assert!(!only("negative-delivery")
            .unwrap()
            .wants(Delivery::Delivered));
        assert_eq!(only("display"), None, "nothing SMS can report");
        let without = |h: &str| {
            let kept: Vec<&str> = HEAD.split("\r\n").filter(|l| !l.starts_with(h)).collect();
            requested(kept.join("\r\n").as_bytes())
        };
        assert_eq!(without("imdn.Message-ID"), None);
        assert_eq!(without("From"), None, "nowhere to send it");
        assert_eq!(without("DateTime").unwrap().datetime, None);
        let no_uri = HEAD.replace("Alice <sip:alice@example.net>", "alice");
        assert_eq!(requested(no_uri.as_bytes()), None);
        let long = HEAD.replace("34jk324j", &"x".repeat(MAX_FIELD + 1));
        assert_eq!(requested(long.as_bytes()), None);
    }

    #[test]
    fn kannel_reports_map_to_final_outcomes_or_to_nothing() {
        assert_eq!(Delivery::of_kannel(1), Some(Delivery::Delivered));
        assert_eq!(Delivery::of_kannel(2), Some(Delivery::Failed));
        assert_eq!(Delivery::of_kannel(16), Some(Delivery::Failed));
        assert_eq!(Delivery::of_kannel(4), None, "buffered is not final");
        assert_eq!(
            Delivery::of_kannel(8),
            None,
            "taken by the SMSC is not final"
        );
        assert_eq!(Delivery::of_kannel(0), None);
    }

    #[test]
    fn the_notification_is_cpim_around_imdn_xml_with_the_original_id() {
        let mut r = requested(HEAD.as_bytes()).unwrap();
        r.message_id = "a<b&c".into();
        let n = notification(
            &r,
            Delivery::Failed,
            "tel:+447700900123",
            "n1",
            "2026-12-02T18:00:00Z",
        );
        let (cpim, rest) = n.split_once("\r\n\r\n").unwrap();
        assert!(cpim.starts_with("From: <tel:+447700900123>\r\nTo: <sip:alice@example.net>\r\n"));
        assert!(cpim.contains("imdn.Message-ID: n1\r\n"));
        let (mime, doc) = rest.split_once("\r\n\r\n").unwrap();
        assert!(mime.contains("Content-Type: message/imdn+xml"));
        assert!(mime.contains("Content-Disposition: notification"));
        assert!(mime.ends_with(&format!("Content-Length: {}", doc.len())));
        assert!(
            doc.contains("<message-id>a&lt;b&amp;c</message-id>"),
            "{doc}"
        );
        assert!(doc.contains("<datetime>2026-12-02T15:00:00Z</datetime>"));
        assert!(
            doc.contains("<original-recipient-uri>sip:erin@example.net</original-recipient-uri>")
        );
        assert!(doc.contains("<status><failed/></status>"));
    }

    fn table() -> (Reports, std::time::Instant) {
        (
            Reports::new(2, std::time::Duration::from_secs(60)),
            std::time::Instant::now(),
        )
    }

    #[test]
    fn a_final_report_notifies_once_and_only_what_was_asked() {
        let (mut t, now) = table();
        let r = requested(HEAD.as_bytes()).unwrap();
        t.open(now, "k1".into(), r.clone(), "tel:+1".into())
            .unwrap();
        assert_eq!(t.accepted("k1"), Heard::Noted);
        assert_eq!(t.report("k1", KANNEL_SMSC_SUCCESS), Heard::Noted);
        match t.report("k1", KANNEL_NOT_DELIVERED) {
            Heard::Notify(a, Delivery::Failed) => assert_eq!(a.recipient, "tel:+1"),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.report("k1", KANNEL_DELIVERED), Heard::Unknown, "once");
        assert_eq!(t.report("forged", KANNEL_DELIVERED), Heard::Unknown);
        let positive_only = Requested {
            negative: false,
            ..r
        };
        t.open(now, "k2".into(), positive_only, "tel:+2".into())
            .unwrap();
        t.accepted("k2");
        assert_eq!(t.report("k2", KANNEL_SMSC_FAIL), Heard::Unwanted);
        assert!(t.is_empty());
    }

    #[test]
    fn a_report_before_the_gateways_answer_waits_for_it_and_a_refusal_drops_it() {
        let (mut t, now) = table();
        let r = requested(HEAD.as_bytes()).unwrap();
        t.open(now, "k1".into(), r.clone(), "tel:+1".into())
            .unwrap();
        assert_eq!(t.report("k1", KANNEL_DELIVERED), Heard::Noted);
        assert!(matches!(
            t.accepted("k1"),
            Heard::Notify(_, Delivery::Delivered)
        ));
        // Kannel refuses an unroutable number and reports it (16) too:
        // the refusal is the sender's answer, the report nothing.
        t.open(now, "k2".into(), r, "tel:+2".into()).unwrap();
        assert_eq!(t.report("k2", KANNEL_SMSC_FAIL), Heard::Noted);
        t.refused("k2");
        assert_eq!(t.accepted("k2"), Heard::Unknown);
        assert!(t.is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_forgets_at_the_deadline() {
        let (mut t, now) = table();
        let r = requested(HEAD.as_bytes()).unwrap();
        t.open(now, "a".into(), r.clone(), "tel:+1".into()).unwrap();
        t.open(now, "b".into(), r.clone(), "tel:+1".into()).unwrap();
        assert_eq!(
            t.open(now, "c".into(), r.clone(), "tel:+1".into()),
            Err(Full::Bound(2))
        );
        t.refused("a");
        assert_eq!(t.expire(now + std::time::Duration::from_secs(59)), 0);
        assert_eq!(t.expire(now + std::time::Duration::from_secs(60)), 1);
        assert!(t.is_empty());
        t.open(now, "c".into(), r, "tel:+1".into()).unwrap();
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn rfc3339_times_follow_the_calendar() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_255_999), "2026-12-02T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
    }
}
