#!/usr/bin/env bash
# The project's test command: formatting, lints, unit and integration tests with real
# peers, then the end-to-end suite against a real Kubernetes API server.
# Works on a fresh Debian machine: it installs the test peers first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:/usr/local/go/bin:$HOME/go/bin:$PATH"
export SMTPFLEET_CACHE="${SMTPFLEET_CACHE:-$HOME/.cache/smtpfleet}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SMTPFLEET_CACHE/target}"
export CARGO_TERM_COLOR=never
# Incremental artefacts only help edit-compile loops; in a test run they just fill the disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
scripts/install-deps.sh
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "chart CRDs match crds/"
diff -r crds charts/smtpfleet/crds
step "cargo test"
cargo test --workspace --locked --no-fail-fast
step "CRDs and fixtures through Kubernetes' own validation code"
cargo test -p smtpfleet-operator --locked --test crds -- --ignored api_server
if [ -x e2e/run.sh ] && [ "${SMTPFLEET_SKIP_E2E:-0}" != 1 ]; then
  step "e2e"
  e2e/run.sh
fi
