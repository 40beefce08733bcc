#!/usr/bin/env bash
# NetworkManager benchmark: in one testbed (a real NetworkManager on a private system bus in a
# client namespace, servers in a broker namespace), measures
#   * activation time, `nmcli connection up` until the VPN is activated, of the tsp VPN
#     (nm-tsp-service + tsp-broker) against NetworkManager-openvpn (openvpn server, UDP, TLS
#     with a throwaway EC PKI) — median and best of ROUNDS runs each, and their ratio;
#   * reconnect time after a roaming change: the base connection's IPv4 address changes under
#     a persistent tsp VPN, until a ping through the tunnel is answered again;
#   * liveness at the default keepalive settings: a silent outage (nftables drops everything
#     both ways) until NetworkManager shows the VPN connecting again, the path's return until
#     a ping through the tunnel is answered, packets an idle tunnel sends in a minute, and the
#     ping round trip through the tunnel as a ratio to the veth's (IPv4 ping), event-driven and
#     with busy polling on both ends (vpn.data busy-poll, the broker's busy_poll_us);
#   * nm-tsp-service's peak RSS (VmHWM) after the activations and pings.
# Prints the figures; asserts nothing. Installs what it needs, builds in release mode, leaves
# nothing behind. Run as root on Debian/Ubuntu:  bash benches/nm.sh   (ROUNDS=10 by default)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then echo "nm bench: run as root (it creates network namespaces)" >&2; exit 1; fi
ROUNDS=${ROUNDS:-10}
if [ -z "${TSPBENCH_INNER:-}" ]; then
  missing=()
  for p in iproute2 iputils-ping procps nftables dbus network-manager network-manager-openvpn openvpn openssl; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  echo "== building (release)"
  cargo build --release --locked --quiet --bins
  exec env TSPBENCH_INNER=1 ROUNDS="$ROUNDS" unshare --pid --fork --kill-child --mount-proc bash ${TSPBENCH_TRACE:+-x} "$0" "$@"
fi

