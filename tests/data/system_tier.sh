#!/bin/sh
# The system tier's scenario (tests/system_tier.rs), run in a Debian 12 guest booted with systemd
# (tests/uml/system.rs) from a oneshot unit after NetworkManager.service. /uml is the host's run
# directory: debs/ holds the packages under test. Every step prints `system-tier: ok: <what>`
# once it has checked the state it describes, or `system-tier: FAIL: <what>` and exits 1; the
# host test checks the lines.
set -u
ok() { echo "system-tier: ok: $*"; }
fail() {
  echo "system-tier: FAIL: $*"
  exit 1
}
# wait_for SECONDS COMMAND...: until COMMAND succeeds (every 0.5 s).
wait_for() {
  t=$(($1 * 2))
  shift
  while ! "$@" >/dev/null 2>&1; do
    t=$((t - 1))
    [ "$t" -gt 0 ] || return 1
    sleep 0.5
  done
}
PKGS="network-manager-tsp tspc tsp-broker"
BROKER4=192.0.2.1 CLIENT4=192.0.2.2 BROKER6=2001:db8:b::1
# Survives the reboot (the harness boots this scenario with a persistent overlay).
STATE=/var/lib/uml-system-tier
mkdir -p "$STATE"

nm-online -s -q -t 90 ||
  { journalctl -b --no-pager | grep -E 'NetworkManager|nm-tsp|tsp-broker|uml-lab' | tail -60; fail "NetworkManager finished starting"; }
ok "NetworkManager is running ($(NetworkManager --version))"

# The tunnel link: a kernel sit link to the broker, other than the fallback device sit0.
sit_link() {
  ip -d -o link show type sit | grep -v ': sit0@' | sed -n 's/^[0-9]*: \([^@:]*\).*/\1/p' | head -1
}

if [ ! -e "$STATE/rebooted" ]; then

# a. The packages, installed by apt from the files (offline: their dependencies are in the root).
# (The guest has no network: apt fetches nothing. `--no-download` would make apt fail with
# "Internal Error, Pathname to install is not absolute" on local files.)
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
  /uml/debs/network-manager-tsp_*.deb /uml/debs/tspc_*.deb /uml/debs/tsp-broker_*.deb; then
  fail "apt-get install /uml/debs/{network-manager-tsp,tspc,tsp-broker}_*.deb"
fi
for p in $PKGS; do
  dpkg-query -W -f='${Status}\n' "$p" | grep -qx 'install ok installed' || fail "dpkg shows $p installed"
  dpkg -L "$p" >"$STATE/files-$p"
done
for f in /usr/libexec/nm-tsp-service /usr/libexec/nm-tsp-auth-dialog /usr/lib/NetworkManager/VPN/nm-tsp-service.name \
  /usr/share/dbus-1/system.d/nm-tsp-service.conf /usr/lib/x86_64-linux-gnu/NetworkManager/libnm-vpn-plugin-tsp.so \
  /usr/sbin/tspc /usr/sbin/tsp-broker /etc/tsp-broker/broker.toml; do
  [ -f "$f" ] || fail "$f is installed"
done
unit=$(systemctl show -P FragmentPath tsp-broker.service)
[ -n "$unit" ] && [ -f "$unit" ] || fail "tsp-broker.service is installed"
ok "installed with apt-get: $(for p in $PKGS; do dpkg-query -W -f='${Package} ${Version}  ' "$p"; done)"

# b. The broker from its packaged unit, in network namespace b on the far side of a veth pair.
# The lab is made by units of its own, so it is there again after the reboot: uml-lab (before
# NetworkManager and the broker) makes namespace b with both ends of the veth pair, b0 with the
# broker's address; uml-lab-link (after the broker listens) moves c0 into the client's namespace,
# as if the cable were plugged in once the broker host is up. (For the second boot it is the
# other way round: c0 is there from the start and the broker comes late, so the VPN activated
# with its base connection must wait for the broker.)
cat >/usr/local/sbin/uml-lab <<'EOT'
#!/bin/sh
set -e
modprobe tun
modprobe sit
ip netns add b
ip -n b link set lo up
ip -n b link add c0 type veth peer name b0
ip -n b addr add 192.0.2.1/24 dev b0
ip -n b link set b0 up
EOT
cat >/usr/local/sbin/uml-lab-link <<'EOT'
#!/bin/sh
n=40
until ip netns exec b ss -Hltn "sport = :3653" | grep -q LISTEN || [ $n -eq 0 ]; do
  n=$((n - 1))
  sleep 0.5
