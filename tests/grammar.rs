mod common;
use common::*;
use cpm_edge::route::process;

fn show(name: &str, msg: &[u8], src: &str) {
    let t = tables();
    let mut out = vec![0u8; 16384];
    let (o, m) = process(msg, false, src.parse().unwrap(), &t, &mut out);
    let len = o.send().map_or(0, |(l, _)| l);
    let s = String::from_utf8_lossy(&out[..len]).into_owned();
    let first = s.split("\r\n").next().unwrap_or("").to_string();
    println!("=== {name}: {o:?} defect={:?} | {first}", m.defect);
    if std::env::var("FULL").is_ok() { println!("{}", s.replace("\r\n", "⏎\n")); }
}

fn inv(extra: &str) -> String { String::from_utf8(invite_to_group("grp2", "alice", extra)).unwrap() }

#[test]
fn explore() {
    let c = "192.0.2.10:5062";
    let base = inv("");
    show("escaped ruri", base.replace("INVITE sip:grp2@groups.example.net", "INVITE sip:user%40x@example.net").as_bytes(), c);
    show("ruri headers", base.replace("INVITE sip:grp2@groups.example.net", "INVITE sip:bob@example.net;transport=udp;user=phone?Subject=hi&Priority=urgent").as_bytes(), c);
    show("sips", base.replace("INVITE sip:grp2@groups.example.net", "INVITE sips:bob@example.net").as_bytes(), c);
    show("tel ruri", base.replace("INVITE sip:grp2@groups.example.net", "INVITE tel:+15551234;phone-context=example.net").as_bytes(), c);
    show("tel from", base.replace("From: <sip:alice@example.net>", "From: <tel:+15551234>").as_bytes(), c);
    show("im ruri", base.replace("INVITE sip:grp2@groups.example.net", "INVITE im:bob@example.net").as_bytes(), c);
    show("http ruri", base.replace("INVITE sip:grp2@groups.example.net", "INVITE http://x/").as_bytes(), c);
    show("ipv6 via", base.replace("192.0.2.10:5062;branch", "[2001:db8::1]:5070;branch").as_bytes(), "[2001:db8::1]:5070");
    show("ipv6 via diff src", base.replace("192.0.2.10:5062;branch", "[2001:db8::1]:5070;branch").as_bytes(), "[2001:db8::2]:5071");
    show("ipv6 ruri", base.replace("INVITE sip:grp2@groups.example.net", "INVITE sip:bob@[2001:db8::1]:5070").as_bytes(), c);
    show("FOO", base.replace("INVITE", "FOO").as_bytes(), c);
    show("FOO ext hdr", base.replace("INVITE", "FOO").replace("Max-Forwards", "X-Foo: bar\r\nMax-Forwards").as_bytes(), c);
    for cl in ["99999999999999999999", "-1", "abc", "4294967296", "4294967295", "100000", "", " 0010", "1e3", "+5"] {
        show(&format!("CL {cl:?}"), base.replace("Content-Length: 237", &format!("Content-Length: {cl}")).as_bytes(), c);
    }
    show("trunc body", &base.as_bytes()[..base.len()-10], c);
    show("dup call-id", base.replace("CSeq", "i: other\r\nCSeq").as_bytes(), c);
    show("dup MF", base.replace("CSeq", "Max-Forwards: 70\r\nCSeq").as_bytes(), c);
    show("dup CL equal", base.replace("CSeq", "l: 237\r\nCSeq").as_bytes(), c);
    show("dup CL 3", base.replace("CSeq", "l: 237\r\nContent-Length: 237\r\nCSeq").as_bytes(), c);
    show("nul in hdr", base.replace("Call-ID: alice", "Call-ID: al\0ice").as_bytes(), c);
    show("nul in body", base.replace("s=-", "s=\0").as_bytes(), c);
    show("nul before start", format!("\0{base}").as_bytes(), c);
    show("no crlfcrlf", base.split("\r\n\r\n").next().unwrap().as_bytes(), c);
    show("no crlfcrlf +crlf", format!("{}\r\n", base.split("\r\n\r\n").next().unwrap()).as_bytes(), c);
    show("leading crlf", format!("\r\n\r\n{base}").as_bytes(), c);
    show("leading sp", format!("  {base}").as_bytes(), c);
    show("spaces colon", base.replace("Call-ID: ", "Call-ID \t :   ").replace("Via: ", "Via\t: ").as_bytes(), c);
    show("odd case", base.replace("Call-ID:", "cALL-iD:").replace("Via:", "vIA:").replace("CSeq:", "cseq:").replace("Max-Forwards:", "max-FORWARDS:").as_bytes(), c);
    show("compact mix", base.replace("Call-ID:", "i:").replace("From:", "f:").replace("Content-Length:", "l:").as_bytes(), c);
    show("folded route", base.replace("Max-Forwards", "Route: <sip:127.0.0.1:5060;lr>,\r\n <sip:127.0.0.1:5090;lr>\r\nMax-Forwards").as_bytes(), c);
    show("route lr=on", base.replace("Max-Forwards", "Route: <sip:127.0.0.1:5060;lr=on>\r\nMax-Forwards").as_bytes(), c);
    for mf in ["0", "1", "255", "256", "4294967295", "4294967296", "-1", "", "7 0"] {
        show(&format!("MF {mf:?}"), base.replace("Max-Forwards: 70", &format!("Max-Forwards: {mf}")).as_bytes(), c);
    }
    for cs in ["2147483647 INVITE", "2147483648 INVITE", "4294967296 INVITE", "0 INVITE", "1", "1 INVITE x", "1  INVITE", "01 INVITE", "1\tINVITE"] {
        show(&format!("CSeq {cs:?}"), base.replace("CSeq: 1 INVITE", &format!("CSeq: {cs}")).as_bytes(), c);
    }
    let big = "x".repeat(8192);
    show("8k hdr", base.replace("Max-Forwards", &format!("X-Big: {big}\r\nMax-Forwards")).as_bytes(), c);
    let big = "x".repeat(16000);
    show("16k hdr", base.replace("Max-Forwards", &format!("X-Big: {big}\r\nMax-Forwards")).as_bytes(), c);
}

