//! Where each provisioned user's devices are: the CPM registration state
//! the edge, as the users' registrar (RFC 3261 §10), reports to the user's
//! Participating Function in a third-party REGISTER (3GPP TS 24.229
//! §5.4.1.7 style) with the registration's full state (RFC 3680 reg-info)
//! on every registration, refresh, de-registration and expiry.
//!
//! Sans-IO, over an injected [`Instant`]: a registration is the contacts of
//! the last full state received (each one's URI, CPM services, `q` and
//! expiry), replaced whole by the next one. An expired contact is not
//! returned; a user with none left is not registered. The terminating
//! Participating Function forks to the contacts that offer the service
//! asked for (seed 5.2.5, [`super::session`]).
//!
//! Bounds: at most `max_contacts` per user (the best by `q` are kept), at
//! most `max_users` users; the server stores only provisioned users (so the
//! directory bounds the table) and forgets the ones it stops serving.

use crate::sip::feature_tag::CpmServices;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most contacts kept per user (the registrar may bind more; the best by
/// `q` are kept).
pub const MAX_CONTACTS: usize = 16;
/// Most users in the table (a backstop: only provisioned users enter it).
pub const MAX_USERS: usize = 1 << 20;
/// Longest lifetime kept for a contact, whatever the registrar says (ten
/// years: an `Instant` this far ahead never overflows).
pub const MAX_EXPIRES: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The `q` of a contact that names none, for ordering (RFC 3261 §16.6
/// treats a target without `q` as the highest priority).
const DEFAULT_Q: u16 = 1000;

/// One binding of a user's registration, as the registrar reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The contact URI: the Request-URI of an invitation to this device.
    pub uri: String,
    /// The CPM services the device registered (its `+g.3gpp.icsi-ref`).
    pub services: CpmServices,
    /// Its `q` in permille, if it named one.
    pub q: Option<u16>,
    /// How long the binding lives from now.
    pub expires: Duration,
}

/// A registered contact of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    /// The contact URI.
    pub uri: String,
    /// The CPM services the device registered.
    pub services: CpmServices,
    /// Its `q` in permille, if it named one.
    pub q: Option<u16>,
    /// When the binding expires, unless refreshed.
    pub expires_at: Instant,
}

impl Contact {
    /// Does the device offer one of the services `wanted` names?
    pub fn offers(&self, wanted: CpmServices) -> bool {
        self.services.0 & wanted.0 != 0
    }

    /// The binding's remaining lifetime at `now` (zero once expired).
    pub fn expires_in(&self, now: Instant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }

    fn live(&self, now: Instant) -> bool {
        self.expires_at > now
    }
}

/// What [`Registrations::update`] kept of a full state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// Contacts stored (live ones only).
    pub kept: usize,
    /// Live bindings left out: beyond [`MAX_CONTACTS`], or a URI already
    /// bound.
    pub dropped: usize,
}

/// Why a registration was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    /// The table holds `max_users` users already and this one is new.
    #[error("the registration table is full ({0} users)")]
    Full(usize),
}

/// The registration state of every user, by canonical identity
/// ([`super::directory::identity_of`]).
#[derive(Clone, Debug)]
pub struct Registrations {
    users: HashMap<String, Vec<Contact>>,
    max_users: usize,
    max_contacts: usize,
}

impl Default for Registrations {
    fn default() -> Registrations {
        Registrations::new(MAX_USERS, MAX_CONTACTS)
    }
}

impl Registrations {
    /// An empty table of at most `max_users` users with at most
    /// `max_contacts` contacts each (both at least 1).
    pub fn new(max_users: usize, max_contacts: usize) -> Registrations {
        Registrations {
            users: HashMap::new(),
            max_users: max_users.max(1),
            max_contacts: max_contacts.max(1),
        }
    }

    /// Replace `user`'s registration with the full state `bindings` (the
    /// ones whose lifetime is zero are not bound). No live binding left:
    /// the user is de-registered.
    pub fn update(
        &mut self,
        user: &str,
        bindings: &[Binding],
        now: Instant,
    ) -> Result<Stored, RegistrationError> {
        let (contacts, dropped) = self.best(bindings, now);
        if contacts.is_empty() {
            self.users.remove(user);
            return Ok(Stored { kept: 0, dropped });
        }
        if !self.users.contains_key(user) && self.users.len() >= self.max_users {
            return Err(RegistrationError::Full(self.max_users));
        }
        let kept = contacts.len();
        self.users.insert(user.to_string(), contacts);
        Ok(Stored { kept, dropped })
    }

