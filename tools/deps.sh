#!/bin/sh
# Installs the Debian packages adaptree needs, only those missing. Idempotent and quiet when
# everything is present.
set -eu
PKGS="build-essential clang libclang-rt-14-dev clang-tidy clang-format pkg-config curl unzip
python3 python3-venv python3-pip libopenblas-dev libmicrohttpd-dev libcjson-dev libuv1-dev
libpcre2-dev unicode-data haproxy"
missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0
echo "deps: installing:$missing"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
