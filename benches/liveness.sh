# Sourced by benches/tunnel.sh and benches/nm.sh: the liveness measurements' network pieces.
# Both benches name their namespaces ${P}c / ${P}b and the client's link to the broker ${P}c0
# (peer ${P}b0), with the broker at 192.0.2.1.

# A silent outage (a roaming laptop's dead path): the client host drops all it receives on its
# link, the broker host all it receives from the client's link — no ICMP, no local send error.
cut_path() { # add|delete
  local n
  if [ "$1" = add ]; then
    for n in c b; do
      ip netns exec $P$n nft add table inet cut
      ip netns exec $P$n nft add chain inet cut in '{ type filter hook input priority -10; policy accept; }'
    done
    ip netns exec ${P}c nft add rule inet cut in iifname ${P}c0 drop
    ip netns exec ${P}b nft add rule inet cut in iifname ${P}b0 drop
  else
    for n in c b; do ip netns exec $P$n nft delete table inet cut 2>/dev/null || true; done
  fi
}

# Prints how many packets the client host sends the broker in the next minute.
idle_minute_packets() {
  ip netns exec ${P}c nft add table inet idle
  ip netns exec ${P}c nft add chain inet idle out '{ type filter hook output priority 0; policy accept; }'
  ip netns exec ${P}c nft add rule inet idle out oifname ${P}c0 ip daddr 192.0.2.1 counter
  sleep 60
  ip netns exec ${P}c nft list chain inet idle out |
    awk '/packets/ { for (i = 1; i < NF; i++) if ($i == "packets") print $(i + 1) }'
  ip netns exec ${P}c nft delete table inet idle
}
