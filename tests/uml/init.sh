#!/bin/sh
# PID 1 of the kernel tier's user-mode Linux guest (docs/testbed.md §8). tests/uml/mod.rs copies
# it into the run directory and boots `linux.uml ... init=<run dir>/init.sh`.
#
# The root filesystem is the host's `/`, read-only (hostfs). From the kernel command line:
#   UML_RESULTS  host directory mounted writable at /run/uml/results (this script writes `status`)
#   UML_KMOD     the unpacked user-mode-linux and kmod packages (the cache of tests/uml/mod.rs)
#   arguments    the command to run (words after `--`), ended by the word `--uml-end` (the
#                kernel appends words of its own, like console=tty0, after them)
# The kernel loads its modules (sit, ip6_tunnel, veth, tun, ipv6, ...) itself through the
# wrapper written into /proc/sys/kernel/modprobe; writing another path there switches module
# autoloading off (tests/uml/mod.rs: `autoload`).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=755 run /run
mount -t tmpfs -o mode=1777 tmp /tmp
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /run/uml/results /run/uml/modroot/lib
mount -t hostfs -o "$UML_RESULTS" hostfs /run/uml/results
# kmod is a multi-call binary that reads its name from argv[0]; `-d` gives the directory whose
# lib/modules/<version> holds the modules.
ln -s "$UML_KMOD/root/bin/kmod" /run/uml/modprobe
ln -s "$UML_KMOD/root/usr/lib/uml/modules" /run/uml/modroot/lib/modules
printf '#!/bin/sh\nexec /run/uml/modprobe -d /run/uml/modroot "$@"\n' >/run/uml/modprobe-wrap
chmod 755 /run/uml/modprobe-wrap
echo /run/uml/modprobe-wrap >/proc/sys/kernel/modprobe
# IPv6 is a module here; a distribution kernel has it built in (and addresses added to
# devices created before it loads fail with EOPNOTSUPP). tun: a distribution has /dev/net/tun
# as a static node whose first open loads the module; here the node appears with the module.
/run/uml/modprobe-wrap ipv6
/run/uml/modprobe-wrap tun
ip link set lo up
n=0
for a in "$@"; do
  [ "$a" = --uml-end ] && break
  n=$((n + 1))
done
i=0
for a in "$@"; do
  shift
  [ "$i" -lt "$n" ] && set -- "$@" "$a"
  i=$((i + 1))
done
echo "uml-init: running $*"
"$@"
rc=$?
echo "uml-init: exit status $rc"
echo "$rc" >/run/uml/results/status
sync
# linux.uml exits with the code in /proc/exitcode (the newline is required) once the kernel
# powers off; PID 1 exiting instead would panic the kernel. reboot(2) is syscall 169 on x86_64:
# LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_POWER_OFF.
echo "$rc" >/proc/exitcode
exec perl -e 'syscall(169, 0xfee1dead, 672274793, 0x4321fedc, 0); die "uml-init: reboot: $!\n"'
