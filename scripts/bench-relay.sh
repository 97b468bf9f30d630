#!/usr/bin/env bash
# Relay benchmark: smtp-node against Postfix, measured in the same run on this machine.
#
# Both relay everything to Postfix's smtp-sink. smtp-source injects MESSAGES messages from
# SESSIONS sessions with SIZE-byte bodies, once with a new connection per message and once
# reusing connections (-d). The end-to-end rate counts from the first connection until the
# sink has received every message. Then a paced load at half of smtp-node's maximum rate
# measures end-of-DATA -> 250 latency (spool fsync included) with the loadgen example.
# Last, a pool of three smtp-node processes with replicationFactor 2 over two data
# centres (the control plane of e2e/cluster.sh as arbiter, on its own ports and work
# directory): the load is spread over the three nodes, and each 250 means two disks.
#
#   scripts/bench-relay.sh                 # 20,000 messages, 20 sessions, 4 KiB
#   MESSAGES=50000 scripts/bench-relay.sh
#
# Not a test: numbers depend on the machine. Read the ratios, which compare both servers
# under the same conditions.
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES=${MESSAGES:-20000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-4096}
BASE_PORT=${BASE_PORT:-24000}
SINK_PORT=$BASE_PORT
POSTFIX_PORT=$((BASE_PORT + 1))
NODE_PORT=$((BASE_PORT + 2))
NODE_HTTP=$((BASE_PORT + 3))
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${SMTPFLEET_CACHE:-$HOME/.cache/smtpfleet}/target}"

for tool in smtp-source smtp-sink postfix postconf; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/install-deps.sh" >&2; exit 1; }
done

echo "building smtp-node (release)..."
cargo build --release -q -p smtp-node --bin smtp-node --example loadgen
NODE_BIN="$CARGO_TARGET_DIR/release/smtp-node"
LOADGEN="$CARGO_TARGET_DIR/release/examples/loadgen"

work=$(mktemp -d /tmp/smtpfleet-bench.XXXXXX)
chmod 755 "$work"
pids=()
cluster() {
  SMTPFLEET_E2E_REAL_NODE=0 SMTPFLEET_E2E_WORK="$work/cluster" \
    SMTPFLEET_E2E_PORT="${BENCH_CLUSTER_PORT:-27400}" e2e/cluster.sh "$@"
}
cleanup() {
  postfix -c "$work/postfix/etc" stop >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -d "$work/cluster" ]; then cluster down >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap "exit 130" INT TERM

# --- the sink -------------------------------------------------------------------------
# -c keeps a running "mesg=N" counter on stdout; the rate is read from it.
start_sink() {
  : >"$work/sink.out"
  smtp-sink -c -u root "127.0.0.1:$SINK_PORT" 1000 >"$work/sink.out" 2>&1 &
  pids+=($!)
  SINK_PID=$!
  wait_port "$SINK_PORT"
}
stop_sink() { kill "$SINK_PID" 2>/dev/null || true; wait "$SINK_PID" 2>/dev/null || true; }
sink_count() { tr '\r' '\n' <"$work/sink.out" | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2; }

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# Runs smtp-source against $1 and waits until the sink saw every message.
# Prints the end-to-end rate in messages per second.
measure() {
  local port=$1 reuse=$2 start end n
  start_sink
  start=$(date +%s.%N)
  smtp-source $reuse -s "$SESSIONS" -l "$SIZE" -m "$MESSAGES" \
    -f bench@bench.example -t sink@dest.example "127.0.0.1:$port"
  for _ in $(seq 3000); do
    n=$(sink_count)
    [ "${n:-0}" -ge "$MESSAGES" ] && break
    sleep 0.1
  done
  end=$(date +%s.%N)
  stop_sink
  if [ "${n:-0}" -lt "$MESSAGES" ]; then
    echo "only ${n:-0} of $MESSAGES messages reached the sink" >&2
    return 1
  fi
  echo "$MESSAGES / ($end - $start)" | bc -l | xargs printf '%.0f\n'
}

