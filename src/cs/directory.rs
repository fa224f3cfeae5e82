//! Who the Conversation Server serves: provisioned users (Participating
//! Function, seed 5.2.3.2.1 and 5.2.3.2.3) and the pre-defined groups it
//! hosts (Controlling Function, 5.2.3.2.2), with their media policies
//! (5.2.3.7). One immutable snapshot; a change builds a new one.
//!
//! Identities are canonical `user@host` (host lowercased, scheme, port and
//! parameters ignored), the same key the edge routes by
//! ([`crate::sip::uri::identity_bytes`]). A member is written as the URI the
//! CS sends its invitation to (until registration gives contacts, the
//! Request-URI's host:port is how the edge reaches a client).

use crate::sip::media::MediaPolicy;
use crate::sip::uri::{self, identity_bytes};
use crate::sip::Span;
use std::collections::HashMap;

/// Most members of one group: bounds the legs of one session.
pub const MAX_MEMBERS: usize = 64;

/// Who may invite a group's members into a session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InvitePolicy {
    /// Only members (C.1 step 5: the Controlling Function authorises the
    /// inviter against the group).
    #[default]
    Members,
    /// Any user the Participating Function let through.
    Anyone,
}

/// A provisioned user, as configured.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub id: String,
    /// The user's own media policy over the provider default.
    #[serde(default)]
    pub media: MediaPolicy,
    /// What a message for the user does while no device is registered
    /// (seed 5.3.1.1.1); none: the provider's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_unregistered: Option<WhenUnregistered>,
    /// The user's number in non-CPM services (E.164, `+` and 6-15
    /// digits): where interworking to SMS delivers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msisdn: Option<String>,
}

/// What the invited user's PF does with a message for a user who has no
/// registered device offering the service (seed 5.3.1.1.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenUnregistered {
    /// `480 Temporarily Unavailable - Not Registered`.
    #[default]
    Reject,
    /// Keep it and deliver it at the next registration (`202 Accepted`).
    Defer,
    /// Send it through the edge to an Interworking Function for SMS, to
    /// the user's MSISDN (seed 5.3.1.1.1 "deliver via interworking").
    Sms,
}

/// A pre-defined group, as configured.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub id: String,
    /// The shard (CS name) hosting it: its Controlling Function.
    pub host: String,
    pub members: Vec<String>,
    /// Most participants in one session, the inviter included.
    #[serde(default = "default_max_participants")]
    pub max_participants: usize,
    #[serde(default)]
    pub invite: InvitePolicy,
    #[serde(default)]
    pub subject: Option<String>,
    /// The group's media policy over the provider default.
    #[serde(default)]
    pub media: MediaPolicy,
}

fn default_max_participants() -> usize {
    MAX_MEMBERS
}

/// Why a directory entry was refused; the text names the entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct DirectoryError {
    pub what: String,
    pub reason: String,
}

fn refuse(what: &str, reason: impl Into<String>) -> DirectoryError {
    DirectoryError {
        what: what.to_string(),
        reason: reason.into(),
    }
}

/// A user the CS serves.
#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub uri: String,
    pub media: MediaPolicy,
    pub when_unregistered: Option<WhenUnregistered>,
    pub msisdn: Option<String>,
}

/// A member of a group: the URI to invite and its canonical identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub uri: String,
    pub identity: String,
}

/// A pre-defined group.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub uri: String,
    pub host: String,
    pub members: Vec<Member>,
    pub max_participants: usize,
    pub invite: InvitePolicy,
    pub subject: Option<String>,
    pub media: MediaPolicy,
}

impl Group {
    pub fn is_member(&self, identity: &str) -> bool {
        self.members.iter().any(|m| m.identity == identity)
    }
}

/// The users and groups, by canonical identity.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    users: HashMap<String, User>,
    groups: HashMap<String, Group>,
}

