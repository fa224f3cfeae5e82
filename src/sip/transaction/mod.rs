//! RFC 3261 §17 transactions over UDP as sans-IO state machines, with the
//! RFC 6026 "Accepted" state for 2xx responses to INVITE.
//!
//! The shape is quinn-proto's: the caller feeds inputs and drains outputs,
//! and nothing here reads a clock, opens a socket or spawns a thread.
//!
//! - inputs: [`TransactionTable::handle_datagram`] (a datagram already
//!   scanned), [`TransactionTable::handle_timeout`] (the caller's clock
//!   reached [`TransactionTable::poll_timeout`]),
//!   [`TransactionTable::handle_transport_error`], and the transaction
//!   user's actions: [`TransactionTable::send_request`],
//!   [`TransactionTable::send_response`], [`TransactionTable::cancel`];
//!   every one takes the current `now`;
//! - outputs: [`TransactionTable::poll_transmit`] (a datagram and its
//!   destination), [`TransactionTable::poll_event`] (timeouts, transport
//!   errors, terminations), [`TransactionTable::poll_timeout`] (the next
//!   deadline). A datagram the transaction user must see is said so by the
//!   [`Received`] that `handle_datagram` returns, while the caller still
//!   holds its bytes: nothing is copied to pass it up.
//!
//! The four machines (client/server × INVITE/non-INVITE, §17.1.1, §17.1.2,
//! §17.2.1, §17.2.2) absorb retransmissions: a retransmitted request gets
//! the last response again, a retransmitted non-2xx final response to an
//! INVITE gets the ACK again (the client transaction builds that ACK,
//! §17.1.1.3). The ACK of a 2xx is the transaction user's (the dialog's,
//! [`super::dialog`]), and so are 2xx retransmissions (§13.3.1.4).
//!
//! Matching (§17.1.3, §17.2.3) is on the top Via's branch (RFC 3261 magic
//! cookie required), the sent-by (server side) and the method, where an ACK
//! matches its INVITE and a CANCEL has a transaction of its own that names
//! the INVITE it cancels. The table is bounded: beyond its maximum a new
//! transaction is refused with [`Error::TableFull`] (the caller answers
//! 503), and a terminated transaction leaves the table at once.

mod key;
mod machine;
mod message;
mod outbox;
mod table;
mod timers;

pub use message::{
    response_destination, write_response, Branch, ResponseSpec, MAGIC_COOKIE, MAX_FORWARDS,
};
pub use table::TransactionTable;

use super::scan::Defect;
use std::net::SocketAddr;
use std::time::Duration;

/// Timer values and table bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// RTT estimate: the first retransmission interval (§17.1.1.1).
    pub t1: Duration,
    /// The longest retransmission interval of non-INVITE requests and of
    /// INVITE final responses.
    pub t2: Duration,
    /// How long a message may remain in the network: Timers I and K.
    pub t4: Duration,
    /// How long an INVITE may stay provisional on either side before the
    /// transaction gives up: RFC 3261 §16.6's Timer C, borrowed so that an
    /// INVITE nobody answers finally cannot hold a slot forever.
    pub timer_c: Duration,
    /// Timer D: how long a client keeps absorbing retransmitted non-2xx
    /// finals (at least 32 s over UDP, §17.1.1.2).
    pub timer_d: Duration,
    /// Most live transactions; beyond it new ones are refused.
    pub max_transactions: usize,
    /// Largest message stored or accepted (bytes).
    pub max_message: usize,
    /// Most datagrams queued for `poll_transmit` and, separately, events
    /// queued for `poll_event`; beyond it they are dropped and counted.
    pub max_pending: usize,
    /// Whether an INVITE server transaction answers 100 Trying itself at
    /// once (§17.2.1: it must, unless the TU answers within 200 ms).
    pub send_trying: bool,
    /// SipHash key of the transaction index and of generated branches: set
    /// a random one per process (the default is public), so that nobody
    /// can aim datagrams at one hash bucket or predict a branch.
    pub key: [u64; 2],
}

