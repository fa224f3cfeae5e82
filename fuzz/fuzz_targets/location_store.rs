//! Any bytes as a stored location record: `decode` never panics, and what
//! it accepts encodes back to exactly the same bytes (the encoding is
//! canonical). The same bytes also build a binding list (fields and texts
//! cut from the input), which must survive encode then decode unchanged.
#![no_main]

use cpm_edge::dataplane::location_store::{decode, encode};
use cpm_edge::route::location::{Binding, BindingParts, MAX_BINDINGS};
use cpm_edge::sip::feature_tag::CpmServices;
use cpm_edge::sip::flow::Flow;
use libfuzzer_sys::fuzz_target;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

/// A binding from 24 bytes of fields and a text of the input.
fn binding(f: &[u8; 24], text: &[u8]) -> Option<Binding> {
    let cut = |i: usize| usize::from(f[i]).min(text.len());
    let (a, b, c) = (cut(0), cut(1), cut(2));
    let (mut lo, mut mid, mut hi) = (a, b, c);
    if lo > mid {
        std::mem::swap(&mut lo, &mut mid);
    }
    if mid > hi {
        std::mem::swap(&mut mid, &mut hi);
    }
    if lo > mid {
        std::mem::swap(&mut lo, &mut mid);
    }
    let word = |i: usize| u32::from_le_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
    let mut ip = [0u8; 16];
    ip[..8].copy_from_slice(&f[12..20]);
    let port = u16::from_le_bytes([f[20], f[21]]);
    let flow = if f[3] & 1 == 0 {
        SocketAddr::from(([f[12], f[13], f[14], f[15]], port))
    } else {
        let scope = if f[3] & 2 != 0 { word(8) } else { 0 };
        SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, scope))
    };
    let p = BindingParts {
        contact: &text[..lo],
        flow,
        expires_at: u64::from(word(4)),
        q: u16::from_le_bytes([f[22], f[23]]) % 1001,
        cpm: CpmServices(f[3] >> 2),
        instance: (f[3] & 4 != 0).then_some(&text[lo..mid]),
        reg_id: word(8),
        call_id: &text[mid..hi],
        cseq: word(4).rotate_left(7),
        params: (f[3] & 8 != 0).then_some(&text[hi..]),
        conn: (f[3] & 16 != 0).then(|| Flow {
            worker: u16::from_le_bytes([f[0], f[1]]),
            slot: word(12),
            generation: word(16),
        }),
    };
    Binding::new(&p).ok()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = decode(data) {
        assert!(list.len() <= MAX_BINDINGS);
        let mut again = Vec::new();
        encode(&list, &mut again);
        assert_eq!(again, data, "decode then encode changed the bytes");
    }
    // Built lists: up to 4 bindings from the front of the input.
    let mut list = Vec::new();
    let mut rest = data;
    while list.len() < 4 {
        let Some((f, tail)) = rest.split_first_chunk::<24>() else {
            break;
        };
        let n = usize::from(f[0]) + usize::from(f[1]) + usize::from(f[2]) + 8;
        let (text, tail) = tail.split_at(n.min(tail.len()));
        if let Some(b) = binding(f, text) {
            list.push(b);
        }
        rest = tail;
    }
    let mut bytes = Vec::new();
    encode(&list, &mut bytes);
    assert_eq!(decode(&bytes).as_ref(), Ok(&list), "encode then decode");
});