done
exec ip -n b link set c0 netns 1
EOT
chmod 755 /usr/local/sbin/uml-lab /usr/local/sbin/uml-lab-link
cat >/etc/systemd/system/uml-lab.service <<'EOT'
[Unit]
Description=system tier lab: network namespace b and the veth pair c0 -- b0
DefaultDependencies=no
After=systemd-modules-load.service
Before=NetworkManager.service tsp-broker.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/uml-lab

[Install]
WantedBy=multi-user.target
EOT
# lab_link_unit WHEN ORDERING: the unit that moves c0 into the client's namespace.
lab_link_unit() {
  printf '[Unit]\nDescription=system tier lab: c0 into the client'"'"'s namespace %s\nRequires=uml-lab.service\n%s\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/local/sbin/uml-lab-link\n\n[Install]\nWantedBy=multi-user.target\n' \
    "$1" "$2" >/etc/systemd/system/uml-lab-link.service
}
lab_link_unit "once the broker listens" "After=uml-lab.service tsp-broker.service"
systemctl daemon-reload
systemctl enable --now uml-lab.service || fail "uml-lab.service (namespace b, veth pair c0 -- b0)"
mkdir -p /etc/systemd/system/tsp-broker.service.d
cat >/etc/systemd/system/tsp-broker.service.d/netns.conf <<EOT
[Unit]
Requires=uml-lab.service
After=uml-lab.service

[Service]
NetworkNamespacePath=/run/netns/b
EOT
sed -i "s/^# example: server_ipv4 = .*/server_ipv4 = \"$BROKER4\"/" /etc/tsp-broker/broker.toml
grep -qx "server_ipv4 = \"$BROKER4\"" /etc/tsp-broker/broker.toml || fail "broker.toml edited"
systemctl daemon-reload
systemctl start tsp-broker || { journalctl -b -u tsp-broker --no-pager | tail -20; fail "systemctl start tsp-broker"; }
wait_for 10 sh -c 'ip netns exec b ss -Hltn "sport = :3653" | grep -q LISTEN' ||
  { journalctl -b -u tsp-broker --no-pager | tail -20; fail "tsp-broker listens on 3653 in namespace b"; }
[ "$(systemctl is-active tsp-broker)" = active ] || fail "systemctl is-active tsp-broker"
pid=$(systemctl show -P MainPID tsp-broker)
user=$(ps -o user= -p "$pid")
[ "$user" = tsp-broker ] || fail "tsp-broker runs as user tsp-broker (is: $user)"
[ "$(readlink /proc/$pid/ns/net)" = "$(ip netns exec b readlink /proc/self/ns/net)" ] ||
  fail "tsp-broker runs in namespace b"
ok "tsp-broker.service active, pid $pid, user $user, in namespace b, listening on 3653"
systemctl enable --now uml-lab-link.service || fail "uml-lab-link.service (c0 into the client's namespace)"
ip -o link | grep -q ': c0@' || fail "c0 in the client's namespace"

# c. An NM-managed base connection on c0, then the tsp VPN on top.
nmcli device set c0 managed yes || fail "nmcli device set c0 managed yes"
nmcli connection add type ethernet ifname c0 con-name base ipv4.method manual \
  ipv4.addresses "$CLIENT4/24" ipv4.gateway "$BROKER4" ipv6.method ignore >/dev/null || fail "base profile added"
nmcli --wait 30 connection up base >/dev/null || fail "nmcli connection up base"
ping -c 1 -W 5 "$BROKER4" >/dev/null || fail "ping $BROKER4 over the base connection"
ok "base connection up on c0 ($CLIENT4), broker reachable"
nmcli connection add type vpn vpn-type tsp con-name tsp ifname '*' \
  vpn.data "server=$BROKER4, tunnel-mode=v6v4" >/dev/null || fail "tsp profile added"
[ "$(nmcli -g vpn.service-type connection show tsp)" = org.freedesktop.NetworkManager.tsp ] ||
  fail "vpn-type tsp resolved to org.freedesktop.NetworkManager.tsp"