/// The RFC 3261 defaults (T1 500 ms, T2 4 s, T4 5 s, Timer D 32 s, Timer C
/// 3 min), 65 536 transactions.
impl Default for Config {
    fn default() -> Config {
        Config {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            timer_c: Duration::from_secs(180),
            timer_d: Duration::from_secs(32),
            max_transactions: 65_536,
            max_message: 65_535,
            max_pending: 4_096,
            send_trying: true,
            key: [0x7472_616e_7361_6374, 0x696f_6e2d_6b65_7931],
        }
    }
}

/// The longest any timer may be configured: keeps every deadline
/// arithmetic far from `Instant` overflow.
const MAX_TIMER: Duration = Duration::from_secs(3_600);

impl Config {
    /// 64·T1: Timers B, F, H, J, L and M.
    pub fn t1x64(&self) -> Duration {
        self.t1 * 64
    }

    /// Why this configuration cannot run, if it cannot.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.t1.is_zero() || self.t2 < self.t1 || self.t4.is_zero() {
            return Err("T1 and T4 must be positive and T2 at least T1");
        }
        if self.t1 > MAX_TIMER / 64 {
            return Err("64·T1 must be at most an hour");
        }
        let longest = [self.t2, self.t4, self.timer_c, self.timer_d];
        if longest.iter().any(|d| *d > MAX_TIMER) || self.timer_c.is_zero() {
            return Err("timers must be positive and at most an hour");
        }
        if self.max_transactions == 0 || self.max_transactions > u32::MAX as usize / 2 {
            return Err("max_transactions must be between 1 and 2^31");
        }
        if self.max_message < 256 || self.max_pending == 0 {
            return Err("max_message must be at least 256 and max_pending positive");
        }
        Ok(())
    }
}

/// A transaction's handle: its slot and the slot's generation, so that a
/// handle kept past the transaction's end refers to nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionId {
    slot: u32,
    generation: u32,
}

/// Which of the four machines (§17.1.1, §17.1.2, §17.2.1, §17.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    InviteClient,
    NonInviteClient,
    InviteServer,
    NonInviteServer,
}

impl Kind {
    pub fn is_client(self) -> bool {
        matches!(self, Kind::InviteClient | Kind::NonInviteClient)
    }
    pub fn is_invite(self) -> bool {
        matches!(self, Kind::InviteClient | Kind::InviteServer)
    }
}

/// The states of RFC 3261 §17 and RFC 6026 (which machine has which is in
/// the RFC's figures 5 to 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// INVITE client: the request sent, no response yet.
    Calling,
    /// Non-INVITE, both sides: no response yet.
    Trying,
    Proceeding,
    Completed,
    /// INVITE server: the ACK of a non-2xx arrived.
    Confirmed,
    /// RFC 6026, INVITE both sides: a 2xx passed; waiting out its
    /// retransmissions (client, Timer M) or the TU's (server, Timer L).
    Accepted,
    Terminated,
}

/// The transaction timers, named as in RFC 3261 table 4 and RFC 6026.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// INVITE request retransmission (client).
    A,
    /// INVITE transaction timeout (client).
    B,
    /// No final response within `Config::timer_c` of the last provisional
    /// (INVITE, both sides).
    C,
    /// Wait for retransmitted non-2xx finals (INVITE client).
    D,
    /// Non-INVITE request retransmission (client).
    E,
    /// Non-INVITE transaction timeout. Also the server side's lifetime
    /// before its final response: once the client's Timer F has fired no
    /// response can matter to it.
    F,
    /// INVITE final response retransmission (server).
    G,
    /// Wait for the ACK (INVITE server).
    H,
    /// Wait for ACK retransmissions (INVITE server).
    I,
    /// Wait for non-INVITE request retransmissions (server).
    J,
    /// Wait for non-INVITE response retransmissions (client).
    K,
    /// RFC 6026: wait out INVITE retransmissions after a 2xx (server).
    L,
    /// RFC 6026: wait for 2xx retransmissions (client).
    M,
}

