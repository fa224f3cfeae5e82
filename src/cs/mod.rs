//! The reference CPM Conversation Server (sans-IO): the Participating
//! Function (seed 5.2.3.2.1, 5.2.3.2.3) and the Controlling Function of
//! pre-defined groups (5.2.3.2.2, Appendix C), on the same SIP core as the
//! edge ([`crate::sip::transaction`], [`crate::sip::dialog`]).
//!
//! - [`directory`]: provisioned users and hosted groups, with their media
//!   policies;
//! - [`session`]: the C.1 rules between a session's upstream side and its
//!   legs, as a pure state machine;
//! - [`registrations`]: where each user's devices are (the registrar's
//!   third-party REGISTER), for the terminating function's forking;
//! - [`request`]: the INVITE a leg carries, written from the one received;
//! - [`server`]: the transaction user tying them to the transaction and
//!   dialog tables;
//! - [`conference`]: RFC 4575 conference state documents;
//! - [`resource_lists`]: RFC 5366 recipient lists (ad-hoc groups).

pub mod conference;
pub mod directory;
pub mod multipart;
pub mod registrations;
pub mod request;
pub mod resource_lists;
pub mod server;
pub mod session;
