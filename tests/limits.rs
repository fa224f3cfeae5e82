//! Flood protection over real sockets: per-source rate limits (reply and
//! drop modes, shards and allow-listed sources exempt) and overload shedding
//! of new INVITEs while in-dialog traffic keeps flowing.

mod common;
use common::*;
use cpm_edge::app::App;
use cpm_edge::config::Config;
use cpm_edge::route::{process_admitted, ForwardKind, Outcome};
use std::collections::HashSet;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

fn app(shards: &[UdpSocket], extra: &str) -> App {
    let mut toml = format!("[listen]\naddr = \"127.0.0.1:{}\"\n[admin]\nbind = \"\"\n[health]\nenabled = false\n[workers]\ncount = 1\n{extra}\n", free_port());
    for (i, s) in shards.iter().enumerate() {
        toml += &format!(
            "[[shard]]\nname = \"cs{}\"\naddr = \"{}\"\n",
            i + 1,
            s.local_addr().unwrap()
        );
    }
    App::start(&Config::parse(&toml).unwrap().validate().unwrap()).unwrap()
}

fn invite(from: &UdpSocket, n: usize) -> Vec<u8> {
    String::from_utf8(invite_to_group("grp1", &format!("u{n}"), ""))
        .unwrap()
        .replace("192.0.2.10:5062", &from.local_addr().unwrap().to_string())
        .replace(&format!("u{n}-call-1@192.0.2.10"), &format!("lim-{n}"))
        .into_bytes()
}

/// Collect Call-IDs arriving at the shards and the client until `n` are accounted for.
fn collect(shards: &[UdpSocket], client: &UdpSocket, n: usize) -> (HashSet<String>, Vec<String>) {
    let mut fwd = HashSet::new();
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 65536];
    for s in shards.iter().chain([client]) {
        s.set_nonblocking(true).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = Instant::now();
    // Stop when all are accounted for, or nothing more came for 500 ms
    // (drop mode: the rest never arrives).
    while fwd.len() + answers.len() < n
        && Instant::now() < deadline
        && last.elapsed() < Duration::from_millis(500)
    {
        let mut idle = true;
        for s in shards {
            while let Ok((len, _)) = s.recv_from(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..len]).into_owned();
                fwd.insert(header(&m, "Call-ID")[0].to_string());
                idle = false;
            }
        }
        while let Ok((len, _)) = client.recv_from(&mut buf) {
            answers.push(String::from_utf8_lossy(&buf[..len]).into_owned());
            idle = false;
        }
        if idle {
            std::thread::sleep(Duration::from_millis(2));
        } else {
            last = Instant::now();
        }
    }
    (fwd, answers)
}

#[test]
fn a_source_over_its_rate_gets_503_and_shards_are_exempt() {
    let shards: Vec<UdpSocket> = (0..2).map(|_| sock()).collect();
    let a = app(
        &shards,
        "[limits]\nper_source_rate = 20\nper_source_burst = 10\nover_limit = \"reply\"\n",
    );
    let edge = a.server.local_addr;
    let client = sock();
    big_rcvbuf(&client);
    for s in &shards {
        big_rcvbuf(s);
    }
    const N: usize = 100;
    for i in 0..N {
        client.send_to(&invite(&client, i), edge).unwrap();
    }
    let (fwd, answers) = collect(&shards, &client, N);
    assert_eq!(
        fwd.len() + answers.len(),
        N,
        "every INVITE forwarded or answered"
    );
    assert!(
        (10..=14).contains(&fwd.len()),
        "the burst of 10 (+ refill) passes: {}",
        fwd.len()
    );
    for a in &answers {
        assert!(
            a.starts_with("SIP/2.0 503 Service Unavailable - Rate Limit Exceeded\r\n"),
            "{a}"
        );
        assert_eq!(header(a, "Retry-After"), vec!["Retry-After: 1"]);
    }
    let snap = a.server.snapshot();
    assert_eq!(snap.rate_limited as usize, answers.len());
    // A CS shard is never limited: 100 requests from cs2's address all pass.
    let cs2 = &shards[1];
    for i in 0..N {
        let m = String::from_utf8(invite(cs2, 1000 + i)).unwrap();
        cs2.send_to(m.as_bytes(), edge).unwrap();
    }
    let before = a.server.snapshot().rate_limited;
    let (fwd2, _) = collect(&shards, &client, N);
    assert_eq!(fwd2.len(), N);
    assert_eq!(a.server.snapshot().rate_limited, before);
    a.stop().unwrap();
}

