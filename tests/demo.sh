#!/usr/bin/env bash
# The demo: the bundled broker in a network namespace, and two tspc clients bringing tunnels
# up to it — one on the broker's link, one behind an nftables masquerade NAT — then IPv6
# pings through each tunnel. Installs what it needs, builds, runs, prints the status, tears
# everything down and leaves nothing behind.
# Run as root on Debian/Ubuntu:  sudo tests/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then echo "demo: run as root (it creates network namespaces)" >&2; exit 1; fi
missing=()
for p in iproute2 nftables iputils-ping procps; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "demo: needs a Rust toolchain (https://rustup.rs)" >&2; exit 1; }

echo "== building"
cargo build --locked --quiet --bins
BIN=$PWD/target/debug
P=tspdemo
W=$(mktemp -d /tmp/tspdemo.XXXXXX)
PIDS=()

cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for n in b c n r; do ip netns del $P$n 2>/dev/null; done
  rm -rf "$W"
}
trap cleanup EXIT
for n in b c n r; do ip netns del $P$n 2>/dev/null || true; done

echo "== network: broker 192.0.2.1; client 192.0.2.2; NATed client 198.51.100.2 behind 203.0.113.2"
for n in b c n r; do ip netns add $P$n; ip -n $P$n link set lo up; done
ip link add ${P}c0 netns ${P}c type veth peer name ${P}b0 netns ${P}b
ip link add ${P}n0 netns ${P}n type veth peer name ${P}r0 netns ${P}r
ip link add ${P}r1 netns ${P}r type veth peer name ${P}b1 netns ${P}b
ip -n ${P}b addr add 192.0.2.1/24 dev ${P}b0
ip -n ${P}b addr add 203.0.113.1/24 dev ${P}b1
ip -n ${P}c addr add 192.0.2.2/24 dev ${P}c0
ip -n ${P}n addr add 198.51.100.2/24 dev ${P}n0
ip -n ${P}r addr add 198.51.100.1/24 dev ${P}r0
ip -n ${P}r addr add 203.0.113.2/24 dev ${P}r1
for l in "b ${P}b0" "b ${P}b1" "c ${P}c0" "n ${P}n0" "r ${P}r0" "r ${P}r1"; do set -- $l; ip -n $P$1 link set "$2" up; done
ip -n ${P}n route add default via 198.51.100.1
ip netns exec ${P}r sysctl -qw net.ipv4.ip_forward=1
ip netns exec ${P}r nft add table ip nat
ip netns exec ${P}r nft add chain ip nat post '{ type nat hook postrouting priority srcnat; }'
ip netns exec ${P}r nft add rule ip nat post oifname ${P}r1 masquerade

echo "== broker"
cat > "$W/broker.toml" <<EOF
listen = ["[::]:3653"]
auth = ["anonymous", "digest-md5"]
realm = "demo"
accounts_file = "$W/accounts"
server_ipv6 = "2001:db8:b::1"
client_pool = "2001:db8:b::/64"
dns_suffix = "demo.example"
EOF
: > "$W/accounts"
printf '%s\n' demo-password | "$BIN/tsp-broker" -c "$W/broker.toml" add-user demo >/dev/null
ip netns exec ${P}b "$BIN/tsp-broker" -c "$W/broker.toml" > "$W/broker.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q "listening" "$W/broker.log" 2>/dev/null && break; sleep 0.05; done
sed 's/^/   /' "$W/broker.log"

start_client() { # netns, name, title, gogoc.conf lines...
  local ns=$1 name=$2 title=$3; shift 3
  (umask 077; printf '%s\n' "$@" > "$W/$name.conf")
  echo "== $title"
  (cd "$W" && exec ip netns exec "$ns" "$BIN/tspc" -f "$W/$name.conf") > "$W/$name.out" 2> "$W/$name.err" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q "(up)" "$W/$name.out" 2>/dev/null && break; sleep 0.05; done
  if ! grep -q "(up)" "$W/$name.out"; then cat "$W/$name.out" "$W/$name.err"; echo "== FAILED: $name did not come up"; exit 1; fi
  sed 's/^/   /' "$W/$name.out"
}
ping_through() { # netns, interface
  echo "   \$ ping -6 -c 3 2001:db8:b::1   (the broker, through $2)"
  ip netns exec "$1" ping -6 -n -c 3 -i 0.2 -W 2 2001:db8:b::1 | sed -n 's/^/     /; /bytes from\|packet loss/p'
}
start_client ${P}c direct "client on the broker's link (anonymous, v6anyv4)" \
  server=192.0.2.1 auth_method=anonymous tunnel_mode=v6anyv4
ping_through ${P}c sit1
start_client ${P}n natted "client behind NAT (DIGEST-MD5, v6anyv4)" \
  server=203.0.113.1 auth_method=digest-md5 userid=demo passwd=demo-password tunnel_mode=v6anyv4
ping_through ${P}n tun
echo "== tunnel interfaces"
ip -n ${P}c -br -6 addr show dev sit1 | sed 's/^/   client:  /'
ip -n ${P}n -br -6 addr show dev tun | sed 's/^/   natted:  /'
ok=1
grep -q "mode: *v6v4" "$W/direct.out" || ok=0
grep -q "mode: *v6udpv4" "$W/natted.out" && grep -q "IPv4 203.0.113.2" "$W/natted.out" || ok=0
ip netns exec ${P}c ping -6 -n -c 1 -W 2 2001:db8:b::1 >/dev/null || ok=0
ip netns exec ${P}n ping -6 -n -c 1 -W 2 2001:db8:b::1 >/dev/null || ok=0
echo "== stopping the clients (SIGTERM)"
kill -TERM "${PIDS[1]}" "${PIDS[2]}"
wait "${PIDS[1]}" "${PIDS[2]}" 2>/dev/null || true
PIDS=("${PIDS[0]}")
ip -n ${P}c link show sit1 >/dev/null 2>&1 && { echo "   sit1 still exists"; ok=0; }
ip -n ${P}n link show tun >/dev/null 2>&1 && { echo "   tun still exists"; ok=0; }
if [ $ok = 1 ]; then
  echo "== OK: v6v4 for the direct client, v6udpv4 through the NAT (seen as 203.0.113.2), IPv6 pings through both, nothing left behind"
else
  echo "== FAILED (see above)"; exit 1
fi
