//! SMS → CPM (seed 5.3.2): Kannel's smsbox delivers a mobile-originated
//! SMS to its `sms-service` `get-url`, here (`GET /mo?from=&to=&text=`);
//! the IWF converts it into a CPM pager-mode MESSAGE for the subscriber
//! the number belongs to and sends it into the system through the edge
//! (which routes an IWF's request to the invited user's PF). The HTTP
//! answer waits for the SIP one: `200` once a device took it, `502` with
//! the SIP status otherwise, `404` for a number no subscriber has.
//!
//! Delivery reports (RFC 5438 through Kannel's `dlr-url`): `GET
//! /dlr?k=TOKEN&type=N` for a submission that asked for them; the SIP
//! thread turns a final one into the sender's IMDN. `200` for a report it
//! knew, `404` for a token it never issued or has forgotten (a forged or
//! expired report changes nothing).

use bytes::Bytes;
use crossbeam_channel::Sender;
use http_body_util::Full;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// One converted SMS for the SIP thread, and where its outcome goes.
pub struct Mo {
    /// The sender's number (E.164).
    pub from: String,
    /// The CPM subscriber's URI.
    pub to: String,
    pub text: String,
    /// The final SIP status of the MESSAGE (408 when none came).
    pub done: tokio::sync::oneshot::Sender<u16>,
}

/// A delivery report from the gateway, and whether the SIP thread knew
/// its token.
pub struct Report {
    pub token: String,
    /// Kannel's report type (`%d`: 1 delivered, 2 not delivered, 4
    /// buffered, 8 taken by the SMSC, 16 refused by the SMSC).
    pub kind: u32,
    pub known: tokio::sync::oneshot::Sender<bool>,
}

/// What the gateway's HTTP calls bring the SIP thread.
pub enum Inbound {
    Sms(Mo),
    Report(Report),
}

/// What the HTTP side needs: the subscribers by number, the way to the
/// SIP thread, how long to wait for it.
pub struct MoSide {
    pub subscribers: HashMap<String, String>,
    pub to_sip: Sender<Inbound>,
    pub wait: Duration,
}

/// Serve `GET /mo` on `listen` until the process ends (a thread of its
/// own with a current-thread runtime).
pub fn start(listen: SocketAddr, side: MoSide) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(listen)?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    let side = Arc::new(side);
    std::thread::Builder::new()
        .name("iwf-mo".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                tracing::error!("no runtime for the MO interface");
                return;
            };
            rt.block_on(accept(std_listener, side));
        })?;
    Ok(bound)
}

async fn accept(l: std::net::TcpListener, side: Arc<MoSide>) {
    let Ok(l) = tokio::net::TcpListener::from_std(l) else {
        tracing::error!("MO listener not usable");
        return;
    };
    loop {
        let Ok((stream, _)) = l.accept().await else {
            continue;
        };
        let side = Arc::clone(&side);
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let svc = hyper::service::service_fn(move |req| {
                let side = Arc::clone(&side);
                async move { Ok::<_, std::convert::Infallible>(handle(&side, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

fn reply(status: u16, text: &str) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(format!("{text}\n"))))
        .unwrap_or_default()
}

async fn handle<B>(side: &MoSide, req: http::Request<B>) -> http::Response<Full<Bytes>> {
    let q = query_pairs(req.uri().query().unwrap_or(""));
    match (req.method() == http::Method::GET, req.uri().path()) {
        (true, "/mo") => sms(side, &q).await,
        (true, "/dlr") => report(side, &q).await,
        _ => reply(404, "not found: GET /mo?from=&to=&text= or /dlr?k=&type="),
    }
}

/// A delivery report: its token and type, to the SIP thread.
async fn report(side: &MoSide, q: &HashMap<String, String>) -> http::Response<Full<Bytes>> {
    let (Some(token), Some(kind)) = (q.get("k"), q.get("type").and_then(|t| t.parse().ok())) else {
        return reply(400, "k and a numeric type are required");
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let r = Report {
        token: token.clone(),
        kind,
        known: tx,
    };
    if side.to_sip.try_send(Inbound::Report(r)).is_err() {
        return reply(503, "IWF queue full");
    }
    match tokio::time::timeout(side.wait, rx).await {
        Ok(Ok(true)) => reply(200, "reported"),
        Ok(Ok(false)) => reply(404, "no such report"),
        _ => reply(504, "no answer from the SIP side in time"),
    }
}

/// A mobile-originated SMS: checked, then to the SIP thread.
async fn sms(side: &MoSide, q: &HashMap<String, String>) -> http::Response<Full<Bytes>> {
    let (Some(from), Some(to), Some(text)) = (q.get("from"), q.get("to"), q.get("text")) else {
        return reply(400, "from, to and text are required");
    };
    let Some(from) = crate::iwf::sms::msisdn_of(&format!("tel:{from}")) else {
        return reply(400, "from is no E.164 number");
    };
    let Some(to_num) = crate::iwf::sms::msisdn_of(&format!("tel:{to}")) else {
        return reply(400, "to is no E.164 number");
    };
    let Some(user) = side.subscribers.get(&to_num) else {
        return reply(404, "no CPM subscriber has this number");
    };
    if text.is_empty() {
        return reply(400, "empty text");
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mo = Mo {
        from,
        to: user.clone(),
        text: text.clone(),
        done: tx,
    };
    if side.to_sip.try_send(Inbound::Sms(mo)).is_err() {
        return reply(503, "IWF queue full");
    }
    match tokio::time::timeout(side.wait, rx).await {
        Ok(Ok(code)) if (200..300).contains(&code) => reply(200, "delivered"),
        Ok(Ok(code)) => reply(502, &format!("not delivered: SIP {code}")),
        _ => reply(504, "no SIP answer in time"),
    }
}

/// `application/x-www-form-urlencoded` pairs (`+` is a space).
pub fn query_pairs(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Percent-decoding into UTF-8; `None` for a broken escape or bytes that
/// are not UTF-8.
pub fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_decodes_and_a_broken_escape_is_no_pair() {
        let q = query_pairs("from=%2B447700900999&to=%2B447700900123&text=hi+there+%E2%82%AC");
        assert_eq!(q["from"], "+447700900999");
        assert_eq!(q["text"], "hi there €");
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%ff"), None, "not UTF-8");
        assert_eq!(decode("a%2"), None);
    }
}
