//! HTTP Digest authentication for SIP (RFC 8760 over RFC 7616, with the
//! RFC 3261 §22.4 / RFC 2617 forms): the server's side (parse the
//! credentials, check the nonce, refuse replays, verify the response, write
//! the challenge) and a client helper (parse a challenge, answer it) for the
//! tests and the demo client.
//!
//! Sans-IO and allocation-free on the message path: everything borrows the
//! header value or writes into an [`Out`]; the clock is a `now_s` argument.
//! Only [`NonceCounts`] owns memory, allocated once at its capacity.
//!
//! A server checks a request's credentials in this order (each failure is
//! a different answer):
//!
//! 1. [`parse_credentials`] on the Authorization (or Proxy-Authorization)
//!    value: an error is `400 Bad Request - <`[`DigestError::reason`]`>`;
//! 2. the realm is its own and `uri` is the Request-URI (the caller's
//!    policy: this module does not know either);
//! 3. [`check_nonce`]: `Stale` or `Forged` re-challenge (`stale=true` for
//!    a stale nonce whose response verifies, RFC 7616 §3.3);
//! 4. [`verify`] against the stored [`Ha1`] (never a password);
//! 5. [`NonceCounts::check`] with the `nc`: a replay is refused.
//!
//! Quoted values are kept as their raw bytes between the quotes: a
//! `quoted-pair` (`\"`, `\\`) is not unescaped, so a username or realm
//! holding one is hashed in its escaped form. Real usernames, realms,
//! nonces, URIs and cnonces carry no backslash or quote; keeping the raw
//! bytes means nothing is copied, and a value read here and written back
//! inside quotes ([`write_challenge`], [`write_authorization`]) is the same
//! quoted string.

use super::params::quoted_end;
use super::rewrite::Out;
use super::{is_lws, is_token, skip_lws};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// At most this many auth-params in one header value.
pub const MAX_PARAMS: usize = 32;
/// At most this many bytes in one auth-param value (inside the quotes).
pub const MAX_VALUE_LEN: usize = 1024;

/// A digest algorithm of RFC 8760 this module implements (the `-sess`
/// variants and SHA-512-256 are not: they are refused as unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// MD5 (RFC 2617; the default when `algorithm` is absent).
    Md5,
    /// SHA-256 (RFC 7616, RFC 8760).
    Sha256,
}

impl Algorithm {
    /// The `algorithm` parameter's token.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// The algorithm an `algorithm` token names (case-insensitive); `None`
    /// for anything else. An absent parameter means MD5: the caller
    /// handles absence, as only it knows the parameter was absent.
    pub fn from_token(token: &[u8]) -> Option<Algorithm> {
        if token.eq_ignore_ascii_case(b"MD5") {
            Some(Algorithm::Md5)
        } else if token.eq_ignore_ascii_case(b"SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    /// Length of a digest in lowercase hex: 32 for MD5, 64 for SHA-256.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 => 64,
        }
    }
}

/// Quality of protection: `auth` is the only one implemented (`auth-int`,
/// a hash of the body, is refused as [`DigestError::UnsupportedQop`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qop {
    /// `qop=auth`.
    Auth,
}

/// Why a Digest header value was refused. [`DigestError::reason`] is the
/// short phrase for a `400 Bad Request - <reason>` status line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The scheme is not `Digest`.
    #[error("the authentication scheme is not Digest")]
    NotDigest,
    /// The auth-param list does not follow the grammar.
    #[error("the Digest parameters are malformed")]
    Syntax,
    /// More than [`MAX_PARAMS`] auth-params.
    #[error("more than 32 Digest parameters")]
    TooManyParams,
    /// An auth-param value longer than [`MAX_VALUE_LEN`].
    #[error("a Digest parameter value is longer than 1024 bytes")]
    ValueTooLong,
    /// A parameter this module reads was given twice.
    #[error("a Digest parameter is given twice")]
    DuplicateParam,
    /// No `username`.
    #[error("the credentials have no username")]
    MissingUsername,
    /// No `realm`.
    #[error("no realm")]
    MissingRealm,
    /// No `nonce`.
    #[error("no nonce")]
    MissingNonce,
    /// No `uri`.
    #[error("the credentials have no uri")]
    MissingUri,
    /// No `response`.
    #[error("the credentials have no response")]
    MissingResponse,
    /// `qop` without `cnonce`.
    #[error("qop is given without cnonce")]
    MissingCnonce,
    /// `qop` without `nc`.
    #[error("qop is given without nc")]
    MissingNc,
    /// `response` is not hex of the algorithm's digest length.
    #[error("the response is not hex of the algorithm's digest length")]
    BadResponse,
    /// `nc` is not exactly 8 hex digits.
    #[error("nc is not exactly 8 hex digits")]
    BadNc,
    /// An `algorithm` other than MD5 and SHA-256.
    #[error("the algorithm is not MD5 or SHA-256")]
    UnsupportedAlgorithm,
    /// A `qop` other than `auth` (credentials), or a qop list without
    /// `auth` (challenge).
    #[error("the qop is not auth")]
    UnsupportedQop,
    /// `userhash=true` (RFC 7616 §3.4.4): the username is a hash this
    /// server does not look up.
    #[error("userhash=true is not supported")]
    UnsupportedUserhash,
    /// A stored HA1 that is not hex of the algorithm's digest length.
    #[error("the stored HA1 is not hex of the algorithm's digest length")]
    BadHa1,
}

impl DigestError {
    /// A short Title Case phrase for a SIP reason phrase.
    pub fn reason(&self) -> &'static str {
        match self {
            DigestError::NotDigest => "Not Digest Scheme",
            DigestError::Syntax => "Bad Digest Syntax",
            DigestError::TooManyParams => "Too Many Digest Params",
            DigestError::ValueTooLong => "Digest Value Too Long",
            DigestError::DuplicateParam => "Duplicate Digest Param",
            DigestError::MissingUsername => "Missing Digest Username",
            DigestError::MissingRealm => "Missing Digest Realm",
            DigestError::MissingNonce => "Missing Digest Nonce",
            DigestError::MissingUri => "Missing Digest Uri",
            DigestError::MissingResponse => "Missing Digest Response",
            DigestError::MissingCnonce => "Missing Digest Cnonce",
            DigestError::MissingNc => "Missing Digest Nc",
            DigestError::BadResponse => "Bad Digest Response",
            DigestError::BadNc => "Bad Digest Nc",
            DigestError::UnsupportedAlgorithm => "Unsupported Digest Algorithm",
            DigestError::UnsupportedQop => "Unsupported Digest Qop",
            DigestError::UnsupportedUserhash => "Unsupported Digest Userhash",
            DigestError::BadHa1 => "Bad Digest Ha1",
        }
    }
}

// ---------------------------------------------------------------- hashing

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// A digest in lowercase hex: 32 (MD5) or 64 (SHA-256) bytes, inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Hex {
    /// The digits; zero past `len` (so the derived equality is exact).
    buf: [u8; 64],
    len: u8,
}

impl Hex {
    /// Lowercase hex of `raw` (at most 32 bytes: a digest).
    fn encode(raw: &[u8]) -> Hex {
        debug_assert!(raw.len() <= 32);
        let mut h = Hex {
            buf: [0; 64],
            len: 0,
        };
        for (pair, b) in h.buf.chunks_exact_mut(2).zip(raw) {
            pair[0] = HEX_DIGITS[usize::from(b >> 4)];
            pair[1] = HEX_DIGITS[usize::from(b & 0xf)];
            h.len += 2;
        }
        h
    }

    /// The hex digits.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(self.as_bytes()).unwrap_or("?"))
    }
}

/// One hash computation of either algorithm.
enum Hasher {
    Md5(Md5),
    Sha256(Sha256),
}

impl Hasher {
    fn new(alg: Algorithm) -> Hasher {
        match alg {
            Algorithm::Md5 => Hasher::Md5(Md5::new()),
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
        }
    }
    fn update(&mut self, s: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(s),
            Hasher::Sha256(h) => h.update(s),
        }
    }
    fn hex(self) -> Hex {
        match self {
            Hasher::Md5(h) => Hex::encode(&h.finalize()),
            Hasher::Sha256(h) => Hex::encode(&h.finalize()),
        }
    }
}