/// The canonical identity of a URI written as text, if it is a SIP, SIPS
/// or tel URI.
pub fn identity_of(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let u = uri::parse(b, Span::new(0, b.len()))?;
    let mut out = Vec::with_capacity(b.len());
    identity_bytes(b, &u, |c| out.push(c));
    (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
}

/// The canonical identity of `text`, refused for the reasons
/// [`Directory::put_user`] and [`Directory::put_group`] refuse an id (the
/// admin API's lookups by URI).
pub fn checked_identity(text: &str) -> Result<String, DirectoryError> {
    check_uri(text, text)
}

/// A URI fit to go into a header: the characters of a SIP URI only.
pub use crate::sip::number::is_e164;

fn check_uri(what: &str, text: &str) -> Result<String, DirectoryError> {
    let bad = text
        .bytes()
        .any(|c| !c.is_ascii_graphic() || matches!(c, b'<' | b'>' | b'"'));
    let lower = text.get(..5).unwrap_or("").to_ascii_lowercase();
    let scheme =
        lower.starts_with("sip:") || lower.starts_with("sips:") || lower.starts_with("tel:");
    if !scheme {
        return Err(refuse(what, "not a sip:, sips: or tel: URI"));
    }
    if bad || text.len() > 256 {
        return Err(refuse(
            what,
            "not a SIP URI (spaces, <>\", non-ASCII or > 256 bytes)",
        ));
    }
    identity_of(text).ok_or_else(|| refuse(what, "not a sip:, sips: or tel: URI"))
}

impl Directory {
    pub fn new(users: &[UserSpec], groups: &[GroupSpec]) -> Result<Directory, DirectoryError> {
        let mut d = Directory::default();
        for (i, u) in users.iter().enumerate() {
            d.put_user(u)
                .map_err(|e| refuse(&format!("user[{i}]"), e.to_string()))?;
        }
        for (i, g) in groups.iter().enumerate() {
            d.put_group(g)
                .map_err(|e| refuse(&format!("group[{i}]"), e.to_string()))?;
        }
        Ok(d)
    }

    /// The user whose `msisdn` is `n` (E.164), if any.
    pub fn user_by_msisdn(&self, n: &str) -> Option<&User> {
        self.users.values().find(|u| u.msisdn.as_deref() == Some(n))
    }

    /// Add or replace a user.
    pub fn put_user(&mut self, u: &UserSpec) -> Result<(), DirectoryError> {
        let identity = check_uri(&u.id, &u.id)?;
        if let Some(n) = &u.msisdn {
            if !is_e164(n) {
                return Err(refuse(
                    &u.id,
                    format!("msisdn '{n}' is not E.164 (+ and 6-15 digits)"),
                ));
            }
        }
        let user = User {
            uri: u.id.clone(),
            media: u.media.clone(),
            when_unregistered: u.when_unregistered,
            msisdn: u.msisdn.clone(),
        };
        self.users.insert(identity, user);
        Ok(())
    }

    /// Add or replace a group.
    pub fn put_group(&mut self, g: &GroupSpec) -> Result<(), DirectoryError> {
        let identity = check_uri(&g.id, &g.id)?;
        if g.members.len() > MAX_MEMBERS {
            return Err(refuse(&g.id, format!("more than {MAX_MEMBERS} members")));
        }
        if g.max_participants < 2 {
            return Err(refuse(&g.id, "max_participants below 2"));
        }
        let mut members: Vec<Member> = Vec::with_capacity(g.members.len());
        for m in &g.members {
            let id = check_uri(m, m)?;
            if members.iter().any(|x| x.identity == id) {
                return Err(refuse(&g.id, format!("member {m} listed twice")));
            }
            members.push(Member {
                uri: m.clone(),
                identity: id,
            });
        }
        let group = Group {
            uri: g.id.clone(),
            host: g.host.clone(),
            members,
            max_participants: g.max_participants,
            invite: g.invite,
            subject: g.subject.clone(),
            media: g.media.clone(),
        };
        self.groups.insert(identity, group);
        Ok(())
    }

    pub fn remove_user(&mut self, identity: &str) -> bool {
        self.users.remove(identity).is_some()
    }

    pub fn remove_group(&mut self, identity: &str) -> bool {
        self.groups.remove(identity).is_some()
    }

    pub fn user(&self, identity: &str) -> Option<&User> {
        self.users.get(identity)
    }

    pub fn group(&self, identity: &str) -> Option<&Group> {
        self.groups.get(identity)
    }

    /// Groups in identity order.
    pub fn groups(&self) -> Vec<(&str, &Group)> {
        let mut v: Vec<_> = self.groups.iter().map(|(k, g)| (k.as_str(), g)).collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Users in identity order.
    pub fn users(&self) -> Vec<(&str, &User)> {
        let mut v: Vec<_> = self.users.iter().map(|(k, u)| (k.as_str(), u)).collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// The groups hosted by shard `name`.
    pub fn hosted_by<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, &'a Group)> {
        self.groups
            .iter()
            .filter(move |(_, g)| g.host == name)
            .map(|(k, g)| (k.as_str(), g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(id: &str, members: &[&str]) -> GroupSpec {
        GroupSpec {
            id: id.into(),
            host: "cs1".into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            max_participants: 10,
            invite: InvitePolicy::Members,
            subject: None,
            media: MediaPolicy::default(),
        }
    }

    #[test]
    fn identities_are_canonical() {
        assert_eq!(
            identity_of("sip:Grp1@GROUPS.example.net:5060;transport=udp").as_deref(),
            Some("Grp1@groups.example.net")
        );
        let d = Directory::new(
            &[],
            &[group("sip:g@h.example", &["sip:alice@127.0.0.1:5071"])],
        )
        .unwrap();
        let g = d.group("g@h.example").unwrap();
        assert!(g.is_member("alice@127.0.0.1"));
        assert_eq!(g.members[0].uri, "sip:alice@127.0.0.1:5071");
    }

    #[test]
    fn bad_entries_are_refused_by_name() {
        let e = Directory::new(&[], &[group("sip:g@h", &["sip:a@x", "sip:a@x:5"])]).unwrap_err();
        assert_eq!(e.what, "group[0]");
        assert!(e.reason.contains("listed twice"), "{e}");
        let e = Directory::new(&[], &[group("sip:g@h", &["sip:a b@x"])]).unwrap_err();
        assert!(e.reason.contains("not a SIP URI"), "{e}");
        let e = Directory::new(&[], &[group("mailto:g@h", &[])]).unwrap_err();
        assert!(e.reason.contains("sip:"), "{e}");
    }
}