TARGET=${CARGO_TARGET_DIR:-target}
case $TARGET in /*) ;; *) TARGET=$PWD/$TARGET ;; esac
BIN=$TARGET/release
P=nb$$
W=$(mktemp -d /tmp/tspnmbench.XXXXXX)
# nm-tsp-service leaves root for its system user (nm-tsp) before it connects to the bus socket
# in here: the directory must be traversable (its files keep their own modes).
chmod 755 "$W"
export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$W/bus/sock
cleanup() {
  set +e
  for n in b c; do for q in $(ip netns pids $P$n 2>/dev/null); do kill -9 "$q" 2>/dev/null; done; ip netns del $P$n 2>/dev/null; done
  rm -rf "$W"
}
trap cleanup EXIT
wait_for() { for _ in $(seq 1 400); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "TIMEOUT: $1" >&2; return 1; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
mkdir -p "$W"/{bus/system.d,bus/services,nm/etc/VPN,nm/etc/system-connections,nm/lib,state,pki}

for n in b c; do ip netns add $P$n; ip -n $P$n link set lo up; done
ip link add ${P}c0 netns ${P}c type veth peer name ${P}b0 netns ${P}b
ip -n ${P}b addr add 192.0.2.1/24 dev ${P}b0
ip -n ${P}b addr add 192.0.2.9/24 dev ${P}b0
ip -n ${P}b addr add 2001:db8:ff::1/128 dev lo     # answered by the broker host's kernel
ip -n ${P}b link set ${P}b0 up
ip -n ${P}c link set ${P}c0 up

# Servers: tsp-broker, and openvpn with a throwaway PKI (server cert needs keyUsage + serverAuth).
cat > "$W/broker.toml" <<EOF
listen = ["192.0.2.1:3653"]
auth = ["anonymous"]
server_ipv6 = "2001:db8:b::1"
client_pool = "2001:db8:b::/64"
keepalive_min = 1
EOF
ip netns exec ${P}b "$BIN/tsp-broker" -c "$W/broker.toml" > "$W/broker.log" 2>&1 &
BROKER=$!; disown
(
  cd "$W/pki"
  printf '[s]\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n[c]\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n' > ext.cnf
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=ca 2>/dev/null
  for n in s c; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $n.key -out $n.csr -subj /CN=$n 2>/dev/null
    openssl x509 -req -in $n.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out $n.crt -days 1 -extfile ext.cnf -extensions $n 2>/dev/null
  done
  chmod 644 ./*.key
)
# Its IPv4 subnet must not be the broker's v4v6 pool (198.51.100.0/24): a restarted broker
# could not route that pool to its TUN device.
ip netns exec ${P}b openvpn --dev tun --proto udp --local 192.0.2.9 --port 1194 --ca "$W/pki/ca.crt" --cert "$W/pki/s.crt" \
  --key "$W/pki/s.key" --dh none --topology subnet --server 203.0.113.0 255.255.255.0 --server-ipv6 2001:db8:7::/64 \
  --keepalive 2 10 --verb 3 > "$W/openvpn.log" 2>&1 & disown
wait_for "grep -q listening $W/broker.log"
wait_for "grep -q 'Initialization Sequence Completed' $W/openvpn.log"

# NetworkManager in the client namespace, both plugins available.
sed -e "s|@SOCK@|$W/bus/sock|" -e "s|@EXTRA@|$W/bus|" tests/testbed/system-bus.conf.in > "$W/bus/system.conf"
cp dbus/nm-tsp-service.conf "$W/bus/system.d/"
dbus-daemon --config-file="$W/bus/system.conf" --nofork > "$W/bus/log" 2>&1 & disown
wait_for "test -S $W/bus/sock"
printf '[main]\nplugins=keyfile\ndns=none\nrc-manager=unmanaged\nhostname-mode=none\nauth-polkit=root-only\nno-auto-default=*\n[connectivity]\nenabled=false\n' \
  > "$W/nm/etc/NetworkManager.conf"
sed "s|^program=.*|program=$BIN/nm-tsp-service|" nm-plugin/nm-tsp-service.name > "$W/nm/etc/VPN/nm-tsp-service.name"
chmod 644 "$W/nm/etc/VPN/nm-tsp-service.name"
ip netns exec ${P}c env NM_TSP_STATE_DIR="$W/state" unshare --mount --uts sh tests/testbed/nm-in-netns.sh "$W" > "$W/nm.log" 2>&1 & disown
nm-online -s -q -t 20
nmcli -t connection add type ethernet ifname ${P}c0 con-name wired ipv4.method manual ipv4.addresses 192.0.2.2/24 ipv6.method disabled >/dev/null
nmcli -t --wait 20 connection up wired >/dev/null
nmcli -t connection add type vpn vpn-type org.freedesktop.NetworkManager.tsp con-name tsp ifname '*' \
  vpn.data "server=192.0.2.1, keepalive-interval=1, retry-delay=1, retry-delay-max=2" vpn.persistent yes >/dev/null
nmcli -t connection add type vpn vpn-type openvpn con-name ovpn ifname '*' ipv4.never-default yes ipv6.never-default yes \
  vpn.data "connection-type=tls, remote=192.0.2.9:1194, dev=tun, ca=$W/pki/ca.crt, cert=$W/pki/c.crt, key=$W/pki/c.key, remote-cert-tls=server" >/dev/null

state() { nmcli -t connection show "$1" 2>/dev/null | sed -n 's/^VPN.VPN-STATE://p'; }
# One activation: ms from `nmcli connection up` until VPN-STATE is 5; then down, and wait for
# the plugin process to exit (the next activation would otherwise race its teardown).
activate() { # id plugin-process-name
  local t0 t1
  t0=$(now_ms)
  nmcli --wait 30 connection up "$1" ifname ${P}c0 >/dev/null
  wait_for "[ \"\$(state $1)\" = '5 - VPN connected' ]"
  t1=$(now_ms)
  echo $(( t1 - t0 ))
}
deactivate() { nmcli connection down "$1" >/dev/null; wait_for "! pgrep -x $2"; }
. benches/liveness.sh
stats() { sort -n | awk '{a[NR]=$1} END {printf "%d %d\n", a[int((NR+1)/2)], a[1]}'; }

echo "== activation, $ROUNDS rounds each (ms from nmcli connection up to VPN connected)"
: > "$W/tsp.ms"; : > "$W/ovpn.ms"
for _ in $(seq "$ROUNDS"); do
  activate tsp >> "$W/tsp.ms"; deactivate tsp nm-tsp-service
  activate ovpn >> "$W/ovpn.ms"; deactivate ovpn nm-openvpn-serv
done
read -r TSP_MED TSP_MIN < <(stats < "$W/tsp.ms")
read -r OVPN_MED OVPN_MIN < <(stats < "$W/ovpn.ms")

echo "== roaming: the base IPv4 address changes under the persistent tsp VPN"
activate tsp >/dev/null
ip netns exec ${P}c ping -6 -c 20 -i 0.01 -q 2001:db8:b::1 >/dev/null
ROAM=()
for addr in 192.0.2.3 192.0.2.2 192.0.2.3; do
  t0=$(now_ms)
  nmcli device modify ${P}c0 ipv4.addresses $addr/24 >/dev/null
  until ip netns exec ${P}c ping -6 -c 1 -W 0.05 -q 2001:db8:b::1 >/dev/null 2>&1; do
    [ $(( $(now_ms) - t0 )) -gt 20000 ] && { echo "   no traffic 20 s after the change" >&2; break; }
  done
  ROAM+=($(( $(now_ms) - t0 )))
done

median_ms() { sed -n 's/.* time=\([0-9.]*\) ms.*/\1/p' | sort -n | awk '{ v[NR] = $1 } END { if (NR) printf "%.3f", v[int((NR + 1) / 2)]; else print "nan" }'; }
echo "== round trip: ping -c 200 -i 0.01 through the tunnel, and over the veth (IPv4)"
RTT_TUN=$(ip netns exec ${P}c ping -6 -n -c 200 -i 0.01 2001:db8:ff::1 2>/dev/null | median_ms)
RTT_RAW=$(ip netns exec ${P}c ping -4 -n -c 200 -i 0.01 192.0.2.1 2>/dev/null | median_ms)