nmcli --wait 60 connection up tsp || { journalctl -b --no-pager | tail -40; fail "nmcli connection up tsp"; }
svc=$(pgrep -f '^/usr/libexec/nm-tsp-service' | head -1)
[ -n "$svc" ] || fail "nm-tsp-service runs"
# GLib's g_spawn_async double-forks: the service's parent is PID 1, but it stays in
# NetworkManager's cgroup (not dbus.service's: no D-Bus activation), and NM passes --bus-name
# because the .name file says supports-multiple-connections=true.
grep -q '/NetworkManager.service$' /proc/$svc/cgroup || fail "nm-tsp-service in NetworkManager.service's cgroup ($(cat /proc/$svc/cgroup))"
grep -qa -- '--bus-name' /proc/$svc/cmdline || fail "nm-tsp-service started with --bus-name"
ok "NetworkManager spawned $(tr '\0' ' ' </proc/$svc/cmdline)"
# The service left root for its own user (made by the package) and kept two capabilities;
# CAP_NET_ADMIN is bit 12, CAP_NET_RAW bit 13.
nmuid=$(id -u nm-tsp) || fail "the package made the user nm-tsp"
least_privilege() { # PID WHAT AMBIENT-SET CHECK-BOUNDING-SET
  st=/proc/$1/status
  sets="CapEff CapPrm"
  # NetworkManager's unit grants no CAP_SETPCAP, so the service cannot shrink its bounding set;
  # which is harmless under no_new_privs and a non-root uid.
  [ "$4" = yes ] && sets="$sets CapBnd"
  for set in $sets; do
    grep -qx "$set:	0000000000003000" "$st" || fail "$2: $set is CAP_NET_ADMIN and CAP_NET_RAW only ($(grep "^$set" "$st"))"
  done
  grep -qx "CapAmb:	$3" "$st" || fail "$2: CapAmb $3 ($(grep ^CapAmb "$st"))"
  grep -qx 'NoNewPrivs:	1' "$st" || fail "$2: no_new_privs"
}
least_privilege "$svc" nm-tsp-service 0000000000000000 no
grep -qx "Uid:	$nmuid	$nmuid	$nmuid	$nmuid" /proc/$svc/status || fail "nm-tsp-service runs as nm-tsp ($(grep ^Uid /proc/$svc/status))"
[ "$(stat -c %U:%a /var/lib/NetworkManager-tsp)" = nm-tsp:700 ] || fail "/var/lib/NetworkManager-tsp is nm-tsp's, mode 700"
ok "nm-tsp-service runs as nm-tsp (uid $nmuid) with CAP_NET_ADMIN and CAP_NET_RAW only, no_new_privs"
sit=$(sit_link)
[ -n "$sit" ] || { ip -d link; fail "a kernel sit link besides sit0"; }
ip -d -o link show dev "$sit" | grep -q "remote $BROKER4 local $CLIENT4" || { ip -d link show dev "$sit"; fail "$sit goes $CLIENT4 -> $BROKER4"; }
ok "kernel sit link: $(ip -d -o link show dev "$sit" | sed 's/\\/ /g' | tr -s ' ' | cut -c1-160)"
wait_for 15 ping -6 -c 1 -W 1 "$BROKER6" || { ip -6 addr; ip -6 route; fail "ping -6 $BROKER6 through $sit"; }
ping -6 -c 3 -i 0.3 -W 2 "$BROKER6" | tail -2
ok "ping -6 $BROKER6 answers through $sit"

# c2. Operating the broker under its packaged unit (Type=notify, watchdog, reload, the control
# socket) while NetworkManager holds a tunnel to it.
bpid=$(systemctl show -P MainPID tsp-broker)
[ "$(systemctl show -P Type tsp-broker)" = notify ] || fail "tsp-broker.service is Type=notify"
[ "$(systemctl show -P WatchdogUSec tsp-broker)" = 30s ] || fail "tsp-broker.service has a 30 s watchdog"
systemctl show -P StatusText tsp-broker | grep -q 'tunnel' ||
  fail "the broker's STATUS= line reached systemd ($(systemctl show -P StatusText tsp-broker))"
