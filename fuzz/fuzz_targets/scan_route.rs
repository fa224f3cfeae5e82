//! Any bytes from any source through scan + decide + rewrite: no panic, and
//! every outcome respects the output bound and re-scans as SIP.
#![no_main]

use cpm_edge::config::Config;
use cpm_edge::pipeline::{process, Outcome};
use cpm_edge::route::Tables;
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
    let mut out = vec![0u8; 4096];
    let (o, _) = process(msg, src_sel & 2 != 0, src, tables(), &mut out);
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
