#!/usr/bin/env python3
"""Datagrams larger than the path MTU cross the edge fragmented.

Run inside a network namespace whose loopback has a 1500-byte MTU
(tests/mtu/run-mtu.sh), against an edge on its embedded default
configuration (listening on 127.0.0.1:5060, CS shards on 127.0.0.1:7001-7004).

The edge sends IPv4 with DF and without local fragmentation (it saves the
kernel's hashed IP ID); a datagram the path MTU refuses must still leave,
fragmented, as under the kernel's default mode. This plays the UAC and the
four CS shards: CPM INVITEs of ~700 B (one fragment: the DF path), ~5 kB
and ~15 kB (fragmented) go in and must reach a shard whole; each shard's
200 OK, with the same SDP, must reach the UAC whole. Exit 0 on success.
"""
import select
import socket
import sys

EDGE = ("127.0.0.1", 5060)
SHARDS = [("127.0.0.1", p) for p in range(7001, 7005)]
UAC = ("127.0.0.1", 5070)
ICSI = "urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session"
TIMEOUT = 3.0


def sdp(n_pad):
    lines = ["v=0", "o=user1 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1",
             "t=0 0", "m=message 7394 TCP/MSRP *", "a=accept-types:message/cpim",
             "a=path:msrp://127.0.0.1:7394/s1;tcp", "a=setup:active"]
    lines += ["a=x-pad:%04d%s" % (i, "p" * 60) for i in range(n_pad)]
    return ("\r\n".join(lines) + "\r\n").encode()


def invite(n, body):
    head = (
        f"INVITE sip:grp{n}@groups.example.net SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-mtu{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:user{n}@example.net>;tag=mtu{n}\r\n"
        f"To: <sip:grp{n}@groups.example.net>\r\n"
        f"Call-ID: mtu-{n}@check\r\n"
        "CSeq: 1 INVITE\r\n"
        f'Contact: <sip:user{n}@127.0.0.1:5070>;+g.3gpp.icsi-ref="{ICSI}"\r\n'
        f'Accept-Contact: *;+g.3gpp.icsi-ref="{ICSI}"\r\n'
        "P-Preferred-Service: urn:urn-7:3gpp-service.ims.icsi.oma.cpm.session\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def headers(msg, name):
    out = []
    for line in msg.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name.lower():
            out.append(line)
    return out


def body_of(msg):
    return msg.split(b"\r\n\r\n", 1)[1]


def ok_for(req, body):
    """The shard's 200 OK: Vias, From, To (+tag), Call-ID, CSeq echoed."""
    lines = [b"SIP/2.0 200 OK"]
    for name in (b"Via", b"Record-Route", b"From"):
        lines += headers(req, name)
    lines += [h + b";tag=cs" for h in headers(req, b"To")]
    lines += headers(req, b"Call-ID") + headers(req, b"CSeq")
    lines += [b"Contact: <sip:cs@127.0.0.1:7001>", b"Content-Type: application/sdp",
              b"Content-Length: %d" % len(body)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def recv_one(socks):
    r, _, _ = select.select(socks, [], [], TIMEOUT)
    if not r:
        return None, None
    data, _ = r[0].recvfrom(65535)
    return r[0], data


def fail(msg):
    print(f"mtu check: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    shards = []
    for a in SHARDS:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(a)
        shards.append(s)
    uac = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uac.bind(UAC)
    for n, pad in ((1, 0), (2, 60), (3, 200)):
        body = sdp(pad)
        req = invite(n, body)
        uac.sendto(req, EDGE)
        shard, fwd = recv_one(shards)
        if fwd is None:
            fail(f"INVITE of {len(req)} bytes never reached a shard")
        if not fwd.startswith(b"INVITE ") or body_of(fwd) != body:
            fail(f"INVITE of {len(req)} bytes reached a shard altered")
        if len(headers(fwd, b"Via")) != 2:
            fail("the forwarded INVITE does not carry the edge's Via over the UAC's")
        resp = ok_for(fwd, sdp(pad))
        shard.sendto(resp, EDGE)
        _, back = recv_one([uac])
        if back is None:
            fail(f"200 OK of {len(resp)} bytes never reached the UAC")
        if not back.startswith(b"SIP/2.0 200") or body_of(back) != sdp(pad):
            fail(f"200 OK of {len(resp)} bytes reached the UAC altered")
        if len(headers(back, b"Via")) != 1:
            fail("the relayed 200 OK still carries the edge's Via")
        print(f"mtu check: INVITE {len(req)} B -> shard {shard.getsockname()[1]} "
              f"({len(fwd)} B), 200 OK {len(resp)} B -> UAC ({len(back)} B)")
    print("mtu check: ok")


if __name__ == "__main__":
    main()
