#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for the e2e suite: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok standing in for kubelets on fake nodes in
# two zones (it marks pods Running and Ready), and real nodes e2e-node-1 and e2e-node-2
# (zones real-a and real-b): kubelets and containerd that run containers (node.sh;
# SMTPFLEET_E2E_REAL_NODES=1 starts only the first, SMTPFLEET_E2E_REAL_NODE=0 neither).
#
#   e2e/cluster.sh up     # build (cached) and start; writes e2e/.work/kubeconfig
#   e2e/cluster.sh env    # prints export lines for KUBECONFIG and PATH
#   e2e/cluster.sh down   # stops every component
#   e2e/cluster.sh certmanager up     # installs cert-manager's CRDs, starts its controller
#   e2e/cluster.sh certmanager down   # stops the controller, removes the CRDs (and so
#                                     # every cert-manager object)
#   e2e/cluster.sh certmanager status # prints running, absent, stale (CRDs without the
#                                     # controller) or external
#
# cert-manager is not part of `up`: the suite covers pools both with and without it, so
# the tests that need it bring it up and take it down themselves.
#
# When KUBECONFIG is set (kind, k3d, a real cluster), `up` builds and starts nothing and
# the suite uses that cluster as it is; `certmanager up` then only checks that the
# cluster has cert-manager, and `certmanager down` leaves it alone.
set -euo pipefail
cd "$(dirname "$0")"
E2E_DIR=$(pwd)
WORK="${SMTPFLEET_E2E_WORK:-$E2E_DIR/.work}"
BASE_PORT="${SMTPFLEET_E2E_PORT:-26400}"
ETCD_CLIENT=$((BASE_PORT + 79))
ETCD_PEER=$((BASE_PORT + 80))
APISERVER=$((BASE_PORT + 43))
KCM=$((BASE_PORT + 57))
SCHEDULER=$((BASE_PORT + 59))
KWOK=$((BASE_PORT + 47))
CERT_MANAGER=$((BASE_PORT + 94))
READY_TIMEOUT="${SMTPFLEET_E2E_READY_TIMEOUT:-120}"
REAL_NODE="${SMTPFLEET_E2E_REAL_NODE:-1}"

log() { printf 'cluster: %s\n' "$*" >&2; }

# Prints the tail of a component's log and fails.
fail() {
  local component=$1; shift
  log "$*"
  if [ -f "$WORK/logs/$component.log" ]; then
    log "last lines of $WORK/logs/$component.log:"
    tail -n 30 "$WORK/logs/$component.log" >&2
  fi
  exit 1
}

start() {
  local name=$1; shift
  "$@" >"$WORK/logs/$name.log" 2>&1 &
  echo $! >"$WORK/pids/$name"
}

alive() { kill -0 "$(cat "$WORK/pids/$1")" 2>/dev/null; }

# wait_until COMPONENT SECONDS COMMAND...: retries COMMAND until it succeeds.
wait_until() {
  local component=$1 timeout=$2; shift 2
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    alive "$component" || fail "$component" "$component exited"
    [ "$(date +%s)" -lt "$deadline" ] || fail "$component" "timed out after ${timeout}s waiting for $component: $*"
    sleep 0.5
  done
}

certs() {
  local d="$WORK/pki"
  mkdir -p "$d"
  [ -f "$d/admin.crt" ] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=smtpfleet-e2e-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$d/apiserver.key" -out "$d/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\n' >"$d/apiserver.ext"
  openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 30 -extfile "$d/apiserver.ext" -out "$d/apiserver.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=smtpfleet-e2e-admin" \
    -keyout "$d/admin.key" -out "$d/admin.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$d/admin.ext"
  openssl x509 -req -in "$d/admin.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 30 -extfile "$d/admin.ext" -out "$d/admin.crt" 2>/dev/null
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
}

kubeconfig() {
  cat >"$WORK/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: e2e
    cluster:
      server: https://127.0.0.1:$APISERVER
      certificate-authority: $WORK/pki/ca.crt
users:
  - name: admin
    user:
      client-certificate: $WORK/pki/admin.crt
      client-key: $WORK/pki/admin.key
contexts:
  - name: e2e
    context: { cluster: e2e, user: admin, namespace: default }
current-context: e2e
EOF
}

# Statically provisioned volumes: the cluster has no storage provisioner, and every
# smtp-node pod claims a spool volume. Unclassed PVs bind to claims without a class.
volumes() {
  local i
  for i in $(seq 1 60); do
    cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: e2e-pv-$i
  labels: { smtpfleet.io/e2e: "true" }
spec:
  capacity: { storage: 100Gi }
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: { path: /tmp/e2e-pv-$i }
EOF
  done
}

nodes() {
  local i zone
  for i in 1 2 3 4; do
    if [ $((i % 2)) -eq 1 ]; then zone=zone-a; else zone=zone-b; fi
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    topology.kubernetes.io/zone: $zone
status:
  allocatable: { cpu: "32", memory: 256Gi, pods: "110" }
  capacity: { cpu: "32", memory: 256Gi, pods: "110" }
EOF
  done
}

