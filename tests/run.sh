#!/usr/bin/env bash
# Usage: bash tests/run.sh [ARGS for cargo test...]
#
# The one test command. On Debian 12 with Rust:
#   1. installs the packages the integration tests use, if any is missing
#      (apt-get update once, then apt-get install -y ...; needs root or sudo);
#   2. checks that /dev/fuse exists (the mounting tests need it);
#   3. runs `cargo test --release ARGS...`.
# Quick and changes nothing when everything is present.
# ENV: SWARMFS_SKIP_FUSE=1  without /dev/fuse, run anyway: mounting tests print SKIPPED.
set -euo pipefail
cd "$(dirname "$0")/.."

# fuse3..openssl: the clients, tracker and tools of tests/peers/ (see its scripts);
# curl and iproute2 (ss) are used by seed.sh and tracker.sh; ffmpeg..xorriso: the players and
# archive tools of tests/media_tools.rs and what tests/media/gen-media.sh builds its corpus with.
PACKAGES=(fuse3 aria2 qbittorrent-nox transmission-cli transmission-daemon rtorrent python3-libtorrent
          opentracker mktorrent bc openssl curl iproute2
          ffmpeg mpv unzip zip p7zip-full libarchive-tools genisoimage xorriso)

command -v dpkg-query >/dev/null || { echo "run.sh: not a Debian system (no dpkg-query); install: ${PACKAGES[*]}" >&2; exit 1; }
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "run.sh: installing missing packages: ${missing[*]}" >&2
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "run.sh: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi
# The lab scripts run python-libtorrent with the system interpreter, whatever python3 is on PATH.
/usr/bin/python3 -c 'import libtorrent' 2>/dev/null \
    || { echo "run.sh: /usr/bin/python3 cannot import libtorrent (package python3-libtorrent)" >&2; exit 1; }

if [ ! -c /dev/fuse ]; then
    if [ "${SWARMFS_SKIP_FUSE:-}" = 1 ]; then
        echo "run.sh: /dev/fuse is missing; SWARMFS_SKIP_FUSE=1, so the mounting tests will print SKIPPED" >&2
    else
        echo "run.sh: /dev/fuse is missing, so the mounting tests cannot run." >&2
        echo "  Run where FUSE is available (docker: --device /dev/fuse --cap-add SYS_ADMIN)," >&2
        echo "  or set SWARMFS_SKIP_FUSE=1 to run the rest and skip them." >&2
        exit 1
    fi
fi

exec cargo test --release "$@"
