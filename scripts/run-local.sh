#!/usr/bin/env bash
# Runs smtpfleet locally: a Kubernetes control plane on loopback (built from Kubernetes'
# Go modules on first use, then cached; kwok stands in for kubelets), the CRDs and the
# examples applied, and the operator reconciling them in the foreground. Ctrl-C stops the
# operator and the cluster.
#
# In another terminal:  eval "$(e2e/cluster.sh env)"; kubectl get smtpfleet -n mail
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:/usr/local/go/bin:$PATH"
export SMTPFLEET_CACHE="${SMTPFLEET_CACHE:-$HOME/.cache/smtpfleet}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SMTPFLEET_CACHE/target}"
scripts/install-deps.sh
cargo build -q -p smtpfleet-operator --bin operator
if [ -z "${KUBECONFIG:-}" ]; then
  trap 'e2e/cluster.sh down' EXIT
  e2e/cluster.sh up
  eval "$(e2e/cluster.sh env)"
fi
kubectl apply -f crds/
kubectl wait --for=condition=Established crd/relaypools.smtpfleet.io crd/maildomains.smtpfleet.io --timeout=60s
kubectl apply -f examples/
echo "operator running; in another terminal: eval \"\$(e2e/cluster.sh env)\"; kubectl get smtpfleet -n mail"
"$CARGO_TARGET_DIR/debug/operator" run --leader-election=false --http-addr 127.0.0.1:8080