up() {
  if [ -n "${KUBECONFIG:-}" ]; then
    log "KUBECONFIG is set: using that cluster as it is, starting nothing"
    return 0
  fi
  local bin
  bin=$("$E2E_DIR/build.sh" | tail -n 1)
  down_quiet
  rm -rf "$WORK"
  mkdir -p "$WORK/logs" "$WORK/pids" "$WORK/etcd"
  echo "$bin" >"$WORK/bin"
  local started=$(date +%s)
  certs
  kubeconfig
  local pki="$WORK/pki" kc="$WORK/kubeconfig"

  start etcd "$bin/etcd" --name e2e --data-dir "$WORK/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster "e2e=http://127.0.0.1:$ETCD_PEER" --unsafe-no-fsync --quota-backend-bytes 4294967296
  wait_until etcd 30 curl -fsS "http://127.0.0.1:$ETCD_CLIENT/health"

  start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_CLIENT" \
    --bind-address 127.0.0.1 --secure-port "$APISERVER" --advertise-address 127.0.0.1 \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --authorization-mode Node,RBAC --allow-privileged=true \
    --kubelet-client-certificate "$pki/admin.crt" --kubelet-client-key "$pki/admin.key" \
    --kubelet-preferred-address-types InternalIP \
    --endpoint-reconciler-type none
  wait_until kube-apiserver "$READY_TIMEOUT" "$bin/kubectl" --kubeconfig "$kc" get --raw /readyz

  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$KCM" --leader-elect=false \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller' \
    --concurrent-gc-syncs 5
  start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER" --leader-elect=false
  # kwok manages only the fake nodes (and their pods), never the real one. Their node
  # and pod addresses are on loopback: the operator calls every pod's admin API and the
  # API server a node's kubelet port, and nothing may leave this machine.
  start kwok "$bin/kwok" --kubeconfig "$kc" --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --cidr 127.101.0.1/16 --node-ip 127.0.0.1 \
    --server-address "127.0.0.1:$KWOK" --node-lease-duration-seconds 40

  wait_until kube-controller-manager 60 curl -fsSk "https://127.0.0.1:$KCM/healthz"
  wait_until kube-scheduler 60 curl -fsSk "https://127.0.0.1:$SCHEDULER/healthz"
  nodes | "$bin/kubectl" --kubeconfig "$kc" apply -f - >/dev/null
  volumes | "$bin/kubectl" --kubeconfig "$kc" apply -f - >/dev/null
  wait_until kwok 60 "$bin/kubectl" --kubeconfig "$kc" wait --for=condition=Ready node -l type=kwok --timeout=5s
  # New nodes carry the not-ready taint until the node lifecycle controller sees them Ready.
  wait_until kube-controller-manager 60 sh -c "! '$bin/kubectl' --kubeconfig '$kc' get nodes -o jsonpath='{.items[*].spec.taints}' | grep -q not-ready"
  # Pods need the default ServiceAccount, which the controller manager creates.
  wait_until kube-controller-manager 60 "$bin/kubectl" --kubeconfig "$kc" get serviceaccount default
  if [ "$REAL_NODE" = 1 ]; then
    "$E2E_DIR/node.sh" up "$bin" "$WORK" "$APISERVER" "$BASE_PORT"
    log "real node: $("$E2E_DIR/node.sh" status)"
  fi
  log "ready in $(( $(date +%s) - started ))s: export KUBECONFIG=$kc"
}