/// `H(parts[0] ":" parts[1] ":" ...)` in lowercase hex.
fn h_joined(alg: Algorithm, parts: &[&[u8]]) -> Hex {
    let mut h = Hasher::new(alg);
    for (k, p) in parts.iter().enumerate() {
        if k > 0 {
            h.update(b":");
        }
        h.update(p);
    }
    h.hex()
}

/// Is `s` exactly `len` hex digits (either case)?
fn is_hex_of_len(s: &[u8], len: usize) -> bool {
    s.len() == len && s.iter().all(u8::is_ascii_hexdigit)
}

/// Equality whose time depends on the length only, not on where the
/// first difference is: a response or MAC compared byte by byte with an
/// early exit would tell an attacker how much of a guess was right.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A stored credential: `H(username ":" realm ":" password)` in lowercase
/// hex for one algorithm. Its `Debug` hides the digits: an HA1 is as good
/// as the password for this realm.
#[derive(Clone, Copy)]
pub struct Ha1 {
    /// The algorithm `hex` was computed with.
    pub alg: Algorithm,
    hex: Hex,
}

impl Ha1 {
    /// The HA1 of a password (provisioning, tests, the demo client).
    pub fn compute(alg: Algorithm, username: &[u8], realm: &[u8], password: &[u8]) -> Ha1 {
        Ha1 {
            alg,
            hex: h_joined(alg, &[username, realm, password]),
        }
    }

    /// A stored HA1 from its hex text (either case; kept lowercase, as the
    /// response hashes it as text). `BadHa1` unless it is exactly
    /// [`Algorithm::hex_len`] hex digits.
    pub fn from_hex(alg: Algorithm, hex: &[u8]) -> Result<Ha1, DigestError> {
        if !is_hex_of_len(hex, alg.hex_len()) {
            return Err(DigestError::BadHa1);
        }
        let mut h = Hex {
            buf: [0; 64],
            len: 0,
        };
        for (d, s) in h.buf.iter_mut().zip(hex) {
            *d = s.to_ascii_lowercase();
        }
        h.len = hex.len() as u8;
        Ok(Ha1 { alg, hex: h })
    }

    /// The lowercase hex digits.
    pub fn as_hex(&self) -> &Hex {
        &self.hex
    }
}

impl std::fmt::Debug for Ha1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ha1({}, <hidden>)", self.alg.name())
    }
}

/// The request-digest (RFC 7616 §3.4.1): with `qop = Some((nc_text,
/// cnonce))`, `KD(HA1, nonce ":" nc ":" cnonce ":" "auth" ":" HA2)`;
/// without, the RFC 2069 form `KD(HA1, nonce ":" HA2)`; where
/// `HA2 = H(method ":" uri)` and `KD(s, d) = H(s ":" d)`.
pub fn response(
    alg: Algorithm,
    ha1_hex: &[u8],
    nonce: &[u8],
    method: &[u8],
    uri: &[u8],
    qop: Option<(&[u8], &[u8])>,
) -> Hex {
    let ha2 = h_joined(alg, &[method, uri]);
    match qop {
        Some((nc, cnonce)) => h_joined(alg, &[ha1_hex, nonce, nc, cnonce, b"auth", ha2.as_bytes()]),
        None => h_joined(alg, &[ha1_hex, nonce, ha2.as_bytes()]),
    }
}

/// Does `c.response` prove knowledge of `ha1` for this `method`? False
/// when the algorithms differ, when qop is given without cnonce or nc, or
/// when the response is not hex of the right length. The response is
/// compared in constant time, case-insensitively (its hex is checked
/// first, so folding case cannot make another byte equal a digit).
///
/// The nonce's freshness, the realm, the uri against the Request-URI and
/// the nc against replays are the caller's other checks (module docs).
pub fn verify(c: &Credentials<'_>, ha1: &Ha1, method: &[u8]) -> bool {
    if c.algorithm != ha1.alg || !is_hex_of_len(c.response, ha1.alg.hex_len()) {
        return false;
    }
    let qop = match c.qop {
        Some(Qop::Auth) => match (c.nc_text, c.cnonce) {
            (Some(nc), Some(cnonce)) => Some((nc, cnonce)),
            _ => return false,
        },
        None => None,
    };
    let want = response(ha1.alg, ha1.hex.as_bytes(), c.nonce, method, c.uri, qop);
    let mut got = [0u8; 64];
    for (g, r) in got.iter_mut().zip(c.response) {
        *g = r.to_ascii_lowercase();
    }
    ct_eq(&got[..c.response.len()], want.as_bytes())
}

// ---------------------------------------------------------------- parsing

/// One auth-param: its name and value (the raw bytes between the quotes
/// when quoted).
struct AuthParam<'a> {
    name: &'a [u8],
    value: &'a [u8],
}

/// Walks `Digest LWS auth-param *(COMMA auth-param)` over `value` (LWS
/// allowed around `=` and `,`, and at both ends), calling `each` per
/// parameter. Values are tokens or quoted strings, either for any
/// parameter: clients quote `qop` or `algorithm` (and leave `nc` bare)
/// inconsistently, and the meaning is the same.
fn walk_params<'a>(
    value: &'a [u8],
    mut each: impl FnMut(AuthParam<'a>) -> Result<(), DigestError>,
) -> Result<(), DigestError> {
    let mut i = skip_lws(value, 0);
    let scheme_end = token_end(value, i);
    if !value[i..scheme_end].eq_ignore_ascii_case(b"Digest") {
        return Err(DigestError::NotDigest);
    }
    i = scheme_end;
    if i == value.len() {
        return Ok(());
    }
    if !is_lws(value[i]) {
        return Err(DigestError::Syntax);
    }
    i = skip_lws(value, i);
    if i == value.len() {
        return Ok(());
    }
    let mut count = 0;
    loop {
        if count == MAX_PARAMS {
            return Err(DigestError::TooManyParams);
        }
        count += 1;
        let (param, next) = one_param(value, i)?;
        each(param)?;
        i = skip_lws(value, next);
        match value.get(i) {
            None => return Ok(()),
            Some(b',') => i = skip_lws(value, i + 1),
            Some(_) => return Err(DigestError::Syntax),
        }
    }
}

/// The end of the run of token characters in `s` from `i`.
fn token_end(s: &[u8], i: usize) -> usize {
    let t = s.get(i..).unwrap_or(&[]);
    i + t.iter().position(|b| !is_token(*b)).unwrap_or(t.len())
}

/// The auth-param starting at `s[i]` (not LWS) and the index past it.
fn one_param(s: &[u8], i: usize) -> Result<(AuthParam<'_>, usize), DigestError> {
    let name_end = token_end(s, i);
    if name_end == i {
        return Err(DigestError::Syntax);
    }
    let eq = skip_lws(s, name_end);
    if s.get(eq) != Some(&b'=') {
        return Err(DigestError::Syntax);
    }
    let v = skip_lws(s, eq + 1);
    let (value, next) = if s.get(v) == Some(&b'"') {
        let end = quoted_end(s, v).ok_or(DigestError::Syntax)?;
        let inside = &s[v + 1..end - 1];
        // Folding inside a quoted value is legal but never sent in Digest;
        // refusing CR and LF there keeps every value writable back as is
        // (`is_quotable`).
        if inside.iter().any(|b| matches!(b, b'\r' | b'\n')) {
            return Err(DigestError::Syntax);
        }
        (inside, end)
    } else {
        let end = token_end(s, v);
        if end == v {
            return Err(DigestError::Syntax);
        }
        (&s[v..end], end)
    };
    if value.len() > MAX_VALUE_LEN {
        return Err(DigestError::ValueTooLong);
    }
    let name = &s[i..name_end];
    Ok((AuthParam { name, value }, next))
}

/// Store `value` in `slot`; `DuplicateParam` when it is already set.
fn set_once<'a>(slot: &mut Option<&'a [u8]>, value: &'a [u8]) -> Result<(), DigestError> {
    if slot.is_some() {
        return Err(DigestError::DuplicateParam);
    }
    *slot = Some(value);
    Ok(())
}