# --- Postfix as a relay (its default fsync behaviour) ---------------------------------
pf="$work/postfix"
mkdir -p "$pf/etc" "$pf/queue" "$pf/data"
chown postfix "$pf/data"
cp /etc/postfix/master.cf "$pf/etc/"
cat >"$pf/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $pf/queue
data_directory = $pf/data
maillog_file = $pf/maillog
maillog_file_prefixes = $work
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.bench.example
mydestination =
relayhost = [127.0.0.1]:$SINK_PORT
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks reject
alias_maps =
alias_database =
smtp_tls_security_level = none
smtpd_tls_security_level = none
EOF
postconf -c "$pf/etc" -F '*/*/chroot = n'
sed -i "s/^smtp  *inet /127.0.0.1:$POSTFIX_PORT inet /" "$pf/etc/master.cf"
postfix -c "$pf/etc" start >/dev/null 2>&1
wait_port "$POSTFIX_PORT"
echo "measuring Postfix..."
pf_new=$(measure "$POSTFIX_PORT" "")
pf_reuse=$(measure "$POSTFIX_PORT" "-d")
postfix -c "$pf/etc" stop >/dev/null 2>&1

# --- smtp-node as a relay (fsync on) ----------------------------------------------------
mkdir -p "$work/node/spool"
cat >"$work/node/smtp-node.yaml" <<EOF
hostname: node.bench.example
node: { name: bench }
spool: { dir: $work/node/spool }
listeners:
  - { name: relay, address: "127.0.0.1:$NODE_PORT" }
relay: { allowedNetworks: ["127.0.0.0/8"], domains: ["bench.example"] }
limits: { maxConnections: 2000, maxConnectionsPerClient: 1000 }
http: { address: "127.0.0.1:$NODE_HTTP" }
delivery:
  smarthost: { host: 127.0.0.1, port: $SINK_PORT, tls: none }
  concurrencyPerDestination: 20
EOF
"$NODE_BIN" check-config --config "$work/node/smtp-node.yaml"
RUST_LOG=warn "$NODE_BIN" run --config "$work/node/smtp-node.yaml" >"$work/node/log" 2>&1 &
pids+=($!)
wait_port "$NODE_PORT"
echo "measuring smtp-node..."
node_new=$(measure "$NODE_PORT" "")
node_reuse=$(measure "$NODE_PORT" "-d")

# Latency at half the maximum rate, connections reused so the figure is the server's.
half=$((node_reuse / 2))
start_sink
lat=$("$LOADGEN" --target "127.0.0.1:$NODE_PORT" --sessions "$SESSIONS" --size "$SIZE" \
  --messages "$((half * 10))" --rate "$half" --reuse --from bench@bench.example)
stop_sink

# --- a replicated pool: three nodes, two data centres, two copies before 250 -----------
echo "starting the arbiter (API server) for the pool..."
cluster up >"$work/cluster.log" 2>&1 || { tail -20 "$work/cluster.log" >&2; exit 1; }
kubeconfig="$work/cluster/kubeconfig"
pool_ports=()
start_pool_node() {
  local i=$1 dc=$2 dir="$work/pool-$1"
  local smtp=$((BASE_PORT + 10 + i)) http=$((BASE_PORT + 20 + i)) peer=$((BASE_PORT + 30 + i))
  mkdir -p "$dir/spool"
  cat >"$dir/smtp-node.yaml" <<EOF
hostname: node$i.bench.example
node: { name: bench-$i, dataCentre: $dc }
spool: { dir: $dir/spool }
listeners:
  - { name: relay, address: "127.0.0.1:$smtp" }
relay: { allowedNetworks: ["127.0.0.0/8"], domains: ["bench.example"] }
limits: { maxConnections: 2000, maxConnectionsPerClient: 1000 }
http: { address: "127.0.0.1:$http" }
delivery:
  smarthost: { host: 127.0.0.1, port: $SINK_PORT, tls: none }
  concurrencyPerDestination: 20
replication:
  factor: 2
  minDataCentres: 2
  listen: "127.0.0.1:$peer"
  arbiter: { namespace: default, pool: bench, kubeconfig: "$kubeconfig" }
EOF
  RUST_LOG=warn "$NODE_BIN" run --config "$dir/smtp-node.yaml" >"$dir/log" 2>&1 &
  pids+=($!)
  pool_ports+=("$smtp")
  for _ in $(seq 300); do
    curl -fs "http://127.0.0.1:$http/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "pool node $i not ready:" >&2
  tail -20 "$dir/log" >&2
  return 1
}
start_pool_node 1 east
start_pool_node 2 east
start_pool_node 3 west
# Ready means a member itself; the load waits until every node has read the view with
# all three in it.
for i in 1 2 3; do
  for _ in $(seq 300); do
    epoch=$(curl -fs "http://127.0.0.1:$((BASE_PORT + 20 + i))/metrics" 2>/dev/null \
      | awk '$1 == "smtpnode_replication_view_epoch" {print $2}')
    [ "${epoch:-0}" -ge 3 ] && break
    sleep 0.1
  done