# A reload is SIGHUP, framed by RELOADING=1 / READY=1: systemctl waits for it, the process and
# the tunnel stay.
systemctl reload tsp-broker || { journalctl -b -u tsp-broker --no-pager | tail -20; fail "systemctl reload tsp-broker"; }
journalctl -b -u tsp-broker --no-pager | grep -q 'configuration reloaded' || fail "the broker logged the reload"
[ "$(systemctl show -P MainPID tsp-broker)" = "$bpid" ] || fail "same broker process after the reload"
ping -6 -c 1 -W 2 "$BROKER6" >/dev/null || fail "the tunnel carries pings after the reload"
# The control socket, as root: the session NetworkManager made, then a disconnect of it; the
# client finds the path dead and re-establishes the tunnel by itself, NetworkManager keeping
# (or regaining) the VPN as connected.
tsp-broker sessions >/run/sessions || fail "tsp-broker sessions"
key=$(awk 'NR == 2 && $2 == "up" && $3 ~ /^v6v4\// { print $1 }' /run/sessions)
peer=$(awk 'NR == 2 { print $4 }' /run/sessions)
[ -n "$key" ] || { cat /run/sessions; fail "tsp-broker sessions lists the v6v4 tunnel"; }
# (VPN-STATE belongs to the active connection: only `connection show` of all fields has it.)
vpn_state() { nmcli -t connection show tsp 2>/dev/null | sed -n 's/^VPN.VPN-STATE://p'; }
vpn_connected() { vpn_state | grep -q '^5 '; }
vpn_connected || fail "VPN-STATE is 5 before the disconnect (is: $(vpn_state))"
# Traffic, as a user has: the client then learns within seconds that nothing comes back.
ping -6 -n -i 0.5 -W 1 "$BROKER6" >/dev/null 2>&1 &
pinger=$!
tsp-broker disconnect "$key" | grep -q "1 session" || fail "tsp-broker disconnect $key"
tsp-broker sessions | grep -q " up " && fail "the session is gone after the disconnect"
renegotiated() { tsp-broker sessions | awk -v old="$peer" 'NR > 1 && $2 == "up" && $4 != old { f = 1 } END { exit !f }'; }
wait_for 40 renegotiated ||
  { kill $pinger; tsp-broker sessions; journalctl -b --no-pager | grep -E 'nm-tsp|tsp-broker' | tail -20; fail "the client negotiated a new tunnel by itself"; }
kill $pinger
wait_for 20 vpn_connected || fail "NetworkManager shows the VPN connected again (VPN-STATE: $(vpn_state))"
sit=$(sit_link)
wait_for 15 ping -6 -c 1 -W 1 "$BROKER6" || fail "ping -6 $BROKER6 after the VPN came back"
[ "$(systemctl show -P NRestarts tsp-broker)" = 0 ] && [ "$(systemctl show -P MainPID tsp-broker)" = "$bpid" ] ||
  fail "the broker was never restarted (the watchdog was fed): NRestarts $(systemctl show -P NRestarts tsp-broker)"
ok "broker unit: Type=notify with status and watchdog, reload kept pid $bpid and the tunnel, sessions listed $key, disconnect -> new tunnel from the client by itself, VPN connected"
ip -6 -o addr show dev "$sit" | grep -v 'scope link' | awk '{print $4}' >/run/tunnel-addr
[ -s /run/tunnel-addr ] || fail "$sit has a global address"

# d. Down: nothing of the tunnel left.
nmcli --wait 30 connection down tsp >/dev/null || fail "nmcli connection down tsp"
gone() {
  ! pgrep -f /usr/libexec/nm-tsp-service >/dev/null &&
    ! ip -o link | grep -q ": $sit[@:]" &&
    ! ip -6 addr | grep -qF "$(cat /run/tunnel-addr)" &&
    ! ip -6 route | grep -q '^2001:db8:b:'
}
wait_for 15 gone || { ps ax; ip -o link; ip -6 addr; ip -6 route; fail "after down: no nm-tsp-service, $sit, address or route"; }
ok "down: no nm-tsp-service, no $sit, no $(cat /run/tunnel-addr), no 2001:db8:b: route"


# d2. tspc from its packaged unit over the same base connection, as a gogoCLIENT user runs it:
# the sample /etc/gogoc/gogoc.conf already names this broker (anonymous); a TUN tunnel (v6udpv4)
# under the unit's sandbox, its capabilities as the kernel sees them, and a clean stop.
sed -i 's/^tunnel_mode=.*/tunnel_mode=v6udpv4/' /etc/gogoc/gogoc.conf
systemctl start tspc || fail "systemctl start tspc"
tspc_up() { ip -6 route get "$BROKER6" 2>/dev/null | grep -q ' dev tun ' && ping -6 -c 1 -W 1 "$BROKER6"; }
wait_for 30 tspc_up || { ip -6 addr; ip -6 route; journalctl -b -u tspc --no-pager | tail -20; fail "ping -6 $BROKER6 through tspc's tun"; }
tpid=$(systemctl show -P MainPID tspc)
[ "$(ps -o comm= -p "$tpid")" = tspc ] || fail "tspc.service's main process is tspc"
least_privilege "$tpid" tspc.service 0000000000003000 yes
ok "tspc.service: tunnel tun up, ping -6 $BROKER6 answers; CAP_NET_ADMIN and CAP_NET_RAW only, no_new_privs"
systemctl stop tspc
[ "$(systemctl is-active tspc)" = inactive ] || fail "tspc stopped ($(systemctl is-active tspc))"
wait_for 10 sh -c '! ip link show dev tun' || fail "tspc's tun gone after systemctl stop"
! ip -6 route | grep -q 'dev tun ' || { ip -6 route; fail "no route through tun left"; }
ok "tspc.service stopped: no tun, no route left"

