#!/usr/bin/env bash
# Runs the monitoring tests: the chart's alert rules through promtool (check and unit
# tests), and a real Prometheus scraping two smtp-nodes under SMTP load and the operator
# (against the e2e control plane: etcd, kube-apiserver and kwok, no real node), checking
# every metric and label the alerts and the dashboard name and every dashboard query.
# Builds what it needs (cached): prometheus and promtool (scripts/build-prometheus.sh),
# helm and the control plane (e2e/build.sh), the smtp-node and operator binaries; starts
# the control plane unless KUBECONFIG points at a cluster, and always stops what it started.
#
#   monitoring/run.sh                  every test
#   monitoring/run.sh -run TestRules   extra arguments go to go test
#
# SMTPFLEET_MONITORING_OUT=DIR keeps the dashboard's query results (DIR/panels.json) for
# scripts/plot-dashboard.py; SMTPFLEET_MONITORING_LOAD_SECONDS sets the load's length (20).
set -euo pipefail
cd "$(dirname "$0")"
export PATH="/usr/local/go/bin:$HOME/.cargo/bin:$PATH"
TIMEOUT="${SMTPFLEET_MONITORING_TIMEOUT:-600}"
started=$(date +%s)

prom_bin=$(../scripts/build-prometheus.sh | tail -n 1)
e2e_bin=$(../e2e/build.sh | tail -n 1)
export PATH="$prom_bin:$e2e_bin:$PATH"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${SMTPFLEET_CACHE:-$HOME/.cache/smtpfleet}/target}"
(cd .. && cargo build -q --locked -p smtp-node -p smtpfleet-operator --bins)
export SMTPFLEET_NODE_BIN="$CARGO_TARGET_DIR/debug/smtp-node"
export SMTPFLEET_OPERATOR_BIN="$CARGO_TARGET_DIR/debug/operator"
export SMTPFLEET_REPO="$(cd .. && pwd)"

if [ -z "${KUBECONFIG:-}" ]; then
  # A control plane of its own, beside the e2e suite's: its own work dir and ports, and
  # no real node (the nodes here run as processes on this machine).
  export SMTPFLEET_E2E_REAL_NODE=0
  export SMTPFLEET_E2E_WORK="${SMTPFLEET_MONITORING_WORK:-$(pwd)/.work}"
  export SMTPFLEET_E2E_PORT="${SMTPFLEET_MONITORING_PORT:-24400}"
  trap '../e2e/cluster.sh down' EXIT
  ../e2e/cluster.sh up
  eval "$(../e2e/cluster.sh env)"
fi

go vet .
set +e
timeout --signal=TERM --kill-after=30 "$TIMEOUT" go test -count=1 -timeout "${TIMEOUT}s" -v . "$@"
status=$?
set -e
echo "monitoring: finished in $(( $(date +%s) - started ))s"
exit "$status"
