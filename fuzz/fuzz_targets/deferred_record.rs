//! Arbitrary bytes as a deferred-message record (what a CS shard reads back
//! from its redb file at start): never a panic; a record that decodes
//! encodes to the same bytes, and the message it holds is a MESSAGE.
#![no_main]

use cpm_edge::cs::server::{decode_deferred, encode_deferred};
use cpm_edge::sip::scan::{scan, Method};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((id, rec)) = data.split_first_chunk::<8>() else {
        return;
    };
    let id = u64::from_le_bytes(*id);
    if let Ok((user, d)) = decode_deferred(id, rec) {
        assert_eq!(d.id, id);
        assert!(!user.is_empty());
        assert_eq!(scan(&d.request).method(), Some(Method::Message));
        assert_eq!(encode_deferred(&user, &d), rec, "a decoded record encodes back");
    }
});
