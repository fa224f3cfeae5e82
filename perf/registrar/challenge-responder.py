#!/usr/bin/env python3
"""perf/registrar/challenge-responder.py: which challenge does SIPp answer?

A tiny UDP registrar for one question: when a 401 carries more than one
WWW-Authenticate header (RFC 8760: SHA-256 first, then MD5), what does the
client do? REGISTER without Authorization -> 401 with the challenges named
by ORDER; REGISTER with Authorization -> the digest response is checked
against the challenge whose algorithm it names (password from the user name:
u<i> -> pw<i>, as perf/registrar/gen-users.py makes them); 200 when right,
403 when wrong. Each Authorization header received is printed (stdout) with
the verdict.

Usage: challenge-responder.py PORT ORDER [COUNT]
  ORDER: comma list of algorithms, e.g. SHA-256,MD5 or MD5,SHA-256 or SHA-256
  COUNT: exit after that many authenticated REGISTERs (default 1)
"""
import hashlib
import re
import socket
import sys

REALM = "example.net"
HASH = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def h(alg, s):
    return HASH[alg](s.encode()).hexdigest()


def header(msg, name):
    m = re.search(rf"^{name}:[ \t]*(.*)$", msg, re.I | re.M)
    return m.group(1).strip() if m else None


def params(v):
    return {k.lower(): (a if a else b) for k, a, b in re.findall(r'(\w+)=(?:"([^"]*)"|([^\s,]+))', v)}


def reply(req, code, reason, extra=()):
    lines = [f"SIP/2.0 {code} {reason}"]
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for m in re.finditer(rf"^{name}:.*$", req, re.I | re.M):
            v = m.group(0).rstrip("\r")
            if name == "To" and code != 100 and ";tag=" not in v:
                v += ";tag=resp1"
            lines.append(v)
    lines += list(extra)
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def check(req, auth):
    p = params(auth)
    alg = p.get("algorithm", "MD5").upper()
    if alg not in HASH:
        return alg, False
    user = p.get("username", "")
    pw = "pw" + user[1:] if user.startswith("u") else ""
    ha1 = h(alg, f"{user}:{p.get('realm', '')}:{pw}")
    ha2 = h(alg, f"REGISTER:{p.get('uri', '')}")
    if p.get("qop"):
        want = h(alg, f"{ha1}:{p.get('nonce')}:{p.get('nc')}:{p.get('cnonce')}:{p['qop']}:{ha2}")
    else:
        want = h(alg, f"{ha1}:{p.get('nonce')}:{ha2}")
    return alg, want == p.get("response")


def main():
    port, order = int(sys.argv[1]), sys.argv[2].split(",")
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    done = 0
    while done < count:
        data, peer = s.recvfrom(65535)
        req = data.decode(errors="replace")
        if not req.startswith("REGISTER "):
            continue
        auth = header(req, "Authorization")
        if auth is None:
            extra = [f'WWW-Authenticate: Digest realm="{REALM}", nonce="n-{alg}-4711", '
                     f'opaque="o1", algorithm={alg}, qop="auth"' for alg in order]
            s.sendto(reply(req, 401, "Unauthorized", extra), peer)
            continue
        alg, ok = check(req, auth)
        print(f"Authorization: {auth}\n  -> algorithm {alg}, response {'valid' if ok else 'INVALID'}", flush=True)
        s.sendto(reply(req, 200 if ok else 403, "OK" if ok else "Forbidden"), peer)
        done += 1


if __name__ == "__main__":
    main()
