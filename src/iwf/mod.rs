//! The Interworking Function's protocol logic (seed 5.3), sans-IO: what a
//! CPM message becomes in a non-CPM service and back. SMS first
//! ([`sms`]), with its delivery reports as IMDN ([`imdn`]); the
//! gateway's io (Kannel's HTTP interfaces) sits above.

pub mod imdn;
pub mod sms;
