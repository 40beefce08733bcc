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
# UML_PERSIST=1: the overlay's upper layer lives on the block device ubda (an ext4 image file on
# the host, made by the harness) instead, so the guest's changes survive a reboot (linux.uml
# re-executes itself with the same command line, and this script mounts the same layers again).
# hostfs cannot be the upper layer: it has no xattrs, and overlayfs then mounts read-only.
upper=/mnt
if [ -n "${UML_PERSIST:-}" ]; then
  mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
  mkdir -p /mnt/persist
  mount -t ext4 /dev/ubda /mnt/persist
  upper=/mnt/persist
fi
mkdir -p $upper/upper $upper/work /mnt/root
mount -t overlay -o lowerdir=/,upperdir=$upper/upper,workdir=$upper/work overlay /mnt/root
if ! touch /mnt/root/.uml-writable; then
  echo "uml-system-init: the overlay is not writable; powering off"
  echo 1 >/proc/exitcode
  exec perl -e 'syscall(169, 0xfee1dead, 672274793, 0x4321fedc, 0); die "reboot: $!\n"'
fi
mkdir -p /mnt/root/uml
mount -t hostfs -o "$UML_RESULTS" hostfs /mnt/root/uml
cp /mnt/root/uml/uml-scenario.service /mnt/root/etc/systemd/system/
ln -sf ../uml-scenario.service /mnt/root/etc/systemd/system/multi-user.target.wants/uml-scenario.service
exec switch_root /mnt/root /lib/systemd/systemd
