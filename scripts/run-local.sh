#!/usr/bin/env bash
# Runs smtpfleet locally.
#
#   scripts/run-local.sh           smtp-node on its own (smtp-node/standalone.yaml): a relay
#                                  on 127.0.0.1:2525 delivering to a local smtp-sink that
#                                  writes each message to .run/delivered/. Ctrl-C stops both.
#   scripts/run-local.sh cluster   a Kubernetes control plane on loopback (built from
#                                  Kubernetes' Go modules on first use, then cached; kwok
#                                  stands in for kubelets), the CRDs and examples applied,
#                                  and the operator reconciling them in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:/usr/local/go/bin:$PATH"
export SMTPFLEET_CACHE="${SMTPFLEET_CACHE:-$HOME/.cache/smtpfleet}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SMTPFLEET_CACHE/target}"
scripts/install-deps.sh

case "${1:-node}" in
node)
  cargo build -q -p smtp-node --bin smtp-node
  mkdir -p .run/delivered
  # smtp-sink refuses to run as root without -u.
  smtp-sink -u "$(id -un)" -d ".run/delivered/%M." 127.0.0.1:2526 100 &
  sink=$!
  trap 'kill $sink 2>/dev/null || true' EXIT
  "$CARGO_TARGET_DIR/debug/smtp-node" check-config --config smtp-node/standalone.yaml
  cat <<'MSG'
smtp-node is starting on 127.0.0.1:2525 (metrics on http://127.0.0.1:9325/metrics).
Try, in another terminal:
  swaks --server 127.0.0.1:2525 --from you@example.com --to someone@example.net
  ls .run/delivered/
MSG
  "$CARGO_TARGET_DIR/debug/smtp-node" run --config smtp-node/standalone.yaml
  ;;
cluster)
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
  ;;
*)
  echo "usage: $0 [node|cluster]" >&2
  exit 2
  ;;
esac