/// The names of [`Fields`], in its order.
const FIELD_NAMES: [&[u8]; 12] = [
    b"username",
    b"realm",
    b"nonce",
    b"uri",
    b"response",
    b"algorithm",
    b"qop",
    b"cnonce",
    b"nc",
    b"opaque",
    b"userhash",
    b"stale",
];

/// The parameters of a Digest header value this module reads, by name
/// (case-insensitive, RFC 7616 §3.3), each at most once.
#[derive(Default)]
struct Fields<'a> {
    username: Option<&'a [u8]>,
    realm: Option<&'a [u8]>,
    nonce: Option<&'a [u8]>,
    uri: Option<&'a [u8]>,
    response: Option<&'a [u8]>,
    algorithm: Option<&'a [u8]>,
    qop: Option<&'a [u8]>,
    cnonce: Option<&'a [u8]>,
    nc: Option<&'a [u8]>,
    opaque: Option<&'a [u8]>,
    userhash: Option<&'a [u8]>,
    stale: Option<&'a [u8]>,
}

impl<'a> Fields<'a> {
    /// Walk `value`, keeping the known parameters; unknown ones (`domain`,
    /// `charset`, `username*`, extensions) are skipped.
    fn read(value: &'a [u8]) -> Result<Fields<'a>, DigestError> {
        let mut f = Fields::default();
        walk_params(value, |p| {
            let Some(k) = FIELD_NAMES
                .iter()
                .position(|n| p.name.eq_ignore_ascii_case(n))
            else {
                return Ok(());
            };
            let slot = match k {
                0 => &mut f.username,
                1 => &mut f.realm,
                2 => &mut f.nonce,
                3 => &mut f.uri,
                4 => &mut f.response,
                5 => &mut f.algorithm,
                6 => &mut f.qop,
                7 => &mut f.cnonce,
                8 => &mut f.nc,
                9 => &mut f.opaque,
                10 => &mut f.userhash,
                _ => &mut f.stale,
            };
            set_once(slot, p.value)
        })?;
        Ok(f)
    }

    /// The algorithm named, MD5 when absent.
    fn algorithm(&self) -> Result<Algorithm, DigestError> {
        match self.algorithm {
            None => Ok(Algorithm::Md5),
            Some(t) => Algorithm::from_token(t).ok_or(DigestError::UnsupportedAlgorithm),
        }
    }
}

/// Digest credentials (RFC 7616 §3.4, RFC 3261 §22.4), borrowing the
/// header value. Quoted values are the raw bytes between the quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// The username (plain: `userhash=true` is refused).
    pub username: &'a [u8],
    /// The realm the client answers.
    pub realm: &'a [u8],
    /// The server's nonce the client answers.
    pub nonce: &'a [u8],
    /// The `digest-uri`: the Request-URI the client signed.
    pub uri: &'a [u8],
    /// The request-digest, hex of the algorithm's length (either case).
    pub response: &'a [u8],
    /// The algorithm (MD5 when absent).
    pub algorithm: Algorithm,
    /// `qop=auth`, or `None` for the RFC 2069 form.
    pub qop: Option<Qop>,
    /// The client nonce (required with qop).
    pub cnonce: Option<&'a [u8]>,
    /// The nonce count's value (required with qop).
    pub nc: Option<u32>,
    /// The nonce count as sent: 8 hex digits, hashed as text.
    pub nc_text: Option<&'a [u8]>,
    /// The server's opaque value echoed back.
    pub opaque: Option<&'a [u8]>,
}

/// The credentials in an Authorization / Proxy-Authorization value (the
/// text after the colon; LWS and folding allowed). Bounded: at most
/// [`MAX_PARAMS`] parameters of at most [`MAX_VALUE_LEN`] bytes each.
/// `nc` and `cnonce` are validated even without qop, which ignores them.
pub fn parse_credentials(value: &[u8]) -> Result<Credentials<'_>, DigestError> {
    let f = Fields::read(value)?;
    let algorithm = f.algorithm()?;
    let qop = match f.qop {
        None => None,
        Some(q) if q.eq_ignore_ascii_case(b"auth") => Some(Qop::Auth),
        Some(_) => return Err(DigestError::UnsupportedQop),
    };
    if f.userhash.is_some_and(|u| u.eq_ignore_ascii_case(b"true")) {
        return Err(DigestError::UnsupportedUserhash);
    }
    let nc = f.nc.map(parse_nc).transpose()?;
    let c = Credentials {
        username: f.username.ok_or(DigestError::MissingUsername)?,
        realm: f.realm.ok_or(DigestError::MissingRealm)?,
        nonce: f.nonce.ok_or(DigestError::MissingNonce)?,
        uri: f.uri.ok_or(DigestError::MissingUri)?,
        response: f.response.ok_or(DigestError::MissingResponse)?,
        algorithm,
        qop,
        cnonce: f.cnonce,
        nc,
        nc_text: f.nc,
        opaque: f.opaque,
    };
    if qop.is_some() {
        c.cnonce.ok_or(DigestError::MissingCnonce)?;
        c.nc.ok_or(DigestError::MissingNc)?;
    }
    if !is_hex_of_len(c.response, algorithm.hex_len()) {
        return Err(DigestError::BadResponse);
    }
    Ok(c)
}

/// An `nc` value: exactly 8 hex digits (RFC 7616 §3.4).
fn parse_nc(s: &[u8]) -> Result<u32, DigestError> {
    if !is_hex_of_len(s, 8) {
        return Err(DigestError::BadNc);
    }
    let text = std::str::from_utf8(s).map_err(|_| DigestError::BadNc)?;
    u32::from_str_radix(text, 16).map_err(|_| DigestError::BadNc)
}

/// A Digest challenge (WWW-Authenticate / Proxy-Authenticate value), as
/// the client side reads it. One challenge per header value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Challenge<'a> {
    /// The realm to answer.
    pub realm: &'a [u8],
    /// The server's nonce.
    pub nonce: &'a [u8],
    /// The algorithm (MD5 when absent).
    pub algorithm: Algorithm,
    /// The qop list offers `auth`; false when there is no qop list (the
    /// RFC 2069 form is then answered).
    pub qop_auth: bool,
    /// `stale=true` (case-insensitive; any other value is false, RFC
    /// 7616 §3.3).
    pub stale: bool,
    /// The opaque value to echo back.
    pub opaque: Option<&'a [u8]>,
}

/// The challenge in a WWW-Authenticate / Proxy-Authenticate value. A qop
/// list that does not offer `auth` is `UnsupportedQop`.
pub fn parse_challenge(value: &[u8]) -> Result<Challenge<'_>, DigestError> {
    let f = Fields::read(value)?;
    let qop_auth = match f.qop {
        None => false,
        Some(list) if qop_list_has_auth(list) => true,
        Some(_) => return Err(DigestError::UnsupportedQop),
    };
    Ok(Challenge {
        realm: f.realm.ok_or(DigestError::MissingRealm)?,
        nonce: f.nonce.ok_or(DigestError::MissingNonce)?,
        algorithm: f.algorithm()?,
        qop_auth,
        stale: f.stale.is_some_and(|s| s.eq_ignore_ascii_case(b"true")),
        opaque: f.opaque,
    })
}

/// Does the comma-separated `qop-options` list hold `auth`?
fn qop_list_has_auth(list: &[u8]) -> bool {
    list.split(|b| *b == b',')
        .any(|item| trim_lws(item).eq_ignore_ascii_case(b"auth"))
}

fn trim_lws(s: &[u8]) -> &[u8] {
    let a = s.iter().position(|b| !is_lws(*b)).unwrap_or(s.len());
    let b = s.iter().rposition(|b| !is_lws(*b)).map_or(a, |p| p + 1);
    &s[a..b]
}

// ---------------------------------------------------------------- writing

/// Can `s` stand between two quotes as is: `qdtext` and `quoted-pair`
/// only (what [`parse_challenge`] and [`parse_credentials`] return always
/// can). The writers below put their values in quotes unescaped; a realm
/// from configuration is checked with this when it is loaded.
pub fn is_quotable(s: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'"' => return false,
            b'\\' => match s.get(i + 1) {
                Some(&e) if e <= 0x7f && e != b'\r' && e != b'\n' => i += 2,
                _ => return false,
            },
            b' ' | b'\t' | 0x21..=0x7e | 0x80.. => i += 1,
            _ => return false,
        }
    }
    true
}

