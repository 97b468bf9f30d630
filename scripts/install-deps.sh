#!/usr/bin/env bash
# Installs what the build and the tests need on a bare Debian machine. Safe to run again:
# it only calls apt-get when a package is missing.
set -euo pipefail

packages=(
  postfix        # smtp-sink / smtp-source: destination and load generator; Postfix for benchmarks
  swaks          # SMTP client in tests
  python3-aiosmtpd python3-dkim python3-dnspython python3-nacl
  knot knot-dnsutils  # authoritative DNS server for MX / DKIM / SPF checks
  iproute2 openssl ca-certificates curl
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup (the toolchain version is pinned in rust-toolchain.toml)" >&2; exit 1; }
command -v go >/dev/null || [ -x /usr/local/go/bin/go ] || { echo "go not found: the e2e control plane is built with Go >= 1.26" >&2; exit 1; }
