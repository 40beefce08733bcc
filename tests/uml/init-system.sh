#!/bin/sh
# First PID 1 of the system tier's user-mode Linux guest (docs/testbed.md §8); tests/uml/system.rs
# keeps it at /sbin/uml-system-init in the cached Debian root and boots `linux.uml ...
# rootflags=<cached root> ro init=/sbin/uml-system-init`. The cached root stays pristine: this script puts a tmpfs overlay
# on it, mounts the run directory (UML_RESULTS on the kernel command line) at /uml, enables the
# scenario unit the harness left there, and hands over to systemd.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t tmpfs -o mode=755 stage /mnt
modprobe overlay
mkdir -p /mnt/upper /mnt/work /mnt/root
mount -t overlay -o lowerdir=/,upperdir=/mnt/upper,workdir=/mnt/work overlay /mnt/root
mkdir -p /mnt/root/uml
mount -t hostfs -o "$UML_RESULTS" hostfs /mnt/root/uml
cp /mnt/root/uml/uml-scenario.service /mnt/root/etc/systemd/system/
ln -s ../uml-scenario.service /mnt/root/etc/systemd/system/multi-user.target.wants/uml-scenario.service
exec switch_root /mnt/root /lib/systemd/systemd