/// Put `"value"` (the caller guarantees [`is_quotable`]).
fn put_quoted(o: &mut Out<'_>, value: &[u8]) {
    debug_assert!(is_quotable(value), "{:?}", String::from_utf8_lossy(value));
    o.put(b"\"");
    o.put(value);
    o.put(b"\"");
}

/// One challenge line: `<header>: Digest realm="...", nonce="...",
/// algorithm=<alg>, qop="auth"[, stale=true]` and CRLF. `header` is
/// `WWW-Authenticate` (registrar, 401) or `Proxy-Authenticate` (proxy,
/// 407); `realm` and `nonce` are [`is_quotable`].
pub fn write_challenge(
    o: &mut Out<'_>,
    header: &[u8],
    realm: &[u8],
    nonce: &[u8],
    alg: Algorithm,
    stale: bool,
) {
    o.put(header);
    o.put(b": Digest realm=");
    put_quoted(o, realm);
    o.put(b", nonce=");
    put_quoted(o, nonce);
    o.put(b", algorithm=");
    o.put(alg.name().as_bytes());
    o.put(b", qop=\"auth\"");
    if stale {
        o.put(b", stale=true");
    }
    o.put(b"\r\n");
}

/// One credentials line answering `c`: `<header>: Digest username=...,
/// realm, nonce, uri, response, algorithm[, qop=auth, nc, cnonce][,
/// opaque]` and CRLF (`Authorization` or `Proxy-Authorization`). The
/// algorithm written is the HA1's, so the line is self-consistent; the
/// caller picks the HA1 of `c.algorithm`. Without `auth` in the challenge
/// the RFC 2069 form is written (no qop, nc, cnonce). `username`, `uri`
/// and `cnonce` are [`is_quotable`].
#[allow(clippy::too_many_arguments)]
pub fn write_authorization(
    o: &mut Out<'_>,
    header: &[u8],
    c: &Challenge<'_>,
    username: &[u8],
    ha1: &Ha1,
    method: &[u8],
    uri: &[u8],
    cnonce: &[u8],
    nc: u32,
) {
    let nc_text = nc_hex(nc);
    let qop = c.qop_auth.then_some((&nc_text[..], cnonce));
    let r = response(ha1.alg, ha1.hex.as_bytes(), c.nonce, method, uri, qop);
    o.put(header);
    o.put(b": Digest username=");
    put_quoted(o, username);
    o.put(b", realm=");
    put_quoted(o, c.realm);
    o.put(b", nonce=");
    put_quoted(o, c.nonce);
    o.put(b", uri=");
    put_quoted(o, uri);
    o.put(b", response=");
    put_quoted(o, r.as_bytes());
    o.put(b", algorithm=");
    o.put(ha1.alg.name().as_bytes());
    if let Some((nc_text, cnonce)) = qop {
        o.put(b", qop=auth, nc=");
        o.put(nc_text);
        o.put(b", cnonce=");
        put_quoted(o, cnonce);
    }
    if let Some(opaque) = c.opaque {
        o.put(b", opaque=");
        put_quoted(o, opaque);
    }
    o.put(b"\r\n");
}

/// `nc` as 8 lowercase hex digits.
fn nc_hex(nc: u32) -> [u8; 8] {
    let mut t = [0u8; 8];
    for (k, d) in t.iter_mut().enumerate() {
        *d = HEX_DIGITS[((nc >> (28 - 4 * k)) & 0xf) as usize];
    }
    t
}

// ---------------------------------------------------------------- nonces

/// Length of a [`Nonce`]'s text.
pub const NONCE_LEN: usize = 40;
/// Bytes under the nonce's base64url: issued time (8), sequence (4), MAC.
const NONCE_RAW: usize = 30;
const NONCE_DATA: usize = 12;
/// Domain separation: this key's MACs mean nothing in another protocol.
const NONCE_LABEL: &[u8] = b"cpm-edge digest nonce v1";
/// A nonce issued further ahead of `now` than this is forged (clock skew
/// between the nodes of a cluster sharing the key is smaller).
const MAX_FUTURE_S: u64 = 2;

/// The secret that MACs nonces: shared by every node that checks them.
/// Its `Debug` hides it.
#[derive(Clone)]
pub struct NonceKey([u8; 32]);

impl NonceKey {
    /// A key from 32 secret random bytes.
    pub fn new(key: [u8; 32]) -> NonceKey {
        NonceKey(key)
    }

    /// The 18-byte MAC of a nonce's data: SHA-256 over key, label, data,
    /// truncated. The data has a fixed length and the output is truncated,
    /// so a length extension gives nothing `check_nonce` accepts.
    fn mac(&self, data: &[u8; NONCE_DATA]) -> [u8; NONCE_RAW - NONCE_DATA] {
        let mut h = Sha256::new();
        h.update(self.0);
        h.update(NONCE_LABEL);
        h.update(data);
        let full = h.finalize();
        let mut mac = [0u8; NONCE_RAW - NONCE_DATA];
        mac.copy_from_slice(&full[..NONCE_RAW - NONCE_DATA]);
        mac
    }
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(<hidden>)")
    }
}

/// A stateless nonce: base64url (no padding) of the issued time (u64,
/// seconds), a sequence number (u32: nonces of one second differ) and an
/// 18-byte MAC; [`NONCE_LEN`] printable bytes. 30 bytes are exactly 40
/// characters, so every nonce has one spelling: two texts can never
/// carry the same MAC and dodge [`NonceCounts`] as two nonces.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce([u8; NONCE_LEN]);

impl Nonce {
    /// The nonce's text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(&self.0).unwrap_or("?"))
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64_value(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// A nonce issued at `issued_s` (the caller's clock) with sequence `seq`.
pub fn mint_nonce(key: &NonceKey, issued_s: u64, seq: u32) -> Nonce {
    let mut data = [0u8; NONCE_DATA];
    data[..8].copy_from_slice(&issued_s.to_be_bytes());
    data[8..].copy_from_slice(&seq.to_be_bytes());
    let mut raw = [0u8; NONCE_RAW];
    raw[..NONCE_DATA].copy_from_slice(&data);
    raw[NONCE_DATA..].copy_from_slice(&key.mac(&data));
    let mut text = [0u8; NONCE_LEN];
    for (three, four) in raw.chunks_exact(3).zip(text.chunks_exact_mut(4)) {
        let w = u32::from(three[0]) << 16 | u32::from(three[1]) << 8 | u32::from(three[2]);
        for (k, c) in four.iter_mut().enumerate() {
            *c = B64[((w >> (18 - 6 * k)) & 63) as usize];
        }
    }
    Nonce(text)
}

/// What [`check_nonce`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceCheck {
    /// Minted with this key, within its lifetime.
    Fresh {
        /// When it was minted.
        issued_s: u64,
    },
    /// Minted with this key but older than the lifetime: re-challenge
    /// with `stale=true`.
    Stale,
    /// Not a nonce of this key: malformed, a wrong MAC, or issued more
    /// than 2 s after `now_s`.
    Forged,
}

/// Is `nonce` one of `key`'s, and is it still fresh at `now_s`?
pub fn check_nonce(key: &NonceKey, nonce: &[u8], now_s: u64, lifetime_s: u64) -> NonceCheck {
    let Some(raw) = decode_nonce(nonce) else {
        return NonceCheck::Forged;
    };
    let mut data = [0u8; NONCE_DATA];
    data.copy_from_slice(&raw[..NONCE_DATA]);
    if !ct_eq(&key.mac(&data), &raw[NONCE_DATA..]) {
        return NonceCheck::Forged;
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&data[..8]);
    let issued_s = u64::from_be_bytes(t);
    if issued_s > now_s.saturating_add(MAX_FUTURE_S) {
        NonceCheck::Forged
    } else if now_s.saturating_sub(issued_s) > lifetime_s {
        NonceCheck::Stale
    } else {
        NonceCheck::Fresh { issued_s }
    }
}

/// The 30 bytes under a nonce's text; `None` unless it is 40 base64url
/// characters.
fn decode_nonce(nonce: &[u8]) -> Option<[u8; NONCE_RAW]> {
    if nonce.len() != NONCE_LEN {
        return None;
    }
    let mut raw = [0u8; NONCE_RAW];
    for (four, three) in nonce.chunks_exact(4).zip(raw.chunks_exact_mut(3)) {
        let mut w = 0u32;
        for c in four {
            w = w << 6 | b64_value(*c)?;
        }
        three.copy_from_slice(&w.to_be_bytes()[1..]);
    }
    Some(raw)
}

// ---------------------------------------------------------------- replays

/// A nonce's identity in the table: the first 16 bytes of its SHA-256, so
/// an entry has a fixed size whatever the nonce's length. Two nonces that
/// collided would share one count, which can only refuse, never accept a
/// replay (an entry's count never decreases).
type Fingerprint = [u8; 16];

fn fingerprint(nonce: &[u8]) -> Fingerprint {
    let full = Sha256::digest(nonce);
    let mut f = [0u8; 16];
    f.copy_from_slice(&full[..16]);
    f
}

/// One remembered nonce.
#[derive(Clone, Copy, Debug)]
struct Count {
    issued_s: u64,
    /// The highest nc accepted with it.
    nc: u32,
}

/// What [`NonceCounts::check`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NcCheck {
    /// A higher nc than any accepted with this nonce: go on.
    Accepted,
    /// An nc not above the highest accepted (or 0): a replay, refuse.
    Replayed,
    /// Expired, or no longer in the table and not newer than the
    /// watermark: re-challenge with a new nonce (`stale=true`).
    Stale,
}

