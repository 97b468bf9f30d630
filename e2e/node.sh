#!/usr/bin/env bash
# Real Kubernetes nodes for the e2e cluster, on this host: per node a containerd (with
# runc and the CNI bridge plugin) and a kubelet that registers as e2e-node-N and runs pods
# for real. SMTPFLEET_E2E_REAL_NODES (1 or 2, default 2) says how many; the second sits in
# another zone, so a pool can span two data centres for real. cluster.sh calls it; it can
# also be run by hand while the control plane is up.
#
#   e2e/node.sh up BIN WORK APISERVER_PORT   start containerd and the kubelet of every
#                                            node, import the images, wait for the nodes
#                                            to be Ready
#   e2e/node.sh down                         remove every container, mount, cgroup,
#                                            interface and nftables table this script made
#                                            (for both nodes, whatever the count), restore
#                                            the sysctls; safe to run at any time, also
#                                            after a failed or interrupted run
#   e2e/node.sh status                       prints ready, unavailable (and why), or absent
#
# Everything lives under fixed host paths (one e2e cluster with real nodes per machine at
# a time); S is "" for e2e-node-1 and "-2" for e2e-node-2:
#   /var/lib/smtpfleet-e2eS  containerd root, kubelet root-dir, pod logs, CNI IPAM state
#   /run/smtpfleet-e2eS      containerd state and socket, runc state, pid files
#   /run/containerd/s        the shims' sockets (a fixed path; removed if this made it)
#   cgroup /smtpfleet-e2eS   under every cgroup v1 hierarchy (the kubelet's cgroupRoot)
#   smtpfleet-nN             veth (peer smtpfleet-nN-p) with the node IP 10.250.0.N
#   smtpfleetN-1             the pods' bridge, 10.244.(N-1).1/24
#   nft table inet smtpfleet_e2eS  drops anything forwarded between the node's pods and
#                                  any interface but the pod bridges: pods reach the host
#                                  and each other (across nodes too), nothing off the
#                                  machine
#   /tmp/e2e-pv-N            the spool PersistentVolumes' host paths, owned by 65532 (the
#                            kubelet does not apply fsGroup to hostPath volumes)
#
# The nodes are tainted smtpfleet.io/real-node=true:NoSchedule and labelled
# smtpfleet.io/e2e-node=real and topology.kubernetes.io/zone=real-a (e2e-node-1) or
# real-b (e2e-node-2), zones no kwok node has, so only pods that ask for them land there;
# the kwok nodes keep the rest of the suite as it was. Every pod's nameserver is
# 10.244.0.1, the first node's bridge, where the tests serve DNS when they need it.
set -euo pipefail
cd "$(dirname "$0")"
E2E_DIR=$(pwd)

# The most real nodes this script makes (and always removes).
MAX_NODES=2
NODES="${SMTPFLEET_E2E_REAL_NODES:-$MAX_NODES}"
# Every pod bridge the nodes can have: pods may talk across them, to nothing else.
ALL_BRIDGES='"smtpfleet0", "smtpfleet1"'
NAMESERVER=10.244.0.1
ZONES=(real-a real-b)
# Where `up` records why the machine cannot have real nodes, and how many it started.
FIRST_RUN=/run/smtpfleet-e2e
PV_COUNT=60

# node N: the names and addresses of real node N. The first node also owns what the
# nodes share (sysctls, the spool volumes, /var/log/containers, /run/containerd).
node() {
  local n=$1 suffix=""
  [ "$n" -gt 1 ] && suffix="-$n"
  INDEX=$n
  NODE_NAME=e2e-node-$n
  NODE_IP=10.250.0.$n
  POD_SUBNET=10.244.$((n - 1)).0/24
  POD_GATEWAY=10.244.$((n - 1)).1
  ZONE=${ZONES[n - 1]}
  LOG_SUFFIX=$suffix
  STATE=/var/lib/smtpfleet-e2e$suffix
  RUN=/run/smtpfleet-e2e$suffix
  CGROUP=smtpfleet-e2e$suffix
  NODE_LINK=smtpfleet-n$n
  BRIDGE=smtpfleet$((n - 1))
  NFT_TABLE=smtpfleet_e2e${suffix//-/_}
  CNI_NETWORK=smtpfleet-e2e$suffix
  SOCK="$RUN/containerd.sock"
}
node 1
# Sysctls the kubelet (and the bridge plugin, and this script) change.
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward
  fs.inotify.max_user_instances fs.inotify.max_user_watches)