/// What a datagram was to the transaction layer, for the transaction user
/// to act on while it still holds the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// A new request: a server transaction now holds it; the TU answers it
    /// with [`TransactionTable::send_response`].
    Request(TransactionId),
    /// A new CANCEL (its own server transaction, `cancel`) and the INVITE
    /// server transaction it cancels, if there is one (§9.2: the TU then
    /// answers the CANCEL 200, or 481 without one, and the INVITE 487).
    Cancel {
        cancel: TransactionId,
        invite: Option<TransactionId>,
    },
    /// A response the client transaction passes up: a provisional, the
    /// final, or (RFC 6026, Accepted) a 2xx retransmission or another
    /// fork's 2xx, each of which the TU must ACK.
    Response { id: TransactionId, code: u16 },
    /// An ACK for the TU: the ACK of a 2xx, which is no part of the
    /// INVITE transaction (a new branch: `None`), or one that matched an
    /// INVITE server transaction in the Accepted state (RFC 6026).
    Ack(Option<TransactionId>),
    /// A retransmission the transaction answered or absorbed, or the ACK
    /// of a non-2xx final: nothing for the TU.
    Absorbed,
    /// A response no client transaction matches (§17.1.3): for the TU to
    /// drop, or to ACK and BYE if it is a late 2xx it cares about.
    StrayResponse,
}

/// Something that happened without a datagram arriving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A timer gave up: B or F (no final response), H (no ACK), C (no final
    /// response within Timer C), or F on the server side (the TU never
    /// answered).
    Timeout { id: TransactionId, timer: Timer },
    /// The caller reported a transport error for this transaction.
    TransportError { id: TransactionId },
    /// The transaction is over and has left the table; its id now refers to
    /// nothing.
    Terminated { id: TransactionId },
}

/// A datagram to send: its bytes are in the buffer given to
/// [`TransactionTable::poll_transmit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    /// The transaction that sent it (`None`: [`TransactionTable::send_stateless`]).
    pub transaction: Option<TransactionId>,
}

/// Why an input was refused. Refused datagrams are counted in [`Stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("malformed message: {}", .0.reason())]
    Malformed(Defect),
    #[error("no top Via with an RFC 3261 branch (z9hG4bK...)")]
    NoBranch,
    #[error("a method, branch or sent-by longer than 255 bytes")]
    KeyTooLong,
    #[error("message larger than the configured maximum")]
    TooLarge,
    #[error("transaction table full")]
    TableFull,
    #[error("unknown or terminated transaction")]
    UnknownTransaction,
    #[error("a request was expected")]
    NotARequest,
    #[error("a response was expected")]
    NotAResponse,
    #[error("an ACK is sent by the TU (2xx) or the client transaction (non-2xx), never as a transaction")]
    AckIsNoTransaction,
    #[error("a transaction with this branch and method exists")]
    DuplicateBranch,
    #[error("the response does not belong to this transaction (branch, sent-by or method)")]
    NotThisTransaction,
    #[error("not allowed to a {0:?} transaction")]
    WrongKind(Kind),
    #[error("not allowed in state {0:?}")]
    InvalidState(State),
}

/// Counters of what the table dropped or refused (for the caller's metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams refused by `handle_datagram` (malformed, no branch, ...).
    pub refused: u64,
    /// New transactions refused because the table was full.
    pub table_full: u64,
    /// Responses that matched no client transaction.
    pub stray_responses: u64,
    /// Retransmissions absorbed or answered inside the transactions.
    pub absorbed: u64,
    /// Datagrams retransmitted on a timer (A, E, G).
    pub retransmitted: u64,
    /// Datagrams or events dropped because the caller did not drain them.
    pub dropped_transmits: u64,
    pub dropped_events: u64,
    /// ACK, CANCEL or 100 Trying that did not fit their bound (never seen
    /// with inputs under `max_message`).
    pub build_failures: u64,
}

#[cfg(test)]
mod tests;