/// Replay protection for nonce counts (RFC 7616 §3.4: a server may
/// refuse a repeated nc), in bounded memory.
///
/// Per nonce, the highest nc accepted; an nc is accepted only above it
/// (gaps allowed: requests cross on the wire). The table holds at most
/// `capacity` nonces. When it is full, expired entries go first, then the
/// oldest-issued one. Whatever leaves the table raises the *watermark* to
/// its issued time, and a nonce not in the table is accepted only if it
/// was issued after the watermark: a nonce that was forgotten can never
/// come back with a count it already used, the client is re-challenged
/// instead. (An expired entry raising the watermark changes nothing while
/// the lifetime stays the same, as every nonce issued before it is
/// expired too; it keeps a replay out if a caller ever lengthens the
/// lifetime or its clock steps back.)
///
/// Cost per entry, allocated once in `new`: a hash-map slot of 32 bytes
/// plus a control byte, at up to twice the buckets (power-of-two sizing
/// at a 7/8 load), and a 24-byte heap element: about 60 to 100 bytes.
/// Each check hashes the nonce once (SHA-256) and costs O(log capacity).
pub struct NonceCounts {
    capacity: usize,
    counts: HashMap<Fingerprint, Count>,
    /// The same entries by issued time, oldest on top.
    by_issued: BinaryHeap<Reverse<(u64, Fingerprint)>>,
    /// The newest issued time of any entry that left the table.
    watermark: Option<u64>,
}

impl NonceCounts {
    /// An empty table for at most `capacity` (> 0) nonces.
    pub fn new(capacity: usize) -> NonceCounts {
        assert!(capacity > 0, "a NonceCounts table needs room");
        NonceCounts {
            capacity,
            counts: HashMap::with_capacity(capacity),
            by_issued: BinaryHeap::with_capacity(capacity),
            watermark: None,
        }
    }

    /// Nonces remembered.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// No nonce remembered.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The newest issued time of a nonce that left the table (`None`
    /// until one has): nonces not in the table must be newer.
    pub fn watermark(&self) -> Option<u64> {
        self.watermark
    }

    /// May `nc` be used with `nonce` (issued at `issued_s`, as
    /// [`check_nonce`] found) at `now_s`? `Accepted` records it.
    /// `lifetime_s` should be the same on every call.
    pub fn check(
        &mut self,
        nonce: &[u8],
        issued_s: u64,
        nc: u32,
        now_s: u64,
        lifetime_s: u64,
    ) -> NcCheck {
        if now_s.saturating_sub(issued_s) > lifetime_s {
            return NcCheck::Stale;
        }
        let fp = fingerprint(nonce);
        let verdict = match self.counts.get_mut(&fp) {
            Some(c) if nc > c.nc => {
                c.nc = nc;
                NcCheck::Accepted
            }
            Some(_) => NcCheck::Replayed,
            None if self.watermark.is_some_and(|w| issued_s <= w) => NcCheck::Stale,
            None if nc == 0 => NcCheck::Replayed,
            None => {
                self.make_room(now_s, lifetime_s);
                self.counts.insert(fp, Count { issued_s, nc });
                self.by_issued.push(Reverse((issued_s, fp)));
                NcCheck::Accepted
            }
        };
        self.assert_bounded();
        verdict
    }

    /// With the table full, drop the expired entries (the oldest-issued
    /// are the first to expire, so they are the heap's top), or else the
    /// oldest-issued one.
    fn make_room(&mut self, now_s: u64, lifetime_s: u64) {
        if self.counts.len() < self.capacity {
            return;
        }
        while let Some(&Reverse((issued, _))) = self.by_issued.peek() {
            if now_s.saturating_sub(issued) <= lifetime_s {
                break;
            }
            self.remove_oldest();
        }
        if self.counts.len() >= self.capacity {
            self.remove_oldest();
        }
    }

    /// Remove the oldest-issued entry, raising the watermark to it.
    fn remove_oldest(&mut self) {
        if let Some(Reverse((issued, fp))) = self.by_issued.pop() {
            let gone = self.counts.remove(&fp);
            debug_assert!(gone.is_some_and(|c| c.issued_s == issued));
            self.watermark = Some(self.watermark.map_or(issued, |w| w.max(issued)));
        }
    }

