#!/usr/bin/env bash
# Build a TLS-capable SIPp from Debian's own sip-tester source package.
#
# Debian bookworm's sip-tester (SIPp 3.6.1) is built without OpenSSL
# (the source package even Build-Conflicts with libssl-dev), so
# `sipp -t l1` refuses to run. This script fetches the same source with
# `apt-get source`, rebuilds it with -DUSE_SSL=1 and puts the binary at $1.
#
# Usage: tests/sipp-tls-build.sh [OUTPUT_BINARY]   (default: target/sipp-tls/sipp)
# Needs root (apt-get) on Debian bookworm. Idempotent: returns at once when
# OUTPUT_BINARY already exists and its `-v` mentions TLS.
#
# Environment:
#   SIPP_TLS_WORKDIR  where sources are unpacked/built (default: target/sipp-tls/src)
#   SIPP_SRC          optional fallback source (a SIPp source tarball or an
#                     unpacked source directory) used only when
#                     `apt-get source sip-tester` fails.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${1:-$repo/target/sipp-tls/sipp}"
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac

# `sipp -v` exits non-zero, so never use it in a pipeline under pipefail.
version_line() { local v; v=$("$1" -v 2>&1 || true); v=${v#*SIPp }; echo "SIPp ${v%%$'\n'*}"; }
has_tls() { local v; [ -x "$1" ] && v=$("$1" -v 2>&1 || true) && [[ $v == *TLS* ]]; }

if has_tls "$bin"; then
    echo "sipp-tls: $bin already has TLS: $(version_line "$bin")"
    exit 0
fi

start=$(date +%s)
work="${SIPP_TLS_WORKDIR:-$repo/target/sipp-tls/src}"
export DEBIAN_FRONTEND=noninteractive

# --- 1. a deb-src entry for <codename> main, mirroring the existing deb entry ---
. /etc/os-release
codename="${VERSION_CODENAME:-bookworm}"
have_src=0
if grep -rqsE '^[[:space:]]*deb-src[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null; then
    have_src=1
fi
if grep -qsiE '^[[:space:]]*Types:.*deb-src' /etc/apt/sources.list.d/*.sources 2>/dev/null; then
    have_src=1
fi
if [ "$have_src" = 0 ]; then
    uris="http://deb.debian.org/debian"
    signed="/usr/share/keyrings/debian-archive-keyring.gpg"
    deb822=/etc/apt/sources.list.d/debian.sources
    if [ -r "$deb822" ]; then
        # first stanza whose Suites contain the plain codename
        u=$(awk -v c="$codename" 'BEGIN{RS="";FS="\n"}
              { s=0; uri=""; for(i=1;i<=NF;i++){
                  if($i ~ /^Suites:/ && (" " $i " ") ~ (" " c " ")) s=1;
                  if($i ~ /^URIs:/){ sub(/^URIs:[ \t]*/,"",$i); uri=$i } }
                if(s && uri!=""){ print uri; exit } }' "$deb822")
        k=$(awk -v c="$codename" 'BEGIN{RS="";FS="\n"}
              { s=0; key=""; for(i=1;i<=NF;i++){
                  if($i ~ /^Suites:/ && (" " $i " ") ~ (" " c " ")) s=1;
                  if($i ~ /^Signed-By:/){ sub(/^Signed-By:[ \t]*/,"",$i); key=$i } }
                if(s && key!=""){ print key; exit } }' "$deb822")
        [ -n "$u" ] && uris="$u"
        [ -n "$k" ] && signed="$k"
    fi
    cat > /etc/apt/sources.list.d/sipp-tls-deb-src.sources <<EOF
Types: deb-src
URIs: $uris
Suites: $codename
Components: main
Signed-By: $signed
EOF
    echo "sipp-tls: added /etc/apt/sources.list.d/sipp-tls-deb-src.sources"
fi

# --- 2. tools and build dependencies ---
# dpkg-dev: unpacks the source package (dpkg-source); cmake/make/g++/pkgconf:
# build; libssl-dev: TLS; libpcap-dev: -DUSE_PCAP=1; libncurses-dev: ncursesw +
# tinfo (required by CMakeLists); libgsl-dev: USE_GSL (on by default, as in Debian).
# Not needed: libsctp-dev (USE_SCTP=0), libnet1-dev (unused by the 3.6.1 CMakeLists).
apt-get update -q
apt-get install -y -q --no-install-recommends --no-upgrade \
    dpkg-dev xz-utils cmake make g++ pkgconf \
    libssl-dev libpcap-dev libncurses-dev libgsl-dev

# --- 3. source ---
rm -rf "$work"
mkdir -p "$work"
src=""
if (cd "$work" && apt-get source -q sip-tester); then
    src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'sip-tester-*' | head -n1)
elif [ -n "${SIPP_SRC:-}" ]; then
    echo "sipp-tls: apt-get source failed; using SIPP_SRC=$SIPP_SRC" >&2
    if [ -d "$SIPP_SRC" ]; then
        cp -a "$SIPP_SRC" "$work/sipp-src"
    else
        mkdir -p "$work/sipp-src"
        tar -xf "$SIPP_SRC" -C "$work/sipp-src" --strip-components=1
    fi
    src="$work/sipp-src"
else
    echo "sipp-tls: 'apt-get source sip-tester' failed and SIPP_SRC is not set" >&2
    exit 1
fi
[ -f "$src/CMakeLists.txt" ] || { echo "sipp-tls: no CMakeLists.txt in $src" >&2; exit 1; }
echo "sipp-tls: source in $src"

# --- 4. version.h ---
# CMakeLists generates version.h from `git describe` only inside a git work
# tree; release tarballs ship a ready version.h. Provide one if neither exists.
build="$src/build"
mkdir -p "$build"
if [ -z "$(find "$src" -path "$build" -prune -o -name version.h -print | head -n1)" ]; then
    ver=""
    if [ -f "$src/debian/changelog" ]; then
        ver=$(dpkg-parsechangelog -l "$src/debian/changelog" -S Version | sed -e 's/^[0-9]*://' -e 's/-[^-]*$//')
    fi
    if [ -z "$ver" ]; then
        ver=$(grep -m1 -oE '[0-9]+\.[0-9]+\.[0-9]+' "$src/CHANGES.md" 2>/dev/null || true)
    fi
    ver="v${ver:-unknown}"
    printf '#define SIPP_VERSION VERSION\n#define VERSION "%s"\n' "$ver" > "$build/version.h"
    echo "sipp-tls: wrote $build/version.h ($ver)"
fi

# --- 5. build ---
(cd "$build" && cmake .. -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DUSE_SSL=1 -DUSE_SCTP=0 -DUSE_PCAP=1 -DUSE_GSL=1)
make -C "$build" -j2 sipp

mkdir -p "$(dirname "$bin")"
install -m 0755 "$build/sipp" "$bin"

if ! has_tls "$bin"; then
    echo "sipp-tls: built binary does not report TLS: $(version_line "$bin")" >&2
    exit 1
fi
echo "sipp-tls: $bin: $(version_line "$bin")"
echo "sipp-tls: took $(( $(date +%s) - start ))s"
