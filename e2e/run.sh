#!/usr/bin/env bash
# Runs the e2e suite: builds (cached) and starts a control plane unless KUBECONFIG points at
# a cluster, builds the operator, runs the Go tests, and always stops what it started.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="/usr/local/go/bin:$HOME/.cargo/bin:$PATH"
TIMEOUT="${SMTPFLEET_E2E_TIMEOUT:-1500}"
started=$(date +%s)

if [ -z "${KUBECONFIG:-}" ]; then
  trap './cluster.sh down' EXIT
  ./cluster.sh up
  eval "$(./cluster.sh env)"
fi

# Most tests run the operator out of cluster against the same API server (pods on the
# kwok nodes run no containers); the real-pod tests run it from its image on the real node.
# SMTPFLEET_OPERATOR_BIN names an operator binary built elsewhere, to test it as it is.
if [ -z "${SMTPFLEET_OPERATOR_BIN:-}" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${SMTPFLEET_CACHE:-$HOME/.cache/smtpfleet}/target}"
  (cd .. && cargo build -q -p smtpfleet-operator --bin operator -p smtp-node --bin smtp-node)
  export SMTPFLEET_OPERATOR_BIN="$CARGO_TARGET_DIR/debug/operator"
  export SMTPFLEET_NODE_BIN="${SMTPFLEET_NODE_BIN:-$CARGO_TARGET_DIR/debug/smtp-node}"
fi
export SMTPFLEET_REPO="$(cd .. && pwd)"

set +e
# Extra arguments go to go test, e.g. e2e/run.sh -run TestCertificates
timeout --signal=TERM --kill-after=30 "$TIMEOUT" go test -count=1 -timeout "${TIMEOUT}s" -v . "$@"
status=$?
set -e
echo "e2e: finished in $(( $(date +%s) - started ))s"
exit "$status"
