#!/usr/bin/env bash
# Installs the Debian 12 packages meshgate builds, tests and demos with. Idempotent: only
# what is missing is installed. Needs root (or sudo) and a reachable package registry.
set -euo pipefail
PKGS=(
  build-essential pkg-config meson ninja-build clang libclang-rt-14-dev
  libssl-dev libjwt-dev libnghttp2-dev liblmdb-dev lmdb-utils libjansson-dev libevent-dev
  libnats-dev libcmocka-dev libcurl4-openssl-dev libhttp-parser-dev
  nghttp2-client nghttp2-server nghttp2-proxy nats-server curl openssl
  python3 python3-pytest python3-jwt python3-cryptography python3-h2 python3-grpcio python3-jsonschema
  gnuplot-nox procps
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