fn fwd(msg: &[u8]) -> String {
    let t = tables();
    let mut out = vec![0u8; 16384];
    let (o, _) = process(msg, false, "192.0.2.10:5062".parse().unwrap(), &t, &mut out);
    let len = o.send().unwrap().0;
    String::from_utf8_lossy(&out[..len]).into_owned()
}

#[test]
fn explore_resp() {
    let f = fwd(&invite_to_group("grp2", "alice", ""));
    let vias = header(&f, "Via");
    let ours = vias[0].trim_start_matches("Via: ");
    let theirs = vias[1].trim_start_matches("Via: ");
    let rest = "From: <sip:alice@example.net>;tag=a73kszlfl\r\nTo: <sip:grp2@groups.example.net>;tag=x\r\nCall-ID: alice-call-1@192.0.2.10\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let cs = "127.0.0.1:7004";
    show("resp one line", format!("SIP/2.0 200 OK\r\nVia: {ours}, {theirs}\r\n{rest}").as_bytes(), cs);
    show("resp one line nospace", format!("SIP/2.0 200 OK\r\nVia: {ours},{theirs}\r\n{rest}").as_bytes(), cs);
    show("resp folded", format!("SIP/2.0 200 OK\r\nv: {ours} ,\r\n  {theirs}\r\n{rest}").as_bytes(), cs);
    show("resp 3 in line", format!("SIP/2.0 180 Ringing\r\nVia: {ours}, {theirs}, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx\r\n{rest}").as_bytes(), cs);
    let t6 = "SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bKa;rport=5071;received=[2001:db8::2]";
    show("resp v6 bracket recv", format!("SIP/2.0 200 OK\r\nVia: {ours}\r\nVia: {t6}\r\n{rest}").as_bytes(), cs);
    let t6 = "SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bKa;rport=5071;received=2001:db8::2";
    show("resp v6 recv", format!("SIP/2.0 200 OK\r\nVia: {ours}\r\nVia: {t6}\r\n{rest}").as_bytes(), cs);
    show("resp leading crlf", format!("\r\n\r\nSIP/2.0 200 OK\r\nVia: {ours}\r\nVia: {theirs}\r\n{rest}").as_bytes(), cs);
    show("resp not ours", format!("SIP/2.0 200 OK\r\nVia: {theirs}\r\nVia: {ours}\r\n{rest}").as_bytes(), cs);
    show("resp only ours", format!("SIP/2.0 200 OK\r\nVia: {ours}\r\n{rest}").as_bytes(), cs);
    show("resp bad cl", format!("SIP/2.0 200 OK\r\nVia: {ours}\r\nVia: {theirs}\r\n{}", rest.replace("Length: 0", "Length: x")).as_bytes(), cs);
    show("resp code 700", format!("SIP/2.0 700 OK\r\nVia: {ours}\r\nVia: {theirs}\r\n{rest}").as_bytes(), cs);
    show("resp SIP/3.0", format!("SIP/3.0 200 OK\r\nVia: {ours}\r\nVia: {theirs}\r\n{rest}").as_bytes(), cs);
}

#[test]
fn explore_edits() {
    use cpm_edge::route::{decide, write};
    use cpm_edge::sip::scan::scan;
    let t = tables();
    let r = "Route: <sip:127.0.0.1:5060;lr>\r\n".repeat(4);
    let msg = String::from_utf8(invite_to_group("grp2", "alice", "Content-Length: 237\r\n")).unwrap().replace("Max-Forwards", &format!("{r}Max-Forwards"));
    let src = "198.51.100.7:5062".parse().unwrap();
    let m = scan(msg.as_bytes());
    println!("{:?}", m.defect);
    let d = decide(msg.as_bytes(), &m, src, &t);
    println!("{d:?}");
    let mut out = vec![0u8; 16384];
    let o = write(msg.as_bytes(), &m, d, src, &t, Some(b"v=0\r\n"), &mut out);
    println!("{o:?}");
}