CGROUP_HIERARCHIES=(cpu cpuacct cpuset memory pids devices freezer blkio systemd hugetlb net_cls net_prio perf_event unified)

log() { printf 'node: %s\n' "$*" >&2; }

# The cgroup v1 hierarchies mounted here (the cpu,cpuacct style of mounting included).
hierarchies() {
  local h
  for h in "${CGROUP_HIERARCHIES[@]}"; do
    [ -d "/sys/fs/cgroup/$h" ] && echo "/sys/fs/cgroup/$h"
  done
  return 0
}

# unavailable REASON: the host lacks a kernel feature; the real-pod tests skip with it.
unavailable() {
  mkdir -p "$FIRST_RUN"
  echo "$*" >"$FIRST_RUN/unavailable"
  log "no real node: $*"
  exit 0
}

preflight() {
  [ "$(id -u)" -eq 0 ] || unavailable "needs root (cgroups, mounts, interfaces)"
  grep -qw overlay /proc/filesystems || unavailable "no overlay filesystem in /proc/filesystems"
  [ -d /sys/fs/cgroup/memory ] && [ -d /sys/fs/cgroup/cpu ] && [ -d /sys/fs/cgroup/cpuset ] \
    && [ -d /sys/fs/cgroup/pids ] \
    || unavailable "cgroup v1 controllers cpu, cpuset, memory and pids are not all mounted under /sys/fs/cgroup"
  [ -f /proc/self/ns/net ] || unavailable "no network namespaces"
  grep -q '^Seccomp:' /proc/self/status || unavailable "kernel without seccomp"
  command -v nft >/dev/null || { log "nft not found: run scripts/install-deps.sh"; exit 1; }
  # The node IP sits on one end of a veth pair: this kernel may have no dummy interfaces.
  if ! ip link add "$NODE_LINK" type veth peer name "$NODE_LINK-p" 2>/dev/null; then
    ip link show "$NODE_LINK" >/dev/null 2>&1 || unavailable "cannot create a veth pair (ip link add type veth)"
  fi
  if ! ip link add "$BRIDGE" type bridge 2>/dev/null; then
    ip link show "$BRIDGE" >/dev/null 2>&1 || unavailable "cannot create a bridge (ip link add type bridge)"
  fi
}

save_sysctls() {
  # Only the first up saves: a second up after a crash must not save the changed values.
  [ -f "$STATE/sysctls.saved" ] && return 0
  local s
  for s in "${SYSCTLS[@]}"; do
    [ -e "/proc/sys/${s//.//}" ] && echo "$s=$(sysctl -n "$s")"
  done >"$STATE/sysctls.saved.tmp"
  mv "$STATE/sysctls.saved.tmp" "$STATE/sysctls.saved"
}

restore_sysctls() {
  [ -f "$STATE/sysctls.saved" ] || return 0
  local line
  while IFS= read -r line; do
    sysctl -q -w "$line" >/dev/null || log "could not restore $line"
  done <"$STATE/sysctls.saved"
  rm -f "$STATE/sysctls.saved"
}

network() {
  local apiserver=$1
  ip addr replace "$NODE_IP/32" dev "$NODE_LINK"
  ip link set "$NODE_LINK-p" up
  ip link set "$NODE_LINK" up
  # The pods' bridge, made here rather than by the CNI plugin on the first pod, so that
  # it can reach the API server: the kubernetes Service's address 10.0.0.1:443 (what
  # in-cluster clients dial; there is no kube-proxy) is translated to the API server on
  # loopback, which needs route_localnet on the bridge.
  ip addr replace "$POD_GATEWAY/${POD_SUBNET#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  sysctl -q -w "net.ipv4.conf.$BRIDGE.route_localnet=1" >/dev/null
  # Forwarding is on once the bridge plugin runs; nothing from or to the pods may cross
  # to another interface.
  nft -f - <<EOF
table inet $NFT_TABLE {
  chain forward {
    type filter hook forward priority filter - 10; policy accept;
    ip saddr $POD_SUBNET oifname != { $ALL_BRIDGES } drop
    ip daddr $POD_SUBNET iifname != { $ALL_BRIDGES } drop
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "$BRIDGE" ip daddr 10.0.0.1 tcp dport 443 dnat ip to 127.0.0.1:$apiserver
  }
}
EOF
  sysctl -q -w fs.inotify.max_user_instances=512 fs.inotify.max_user_watches=524288 >/dev/null
}

