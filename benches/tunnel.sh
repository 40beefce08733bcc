#!/usr/bin/env bash
# Tunnel benchmark: tsp-broker in one network namespace, tspc in another, and for the raw
# veth link (MTU 1280) and each userspace datapath (v6udpv4, v6v4, v4v6):
#   * TCP throughput, one iperf3 flow for 5 s each way (client->broker, and -R broker->client),
#     the iperf3 server on the broker host at its tunnel address;
#   * round-trip latency (ping -c 200 -i 0.01, median and mean) to an address of the broker host
#     that its kernel answers (not the broker's keepalive address, whose echoes the broker
#     rate-limits per client), printed as a ratio to the raw link's, measured just before;
#   * time from tspc's start to the first answered ping through the tunnel;
#   * time to recover after a roaming change of the client's IPv4 address (v6udpv4, v6v4);
#   * liveness with the default keepalive settings (v6udpv4): time to find a silently dead path
#     (nftables drops everything both ways, no ICMP), time to carry pings again once the path
#     is back, and packets an idle tunnel sends to the broker in a minute — beside gogoc's
#     93 s / 32 s / 6 measured on this machine kind;
#   * peak RSS (VmHWM) of tspc (after its iperf3 runs) and of the broker (at the end);
#   * the same for v6udpv4 with busy polling on both ends (row udp+poll; liveness not repeated).
# Prints absolute figures and ratios to the raw link. Installs what it needs, builds in release
# mode, tears everything down on exit (also after a failure) and leaves nothing behind.
# Run as root on Debian/Ubuntu:  bash benches/tunnel.sh
# CARGO_TARGET_DIR selects the target dir (default: target); TSPBENCH_LOGS=<dir> keeps the
# broker's, tspc's and iperf3's logs there. About 3 minutes after the build (the idle minute and
# the dead-path wait are most of it). TSPBENCH_QUICK=1 measures start-up and latency only
# (no iperf3, roaming or liveness): for comparing changes to the packet path.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then echo "tunnel bench: run as root (it creates network namespaces)" >&2; exit 1; fi
missing=()
for p in iperf3 iproute2 iputils-ping nftables; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "tunnel bench: needs a Rust toolchain (https://rustup.rs)" >&2; exit 1; }

echo "== building (release)"
cargo build --release --locked --quiet --bins
TARGET=${CARGO_TARGET_DIR:-target}
case $TARGET in /*) ;; *) TARGET=$PWD/$TARGET ;; esac
BIN=$TARGET/release

P=tb$$                                # unique prefix: namespaces ${P}c ${P}b, links ${P}c0 ...
W=$(mktemp -d /tmp/tspbench.XXXXXX)
PIDS=()
BV6=2001:db8:b::1                     # the broker's address inside the IPv6 tunnels
BV4=198.51.100.1                      # the broker's address inside v4v6
PING6=2001:db8:ff::1                  # on the broker host's lo, reached through the tunnel
PING4=203.0.113.1
RAW6=2001:db8:2::1                    # the broker host across the raw MTU-1280 veth
C=(ip netns exec ${P}c)
B=(ip netns exec ${P}b)

cleanup() {
  set +e
  [ -n "${TSPBENCH_LOGS:-}" ] && [ -d "$W" ] && mkdir -p "$TSPBENCH_LOGS" && cp "$W"/*.log "$W"/*.out "$W"/*.err "$TSPBENCH_LOGS"/ 2>/dev/null
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  PIDS=()
  for n in c b; do ip netns del $P$n 2>/dev/null; done
  rm -rf "$W"
}
fail() {
  echo "== FAILED: $*" >&2
  for f in "$W"/*.log "$W"/*.out "$W"/*.err; do [ -s "$f" ] && { echo "--- ${f##*/}" >&2; tail -n 20 "$f" >&2; }; done
  exit 1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }   # calc FORMAT EXPR
