//! Any bytes from any source through scan + decide + rewrite: no panic, and
//! every outcome respects the output bound and re-scans as SIP; no edit
//! lands in a top Via that did not parse. The grammar readers (URI,
//! name-addr, Via, feature tags) also get the whole input as one value.
#![no_main]

use cpm_edge::config::Config;
use cpm_edge::pipeline::{process, Outcome};
use cpm_edge::route::Tables;
use cpm_edge::sip::Span;
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::sync::OnceLock;

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        Config::default_embedded()
            .validate()
            .expect("default config")
            .tables()
    })
}

fuzz_target!(|data: &[u8]| {
    let (src_sel, msg) = match data.split_first() {
        Some((s, m)) => (*s, m),
        None => return,
    };
    // Half the inputs come from a CS shard, so the CS-side legs are explored.
    let src: SocketAddr = if src_sel & 1 == 0 {
        "192.0.2.10:5062"
    } else {
        "127.0.0.1:7003"
    }
    .parse()
    .unwrap();
    // The grammar readers alone, on the whole input as one value: they are
    // reached through `process` only at header positions.
    let all = Span::new(0, msg.len());
    let _ = cpm_edge::sip::uri::parse(msg, all);
    let _ = cpm_edge::sip::uri::checked_name_addr(msg, all);
    let _ = cpm_edge::sip::via::parse(msg, all);
    let _ = cpm_edge::sip::feature_tag::checked_cpm_services(msg, src_sel & 4 != 0);
    let mut out = vec![0u8; 4096];
    let (o, m) = process(msg, src_sel & 2 != 0, src, tables(), &mut out);
    // Nothing is spliced into a top Via that did not parse: a request is
    // forwarded only with a parsed one, and an answer echoes an unparsed
    // one as it came.
    if let (Outcome::Replied { len, .. }, None) = (o, m.top_via) {
        let first = cpm_edge::sip::scan::header_lines(msg, m.headers)
            .find(|h| h.kind == cpm_edge::sip::scan::Header::Via)
            .map(|h| h.line.get(msg));
        if let Some(line) = first {
            // Echoed without its line end (CRLF, or the bare LF the
            // request may be refused for).
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            assert!(
                out[..len].windows(line.len()).any(|w| w == line),
                "an unparsed Via edited"
            );
        }
    }
    if let Outcome::Forwarded { .. } = o {
        assert!(
            m.top_via.is_some() && m.defect.is_none(),
            "forwarded without a parsed Via"
        );
    }
    if let Some((len, _)) = o.send() {
        assert!(len <= out.len());
        let again = cpm_edge::sip::scan::scan(&out[..len]);
        if let Outcome::Forwarded { .. } | Outcome::Relayed { .. } = o {
            assert!(
                again.top_via.is_some() || matches!(o, Outcome::Relayed { .. }),
                "a forwarded request has our Via"
            );
        }
    }
});