echo "== liveness: a silent outage, then an idle minute (default keepalive settings)"
deactivate tsp nm-tsp-service
nmcli connection modify tsp vpn.data "server=192.0.2.1"
activate tsp >/dev/null
ip netns exec ${P}c ping -6 -c 3 -i 0.2 -q 2001:db8:ff::1 >/dev/null
# Traffic during the outage, as a user has (an idle tunnel is judged by the 30 s keepalive).
ip netns exec ${P}c ping -6 -n -i 0.2 2001:db8:ff::1 >/dev/null 2>&1 &
PINGER=$!
cut_path add
t0=$(now_ms); DEAD=timeout
while [ $(( $(now_ms) - t0 )) -lt 30000 ]; do
  [ "$(state tsp)" != '5 - VPN connected' ] && { DEAD=$(( $(now_ms) - t0 )); break; }
  sleep 0.05
done
sleep 3
cut_path delete
t0=$(now_ms); HEAL=timeout
while [ $(( $(now_ms) - t0 )) -lt 30000 ]; do
  ip netns exec ${P}c ping -6 -c 1 -W 0.05 -q 2001:db8:ff::1 >/dev/null 2>&1 && { HEAL=$(( $(now_ms) - t0 )); break; }
done
kill $PINGER 2>/dev/null; wait $PINGER 2>/dev/null || true
wait_for "[ \"\$(state tsp)\" = '5 - VPN connected' ]" || true
sleep 5
IDLE=$(idle_minute_packets)

PID=$(pgrep -x nm-tsp-service | head -1)
RSS=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
deactivate tsp nm-tsp-service

echo "== round trip with busy polling on both ends (vpn.data busy-poll=20000, broker busy_poll_us = 20000)"
kill "$BROKER"
wait_for "! kill -0 $BROKER"
echo "busy_poll_us = 20000" >> "$W/broker.toml"
ip netns exec ${P}b "$BIN/tsp-broker" -c "$W/broker.toml" >> "$W/broker.log" 2>&1 &
BROKER=$!; disown
wait_for "[ \"\$(grep -c 'tsp-broker listening' $W/broker.log)\" -ge 2 ]" || { tail -n 5 "$W/broker.log" >&2; exit 1; }
nmcli connection modify tsp vpn.data "server=192.0.2.1, busy-poll=20000"
activate tsp >/dev/null
ip netns exec ${P}c ping -6 -c 3 -i 0.2 -q 2001:db8:ff::1 >/dev/null
RTT_RAW_P=$(ip netns exec ${P}c ping -4 -n -c 200 -i 0.01 192.0.2.1 2>/dev/null | median_ms)
RTT_POLL=$(ip netns exec ${P}c ping -6 -n -c 200 -i 0.01 2001:db8:ff::1 2>/dev/null | median_ms)
deactivate tsp nm-tsp-service

printf '\n%-28s %10s %10s\n' "" "median" "best"
printf '%-28s %8s ms %8s ms\n' "tsp (nm-tsp-service)" "$TSP_MED" "$TSP_MIN"
printf '%-28s %8s ms %8s ms\n' "openvpn (nm-openvpn)" "$OVPN_MED" "$OVPN_MIN"
awk -v a="$TSP_MED" -v b="$OVPN_MED" 'BEGIN { if (b > 0) printf "tsp / openvpn activation:    %.2f\n", a / b }'
echo "roaming recovery (3 changes): ${ROAM[*]} ms"
awk -v t="$RTT_TUN" -v r="$RTT_RAW" 'BEGIN { printf "round trip (median):         %s ms through the tunnel, %s ms over the veth: %.1f x\n", t, r, (r > 0 ? t / r : 0) }'
awk -v t="$RTT_POLL" -v r="$RTT_RAW_P" 'BEGIN { printf "  with busy polling:         %s ms through the tunnel, %s ms over the veth: %.1f x\n", t, r, (r > 0 ? t / r : 0) }'
echo "dead path -> VPN connecting: ${DEAD} ms   (gogoc: 93 s)"
echo "path back -> ping answered:  ${HEAL} ms   (gogoc: 32 s)"
echo "idle tunnel, a minute:       ${IDLE:-?} packets to the broker   (gogoc: 6)"
echo "nm-tsp-service peak RSS:     $(( RSS / 1024 )) MiB ($RSS KiB)"