cgroups() {
  local h
  for h in $(hierarchies); do
    mkdir -p "$h/$CGROUP"
    if [ -f "$h/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" >"$h/$CGROUP/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h/$CGROUP/cpuset.mems"
    fi
  done
}

volumes() {
  local i
  for i in $(seq 1 "$PV_COUNT"); do
    rm -rf "/tmp/e2e-pv-$i"
    install -d -m 0770 -o 65532 -g 65532 "/tmp/e2e-pv-$i"
  done
}

write_configs() {
  local bin=$1 work=$2 apiserver=$3 base=$4
  local restrict_oom=false
  grep -q '^CapBnd:' /proc/self/status \
    && (( (0x$(awk '$1 == "CapBnd:" {print $2}' /proc/self/status) >> 24) & 1 )) || restrict_oom=true
  mkdir -p "$STATE/cni/net.d" "$STATE/kubelet" "$STATE/pod-logs" "$STATE/opt" "$RUN/pids"
  cat >"$STATE/cni/net.d/10-smtpfleet-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$POD_SUBNET", "gateway": "$POD_GATEWAY" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$STATE/cni-ipam"
      }
    }
  ]
}
EOF
  cat >"$STATE/containerd.toml" <<EOF
version = 3
root = "$STATE/containerd"
state = "$RUN/containerd"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile"]

[grpc]
  address = "$SOCK"

[ttrpc]
  address = "$SOCK.ttrpc"

[plugins.'io.containerd.internal.v1.opt']
  path = "$STATE/opt"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "registry.k8s.io/pause:3.10.2"

[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  # The kubelet asks for negative OOM scores (-998 for sandboxes), which need
  # CAP_SYS_RESOURCE; machines without it in their bounding set cannot start a sandbox.
  # Clamp the scores to containerd's own instead.
  restrict_oom_score_adj = $restrict_oom

[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = "runc"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = "$bin/runc"
  Root = "$RUN/runc"
  SystemdCgroup = false

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["$bin/cni"]
  conf_dir = "$STATE/cni/net.d"
  use_internal_loopback = true

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF

  # Pods resolve against the first node's bridge address, where nothing answers unless a
  # test serves DNS there: no resolver on or off the machine, yet a resolv.conf with a
  # nameserver, which resolvers insist on.
  printf 'nameserver %s\noptions timeout:1 attempts:1\n' "$NAMESERVER" >"$STATE/resolv.conf"

  # The node's client certificate: the Node authorizer knows it by its name and group.
  local pki="$work/pki"
  if [ ! -f "$pki/$NODE_NAME.crt" ]; then
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:nodes/CN=system:node:$NODE_NAME" \
      -keyout "$pki/$NODE_NAME.key" -out "$pki/$NODE_NAME.csr" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >"$pki/$NODE_NAME.ext"
    openssl x509 -req -in "$pki/$NODE_NAME.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
      -days 30 -extfile "$pki/$NODE_NAME.ext" -out "$pki/$NODE_NAME.crt" 2>/dev/null
  fi
  cat >"$STATE/kubelet.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: e2e
    cluster:
      server: https://127.0.0.1:$apiserver
      certificate-authority: $pki/ca.crt
users:
  - name: node
    user:
      client-certificate: $pki/$NODE_NAME.crt
      client-key: $pki/$NODE_NAME.key
contexts:
  - name: e2e
    context: { cluster: e2e, user: node }
current-context: e2e
EOF
  cat >"$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP
containerRuntimeEndpoint: unix://$SOCK
address: $NODE_IP
port: $((base + 49 + INDEX))
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $((base + 48 + 5 * (INDEX - 1)))
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: false }
  x509: { clientCAFile: $pki/ca.crt }
authorization: { mode: AlwaysAllow }
rotateCertificates: false
serverTLSBootstrap: false
resolvConf: $STATE/resolv.conf
clusterDNS: [$NAMESERVER]
clusterDomain: cluster.local
podLogsDir: $STATE/pod-logs
failSwapOn: false
maxPods: 30
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.inodesFree: "1%"
registerWithTaints:
  - { key: smtpfleet.io/real-node, value: "true", effect: NoSchedule }
EOF
}

