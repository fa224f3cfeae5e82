//! Realistic CPM messages and a table snapshot shared by the tests.
#![allow(dead_code)]

use cpm_edge::config::Config;
use cpm_edge::route::Tables;

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
    Tables::from_config(
        &Config::default_embedded()
            .validate()
            .expect("default config"),
    )
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
    Tables::from_config(
        &Config::parse(&text)
            .expect("toml")
            .validate()
            .expect("valid"),
    )
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