    fn assert_bounded(&self) {
        debug_assert_eq!(self.counts.len(), self.by_issued.len());
        assert!(self.counts.len() <= self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RFC7616_NONCE: &[u8] = b"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const RFC7616_CNONCE: &[u8] = b"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
    const RFC7616_REALM: &[u8] = b"http-auth@example.org";

    fn text(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    /// RFC 7616 §3.9.1: the SHA-256 and MD5 responses of the example.
    #[test]
    fn rfc7616_example_responses() {
        for (alg, want) in [
            (
                Algorithm::Sha256,
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
            (Algorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec"),
        ] {
            let ha1 = Ha1::compute(alg, b"Mufasa", RFC7616_REALM, b"Circle of Life");
            let r = response(
                alg,
                ha1.as_hex().as_bytes(),
                RFC7616_NONCE,
                b"GET",
                b"/dir/index.html",
                Some((b"00000001", RFC7616_CNONCE)),
            );
            assert_eq!(text(r.as_bytes()), want, "{}", alg.name());
        }
    }

    /// The RFC 7616 §3.9.1 Authorization header, parsed and verified.
    #[test]
    fn rfc7616_example_header_verifies() {
        let value = b"Digest username=\"Mufasa\",\r\n realm=\"http-auth@example.org\",\r\n \
            uri=\"/dir/index.html\",\r\n algorithm=SHA-256,\r\n \
            nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\",\r\n nc=00000001,\r\n \
            cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\",\r\n qop=auth,\r\n \
            response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\",\r\n \
            opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";
        let c = parse_credentials(value).unwrap();
        assert_eq!(c.username, b"Mufasa");
        assert_eq!(c.realm, RFC7616_REALM);
        assert_eq!(c.uri, b"/dir/index.html");
        assert_eq!(c.algorithm, Algorithm::Sha256);
        assert_eq!(c.qop, Some(Qop::Auth));
        assert_eq!(c.nc, Some(1));
        assert_eq!(c.nc_text, Some(&b"00000001"[..]));
        assert_eq!(
            c.opaque,
            Some(&b"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"[..])
        );
        let ha1 = Ha1::compute(
            Algorithm::Sha256,
            b"Mufasa",
            RFC7616_REALM,
            b"Circle of Life",
        );
        assert!(verify(&c, &ha1, b"GET"));
        assert!(!verify(&c, &ha1, b"POST"));
        let other = Ha1::compute(
            Algorithm::Sha256,
            b"Mufasa",
            RFC7616_REALM,
            b"Circle of life",
        );
        assert!(!verify(&c, &other, b"GET"));
        // An MD5 HA1 of the same password does not verify a SHA-256 response.
        let md5 = Ha1::compute(Algorithm::Md5, b"Mufasa", RFC7616_REALM, b"Circle of Life");
        assert!(!verify(&c, &md5, b"GET"));
        // The stored-hex form verifies the same, in either case.
        let upper = ha1.as_hex().as_bytes().to_ascii_uppercase();
        let stored = Ha1::from_hex(Algorithm::Sha256, &upper).unwrap();
        assert_eq!(stored.as_hex(), ha1.as_hex());
        assert!(verify(&c, &stored, b"GET"));
    }

    /// RFC 2617 §3.5: MD5 with qop=auth, algorithm absent.
    #[test]
    fn rfc2617_example() {
        let value = b"Digest username=\"Mufasa\", realm=\"testrealm@host.com\", \
            nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"/dir/index.html\", \
            qop=auth, nc=00000001, cnonce=\"0a4f113b\", \
            response=\"6629fae49393a05397450978507c4ef1\", \
            opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";
        let c = parse_credentials(value).unwrap();
        assert_eq!(c.algorithm, Algorithm::Md5);
        let ha1 = Ha1::compute(
            Algorithm::Md5,
            b"Mufasa",
            b"testrealm@host.com",
            b"Circle Of Life",
        );
        assert!(verify(&c, &ha1, b"GET"));
        // An uppercase response is the same digest.
        let up = text(value).replace(
            "6629fae49393a05397450978507c4ef1",
            "6629FAE49393A05397450978507C4EF1",
        );
        assert!(verify(
            &parse_credentials(up.as_bytes()).unwrap(),
            &ha1,
            b"GET"
        ));
    }

    /// Without qop the RFC 2069 form: KD(HA1, nonce:HA2).
    #[test]
    fn rfc2069_form() {
        let ha1 = Ha1::compute(Algorithm::Md5, b"u", b"r", b"p");
        let r = response(
            Algorithm::Md5,
            ha1.as_hex().as_bytes(),
            b"n",
            b"REGISTER",
            b"sip:r",
            None,
        );
        let ha2 = h_joined(Algorithm::Md5, &[b"REGISTER", b"sip:r"]);
        let want = h_joined(
            Algorithm::Md5,
            &[ha1.as_hex().as_bytes(), b"n", ha2.as_bytes()],
        );
        assert_eq!(r, want);
        let value = format!(
            "Digest username=\"u\",realm=\"r\",nonce=\"n\",uri=\"sip:r\",response=\"{}\"",
            text(r.as_bytes())
        );
        let c = parse_credentials(value.as_bytes()).unwrap();
        assert_eq!((c.qop, c.nc, c.cnonce), (None, None, None));
        assert!(verify(&c, &ha1, b"REGISTER"));
    }

    const OK_MD5: &str = "username=\"u\", realm=\"r\", nonce=\"n\", uri=\"sip:r\", \
        response=\"0123456789abcdef0123456789abcdef\"";

    /// Each defect on its own, with its error.
    #[test]
    fn parser_defects_one_by_one() {
        use DigestError::*;
        let r32 = "response=\"0123456789abcdef0123456789abcdef\"";
        let base = "username=\"u\", realm=\"r\", nonce=\"n\", uri=\"sip:r\"";
        let cases: Vec<(String, DigestError)> = vec![
            (format!("Basic {base}, {r32}"), NotDigest),
            (format!("Digestx {base}, {r32}"), NotDigest),
            ("".into(), NotDigest),
            (format!("Digest,{base}, {r32}"), Syntax),
            (format!("Digest {base},, {r32}"), Syntax),
            (format!("Digest {base}, {r32},"), Syntax),
            (format!("Digest {base}, {r32} x"), Syntax),
            (format!("Digest {base}, realm2 \"x\", {r32}"), Syntax),
            (format!("Digest {base}, opaque=, {r32}"), Syntax),
            (format!("Digest {base}, opaque=\"open, {r32}"), Syntax),
            (format!("Digest {base}, opaque=\"a\rb\", {r32}"), Syntax),
            (format!("Digest {base}, opaque=a\"b\", {r32}"), Syntax),
            (format!("Digest {base}, =x, {r32}"), Syntax),
            (
                format!("Digest realm=\"r\", nonce=\"n\", uri=\"sip:r\", {r32}"),
                MissingUsername,
            ),
            (
                format!("Digest username=\"u\", nonce=\"n\", uri=\"sip:r\", {r32}"),
                MissingRealm,
            ),
            (
                format!("Digest username=\"u\", realm=\"r\", uri=\"sip:r\", {r32}"),
                MissingNonce,
            ),
            (
                format!("Digest username=\"u\", realm=\"r\", nonce=\"n\", {r32}"),
                MissingUri,
            ),
            (format!("Digest {base}"), MissingResponse),
            ("Digest".into(), MissingUsername),
            ("Digest   ".into(), MissingUsername),
            (
                format!("Digest {base}, {r32}, qop=auth, nc=00000001"),
                MissingCnonce,
            ),
            (
                format!("Digest {base}, {r32}, qop=auth, cnonce=\"c\""),
                MissingNc,
            ),
            (
                format!("Digest {base}, {r32}, qop=auth, cnonce=\"c\", nc=0000001"),
                BadNc,
            ),
            (
                format!("Digest {base}, {r32}, qop=auth, cnonce=\"c\", nc=000000001"),
                BadNc,
            ),
            (
                format!("Digest {base}, {r32}, qop=auth, cnonce=\"c\", nc=0000000g"),
                BadNc,
            ),
            (
                format!("Digest {base}, {r32}, qop=auth-int, cnonce=\"c\", nc=00000001"),
                UnsupportedQop,
            ),
            (
                format!("Digest {base}, {r32}, qop=\"auth,auth-int\""),
                UnsupportedQop,
            ),
            (
                format!("Digest {base}, {r32}, algorithm=MD5-sess"),
                UnsupportedAlgorithm,
            ),
            (
                format!("Digest {base}, {r32}, algorithm=SHA-512-256"),
                UnsupportedAlgorithm,
            ),
            (
                format!("Digest {base}, {r32}, algorithm=\"\""),
                UnsupportedAlgorithm,
            ),
            (
                format!("Digest {base}, {r32}, algorithm=SHA-256"),
                BadResponse,
            ),
            (format!("Digest {base}, response=\"0123\""), BadResponse),
            (
                format!("Digest {base}, response=\"0123456789abcdef0123456789abcdeg\""),
                BadResponse,
            ),
            (
                format!("Digest {base}, {r32}, userhash=true"),
                UnsupportedUserhash,
            ),
            (format!("Digest {base}, {r32}, nonce=\"m\""), DuplicateParam),
            (format!("Digest {base}, {r32}, Realm=\"r\""), DuplicateParam),
            (
                format!("Digest {base}, {r32}, opaque=\"{}\"", "x".repeat(1025)),
                ValueTooLong,
            ),
            (
                format!("Digest {base}, {r32}{}", ", x=y".repeat(MAX_PARAMS - 4)),
                TooManyParams,
            ),
        ];
        for (value, want) in cases {
            assert_eq!(parse_credentials(value.as_bytes()), Err(want), "{value}");
            assert!(!want.reason().is_empty());
        }
        // At the bounds: 32 parameters and a 1024-byte value parse.
        let at = format!(
            "Digest {base}, {r32}{}, opaque=\"{}\"",
            ", x=y".repeat(MAX_PARAMS - 6),
            "x".repeat(1024)
        );
        assert_eq!(
            parse_credentials(at.as_bytes())
                .unwrap()
                .opaque
                .unwrap()
                .len(),
            1024
        );
        // userhash=false, unknown parameters, qop=auth, uppercase names:
        // accepted.
        let ok = format!(
            "digest {base}, {r32}, userhash=false, foo=\"bar, baz\", QOP=\"Auth\", \
             NC=0000000A, cnonce=\"c\""
        );
        let c = parse_credentials(ok.as_bytes()).unwrap();
        assert_eq!(
            (c.qop, c.nc, c.cnonce),
            (Some(Qop::Auth), Some(10), Some(&b"c"[..]))
        );
    }

    /// The reason phrases are distinct Title Case phrases.
    #[test]
    fn reasons_are_distinct_title_case() {
        use DigestError::*;
        let all = [
            NotDigest,
            Syntax,
            TooManyParams,
            ValueTooLong,
            DuplicateParam,
            MissingUsername,
            MissingRealm,
            MissingNonce,
            MissingUri,
            MissingResponse,
            MissingCnonce,
            MissingNc,
            BadResponse,
            BadNc,
            UnsupportedAlgorithm,
            UnsupportedQop,
            UnsupportedUserhash,
            BadHa1,
        ];
        for (i, a) in all.iter().enumerate() {
            for w in a.reason().split(' ') {
                assert!(w.chars().next().unwrap().is_ascii_uppercase(), "{w}");
            }
            for b in &all[i + 1..] {
                assert_ne!(a.reason(), b.reason());
            }
        }
        assert_eq!(MissingNonce.reason(), "Missing Digest Nonce");
        assert_eq!(BadNc.reason(), "Bad Digest Nc");
    }

    /// LWS and folding around `=` and `,`, at both ends; quoted-pairs kept
    /// raw.
    #[test]
    fn lws_folding_and_raw_quoted_values() {
        let value = b" \t Digest\r\n username = \"a\\\"b\" ,\r\n\trealm=\"r\\\\\" , \
            nonce =n, uri= \"sip:r\" ,response=\r\n \"0123456789ABCDEF0123456789abcdef\" \r\n ";
        let c = parse_credentials(value).unwrap();
        assert_eq!(c.username, b"a\\\"b");
        assert_eq!(c.realm, b"r\\\\");
        assert_eq!(c.nonce, b"n");
        assert_eq!(c.uri, b"sip:r");
        assert_eq!(c.response, b"0123456789ABCDEF0123456789abcdef");
        assert!(is_quotable(c.username) && is_quotable(c.realm));
        assert!(parse_credentials(format!("Digest {OK_MD5}").as_bytes()).is_ok());
    }

    #[test]
    fn ha1_from_hex_validates() {
        let good = "0123456789abcdef0123456789abcdef";
        assert!(Ha1::from_hex(Algorithm::Md5, good.as_bytes()).is_ok());
        assert_eq!(
            Ha1::from_hex(Algorithm::Sha256, good.as_bytes()).unwrap_err(),
            DigestError::BadHa1
        );
        assert!(Ha1::from_hex(Algorithm::Md5, b"0123456789abcdef0123456789abcdeX").is_err());
        assert!(Ha1::from_hex(Algorithm::Md5, b"").is_err());
        let ha1 = Ha1::from_hex(Algorithm::Md5, good.as_bytes()).unwrap();
        assert!(!format!("{ha1:?}").contains("0123"));
    }

    #[test]
    fn algorithm_tokens() {
        assert_eq!(Algorithm::from_token(b"md5"), Some(Algorithm::Md5));
        assert_eq!(Algorithm::from_token(b"sha-256"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::from_token(b"SHA256"), None);
        assert_eq!(Algorithm::from_token(b"SHA-256-sess"), None);
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            assert_eq!(Algorithm::from_token(alg.name().as_bytes()), Some(alg));
            let h = Ha1::compute(alg, b"a", b"b", b"c");
            assert_eq!(h.as_hex().as_bytes().len(), alg.hex_len());
            assert!(h.as_hex().as_bytes().iter().all(|b| HEX_DIGITS.contains(b)));
        }
    }

    /// The value after `Name: ` of a written header line, without CRLF.
    fn header_value<'a>(line: &'a [u8], name: &str) -> &'a [u8] {
        let prefix = format!("{name}: ");
        assert!(line.starts_with(prefix.as_bytes()), "{}", text(line));
        assert!(line.ends_with(b"\r\n"));
        &line[prefix.len()..line.len() - 2]
    }

    /// Server challenge → client parse → client answer → server parse →
    /// verify, for both algorithms, with and without stale, with opaque.
    #[test]
    fn round_trip_challenge_and_answer() {
        let key = NonceKey::new([7; 32]);
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            for stale in [false, true] {
                let nonce = mint_nonce(&key, 1000, 3);
                let mut buf = [0u8; 512];
                let mut o = Out::new(&mut buf);
                write_challenge(
                    &mut o,
                    b"WWW-Authenticate",
                    b"example.com",
                    nonce.as_bytes(),
                    alg,
                    stale,
                );
                let n = o.finish().unwrap();
                let line = &buf[..n];
                let want = format!(
                    "WWW-Authenticate: Digest realm=\"example.com\", nonce=\"{}\", \
                     algorithm={}, qop=\"auth\"{}\r\n",
                    text(nonce.as_bytes()),
                    alg.name(),
                    if stale { ", stale=true" } else { "" }
                );
                assert_eq!(text(line), want);
                let mut ch = parse_challenge(header_value(line, "WWW-Authenticate")).unwrap();
                assert_eq!(ch.realm, b"example.com");
                assert_eq!(ch.nonce, nonce.as_bytes());
                assert_eq!((ch.algorithm, ch.qop_auth, ch.stale), (alg, true, stale));
                ch.opaque = Some(b"op/aque");

                let ha1 = Ha1::compute(alg, b"alice", b"example.com", b"secret");
                let mut abuf = [0u8; 1024];
                let mut o = Out::new(&mut abuf);
                let uri = b"sip:example.com";
                write_authorization(
                    &mut o,
                    b"Authorization",
                    &ch,
                    b"alice",
                    &ha1,
                    b"REGISTER",
                    uri,
                    b"c-1",
                    0x1a,
                );
                let n = o.finish().unwrap();
                let c = parse_credentials(header_value(&abuf[..n], "Authorization")).unwrap();
                assert_eq!(c.username, b"alice");
                assert_eq!(c.nc_text, Some(&b"0000001a"[..]));
                assert_eq!(c.nc, Some(0x1a));
                assert_eq!(c.cnonce, Some(&b"c-1"[..]));
                assert_eq!(c.opaque, Some(&b"op/aque"[..]));
                assert_eq!(c.algorithm, alg);
                assert!(verify(&c, &ha1, b"REGISTER"));
                assert!(!verify(&c, &ha1, b"INVITE"));
                assert_eq!(
                    check_nonce(&key, c.nonce, 1010, 300),
                    NonceCheck::Fresh { issued_s: 1000 }
                );

                // A challenge without qop is answered in the RFC 2069 form.
                ch.qop_auth = false;
                let mut o = Out::new(&mut abuf);
                write_authorization(
                    &mut o,
                    b"Proxy-Authorization",
                    &ch,
                    b"alice",
                    &ha1,
                    b"INVITE",
                    uri,
                    b"c",
                    2,
                );
                let n = o.finish().unwrap();
                let c = parse_credentials(header_value(&abuf[..n], "Proxy-Authorization")).unwrap();
                assert_eq!((c.qop, c.nc, c.cnonce), (None, None, None));
                assert!(verify(&c, &ha1, b"INVITE"));
            }
        }
    }

    /// A buffer too small is an overflow, not a truncated line.
    #[test]
    fn writers_refuse_to_truncate() {
        let mut buf = [0u8; 20];
        let mut o = Out::new(&mut buf);
        write_challenge(
            &mut o,
            b"WWW-Authenticate",
            b"r",
            b"n",
            Algorithm::Md5,
            false,
        );
        assert_eq!(o.finish(), None);
    }

    #[test]
    fn challenge_parsing() {
        let ch = parse_challenge(
            b"Digest realm=\"r\", domain=\"sip:a sip:b\", nonce=\"n\", \
              qop=\"auth-int, auth\", stale=TRUE, charset=UTF-8, opaque=\"o\"",
        )
        .unwrap();
        assert_eq!(
            ch,
            Challenge {
                realm: b"r",
                nonce: b"n",
                algorithm: Algorithm::Md5,
                qop_auth: true,
                stale: true,
                opaque: Some(b"o"),
            }
        );
        let ch = parse_challenge(b"Digest realm=\"r\", nonce=\"n\", stale=no").unwrap();
        assert!(!ch.stale && !ch.qop_auth);
        use DigestError::*;
        for (v, e) in [
            (&b"Digest nonce=\"n\""[..], MissingRealm),
            (b"Digest realm=\"r\"", MissingNonce),
            (
                b"Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\"",
                UnsupportedQop,
            ),
            (
                b"Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512",
                UnsupportedAlgorithm,
            ),
            (b"Basic realm=\"r\"", NotDigest),
            (b"Digest realm=\"r\" nonce=\"n\"", Syntax),
        ] {
            assert_eq!(parse_challenge(v), Err(e), "{}", text(v));
        }
    }

    #[test]
    fn quotable() {
        assert!(is_quotable(b""));
        assert!(is_quotable(b"a b\\\"c\xc3\xa9"));
        assert!(!is_quotable(b"a\"b"));
        assert!(!is_quotable(b"a\\"));
        assert!(!is_quotable(b"a\r\nb"));
        assert!(!is_quotable(b"a\x01"));
    }

    #[test]
    fn nonce_mint_and_check() {
        let key = NonceKey::new([1; 32]);
        let n = mint_nonce(&key, 1_700_000_000, 42);
        assert_eq!(n.as_bytes().len(), NONCE_LEN);
        assert!(n.as_bytes().iter().all(|b| B64.contains(b)));
        assert!(is_quotable(n.as_bytes()));
        // Another sequence in the same second, another nonce.
        assert_ne!(mint_nonce(&key, 1_700_000_000, 43), n);
        let fresh = NonceCheck::Fresh {
            issued_s: 1_700_000_000,
        };
        assert_eq!(check_nonce(&key, n.as_bytes(), 1_700_000_000, 300), fresh);
        assert_eq!(check_nonce(&key, n.as_bytes(), 1_700_000_300, 300), fresh);
        assert_eq!(
            check_nonce(&key, n.as_bytes(), 1_700_000_301, 300),
            NonceCheck::Stale
        );
        // Clock skew: up to 2 s ahead is fine, more is forged.
        assert_eq!(check_nonce(&key, n.as_bytes(), 1_699_999_998, 300), fresh);
        assert_eq!(
            check_nonce(&key, n.as_bytes(), 1_699_999_997, 300),
            NonceCheck::Forged
        );
        // Another key.
        let other = NonceKey::new([2; 32]);
        assert_eq!(
            check_nonce(&other, n.as_bytes(), 1_700_000_000, 300),
            NonceCheck::Forged
        );
        // Every single-byte change is forged (or malformed).
        for i in 0..NONCE_LEN {
            for c in B64.iter().chain(b"=+/ \0") {
                let mut t = n.as_bytes().to_vec();
                if t[i] == *c {
                    continue;
                }
                t[i] = *c;
                assert_eq!(
                    check_nonce(&key, &t, 1_700_000_000, 300),
                    NonceCheck::Forged,
                    "{i} {c}"
                );
            }
        }
        assert_eq!(
            check_nonce(&key, &n.as_bytes()[..39], 1_700_000_000, 300),
            NonceCheck::Forged
        );
        assert_eq!(check_nonce(&key, b"", 0, 300), NonceCheck::Forged);
        // The extremes of the clock.
        for t in [0, u64::MAX] {
            let m = mint_nonce(&key, t, u32::MAX);
            assert_eq!(
                check_nonce(&key, m.as_bytes(), t, 0),
                NonceCheck::Fresh { issued_s: t }
            );
        }
        assert!(!format!("{key:?}").contains('1'));
    }

    #[test]
    fn nonce_counts_replay() {
        let mut t = NonceCounts::new(4);
        assert!(t.is_empty());
        assert_eq!(t.check(b"a", 100, 1, 100, 60), NcCheck::Accepted);
        assert_eq!(t.check(b"a", 100, 1, 101, 60), NcCheck::Replayed);
        assert_eq!(t.check(b"a", 100, 3, 101, 60), NcCheck::Accepted);
        assert_eq!(t.check(b"a", 100, 2, 101, 60), NcCheck::Replayed);
        assert_eq!(t.check(b"a", 100, 4, 160, 60), NcCheck::Accepted);
        assert_eq!(t.check(b"a", 100, 5, 161, 60), NcCheck::Stale);
        assert_eq!(t.check(b"b", 150, 0, 161, 60), NcCheck::Replayed);
        assert_eq!(t.len(), 1);
        assert_eq!(t.watermark(), None);
    }

    #[test]
    fn nonce_counts_eviction_and_watermark() {
        let mut t = NonceCounts::new(2);
        assert_eq!(t.check(b"a", 10, 1, 10, 100), NcCheck::Accepted);
        assert_eq!(t.check(b"b", 20, 1, 20, 100), NcCheck::Accepted);
        // Full, nothing expired: the oldest-issued (a) goes.
        assert_eq!(t.check(b"c", 15, 1, 30, 100), NcCheck::Accepted);
        assert_eq!(t.watermark(), Some(10));
        assert_eq!(t.len(), 2);
        // a is forgotten: its replay is Stale, never Accepted.
        assert_eq!(t.check(b"a", 10, 1, 30, 100), NcCheck::Stale);
        assert_eq!(t.check(b"a", 10, 9, 30, 100), NcCheck::Stale);
        // Full again: c (15) is now the oldest.
        assert_eq!(t.check(b"d", 25, 1, 30, 100), NcCheck::Accepted);
        assert_eq!(t.watermark(), Some(15));
        assert_eq!(t.check(b"c", 15, 2, 30, 100), NcCheck::Stale);
        // b and d are still counted.
        assert_eq!(t.check(b"b", 20, 1, 30, 100), NcCheck::Replayed);
        assert_eq!(t.check(b"d", 25, 2, 30, 100), NcCheck::Accepted);
        // At 121 b (20) has expired; e takes its place.
        assert_eq!(t.check(b"e", 121, 1, 121, 100), NcCheck::Accepted);
        assert_eq!(t.watermark(), Some(20));
        assert_eq!(t.check(b"d", 25, 3, 121, 100), NcCheck::Accepted);
        assert_eq!(t.len(), 2);
    }

    #[derive(Clone, Debug)]
    struct Op {
        nonce: u8,
        nc: u32,
        advance: u64,
    }

    fn op() -> impl Strategy<Value = Op> {
        (0u8..8, 0u32..6, 0u64..4).prop_map(|(nonce, nc, advance)| Op { nonce, nc, advance })
    }

    proptest! {
        /// Against a model that remembers everything: never a replay
        /// accepted; within capacity, exactly the model's answers; Stale
        /// for a fresh nonce only below the watermark; bounded always.
        #[test]
        fn nonce_counts_never_accept_a_replay(
            capacity in 1usize..6,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            const LIFETIME: u64 = 10;
            let mut t = NonceCounts::new(capacity);
            let mut best: HashMap<u8, u32> = HashMap::new();
            let mut now = 0u64;
            let mut evicted_any = false;
            for o in ops {
                now += o.advance;
                // Nonce k is issued at 2k: some expire as the clock runs.
                let issued = 2 * u64::from(o.nonce);
                let name = [b'n', o.nonce];
                let before = t.watermark();
                let got = t.check(&name, issued, o.nc, now, LIFETIME);
                evicted_any |= t.watermark() != before;
                prop_assert!(t.len() <= capacity);
                let expired = now.saturating_sub(issued) > LIFETIME;
                let prev = best.get(&o.nonce).copied().unwrap_or(0);
                if got == NcCheck::Accepted {
                    prop_assert!(o.nc > prev, "replay accepted: {:?}", o);
                    prop_assert!(!expired);
                    best.insert(o.nonce, o.nc);
                }
                if expired {
                    prop_assert_eq!(got, NcCheck::Stale);
                } else if got == NcCheck::Stale {
                    prop_assert!(t.watermark().is_some_and(|w| issued <= w));
                }
                if !evicted_any && !expired {
                    let want = if o.nc > prev { NcCheck::Accepted } else { NcCheck::Replayed };
                    prop_assert_eq!(got, want);
                }
            }
        }
    }
}
