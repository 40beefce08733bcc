#!/usr/bin/env bash
# The demo: the bundled TSP broker in one network namespace; a real NetworkManager (on a private
# system bus, in its own mount namespace) in another; `nmcli connection add type vpn vpn-type tsp`
# and `nmcli connection up`; NetworkManager starts nm-tsp-service, which negotiates the tunnel;
# then the status, the tunnel's addresses and routes, and IPv6 pings through the tunnel; then
# `nmcli connection down` and a check that nothing is left. Installs what it needs, builds, and
# leaves the host as it found it (NetworkManager's state lives in a temporary directory).
# Run as root on Debian/Ubuntu:  sudo tests/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then echo "demo: run as root (it creates network namespaces)" >&2; exit 1; fi
if [ -z "${TSPDEMO_INNER:-}" ]; then
  missing=()
  for p in iproute2 nftables iputils-ping procps dbus network-manager; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  command -v cargo >/dev/null || { echo "demo: needs a Rust toolchain (https://rustup.rs)" >&2; exit 1; }
  echo "== building"
  cargo build --locked --quiet --bins
  # A private pid namespace: every process started below dies with the demo, whatever happens.
  exec env TSPDEMO_INNER=1 unshare --pid --fork --kill-child --mount-proc bash "$0" "$@"
fi

BIN=$PWD/target/debug
P=tspdemo
W=$(mktemp -d /tmp/tspdemo.XXXXXX)
# nm-tsp-service leaves root for its system user (nm-tsp) before it connects to the bus socket
# in here: the directory must be traversable (its files keep their own modes).
chmod 755 "$W"
export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$W/bus/sock
PIDS=()
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for n in b c; do for q in $(ip netns pids $P$n 2>/dev/null); do kill -9 "$q" 2>/dev/null; done; ip netns del $P$n 2>/dev/null; done
  rm -rf "$W"
}
trap cleanup EXIT
wait_for() { for _ in $(seq 1 200); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "== FAILED waiting for: $1"; return 1; }
for n in b c; do ip netns del $P$n 2>/dev/null || true; done
mkdir -p "$W"/{bus/system.d,bus/services,nm/etc/VPN,nm/etc/system-connections,nm/lib,state}

echo "== network: client ${P}c (192.0.2.2, managed by NetworkManager) <-> broker ${P}b (192.0.2.1)"
for n in b c; do ip netns add $P$n; ip -n $P$n link set lo up; done
ip link add ${P}c0 netns ${P}c type veth peer name ${P}b0 netns ${P}b
ip -n ${P}b addr add 192.0.2.1/24 dev ${P}b0
ip -n ${P}b link set ${P}b0 up
ip -n ${P}c link set ${P}c0 up

echo "== broker (tsp-broker, anonymous and DIGEST-MD5)"
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
PIDS+=($!); disown
wait_for "grep -q listening $W/broker.log"
sed -n '1,3s/^/   /p' "$W/broker.log" | grep -v INFO || true

echo "== NetworkManager on a private system bus, nm-tsp-service installed in its private /etc/NetworkManager/VPN"
sed -e "s|@SOCK@|$W/bus/sock|" -e "s|@EXTRA@|$W/bus|" tests/testbed/system-bus.conf.in > "$W/bus/system.conf"
cp dbus/nm-tsp-service.conf "$W/bus/system.d/"
dbus-daemon --config-file="$W/bus/system.conf" --nofork > "$W/bus/log" 2>&1 &
PIDS+=($!); disown
wait_for "test -S $W/bus/sock"
cat > "$W/nm/etc/NetworkManager.conf" <<EOF
[main]
plugins=keyfile
dns=none
rc-manager=unmanaged
hostname-mode=none
auth-polkit=root-only
no-auto-default=*
[connectivity]
enabled=false
EOF
sed "s|^program=.*|program=$BIN/nm-tsp-service|" nm-plugin/nm-tsp-service.name > "$W/nm/etc/VPN/nm-tsp-service.name"
chmod 644 "$W/nm/etc/VPN/nm-tsp-service.name"
ip netns exec ${P}c env NM_TSP_STATE_DIR="$W/state" unshare --mount --uts sh tests/testbed/nm-in-netns.sh "$W" > "$W/nm.log" 2>&1 &
PIDS+=($!); disown
nm-online -s -q -t 20
nmcli -t connection add type ethernet ifname ${P}c0 con-name wired ipv4.method manual ipv4.addresses 192.0.2.2/24 ipv6.method disabled >/dev/null
nmcli -t --wait 20 connection up wired >/dev/null

echo "== \$ nmcli connection add type vpn vpn-type tsp con-name demo-tsp vpn.data 'server=192.0.2.1, auth-method=digest-md5, username=demo, password-flags=0' vpn.secrets password=…"
# (nmcli runs outside NetworkManager's private mount namespace, so it is given the full service name.)
nmcli connection add type vpn vpn-type org.freedesktop.NetworkManager.tsp con-name demo-tsp ifname '*' \
  vpn.data "server=192.0.2.1, auth-method=digest-md5, username=demo, password-flags=0" \
  vpn.secrets "password=demo-password" >/dev/null
echo "== \$ nmcli connection up demo-tsp"
T0=$(date +%s%N)
nmcli --wait 30 connection up demo-tsp ifname ${P}c0 | sed 's/^/   /'
T1=$(date +%s%N)
field() { nmcli -t connection show demo-tsp | sed -n "s/^$1:\(.*\)/\1/p" | paste -sd' ' -; }
echo "== status ($(( (T1 - T0) / 1000000 )) ms to activate)"
printf '   %-14s %s\n' "state:" "$(field GENERAL.STATE)" "vpn state:" "$(field VPN.VPN-STATE)" \
  "banner:" "$(field VPN.BANNER)" "IPv6:" "$(field 'IP6.ADDRESS\[[0-9]*\]')"
UUID=$(nmcli -g connection.uuid connection show demo-tsp)
DEV=tsp-$(printf '%s' "$UUID" | tr -d '-' | cut -c1-8)
echo "   tunnel device $DEV:"
ip -n ${P}c -6 addr show dev "$DEV" scope global | sed 's/^/     /'
ip -n ${P}c -6 route show dev "$DEV" | sed 's/^/     route: /'
echo "   \$ ping -6 -c 3 2001:db8:b::1   (the broker, through the tunnel)"
ip netns exec ${P}c ping -6 -n -c 3 -i 0.2 -W 2 2001:db8:b::1 | sed -n 's/^/     /; /bytes from\|packet loss/p'
ok=1
[ "$(nmcli -t connection show demo-tsp | sed -n 's/^VPN.VPN-STATE://p')" = "5 - VPN connected" ] || { echo "   not connected"; ok=0; }
ip netns exec ${P}c ping -6 -n -c 1 -W 2 2001:db8:b::1 >/dev/null || { echo "   no ping through the tunnel"; ok=0; }
echo "== \$ nmcli connection down demo-tsp"
nmcli connection down demo-tsp | sed 's/^/   /'
wait_for "! ip -n ${P}c link show $DEV" || ok=0
wait_for "! pgrep -x nm-tsp-service" || { echo "   nm-tsp-service still runs"; ok=0; }
if [ $ok = 1 ]; then
  echo "== OK: NetworkManager brought the TSP tunnel up with nm-tsp-service, IPv6 went through it, and 'down' removed it"
else
  echo "== FAILED (see above); NetworkManager's log:"; tail -30 "$W/nm.log"; exit 1
fi
