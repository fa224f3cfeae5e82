//! The legs of a CPM Session Invitation through the edge (seed 5.2.3.2) and
//! the Route marker that tells them apart.
//!
//! When the edge forwards a request to a Conversation Server it pushes
//! `Route: <sip:CS;lr>, <sip:EDGE;lr;cpm-leg=LEG>`. The CS pops its own entry
//! and, when it sends the request on, it reaches the edge again with the
//! marker on top, saying which function has just served it:
//! - `orig`: the Participating Function of the inviting user (5.2.3.2.1);
//! - `ctrl`: the Controlling Function hosting the session (5.2.3.2.2);
//! - `term`: the Participating Function of the invited user (5.2.3.2.3),
//!   after which the request goes to the invited client.
//!
//! The marker is trusted only from a CS shard's address: a client cannot
//! skip its Participating Function by forging one.

/// URI parameter carrying the leg in the edge's Route entry.
pub const LEG_PARAM: &[u8] = b"cpm-leg";
/// The Route parameter by which a CS asks the edge for an Interworking
/// Function of a non-CPM service: `<sip:EDGE;lr;cpm-iwf=sms>` (seed 5.3).
pub const IWF_PARAM: &[u8] = b"cpm-iwf";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Leg {
    Originating = 1,
    Controlling = 2,
    Terminating = 3,
}

impl Leg {
    pub const ALL: [Leg; 3] = [Leg::Originating, Leg::Controlling, Leg::Terminating];

    pub fn marker(self) -> &'static str {
        match self {
            Leg::Originating => "orig",
            Leg::Controlling => "ctrl",
            Leg::Terminating => "term",
        }
    }

    pub fn from_marker(v: &[u8]) -> Option<Leg> {
        Leg::ALL
            .into_iter()
            .find(|l| v.eq_ignore_ascii_case(l.marker().as_bytes()))
    }

    pub fn index(self) -> usize {
        self as usize - 1
    }
}
