#!/usr/bin/env bash
# Domain benchmark: N MailDomains applied at once to one RelayPool on a real API server
# (the control plane of e2e/cluster.sh, kwok nodes, on its own ports and work directory),
# the operator (release build) running out of cluster.
#
# Prints: how long until every domain has its key (DKIMKeyReady) and is in the pool's
# domain set with it (what nodes load), the operator's resident memory before, after
# and at its peak, the StatefulSet's generation before and after (every change would be
# a rolling restart), and the size of each object the operator writes per pool.
#
#   scripts/bench-domains.sh              # 1,000 ed25519 domains
#   scripts/bench-domains.sh 10000        # as many as you like
#   ALGORITHM=rsa-2048 scripts/bench-domains.sh 1000
#   OPERATOR=/path/to/operator scripts/bench-domains.sh   # that binary, not a fresh build
#
# DNS checks go to a port where nothing answers (so they fail fast) at the default
# query-rate limit of 20/s: the keys must not wait for DNS. With KUBECONFIG set, that
# cluster is used and nothing is started.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-${DOMAINS:-1000}}
ALGORITHM=${ALGORITHM:-ed25519}
TIMEOUT=${TIMEOUT:-900}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${SMTPFLEET_CACHE:-$HOME/.cache/smtpfleet}/target}"
export SMTPFLEET_E2E_REAL_NODE=0
export SMTPFLEET_E2E_WORK="${SMTPFLEET_E2E_WORK:-/tmp/smtpfleet-bench-domains}"
export SMTPFLEET_E2E_PORT="${SMTPFLEET_E2E_PORT:-27600}"
NS=bench-domains-$(date +%s)
POOL=bench

if [ -z "${OPERATOR:-}" ]; then
  echo "building the operator (release)..."
  cargo build --release -q -p smtpfleet-operator --bin operator
  OPERATOR="$CARGO_TARGET_DIR/release/operator"
fi

work=$(mktemp -d /tmp/smtpfleet-bench-domains.XXXXXX)
op_pid=""
started_cluster=0
cleanup() {
  if [ -n "$op_pid" ]; then kill "$op_pid" 2>/dev/null || true; wait "$op_pid" 2>/dev/null || true; fi
  if [ -n "${KUBECONFIG:-}" ]; then kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true; fi
  if [ "$started_cluster" = 1 ]; then e2e/cluster.sh down >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap "exit 130" INT TERM

if [ -z "${KUBECONFIG:-}" ]; then
  started_cluster=1
  e2e/cluster.sh up
  eval "$(e2e/cluster.sh env)"
fi

kubectl apply --server-side -f crds >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/relaypools.smtpfleet.io crd/maildomains.smtpfleet.io >/dev/null
kubectl create namespace "$NS" >/dev/null

dead_dns=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
http_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$OPERATOR" run --namespace="$NS" --leader-election=false --http-addr="127.0.0.1:$http_port" \
  --dns-nameserver="127.0.0.1:$dead_dns" --log-format=text --log-level=warn >"$work/operator.log" 2>&1 &
op_pid=$!
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$http_port/readyz" >/dev/null && break
  kill -0 "$op_pid" 2>/dev/null || { cat "$work/operator.log"; exit 1; }
  sleep 0.5
done

kubectl apply -f - >/dev/null <<EOF
apiVersion: smtpfleet.io/v1alpha1
kind: RelayPool
metadata: {name: $POOL, namespace: $NS}
spec:
  hostname: relay.bench.test
  dataCentres:
    - {name: east, zone: zone-a, replicas: 2}
    - {name: west, zone: zone-b, replicas: 2}
  queue: {replicationFactor: 2, minDataCentres: 2}
  tls: {selfSigned: {}}
EOF
for _ in $(seq 1 120); do
  kubectl get -n "$NS" statefulset/$POOL-east configmap/$POOL-domains >/dev/null 2>&1 && break
  sleep 0.5
done
sleep 5

rss() { awk '/^VmRSS/ {print $2}' "/proc/$op_pid/status"; }
hwm() { awk '/^VmHWM/ {print $2}' "/proc/$op_pid/status"; }
generations() {
  kubectl get statefulsets -n "$NS" -l "smtpfleet.io/pool=$POOL" \
    -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.generation} {end}'
}
gen_before=$(generations)
rss_before=$(rss)