# Polls ping with a short deadline until answered; prints the seconds since $2 (or "timeout").
first_ping() { # target, t0, limit seconds
  local end; end=$(calc %.3f "$(now) + $3")
  while :; do
    if "${C[@]}" ping -n -c 1 -W 0.05 "$1" >/dev/null 2>&1; then calc %.3f "$(now) - $2"; return; fi
    [ "$(calc %d "($(now) > $end)")" = 1 ] && { echo timeout; return; }
    sleep 0.005
  done
}
# ping -c 200 -i 0.01: "median_ms mean_ms loss%" (the median: one slow wake-up of a VM's CPU
# moves the mean)
latency() {
  local out; out=$("${C[@]}" ping -n -c 200 -i 0.01 -W 1 "$1" 2>&1 || true)
  local stats loss
  stats=$(sed -n 's/.* time=\([0-9.]*\) ms.*/\1/p' <<<"$out" | sort -n |
    awk '{ v[NR] = $1; s += $1 } END { if (NR) printf "%.3f %.3f", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2), s / NR; else print "nan nan" }')
  loss=$(sed -n 's/.* \([0-9.]*\)% packet loss.*/\1/p' <<<"$out")
  echo "${stats:-nan nan} ${loss:-100}"
}
# iperf3 -t 5, one flow: "receiver_Mbit/s retransmits" (extra args: -R)
tcp() {
  local out; out=$(timeout 25 "${C[@]}" iperf3 -c "$1" -t 5 -f m --connect-timeout 3000 "${@:2}" 2>&1 || true)
  echo "$out" >> "$W/iperf3.out"
  local rate retr
  rate=$(awk '/receiver$/ { for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") print $(i-1) }' <<<"$out")
  retr=$(awk '/sender$/ { for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") print $(i+1) }' <<<"$out")
  echo "${rate:-0} ${retr:--}"
}
hwm_kib() { awk '/^VmHWM/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# Receive-side drops in a namespace: "unknown-protocol UDP-rcvbuf ICMP-errors-sent". On this
# kernel a raw socket whose receive buffer is full does not take the packet, so a raw-socket
# overflow shows as Ip(6)InUnknownProtos and is answered with an ICMP error.
drops() { # netns
  ip netns exec "$1" nstat -asz 2>/dev/null | awk '
    $1 == "IpInUnknownProtos" || $1 == "Ip6InUnknownProtos" { u += $2 }
    $1 == "UdpRcvbufErrors" || $1 == "Udp6RcvbufErrors" { r += $2 }
    $1 == "IcmpOutDestUnreachs" || $1 == "Icmp6OutParmProblems" { i += $2 }
    END { print u + 0, r + 0, i + 0 }'
}
problems() { # files: warnings, errors and panics, without timestamps, counted
  cat "$@" 2>/dev/null | grep -aiE 'warn|error|panic|fail' | sed -E 's/^[0-9T:.-]+Z +//' | sort | uniq -c | sort -rn | head -n 6 || true
}

echo "== network: client ${P}c (192.0.2.2, 2001:db8:1::2) -- broker ${P}b (192.0.2.1, 2001:db8:1::1);"
echo "   raw link MTU 1280: 2001:db8:2::2 -- $RAW6"
for n in c b; do ip netns del $P$n 2>/dev/null || true; ip netns add $P$n; ip -n $P$n link set lo up; done
ip link add ${P}c0 netns ${P}c type veth peer name ${P}b0 netns ${P}b
ip link add ${P}c1 netns ${P}c mtu 1280 type veth peer name ${P}b1 netns ${P}b mtu 1280
for l in "c ${P}c0" "c ${P}c1" "b ${P}b0" "b ${P}b1"; do set -- $l; ip -n $P$1 link set "$2" up; done
ip netns exec ${P}c sysctl -qw net.ipv4.conf.${P}c0.promote_secondaries=1
ip -n ${P}c addr add 192.0.2.2/24 dev ${P}c0
ip -n ${P}b addr add 192.0.2.1/24 dev ${P}b0
# IPv6 with nodad, after "up": usable at once.
ip -n ${P}c addr add 2001:db8:1::2/64 dev ${P}c0 nodad
ip -n ${P}b addr add 2001:db8:1::1/64 dev ${P}b0 nodad
ip -n ${P}c addr add 2001:db8:2::2/64 dev ${P}c1 nodad
ip -n ${P}b addr add $RAW6/64 dev ${P}b1 nodad
ip -n ${P}b addr add $PING6/128 dev lo
ip -n ${P}b addr add $PING4/32 dev lo

start_broker() { # [extra TOML line]; sets BROKER (its log is appended to broker.log)
  local before _
  before=$(grep -c "listening" "$W/broker.log" 2>/dev/null || true)
  printf '%s\n' 'listen = ["[::]:3653"]' 'auth = ["anonymous"]' "server_ipv6 = \"$BV6\"" \
    'client_pool = "2001:db8:b::/64"' "${1:-}" > "$W/broker.toml"
  "${B[@]}" "$BIN/tsp-broker" -c "$W/broker.toml" >> "$W/broker.log" 2>&1 &
  BROKER=$!; PIDS+=($BROKER)
  for _ in $(seq 200); do
    [ "$(grep -c "listening" "$W/broker.log" 2>/dev/null || true)" -gt "${before:-0}" ] && return 0
    sleep 0.05
  done
  fail "the broker did not start${1:+ ($1)}"
}
echo "== broker"
start_broker
"${B[@]}" iperf3 -s -f m > "$W/iperf3-server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do "${B[@]}" ss -Hltn 'sport = :5201' | grep -q . && break; sleep 0.05; done

declare -A R   # results: R[mode,key]
T0=$(now)
echo "== raw veth, MTU 1280"
"${C[@]}" ping -n -c 1 -W 2 $RAW6 >/dev/null || fail "no ping across the raw link"
read -r R[raw,lat] R[raw,mean] R[raw,loss] < <(latency $RAW6)
if [ -z "${TSPBENCH_QUICK:-}" ]; then
  read -r R[raw,up] R[raw,upretr] < <(tcp $RAW6)
  read -r R[raw,down] R[raw,downretr] < <(tcp $RAW6 -R)
fi

# Liveness at the default keepalive settings: a roaming laptop never sits on a dead tunnel.
. benches/liveness.sh
liveness() { # mode, ping target; sets R[mode,dead] R[mode,heal] R[mode,idle]
  local mode=$1 ping=$2 lines t0 end pinger
  echo "   liveness: silent outage, then an idle minute"
  "${C[@]}" ping -n -i 0.2 "$ping" >/dev/null 2>&1 &
  pinger=$!; PIDS+=($pinger)
  sleep 1
  lines=$(wc -l < "$W/$mode.out")
  t0=$(now); end=$(calc %.3f "$t0 + 30")
  cut_path add
  R[$mode,dead]=timeout
  while [ "$(calc %d "($(now) < $end)")" = 1 ]; do
    if tail -n +"$((lines + 1))" "$W/$mode.out" | grep -q "down:.*keepalive"; then
      R[$mode,dead]=$(calc %.1f "$(now) - $t0"); break
    fi
    sleep 0.05
  done
  sleep 3                          # an outage that lasts: tspc probes the broker meanwhile
  t0=$(now)
  cut_path delete
  R[$mode,heal]=$(first_ping "$ping" "$t0" 30)
  kill "$pinger" 2>/dev/null; wait "$pinger" 2>/dev/null || true
  sleep 5                          # the start-up chatter of the new tunnel (DAD, MLD) settles
  R[$mode,idle]=$(idle_minute_packets)
}

ok=1
run_mode() { # tunnel mode, server, target (the broker's tunnel address), ping target[, row name, extra gogoc.conf line]
  local tmode=$1 server=$2 target=$3 ping=$4 mode=${5:-$1} pid t0 mark
  echo "== $mode ($(calc %.0f "$(now) - $T0") s)"
  printf '%s\n' "server=$server" auth_method=anonymous "tunnel_mode=$tmode" ${6:+"$6"} > "$W/$mode.conf"
  mark=$(wc -l < "$W/broker.log")
  local d0b d0c; d0b=$(drops ${P}b); d0c=$(drops ${P}c)
  t0=$(now)
  (cd "$W" && exec "${C[@]}" "$BIN/tspc" -f "$W/$mode.conf") > "$W/$mode.out" 2> "$W/$mode.err" &
  pid=$!; PIDS+=($pid)
  R[$mode,start]=$(first_ping "$target" "$t0" 10)
  if [ "${R[$mode,start]}" = timeout ] || ! grep -q "(up)" "$W/$mode.out"; then
    echo "   $mode did not carry a ping within 10 s:"; sed 's/^/     /' "$W/$mode.out" "$W/$mode.err" | tail -n 15
    ok=0; kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; return
  fi
  # The raw veth again, just before: the ratio compares the two under the same conditions
  # (a virtual machine's wake-up costs drift, e.g. after the previous mode's iperf3 runs).
  read -r R[$mode,rawlat] _ _ < <(latency $RAW6)
  read -r R[$mode,lat] R[$mode,mean] R[$mode,loss] < <(latency "$ping")
  if [ -z "${TSPBENCH_QUICK:-}" ]; then
    read -r R[$mode,up] R[$mode,upretr] < <(tcp "$target")
    read -r R[$mode,down] R[$mode,downretr] < <(tcp "$target" -R)
  fi
  R[$mode,rss]=$(hwm_kib "$pid")
  R[$mode,roam]=n/a
  if [ "$tmode" != v4v6 ] && [ -z "${TSPBENCH_QUICK:-}" ]; then   # the outer address is IPv4: move it and ping until answered
    local old new
    old=$(ip -n ${P}c -4 -o addr show dev ${P}c0 | awk '{ print $4; exit }')
    if [ "$old" = 192.0.2.2/24 ]; then new=192.0.2.3/24; else new=192.0.2.2/24; fi
    t0=$(now)
    ip -n ${P}c addr add $new dev ${P}c0
    ip -n ${P}c addr del "$old" dev ${P}c0
    R[$mode,roam]=$(first_ping "$target" "$t0" 10)
  fi
  # Tunnel restarts: "tunnel <if> down: <reason>" before our SIGTERM, except the one the
  # roaming change causes (tspc takes the tunnel down and negotiates again from the new address).
  R[$mode,restarts]=$(grep "^tunnel .* down:" "$W/$mode.out" | grep -vc "local address changed" || true)
  [ "$mode" = v6udpv4 ] && [ -z "${TSPBENCH_QUICK:-}" ] && liveness "$mode" "$ping"
  kill -0 "$pid" 2>/dev/null || { echo "   tspc exited during the $mode run"; ok=0; }
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local p; for p in "${!PIDS[@]}"; do [ "${PIDS[$p]}" = "$pid" ] && unset 'PIDS[p]'; done
  local a b
  read -r -a a <<<"$d0b"; read -r -a b <<<"$(drops ${P}b)"
  R[$mode,bdrops]="$((b[0] - a[0]))/$((b[1] - a[1]))/$((b[2] - a[2]))"
  read -r -a a <<<"$d0c"; read -r -a b <<<"$(drops ${P}c)"
  R[$mode,cdrops]="$((b[0] - a[0]))/$((b[1] - a[1]))/$((b[2] - a[2]))"
  local logs; logs=$( { problems "$W/$mode.err"; tail -n +"$((mark + 1))" "$W/broker.log" | problems; } )
  [ -n "$logs" ] && { echo "   warnings/errors in tspc's and the broker's logs (count, message):"; sed 's/^/   /' <<<"$logs"; }
  return 0
}
run_mode v6udpv4 192.0.2.1 $BV6 $PING6
run_mode v6v4 192.0.2.1 $BV6 $PING6
run_mode v4v6 '[2001:db8:1::1]' $BV4 $PING4
BROKER_RSS=$(hwm_kib $BROKER)
# Busy polling on both ends (tspc busy_poll, the broker's busy_poll_us): 20 ms, longer than
# the pings' 10 ms interval, so neither datapath sleeps between them.
kill "$BROKER"; wait "$BROKER" 2>/dev/null || true
start_broker "busy_poll_us = 20000"
run_mode v6udpv4 192.0.2.1 $BV6 $PING6 udp+poll busy_poll=20000
echo "== measured in $(calc %.0f "$(now) - $T0") s"

pct() { [ "${R[raw,$2]:-0}" != 0 ] && calc %.2f "${R[$1,$2]:-0} * 100 / ${R[raw,$2]}" || echo -; }
times() { # the mode's median round trip / the raw veth's measured just before it
  local raw=${R[$1,rawlat]:-${R[raw,lat]}}
  [ -n "${R[$1,lat]:-}" ] && [ "${R[$1,lat]}" != nan ] && [ "$raw" != nan ] && calc %.1f "${R[$1,lat]} / $raw" || echo -
}
echo
echo "== results ($(nproc) cores, $(uname -r); one iperf3 flow, 5 s; ping -c 200 -i 0.01)"
printf '%-9s | %12s %8s %6s | %12s %8s %6s | %7s %7s %5s %5s | %8s %8s | %8s\n' \
  mode "c->b Mbit/s" "% raw" retr "b->c Mbit/s" "% raw" retr "rtt p50" "mean ms" "x raw" loss% "start s" "roam s" "tspc RSS"
printf -- '-%.0s' $(seq 140); echo
for m in raw v6udpv4 v6v4 v4v6 udp+poll; do
  name=$m; [ $m = raw ] && name="raw veth"
  printf '%-9s | %12s %8s %6s | %12s %8s %6s | %7s %7s %5s %5s | %8s %8s | %8s\n' "$name" \
    "${R[$m,up]:--}" "$(pct $m up)" "${R[$m,upretr]:--}" "${R[$m,down]:--}" "$(pct $m down)" "${R[$m,downretr]:--}" \
    "${R[$m,lat]:--}" "${R[$m,mean]:--}" "$(times $m)" "${R[$m,loss]:--}" "${R[$m,start]:--}" "${R[$m,roam]:--}" \
    "$( [ -n "${R[$m,rss]:-}" ] && echo "$(( R[$m,rss] / 1024 )) MiB" || echo -)"
done
echo
echo "datapath health during each mode's run (drops: raw overflow = Ip(6)InUnknownProtos / UDP RcvbufErrors / ICMP errors sent):"
printf '%-9s | %15s | %20s | %20s\n' mode "tunnel restarts" "broker-host drops" "client-host drops"
for m in v6udpv4 v6v4 v4v6 udp+poll; do
  printf '%-9s | %15s | %20s | %20s\n' $m "${R[$m,restarts]:--}" "${R[$m,bdrops]:--}" "${R[$m,cdrops]:--}"
done
echo "tsp-broker peak RSS (VmHWM, all modes): $(( BROKER_RSS / 1024 )) MiB ($BROKER_RSS KiB)"
echo "tspc peak RSS in KiB: v6udpv4 ${R[v6udpv4,rss]:--}, v6v4 ${R[v6v4,rss]:--}, v4v6 ${R[v4v6,rss]:--}"
echo "x raw: median round trip through the tunnel / the raw veth's, measured just before it (goal ≤ 3; gogoc + tsps: 5);"
echo "  the raw veth's medians before each mode: v6udpv4 ${R[v6udpv4,rawlat]:--}, v6v4 ${R[v6v4,rawlat]:--}, v4v6 ${R[v4v6,rawlat]:--}, udp+poll ${R[udp+poll,rawlat]:--} ms."
echo "udp+poll: v6udpv4 with busy polling on both ends (tspc busy_poll=20000, broker busy_poll_us = 20000):"
echo "  no wake-up per packet, for one CPU on each end kept busy while packets flow every 20 ms or more often."
echo
echo "liveness at the default settings (v6udpv4; keepalive interval 30 s), this project vs gogoc 1.2 + tsps:"
printf '  %-46s %8s   (gogoc: %s; goal %s)\n' \
  "dead path found after, s" "${R[v6udpv4,dead]:--}" "93 s" "≤ 10 s" \
  "path back -> ping answered, s" "${R[v6udpv4,heal]:--}" "32 s" "≤ 2 s" \
  "idle tunnel: packets to the broker in a minute" "${R[v6udpv4,idle]:--}" 6 "≤ 4"
echo "start s: tspc launched -> first answered ping through the tunnel (poll: ping -W 0.05 every ~5 ms)."
echo "roam s: client IPv4 address replaced (ip addr add new; ip addr del old) -> first answered ping."
echo "gogoc baseline (not packaged here; ARCHITECTURE.md, same machine kind): gogoc + tsps carried 97 Mbit/s of TCP"
echo "through v6udpv4 = 0.54 % of the raw veth (18 Gbit/s). Project goal: 25 % of the raw link."

cleanup
trap - EXIT
left=$(ip netns list | grep -c "^$P[cb]\b" || true)
if [ "$left" != 0 ]; then echo "== FAILED: namespaces left behind: $(ip netns list | grep "^$P")"; exit 1; fi
echo "== nothing left behind (ip netns list has no $P*)"
[ $ok = 1 ] || { echo "== FAILED: a datapath did not work (see above)"; exit 1; }