# e. A tsp VPN that comes up with its base connection (connection.secondaries), first by
# bringing the base connection down and up, then across a reboot (the guest powers off and the
# harness boots the same disk again).
uuid=$(nmcli -g connection.uuid connection show tsp)
nmcli connection modify base connection.secondaries "$uuid" connection.autoconnect yes || fail "base: secondaries $uuid"
nmcli --wait 30 connection down base >/dev/null
nmcli --wait 60 connection up base >/dev/null || fail "nmcli connection up base (with the tsp VPN as secondary)"
wait_for 30 sh -c '[ "$(nmcli -g GENERAL.STATE connection show tsp)" = activated ]' || fail "tsp up as base's secondary"
wait_for 15 ping -6 -c 1 -W 1 "$BROKER6" || fail "ping -6 $BROKER6 with tsp as base's secondary"
ok "secondary: nmcli connection up base brings up tsp (ping -6 $BROKER6 answers through $(sit_link))"
# NetworkManager manages c0 after the reboot too (hand-made veths are unmanaged by default).
printf '[device-uml-c0]\nmatch-device=interface-name:c0\nmanaged=1\n' >/etc/NetworkManager/conf.d/uml-c0.conf
# After the reboot the broker comes up late, after the client's network and the VPN's first
# attempt: the plugin must keep probing it rather than fail (and take the base connection down).
cat >/usr/local/sbin/uml-lab-link <<'EOT'
#!/bin/sh
exec ip -n b link set c0 netns 1
EOT
lab_link_unit "before NetworkManager starts" "After=uml-lab.service
Before=NetworkManager.service"
printf '[Unit]\nAfter=NetworkManager.service\n[Service]\nExecStartPre=/bin/sleep 8\n' >/etc/systemd/system/tsp-broker.service.d/late.conf
touch "$STATE/rebooted"
# This boot ends in an orderly power-off (every unit stopped, NetworkManager's state saved)
# rather than the unit's forced one: its actions are switched off for it (/run does not
# survive), and the unit ends before the shutdown stops it.
mkdir -p /run/systemd/system/uml-scenario.service.d
printf '[Unit]\nSuccessAction=none\nFailureAction=none\n' >/run/systemd/system/uml-scenario.service.d/reboot.conf
systemctl daemon-reload
sync
ok "powering off for the reboot"
systemctl poweroff --no-block
exit 0
fi

# Second boot.
ok "booted again: $(cat /proc/sys/kernel/random/boot_id)"
wait_for 60 sh -c '[ "$(nmcli -g GENERAL.STATE connection show tsp)" = activated ]' ||
  { nmcli connection; journalctl -b --no-pager | tail -40; fail "tsp up after the reboot"; }
[ "$(systemctl is-active tsp-broker)" = active ] || fail "tsp-broker active after the reboot"
sit=$(sit_link)
[ -n "$sit" ] || { ip -d link; fail "a kernel sit link after the reboot"; }
wait_for 15 ping -6 -c 1 -W 1 "$BROKER6" || fail "ping -6 $BROKER6 after the reboot"
journalctl -b --no-pager | grep -q 'retrying in 1 s' ||
  { journalctl -b --no-pager | grep -E 'nm-tsp|tsp-broker' | tail -20; fail "the VPN came up before the late broker: nothing retried"; }
ok "after the reboot: base and tsp up on their own although the broker came up late; ping -6 $BROKER6 answers through $sit"

# f. Purge: no file of the packages left behind.
nmcli connection delete tsp >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get purge -y -q $PKGS >/dev/null || fail "apt-get purge $PKGS"
for p in $PKGS; do
  ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q installed || fail "$p purged"
done
left=$(cat $STATE/files-* | sort -u | while read -r f; do
  [ "$f" = /. ] && continue
  if [ -d "$f" ] && [ ! -L "$f" ]; then
    # A directory may stay when another package owns it or it holds others' files.
    [ -z "$(ls -A "$f" 2>/dev/null)" ] && ! dpkg -S "$f" >/dev/null 2>&1 && echo "$f"
  elif [ -e "$f" ] || [ -L "$f" ]; then
    echo "$f"
  fi
done)
[ -z "$left" ] || fail "purge left: $left"
[ "$(systemctl is-active tsp-broker 2>/dev/null)" != active ] || fail "tsp-broker stopped by the purge"
ok "purged: none of the $(cat $STATE/files-* | sort -u | wc -l) paths dpkg listed is left behind"
echo "system-tier: all steps passed"
