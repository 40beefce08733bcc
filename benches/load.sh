#!/usr/bin/env bash
# Broker load benchmark: tsp-broker (release, datapath on) in one network namespace, the load
# generator (crates/tsp-broker/examples/loadgen.rs) in another, joined by a veth pair. The
# generator negotiates anonymous v6udpv4 tunnels over real UDP, each client from its own source
# address (AnyIP: a local route for 10.0.0.0/8 on the client's lo, the broker routes 10/8 back
# to the one veth neighbour, so no neighbour entry per address), until the broker holds 1k,
# 10k and 100k live tunnels. Per step it prints negotiations/s, p50/p95 negotiation latency,
# the broker's RSS per 1,000 sessions above its RSS at 0 sessions, and the broker's CPU
# (utime+stime over the step ÷ wall time; 100 % = one core). The tunnels stay live without
# keepalive echoes: the bench's broker allows a one-hour keepalive interval (the broker drops a
# tunnel after five silent intervals).
# Installs what it needs, builds in release mode, tears everything down on exit (also after a
# failure) and leaves nothing behind. Run as root on Debian/Ubuntu:  bash benches/load.sh
# LOAD_STEPS (default 1000,10000,100000), LOAD_CONCURRENCY (clients negotiating at a time,
# default 64), LOAD_STEP_LIMIT (seconds a step may take, default 300), CARGO_TARGET_DIR,
# LOADBENCH_LOGS=<dir> keeps the broker's log there; LOAD_PERF=<file> records the broker with
# `perf record -g` (DWARF call graphs, 199 Hz) during the load (`perf report -i <file>`;
# needs perf); LOAD_MALLOC=1 prints glibc's malloc_stats() of the broker at the end (needs gdb).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then echo "load bench: run as root (it creates network namespaces)" >&2; exit 1; fi
missing=()
for p in iproute2 procps; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "load bench: needs a Rust toolchain (https://rustup.rs)" >&2; exit 1; }

echo "== building (release)"
cargo build --release --locked --quiet --bin tsp-broker
cargo build --release --locked --quiet -p tsp-broker --example loadgen
TARGET=${CARGO_TARGET_DIR:-target}
case $TARGET in /*) ;; *) TARGET=$PWD/$TARGET ;; esac
BIN=$TARGET/release

P=lb$$                                # unique prefix: namespaces ${P}c ${P}b, links ${P}c0 ${P}b0
W=$(mktemp -d /tmp/tsploadbench.XXXXXX)
PIDS=()
C=(ip netns exec ${P}c)
B=(ip netns exec ${P}b)

cleanup() {
  set +e
  [ -n "${LOADBENCH_LOGS:-}" ] && [ -d "$W" ] && mkdir -p "$LOADBENCH_LOGS" && cp "$W"/*.log "$LOADBENCH_LOGS"/ 2>/dev/null
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  PIDS=()
  for n in c b; do ip netns del $P$n 2>/dev/null; done
  rm -rf "$W"
}
fail() {
  echo "== FAILED: $*" >&2
  [ -s "$W/broker.log" ] && { echo "--- broker.log" >&2; tail -n 20 "$W/broker.log" >&2; }
  exit 1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== network: clients ${P}c (10.0.0.0/8 AnyIP, 192.0.2.2) -- broker ${P}b (192.0.2.1)"
for n in c b; do ip netns del $P$n 2>/dev/null || true; ip netns add $P$n; ip -n $P$n link set lo up; done
ip link add ${P}c0 netns ${P}c type veth peer name ${P}b0 netns ${P}b
ip -n ${P}c link set ${P}c0 up
ip -n ${P}b link set ${P}b0 up
ip -n ${P}c addr add 192.0.2.2/24 dev ${P}c0
ip -n ${P}b addr add 192.0.2.1/24 dev ${P}b0
# Every address of 10/8 is the client host's own, and the broker sends them all to it.
ip -n ${P}c route add local 10.0.0.0/8 dev lo
ip -n ${P}b route add 10.0.0.0/8 via 192.0.2.2
for n in c b; do
  ip netns exec $P$n sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
done

echo "== broker"
# Room for 100k tunnels (and the offers of a step in flight), a one-hour keepalive so idle
# tunnels stay, no control socket or state file of the host's broker touched.
cat > "$W/broker.toml" <<EOF
listen = ["[::]:3653"]
tcp = false
auth = ["anonymous"]
server_ipv6 = "2001:db8:b::1"
client_pool = "2001:db8:b::/64"
max_tunnels = 200000
keepalive_max = 3600
tun_name = "${P}t"
tun4_name = "${P}t4"
control_socket = ""
EOF
"${B[@]}" "$BIN/tsp-broker" -c "$W/broker.toml" > "$W/broker.log" 2>&1 &
BROKER=$!; PIDS+=($BROKER)
for _ in $(seq 200); do grep -q "listening" "$W/broker.log" 2>/dev/null && break; sleep 0.05; done
grep -q "listening" "$W/broker.log" || fail "the broker did not start"
sleep 0.5

echo "== load: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "${LOAD_PERF:-}" ]; then
  perf record -q -F 199 --call-graph dwarf,16384 -e cpu-clock -o "$LOAD_PERF" -p "$BROKER" > "$W/perf.log" 2>&1 &
  PIDS+=($!)
fi
ok=0
"${C[@]}" "$BIN/examples/loadgen" --server 192.0.2.1:3653 --broker-pid "$BROKER" \
  --steps "${LOAD_STEPS:-1000,10000,100000}" --concurrency "${LOAD_CONCURRENCY:-64}" \
  --step-limit "${LOAD_STEP_LIMIT:-300}" --keepalive 3600 || ok=1
kill -0 "$BROKER" 2>/dev/null || fail "the broker died"
if [ -n "${LOAD_MALLOC:-}" ]; then gdb -p "$BROKER" -batch -ex 'call (void)malloc_stats()' >/dev/null 2>&1; sed -n '/^Arena 0:/,/^max mmap bytes/p' "$W/broker.log"; fi
if [ -n "${LOAD_PERF:-}" ]; then kill -INT "${PIDS[-1]}" 2>/dev/null; wait "${PIDS[-1]}" 2>/dev/null || true; fi
echo "== broker: peak RSS $(awk '/^VmHWM/ { printf "%.1f MiB", $2 / 1024 }' /proc/$BROKER/status), \
$(grep -c 'tunnel established' "$W/broker.log" || true) tunnels established, \
$(grep -ciE 'warn|error' "$W/broker.log" || true) warnings/errors in its log"
# Datagrams the kernel dropped for a full socket buffer, on either side (0 expected).
drops() { ip netns exec "$1" nstat -asz 2>/dev/null | awk '$1 ~ /^Udp6?RcvbufErrors$/ { n += $2 } END { print n + 0 }'; }
echo "== UDP receive-buffer drops: broker $(drops ${P}b), clients $(drops ${P}c)"
echo "== load: load average now $(cut -d' ' -f1-3 /proc/loadavg)"
exit $ok