python3 - "$N" "$NS" "$ALGORITHM" >"$work/domains.yaml" <<'EOF'
import sys
n, ns, algorithm = int(sys.argv[1]), sys.argv[2], sys.argv[3]
for i in range(n):
    print(f"""---
apiVersion: smtpfleet.io/v1alpha1
kind: MailDomain
metadata: {{name: d{i:05d}, namespace: {ns}}}
spec:
  domain: d{i:05d}.bench.test
  relayPoolRef: {{name: bench}}
  dkim: {{algorithm: {algorithm}}}""")
EOF

# Domains with a key in the pool's domain set, as nodes see it.
in_domain_set() {
  kubectl get secrets -n "$NS" -l "smtpfleet.io/pool=$POOL,smtpfleet.io/component=domain-shard" -o json |
    python3 -c '
import base64, json, sys
total = 0
for item in json.load(sys.stdin)["items"]:
    index = base64.b64decode(item["data"]["domains.yaml"]).decode()
    total += index.count("selector:")
print(total)'
}
keys_ready() {
  kubectl get maildomains -n "$NS" \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="DKIMKeyReady")].status}{"\n"}{end}' |
    grep -c '^True$' || true
}

echo "applying $N MailDomains ($ALGORITHM)..."
start=$(date +%s.%N)
kubectl apply --server-side -f "$work/domains.yaml" >/dev/null
applied=$(date +%s.%N)
ready_at="" set_at=""
deadline=$(( $(date +%s) + TIMEOUT ))
while [ -z "$ready_at" ] || [ -z "$set_at" ]; do
  now=$(date +%s.%N)
  if [ -z "$ready_at" ] && [ "$(keys_ready)" -ge "$N" ]; then ready_at=$now; fi
  if [ -z "$set_at" ] && [ "$(in_domain_set)" -ge "$N" ]; then set_at=$(date +%s.%N); fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "timed out after ${TIMEOUT}s: keys ready $(keys_ready), in the domain set $(in_domain_set)" >&2
    exit 1
  fi
  sleep 2
done
sleep 10
rss_after=$(rss)
rss_peak=$(hwm)
gen_after=$(generations)

size() { kubectl get -n "$NS" "$1" -o json | wc -c; }
largest_shard=$(kubectl get secrets -n "$NS" -l "smtpfleet.io/pool=$POOL,smtpfleet.io/component=domain-shard" \
  -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' |
  while read -r s; do printf '%s %s\n' "$(size "secret/$s")" "$s"; done | sort -n | tail -1)
shards=$(kubectl get secrets -n "$NS" -l "smtpfleet.io/pool=$POOL,smtpfleet.io/component=domain-shard" -o name | wc -l)

awk -v n="$N" -v a="$ALGORITHM" -v s="$start" -v ap="$applied" -v r="$ready_at" -v d="$set_at" \
  -v b="$rss_before" -v f="$rss_after" -v p="$rss_peak" 'BEGIN {
  printf "domains                 %d (%s)\n", n, a
  printf "kubectl apply took      %.1f s\n", ap - s
  printf "all keys ready          %.1f s after the apply started\n", r - s
  printf "all in the domain set   %.1f s after the apply started\n", d - s
  printf "operator RSS            %.1f MiB before, %.1f MiB after, %.1f MiB peak\n", b/1024, f/1024, p/1024
  printf "RSS growth per domain   %.1f KiB (after - before) / domains\n", (f - b) / n
}'
echo "StatefulSet generations before: $gen_before"
echo "StatefulSet generations after:  $gen_after"
printf 'object sizes (bytes, as JSON): statefulset %s, configmap %s-config %s, configmap %s-domains %s, largest shard %s, shards %s\n' \
  "$(size statefulset/$POOL-east)" "$POOL" "$(size configmap/$POOL-config)" "$POOL" "$(size configmap/$POOL-domains)" \
  "$largest_shard" "$shards"