#[test]
fn drop_mode_counts_silently_and_the_allow_list_exempts() {
    let shards: Vec<UdpSocket> = (0..1).map(|_| sock()).collect();
    let a = app(
        &shards,
        "[limits]\nper_source_rate = 20\nper_source_burst = 5\nover_limit = \"drop\"\n",
    );
    let edge = a.server.local_addr;
    let client = sock();
    for i in 0..50 {
        client.send_to(&invite(&client, i), edge).unwrap();
    }
    let (fwd, answers) = collect(&shards, &client, 50);
    assert!(answers.is_empty(), "drop mode answers nothing");
    let snap = a.server.snapshot();
    assert_eq!(fwd.len() as u64 + snap.drop_count("rate_limited"), 50);
    assert!(snap.drop_count("rate_limited") >= 40);
    a.stop().unwrap();

    let a = app(
        &shards,
        "[limits]\nper_source_rate = 20\nper_source_burst = 5\nallow = [\"127.0.0.0/8\"]\n",
    );
    let edge = a.server.local_addr;
    for i in 0..50 {
        client.send_to(&invite(&client, 100 + i), edge).unwrap();
    }
    let (fwd, answers) = collect(&shards, &client, 50);
    assert_eq!(
        (fwd.len(), answers.len()),
        (50, 0),
        "allow-listed source is not limited"
    );
    a.stop().unwrap();
}

#[test]
fn overload_sheds_new_invites_only() {
    let t = tables();
    let client: std::net::SocketAddr = "192.0.2.10:5062".parse().unwrap();
    let mut out = vec![0u8; 16384];
    let (o, _) = process_admitted(
        &invite_to_group("grp1", "alice", ""),
        false,
        client,
        &t,
        &mut out,
        true,
    );
    let Outcome::Replied { len, code: 503, .. } = o else {
        panic!("{o:?}")
    };
    let resp = String::from_utf8_lossy(&out[..len]).into_owned();
    assert!(resp.starts_with("SIP/2.0 503 Service Unavailable - Overloaded\r\n"));
    assert_eq!(header(&resp, "Retry-After"), vec!["Retry-After: 1"]);
    // In-dialog BYE, CANCEL and a response keep flowing.
    let bye = wire("BYE sip:cs@127.0.0.1:7002 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKb\nRoute: <sip:127.0.0.1:5060;lr>\nMax-Forwards: 70\nFrom: <sip:alice@example.net>;tag=a\nTo: <sip:grp1@groups.example.net>;tag=b\nCall-ID: c1\nCSeq: 2 BYE\nContent-Length: 0\n\n");
    let (o, _) = process_admitted(&bye, false, client, &t, &mut out, true);
    assert!(
        matches!(
            o,
            Outcome::Forwarded {
                kind: ForwardKind::InDialog,
                ..
            }
        ),
        "{o:?}"
    );
    let reinvite = String::from_utf8(invite_to_group("grp1", "alice", ""))
        .unwrap()
        .replace(
            "To: <sip:grp1@groups.example.net>",
            "To: <sip:grp1@groups.example.net>;tag=b",
        );
    let (o, _) = process_admitted(reinvite.as_bytes(), false, client, &t, &mut out, true);
    assert!(
        matches!(o, Outcome::Forwarded { .. }),
        "a re-INVITE is in-dialog: {o:?}"
    );
    let (o, _) = process_admitted(
        &invite_to_group("grp1", "alice", ""),
        false,
        client,
        &t,
        &mut out,
        false,
    );
    assert!(
        matches!(o, Outcome::Forwarded { .. }),
        "not overloaded: forwarded"
    );
}