down_quiet() {
  # The real node first (it needs nothing from the control plane to go): also after an
  # interrupted run, whose pid files may be gone. With SMTPFLEET_E2E_REAL_NODE=0 the
  # machine's real node, if any, belongs to another run: leave it alone.
  if [ "$REAL_NODE" = 1 ]; then "$E2E_DIR/node.sh" down; fi
  [ -d "$WORK/pids" ] || return 0
  local f
  for f in cert-manager kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
    [ -f "$WORK/pids/$f" ] && kill "$(cat "$WORK/pids/$f")" 2>/dev/null || true
  done
  for _ in $(seq 50); do
    local any=0
    for f in "$WORK"/pids/*; do kill -0 "$(cat "$f")" 2>/dev/null && any=1; done
    [ "$any" = 0 ] && break
    sleep 0.2
  done
  for f in "$WORK"/pids/*; do kill -9 "$(cat "$f")" 2>/dev/null || true; done
  rm -rf "$WORK/pids"
}

# external: KUBECONFIG points at a cluster this script did not start.
external() { [ -n "${KUBECONFIG:-}" ] && [ "${KUBECONFIG}" != "$WORK/kubeconfig" ]; }

# ours_or_fail prints the binary directory of the running e2e cluster.
ours_or_fail() {
  [ -f "$WORK/bin" ] && [ -f "$WORK/kubeconfig" ] || { log "the e2e cluster is not up: run $0 up"; exit 1; }
  cat "$WORK/bin"
}

has_cert_manager_crds() {
  "$1" --kubeconfig "$2" get crd certificates.cert-manager.io >/dev/null 2>&1
}

# stop_process NAME: SIGTERM, up to 10 s for a clean exit, then SIGKILL.
stop_process() {
  local pidfile="$WORK/pids/$1"
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

certmanager_up() {
  if external; then
    if has_cert_manager_crds kubectl "$KUBECONFIG"; then
      log "KUBECONFIG is set: using the cluster's cert-manager"
      return 0
    fi
    log "KUBECONFIG is set and that cluster has no cert-manager (no certificates.cert-manager.io CRD)"
    exit 3
  fi
  local bin kc="$WORK/kubeconfig"
  bin=$(ours_or_fail)
  local crds="$bin/cert-manager-crds.yaml"
  if [ -f "$WORK/pids/cert-manager" ] && alive cert-manager; then
    log "cert-manager is already running"
    return 0
  fi
  local started=$(date +%s)
  # Server-side: the Issuer CRDs are larger than the last-applied annotation allows.
  "$bin/kubectl" --kubeconfig "$kc" apply --server-side --force-conflicts -f "$crds" >/dev/null
  "$bin/kubectl" --kubeconfig "$kc" wait --for=condition=Established --timeout=60s -f "$crds" >/dev/null
  "$bin/kubectl" --kubeconfig "$kc" create namespace cert-manager --dry-run=client -o yaml \
    | "$bin/kubectl" --kubeconfig "$kc" apply -f - >/dev/null
  # Appends: the suite brings cert-manager up and down several times in one run.
  echo "--- started $(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$WORK/logs/cert-manager.log"
  "$bin/cert-manager-controller" --kubeconfig "$kc" \
    --cluster-resource-namespace cert-manager --enable-certificate-owner-ref \
    --readyz-address "127.0.0.1:$CERT_MANAGER" --v=2 \
    >>"$WORK/logs/cert-manager.log" 2>&1 &
  echo $! >"$WORK/pids/cert-manager"
  wait_until cert-manager 60 curl -fsS "http://127.0.0.1:$CERT_MANAGER/readyz"
  log "cert-manager ready in $(( $(date +%s) - started ))s (log: $WORK/logs/cert-manager.log)"
}

certmanager_down() {
  if external; then
    log "KUBECONFIG is set: leaving the cluster's cert-manager alone"
    return 0
  fi
  local bin kc="$WORK/kubeconfig"
  bin=$(ours_or_fail)
  stop_process cert-manager
  # Certificates first, in the foreground, so the garbage collector deletes the Secrets
  # they own: once the CRDs are gone it no longer follows owners of that kind.
  if has_cert_manager_crds "$bin/kubectl" "$kc"; then
    "$bin/kubectl" --kubeconfig "$kc" delete certificates.cert-manager.io --all --all-namespaces \
      --cascade=foreground --wait --timeout=120s >/dev/null
  fi
  # Deleting the CRDs deletes every other cert-manager object with them.
  "$bin/kubectl" --kubeconfig "$kc" delete --ignore-not-found --wait --timeout=120s \
    -f "$bin/cert-manager-crds.yaml" >/dev/null
  "$bin/kubectl" --kubeconfig "$kc" delete namespace cert-manager --ignore-not-found --wait=false >/dev/null
  log "cert-manager stopped and its CRDs removed"
}

certmanager_status() {
  if external; then
    if has_cert_manager_crds kubectl "$KUBECONFIG"; then echo external; else echo absent; fi
    return 0
  fi
  local bin
  bin=$(ours_or_fail)
  if [ -f "$WORK/pids/cert-manager" ] && alive cert-manager; then
    echo running
  elif has_cert_manager_crds "$bin/kubectl" "$WORK/kubeconfig"; then
    # CRDs without the controller: left behind by an interrupted run.
    echo stale
  else
    echo absent
  fi
}

case "${1:-}" in
  up) up ;;
  certmanager)
    case "${2:-}" in
      up) certmanager_up ;;
      down) certmanager_down ;;
      status) certmanager_status ;;
      *) echo "usage: $0 certmanager up|down|status" >&2; exit 2 ;;
    esac
    ;;
  down)
    if [ -n "${KUBECONFIG:-}" ] && [ "${KUBECONFIG}" != "$WORK/kubeconfig" ]; then exit 0; fi
    down_quiet
    log "stopped"
    ;;
  env)
    if [ -n "${KUBECONFIG:-}" ]; then echo "export KUBECONFIG=$KUBECONFIG"; else echo "export KUBECONFIG=$WORK/kubeconfig"; fi
    [ -f "$WORK/bin" ] && echo "export PATH=$(cat "$WORK/bin"):\$PATH"
    ;;
  *) echo "usage: $0 up|down|env|certmanager up|down|status" >&2; exit 2 ;;
esac
