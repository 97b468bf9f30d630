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

# Every dependency or toolchain change leaves old artefacts behind in the shared target
# directory; start it afresh once it grows past SMTPFLEET_TARGET_MAX_GB so a long-lived
# machine never fills its disk.
target_kb=$(du -sk "$CARGO_TARGET_DIR" 2>/dev/null | cut -f1 || echo 0)
if [ "${target_kb:-0}" -gt $(( ${SMTPFLEET_TARGET_MAX_GB:-20} * 1024 * 1024 )) ]; then
  step "target directory is $(( target_kb / 1024 / 1024 )) GB: cleaning $CARGO_TARGET_DIR"
  rm -rf "$CARGO_TARGET_DIR"
fi

# Cargo names a workspace crate's artefacts by its path inside the workspace, not by the
# checkout's path, and trusts them while the files their dep-info names (in the checkout
# that built them) are unchanged: a second checkout sharing the target directory could be
# handed the other checkout's build. Rebuild our own crates (dependencies stay cached)
# whenever the checkout that last built here was another one.
mkdir -p "$CARGO_TARGET_DIR"
checkout=$(pwd -P)
if [ "$(cat "$CARGO_TARGET_DIR/.smtpfleet-checkout" 2>/dev/null)" != "$checkout" ]; then
  step "target directory last built by another checkout: rebuilding this workspace's crates"
  cargo clean -q -p smtp-node -p smtpfleet-operator
  echo "$checkout" >"$CARGO_TARGET_DIR/.smtpfleet-checkout"
fi

if [ "${SMTPFLEET_SKIP_INSTALL:-0}" != 1 ]; then
  step "dependencies"
  scripts/install-deps.sh
fi
# Fails fast, one line per missing peer naming its package; --audit also proves that
# install-deps.sh installs every peer the tests call.
step "preflight"
scripts/preflight.sh --audit
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
if [ "${SMTPFLEET_SKIP_MONITORING:-0}" != 1 ]; then
  step "monitoring: the chart's alerts (promtool) and dashboard against a real Prometheus"
  monitoring/run.sh
fi
if [ -x e2e/run.sh ] && [ "${SMTPFLEET_SKIP_E2E:-0}" != 1 ]; then
  step "e2e"
  e2e/run.sh
fi
