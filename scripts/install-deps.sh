#!/usr/bin/env bash
# Installs what the build, the tests, the benchmarks and the scripts call, on a bare Debian
# machine that has only Rust (rustup) and Go besides. Safe to run again: it only calls
# apt-get when a package is missing.
#
#   scripts/install-deps.sh          install what is missing
#   scripts/install-deps.sh --list   print the Debian packages, one per line, and install nothing
#
# Every program a test runs is listed in scripts/preflight.sh with the package it comes
# from; `scripts/preflight.sh --audit` proves this list covers them.
set -euo pipefail

packages=(
  postfix                 # smtp-sink / smtp-source: destination and load generator; Postfix for benchmarks
  swaks                   # SMTP client in tests; the three below are its TLS and AUTH support,
  libnet-ssleay-perl      #   which --no-install-recommends would leave out
  libio-socket-ssl-perl
  libauthen-sasl-perl
  python3 python3-aiosmtpd python3-dkim python3-dnspython python3-nacl
  python3-matplotlib      # scripts/plot-dashboard.py: the README's dashboard picture
  knot knot-dnsutils      # authoritative DNS server (knotd, knotc) and kdig for MX / DKIM / SPF checks
  iproute2                # ip: network namespaces
  openssl ca-certificates curl
  bc                      # the benchmark's arithmetic
  procps                  # kill, pgrep: not Essential on Debian
  mount e2fsprogs         # losetup, mount and mkfs.ext4: spool failure tests on a loop device
  libseccomp-dev pkg-config gcc libc6-dev  # e2e real node: runc (cgo, seccomp) and the static pause binary
  nftables                # nft: the e2e real node's forward filter (pods reach nothing off the machine)
)

if [ "${1:-}" = "--list" ]; then
  printf '%s\n' "${packages[@]}"
  exit 0
fi

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
