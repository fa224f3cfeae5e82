//! The SMS gateway's side of the Interworking Function: Kannel's smsbox
//! `sendsms` HTTP interface (hyper's HTTP/1 client on a current-thread
//! tokio runtime of its own thread, as the CS's group sync does), fed by a
//! bounded queue from the SIP thread and answering on another.

use crate::iwf::sms::Coding;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::time::Duration;

/// Where and as whom the IWF submits (Kannel `sendsms-user`).
#[derive(Clone, Debug)]
pub struct Gateway {
    pub addr: SocketAddr,
    /// `/cgi-bin/sendsms` by Kannel's default.
    pub path: String,
    pub username: String,
    pub password: String,
    pub timeout: Duration,
}

/// One SMS to submit, and the SIP transaction waiting for the outcome.
#[derive(Clone, Debug)]
pub struct Submit<K> {
    pub key: K,
    pub from: String,
    pub to: String,
    pub text: String,
    pub coding: Coding,
    /// The delivery reports wanted: Kannel's `dlr-mask` and the `dlr-url`
    /// it calls (with `%d`, the report type, in it).
    pub report: Option<(u32, String)>,
}

/// What became of a submission, as the SIP answer says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Kannel took it (`0: Accepted for delivery`, `3: Queued for later
    /// delivery`).
    Accepted,
    /// Kannel refused it: its status and its words.
    Refused(u16, String),
    /// No answer in time, or no connection.
    Unreachable(String),
}

/// The gateway thread: submissions in, outcomes out, until `jobs` closes.
pub fn run<K: Send + 'static>(
    g: Gateway,
    jobs: Receiver<Submit<K>>,
    done: Sender<(K, Outcome)>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("iwf-kannel".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                tracing::error!("no runtime for the SMS gateway client");
                return;
            };
            for job in jobs {
                let outcome = rt.block_on(submit(&g, &job));
                if done.send((job.key, outcome)).is_err() {
                    break;
                }
            }
        })
}

/// The `sendsms` query for `s` (UTF-8 text; Kannel recodes it for the
/// coding asked).
pub fn query<K>(g: &Gateway, s: &Submit<K>) -> String {
    let coding = match s.coding {
        Coding::Gsm7 => "0",
        Coding::Ucs2 => "2",
    };
    let report = s.report.as_ref().map_or(String::new(), |(mask, url)| {
        format!("&dlr-mask={mask}&dlr-url={}", encode(url))
    });
    format!(
        "{}?username={}&password={}&from={}&to={}&charset=UTF-8&coding={coding}&text={}{report}",
        g.path,
        encode(&g.username),
        encode(&g.password),
        encode(&s.from),
        encode(&s.to),
        encode(&s.text)
    )
}

/// Percent-encode all but RFC 3986's unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn submit<K>(g: &Gateway, s: &Submit<K>) -> Outcome {
    match tokio::time::timeout(g.timeout, get(g, &query(g, s))).await {
        Ok(Ok((status, body))) => judge(status, &body),
        Ok(Err(e)) => Outcome::Unreachable(e),
        Err(_) => Outcome::Unreachable(format!("no answer in {:?}", g.timeout)),
    }
}

/// Kannel answers 202 with `0: Accepted for delivery` or `3: Queued for
/// later delivery`; anything else is a refusal in its words.
fn judge(status: u16, body: &str) -> Outcome {
    let b = body.trim();
    if (200..300).contains(&status) && (b.starts_with("0:") || b.starts_with("3:")) {
        Outcome::Accepted
    } else {
        Outcome::Refused(status, b.chars().take(80).collect())
    }
}

async fn get(g: &Gateway, path: &str) -> Result<(u16, String), String> {
    let stream = tokio::net::TcpStream::connect(g.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", g.addr))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("GET")
        .uri(path)
        .header("host", g.addr.to_string())
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_encodes_every_field_and_kannels_words_are_judged() {
        let g = Gateway {
            addr: "127.0.0.1:13013".parse().unwrap(),
            path: "/cgi-bin/sendsms".into(),
            username: "iwf".into(),
            password: "p&w=1".into(),
            timeout: Duration::from_secs(2),
        };
        let mut s = Submit {
            key: (),
            from: "+447700900999".into(),
            to: "+447700900123".into(),
            text: "hé & bye".into(),
            coding: Coding::Ucs2,
            report: None,
        };
        assert_eq!(
            query(&g, &s),
            "/cgi-bin/sendsms?username=iwf&password=p%26w%3D1&from=%2B447700900999\
             &to=%2B447700900123&charset=UTF-8&coding=2&text=h%C3%A9%20%26%20bye"
        );
        s.report = Some((19, "http://127.0.0.1:5091/dlr?k=ab&type=%d".into()));
        assert!(query(&g, &s).ends_with(
            "&dlr-mask=19&dlr-url=http%3A%2F%2F127.0.0.1%3A5091%2Fdlr%3Fk%3Dab%26type%3D%25d"
        ));
        assert_eq!(judge(202, "0: Accepted for delivery"), Outcome::Accepted);
        assert_eq!(
            judge(202, "3: Queued for later delivery"),
            Outcome::Accepted
        );
        assert_eq!(
            judge(403, "Authorization failed for sendsms"),
            Outcome::Refused(403, "Authorization failed for sendsms".into())
        );
    }
}
