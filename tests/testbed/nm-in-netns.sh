#!/bin/sh
# NetworkManager in its own mount namespace (run it as `unshare --mount --uts sh nm-in-netns.sh W`,
# inside the client's network namespace): a private /run, a read-only /sys (else NetworkManager
# waits for udev forever), the private bus's socket where helpers look for it, and the
# configuration and state from W/nm/etc and W/nm/lib. Used by tests/testbed, tests/demo.sh and
# benches/nm.sh. Extra arguments are passed to NetworkManager.
set -e
W=$1
shift
mount -t tmpfs -o mode=755 tmpfs /run
mount -o remount,bind,ro /sys
mkdir -p /run/NetworkManager /run/dbus
ln -s "$W/bus/sock" /run/dbus/system_bus_socket
mount --bind "$W/nm/etc" /etc/NetworkManager
mount --bind "$W/nm/lib" /var/lib/NetworkManager
exec NetworkManager --no-daemon "$@"