done

# Like measure, with the messages and sessions split over the pool's nodes.
measure_pool() {
  local reuse=$1 start end n each=$((MESSAGES / 3)) sessions=$(((SESSIONS + 2) / 3)) p
  start_sink
  start=$(date +%s.%N)
  local sources=()
  for p in "${pool_ports[@]}"; do
    smtp-source $reuse -s "$sessions" -l "$SIZE" -m "$each" \
      -f bench@bench.example -t sink@dest.example "127.0.0.1:$p" &
    sources+=($!)
  done
  wait "${sources[@]}"
  for _ in $(seq 3000); do
    n=$(sink_count)
    [ "${n:-0}" -ge "$((each * 3))" ] && break
    sleep 0.1
  done
  end=$(date +%s.%N)
  stop_sink
  if [ "${n:-0}" -lt "$((each * 3))" ]; then
    echo "only ${n:-0} of $((each * 3)) messages reached the sink" >&2
    return 1
  fi
  echo "$((each * 3)) / ($end - $start)" | bc -l | xargs printf '%.0f\n'
}
echo "measuring the replicated pool..."
pool_new=$(measure_pool "")
pool_reuse=$(measure_pool "-d")

# Latency at half the pool's maximum rate, a third of it on each node.
pool_half=$((pool_reuse / 2))
start_sink
pool_lat=()
for p in "${pool_ports[@]}"; do
  "$LOADGEN" --target "127.0.0.1:$p" --sessions "$(((SESSIONS + 2) / 3))" --size "$SIZE" \
    --messages "$((pool_half * 10 / 3))" --rate "$((pool_half / 3))" --reuse \
    --from bench@bench.example >"$work/lat-$p" &
  pool_lat+=($!)
done
wait "${pool_lat[@]}"
stop_sink

ratio() { echo "$1 / $2" | bc -l | xargs printf '%.2f'; }
cat <<EOF

relay benchmark: $MESSAGES messages, $SESSIONS sessions, $SIZE-byte bodies, $(nproc) cores
                         Postfix   smtp-node   ratio   pool (2 copies)   ratio
new connection / msg  $(printf '%9s %11s %7s %17s %7s' "$pf_new" "$node_new" "$(ratio "$node_new" "$pf_new")" "$pool_new" "$(ratio "$pool_new" "$pf_new")")  msg/s end to end
connection reuse (-d) $(printf '%9s %11s %7s %17s %7s' "$pf_reuse" "$node_reuse" "$(ratio "$node_reuse" "$pf_reuse")" "$pool_reuse" "$(ratio "$pool_reuse" "$pf_reuse")")  msg/s end to end
smtp-node at $half msg/s: $lat
pool at $pool_half msg/s (a third on each node):
$(for p in "${pool_ports[@]}"; do echo "  node on port $p: $(cat "$work/lat-$p")"; done)
EOF