    /// The live bindings, best `q` first (ties in the registrar's order),
    /// each URI once, at most `max_contacts`; and how many were left out.
    fn best(&self, bindings: &[Binding], now: Instant) -> (Vec<Contact>, usize) {
        let mut order: Vec<&Binding> = bindings.iter().filter(|b| !b.expires.is_zero()).collect();
        // Stable: equal q keep the registrar's order.
        order.sort_by_key(|b| std::cmp::Reverse(b.q.unwrap_or(DEFAULT_Q)));
        let live = order.len();
        let mut out: Vec<Contact> = Vec::with_capacity(live.min(self.max_contacts));
        for b in order {
            if out.len() == self.max_contacts {
                break;
            }
            if out.iter().any(|c| c.uri == b.uri) {
                continue;
            }
            let Some(expires_at) = now.checked_add(b.expires.min(MAX_EXPIRES)) else {
                continue;
            };
            out.push(Contact {
                uri: b.uri.clone(),
                services: b.services,
                q: b.q,
                expires_at,
            });
        }
        let dropped = live - out.len();
        (out, dropped)
    }

    /// Forget `user`'s registration; whether there was one.
    pub fn deregister(&mut self, user: &str) -> bool {
        self.users.remove(user).is_some()
    }

    /// `user`'s live contacts at `now`, best `q` first.
    pub fn contacts<'a>(&'a self, user: &str, now: Instant) -> impl Iterator<Item = &'a Contact> {
        self.users
            .get(user)
            .into_iter()
            .flatten()
            .filter(move |c| c.live(now))
    }

    /// Has `user` a live contact at `now`?
    pub fn is_registered(&self, user: &str, now: Instant) -> bool {
        self.contacts(user, now).next().is_some()
    }

    /// Keep only the users `keep` says yes to (the directory changed).
    pub fn retain_users(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.users.retain(|u, _| keep(u));
    }

    /// Drop the contacts expired at `now`, and the users left with none;
    /// how many users went.
    pub fn purge(&mut self, now: Instant) -> usize {
        let before = self.users.len();
        self.users.retain(|_, cs| {
            cs.retain(|c| c.live(now));
            !cs.is_empty()
        });
        before - self.users.len()
    }

    /// The users with a stored registration, in no order (some may have
    /// expired since).
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// Users with a stored registration (some may have expired since).
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// No user has a stored registration.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The table's bounds hold (tests, fuzz target).
    pub fn assert_invariants(&self) {
        assert!(self.users.len() <= self.max_users);
        for cs in self.users.values() {
            assert!(!cs.is_empty(), "a user stored with no contact");
            assert!(cs.len() <= self.max_contacts);
            let q = |c: &Contact| c.q.unwrap_or(DEFAULT_Q);
            assert!(cs.windows(2).all(|w| q(&w[0]) >= q(&w[1])), "best q first");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: CpmServices = CpmServices(CpmServices::SESSION);
    const MSG: CpmServices = CpmServices(CpmServices::MSG);

    fn binding(uri: &str, services: CpmServices, q: Option<u16>, secs: u64) -> Binding {
        Binding {
            uri: uri.to_string(),
            services,
            q,
            expires: Duration::from_secs(secs),
        }
    }

    fn uris(r: &Registrations, user: &str, now: Instant) -> Vec<String> {
        r.contacts(user, now).map(|c| c.uri.clone()).collect()
    }

    #[test]
    fn a_full_state_replaces_the_last_one_and_expired_contacts_are_gone() {
        let t0 = Instant::now();
        let mut r = Registrations::default();
        let phone = "sip:alice@192.0.2.10:5062;transport=udp";
        let laptop = "sip:alice@192.0.2.11:5062";
        let both = [
            binding(phone, SESSION, Some(500), 600),
            binding(laptop, SESSION, None, 3600),
        ];
        assert_eq!(
            r.update("alice@example.net", &both, t0),
            Ok(Stored {
                kept: 2,
                dropped: 0
            })
        );
        // No q is the highest priority (RFC 3261 §16.6).
        assert_eq!(uris(&r, "alice@example.net", t0), [laptop, phone]);
        assert!(r.is_registered("alice@example.net", t0));
        assert!(!r.is_registered("bob@example.net", t0));
        // The phone's binding lapses; the laptop's stays.
        let later = t0 + Duration::from_secs(601);
        assert_eq!(uris(&r, "alice@example.net", later), [laptop]);
        let c = r.contacts("alice@example.net", later).next().unwrap();
        assert_eq!(c.expires_in(later), Duration::from_secs(2999));
        // A refresh with the phone only: the laptop is no longer bound.
        r.update("alice@example.net", &both[..1], later).unwrap();
        assert_eq!(uris(&r, "alice@example.net", later), [phone]);
        // Everything expired: not registered, though still stored.
        let gone = later + Duration::from_secs(600);
        assert!(!r.is_registered("alice@example.net", gone));
        assert_eq!(r.len(), 1);
        assert_eq!(r.purge(gone), 1);
        assert!(r.is_empty());
        r.assert_invariants();
    }

    #[test]
    fn zero_lifetimes_and_an_empty_state_de_register() {
        let t0 = Instant::now();
        let mut r = Registrations::default();
        r.update(
            "bob@x",
            &[binding("sip:bob@1.2.3.4", SESSION, None, 60)],
            t0,
        )
        .unwrap();
        let expired = [binding("sip:bob@1.2.3.4", SESSION, None, 0)];
        assert_eq!(r.update("bob@x", &expired, t0), Ok(Stored::default()));
        assert!(!r.is_registered("bob@x", t0));
        assert!(r.is_empty(), "nothing stored for a user with no contact");
        r.update(
            "bob@x",
            &[binding("sip:bob@1.2.3.4", SESSION, None, 60)],
            t0,
        )
        .unwrap();
        assert!(r.deregister("bob@x"));
        assert!(!r.deregister("bob@x"));
    }

    #[test]
    fn contacts_are_bounded_best_q_first_each_uri_once() {
        let t0 = Instant::now();
        let mut r = Registrations::new(10, 3);
        let bs: Vec<Binding> = (0..6u16)
            .map(|i| binding(&format!("sip:u@10.0.0.{i}"), SESSION, Some(i * 100), 60))
            .chain([binding("sip:u@10.0.0.5", MSG, Some(900), 60)])
            .collect();
        let s = r.update("u@x", &bs, t0).unwrap();
        assert_eq!(
            s,
            Stored {
                kept: 3,
                dropped: 4
            }
        );
        assert_eq!(
            uris(&r, "u@x", t0),
            ["sip:u@10.0.0.5", "sip:u@10.0.0.4", "sip:u@10.0.0.3"]
        );
        // The first binding of a URI (the best q) is the one kept.
        let first = r.contacts("u@x", t0).next().unwrap();
        assert_eq!((first.q, first.services), (Some(900), MSG));
        r.assert_invariants();
    }

    #[test]
    fn the_table_holds_at_most_max_users_and_forgets_unprovisioned_ones() {
        let t0 = Instant::now();
        let mut r = Registrations::new(2, 4);
        let b = [binding("sip:d@10.0.0.1", SESSION, None, 60)];
        r.update("a@x", &b, t0).unwrap();
        r.update("b@x", &b, t0).unwrap();
        assert_eq!(r.update("c@x", &b, t0), Err(RegistrationError::Full(2)));
        // A refresh of a user already in is fine; so is a de-registration.
        r.update("a@x", &b, t0).unwrap();
        assert_eq!(r.update("c@x", &[], t0), Ok(Stored::default()));
        r.retain_users(|u| u != "a@x");
        assert!(!r.is_registered("a@x", t0));
        assert!(r.is_registered("b@x", t0));
        r.update("c@x", &b, t0).unwrap();
        r.assert_invariants();
    }

    #[test]
    fn a_contact_offers_the_services_it_registered() {
        let t0 = Instant::now();
        let mut r = Registrations::default();
        let both = CpmServices(CpmServices::SESSION | CpmServices::FILETRANSFER);
        r.update(
            "e@x",
            &[
                binding("sip:e@10.0.0.1", MSG, None, 60),
                binding("sip:e@10.0.0.2", both, None, 60),
            ],
            t0,
        )
        .unwrap();
        let session: Vec<&str> = r
            .contacts("e@x", t0)
            .filter(|c| c.offers(SESSION))
            .map(|c| c.uri.as_str())
            .collect();
        assert_eq!(session, ["sip:e@10.0.0.2"]);
        assert!(r.contacts("e@x", t0).all(|c| !c.offers(CpmServices(0))));
    }

    #[test]
    fn a_lifetime_beyond_the_cap_is_capped() {
        let t0 = Instant::now();
        let mut r = Registrations::default();
        let b = Binding {
            expires: Duration::from_secs(u64::MAX),
            ..binding("sip:f@10.0.0.1", SESSION, None, 0)
        };
        r.update("f@x", &[b], t0).unwrap();
        let c = r.contacts("f@x", t0).next().unwrap();
        assert_eq!(c.expires_in(t0), MAX_EXPIRES);
    }
}
