//! Flow tokens (RFC 5626 §5.2, in the way an edge proxy uses them): the
//! name of the connection a request arrived on, written by the edge into
//! what it adds to the request (a Via parameter for the response, the
//! user part of its Record-Route URI for requests inside the dialog), so
//! that a response or an in-dialog request reaching any worker finds the
//! worker and the connection, with no shared connection map.
//!
//! A token is the flow (worker, connection slot, the slot's generation:
//! a reused slot is another connection) and a 64-bit SipHash-2-4 MAC of
//! it under the edge's secret, in 36 lowercase hex digits. A peer cannot
//! forge one for another peer's connection, and a token of a closed
//! connection names a generation that is gone.

use siphasher::sip::SipHasher24;
use std::hash::Hasher;

/// Hex digits of a token: 2 + 4 + 4 bytes of flow, 8 of MAC.
pub const TOKEN_LEN: usize = 36;

/// Our Via's parameter naming the client's stream connection.
pub const FLOW_PARAM: &[u8] = b";cpm-flow=";

/// The token in a Via value (`via`, the bytes of one Via header value)
/// the edge wrote, if it carries one: what follows [`FLOW_PARAM`].
pub fn token_in_via(via: &[u8]) -> Option<&[u8]> {
    let at = memchr::memmem::find(via, FLOW_PARAM)? + FLOW_PARAM.len();
    via.get(at..at + TOKEN_LEN)
}

/// The key of this process's flow tokens: drawn once, so that the
/// workers that write tokens, the registrar that binds a contact to one
/// and the routing that sends on it all name a connection alike.
pub fn process_key() -> [u64; 2] {
    static KEY: std::sync::OnceLock<[u64; 2]> = std::sync::OnceLock::new();
    *KEY.get_or_init(super::hash::random_key)
}

/// One connection of one worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub worker: u16,
    /// The connection's slot in the worker's bounded table.
    pub slot: u32,
    /// Bumped each time the slot holds a new connection.
    pub generation: u32,
}

impl Flow {
    fn bytes(self) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[..2].copy_from_slice(&self.worker.to_be_bytes());
        b[2..6].copy_from_slice(&self.slot.to_be_bytes());
        b[6..].copy_from_slice(&self.generation.to_be_bytes());
        b
    }

    fn mac(self, key: &[u64; 2]) -> u64 {
        let mut h = SipHasher24::new_with_keys(key[0], key[1]);
        // A domain separator: this key also keys other MACs.
        h.write(b"cpm-flow");
        h.write(&self.bytes());
        h.finish()
    }

    /// The token naming this flow under `key`.
    pub fn token(self, key: &[u64; 2]) -> [u8; TOKEN_LEN] {
        let mut raw = [0u8; 18];
        raw[..10].copy_from_slice(&self.bytes());
        raw[10..].copy_from_slice(&self.mac(key).to_be_bytes());
        let mut out = [0u8; TOKEN_LEN];
        for (i, b) in raw.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        out
    }

    /// The flow `token` names, if it is one this edge (`key`) wrote: any
    /// other length, digit or MAC is no flow.
    pub fn from_token(token: &[u8], key: &[u64; 2]) -> Option<Flow> {
        if token.len() != TOKEN_LEN {
            return None;
        }
        let mut raw = [0u8; 18];
        for (i, pair) in token.chunks_exact(2).enumerate() {
            raw[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        let flow = Flow {
            worker: u16::from_be_bytes([raw[0], raw[1]]),
            slot: u32::from_be_bytes([raw[2], raw[3], raw[4], raw[5]]),
            generation: u32::from_be_bytes([raw[6], raw[7], raw[8], raw[9]]),
        };
        let mut mac = [0u8; 8];
        mac.copy_from_slice(&raw[10..]);
        // Compared whole, not byte by byte with an early exit: the time
        // taken says nothing about how much of a guess was right.
        let diff = u64::from_be_bytes(mac) ^ flow.mac(key);
        (diff == 0).then_some(flow)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];

    #[test]
    fn a_token_names_its_flow_under_its_key_only() {
        let f = Flow {
            worker: 3,
            slot: 70_000,
            generation: 9,
        };
        let t = f.token(&KEY);
        assert!(t
            .iter()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(&t[..20], b"00030001117000000009");
        assert_eq!(Flow::from_token(&t, &KEY), Some(f));
        assert_eq!(
            Flow::from_token(&t, &[KEY[0], KEY[1] ^ 1]),
            None,
            "another edge's"
        );
        assert_ne!(
            Flow {
                generation: 10,
                ..f
            }
            .token(&KEY),
            t,
            "a reused slot is another flow"
        );
    }

    #[test]
    fn the_token_is_found_in_the_via_the_edge_wrote() {
        let f = Flow {
            worker: 1,
            slot: 2,
            generation: 3,
        };
        let t = f.token(&KEY);
        let via = format!(
            "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKcpe1;cpm-flow={}",
            std::str::from_utf8(&t).unwrap()
        );
        let found = token_in_via(via.as_bytes()).unwrap();
        assert_eq!(Flow::from_token(found, &KEY), Some(f));
        assert_eq!(
            token_in_via(b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1"),
            None
        );
        assert_eq!(
            token_in_via(b"SIP/2.0/UDP h;cpm-flow=00ab"),
            None,
            "cut short"
        );
    }

    #[test]
    fn any_change_to_a_token_is_no_flow() {
        let t = Flow {
            worker: 0,
            slot: 1,
            generation: 1,
        }
        .token(&KEY);
        for i in 0..TOKEN_LEN {
            for c in [b'0', b'7', b'f', b'A', b'g', b' '] {
                let mut bad = t;
                if bad[i] == c {
                    continue;
                }
                bad[i] = c;
                assert_eq!(Flow::from_token(&bad, &KEY), None, "digit {i} as {c}");
            }
        }
        assert_eq!(Flow::from_token(&t[..TOKEN_LEN - 1], &KEY), None);
        assert_eq!(Flow::from_token(b"", &KEY), None);
    }
}