# start WORK NAME COMMAND...: a background process with its log in WORK/logs (the second
# node's logs end in -2).
start() {
  local work=$1 name=$2; shift 2
  "$@" >"$work/logs/$name$LOG_SUFFIX.log" 2>&1 &
  echo $! >"$RUN/pids/$name"
}

alive() { [ -f "$RUN/pids/$1" ] && kill -0 "$(cat "$RUN/pids/$1")" 2>/dev/null; }

wait_for() {
  local work=$1 name=$2 timeout=$3; shift 3
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    if ! alive "$name" || [ "$(date +%s)" -ge "$deadline" ]; then
      alive "$name" && log "timed out after ${timeout}s waiting for $name: $*" || log "$name exited"
      log "last lines of $work/logs/$name$LOG_SUFFIX.log:"
      tail -n 30 "$work/logs/$name$LOG_SUFFIX.log" >&2
      return 1
    fi
    sleep 0.5
  done
}

up() {
  local bin=$1 work=$2 apiserver=$3 base=${4:-26400}
  local started=$(date +%s)
  case "$NODES" in 1 | 2) ;; *) log "SMTPFLEET_E2E_REAL_NODES must be 1 or 2, not $NODES"; return 2 ;; esac
  down
  mkdir -p "$work/logs"
  local images="$work/images"
  mkdir -p "$images"
  "$E2E_DIR/images.sh" build "$images" 2>>"$work/logs/images.log" \
    || { log "building the images failed:"; tail -n 30 "$work/logs/images.log" >&2; return 1; }
  local n
  for n in $(seq 1 "$NODES"); do
    node "$n"
    up_node "$bin" "$work" "$apiserver" "$base" "$images"
  done
  echo "$NODES" >"$FIRST_RUN/nodes"
  log "$NODES real node(s) ready in $(( $(date +%s) - started ))s"
}

