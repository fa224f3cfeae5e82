#!/usr/bin/env python3
"""perf/registrar/gen-users.py: N test users for the registrar benchmark.

User i (1..N) is u<i>@example.net with password pw<i>. Writes, into OUTDIR:

  credentials.txt      cpm-edge's credentials file: one line per user,
                       "AOR MD5_HA1 SHA256_HA1" (AOR = u<i>@example.net,
                       HA1 = lowercase hex of H(user:realm:password));
                       '#' starts a comment line.
  users.csv            SIPp injection file: "SEQUENTIAL", then "u<i>;pw<i>"
                       ([field0] = user, [field1] = password).
  kamailio-db/creds    a db_text table that Kamailio's htable loads at
                       start (key = user, value = MD5 HA1), beside the
                       db_text "version" table; HA1 only, no passwords.
  users.n              N, written last: the files above are complete.

Usage: gen-users.py N [OUTDIR] [REALM]   (OUTDIR: this script's directory,
REALM: example.net). Only HA1 values reach the servers; the passwords are
in the SIPp file alone, since SIPp computes the digest response itself.
"""
import hashlib
import os
import sys


def main() -> int:
    if len(sys.argv) < 2 or not sys.argv[1].isdigit() or int(sys.argv[1]) < 1:
        print(__doc__, file=sys.stderr)
        return 2
    n = int(sys.argv[1])
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.abspath(__file__))
    realm = sys.argv[3] if len(sys.argv) > 3 else "example.net"
    db = os.path.join(out, "kamailio-db")
    os.makedirs(db, exist_ok=True)
    stamp = os.path.join(out, "users.n")
    if os.path.exists(stamp):
        os.remove(stamp)  # a half-written set must not look complete
    md5, sha = hashlib.md5, hashlib.sha256
    with open(os.path.join(out, "credentials.txt"), "w") as cred, \
            open(os.path.join(out, "users.csv"), "w") as csv, \
            open(os.path.join(db, "creds"), "w") as kam:
        cred.write(f"# cpm-edge credentials: {n} users u1..u{n}@{realm}, password pw<i>\n")
        cred.write(f"# AOR MD5(user:{realm}:password) SHA-256(user:{realm}:password)\n")
        csv.write("SEQUENTIAL\n")
        # db_text header: column name(type); htable reads the columns named
        # in its cols= attribute (kamailio.cfg), key first.
        kam.write("username(str) ha1(str)\n")
        for i in range(1, n + 1):
            user, pw = f"u{i}", f"pw{i}"
            a1 = f"{user}:{realm}:{pw}".encode()
            h_md5 = md5(a1).hexdigest()
            cred.write(f"{user}@{realm} {h_md5} {sha(a1).hexdigest()}\n")
            csv.write(f"{user};{pw}\n")
            kam.write(f"{user}:{h_md5}\n")
    with open(os.path.join(db, "version"), "w") as ver:
        ver.write("table_name(str) table_version(int)\ncreds:1\n")
    with open(stamp, "w") as f:
        f.write(f"{n}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
