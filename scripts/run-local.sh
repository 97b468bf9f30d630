#!/usr/bin/env bash
# Runs a standalone smtp-node on this machine: relay on 127.0.0.1:2525 for 127.0.0.0/8,
# metrics on 127.0.0.1:8025, spool in ./.smtp-node. Ctrl-C stops it cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${SMTPFLEET_CACHE:-$HOME/.cache/smtpfleet}/target}"
scripts/install-deps.sh
mkdir -p .smtp-node/spool
cargo build --release -q -p smtp-node --bin smtp-node
exec "$CARGO_TARGET_DIR/release/smtp-node" run --config "${1:-examples/standalone/smtp-node.yaml}"