# up_node BIN WORK APISERVER_PORT BASE_PORT IMAGES: the node selected with `node`.
up_node() {
  local bin=$1 work=$2 apiserver=$3 base=$4 images=$5
  local started=$(date +%s)
  mkdir -p "$STATE" "$RUN/pids"
  echo "$bin" >"$RUN/bin"
  preflight
  if [ "$INDEX" = 1 ]; then
    save_sysctls
    # The kubelet links container logs into /var/log/containers, making it if need be.
    [ -d /var/log/containers ] || touch "$STATE/made-var-log-containers"
    # The shims put their sockets in /run/containerd/s, whatever containerd's state dir.
    [ -d /run/containerd ] || touch "$STATE/made-run-containerd"
    volumes
  fi
  network "$apiserver"
  cgroups
  write_configs "$bin" "$work" "$apiserver" "$base"

  # containerd finds the shim on PATH; the shim finds runc through BinaryName.
  start "$work" containerd env PATH="$bin:$PATH" "$bin/containerd" --config "$STATE/containerd.toml"
  wait_for "$work" containerd 60 "$bin/ctr" --address "$SOCK" version
  local tar
  for tar in "$images"/*.tar; do
    "$bin/ctr" --address "$SOCK" -n k8s.io images import --all-platforms \
      --snapshotter overlayfs "$tar" >>"$work/logs/images.log" 2>&1 \
      || { log "importing $tar into $NODE_NAME failed:"; tail -n 20 "$work/logs/images.log" >&2; return 1; }
  done

  start "$work" kubelet env PATH="$bin:$PATH" "$bin/kubelet" --config "$STATE/kubelet.yaml" \
    --kubeconfig "$STATE/kubelet.kubeconfig" --root-dir "$STATE/kubelet" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --node-labels "smtpfleet.io/e2e-node=real,topology.kubernetes.io/zone=$ZONE" --v=2
  local kc="$work/kubeconfig"
  wait_for "$work" kubelet 120 "$bin/kubectl" --kubeconfig "$kc" wait --for=condition=Ready \
    "node/$NODE_NAME" --timeout=5s
  echo ready >"$RUN/ready"
  log "$NODE_NAME ready in $(( $(date +%s) - started ))s (logs: $work/logs/kubelet$LOG_SUFFIX.log, containerd$LOG_SUFFIX.log)"
}

# stop NAME: SIGTERM, up to 15 s, then SIGKILL.
stop() {
  local pidfile="$RUN/pids/$1"
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

# Pids of the shims our containerd started: their command line names our socket.
our_shims() {
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q -- "-address $SOCK " && basename "$p"
  done
  return 0
}

# Pids in our cgroups: the containers' processes.
cgroup_pids() {
  local h
  for h in $(hierarchies); do
    if [ -d "$h/$CGROUP" ]; then find "$h/$CGROUP" -name cgroup.procs -exec cat {} + 2>/dev/null || true; fi
  done | sort -un
}

# down: every real node this script can make, the second first (the first owns what
# they share), whatever count the last `up` used.
down() {
  local n
  for n in $(seq "$MAX_NODES" -1 1); do
    node "$n"
    down_node
  done
}

down_node() {
  local bin=""
  [ -f "$RUN/bin" ] && bin=$(cat "$RUN/bin")
  # The kubelet first, or it starts again what is being removed.
  stop kubelet
  if alive containerd && [ -n "$bin" ]; then
    timeout 60 "$bin/crictl" --runtime-endpoint "unix://$SOCK" --timeout 20s rmp -fa >/dev/null 2>&1 || true
  fi
  stop containerd
  local pid
  for pid in $(our_shims); do kill -9 "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local left
    left=$(cgroup_pids)
    [ -z "$left" ] && break
    # shellcheck disable=SC2086
    kill -9 $left 2>/dev/null || true
    sleep 0.2
  done
  # Deepest first: sandboxes' shm and netns, rootfs overlays, volumes, the kubelet's bind.
  local m
  for m in $(findmnt -rn -o TARGET | grep -E "^($STATE|$RUN)(/|\$)" | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
  local h c
  for h in $(hierarchies); do
    [ -d "$h/$CGROUP" ] || continue
    for c in $(find "$h/$CGROUP" -depth -type d); do
      rmdir "$c" 2>/dev/null || log "could not remove cgroup $c"
    done
  done
  local link
  for link in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link delete "$link" 2>/dev/null || true
  done
  ip link delete "$BRIDGE" 2>/dev/null || true
  ip link delete "$NODE_LINK" 2>/dev/null || true
  nft delete table inet "$NFT_TABLE" 2>/dev/null || true
  # The kubelet links every container log into /var/log/containers.
  for link in /var/log/containers/*.log; do
    [ -L "$link" ] && [[ "$(readlink "$link")" == "$STATE/"* ]] && rm -f "$link"
  done
  [ -f "$STATE/made-var-log-containers" ] && rmdir /var/log/containers 2>/dev/null
  [ -f "$STATE/made-run-containerd" ] && rm -rf /run/containerd
  rm -f /var/lib/cni/results/"$CNI_NETWORK"-* 2>/dev/null || true
  restore_sysctls
  local i
  for i in $(seq 1 "$PV_COUNT"); do
    [ -d "/tmp/e2e-pv-$i" ] && [ "$(stat -c %u "/tmp/e2e-pv-$i")" = 65532 ] && rm -rf "/tmp/e2e-pv-$i"
  done
  if [ -d "$STATE" ]; then rm -rf "$STATE" || log "could not remove $STATE"; fi
  if [ -d "$RUN" ]; then rm -rf "$RUN" || log "could not remove $RUN"; fi
  return 0
}

status() {
  if [ -f "$FIRST_RUN/unavailable" ]; then
    echo "unavailable: $(cat "$FIRST_RUN/unavailable")"
    return 0
  fi
  local n count
  count=$(cat "$FIRST_RUN/nodes" 2>/dev/null || echo 0)
  [ "$count" -ge 1 ] || { echo absent; return 0; }
  for n in $(seq 1 "$count"); do
    node "$n"
    if ! { [ -f "$RUN/ready" ] && alive kubelet && alive containerd; }; then
      echo absent
      return 0
    fi
  done
  echo ready
}

case "${1:-}" in
  up)
    [ $# -ge 4 ] || { echo "usage: $0 up BIN WORK APISERVER_PORT [BASE_PORT]" >&2; exit 2; }
    up "$2" "$3" "$4" "${5:-26400}"
    ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up BIN WORK APISERVER_PORT [BASE_PORT] | down | status" >&2; exit 2 ;;
esac
