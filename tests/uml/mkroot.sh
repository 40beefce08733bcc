#!/bin/sh
# Builds the system tier's Debian 12 root (docs/testbed.md §8); tests/uml/system.rs runs it as
#   sh mkroot.sh <dir> <mirror> <packages, comma-separated> <UML modules dir>/<version>
# and caches <dir> under target/uml/, keyed on a hash of the package list and this script.
set -eu
dir=$1 mirror=$2 packages=$3 modules=$4
debootstrap --variant=minbase --include="$packages" bookworm "$dir" "$mirror"
# The guest's own modprobe finds the UML kernel's modules (sit, veth, tun, overlay, ...).
version=$(basename "$modules")
mkdir -p "$dir/lib/modules"
cp -a "$modules" "$dir/lib/modules/$version"
[ -f "$dir/lib/modules/$version/modules.dep" ] || chroot "$dir" depmod "$version"
# A test system: no timers that start apt or backups in the middle of a scenario, no downloaded
# package files kept.
for t in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer; do
  ln -sf /dev/null "$dir/etc/systemd/system/$t"
done
echo uml-system >"$dir/etc/hostname"
chroot "$dir" apt-get clean
rm -rf "$dir/var/lib/apt/lists/"*_Packages "$dir/var/cache/apt/"*.bin
